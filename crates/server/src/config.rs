//! Configuration: embedded defaults, then one TOML file, then `MYDATA_*` environment variables, then
//! command-line flags. Each key is declared once below with its default; an invalid value stops
//! start-up with an error naming the key and what it accepts.
//!
//! Environment variables use `__` between levels: `MYDATA_DATABASE__URL`, `MYDATA_LOG__FORMAT`,
//! `MYDATA_LISTEN`, `MYDATA_DATA_DIR`.

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Top-level keys; environment variables naming anything else (such as `MYDATA_CONFIG`) are ignored.
const TOP_LEVEL_KEYS: [&str; 17] = [
    "listen",
    "data_dir",
    "database",
    "http",
    "log",
    "tls",
    "catalog",
    "jobs",
    "keys",
    "agencies",
    "storage",
    "dev",
    "retention",
    "identity",
    "messages",
    "oauth",
    "ops",
];

/// Every setting of the platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Folder for the embedded database and local files.
    pub data_dir: PathBuf,
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    /// Serve HTTPS with this certificate and key (PEM). Plain HTTP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    pub catalog: CatalogSettings,
    pub jobs: crate::background::JobSettings,
    pub keys: KeySettings,
    pub identity: crate::identity::IdentitySettings,
    pub messages: crate::identity::messages::MessageSettings,
    pub agencies: AgencySettings,
    pub storage: StorageSettings,
    pub dev: DevSettings,
    pub retention: RetentionSettings,
    /// Online services: the authorization server and registered services.
    #[serde(default)]
    pub oauth: crate::oauth::OAuthSettings,
    #[serde(default)]
    pub ops: OpsSettings,
}

/// What the operators' monitoring reads.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsSettings {
    /// Bearer token of `GET /metrics` (Prometheus text format); empty: `/metrics` is off.
    pub metrics_token: String,
}

/// How the platform reaches data-provider agencies and which agency certificates it trusts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencySettings {
    /// Base URL serving `/agencies/{agency_id}/v1/...` for every agency without an entry in
    /// `endpoints`; empty: none.
    pub base_url: String,
    /// Base URL per agency ID.
    pub endpoints: std::collections::BTreeMap<String, String>,
    /// PEM files of the roots agency certificates must chain to.
    pub trust_roots: Vec<PathBuf>,
    /// CRL files (PEM or DER) of those CAs.
    pub crl_files: Vec<PathBuf>,
    /// CRL addresses, downloaded at every trust refresh.
    pub crl_urls: Vec<String>,
    /// Accept certificates whose CA has no CRL configured (revocation then unchecked).
    pub allow_missing_crl: bool,
    /// How often roots and CRLs are re-read.
    pub trust_refresh_secs: u64,
    /// Longest one agency call may take.
    pub request_timeout_ms: u64,
    /// Largest agency answer read; larger ones are refused.
    pub max_response_bytes: usize,
    /// Calls in flight per agency, over all processes sharing the database.
    pub concurrency: u32,
    /// Fetch workers in this process (each runs one fetch job at a time).
    pub workers: u32,
    /// Consecutive outages (5xx, timeouts, unreachable) that open an agency's circuit.
    pub circuit_failures: u32,
    /// How long an open circuit stays open before one probe call is let through.
    pub circuit_open_secs: u64,
    /// First retry wait after a transient error (doubles per attempt, with jitter).
    pub retry_base_ms: u64,
    /// Longest single retry wait (an agency's Retry-After may be longer).
    pub retry_max_delay_secs: u64,
    /// A dataset fetch gives up this long after its first call (and always at the transfer's expiry).
    pub fetch_deadline_secs: u64,
}

impl Default for AgencySettings {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            endpoints: std::collections::BTreeMap::new(),
            trust_roots: Vec::new(),
            crl_files: Vec::new(),
            crl_urls: Vec::new(),
            allow_missing_crl: false,
            trust_refresh_secs: 3600,
            request_timeout_ms: 20_000,
            max_response_bytes: 16 * 1024 * 1024,
            concurrency: 8,
            workers: 4,
            circuit_failures: 5,
            circuit_open_secs: 60,
            retry_base_ms: 2000,
            retry_max_delay_secs: 300,
            fetch_deadline_secs: 3 * 3600,
        }
    }
}

