//! The package of one transfer: a zip of agency-signed datasets plus the platform receipt, built by
//! [`PackageBuilder`] and read back defensively (paths, sizes, entry count) by [`verify_package`].

use crate::dataset::{
    DatasetReport, RESERVED_NAMES, SignedDataset, Verdict, is_safe_name, verify_dataset,
};
use crate::ecdsa::{KeyPair, PublicKey};
use crate::jws::{self, Compact};
use crate::pki::TrustStore;
use crate::platform_keys::PlatformKeys;
use mydata_core::Timestamp;
use p256::ecdsa::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read, Write};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// Name of the platform receipt at the root of the zip.
pub const RECEIPT_PATH: &str = "receipt.jws";
/// Folder holding one sub-folder per dataset.
pub const DATASETS_DIR: &str = "datasets/";
pub const RECEIPT_VERSION: u32 = 1;

/// The platform's receipt: which datasets this package holds, for whom and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub version: u32,
    pub transfer_id: String,
    /// The person's pseudonym for this transfer, never a national ID.
    pub subject: String,
    pub datasets: Vec<String>,
    pub purpose: String,
    pub created_at_ms: i64,
    /// SHA-256 hex over the sorted lines `"<path> <sha256 hex>\n"` of every other zip entry.
    pub package_digest: String,
}

/// The platform's signing key (receipts, audit tree heads) with its key ID (`kid` header).
pub struct PlatformSigner {
    key: KeyPair,
    kid: String,
    header_b64: String,
}

impl std::fmt::Debug for PlatformSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformSigner").finish_non_exhaustive()
    }
}

impl PlatformSigner {
    pub fn new(key: SigningKey, kid: &str) -> Result<Self, PackageError> {
        let header = serde_json::json!({"alg": "ES256", "typ": "JOSE", "kid": kid});
        Ok(Self {
            key: KeyPair::new(key).map_err(PackageError::Key)?,
            kid: kid.to_owned(),
            header_b64: jws::b64url(&serde_json::to_vec(&header)?),
        })
    }

    /// A signer whose key ID is the key's RFC 7638 JWK thumbprint, so verifiers can match a
    /// signature to a published key without any naming scheme.
    pub fn with_thumbprint_kid(key: SigningKey) -> Result<Self, PackageError> {
        let kid = jwk_thumbprint(key.verifying_key());
        Self::new(key, &kid)
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        self.key.verifying_key()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `payload` as a compact JWS (ES256, with this signer's `kid`).
    pub fn sign(&self, payload: &[u8]) -> String {
        jws::sign_compact(&self.key, &self.header_b64, payload)
    }

    /// The public key as a JWK (RFC 7517) for a published key set.
    pub fn public_jwk(&self) -> serde_json::Value {
        signing_jwk(&self.kid, self.verifying_key())
    }
}

/// A platform signing key as published: its JWK with `kid`, `use` sig and `alg` ES256.
pub(crate) fn signing_jwk(kid: &str, key: &VerifyingKey) -> serde_json::Value {
    let mut jwk = ec_jwk(key);
    jwk["kid"] = kid.into();
    jwk["use"] = "sig".into();
    jwk["alg"] = "ES256".into();
    jwk
}

/// The required members of a P-256 public key's JWK, in RFC 7638's order.
fn ec_jwk(key: &VerifyingKey) -> serde_json::Value {
    let point = key.to_sec1_point(false);
    let x = point.x().map(|x| jws::b64url(x)).unwrap_or_default();
    let y = point.y().map(|y| jws::b64url(y)).unwrap_or_default();
    serde_json::json!({"crv": "P-256", "kty": "EC", "x": x, "y": y})
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url) of a P-256 public key.
pub fn jwk_thumbprint(key: &VerifyingKey) -> String {
    // serde_json writes object keys sorted, which is exactly RFC 7638's canonical form here.
    let canonical = serde_json::to_vec(&ec_jwk(key)).unwrap_or_default();
    jws::b64url(Sha256::digest(canonical).as_slice())
}

/// Why a platform signature (on a tree head, say) does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformJwsError {
    #[error("not a compact ES256 JWS: {0}")]
    Malformed(String),
    #[error("the signature does not verify with the platform key")]
    SignatureInvalid,
}

/// Checks a compact JWS made by [`PlatformSigner::sign`] and returns its payload.
pub fn verify_platform_jws(token: &[u8], key: &VerifyingKey) -> Result<Vec<u8>, PlatformJwsError> {
    let c = Compact::parse(token).map_err(PlatformJwsError::Malformed)?;
    let key = PublicKey::new(key).map_err(PlatformJwsError::Malformed)?;
    if !c.verify(&key) {
        return Err(PlatformJwsError::SignatureInvalid);
    }
    Ok(c.payload)
}

/// Refusal to build a package.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("a package needs at least one dataset")]
    NoDatasets,
    #[error("dataset {0:?} added twice")]
    DuplicateDataset(String),
    #[error("unsafe dataset ID or file name {0:?}")]
    UnsafeName(String),
    #[error("zip writing failed: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("zip writing failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("receipt serialisation failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the platform signing key cannot be used: {0}")]
    Key(String),
}

