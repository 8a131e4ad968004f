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
const TOP_LEVEL_KEYS: [&str; 11] = [
    "listen", "data_dir", "database", "http", "log", "tls", "catalog", "jobs", "keys", "identity",
    "messages",
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// PEM (PKCS#8) file of the platform's P-256 signing key (receipts, audit tree heads). Empty
    /// means `<data_dir>/keys/platform-signing.pem`, created on first start. Processes that share a
    /// database must share this key.
    pub platform_signing_key: String,
    /// File of the 32-byte secret that turns ID numbers into subject pseudonyms (HMAC-SHA256).
    /// Empty means `<data_dir>/keys/subject-pseudonym.key`, created on first start. Losing or
    /// changing it disconnects every person from their history: back it up with the database.
    pub subject_pseudonym_key: String,
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
                subject_pseudonym_key: String::new(),
            },
            identity: crate::identity::IdentitySettings::default(),
            messages: crate::identity::messages::MessageSettings::default(),
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
        if self.http.body_limit_bytes == 0 {
            return bad("http.body_limit_bytes", "must be at least 1");
        }
        if self.http.request_timeout_secs == 0 {
            return bad("http.request_timeout_secs", "must be at least 1");
        }
        if self.jobs.poll_interval_ms == 0 {
            return bad("jobs.poll_interval_ms", "must be at least 1");
        }
        if self.jobs.lease_secs == 0 || self.jobs.sweep_interval_secs == 0 {
            return bad(
                "jobs.lease_secs",
                "jobs.lease_secs and jobs.sweep_interval_secs must be at least 1",
            );
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
            format!("sqlite://{}/mydata.db", self.data_dir.display())
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

    /// Where the subject pseudonym key is kept.
    pub fn pseudonym_key_path(&self) -> PathBuf {
        if self.keys.subject_pseudonym_key.is_empty() {
            self.data_dir.join("keys").join("subject-pseudonym.key")
        } else {
            PathBuf::from(&self.keys.subject_pseudonym_key)
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
