//! Request handlers, one module per audience.

pub mod audit;
pub mod catalog_api;
pub mod clerk;
pub mod counter;
pub mod dev;
pub mod download;
pub mod form;
pub mod health;
pub mod home;
pub mod login;
pub mod party_records;
pub mod passkeys;
pub mod usage;