/// Where sealed packages and fetched datasets are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// `local` (a directory) or `s3` (any S3-compatible service).
    pub backend: StorageBackend,
    /// Directory of the `local` backend; empty: `<data_dir>/objects`.
    pub local_dir: String,
    pub s3: S3Settings,
    /// A sealed package of at most this many bytes is kept in its database row instead (written
    /// with its record, read with it, cleared with its key); 0: every package in the store.
    #[serde(default = "default_inline_max_bytes")]
    pub inline_max_bytes: u64,
}

fn default_inline_max_bytes() -> u64 {
    256 * 1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    S3,
}

/// The `s3` backend. Empty values fall back to the standard `AWS_*` environment variables.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// For S3-compatible services (MinIO, Ceph, ...): their URL.
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Allow an `http://` endpoint (test set-ups only).
    pub allow_http: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Local,
            local_dir: String::new(),
            s3: S3Settings::default(),
            inline_max_bytes: default_inline_max_bytes(),
        }
    }
}

/// Developer conveniences; never on in production.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevSettings {
    /// Serve `/api/v1/dev/*`: start a fetch for a synthetic person without the identity flow,
    /// and take its package. `demo` turns it on.
    pub endpoints: bool,
}

/// Shortest audit retention the seeds allow: transfer records are kept at least two years.
pub const MIN_AUDIT_RETENTION_DAYS: u64 = 730;
/// Longest a finished job (whose payload or error may mention a person's request) is kept.
pub const MAX_FINISHED_JOB_HOURS: u64 = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days audit records (event details, receipts, finished transfers) are kept; at least 730.
    /// Older events keep only their leaf hash, so the Merkle log still verifies.
    pub audit_days: u64,
    /// Hours finished jobs are kept (1 to 8).
    pub finished_jobs_hours: u64,
    /// How often the retention job is scheduled.
    pub interval_secs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            audit_days: MIN_AUDIT_RETENTION_DAYS,
            finished_jobs_hours: MAX_FINISHED_JOB_HOURS,
            interval_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// PEM (PKCS#8) file of the platform's P-256 signing key (receipts, audit tree heads). Empty
    /// means `<data_dir>/keys/platform-signing.pem`, created on first start. Processes that share a
    /// database must share this key.
    pub platform_signing_key: String,
    /// Public keys the platform signed with before `platform_signing_key` replaced them, still
    /// published so that what they signed (receipts, tree heads) verifies: files of PEM public
    /// keys or JWK sets as the platform published them. Private keys are refused.
    #[serde(default)]
    pub previous_platform_signing_keys: Vec<PathBuf>,
    /// Public keys that will replace `platform_signing_key`, published before the switch so that
    /// during a rolling switch every process's key set holds both the old and the new key (files
    /// as for `previous_platform_signing_keys`). Private keys are refused.
    #[serde(default)]
    pub next_platform_signing_keys: Vec<PathBuf>,
    /// File of the 32-byte secret that hashes client addresses (lockout counters) and one-time
    /// codes (HMAC-SHA256). Empty means `<data_dir>/keys/identity-hash.key`, created on first
    /// start. Processes that share a database must share it.
    #[serde(default)]
    pub identity_hash_key: String,
    /// File of the platform's 256-bit data key, which wraps package keys and seals the identity a
    /// fetch needs. Empty means `<data_dir>/keys/data.key`, created on first start. Processes that
    /// share a database must share this key.
    #[serde(default)]
    pub data_key: String,
    /// Files of data keys that will replace `data_key` (64 hex digits each, as `data_key`): they
    /// open what processes already switched to them sealed, while this one still seals with
    /// `data_key`, so processes can switch one at a time.
    #[serde(default)]
    pub next_data_keys: Vec<PathBuf>,
    /// Files of data keys that `data_key` replaced: they still open what was sealed with them
    /// (packages and fetches of the last 8 hours); nothing new is sealed with them.
    #[serde(default)]
    pub previous_data_keys: Vec<PathBuf>,
    /// File of the 256-bit key of subject pseudonyms (the only name the platform files a person
    /// under). Empty means `<data_dir>/keys/pseudonym.key`, created on first start. Processes that
    /// share a database must share it, and it must never be lost or changed.
    #[serde(default)]
    pub pseudonym_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite:PATH` or `postgres://...`; empty means SQLite at `<data_dir>/mydata.db`.
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest request body accepted; larger ones get 413.
    pub body_limit_bytes: usize,
    /// A request taking longer than this is answered with 408.
    pub request_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `mydata_server=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSettings {
    /// Folder with the catalogue files; empty means the catalogue built into the binary.
    pub dir: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./mydata-data"),
            database: DatabaseSettings {
                url: String::new(),
                max_connections: 8,
            },
            http: HttpSettings {
                body_limit_bytes: 1024 * 1024,
                request_timeout_secs: 30,
            },
            log: LogSettings {
                format: LogFormat::Json,
                level: "info".into(),
            },
            tls: None,
            catalog: CatalogSettings { dir: String::new() },
            jobs: crate::background::JobSettings::default(),
            keys: KeySettings {
                platform_signing_key: String::new(),
                previous_platform_signing_keys: Vec::new(),
                next_platform_signing_keys: Vec::new(),
                identity_hash_key: String::new(),
                data_key: String::new(),
                next_data_keys: Vec::new(),
                previous_data_keys: Vec::new(),
                pseudonym_key: String::new(),
            },
            identity: crate::identity::IdentitySettings::default(),
            messages: crate::identity::messages::MessageSettings::default(),
            agencies: AgencySettings::default(),
            storage: StorageSettings::default(),
            dev: DevSettings::default(),
            ops: OpsSettings::default(),
            retention: RetentionSettings::default(),
            oauth: crate::oauth::OAuthSettings::default(),
        }
    }
}

/// A configuration problem, already phrased for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Loads defaults, then `file` (if given), then `MYDATA_*` variables from `env`.
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            fig = fig.merge(Toml::file(file));
        }
        // (dotted key, variable name) of each MYDATA_* variable that names a setting.
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("MYDATA_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let top = key.split('.').next().unwrap_or_default();
            if TOP_LEVEL_KEYS.contains(&top) {
                fig = fig.merge(Serialized::default(&key, env_value(value)));
                from_env.push((key, name.clone()));
            }
        }
        let settings: Settings = fig.extract().map_err(|e| describe(e, file, &from_env))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks rules that types alone do not express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: &str| Err(ConfigError(format!("config key `{key}`: {msg}")));
        if self.data_dir.as_os_str().is_empty() {
            return bad(
                "data_dir",
                "must not be empty (the default is ./mydata-data)",
            );
        }
        if self.http.body_limit_bytes == 0 {
            return bad("http.body_limit_bytes", "must be at least 1");
        }
        if self.http.request_timeout_secs == 0 {
            return bad("http.request_timeout_secs", "must be at least 1");
        }
        if self.jobs.poll_interval_ms == 0 {
            return bad("jobs.poll_interval_ms", "must be at least 1");
        }
        if !(1..=256).contains(&self.jobs.concurrency) {
            return bad("jobs.concurrency", "must be from 1 to 256");
        }
        if self.jobs.lease_secs == 0 || self.jobs.sweep_interval_secs == 0 {
            return bad(
                "jobs.lease_secs",
                "jobs.lease_secs and jobs.sweep_interval_secs must be at least 1",
            );
        }
        let a = &self.agencies;
        if a.request_timeout_ms == 0 || a.max_response_bytes == 0 || a.concurrency == 0 {
            return bad(
                "agencies",
                "request_timeout_ms, max_response_bytes and concurrency must be at least 1",
            );
        }
        if a.circuit_failures == 0 || a.fetch_deadline_secs == 0 || a.retry_base_ms == 0 {
            return bad(
                "agencies",
                "circuit_failures, fetch_deadline_secs and retry_base_ms must be at least 1",
            );
        }
        for (key, value) in std::iter::once(("agencies.base_url", &a.base_url))
            .chain(a.endpoints.values().map(|v| ("agencies.endpoints", v)))
            .chain(a.crl_urls.iter().map(|v| ("agencies.crl_urls", v)))
        {
            let ok = value.is_empty()
                || url::Url::parse(value)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return bad(key, &format!("`{value}` is not an http(s) URL"));
            }
        }
        if self.storage.backend == StorageBackend::S3 && self.storage.s3.bucket.is_empty() {
            return bad(
                "storage.s3.bucket",
                "is required when storage.backend is `s3`",
            );
        }
        if self.retention.audit_days < MIN_AUDIT_RETENTION_DAYS {
            return bad(
                "retention.audit_days",
                "must be at least 730: audit records are kept at least two years",
            );
        }
        if !(1..=MAX_FINISHED_JOB_HOURS).contains(&self.retention.finished_jobs_hours) {
            return bad(
                "retention.finished_jobs_hours",
                "must be from 1 to 8: finished jobs may mention a person's request, which the platform keeps at most 8 hours",
            );
        }
        if self.retention.interval_secs == 0 {
            return bad("retention.interval_secs", "must be at least 1");
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections", "must be at least 1");
        }
        let url = &self.database.url;
        let known_backend = ["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|p| url.starts_with(p));
        if !url.is_empty() && !known_backend {
            return bad(
                "database.url",
                "must start with sqlite: or postgres:// (allowed backends: sqlite, postgres)",
            );
        }
        self.identity.validate().map_err(ConfigError)?;
        self.messages.validate().map_err(ConfigError)?;
        self.oauth.validate().map_err(ConfigError)?;
        if !self.ops.metrics_token.is_empty() && self.ops.metrics_token.len() < 16 {
            return bad("ops.metrics_token", "must be at least 16 characters");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad(
                "log.level",
                "is not a valid filter (allowed: error, warn, info, debug, trace, or target=level lists)",
            );
        }
        Ok(())
    }

    /// The database URL to use: the configured one, or SQLite inside the data folder.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            // The URL's path is percent-decoded and cut at `?` and `#`: a folder name holding
            // those characters is written so that it reads back as itself.
            let dir = self.data_dir.display().to_string();
            let mut escaped = String::with_capacity(dir.len());
            for c in dir.chars() {
                match c {
                    '%' => escaped.push_str("%25"),
                    '?' => escaped.push_str("%3F"),
                    '#' => escaped.push_str("%23"),
                    c => escaped.push(c),
                }
            }
            format!("sqlite://{escaped}/mydata.db")
        } else {
            self.database.url.clone()
        }
    }

    /// Where the platform signing key is kept.
    pub fn platform_key_path(&self) -> PathBuf {
        if self.keys.platform_signing_key.is_empty() {
            self.data_dir.join("keys").join("platform-signing.pem")
        } else {
            PathBuf::from(&self.keys.platform_signing_key)
        }
    }

    /// Where the identity hash key is kept.
    pub fn identity_hash_key_path(&self) -> PathBuf {
        if self.keys.identity_hash_key.is_empty() {
            self.data_dir.join("keys").join("identity-hash.key")
        } else {
            PathBuf::from(&self.keys.identity_hash_key)
        }
    }

    /// Where the subject pseudonym key is kept.
    pub fn pseudonym_key_path(&self) -> PathBuf {
        if self.keys.pseudonym_key.is_empty() {
            self.data_dir.join("keys").join("pseudonym.key")
        } else {
            PathBuf::from(&self.keys.pseudonym_key)
        }
    }

    /// Where the data key is kept.
    pub fn data_key_path(&self) -> PathBuf {
        if self.keys.data_key.is_empty() {
            self.data_dir.join("keys").join("data.key")
        } else {
            PathBuf::from(&self.keys.data_key)
        }
    }

    /// The directory of the local object store.
    pub fn objects_dir(&self) -> PathBuf {
        if self.storage.local_dir.is_empty() {
            self.data_dir.join("objects")
        } else {
            PathBuf::from(&self.storage.local_dir)
        }
    }

    /// The folder of catalogue files, if one is configured.
    pub fn catalog_dir(&self) -> Option<PathBuf> {
        Some(PathBuf::from(&self.catalog.dir)).filter(|p| !p.as_os_str().is_empty())
    }
}

/// Reads an environment value as TOML (numbers, booleans) and otherwise as a plain string.
fn env_value(raw: &str) -> figment::value::Value {
    use figment::value::Value;
    match raw.parse::<i64>() {
        Ok(n) => Value::from(n),
        Err(_) => match raw {
            "true" => Value::from(true),
            "false" => Value::from(false),
            _ => Value::from(raw.to_owned()),
        },
    }
}

/// Turns figment's errors into one line per problem naming the key and where its value came from.
fn describe(
    errors: figment::Error,
    file: Option<&Path>,
    from_env: &[(String, String)],
) -> ConfigError {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let mut line = if key.is_empty() {
                format!("config: {}", e.kind)
            } else {
                format!("config key `{key}`: {}", e.kind)
            };
            if let Some((_, var)) = from_env
                .iter()
                .find(|(k, _)| !key.is_empty() && (k == &key || key.starts_with(&format!("{k}."))))
            {
                line.push_str(&format!(" (from environment variable {var})"));
            } else if let Some(file) = file {
                line.push_str(&format!(" (in {})", file.display()));
            }
            line
        })
        .collect();
    ConfigError(lines.join("; "))
}

#[cfg(test)]
mod tests;
