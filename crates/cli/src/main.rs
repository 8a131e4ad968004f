//! The `mydata` command: runs the platform (`serve`, `demo`), manages its database (`migrate`), checks
//! catalogue files (`catalog check`), runs the local card reader (`card-agent`), measures a live server (`bench`) and runs the simulated
//! agencies (`provider-sim`).
//!
//! Every failure ends with a non-zero exit status and one line on stderr saying what went wrong.

mod audit_export;
mod bench;
mod bench_transfers;
mod card_agent;
mod catalog_check;
mod counter_admin;
mod proc_cpu;
mod provider_sim;
mod verify;
mod verify_receipt;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mydata_server::config::LogFormat;
use mydata_server::{Server, Settings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc instead of glibc's allocator: a server request allocates and frees many small buffers
/// across threads, where glibc's arenas spent ≈ 6 % of the server's CPU under load
/// (docs/PERFORMANCE.md, round 5).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mydata: a personal-data self-determination platform.
///
/// A person proves who they are and consents, once, to have data that government agencies hold about
/// them fetched, signed by the agency, and downloaded, shown at a service counter, or sent to an online
/// service. Start with `mydata demo`.
#[derive(Debug, Parser)]
#[command(name = "mydata", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform for production: JSON logs, settings from a TOML file and MYDATA_* variables.
    Serve(ServerArgs),
    /// Run the platform on this machine with everything it needs: embedded SQLite, built-in
    /// catalogue, readable logs, and the simulated agencies in-process (their CA trusted, the
    /// developer endpoints /api/v1/dev/* on). Prints the address to open once it is ready.
    Demo(DemoArgs),
    /// Create or update the database schema, then exit.
    Migrate(ConfigArgs),
    /// Work with catalogue files.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Run the local card reader service: holds one test card (PKCS#12), checks its PIN (three
    /// wrong PINs lock it) and signs the platform's login challenges for the allowed web origin.
    CardAgent(card_agent::CardAgentArgs),
    /// Check a saved data package offline: (1) agency certificate valid and trusted, (2) public key
    /// taken from it, (3) manifest not tampered, (4) each file not tampered; plus the platform
    /// receipt. Prints a verdict per step; exits non-zero if any check fails.
    Verify(verify::VerifyArgs),
    /// Check a downloaded consent or deletion receipt offline with only the platform's public key:
    /// (1) receipt signature, (2) its audit log entry commits to it, (3) inclusion proof against
    /// the signed tree head, (4) tree head signature. Prints a verdict per step; exits non-zero if
    /// any check fails.
    VerifyReceipt(verify_receipt::VerifyReceiptArgs),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Register offices, counters and clerk accounts for counter verification.
    #[command(subcommand)]
    Counter(counter_admin::CounterCommand),
    /// Measure a running server with a load run on this machine.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run the simulated data-provider agencies (synthetic people, agency-signed datasets, a
    /// simulated CA at /ca/root.pem and /ca/crl.pem). Prints the address once ready.
    ProviderSim(provider_sim::ProviderSimArgs),
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Validate catalogue files as the server does at start-up and list every problem found.
    ///
    /// Each FILE is a catalogue folder or one of categories.tsv, sectors.tsv, agencies.tsv,
    /// datasets.tsv, services.tsv; files not given are taken from the built-in catalogue, so a single
    /// edited file is checked against the rest.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Re-derive the audit log's Merkle tree from the stored events and check every entry, every
    /// tree head and the log state. Names the first entry or head that does not hold; exits
    /// non-zero if any does.
    Verify(AuditVerifyArgs),
    /// Export the transfer records of one agency (its datasets) or one service (transfers it
    /// received) for a time range, as CSV or JSON: one row per dataset of a transfer with time,
    /// flow, recipient, purpose, outcome and a pseudonym of the person that is unique to that
    /// agency or service. CSV cells that a spreadsheet would run as formulas are neutralised.
    Export(audit_export::ExportArgs),
}

#[derive(Debug, Args)]
struct AuditVerifyArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The platform's public key (PEM) to check tree head signatures with. Without it, the public
    /// half of the configured platform signing key is used, with the keys announced to replace it
    /// and those it replaced (`keys.next_platform_signing_keys`, `keys.previous_platform_signing_keys`).
    #[arg(long, value_name = "PEM")]
    platform_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// TOML settings file (see docs/CONFIGURATION.md). Without it, built-in defaults apply.
    #[arg(long, env = "MYDATA_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Folder for the embedded database and local files [default: ./mydata-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address and port to listen on; a host name is resolved [default: 127.0.0.1:8080]
    #[arg(long, value_name = "HOST:PORT", value_parser = listen_addr)]
    listen: Option<SocketAddr>,
}

