//! Domain types and rules of the mydata platform, free of I/O.
//!
//! Everything the other crates agree on lives here: the catalogue of datasets and services and its
//! validation ([`catalog`]), Taiwan ID and company numbers ([`id_number`]), identity methods and assurance levels ([`identity`]), the injected clock
//! ([`clock`]), the time limits the seeds set ([`limits`]) and the transfer state machine ([`transfer`]).
//! Nothing here reads files, talks to the network or looks at the wall clock by itself.

pub mod catalog;
pub mod clock;
pub mod counter;
pub mod id_number;
pub mod identity;
pub mod limits;
pub mod merkle;
pub mod retry;
pub mod transfer;

pub use catalog::{Catalog, CatalogIssue, CatalogSource};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use id_number::{BusinessId, IdNumber};
pub use identity::{AssuranceLevel, IdentityMethod};
