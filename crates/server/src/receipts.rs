//! Signed consent and deletion receipts bound to the audit log, and their offline verification.
//!
//! A receipt is a statement signed by the platform key (compact JWS, ES256). Issuing one appends an
//! audit event (`receipt.consent` / `receipt.deletion`) whose detail carries the SHA-256 of the
//! signed statement, so the Merkle leaf of that event commits to the receipt's exact content. The
//! downloadable [`ReceiptFile`] holds the signed statement (and a readable copy), that audit entry,
//! its inclusion proof and the signed tree head the proof leads to; a head is issued on demand when
//! the event is not in the tree yet. [`verify_receipt_file`] checks all of it with the public key
//! only, one verdict per step:
//!
//! ```text
//! 1 receipt signature    JWS verifies with the platform key; the readable copy equals the signed one
//! 2 audit entry          entry names this receipt (kind, transfer, subject, SHA-256 of the JWS payload)
//! 3 inclusion proof      leaf hash of the entry + audit path lead to the head's root at its size
//! 4 tree head signature  the head (size, root, time) is signed by the platform key
//! ```
//!
//! The flows (self-download, counter, online) only call [`consent_receipt`] and
//! [`deletion_receipt`]; the route in `routes::audit` serves the file.

use crate::state::AppState;
use mydata_core::merkle::{self, Hash};
use mydata_core::transfer::{TransferKind, TransferState};
use mydata_store::{AuditEvent, NewAuditEvent, NewReceipt, StoreError, StoredReceipt, Transfer};
use p256::ecdsa::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `format` member of a receipt file.
pub const RECEIPT_FILE_FORMAT: &str = "mydata-receipt-file/1";
/// The `typ` member of a signed receipt statement.
pub const RECEIPT_TYP: &str = "mydata-receipt";

/// Which statement a receipt makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The person consented to this transfer.
    Consent,
    /// The data of this transfer is gone from the platform.
    Deletion,
}

impl ReceiptKind {
    pub fn code(self) -> &'static str {
        match self {
            ReceiptKind::Consent => "consent",
            ReceiptKind::Deletion => "deletion",
        }
    }

    /// The audit event kind of a receipt of this kind.
    pub fn event_kind(self) -> &'static str {
        match self {
            ReceiptKind::Consent => "receipt.consent",
            ReceiptKind::Deletion => "receipt.deletion",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "consent" => Some(ReceiptKind::Consent),
            "deletion" => Some(ReceiptKind::Deletion),
            _ => None,
        }
    }
}

/// Why a transfer's data was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionReason {
    /// Deleted at first retrieval (saved by the person, shown at the counter, fetched by the service).
    Retrieved,
    /// The 8-hour limit passed.
    Expired,
    /// The person refused consent: nothing was fetched.
    Refused,
    /// The person cancelled before release.
    Cancelled,
}

/// Who the data of the transfer was for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecipient {
    /// `self`, `counter` or `service`.
    pub kind: String,
    /// The counter or service ID; absent for the person themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What a receipt states. Consent receipts carry `consented_at_ms`; deletion receipts carry
/// `deleted_at_ms`, `reason` and `deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptStatement {
    pub typ: String,
    pub receipt_id: String,
    pub kind: ReceiptKind,
    pub transfer_id: String,
    /// The person's pseudonym, never an ID number.
    pub subject: String,
    pub recipient: ReceiptRecipient,
    pub datasets: Vec<String>,
    pub purpose: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consented_at_ms: Option<i64>,
    /// SHA-256 of the data package, when it is known (see docs/PACKAGE.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeletionReason>,
    /// What was deleted: `package` (the fetched datasets) and `package_key`; empty when nothing
    /// was ever fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Vec<String>>,
    pub issued_at_ms: i64,
}

/// The audit entry of a receipt, exactly the fields its leaf hash covers (see
/// `mydata_store::canonical_entry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptEntry {
    pub leaf_index: u64,
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub subject: Option<String>,
    pub transfer_id: Option<String>,
    pub actor: String,
    pub detail: serde_json::Value,
}

impl ReceiptEntry {
    fn from_event(leaf_index: u64, e: &AuditEvent) -> Self {
        Self {
            leaf_index,
            seq: e.seq,
            at: e.at.millis(),
            kind: e.kind.clone(),
            subject: e.subject.clone(),
            transfer_id: e.transfer_id.clone(),
            actor: e.actor.clone(),
            detail: e.detail.clone(),
        }
    }

