//! The JSON shape of a signed dataset on the wire (agency → platform), and back to a
//! [`SignedDataset`] the package crate can verify.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mydata_package::SignedDataset;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One data file, its bytes in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFile {
    pub name: String,
    pub media_type: String,
    pub data: String,
}

/// A format the catalogue lists for the dataset that this answer does not carry, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotIncluded {
    pub format: String,
    pub reason: String,
}

/// The 200 body of the agency API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDatasetBody {
    pub dataset_id: String,
    /// `manifest.json` exactly as signed (a JSON document inside a string, so that its bytes survive).
    pub manifest: String,
    /// `manifest.jws`: compact JWS over the manifest, `x5c` header.
    pub manifest_jws: String,
    /// `manifest.sig`: DER ECDSA P-256 signature over the manifest bytes, standard base64.
    pub manifest_sig: String,
    /// `chain.pem`: the agency certificate then any intermediates.
    pub chain_pem: String,
    pub files: Vec<WireFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_included: Vec<NotIncluded>,
}

/// Why a body cannot be turned back into a [`SignedDataset`].
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("`{0}` is not valid base64")]
    Base64(String),
    #[error("file `{0}` appears twice")]
    DuplicateFile(String),
}

impl SignedDatasetBody {
    /// `media_types` gives each file's media type by name (the signed manifest has them too).
    pub fn from_signed(
        ds: &SignedDataset,
        media_type: impl Fn(&str) -> String,
        not_included: Vec<NotIncluded>,
    ) -> Self {
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
                    media_type: media_type(name),
                    data: STANDARD.encode(bytes),
                })
                .collect(),
            not_included,
        }
    }

    /// The dataset as the package crate verifies and stores it.
    pub fn into_signed(self) -> Result<SignedDataset, WireError> {
        let manifest_sig = STANDARD
            .decode(&self.manifest_sig)
            .map_err(|_| WireError::Base64("manifest_sig".into()))?;
        let mut files = BTreeMap::new();
        for f in self.files {
            let bytes = STANDARD
                .decode(&f.data)
                .map_err(|_| WireError::Base64(f.name.clone()))?;
            if files.insert(f.name.clone(), bytes).is_some() {
                return Err(WireError::DuplicateFile(f.name));
            }
        }
        Ok(SignedDataset {
            dataset_id: self.dataset_id,
            manifest_json: self.manifest.into_bytes(),
            manifest_jws: self.manifest_jws.into_bytes(),
            manifest_sig,
            chain_pem: self.chain_pem.into_bytes(),
            files,
        })
    }
}