/// `HOST:PORT` as an address to listen on: an IP address, or a name resolved now
/// (`localhost:8080`), its first address taken.
pub(crate) fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("not an address and port (HOST:PORT): {e}"))?
        .next()
        .ok_or_else(|| format!("{s} does not resolve to an address"))
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Speed-up of the simulated agencies: 60 makes a 60-minute dataset ready in one minute.
    #[arg(long, value_name = "FACTOR", default_value_t = 60.0)]
    time_scale: f64,
    /// The simulated agencies answer without the PDF of each dataset (for load runs on this
    /// machine: typesetting is the agencies' work, not the platform's).
    #[arg(long)]
    no_agency_pdf: bool,
}

impl ConfigArgs {
    /// Settings from defaults, file and environment, then these flags.
    pub(crate) fn settings(&self, listen: Option<SocketAddr>) -> anyhow::Result<Settings> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let mut s = Settings::load(self.config.as_deref(), &env)?;
        if let Some(dir) = &self.data_dir {
            s.data_dir = dir.clone();
        }
        if let Some(listen) = listen {
            s.listen = listen;
        }
        Ok(s)
    }

    /// Settings for an operator command that works on an existing platform: refused when the
    /// embedded database is not there, so a mistyped `--data-dir` does not quietly set up a new,
    /// empty platform (keys, database) and report on or change that one instead.
    pub(crate) fn existing(&self, listen: Option<SocketAddr>) -> anyhow::Result<Settings> {
        let s = self.settings(listen)?;
        let file = if s.database.url.is_empty() {
            Some(s.data_dir.join("mydata.db"))
        } else {
            sqlite_file(&s.database.url)
        };
        if let Some(file) = file
            && !file.is_file()
        {
            anyhow::bail!(
                "no mydata database at {}: check --data-dir (`mydata migrate` creates one)",
                file.display()
            );
        }
        Ok(s)
    }
}

/// The file of an SQLite database URL (`sqlite://PATH` or `sqlite:PATH`, options after `?`).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(worker_threads());
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Tokio worker threads: one per core (at most 64) unless `TOKIO_WORKER_THREADS` says otherwise.
/// SQLite's hot reads and writes run in the calling thread (see mydata-store's `step`), so a worker
/// no longer waits on another thread for them, and more workers than cores only add switches
/// between them. Measured in docs/PERFORMANCE.md (complete transfers, 2 cores, the demo alone
/// changed: 256/s with 2 threads, 237/s with 8; PostgreSQL 174 against 169/s). Before the SQLite
/// work moved into the calling thread it was the other way round (116/s with 2, 147/s with 8).
fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, 64)
}

/// Help and version as clap prints them; a wrong argument on one line (clap's own message, its
/// first paragraph joined, plus where to look), exit status 2 as clap's.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return match e.kind() {
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::from(2),
            _ => ExitCode::SUCCESS,
        };
    }
    // clap's first paragraph (a missing argument lists them on the lines after the first).
    let text = e.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let first = first.join(" ");
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    eprintln!("mydata: error: {first} (see --help)");
    ExitCode::from(2)
}

/// Prints the error and its causes on one line.
fn fail(e: &anyhow::Error) -> ExitCode {
    let line: Vec<String> = e
        .chain()
        .map(|c| c.to_string().replace('\n', " "))
        .collect();
    eprintln!("mydata: error: {}", line.join(": "));
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Demo(args) => demo(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Catalog(CatalogCommand::Check { files }) => catalog_check::run(&files),
        Command::CardAgent(args) => card_agent::run(args).await,
        Command::Verify(args) => verify::run(&args),
        Command::VerifyReceipt(args) => verify_receipt::run(&args),
        Command::Audit(AuditCommand::Verify(args)) => audit_verify(args).await,
        Command::Audit(AuditCommand::Export(args)) => audit_export::run(args).await,
        Command::Counter(cmd) => counter_admin::run(cmd).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::ProviderSim(args) => provider_sim::run(args).await,
    }
}