    /// The RFC 9162 leaf hash of this entry.
    pub fn leaf_hash(&self) -> Hash {
        let event = AuditEvent {
            seq: self.seq,
            at: mydata_core::Timestamp::from_millis(self.at),
            kind: self.kind.clone(),
            subject: self.subject.clone(),
            transfer_id: self.transfer_id.clone(),
            actor: self.actor.clone(),
            detail: self.detail.clone(),
        };
        mydata_store::event_leaf_hash(self.leaf_index, &event)
    }
}

/// A signed tree head as it appears in a receipt file and `GET /api/v1/audit/tree-head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub tree_size: u64,
    pub root_hash: String,
    pub created_at_ms: i64,
    pub signature: String,
}

impl SignedHead {
    pub fn from_head(h: &mydata_store::TreeHead) -> Option<Self> {
        Some(Self {
            tree_size: h.tree_size,
            root_hash: h.root_hash.clone(),
            created_at_ms: h.created_at.millis(),
            signature: h.signature.clone()?,
        })
    }

    fn as_tree_head(&self) -> mydata_store::TreeHead {
        mydata_store::TreeHead {
            tree_size: self.tree_size,
            root_hash: self.root_hash.clone(),
            created_at: mydata_core::Timestamp::from_millis(self.created_at_ms),
            signature: Some(self.signature.clone()),
        }
    }
}

/// The downloadable receipt: everything needed to check it offline with the platform's public key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptFile {
    pub format: String,
    /// A readable copy of the signed statement (checked equal to it).
    pub statement: serde_json::Value,
    /// The statement signed by the platform (compact JWS, ES256).
    pub signed_statement: String,
    pub audit_entry: ReceiptEntry,
    /// The audit path (hex hashes, RFC 9162 order) from the entry's leaf to `tree_head`'s root.
    pub inclusion_proof: Vec<String>,
    pub tree_head: SignedHead,
}

