//! Tests of configuration loading and its error messages.

use super::*;
use std::io::Write;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn defaults_need_no_file() {
    let s = Settings::load(None, &[]).unwrap();
    assert_eq!(s, Settings::default());
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.database_url(), "sqlite://./mydata-data/mydata.db");
    assert_eq!(s.catalog_dir(), None);
}

#[test]
fn file_then_environment_override_in_that_order() {
    let f = toml_file(
        "listen = \"127.0.0.1:9000\"\n[database]\nurl = \"sqlite:/tmp/x.db\"\n[log]\nformat = \"pretty\"\n",
    );
    let s = Settings::load(
        Some(f.path()),
        &env(&[
            ("MYDATA_DATABASE__URL", "postgres://db/mydata"),
            ("MYDATA_HTTP__BODY_LIMIT_BYTES", "2048"),
        ]),
    )
    .unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(s.database.url, "postgres://db/mydata");
    assert_eq!(s.log.format, LogFormat::Pretty);
    assert_eq!(s.http.body_limit_bytes, 2048);
}

#[test]
fn unrelated_mydata_variables_are_ignored() {
    let s = Settings::load(
        None,
        &env(&[
            ("MYDATA_TEST_POSTGRES_URL", "x"),
            ("MYDATA_CONFIG", "y"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(s, Settings::default());
}

#[test]
fn invalid_enum_value_names_key_allowed_values_and_source() {
    let err = Settings::load(None, &env(&[("MYDATA_LOG__FORMAT", "xml")]))
        .unwrap_err()
        .0;
    assert!(err.contains("config key `log.format`"), "{err}");
    assert!(
        err.contains("json") && err.contains("pretty"),
        "lists allowed values: {err}"
    );
    assert!(err.contains("MYDATA_LOG__FORMAT"), "{err}");
}

#[test]
fn invalid_values_in_file_name_the_key_and_file() {
    let f = toml_file("listen = \"not an address\"\n");
    let err = Settings::load(Some(f.path()), &[]).unwrap_err().0;
    assert!(err.contains("config key `listen`"), "{err}");
    assert!(err.contains(&f.path().display().to_string()), "{err}");

    let f = toml_file("[http]\nbody_limit_bytes = \"lots\"\n");
    let err = Settings::load(Some(f.path()), &[]).unwrap_err().0;
    assert!(err.contains("config key `http.body_limit_bytes`"), "{err}");
}

#[test]
fn unknown_keys_are_refused() {
    let f = toml_file("[database]\nurll = \"sqlite:x\"\n");
    let err = Settings::load(Some(f.path()), &[]).unwrap_err().0;
    assert!(
        err.contains("unknown field") && err.contains("urll"),
        "{err}"
    );
}

#[test]
fn rule_violations_name_the_key() {
    let cases = [
        ("MYDATA_DATABASE__URL", "mysql://x", "database.url"),
        (
            "MYDATA_HTTP__BODY_LIMIT_BYTES",
            "0",
            "http.body_limit_bytes",
        ),
        (
            "MYDATA_HTTP__REQUEST_TIMEOUT_SECS",
            "0",
            "http.request_timeout_secs",
        ),
        (
            "MYDATA_DATABASE__MAX_CONNECTIONS",
            "0",
            "database.max_connections",
        ),
        ("MYDATA_LOG__LEVEL", "[[[", "log.level"),
        (
            "MYDATA_RETENTION__AUDIT_DAYS",
            "729",
            "retention.audit_days",
        ),
        (
            "MYDATA_RETENTION__FINISHED_JOBS_HOURS",
            "9",
            "retention.finished_jobs_hours",
        ),
        (
            "MYDATA_RETENTION__FINISHED_JOBS_HOURS",
            "0",
            "retention.finished_jobs_hours",
        ),
        (
            "MYDATA_RETENTION__INTERVAL_SECS",
            "0",
            "retention.interval_secs",
        ),
    ];
    for (var, value, key) in cases {
        let err = Settings::load(None, &env(&[(var, value)])).unwrap_err().0;
        assert!(
            err.contains(&format!("config key `{key}`")),
            "{var}={value}: {err}"
        );
    }
}

#[test]
fn missing_file_is_an_error() {
    let err = Settings::load(Some(Path::new("/nonexistent/mydata.toml")), &[])
        .unwrap_err()
        .0;
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn retention_jobs_and_keys_sections_are_read_from_the_environment() {
    let s = Settings::load(
        None,
        &env(&[
            ("MYDATA_RETENTION__AUDIT_DAYS", "1095"),
            ("MYDATA_JOBS__AUDIT_INTERVAL_SECS", "3"),
            (
                "MYDATA_KEYS__PLATFORM_SIGNING_KEY",
                "/etc/mydata/platform.pem",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(s.retention.audit_days, 1095);
    assert_eq!(s.jobs.audit_interval_secs, 3);
    assert_eq!(s.platform_key_path(), Path::new("/etc/mydata/platform.pem"));
    let err = Settings::load(None, &env(&[("MYDATA_RETENTION__AUDIT_DAYS", "365")]))
        .unwrap_err()
        .0;
    assert!(err.contains("at least two years"), "{err}");
}

#[test]
fn the_inline_package_limit_has_a_default_and_is_read_from_file_and_environment() {
    assert_eq!(Settings::default().storage.inline_max_bytes, 256 * 1024);
    let f = toml_file("[storage]\ninline_max_bytes = 0\n");
    assert_eq!(
        Settings::load(Some(f.path()), &[])
            .unwrap()
            .storage
            .inline_max_bytes,
        0
    );
    let s = Settings::load(None, &env(&[("MYDATA_STORAGE__INLINE_MAX_BYTES", "4096")])).unwrap();
    assert_eq!(s.storage.inline_max_bytes, 4096);
    let err = Settings::load(None, &env(&[("MYDATA_STORAGE__INLINE_MAX_BYTES", "-1")]))
        .unwrap_err()
        .0;
    assert!(err.contains("inline_max_bytes"), "{err}");
}

#[test]
fn the_metrics_token_comes_from_its_variable_and_is_not_a_short_one() {
    let s = Settings::load(
        None,
        &env(&[("MYDATA_OPS__METRICS_TOKEN", "a-long-enough-metrics-token")]),
    )
    .unwrap();
    assert_eq!(s.ops.metrics_token, "a-long-enough-metrics-token");
    let err = Settings::load(None, &env(&[("MYDATA_OPS__METRICS_TOKEN", "short")]))
        .unwrap_err()
        .0;
    assert!(err.contains("config key `ops.metrics_token`"), "{err}");
}

#[test]
fn a_pushed_request_lives_less_than_600_seconds() {
    let ok = Settings::load(None, &env(&[("MYDATA_OAUTH__PAR_TTL_SECS", "599")])).unwrap();
    assert_eq!(ok.oauth.par_ttl_secs, 599);
    let err = Settings::load(None, &env(&[("MYDATA_OAUTH__PAR_TTL_SECS", "600")]))
        .unwrap_err()
        .0;
    assert!(err.contains("oauth.par_ttl_secs"), "{err}");
}

/// The production example in docs/CONFIGURATION.md loads as it stands, with the https issuer
/// `mydata serve` needs.
#[test]
fn the_documented_production_example_loads() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/CONFIGURATION.md"),
    )
    .unwrap();
    let start = doc.find("Example `mydata.toml` for production:").unwrap();
    let block = &doc[start..];
    let body = block.split("```toml\n").nth(1).unwrap();
    let toml = &body[..body.find("```").unwrap()];
    let f = toml_file(toml);
    let s = Settings::load(Some(f.path()), &[]).unwrap();
    assert!(s.oauth.issuer.starts_with("https://"), "{}", s.oauth.issuer);
}
