//! `GET /metrics`: what an operator's monitoring scrapes (Prometheus text format 0.0.4), behind
//! the bearer `ops.metrics_token`. Every figure comes from the database, so any process behind
//! the load balancer answers for all of them; none names a person.

use crate::error::AppError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::fmt::Write as _;

/// The job queues this platform runs (its handlers' `queue()`; a test keeps the two in step).
const QUEUES: [&str; 6] = [
    crate::agencies::FETCH_QUEUE,
    crate::packages::PACKAGE_QUEUE,
    crate::background::EXPIRY_QUEUE,
    crate::background::RETENTION_QUEUE,
    crate::orphans::OBJECT_SWEEP_QUEUE,
    crate::identity::messages::QUEUE,
];

/// `GET /metrics`
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let expected = &state.settings().ops.metrics_token;
    if expected.is_empty() {
        return Err(crate::routes::not_found("page", "/metrics"));
    }
    if !crate::routes::bearer_is(&headers, expected) {
        return Err(AppError::MetricsUnauthorized);
    }
    let now = state.clock().now();
    let snap = state.store().ops_snapshot(&QUEUES, now).await?;
    let mut text = render(&snap, now, env!("CARGO_PKG_VERSION"));
    let recorded = state.store().recorded_key_checks().await?;
    render_keys(&mut text, &process_keys(&state), &recorded);
    let mut res = text.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// The exposition text of one snapshot.
fn render(snap: &mydata_store::OpsSnapshot, now: mydata_core::Timestamp, version: &str) -> String {
    let mut out = String::new();
    let secs = |ms: i64| ms as f64 / 1000.0;
    family(
        &mut out,
        "mydata_build_info",
        "gauge",
        "The running version (always 1).",
    );
    line(&mut out, "mydata_build_info", &[("version", version)], 1.0);

    family(
        &mut out,
        "mydata_jobs",
        "gauge",
        "Jobs not done, by queue and state (failed: given up, kept for retention.finished_jobs_hours).",
    );
    for q in &snap.queues {
        for (st, n) in [
            ("queued", q.queued),
            ("running", q.running),
            ("failed", q.failed),
        ] {
            line(
                &mut out,
                "mydata_jobs",
                &[("queue", &q.queue), ("state", st)],
                n as f64,
            );
        }
    }
    family(
        &mut out,
        "mydata_job_queue_lag_seconds",
        "gauge",
        "How long the oldest queued job has been due (0 when none is due).",
    );
    for q in &snap.queues {
        let lag = q
            .oldest_queued_run_at
            .map_or(0, |t| now.millis().saturating_sub(t.millis()).max(0));
        line(
            &mut out,
            "mydata_job_queue_lag_seconds",
            &[("queue", &q.queue)],
            secs(lag),
        );
    }

    family(
        &mut out,
        "mydata_transfers_live",
        "gauge",
        "Transfers not yet ended, by kind and state.",
    );
    for (kind, st, n) in &snap.transfers {
        line(
            &mut out,
            "mydata_transfers_live",
            &[("kind", kind), ("state", st)],
            *n as f64,
        );
    }

    family(
        &mut out,
        "mydata_agency_circuit_open",
        "gauge",
        "1 for each agency not being called until its circuit closes again.",
    );
    for a in &snap.open_circuits {
        line(
            &mut out,
            "mydata_agency_circuit_open",
            &[("agency", a)],
            1.0,
        );
    }

    family(
        &mut out,
        "mydata_audit_backlog_events",
        "gauge",
        "Audit events not yet in the log's Merkle tree.",
    );
    line(
        &mut out,
        "mydata_audit_backlog_events",
        &[],
        snap.audit_backlog as f64,
    );
    if let Some(t) = snap.last_tree_head_at {
        family(
            &mut out,
            "mydata_audit_tree_head_age_seconds",
            "gauge",
            "Time since the newest tree head.",
        );
        let age = now.millis().saturating_sub(t.millis()).max(0);
        line(
            &mut out,
            "mydata_audit_tree_head_age_seconds",
            &[],
            secs(age),
        );
    }
    out
}