/// Collects the signed datasets of one transfer and writes the zip.
#[derive(Debug, Clone)]
pub struct PackageBuilder {
    transfer_id: String,
    subject: String,
    purpose: String,
    datasets: BTreeMap<String, SignedDataset>,
}

impl PackageBuilder {
    pub fn new(transfer_id: &str, subject: &str, purpose: &str) -> Self {
        Self {
            transfer_id: transfer_id.to_owned(),
            subject: subject.to_owned(),
            purpose: purpose.to_owned(),
            datasets: BTreeMap::new(),
        }
    }

    pub fn add_dataset(&mut self, ds: SignedDataset) -> Result<&mut Self, PackageError> {
        if !is_safe_name(&ds.dataset_id) {
            return Err(PackageError::UnsafeName(ds.dataset_id));
        }
        if let Some(bad) = ds.files.keys().find(|n| !is_safe_name(n)) {
            return Err(PackageError::UnsafeName(bad.clone()));
        }
        if self.datasets.contains_key(&ds.dataset_id) {
            return Err(PackageError::DuplicateDataset(ds.dataset_id));
        }
        self.datasets.insert(ds.dataset_id.clone(), ds);
        Ok(self)
    }

    /// The zip bytes, with the receipt signed by `platform` at `created_at`.
    pub fn build(
        &self,
        platform: &PlatformSigner,
        created_at: Timestamp,
    ) -> Result<Vec<u8>, PackageError> {
        if self.datasets.is_empty() {
            return Err(PackageError::NoDatasets);
        }
        let mut entries: Vec<(String, &[u8])> = Vec::new();
        for ds in self.datasets.values() {
            let dir = format!("{DATASETS_DIR}{}/", ds.dataset_id);
            entries.push((format!("{dir}chain.pem"), &ds.chain_pem));
            entries.push((format!("{dir}manifest.json"), &ds.manifest_json));
            entries.push((format!("{dir}manifest.jws"), &ds.manifest_jws));
            entries.push((format!("{dir}manifest.sig"), &ds.manifest_sig));
            for (name, bytes) in &ds.files {
                entries.push((format!("{dir}{name}"), bytes));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let digest = package_digest(entries.iter().map(|(p, b)| (p.as_str(), Sha256::digest(b))));
        let receipt = Receipt {
            version: RECEIPT_VERSION,
            transfer_id: self.transfer_id.clone(),
            subject: self.subject.clone(),
            datasets: self.datasets.keys().cloned().collect(),
            purpose: self.purpose.clone(),
            created_at_ms: created_at.millis(),
            package_digest: digest,
        };
        let receipt_jws = jws::sign_compact(
            &platform.key,
            &platform.header_b64,
            &serde_json::to_vec(&receipt)?,
        );

        let total: usize = entries.iter().map(|(p, b)| p.len() + b.len() + 100).sum();
        let mut zip = ZipWriter::new(Cursor::new(Vec::with_capacity(total + 1024)));
        let deflated = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .compression_level(Some(1));
        let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for (path, bytes) in &entries {
            zip.start_file(
                path.as_str(),
                if worth_deflating(path, bytes) {
                    deflated
                } else {
                    stored
                },
            )?;
            zip.write_all(bytes)?;
        }
        zip.start_file(RECEIPT_PATH, stored)?;
        zip.write_all(receipt_jws.as_bytes())?;
        Ok(zip.finish()?.into_inner())
    }
}

/// Below this size an entry is stored: setting up a deflate stream costs ~12 µs, about as much as
/// signing, to save at most a few hundred bytes (docs/PERFORMANCE.md, `prim_zip_*`).
const DEFLATE_MIN_BYTES: usize = 8 * 1024;

/// Whether deflating an entry pays: large, and not a format that is random or compressed already.
fn worth_deflating(path: &str, bytes: &[u8]) -> bool {
    const INCOMPRESSIBLE: [&str; 9] = [
        ".jws", ".sig", ".pem", ".pdf", ".zip", ".png", ".jpg", ".jpeg", ".gz",
    ];
    bytes.len() >= DEFLATE_MIN_BYTES
        && !INCOMPRESSIBLE
            .iter()
            .any(|ext| path.to_ascii_lowercase().ends_with(ext))
}

/// SHA-256 hex over `"<path> <sha256 hex>\n"` lines; `entries` must be sorted by path.
fn package_digest<'a, D: AsRef<[u8]>>(entries: impl Iterator<Item = (&'a str, D)>) -> String {
    let mut h = Sha256::new();
    for (path, digest) in entries {
        h.update(path.as_bytes());
        h.update(b" ");
        h.update(hex::encode(digest).as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Bounds on what reading a package may cost.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub max_entries: usize,
    /// Total uncompressed bytes, declared and actually read.
    pub max_total_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_entries: 1024,
            max_total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a zip was refused before any signature was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive is corrupt or truncated: {0}")]
    Corrupt(String),
    #[error("archive has {count} entries, more than the limit of {limit}")]
    TooManyEntries { count: usize, limit: usize },
    #[error("archive expands to more than {limit} bytes (zip bomb?)")]
    TooLarge { limit: u64 },
    #[error("entry {0:?} climbs out of the archive with '..'")]
    ParentDirPath(String),
    #[error("entry {0:?} has an absolute path")]
    AbsolutePath(String),
    #[error("entry {0:?} contains a backslash")]
    BackslashPath(String),
    #[error("entry {0:?} appears twice")]
    DuplicateEntry(String),
    #[error("central directory lists {declared} entries but only {distinct} distinct names")]
    DuplicateEntries { declared: usize, distinct: usize },
    #[error("entry {0:?} is not part of the package format")]
    UnexpectedEntry(String),
    #[error("entry {0:?} is encrypted or uses an unsupported compression")]
    Unsupported(String),
    #[error("receipt.jws is missing")]
    MissingReceipt,
    #[error("dataset {dataset:?} lacks {file}")]
    IncompleteDataset { dataset: String, file: &'static str },
}

/// Why the platform receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt.jws is malformed: {0}")]
    Malformed(String),
    #[error("receipt.jws signature does not verify with the platform key")]
    SignatureInvalid,
    /// The receipt names a signing key (`kid`) that is not among the platform keys given.
    #[error("receipt.jws is signed by platform key {kid}, which is not among the keys given")]
    UnknownKey { kid: String },
    #[error("receipt package_digest does not match the archive contents")]
    DigestMismatch,
    #[error("receipt lists datasets {receipt:?} but the archive holds {archive:?}")]
    DatasetsMismatch {
        receipt: Vec<String>,
        archive: Vec<String>,
    },
    #[error("dataset {dataset:?} was signed for transfer {manifest:?}, receipt is for {receipt:?}")]
    TransferMismatch {
        dataset: String,
        manifest: String,
        receipt: String,
    },
}

/// A zip read back safely, not yet verified.
#[derive(Debug, Clone)]
pub struct RawPackage {
    pub receipt_jws: Vec<u8>,
    pub datasets: Vec<SignedDataset>,
    /// The digest recomputed over the entries actually present.
    pub package_digest: String,
}

/// The verdicts of a package verification, for the CLI to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageReport {
    pub archive: Verdict<ArchiveError>,
    /// `NotRun` when no platform key was given.
    pub receipt_signature: Verdict<ReceiptError>,
    pub receipt_contents: Verdict<ReceiptError>,
    pub receipt: Option<Receipt>,
    pub datasets: Vec<DatasetReport>,
    pub platform_key_given: bool,
}

impl PackageReport {
    /// Every check passed (the receipt signature may be unchecked only if no key was given).
    pub fn is_ok(&self) -> bool {
        let sig_ok = self.receipt_signature.is_passed()
            || (!self.platform_key_given && self.receipt_signature == Verdict::NotRun);
        self.archive.is_passed()
            && sig_ok
            && self.receipt_contents.is_passed()
            && !self.datasets.is_empty()
            && self.datasets.iter().all(DatasetReport::is_ok)
    }
}

enum Slot {
    Receipt,
    Dataset { id: String, file: String },
}

fn classify(name: &str) -> Result<Slot, ArchiveError> {
    if name.contains('\\') {
        return Err(ArchiveError::BackslashPath(name.to_owned()));
    }
    let bytes = name.as_bytes();
    if name.starts_with('/') || (bytes.len() >= 2 && bytes[1] == b':') {
        return Err(ArchiveError::AbsolutePath(name.to_owned()));
    }
    if name.split('/').any(|s| s == "..") {
        return Err(ArchiveError::ParentDirPath(name.to_owned()));
    }
    if name == RECEIPT_PATH {
        return Ok(Slot::Receipt);
    }
    let unexpected = || ArchiveError::UnexpectedEntry(name.to_owned());
    let rest = name.strip_prefix(DATASETS_DIR).ok_or_else(unexpected)?;
    let (id, file) = rest.split_once('/').ok_or_else(unexpected)?;
    if !is_safe_name(id) || !is_safe_name(file) {
        return Err(unexpected());
    }
    Ok(Slot::Dataset {
        id: id.to_owned(),
        file: file.to_owned(),
    })
}

/// Read a package zip within `limits`, refusing anything outside the format.
pub fn read_package(bytes: &[u8], limits: &ReadLimits) -> Result<RawPackage, ArchiveError> {
    let corrupt = |e: &dyn std::fmt::Display| ArchiveError::Corrupt(e.to_string());
    // Count first, from the end record, so that a huge central directory is never parsed.
    let declared_entries = eocd_entry_count(bytes)?;
    if declared_entries > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            count: declared_entries,
            limit: limits.max_entries,
        });
    }
    let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(|e| corrupt(&e))?;
    // The zip reader keeps only the last of several same-named entries; compare with the count the
    // end-of-central-directory record declares so that a shadowed entry cannot slip by.
    if declared_entries != zip.len() {
        return Err(ArchiveError::DuplicateEntries {
            declared: declared_entries,
            distinct: zip.len(),
        });
    }
    if zip.len() > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            count: zip.len(),
            limit: limits.max_entries,
        });
    }
    // First pass over the central directory only: names and declared sizes.
    let mut declared: u64 = 0;
    let mut slots = Vec::with_capacity(zip.len());
    let mut names = BTreeSet::new();
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i).map_err(|e| corrupt(&e))?;
        let name = f.name().to_owned();
        declared = declared.saturating_add(f.size());
        if declared > limits.max_total_bytes {
            return Err(ArchiveError::TooLarge {
                limit: limits.max_total_bytes,
            });
        }
        let slot = classify(&name)?;
        if !names.insert(name.clone()) {
            return Err(ArchiveError::DuplicateEntry(name));
        }
        slots.push((name, slot));
    }
    // Second pass: decompress through a bounded reader, so a lying header cannot exceed the limit.
    let mut remaining = limits.max_total_bytes;
    let mut receipt_jws = None;
    let mut datasets: BTreeMap<String, SignedDataset> = BTreeMap::new();
    let mut hashes: Vec<(String, [u8; 32])> = Vec::with_capacity(slots.len());
    for (i, (name, slot)) in slots.into_iter().enumerate() {
        let f = zip.by_index(i).map_err(|e| match e {
            zip::result::ZipError::UnsupportedArchive(_) => ArchiveError::Unsupported(name.clone()),
            other => corrupt(&other),
        })?;
        let declared_size = f.size();
        let mut buf =
            Vec::with_capacity(usize::try_from(declared_size.min(remaining)).unwrap_or(0));
        f.take(remaining.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| corrupt(&e))?;
        let got = buf.len() as u64;
        if got > remaining {
            return Err(ArchiveError::TooLarge {
                limit: limits.max_total_bytes,
            });
        }
        if got != declared_size {
            return Err(ArchiveError::Corrupt(format!(
                "entry {name:?} holds {got} bytes, header says {declared_size}"
            )));
        }
        remaining -= got;
        match slot {
            Slot::Receipt => receipt_jws = Some(buf),
            Slot::Dataset { id, file } => {
                hashes.push((name, Sha256::digest(&buf).into()));
                let ds = datasets.entry(id.clone()).or_insert_with(|| SignedDataset {
                    dataset_id: id,
                    manifest_json: Vec::new(),
                    manifest_jws: Vec::new(),
                    manifest_sig: Vec::new(),
                    chain_pem: Vec::new(),
                    files: BTreeMap::new(),
                });
                match file.as_str() {
                    "manifest.json" => ds.manifest_json = buf,
                    "manifest.jws" => ds.manifest_jws = buf,
                    "manifest.sig" => ds.manifest_sig = buf,
                    "chain.pem" => ds.chain_pem = buf,
                    _ => {
                        ds.files.insert(file, buf);
                    }
                }
            }
        }
    }
    let receipt_jws = receipt_jws.ok_or(ArchiveError::MissingReceipt)?;
    let datasets: Vec<SignedDataset> = datasets.into_values().collect();
    for ds in &datasets {
        for (file, bytes) in RESERVED_NAMES.iter().zip([
            &ds.manifest_json,
            &ds.manifest_jws,
            &ds.manifest_sig,
            &ds.chain_pem,
        ]) {
            if bytes.is_empty() {
                return Err(ArchiveError::IncompleteDataset {
                    dataset: ds.dataset_id.clone(),
                    file,
                });
            }
        }
    }
    hashes.sort_by(|a, b| a.0.cmp(&b.0));
    let package_digest = package_digest(hashes.iter().map(|(p, d)| (p.as_str(), d)));
    Ok(RawPackage {
        receipt_jws,
        datasets,
        package_digest,
    })
}

