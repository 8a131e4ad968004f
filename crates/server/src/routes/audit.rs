//! The audit log over HTTP: signed tree heads (latest, at a size, on demand), inclusion and
//! consistency proofs, and receipt files. Everything here is public except receipts, which only
//! the person the transfer is about gets, in their signed-in session (see [`require_subject`]).

use super::clip;
use crate::error::AppError;
use crate::receipts::{self, ReceiptError, ReceiptFile, ReceiptKind, SignedHead};
use crate::routes::path::Path;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::HashMap;

type Params = Query<HashMap<String, String>>;

/// Reads a whole-number query parameter; refuses parameters the endpoint does not know.
fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, AppError> {
    let Some(raw) = params.get(name).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    raw.parse::<u64>()
        .map(Some)
        .map_err(|_| AppError::InvalidParameter {
            name: name.into(),
            message: format!("must be a whole number from 0 up, got `{}`", clip(raw)),
        })
}

fn required(params: &HashMap<String, String>, name: &str) -> Result<u64, AppError> {
    number(params, name)?.ok_or_else(|| AppError::InvalidParameter {
        name: name.into(),
        message: "is required".into(),
    })
}

fn only_known(params: &HashMap<String, String>, known: &[&str]) -> Result<(), AppError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(AppError::InvalidQuery(format!(
            "unknown parameter `{}` (this endpoint takes {})",
            clip(k),
            known.join(", ")
        ))),
    }
}

fn hexes(hashes: &[mydata_core::merkle::Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

/// Checks that `size` is within the integrated log and returns the log's size.
async fn check_size(state: &AppState, size: u64) -> Result<u64, AppError> {
    let log_size = state.store().audit_tree_size().await?;
    if size > log_size {
        return Err(AppError::TreeSizeOutOfRange { size, log_size });
    }
    Ok(log_size)
}

async fn signed_head_at(state: &AppState, size: u64) -> Result<Option<SignedHead>, AppError> {
    Ok(state
        .store()
        .tree_head_at(size)
        .await?
        .as_ref()
        .and_then(SignedHead::from_head))
}

/// `POST /api/v1/audit/tree-head`: integrates pending events now, signs the new head and returns
/// the latest signed head (a client that needs a head covering its event need not wait).
pub async fn issue_tree_head(State(state): State<AppState>) -> Result<Json<SignedHead>, AppError> {
    crate::background::integrate_and_sign(&state).await?;
    let head = state
        .store()
        .latest_tree_head()
        .await?
        .as_ref()
        .and_then(SignedHead::from_head)
        .ok_or_else(|| AppError::NotFound {
            what: "signed tree head",
            id: "latest (the audit log is empty)".into(),
        })?;
    Ok(Json(head))
}

/// `GET /api/v1/audit/tree-heads/{size}`: the signed head recorded at exactly this size.
pub async fn tree_head_at(
    State(state): State<AppState>,
    Path(size): Path<String>,
) -> Result<Json<SignedHead>, AppError> {
    let size = size
        .parse::<u64>()
        .map_err(|_| AppError::InvalidParameter {
            name: "size".into(),
            message: format!("must be a whole number from 0 up, got `{}`", clip(&size)),
        })?;
    check_size(&state, size).await?;
    signed_head_at(&state, size)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::NotFound {
            what: "tree head",
            id: size.to_string(),
        })
}

#[derive(Debug, Serialize)]
pub struct InclusionProof {
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: String,
    audit_path: Vec<String>,
    /// The signed head at `tree_size`, when one was recorded at exactly that size.
    #[serde(skip_serializing_if = "Option::is_none")]
    tree_head: Option<SignedHead>,
}

/// `GET /api/v1/audit/proofs/inclusion?leaf_index=N&tree_size=M` (or `event=SEQ` instead of
/// `leaf_index`; `tree_size` defaults to the current size).
pub async fn inclusion_proof(
    State(state): State<AppState>,
    Query(params): Params,
) -> Result<Json<InclusionProof>, AppError> {
    only_known(&params, &["leaf_index", "event", "tree_size"])?;
    let leaf = match (number(&params, "leaf_index")?, params.get("event")) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(AppError::InvalidParameter {
                name: "leaf_index".into(),
                message: "give either leaf_index or event (an audit event number), not both".into(),
            });
        }
        (Some(i), None) => state.store().audit_leaf(i).await?,
        (None, Some(raw)) => {
            let seq = raw.parse::<i64>().map_err(|_| AppError::InvalidParameter {
                name: "event".into(),
                message: format!("must be a whole number, got `{}`", clip(raw)),
            })?;
            Some(
                state
                    .store()
                    .audit_leaf_of_event(seq)
                    .await?
                    .ok_or_else(|| AppError::NotFound {
                        what: "audit event",
                        id: format!("{seq} (not in the tree yet, or no such event)"),
                    })?,
            )
        }
    };
    let log_size = state.store().audit_tree_size().await?;
    let size = number(&params, "tree_size")?.unwrap_or(log_size);
    check_size(&state, size).await?;
    let requested = number(&params, "leaf_index")?;
    let leaf = match leaf {
        Some(l) if l.leaf_index < size => l,
        Some(l) => {
            return Err(AppError::LeafIndexOutOfRange {
                index: l.leaf_index,
                size,
            });
        }
        None => {
            return Err(AppError::LeafIndexOutOfRange {
                index: requested.unwrap_or(0),
                size,
            });
        }
    };
    let path = state
        .store()
        .audit_inclusion_proof_at(leaf.leaf_index, size)
        .await?;
    Ok(Json(InclusionProof {
        leaf_index: leaf.leaf_index,
        tree_size: size,
        leaf_hash: leaf.stored_hash,
        audit_path: hexes(&path),
        tree_head: signed_head_at(&state, size).await?,
    }))
}