/// This process's keys that every process must hold alike: `(key, role, check)`, role `current`,
/// `next` or `previous` (see `crate::keys::Switchable`).
fn process_keys(state: &AppState) -> Vec<(&'static str, &'static str, String)> {
    let mut keys = Vec::new();
    let ring = state.platform_keyring();
    let vault = &state.data().vault;
    for key in [
        crate::keys::Switchable::data_key(vault),
        crate::keys::Switchable::signing_key(ring),
    ] {
        keys.push((key.name, "current", shown_check(key.name, key.mine)));
        for (role, list) in [("next", key.next), ("previous", key.previous)] {
            keys.extend(
                list.iter()
                    .map(|c| (key.name, role, shown_check(key.name, c))),
            );
        }
    }
    keys
}

/// A check value as the metrics show it: a signing key's kid whole (it is public), the start of
/// any other.
fn shown_check(key: &str, check: &str) -> String {
    if key == "platform_signing_key" {
        check.to_owned()
    } else {
        crate::keys::short_check(check).to_owned()
    }
}

/// The key families: this process's keys, and what the database records, so that an operator
/// switching keys one process at a time sees each process move and which key the others expect.
fn render_keys(out: &mut String, mine: &[(&str, &str, String)], recorded: &[(String, String)]) {
    family(
        out,
        "mydata_key_info",
        "gauge",
        "This process's keys that every process must hold alike (always 1): role current, next or previous; check is the signing key's kid or the start of the key's check value.",
    );
    for (key, role, check) in mine {
        line(
            out,
            "mydata_key_info",
            &[("key", key), ("role", role), ("check", check)],
            1.0,
        );
    }
    family(
        out,
        "mydata_key_recorded",
        "gauge",
        "The key the database records for each (always 1): a process starts with it, or lists it as next or previous.",
    );
    for (key, check) in recorded {
        let check = shown_check(key, check);
        line(
            out,
            "mydata_key_recorded",
            &[("key", key), ("check", &check)],
            1.0,
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn line(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the text format wants it (backslash, double quote and line feed escaped).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mydata_core::Timestamp;

    #[test]
    fn the_text_has_a_help_and_type_per_family_and_escaped_labels() {
        let snap = mydata_store::OpsSnapshot {
            queues: vec![mydata_store::QueueCounts {
                queue: "agency-fetch".into(),
                queued: 3,
                running: 1,
                failed: 0,
                oldest_queued_run_at: Some(Timestamp::from_millis(1_000)),
            }],
            transfers: vec![("online".into(), "fetching".into(), 2)],
            open_circuits: vec!["a\"b\\c\nd".into()],
            audit_backlog: 5,
            last_tree_head_at: None,
        };
        let text = render(&snap, Timestamp::from_millis(31_500), "1.2.3");
        assert!(
            text.contains("mydata_build_info{version=\"1.2.3\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("mydata_jobs{queue=\"agency-fetch\",state=\"queued\"} 3\n"));
        assert!(text.contains("mydata_job_queue_lag_seconds{queue=\"agency-fetch\"} 30.5\n"));
        assert!(text.contains("mydata_transfers_live{kind=\"online\",state=\"fetching\"} 2\n"));
        assert!(
            text.contains("mydata_agency_circuit_open{agency=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("mydata_audit_backlog_events 5\n"));
        assert!(!text.contains("tree_head_age"), "no head, no age");
        // Every sample's family is introduced first.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{l}");
        }
    }

    #[test]
    fn every_queue_the_platform_runs_is_reported() {
        let settings = crate::config::Settings::default();
        let mut run: Vec<&str> = crate::serve::platform_handlers(&settings)
            .iter()
            .map(|h| h.queue())
            .chain(crate::background::PERIODIC_QUEUES)
            .collect();
        run.sort_unstable();
        run.dedup();
        let mut reported = super::QUEUES.to_vec();
        reported.sort_unstable();
        assert_eq!(run, reported);
    }
}
