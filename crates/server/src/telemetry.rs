//! Logging set-up: JSON lines for `serve`, readable lines for `demo`; filter from the settings.
//! Logs never carry personal data: requests are logged by path and request ID only.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls (as in tests) are ignored.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .flatten_event(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
