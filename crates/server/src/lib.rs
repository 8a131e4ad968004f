//! The HTTP layer of mydata (axum): citizen pages, the public catalogue API, health probes, and the
//! one place where errors become responses.
//!
//! Layout: [`config`] (settings), [`serve`] (start and stop), [`app`] (router and layers),
//! [`routes`] (handlers), [`pages`] (templates), [`error`] (error mapping), [`i18n`] (languages).

pub mod agencies;
pub mod app;
pub mod background;
pub mod blobs;
pub mod config;
pub mod counter;
pub mod download;
pub mod error;
pub mod i18n;
pub mod identity;
pub mod keyfile;
pub mod keys;
pub mod notices;
pub mod oauth;
pub mod orphans;
pub mod packages;
pub mod pages;
pub mod receipts;
pub mod records;
pub mod routes;
pub mod serve;
pub mod settled;
pub mod state;
pub mod telemetry;
pub mod vault;

pub use config::Settings;
pub use serve::{Server, load_catalog, shutdown_signal};
