//! The platform's agency connector: everything about talking to a data-provider agency that does not
//! need the database.
//!
//! [`client`] makes the calls of the agency API (docs/agency-api.yaml) with a request token signed by
//! the platform key, bounded in time and size, and sorts each answer into a dataset, "not ready" or a
//! classified error; [`verify`] decides whether a dataset may be stored (signed, trusted chain, valid,
//! not revoked, signed by the agency that holds it, for this transfer); [`trust`] loads the roots and
//! CRLs; [`subject`] is the person's identity while a fetch needs it. The durable jobs that drive
//! these live in the server crate, which owns the database and the clock.

pub mod client;
pub mod protocol;
pub mod subject;
pub mod trust;
pub mod verify;

pub use client::{AgencyClient, Answer, Call, CallError, ClientSettings};
pub use protocol::SignedDatasetBody;
pub use subject::FetchSubject;
pub use trust::{TrustCache, TrustError, TrustSource};
pub use verify::{Expected, Rejection, Verified, check};