/// Total entry count from the end-of-central-directory record (the one whose comment ends the file).
fn eocd_entry_count(bytes: &[u8]) -> Result<usize, ArchiveError> {
    const SIG: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const LEN: usize = 22;
    let corrupt = || ArchiveError::Corrupt("no end-of-central-directory record".into());
    let last = bytes.len().checked_sub(LEN).ok_or_else(corrupt)?;
    let first = last.saturating_sub(usize::from(u16::MAX));
    for at in (first..=last).rev() {
        let rec = &bytes[at..at + LEN];
        let comment_len = usize::from(u16::from_le_bytes([rec[20], rec[21]]));
        if rec[..4] == SIG && at + LEN + comment_len == bytes.len() {
            let total = u16::from_le_bytes([rec[10], rec[11]]);
            if total == u16::MAX {
                return Err(ArchiveError::Unsupported("zip64 archive".into()));
            }
            return Ok(usize::from(total));
        }
    }
    Err(corrupt())
}

/// [`verify_package_with_limits`] with [`ReadLimits::default`].
pub fn verify_package(
    bytes: &[u8],
    trust: &TrustStore,
    platform_key: Option<&VerifyingKey>,
    now: Timestamp,
) -> PackageReport {
    verify_package_with_limits(bytes, trust, platform_key, now, &ReadLimits::default())
}