/// `serve` runs for real services: the issuer they name in their assertions and proofs is set,
/// not taken from each request's Host header (where an assertion made for another server could
/// be replayed with that server's name), and is https (RFC 8414 §2) except on loopback.
fn production_issuer(issuer: &str) -> anyhow::Result<()> {
    if issuer.is_empty() {
        anyhow::bail!(
            "config key `oauth.issuer` must be set for `mydata serve`: the platform's public base URL (https://...) that services name in their assertions (`mydata demo` derives it from --listen)"
        );
    }
    let url = url::Url::parse(issuer)
        .map_err(|e| anyhow::anyhow!("config key `oauth.issuer`: `{issuer}` is not a URL: {e}"))?;
    if url.scheme() != "https" && !mydata_server::oauth::clients::is_loopback(&url) {
        anyhow::bail!(
            "config key `oauth.issuer`: `{issuer}` must be https (http only on loopback, for trying it out)"
        );
    }
    Ok(())
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let settings = args.config.settings(args.listen)?;
    production_issuer(&settings.oauth.issuer)?;
    mydata_server::telemetry::init(settings.log.format, &settings.log.level);
    let server = Server::bind(settings, Arc::new(mydata_core::SystemClock)).await?;
    server.run_until(mydata_server::shutdown_signal()).await
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let mut settings = args.server.config.settings(args.server.listen)?;
    settings.log.format = LogFormat::Pretty;
    // The demo sends no email or SMS: codes appear at /dev/outbox.
    settings.messages.dev_outbox = true;
    if !settings.listen.ip().is_loopback() {
        anyhow::bail!(
            "demo serves plain HTTP and listens on loopback only; use `mydata serve` to listen on {}",
            settings.listen.ip()
        );
    }
    mydata_server::telemetry::init(settings.log.format, &settings.log.level);
    // A demo started twice on one port must fail before it writes the demo's cards, agency root
    // and example-service registration over the running one's. (The platform binds it again below.)
    if settings.listen.port() != 0 {
        drop(
            std::net::TcpListener::bind(settings.listen)
                .with_context(|| format!("cannot listen on {}", settings.listen))?,
        );
    }
    card_agent::write_demo_cards(&settings.data_dir).await?;
    card_agent::configure_identity(&mut settings)?;
    let agencies =
        provider_sim::start_in_process(&settings, args.time_scale, !args.no_agency_pdf).await?;
    agencies.configure(&mut settings);
    settings.dev.endpoints = true;
    // Every agency is simulated here, so test-environment services get simulated data only.
    settings.oauth.serve_test_services = true;
    // The example online service beside the platform, registered with fresh keys at each start.
    let (sp_listener, sp_base) = mydata_example_service::bind().await?;
    let sp_keys = mydata_sdk::Keys::generate();
    settings.oauth.clients.push(example_registration(
        &sp_keys,
        &format!("{sp_base}/callback"),
    ));
    if settings.oauth.issuer.is_empty() && settings.listen.port() != 0 {
        settings.oauth.issuer = format!("http://{}", settings.listen);
    }
    let settings_dir = settings.data_dir.clone();
    let server = Server::bind(settings, Arc::new(mydata_core::SystemClock)).await?;
    let base = server.base_url()?;
    mydata_example_service::serve(
        sp_listener,
        &sp_base,
        &base,
        &agencies.base,
        sp_keys,
        Arc::new(mydata_core::SystemClock),
    )?;
    eprintln!(
        "example online service (senior-high-school tuition reduction, dataset 59) at {sp_base}/"
    );
    eprintln!(
        "simulated agencies at {} (time scale {}x). Try a fetch for a synthetic person ({}) or company ({}):\n  \
         curl -s -X POST {base}/api/v1/dev/fetches -H 'content-type: application/json' \
         -d '{{\"subject\":\"{}\",\"datasets\":[\"household-register-personal\"]}}'",
        agencies.base,
        args.time_scale,
        agencies.sample_person,
        agencies.sample_company,
        agencies.sample_person
    );
    counter_admin::demo_desk(server.state()).await?;
    let mut running = tokio::spawn(server.run_until(mydata_server::shutdown_signal()));
    // A server that stops while starting (a TLS file it cannot read, say) says why at once.
    tokio::select! {
        ready = wait_healthy(&base) => ready?,
        ended = &mut running => {
            ended.context("server task failed")??;
            anyhow::bail!("the server stopped before it answered {base}/healthz");
        }
    }
    // WebAuthn refuses IP addresses: the same server reached as `localhost` is where passkeys work.
    let by_name = base.replace("127.0.0.1", "localhost");
    eprintln!(
        "sign in with a test card: mydata card-agent --card {}/<ID number or 統一編號>.p12 \
         --allow-origin {base} --allow-origin {by_name} (PIN 123456); codes are at {base}/dev/outbox. \
         Passkeys need a domain name: open {by_name} to register and use them.",
        mydata_card::demo::cards_dir(&settings_dir).display(),
    );
    eprintln!("mydata demo is ready. Open the address below in a browser; press Ctrl-C to stop.");
    println!("{base}");
    running.await.context("server task failed")?
}

