//! Request handlers, one module per audience.

pub mod audit;
pub mod catalog_api;
pub mod dev;
pub mod health;
pub mod home;
pub mod login;
pub mod passkeys;