/// Why a receipt cannot be issued.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("transfer `{0}` does not exist")]
    TransferNotFound(String),
    #[error("no {kind} receipt for this transfer yet: {reason}")]
    NotAvailable {
        kind: &'static str,
        reason: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most integration rounds a receipt waits for its event to enter the tree.
const MAX_INTEGRATION_ROUNDS: usize = 100;

/// The consent receipt of a transfer, issued on first request. With `package_digest`, the receipt
/// names that package (a new receipt if the earlier one was issued before the package existed);
/// without, the latest consent receipt is returned or one without a digest is issued.
pub async fn consent_receipt(
    state: &AppState,
    transfer_id: &str,
    package_digest: Option<&str>,
) -> Result<ReceiptFile, ReceiptError> {
    let t = load_transfer(state, transfer_id).await?;
    let events = state.store().audit_for_transfer(transfer_id).await?;
    let consent = events
        .iter()
        .find(|e| e.kind == "transfer.fetching")
        .ok_or(ReceiptError::NotAvailable {
            kind: "consent",
            reason: "the person has not consented to it",
        })?;
    let existing = match package_digest {
        Some(d) => state.store().receipt_for(transfer_id, "consent", d).await?,
        None => state
            .store()
            .receipts_for_transfer(transfer_id)
            .await?
            .into_iter()
            .rfind(|r| r.kind == "consent"),
    };
    let stored = match existing {
        Some(r) => r,
        None => {
            let mut st = statement(state, &t, ReceiptKind::Consent);
            st.consented_at_ms = Some(consent.at.millis());
            st.package_digest = package_digest.map(str::to_owned);
            issue(state, &t, st).await?
        }
    };
    receipt_file(state, &stored).await
}

/// The deletion receipt of a transfer whose data is gone (retrieved, expired, refused or
/// cancelled), issued on first request.
pub async fn deletion_receipt(
    state: &AppState,
    transfer_id: &str,
) -> Result<ReceiptFile, ReceiptError> {
    let t = load_transfer(state, transfer_id).await?;
    if !t.state.is_terminal() {
        return Err(ReceiptError::NotAvailable {
            kind: "deletion",
            reason: "its data has not been deleted yet",
        });
    }
    let stored = match state
        .store()
        .receipt_for(transfer_id, "deletion", "")
        .await?
    {
        Some(r) => r,
        None => {
            let events = state.store().audit_for_transfer(transfer_id).await?;
            let end = events
                .iter()
                .rfind(|e| e.kind == format!("transfer.{}", t.state.code()));
            let reason = match (t.state, end.and_then(|e| e.detail["event"].as_str())) {
                (TransferState::Refused, _) => DeletionReason::Refused,
                (TransferState::Expired, Some("cancel")) => DeletionReason::Cancelled,
                (TransferState::Expired, _) => DeletionReason::Expired,
                _ => DeletionReason::Retrieved,
            };
            let fetched = events.iter().any(|e| e.kind == "transfer.fetching");
            let mut st = statement(state, &t, ReceiptKind::Deletion);
            st.deleted_at_ms = Some(end.map_or(t.updated_at, |e| e.at).millis());
            st.reason = Some(reason);
            st.deleted = Some(if fetched {
                vec!["package".into(), "package_key".into()]
            } else {
                Vec::new()
            });
            issue(state, &t, st).await?
        }
    };
    receipt_file(state, &stored).await
}

/// The receipt an audit event stands for: consent for `transfer.fetching`, deletion for the
/// events that end a transfer (`transfer.deleted`, `transfer.expired`, `transfer.refused`), and
/// the receipt itself for `receipt.*` events.
pub async fn receipt_for_event(state: &AppState, seq: i64) -> Result<ReceiptFile, ReceiptError> {
    let not_receipt = ReceiptError::NotAvailable {
        kind: "event",
        reason: "this audit event is neither a consent nor the end of a transfer",
    };
    let leaf = state.store().audit_leaf_of_event(seq).await?;
    let event = match leaf {
        Some(l) => l.event,
        None => state
            .store()
            .audit_event(seq)
            .await?
            .ok_or(ReceiptError::NotAvailable {
                kind: "event",
                reason: "no audit event has this number",
            })?,
    };
    let Some(transfer_id) = event.transfer_id.as_deref() else {
        return Err(not_receipt);
    };
    match event.kind.as_str() {
        "transfer.fetching" => consent_receipt(state, transfer_id, None).await,
        "transfer.deleted" | "transfer.expired" | "transfer.refused" => {
            deletion_receipt(state, transfer_id).await
        }
        "receipt.consent" | "receipt.deletion" => {
            let stored = state
                .store()
                .receipts_for_transfer(transfer_id)
                .await?
                .into_iter()
                .find(|r| r.seq == seq)
                .ok_or(not_receipt)?;
            receipt_file(state, &stored).await
        }
        _ => Err(not_receipt),
    }
}

async fn load_transfer(state: &AppState, id: &str) -> Result<Transfer, ReceiptError> {
    state
        .store()
        .transfer(id)
        .await?
        .ok_or_else(|| ReceiptError::TransferNotFound(id.to_owned()))
}

fn statement(state: &AppState, t: &Transfer, kind: ReceiptKind) -> ReceiptStatement {
    let recipient = match t.kind {
        TransferKind::SelfDownload => ReceiptRecipient {
            kind: "self".into(),
            id: None,
        },
        TransferKind::Counter => ReceiptRecipient {
            kind: "counter".into(),
            id: t.recipient.clone(),
        },
        TransferKind::Online => ReceiptRecipient {
            kind: "service".into(),
            id: t.recipient.clone(),
        },
    };
    ReceiptStatement {
        typ: RECEIPT_TYP.into(),
        receipt_id: uuid::Uuid::new_v4().to_string(),
        kind,
        transfer_id: t.id.clone(),
        subject: t.subject.clone(),
        recipient,
        datasets: t.datasets.iter().map(|d| d.dataset_id.clone()).collect(),
        purpose: t.purpose.clone(),
        consented_at_ms: None,
        package_digest: None,
        deleted_at_ms: None,
        reason: None,
        deleted: None,
        issued_at_ms: state.clock().now().millis(),
    }
}

/// Signs the statement and stores it with the audit event that commits to it.
async fn issue(
    state: &AppState,
    t: &Transfer,
    st: ReceiptStatement,
) -> Result<StoredReceipt, ReceiptError> {
    let payload = serde_json::to_vec(&st).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let jws = state.platform().sign(&payload);
    let now = state.clock().now();
    let event = NewAuditEvent {
        at: now,
        kind: st.kind.event_kind().into(),
        subject: Some(t.subject.clone()),
        transfer_id: Some(t.id.clone()),
        actor: "platform".into(),
        detail: serde_json::json!({
            "receipt_id": st.receipt_id,
            "receipt_sha256": hex::encode(Sha256::digest(&payload)),
        }),
    };
    let row = NewReceipt {
        id: st.receipt_id.clone(),
        transfer_id: t.id.clone(),
        kind: st.kind.code().into(),
        package_digest: st.package_digest.clone().unwrap_or_default(),
        jws,
        created_at: now,
    };
    Ok(state.store().store_receipt(&row, &event).await?)
}

/// Builds the downloadable file of a stored receipt, integrating its event and signing a head
/// first when needed.
async fn receipt_file(
    state: &AppState,
    stored: &StoredReceipt,
) -> Result<ReceiptFile, ReceiptError> {
    let store = state.store();
    let mut leaf = store.audit_leaf_of_event(stored.seq).await?;
    for _ in 0..MAX_INTEGRATION_ROUNDS {
        if leaf.is_some() {
            break;
        }
        crate::background::integrate_and_sign(state).await?;
        leaf = store.audit_leaf_of_event(stored.seq).await?;
    }
    let leaf = leaf.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "audit event {} of receipt {} is not in the tree",
            stored.seq, stored.id
        ))
    })?;
    let mut head = store
        .latest_tree_head()
        .await?
        .filter(|h| h.signature.is_some() && h.tree_size > leaf.leaf_index);
    if head.is_none() {
        // A head recorded by another process but not signed yet: sign it now.
        crate::background::integrate_and_sign(state).await?;
        head = store
            .latest_tree_head()
            .await?
            .filter(|h| h.signature.is_some() && h.tree_size > leaf.leaf_index);
    }
    let head = head
        .as_ref()
        .and_then(SignedHead::from_head)
        .ok_or_else(|| StoreError::Corrupt("no signed tree head covers the receipt".into()))?;
    let proof = store
        .audit_inclusion_proof_at(leaf.leaf_index, head.tree_size)
        .await?;
    let payload = jws_payload(&stored.jws).unwrap_or_default();
    Ok(ReceiptFile {
        format: RECEIPT_FILE_FORMAT.into(),
        statement: serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null),
        signed_statement: stored.jws.clone(),
        audit_entry: ReceiptEntry::from_event(leaf.leaf_index, &leaf.event),
        inclusion_proof: proof.iter().map(hex::encode).collect(),
        tree_head: head,
    })
}