/// Read the zip safely, check the receipt, then run the four checks on every dataset.
pub fn verify_package_with_limits(
    bytes: &[u8],
    trust: &TrustStore,
    platform_key: Option<&VerifyingKey>,
    now: Timestamp,
    limits: &ReadLimits,
) -> PackageReport {
    verify_with(bytes, trust, platform_key.map(ReceiptKey::One), now, limits)
}

/// As [`verify_package`], checking the receipt with the key of `keys` its `kid` names: a `kid`
/// not among them fails the signature check with [`ReceiptError::UnknownKey`]. A receipt naming
/// no key passes if any of them signed it.
pub fn verify_package_with_keys(
    bytes: &[u8],
    trust: &TrustStore,
    keys: &PlatformKeys,
    now: Timestamp,
) -> PackageReport {
    let limits = ReadLimits::default();
    verify_with(bytes, trust, Some(ReceiptKey::ByKid(keys)), now, &limits)
}

/// What the receipt's signature is checked against.
#[derive(Clone, Copy)]
enum ReceiptKey<'a> {
    /// This key, whatever the receipt's `kid`.
    One(&'a VerifyingKey),
    /// The key its `kid` names.
    ByKid(&'a PlatformKeys),
}

impl ReceiptKey<'_> {
    fn check(self, jws: &Compact<'_>) -> Result<(), ReceiptError> {
        // A key AWS-LC cannot load counts as a failed check (fail closed); p256 keys always load.
        let verifies = |key: &VerifyingKey| PublicKey::new(key).is_ok_and(|k| jws.verify(&k));
        let verified = match self {
            Self::One(key) => verifies(key),
            Self::ByKid(keys) => match jws.header.get("kid") {
                None => keys.iter().any(|(_, key)| verifies(key)),
                Some(serde_json::Value::String(kid)) => match keys.get(kid) {
                    Some(key) => verifies(key),
                    None => return Err(ReceiptError::UnknownKey { kid: kid.clone() }),
                },
                Some(_) => {
                    return Err(ReceiptError::Malformed("its kid is not a string".into()));
                }
            },
        };
        if verified {
            Ok(())
        } else {
            Err(ReceiptError::SignatureInvalid)
        }
    }
}

