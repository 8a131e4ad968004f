//! HTTP tests of the server: each test boots a real server on port 0 with a fresh database.
//! One test binary (modules below) so the crate is linked once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
mod audit_events;
mod background;
mod browser;
mod catalog;
mod counter;
mod errors;
mod fetch;
mod forms;
mod health;
mod helpers;
mod home;
mod identity;
mod key_rotation;
mod online;
mod online_asserted;
mod online_browser;
mod online_dpop;
mod orphans;
mod party_records;
mod receipt_access;
mod selfdl;
mod selfdl_browser;
mod transport;
mod usage_records;
mod world;