#[derive(Debug, Serialize)]
pub struct ConsistencyProof {
    first: u64,
    second: u64,
    proof: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_head: Option<SignedHead>,
    #[serde(skip_serializing_if = "Option::is_none")]
    second_head: Option<SignedHead>,
}

/// `GET /api/v1/audit/proofs/consistency?first=A&second=B`: proof that the tree of size A is a
/// prefix of the tree of size B (`second` defaults to the current size).
pub async fn consistency_proof(
    State(state): State<AppState>,
    Query(params): Params,
) -> Result<Json<ConsistencyProof>, AppError> {
    only_known(&params, &["first", "second"])?;
    let first = required(&params, "first")?;
    let log_size = state.store().audit_tree_size().await?;
    let second = number(&params, "second")?.unwrap_or(log_size);
    if first > second {
        return Err(AppError::ProofSizesOutOfOrder { first, second });
    }
    check_size(&state, second).await?;
    let proof = state.store().audit_consistency_proof(first, second).await?;
    Ok(Json(ConsistencyProof {
        first,
        second,
        proof: hexes(&proof),
        first_head: signed_head_at(&state, first).await?,
        second_head: signed_head_at(&state, second).await?,
    }))
}

/// `GET /api/v1/transfers/{transfer_id}/receipts/{kind}`: the receipt file (`consent` or
/// `deletion`), issued on first request, to the transfer's person only (their session).
pub async fn receipt(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((transfer_id, kind)): Path<(String, String)>,
) -> Result<Response, AppError> {
    check_id(&transfer_id)?;
    let kind = ReceiptKind::parse(&kind).ok_or_else(|| AppError::InvalidParameter {
        name: "kind".into(),
        message: format!(
            "unknown receipt kind `{}` (allowed: consent, deletion)",
            clip(&kind)
        ),
    })?;
    let asked = serde_json::json!({ "route": "transfer_receipt", "receipt": kind.code() });
    require_subject(&state, &headers, Some(&transfer_id), asked)
        .await
        .map_err(|denied| denied.into_error("transfer", &transfer_id))?;
    let file = match kind {
        ReceiptKind::Consent => receipts::consent_receipt(&state, &transfer_id, None).await,
        ReceiptKind::Deletion => receipts::deletion_receipt(&state, &transfer_id).await,
    }
    .map_err(receipt_error)?;
    Ok(download(&file, &format!("{}-{transfer_id}", kind.code())))
}

