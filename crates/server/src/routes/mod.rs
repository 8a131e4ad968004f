//! Request handlers, one module per audience.

pub mod catalog_api;
pub mod health;
pub mod home;
pub mod login;