/// The registration `demo` adds to the platform for the example service: DPoP-bound tokens, as a
/// production service must have (FAPI 2.0).
fn example_registration(
    keys: &mydata_sdk::Keys,
    redirect_uri: &str,
) -> mydata_server::oauth::clients::Registration {
    use mydata_example_service as ex;
    mydata_server::oauth::clients::Registration {
        client_id: ex::CLIENT_ID.into(),
        name: ex::NAME.into(),
        jwks: Some(keys.public_jwks()),
        jwks_uri: None,
        redirect_uris: vec![redirect_uri.to_owned()],
        terms: ex::TERMS.into(),
        purpose: ex::PURPOSE.into(),
        datasets: vec![ex::DATASET.into()],
        legal_basis: None,
        environment: "test".into(),
        trusted_verifier: false,
        dpop_bound_access_tokens: true,
    }
}

/// Polls `/healthz` until it answers 200, for at most 10 seconds (directly: an `http_proxy` in the
/// environment is not asked for a loopback address).
async fn wait_healthy(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .no_proxy()
        .build()?;
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the server did not answer {base}/healthz within 10 seconds")
}

/// Opens the configured database (without migrating it), for the operator commands; it must
/// exist already (see [`ConfigArgs::existing`]).
pub(crate) async fn open_store(args: &ConfigArgs) -> anyhow::Result<(mydata_store::Store, String)> {
    let settings = args.existing(None)?;
    connect(&settings).await
}

async fn connect(settings: &Settings) -> anyhow::Result<(mydata_store::Store, String)> {
    let url = mydata_server::serve::redact_url(&settings.database_url());
    let store = mydata_store::Store::connect(&settings.database_url(), &Default::default())
        .await
        .with_context(|| format!("cannot open the database ({url})"))?;
    Ok((store, url))
}

async fn migrate(args: ConfigArgs) -> anyhow::Result<()> {
    // The one operator command that creates the database.
    let (store, url) = connect(&args.settings(None)?).await?;
    store.migrate().await.context("migration failed")?;
    store.close().await;
    println!("database schema is up to date ({url})");
    Ok(())
}

async fn audit_verify(args: AuditVerifyArgs) -> anyhow::Result<()> {
    use p256::pkcs8::DecodePublicKey;
    let keys: Vec<p256::ecdsa::VerifyingKey> = match &args.platform_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            vec![
                p256::ecdsa::VerifyingKey::from_public_key_pem(&pem)
                    .with_context(|| format!("{}: not a P-256 public key", path.display()))?,
            ]
        }
        None => {
            let settings = args.config.settings(None)?;
            let path = settings.platform_key_path();
            anyhow::ensure!(
                path.exists(),
                "no platform key at {}; give --platform-key PUB.pem",
                path.display()
            );
            let ring = mydata_server::keys::load_platform_keys(&settings)?;
            ring.published.iter().map(|(_, key)| *key).collect()
        }
    };
    let (store, _) = open_store(&args.config).await?;
    let report = store
        .verify_audit_log()
        .await
        .context("cannot read the audit log")?;
    let heads = store
        .tree_heads()
        .await
        .context("cannot read the tree heads")?;
    store.close().await;
    let mut problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    for head in &heads {
        // Signed by any of the keys: heads from before a key rotation carry the previous key's.
        let check = |key| mydata_server::keys::verify_tree_head(head, key);
        if !keys.iter().any(|key| check(key).is_ok()) {
            let e = keys.first().map(check).and_then(Result::err);
            let e = e.unwrap_or_else(|| "no key to check with".into());
            problems.push(format!("tree head at size {}: {e}", head.tree_size));
        }
    }
    if report.pruned > 0 {
        println!(
            "audit log: {} entries past retention have no details any more; they are checked through their recorded hashes and the tree heads",
            report.pruned
        );
    }
    match report.latest_head {
        Some(size) => println!(
            "audit log: {} entries, {} tree heads checked, latest head at size {size}",
            report.entries, report.heads_checked
        ),
        None => println!(
            "audit log: {} entries, no tree head recorded yet",
            report.entries
        ),
    }
    for p in &problems {
        println!("FAIL {p}");
    }
    match problems.first() {
        None => {
            println!(
                "OK: every entry matches its hash and every tree head matches the log and is signed by the platform"
            );
            Ok(())
        }
        Some(first) => anyhow::bail!(
            "audit log verification failed ({} problem(s)); first: {first}",
            problems.len()
        ),
    }
}
