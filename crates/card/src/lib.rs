//! Identity certificates for the certificate login method (level 1): the simulated citizen and
//! business certificate authorities, PKCS#12 test cards for the synthetic population, and the
//! local card reader service `mydata card-agent` that signs the platform's login challenges.
//!
//! The platform side (challenge, chain and CRL checks, mapping to the person) lives in the server;
//! the two meet only through the contract in `docs/CARD-AGENT.md`.

pub mod agent;
pub mod ca;
pub mod card;
pub mod demo;

pub use ca::{CardKind, IdentityPki, Subject};
pub use card::{CardError, CardInfo, DEMO_PIN, OpenedCard};