/// The payload of a compact JWS, without checking it (the verifier checks).
fn jws_payload(jws: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let payload = jws.trim().split('.').nth(1)?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
}

/// The outcome of one verification step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Ok(String),
    Failed(String),
}

impl Step {
    pub fn is_ok(&self) -> bool {
        matches!(self, Step::Ok(_))
    }
}

/// The verdict on a receipt file, one step each (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptReport {
    pub receipt_signature: Step,
    pub audit_entry: Step,
    pub inclusion_proof: Step,
    pub tree_head_signature: Step,
    /// The signed statement, when its signature holds.
    pub statement: Option<ReceiptStatement>,
}

impl ReceiptReport {
    pub fn is_ok(&self) -> bool {
        self.steps().iter().all(|(_, s)| s.is_ok())
    }

    /// The steps in order with their names.
    pub fn steps(&self) -> [(&'static str, &Step); 4] {
        [
            ("receipt signature", &self.receipt_signature),
            ("audit entry matches the receipt", &self.audit_entry),
            (
                "inclusion proof against the tree head",
                &self.inclusion_proof,
            ),
            ("tree head signature", &self.tree_head_signature),
        ]
    }
}

/// A public key that may have signed receipts, with its key ID if known.
#[derive(Debug, Clone)]
pub struct PlatformKey {
    pub kid: Option<String>,
    pub key: VerifyingKey,
}

/// `keys` by kid, a key without one under its RFC 7638 thumbprint (as the platform names its
/// keys), for checks that pick the key a signature's `kid` names.
pub fn key_set(keys: impl IntoIterator<Item = PlatformKey>) -> mydata_package::PlatformKeys {
    let mut set = mydata_package::PlatformKeys::new();
    for k in keys {
        set.insert_named(k.kid.as_deref(), k.key);
    }
    set
}

/// Reads the platform's public key(s) from a JWK set (as served at
/// `/.well-known/mydata/jwks.json`), a single JWK, or a PEM public key.
pub fn read_platform_keys(bytes: &[u8]) -> Result<Vec<PlatformKey>, String> {
    use p256::pkcs8::DecodePublicKey;
    let text = std::str::from_utf8(bytes).map_err(|_| "the key file is not text".to_owned())?;
    let trimmed = text.trim_start();
    if trimmed.starts_with("-----BEGIN") {
        let key = VerifyingKey::from_public_key_pem(text)
            .map_err(|e| format!("not a P-256 public key in PEM: {e}"))?;
        return Ok(vec![PlatformKey { kid: None, key }]);
    }
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("neither a PEM public key nor JSON (JWKS): {e}"))?;
    let jwks: Vec<&serde_json::Value> = match v.get("keys").and_then(|k| k.as_array()) {
        Some(keys) => keys.iter().collect(),
        None => vec![&v],
    };
    let keys: Vec<PlatformKey> = jwks.into_iter().filter_map(|k| jwk_key(k).ok()).collect();
    if keys.is_empty() {
        return Err("the JWK set holds no P-256 (EC, crv P-256) public key".into());
    }
    Ok(keys)
}

