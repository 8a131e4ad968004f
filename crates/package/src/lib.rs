//! Signed data packages: what an agency signs and what the platform hands to a person or service.
//!
//! [`pki`] is the simulated government CA and the [`TrustStore`] that validates agency chains;
//! [`dataset`] signs one dataset with an agency key and runs the four ordered checks on it;
//! [`package`] puts the datasets of one transfer in a zip with the platform receipt and reads such a
//! zip back defensively, checking its receipt with the platform key the receipt's `kid` names among
//! [`PlatformKeys`]; [`seal`] encrypts a package at rest; [`e2e`] seals one end to end to an
//! online service (HPKE). The format is in `docs/PACKAGE.md`.
//! Time is always passed in; nothing here reads the wall clock.

pub mod agency_token;
pub mod dataset;
pub mod e2e;
mod ecdsa;
mod jws;
pub mod package;
mod pem;
pub mod pki;
pub mod platform_keys;
pub mod seal;

pub use agency_token::{AgencyTokenError, VerifiedAgencyToken, verify_agency_token};
pub use dataset::{
    AgencySigner, DataFile, DatasetError, DatasetReport, FileEntry, Manifest, SignError,
    SignedDataset, Verdict, verify_dataset,
};
pub use ecdsa::PublicKey as P256PublicKey;
pub use jws::Es256Signer;
pub use package::{
    ArchiveError, PackageBuilder, PackageError, PackageReport, PlatformJwsError, PlatformSigner,
    ReadLimits, Receipt, ReceiptError, jwk_thumbprint, read_package, verify_package,
    verify_package_with_keys, verify_package_with_limits, verify_platform_jws,
};
pub use pki::{CertError, Crl, IssuedCert, PkiError, SimulatedCa, TrustStore, TrustStoreError};
pub use platform_keys::{PlatformKeys, ec_public_key};
pub use seal::{PackageKey, SealError, open, seal};
