//! The checks an agency's answer must pass before anything of it is stored: it is signed at all, the
//! four ordered checks of the seeds hold against the configured trust roots and CRLs, the signer is
//! the agency that holds the dataset, and the manifest names this transfer and this dataset.

use crate::protocol::SignedDatasetBody;
use mydata_core::Timestamp;
use mydata_package::{
    CertError, DatasetError, Manifest, SignedDataset, TrustStore, verify_dataset,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// What the answer must be about.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub agency_id: &'a str,
    pub dataset_id: &'a str,
    pub transfer_id: &'a str,
}

/// A dataset that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub dataset: SignedDataset,
    pub manifest: Manifest,
    /// SHA-256 (hex) of the signed manifest: names exactly what the agency vouched for.
    pub digest: String,
    /// Media type of each file, from the signed manifest.
    pub media_types: BTreeMap<String, String>,
}

/// Why an answer was refused. Messages carry no data content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the answer carries no signature")]
    Unsigned,
    #[error("the answer is malformed: {0}")]
    Malformed(String),
    #[error("the answer is for dataset `{got}`, not the one asked for")]
    WrongDataset { got: String },
    #[error("the dataset is signed by `{signer}`, not by `{expected}` which holds it")]
    WrongAgency { signer: String, expected: String },
    #[error("the dataset was signed for another transfer")]
    WrongTransfer,
    #[error("the agency certificate has expired or is not valid yet")]
    CertificateExpired,
    #[error("the agency certificate does not chain to a trusted root")]
    CertificateUntrusted,
    #[error("the agency certificate has been revoked")]
    CertificateRevoked,
    #[error("the agency certificate's revocation status cannot be established")]
    RevocationUnknown,
    #[error("the agency certificate is not acceptable: {0}")]
    CertificateInvalid(String),
    #[error("the signature does not verify: {0}")]
    BadSignature(String),
    #[error("a file does not match the signed manifest: {0}")]
    FileTampered(String),
}

impl Rejection {
    /// A stable code for records and audit events.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned_response",
            Rejection::Malformed(_) => "malformed_response",
            Rejection::WrongDataset { .. } => "wrong_dataset",
            Rejection::WrongAgency { .. } => "wrong_agency",
            Rejection::WrongTransfer => "wrong_transfer",
            Rejection::CertificateExpired => "certificate_expired",
            Rejection::CertificateUntrusted => "certificate_untrusted",
            Rejection::CertificateRevoked => "certificate_revoked",
            Rejection::RevocationUnknown => "revocation_unknown",
            Rejection::CertificateInvalid(_) => "certificate_invalid",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::FileTampered(_) => "file_tampered",
        }
    }
}

fn from_dataset_error(e: &DatasetError) -> Rejection {
    use DatasetError as D;
    match e {
        D::Certificate(CertError::Expired { .. } | CertError::NotYetValid { .. }) => {
            Rejection::CertificateExpired
        }
        D::Certificate(CertError::UntrustedIssuer) => Rejection::CertificateUntrusted,
        D::Certificate(CertError::Revoked) => Rejection::CertificateRevoked,
        D::Certificate(CertError::RevocationUnknown | CertError::CrlExpired) => {
            Rejection::RevocationUnknown
        }
        D::Certificate(CertError::NoCertificate) => Rejection::Unsigned,
        D::Certificate(other) => Rejection::CertificateInvalid(other.to_string()),
        D::PublicKey(m) => Rejection::CertificateInvalid(m.clone()),
        D::JwsMalformed(_)
        | D::JwsSignatureInvalid
        | D::JwsX5cMismatch
        | D::JwsPayloadMismatch
        | D::SigMalformed
        | D::SigInvalid => Rejection::BadSignature(e.to_string()),
        D::ManifestMalformed(_) | D::ManifestVersion(_) => Rejection::Malformed(e.to_string()),
        D::DatasetIdMismatch { manifest, .. } => Rejection::WrongDataset {
            got: manifest.clone(),
        },
        D::AgencyMismatch { manifest, .. } => Rejection::WrongAgency {
            signer: manifest.clone(),
            expected: String::new(),
        },
        D::FileMissing(_)
        | D::FileUnexpected(_)
        | D::FileListedTwice(_)
        | D::FileSizeMismatch { .. }
        | D::FileDigestMismatch(_) => Rejection::FileTampered(e.to_string()),
    }
}

/// Runs every check on `body` at `now`.
pub fn check(
    body: &SignedDatasetBody,
    expected: Expected<'_>,
    trust: &TrustStore,
    now: Timestamp,
) -> Result<Verified, Rejection> {
    if body.is_unsigned() {
        return Err(Rejection::Unsigned);
    }
    if body.dataset_id != expected.dataset_id {
        return Err(Rejection::WrongDataset {
            got: body.dataset_id.clone(),
        });
    }
    let dataset = body
        .to_signed()
        .map_err(|e| Rejection::Malformed(e.to_string()))?;
    let report = verify_dataset(&dataset, trust, now);
    if let Some(e) = report.error() {
        return Err(match from_dataset_error(e) {
            Rejection::WrongAgency { signer, .. } => Rejection::WrongAgency {
                signer,
                expected: expected.agency_id.to_owned(),
            },
            other => other,
        });
    }
    let (Some(signer), Some(manifest)) = (report.agency_id, report.manifest) else {
        return Err(Rejection::Malformed("verification left no manifest".into()));
    };
    if signer != expected.agency_id {
        return Err(Rejection::WrongAgency {
            signer,
            expected: expected.agency_id.to_owned(),
        });
    }
    if manifest.transfer_id != expected.transfer_id {
        return Err(Rejection::WrongTransfer);
    }
    let media_types = manifest
        .files
        .iter()
        .map(|f| (f.name.clone(), f.media_type.clone()))
        .collect();
    Ok(Verified {
        digest: hex::encode(Sha256::digest(&dataset.manifest_json)),
        dataset,
        manifest,
        media_types,
    })
}