/// `GET /api/v1/audit/events/{seq}/receipt`: the receipt an audit event stands for (a consent,
/// the end of a transfer, or a receipt event), to the person of the event's transfer only.
pub async fn receipt_for_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(seq): Path<String>,
) -> Result<Response, AppError> {
    let seq = seq.parse::<i64>().map_err(|_| AppError::InvalidParameter {
        name: "seq".into(),
        message: format!("must be a whole number, got `{}`", clip(&seq)),
    })?;
    let transfer = state
        .store()
        .audit_event(seq)
        .await?
        .and_then(|e| e.transfer_id);
    let asked = serde_json::json!({ "route": "event_receipt", "seq": seq });
    require_subject(&state, &headers, transfer.as_deref(), asked)
        .await
        .map_err(|denied| denied.into_error("audit event", &seq.to_string()))?;
    let file = receipts::receipt_for_event(&state, seq)
        .await
        .map_err(receipt_error)?;
    Ok(download(&file, &format!("event-{seq}")))
}

/// Why a receipt was refused.
#[derive(Debug)]
enum Denied {
    NotSignedIn,
    /// Signed in, but the transfer is not theirs or does not exist: answered exactly like an
    /// unknown ID, so a receipt URL tells nobody else whether the transfer exists.
    NotTheirs,
    Failed(AppError),
}

impl Denied {
    fn into_error(self, what: &'static str, id: &str) -> AppError {
        match self {
            Denied::NotSignedIn => AppError::NotSignedIn,
            Denied::NotTheirs => super::not_found(what, id),
            Denied::Failed(e) => e,
        }
    }
}

impl From<mydata_store::StoreError> for Denied {
    fn from(e: mydata_store::StoreError) -> Self {
        Denied::Failed(e.into())
    }
}

/// Lets the request through only if its session is signed in as the subject of `transfer_id`
/// (its pseudonym equals the transfer's). A signed-in person's refusal is an audit event
/// (`access.refused`, with their pseudonym, the transfer if it exists, and why), so the person can
/// see attempts on their receipts and an operator can see someone trying IDs. A request signed in
/// to nothing is refused without one: it names nobody, and the permanent log would otherwise grow
/// with every anonymous request anyone cares to send (event numbers are sequential).
async fn require_subject(
    state: &AppState,
    headers: &HeaderMap,
    transfer_id: Option<&str>,
    mut asked: serde_json::Value,
) -> Result<(), Denied> {
    let verified = crate::identity::session::load(state, headers)
        .await
        .map_err(Denied::Failed)?
        .and_then(|s| s.verified());
    let transfer = match transfer_id {
        Some(id) => state.store().transfer(id).await?,
        None => None,
    };
    let reason = match (&verified, &transfer) {
        (Some(v), Some(t)) if v.subject == t.subject => return Ok(()),
        (None, _) => "not_signed_in",
        (Some(_), None) => "unknown_transfer",
        (Some(_), Some(_)) => "not_the_subject",
    };
    let Some(v) = &verified else {
        tracing::debug!(reason, "receipt refused to a request signed in to nothing");
        return Err(Denied::NotSignedIn);
    };
    asked["reason"] = reason.into();
    let subject = Some(v.subject.clone());
    state
        .store()
        .append_audit(&mydata_store::NewAuditEvent {
            at: state.clock().now(),
            kind: "access.refused".into(),
            actor: v.subject.clone(),
            subject,
            transfer_id: transfer.map(|t| t.id),
            detail: asked,
        })
        .await?;
    Err(Denied::NotTheirs)
}

fn check_id(id: &str) -> Result<(), AppError> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AppError::InvalidParameter {
            name: "transfer_id".into(),
            message: "must be 1 to 100 letters, digits, `-` or `_`".into(),
        })
    }
}

fn receipt_error(e: ReceiptError) -> AppError {
    match e {
        ReceiptError::TransferNotFound(id) => super::not_found("transfer", &id),
        e @ ReceiptError::NotAvailable { .. } => AppError::ReceiptNotAvailable(e.to_string()),
        ReceiptError::Store(e) => e.into(),
    }
}

/// A JSON file to save, named after what it is.
fn download(file: &ReceiptFile, name: &str) -> Response {
    let mut res = Json(file).into_response();
    let disposition = format!("attachment; filename=\"mydata-receipt-{name}.json\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