fn jwk_key(jwk: &serde_json::Value) -> Result<PlatformKey, String> {
    let key = mydata_package::ec_public_key(jwk).ok_or("not an EC P-256 public key")?;
    Ok(PlatformKey {
        kid: jwk["kid"].as_str().map(str::to_owned),
        key,
    })
}

/// Checks a receipt file offline against the platform's public key(s); every step is checked and
/// reported even when an earlier one fails.
pub fn verify_receipt_file(bytes: &[u8], keys: &[PlatformKey]) -> Result<ReceiptReport, String> {
    let file: ReceiptFile = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a receipt file ({RECEIPT_FILE_FORMAT}): {e}"))?;
    if file.format != RECEIPT_FILE_FORMAT {
        return Err(format!(
            "unknown receipt file format `{}` (expected {RECEIPT_FILE_FORMAT})",
            file.format
        ));
    }
    // 1. The statement's signature, and the readable copy against it.
    let mut statement = None;
    let mut payload = None;
    let receipt_signature = match verify_with_any(file.signed_statement.as_bytes(), keys) {
        Err(e) => Step::Failed(format!("the signed receipt {e}")),
        Ok((p, kid)) => {
            let signed: Result<serde_json::Value, _> = serde_json::from_slice(&p);
            let step = match signed {
                Err(e) => Step::Failed(format!("the signed receipt is not JSON: {e}")),
                Ok(signed) => match first_difference(&file.statement, &signed) {
                    Some(field) if field.is_empty() => Step::Failed(
                        "the readable statement differs from the signed receipt (edited after signing)".into(),
                    ),
                    Some(field) => Step::Failed(format!(
                        "the readable statement differs from the signed receipt in `{field}` (edited after signing)"
                    )),
                    None => match serde_json::from_value::<ReceiptStatement>(signed) {
                        Ok(st) if st.typ == RECEIPT_TYP => {
                            let step = Step::Ok(format!(
                                "{} receipt {} for transfer {}, signed by platform key {kid}",
                                st.kind.code(),
                                st.receipt_id,
                                st.transfer_id
                            ));
                            statement = Some(st);
                            step
                        }
                        Ok(st) => Step::Failed(format!(
                            "the signed statement is a `{}`, not a receipt",
                            st.typ
                        )),
                        Err(e) => Step::Failed(format!("the signed receipt is malformed: {e}")),
                    },
                },
            };
            payload = Some(p);
            step
        }
    };
    // 2. The audit entry commits to exactly this receipt.
    let entry = &file.audit_entry;
    let audit_entry = match (&statement, &payload) {
        (Some(st), Some(p)) => {
            let digest = hex::encode(Sha256::digest(p));
            if entry.kind != st.kind.event_kind() {
                Step::Failed(format!(
                    "audit entry {} is a `{}` event, not `{}`",
                    entry.leaf_index,
                    entry.kind,
                    st.kind.event_kind()
                ))
            } else if entry.detail["receipt_sha256"].as_str() != Some(digest.as_str()) {
                Step::Failed(format!(
                    "audit entry {} commits to another receipt (receipt_sha256 differs from the signed receipt's {digest})",
                    entry.leaf_index
                ))
            } else if entry.transfer_id.as_deref() != Some(st.transfer_id.as_str())
                || entry.subject.as_deref() != Some(st.subject.as_str())
            {
                Step::Failed(format!(
                    "audit entry {} names another transfer or person than the receipt",
                    entry.leaf_index
                ))
            } else {
                Step::Ok(format!(
                    "audit entry {} (event {}) commits to this receipt",
                    entry.leaf_index, entry.seq
                ))
            }
        }
        _ => Step::Failed(
            "not checked: the signed receipt could not be read (see the first step)".into(),
        ),
    };
    // 3. The entry's leaf is in the tree the head describes.
    let inclusion_proof = check_inclusion(&file);
    // 4. The head is the platform's.
    let head = file.tree_head.as_tree_head();
    let tree_head_signature = match keys
        .iter()
        .map(|k| crate::keys::verify_tree_head(&head, &k.key))
        .find(Result::is_ok)
    {
        Some(_) => Step::Ok(format!(
            "tree head at size {} (root {}) is signed by the platform",
            head.tree_size, head.root_hash
        )),
        None => {
            let why = keys
                .first()
                .map(|k| crate::keys::verify_tree_head(&head, &k.key))
                .and_then(Result::err)
                .unwrap_or_else(|| "no key given".into());
            Step::Failed(format!("tree head at size {}: {why}", head.tree_size))
        }
    };
    Ok(ReceiptReport {
        receipt_signature,
        audit_entry,
        inclusion_proof,
        tree_head_signature,
        statement,
    })
}

