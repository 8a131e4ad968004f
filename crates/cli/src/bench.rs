//! `mydata bench`: load runs against a live server on this machine, reporting throughput and latency.
//!
//! Runs are bounded in time and in requests, and only ever target loopback addresses.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Read the public catalogue API (list, search, one dataset) as fast as the server allows.
    Catalog(LoadArgs),
    /// Complete online-service transfers (PAR, consent and confirmation through the pages, agency
    /// fetch, sealed package, token, retrieval) against `mydata demo`; see docs/PERFORMANCE.md.
    Transfers(crate::bench_transfers::TransferArgs),
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Base URL of the server to measure; must be on this machine (127.0.0.1, ::1 or localhost).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to measure, in seconds (after a 1-second warm-up); at most a day.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: u64,
    /// Stop after this many requests even if time remains.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Catalog(args) => {
            let paths = [
                "/api/v1/datasets",
                "/api/v1/datasets/low-income-household",
                "/api/v1/datasets?q=%E6%88%B6%E7%B1%8D",
                "/api/v1/services?mode=counter",
            ];
            load(&args, &paths).await
        }
        BenchCommand::Transfers(args) => crate::bench_transfers::run(args).await,
    }
}

/// Refuses any target that is not this machine.
pub(crate) fn check_loopback(url: &str) -> anyhow::Result<url::Url> {
    let u = url::Url::parse(url).with_context(|| format!("invalid --url `{url}`"))?;
    let host = u.host_str().unwrap_or_default();
    let ok = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if !ok {
        anyhow::bail!(
            "--url must point at this machine (127.0.0.1, ::1 or localhost), not `{host}`"
        );
    }
    Ok(u)
}

async fn load(args: &LoadArgs, paths: &[&str]) -> anyhow::Result<()> {
    let base = check_loopback(&args.url)?;
    let base = base.as_str().trim_end_matches('/').to_owned();
    let concurrency = args.concurrency.clamp(1, 1024);
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .with_context(|| format!("no server answers at {base}"))?;
    anyhow::ensure!(
        health.status().is_success(),
        "{base}/healthz answered {}",
        health.status()
    );

    let urls: Arc<Vec<String>> = Arc::new(paths.iter().map(|p| format!("{base}{p}")).collect());
    // Warm-up: open the connections and fill caches; not measured.
    run_phase(
        &client,
        &urls,
        concurrency,
        Duration::from_secs(1),
        u64::MAX,
    )
    .await;
    let started = Instant::now();
    let results = run_phase(
        &client,
        &urls,
        concurrency,
        Duration::from_secs(args.seconds.max(1)),
        args.max_requests,
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();

    let mut latencies: Vec<u64> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    latencies.sort_unstable();
    let n = latencies.len() as u64;
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    println!("target       {base} ({} paths, round robin)", urls.len());
    println!("concurrency  {concurrency}");
    println!("duration     {elapsed:.1} s");
    println!("requests     {n} ok, {errors} failed");
    println!("throughput   {:.0} requests/s", n as f64 / elapsed);
    println!(
        "latency      p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    anyhow::ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

/// Worker `w`'s part of `max` requests shared by `workers`: together exactly `max` (workers past
/// it get none), not at least one each.
fn share_of(max: u64, workers: usize, w: usize) -> u64 {
    let n = workers.max(1) as u64;
    max / n + u64::from((w as u64) < max % n)
}

#[derive(Debug, Default)]
struct WorkerResult {
    latencies_us: Vec<u64>,
    errors: u64,
}

async fn run_phase(
    client: &reqwest::Client,
    urls: &Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
    max: u64,
) -> Vec<WorkerResult> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let client = client.clone();
        let urls = Arc::clone(urls);
        let share = share_of(max, concurrency, w);
        tasks.push(tokio::spawn(async move {
            let mut r = WorkerResult::default();
            for n in 0..share {
                if Instant::now() >= deadline {
                    break;
                }
                // Workers start at different paths so the mix stays even.
                let url = &urls[(w + n as usize) % urls.len()];
                let t = Instant::now();
                match client.get(url).send().await {
                    Ok(res) if res.status().is_success() => match res.bytes().await {
                        Ok(_) => r.latencies_us.push(t.elapsed().as_micros() as u64),
                        Err(_) => r.errors += 1,
                    },
                    _ => r.errors += 1,
                }
            }
            r
        }));
    }
    let mut out = Vec::with_capacity(concurrency);
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_cap_is_shared_exactly() {
        for (max, workers) in [(5, 32), (100, 32), (0, 4), (7, 1), (u64::MAX, 16)] {
            let total: u128 = (0..workers)
                .map(|w| u128::from(share_of(max, workers, w)))
                .sum();
            assert_eq!(total, u128::from(max), "{max} over {workers}");
        }
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(check_loopback("http://127.0.0.1:8080").is_ok());
        assert!(check_loopback("http://127.1.2.3:1").is_ok());
        assert!(check_loopback("http://[::1]:8080").is_ok());
        assert!(check_loopback("http://localhost:8080").is_ok());
        assert!(check_loopback("http://10.0.0.1:8080").is_err());
        assert!(check_loopback("http://example.org").is_err());
        assert!(check_loopback("not a url").is_err());
    }
}
