//! The agency API as the platform speaks it (docs/agency-api.yaml): the request token's claims and
//! the JSON bodies of the answers.
//!
//! Written from the specification, not shared with the simulator, so that the platform depends only
//! on the documented contract; a test checks both sides still agree on the wire.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mydata_package::SignedDataset;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The issuer every agency expects.
pub const ISSUER: &str = "mydata-platform";
/// Lifetime of one request token; agencies accept at most 300 s.
pub const TOKEN_LIFETIME_SECS: i64 = 120;

/// How the person proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assurance {
    /// An identity method code (`moica_cert`, `tw_fido`, …).
    pub method: String,
    /// 1 (strongest) to 4.
    pub level: u8,
}

/// Claims of the platform's request token (compact JWS, ES256, signed with the platform key).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestClaims {
    pub iss: String,
    /// The agency ID.
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    /// Unique per call: agencies refuse a token seen before.
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_id: Option<String>,
    /// The ID number or 統一編號 the data is about. Present only while talking to the agency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assurance: Option<Assurance>,
}

// Never print the subject: claims can end up in logs and failing-test output.
impl std::fmt::Debug for RequestClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestClaims")
            .field("aud", &self.aud)
            .field("jti", &self.jti)
            .field("transfer_id", &self.transfer_id)
            .field("dataset_id", &self.dataset_id)
            .field("subject", &self.subject.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// The 202 body: the request is being prepared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub request_id: String,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub ready_at: Option<i64>,
}

/// An error body (`{"error": code, "message": text}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub message: String,
}

/// One data file, its bytes in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFile {
    pub name: String,
    pub media_type: String,
    pub data: String,
}

/// A catalogued format the answer does not carry, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotIncluded {
    pub format: String,
    pub reason: String,
}

/// The 200 body: one agency-signed dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDatasetBody {
    pub dataset_id: String,
    /// `manifest.json` exactly as signed.
    pub manifest: String,
    /// Compact JWS over the manifest with an `x5c` header.
    pub manifest_jws: String,
    /// DER ECDSA signature over the manifest bytes, standard base64.
    pub manifest_sig: String,
    /// The agency certificate, then any intermediates.
    pub chain_pem: String,
    pub files: Vec<WireFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_included: Vec<NotIncluded>,
}

/// Why a 200 body cannot become a [`SignedDataset`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("`{0}` is not valid base64")]
    Base64(String),
    #[error("file `{0}` appears twice")]
    DuplicateFile(String),
}

impl SignedDatasetBody {
    /// True when the answer carries no signature material at all.
    pub fn is_unsigned(&self) -> bool {
        self.manifest_jws.trim().is_empty()
            && self.manifest_sig.trim().is_empty()
            && self.chain_pem.trim().is_empty()
    }

    /// The dataset as the package crate verifies and stores it.
    pub fn to_signed(&self) -> Result<SignedDataset, WireError> {
        let manifest_sig = STANDARD
            .decode(self.manifest_sig.trim())
            .map_err(|_| WireError::Base64("manifest_sig".into()))?;
        let mut files = BTreeMap::new();
        for f in &self.files {
            let bytes = STANDARD
                .decode(&f.data)
                .map_err(|_| WireError::Base64(f.name.clone()))?;
            if files.insert(f.name.clone(), bytes).is_some() {
                return Err(WireError::DuplicateFile(f.name.clone()));
            }
        }
        Ok(SignedDataset {
            dataset_id: self.dataset_id.clone(),
            manifest_json: self.manifest.clone().into_bytes(),
            manifest_jws: self.manifest_jws.clone().into_bytes(),
            manifest_sig,
            chain_pem: self.chain_pem.clone().into_bytes(),
            files,
        })
    }

    /// The body for a verified dataset (how the platform keeps it between fetch and packaging).
    pub fn from_signed(ds: &SignedDataset, media_types: &BTreeMap<String, String>) -> Self {
        Self {
            dataset_id: ds.dataset_id.clone(),
            manifest: String::from_utf8_lossy(&ds.manifest_json).into_owned(),
            manifest_jws: String::from_utf8_lossy(&ds.manifest_jws).into_owned(),
            manifest_sig: STANDARD.encode(&ds.manifest_sig),
            chain_pem: String::from_utf8_lossy(&ds.chain_pem).into_owned(),
            files: ds
                .files
                .iter()
                .map(|(name, bytes)| WireFile {
                    name: name.clone(),
                    media_type: media_types.get(name).cloned().unwrap_or_default(),
                    data: STANDARD.encode(bytes),
                })
                .collect(),
            not_included: Vec::new(),
        }
    }
}