fn verify_with(
    bytes: &[u8],
    trust: &TrustStore,
    platform_key: Option<ReceiptKey<'_>>,
    now: Timestamp,
    limits: &ReadLimits,
) -> PackageReport {
    let mut report = PackageReport {
        archive: Verdict::NotRun,
        receipt_signature: Verdict::NotRun,
        receipt_contents: Verdict::NotRun,
        receipt: None,
        datasets: Vec::new(),
        platform_key_given: platform_key.is_some(),
    };
    let raw = match read_package(bytes, limits) {
        Ok(raw) => {
            report.archive = Verdict::Passed;
            raw
        }
        Err(e) => {
            report.archive = Verdict::Failed(e);
            return report;
        }
    };
    report.datasets = raw
        .datasets
        .iter()
        .map(|ds| verify_dataset(ds, trust, now))
        .collect();
    let jws = match Compact::parse(&raw.receipt_jws) {
        Ok(j) => j,
        Err(e) => {
            report.receipt_contents = Verdict::Failed(ReceiptError::Malformed(e));
            return report;
        }
    };
    if let Some(key) = platform_key {
        report.receipt_signature = match key.check(&jws) {
            Ok(()) => Verdict::Passed,
            Err(e) => Verdict::Failed(e),
        };
    }
    match serde_json::from_slice::<Receipt>(&jws.payload) {
        Ok(receipt) => {
            report.receipt_contents = match check_receipt(&receipt, &raw, &report.datasets) {
                Ok(()) => Verdict::Passed,
                Err(e) => Verdict::Failed(e),
            };
            report.receipt = Some(receipt);
        }
        Err(e) => {
            report.receipt_contents = Verdict::Failed(ReceiptError::Malformed(e.to_string()));
        }
    }
    report
}

fn check_receipt(
    receipt: &Receipt,
    raw: &RawPackage,
    datasets: &[DatasetReport],
) -> Result<(), ReceiptError> {
    if receipt.version != RECEIPT_VERSION {
        return Err(ReceiptError::Malformed(format!(
            "version {} is not supported",
            receipt.version
        )));
    }
    if receipt.package_digest != raw.package_digest {
        return Err(ReceiptError::DigestMismatch);
    }
    let mut listed = receipt.datasets.clone();
    listed.sort();
    let present: Vec<String> = raw.datasets.iter().map(|d| d.dataset_id.clone()).collect();
    if listed != present {
        return Err(ReceiptError::DatasetsMismatch {
            receipt: receipt.datasets.clone(),
            archive: present,
        });
    }
    // A dataset signed for another transfer must not be passed off as part of this one.
    for m in datasets.iter().filter_map(|d| d.manifest.as_ref()) {
        if m.transfer_id != receipt.transfer_id {
            return Err(ReceiptError::TransferMismatch {
                dataset: m.dataset_id.clone(),
                manifest: m.transfer_id.clone(),
                receipt: receipt.transfer_id.clone(),
            });
        }
    }
    Ok(())
}