fn check_inclusion(file: &ReceiptFile) -> Step {
    let head = &file.tree_head;
    let root = match decode_hash(&head.root_hash) {
        Ok(r) => r,
        Err(e) => return Step::Failed(format!("the tree head's root hash {e}")),
    };
    let mut proof = Vec::with_capacity(file.inclusion_proof.len());
    for (i, h) in file.inclusion_proof.iter().enumerate() {
        match decode_hash(h) {
            Ok(h) => proof.push(h),
            Err(e) => return Step::Failed(format!("hash {} of the inclusion proof {e}", i + 1)),
        }
    }
    let index = file.audit_entry.leaf_index;
    let leaf = file.audit_entry.leaf_hash();
    match merkle::verify_inclusion(&leaf, index, head.tree_size, &proof, &root) {
        Ok(()) => Step::Ok(format!(
            "entry {index} is in the tree of size {} ({} hashes)",
            head.tree_size,
            proof.len()
        )),
        Err(merkle::ProofError::RootMismatch) => Step::Failed(format!(
            "the proof for entry {index} does not lead to the root of the tree of size {}: the entry, the proof or the head was altered",
            head.tree_size
        )),
        Err(merkle::ProofError::WrongLength) => Step::Failed(format!(
            "the proof has {} hashes, which does not fit entry {index} in a tree of size {}: it was made for another tree size or edited",
            proof.len(),
            head.tree_size
        )),
        Err(e) => Step::Failed(e.to_string()),
    }
}

fn decode_hash(s: &str) -> Result<Hash, String> {
    let v = hex::decode(s).map_err(|e| format!("is not hex: {e}"))?;
    Hash::try_from(v.as_slice()).map_err(|_| "is not 32 bytes".to_owned())
}

/// Verifies a platform JWS with the key its `kid` names, or with each key when it names none.
fn verify_with_any(jws: &[u8], keys: &[PlatformKey]) -> Result<(Vec<u8>, String), String> {
    let kid = jws_kid(jws);
    let candidates: Vec<&PlatformKey> = match &kid {
        Some(kid) if keys.iter().any(|k| k.kid.as_deref() == Some(kid)) => keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect(),
        _ => keys.iter().collect(),
    };
    let mut last = "was not checked: no key given".to_owned();
    for k in candidates {
        match mydata_package::verify_platform_jws(jws, &k.key) {
            Ok(p) => {
                let name = k
                    .kid
                    .clone()
                    .or(kid.clone())
                    .unwrap_or_else(|| mydata_package::jwk_thumbprint(&k.key));
                return Ok((p, name));
            }
            Err(mydata_package::PlatformJwsError::SignatureInvalid) => {
                last = "does not verify with the platform key (forged or edited)".into();
            }
            Err(e) => last = format!("is not valid: {e}"),
        }
    }
    Err(last)
}

fn jws_kid(jws: &[u8]) -> Option<String> {
    use base64::Engine;
    let header = jws.split(|b| *b == b'.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["kid"].as_str().map(str::to_owned)
}

/// The first member (dotted path) where two JSON values differ.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q).map(|sub| {
                    if sub.is_empty() {
                        k.clone()
                    } else {
                        format!("{k}.{sub}")
                    }
                }),
                _ => Some(k.clone()),
            })
        }
        _ if a == b => None,
        _ => Some(String::new()),
    }
}
