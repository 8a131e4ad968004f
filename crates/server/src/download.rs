//! Self-download (自行下載), the flow's rules apart from its pages: who may open a transfer, the
//! terms version a person agrees to, the basket, and turning an opened package into something a
//! person can read (tables for JSON and CSV, verification status per dataset).
//!
//! Reading a package for preview or for saving one file opens it in memory only
//! ([`crate::packages::read_package`]); the plaintext is never written to disk or cached, and the
//! package stays until the person confirms deletion or its 8 hours end.

use crate::error::AppError;
use crate::identity::session::Verified;
use crate::state::AppState;
use mydata_core::transfer::TransferKind;
use mydata_package::{ReadLimits, SignedDataset, read_package, verify_package_with_keys};
use mydata_store::{NewAuditEvent, Transfer};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The version of the terms of use and privacy notice shown before consent; recorded with every
/// self-download. Change it whenever their text changes.
pub const TERMS_VERSION: &str = "selfdl-terms-2026-11";

/// Most datasets in one basket (a person downloading the whole catalogue is not a use case; the
/// bound keeps forms and fetch fan-out small).
pub const MAX_BASKET: usize = 20;

/// Reads the basket (`d=ID` repeated, or comma-separated) from form or query pairs: known dataset
/// IDs only, each once, in the order given, at most [`MAX_BASKET`].
pub fn basket_from_pairs(
    state: &AppState,
    pairs: &[(String, String)],
) -> Result<Vec<String>, AppError> {
    let mut out: Vec<String> = Vec::new();
    for (k, v) in pairs {
        if k != "d" {
            continue;
        }
        for id in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if state.catalog().dataset(id).is_none() {
                return Err(AppError::NotFound {
                    what: "dataset",
                    id: id.chars().take(64).collect(),
                });
            }
            if !out.iter().any(|x| x == id) {
                out.push(id.to_owned());
            }
        }
    }
    if out.len() > MAX_BASKET {
        return Err(AppError::InvalidParameter {
            name: "d".into(),
            message: format!("at most {MAX_BASKET} datasets can be requested at once"),
        });
    }
    Ok(out)
}

/// The basket as a query string (`d=a&d=b`).
pub fn basket_query(basket: &[String]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for d in basket {
        s.append_pair("d", d);
    }
    s.finish()
}

/// The transfer `id` if the signed-in person owns it. Anything else — an ID that is malformed,
/// unknown, or someone else's — is the same 404, and is written to the audit log (with the
/// requester's pseudonym, never the owner's), so probing is visible to the owner and operators.
pub async fn owned_transfer(
    state: &AppState,
    v: &Verified,
    id: &str,
) -> Result<Transfer, AppError> {
    let not_found = || AppError::NotFound {
        what: "transfer",
        id: crate::routes::clip(id),
    };
    let t = if uuid::Uuid::parse_str(id).is_ok() {
        state.store().transfer(id).await?
    } else {
        None
    };
    match t {
        Some(t) if t.subject == v.subject => Ok(t),
        found => {
            state
                .store()
                .append_audit(&NewAuditEvent {
                    at: state.clock().now(),
                    kind: "transfer.access_denied".into(),
                    subject: Some(v.subject.clone()),
                    transfer_id: found.as_ref().map(|t| t.id.clone()),
                    actor: v.subject.clone(),
                    detail: serde_json::json!({ "exists": found.is_some() }),
                })
                .await?;
            tracing::warn!(
                exists = found.is_some(),
                "a person asked for a transfer that is not theirs"
            );
            Err(not_found())
        }
    }
}

/// The transfer `id` if the signed-in person owns it and it is of `kind` (each flow's pages serve
/// only their own kind). Another kind is the same 404 as someone else's transfer.
pub async fn owned_transfer_of(
    state: &AppState,
    v: &Verified,
    id: &str,
    kind: TransferKind,
) -> Result<Transfer, AppError> {
    let t = owned_transfer(state, v, id).await?;
    if t.kind == kind {
        Ok(t)
    } else {
        Err(AppError::NotFound {
            what: "transfer",
            id: crate::routes::clip(id),
        })
    }
}

/// One data file of a dataset, as the preview shows it.
#[derive(Debug)]
pub struct PreviewFile {
    pub name: String,
    pub media_type: String,
    pub size: usize,
    /// Rendered HTML (escaped here), for JSON and CSV.
    pub table_html: Option<String>,
    pub is_pdf: bool,
}

/// One dataset of an opened package.
#[derive(Debug)]
pub struct PreviewDataset {
    pub dataset_id: String,
    /// Every check passed: agency certificate, key, manifest signature and file digests.
    pub verified: bool,
    /// The first failed check, if any (English, technical: shown under "details").
    pub problem: Option<String>,
    pub agency_id: Option<String>,
    pub issued_at_ms: Option<i64>,
    pub files: Vec<PreviewFile>,
}

/// The opened package for a page: per-dataset verification and readable files.
#[derive(Debug)]
pub struct Preview {
    pub receipt_ok: bool,
    pub datasets: Vec<PreviewDataset>,
}

/// Opens and verifies a package zip for the preview.
pub async fn preview(state: &AppState, zip: &[u8]) -> Result<Preview, AppError> {
    let now = state.clock().now();
    let trust = state
        .data()
        .trust
        .get(now)
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("trust store: {e}")))?;
    // By the receipt's kid: a package receipted just before a key rotation still verifies.
    let report = verify_package_with_keys(zip, &trust, state.platform_keys(), now);
    let raw = read_package(zip, &ReadLimits::default())
        .map_err(|e| AppError::Internal(anyhow::anyhow!("stored package unreadable: {e}")))?;
    let by_id: BTreeMap<&str, &mydata_package::DatasetReport> = report
        .datasets
        .iter()
        .map(|r| (r.dataset_id.as_str(), r))
        .collect();
    let receipt_ok = report.receipt_signature.is_passed() && report.receipt_contents.is_passed();
    let datasets = raw
        .datasets
        .iter()
        .map(|ds| {
            let r = by_id.get(ds.dataset_id.as_str());
            PreviewDataset {
                dataset_id: ds.dataset_id.clone(),
                verified: r.is_some_and(|r| r.is_ok()),
                problem: r.and_then(|r| r.error()).map(|e| e.to_string()),
                agency_id: r.and_then(|r| r.agency_id.clone()),
                issued_at_ms: r.and_then(|r| r.manifest.as_ref()).map(|m| m.issued_at_ms),
                files: preview_files(ds, r.and_then(|r| r.manifest.as_ref())),
            }
        })
        .collect();
    Ok(Preview {
        receipt_ok,
        datasets,
    })
}

fn preview_files(
    ds: &SignedDataset,
    manifest: Option<&mydata_package::Manifest>,
) -> Vec<PreviewFile> {
    ds.files
        .iter()
        .map(|(name, bytes)| {
            let media_type = manifest
                .and_then(|m| m.files.iter().find(|f| &f.name == name))
                .map(|f| f.media_type.clone())
                .unwrap_or_else(|| media_type_of(name).to_owned());
            let table_html = if name.ends_with(".json") {
                serde_json::from_slice::<serde_json::Value>(bytes)
                    .ok()
                    .map(|v| json_html(&v, 0))
            } else if name.ends_with(".csv") {
                csv_html(bytes)
            } else {
                None
            };
            PreviewFile {
                name: name.clone(),
                is_pdf: name.ends_with(".pdf"),
                media_type,
                size: bytes.len(),
                table_html,
            }
        })
        .collect()
}

/// The media type of a package file by its name (the manifest's is preferred when present).
pub fn media_type_of(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("json") => "application/json",
        Some("csv") => "text/csv; charset=utf-8",
        Some("pdf") => "application/pdf",
        Some("xml") => "application/xml",
        _ => "application/octet-stream",
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Deepest nesting rendered as tables; below it values are shown as compact JSON text.
const MAX_DEPTH: usize = 4;
/// Rows shown per table (agency responses are small; this bounds a hostile one).
const MAX_ROWS: usize = 500;

fn scalar_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "—".into(),
        serde_json::Value::String(s) if s.is_empty() => "—".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Any JSON value as nested tables: objects as field/value rows, arrays of objects as one table
/// with a column per field, arrays of plain values as a list. All text is escaped.
pub fn json_html(v: &serde_json::Value, depth: usize) -> String {
    use serde_json::Value;
    if depth >= MAX_DEPTH {
        return format!("<code>{}</code>", escape(&v.to_string()));
    }
    match v {
        Value::Object(map) if map.is_empty() => "—".into(),
        Value::Object(map) => {
            let mut s = String::from("<table class=\"kv\"><tbody>");
            for (k, val) in map.iter().take(MAX_ROWS) {
                let _ = write!(
                    s,
                    "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
                    escape(k),
                    json_html(val, depth + 1)
                );
            }
            s.push_str("</tbody></table>");
            s
        }
        Value::Array(items) if items.is_empty() => "—".into(),
        Value::Array(items) if items.iter().all(Value::is_object) => {
            let mut cols: Vec<&str> = Vec::new();
            for it in items {
                if let Value::Object(m) = it {
                    for k in m.keys() {
                        if !cols.contains(&k.as_str()) {
                            cols.push(k);
                        }
                    }
                }
            }
            let mut s = String::from(
                "<div class=\"scroll\" tabindex=\"0\"><table class=\"grid\"><thead><tr>",
            );
            for c in &cols {
                let _ = write!(s, "<th scope=\"col\">{}</th>", escape(c));
            }
            s.push_str("</tr></thead><tbody>");
            for it in items.iter().take(MAX_ROWS) {
                s.push_str("<tr>");
                for c in &cols {
                    let cell = it
                        .get(*c)
                        .map(|x| json_html(x, depth + 1))
                        .unwrap_or_default();
                    let _ = write!(s, "<td>{cell}</td>");
                }
                s.push_str("</tr>");
            }
            s.push_str("</tbody></table></div>");
            s
        }
        Value::Array(items) => {
            let mut s = String::from("<ul class=\"plain\">");
            for it in items.iter().take(MAX_ROWS) {
                let _ = write!(s, "<li>{}</li>", json_html(it, depth + 1));
            }
            s.push_str("</ul>");
            s
        }
        other => escape(&scalar_text(other)),
    }
}

/// A CSV file (header row first) as a table; None when it does not parse.
pub fn csv_html(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = rdr.headers().ok()?.clone();
    let mut s =
        String::from("<div class=\"scroll\" tabindex=\"0\"><table class=\"grid\"><thead><tr>");
    for h in headers.iter() {
        let _ = write!(s, "<th scope=\"col\">{}</th>", escape(h));
    }
    s.push_str("</tr></thead><tbody>");
    for rec in rdr.records().take(MAX_ROWS) {
        let rec = rec.ok()?;
        s.push_str("<tr>");
        for f in rec.iter() {
            let _ = write!(s, "<td>{}</td>", escape(if f.is_empty() { "—" } else { f }));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></div>");
    Some(s)
}

/// Finds one file of one dataset in an opened package (names are checked by the package reader:
/// no paths, no `..`).
pub fn find_file(zip: &[u8], dataset_id: &str, file: &str) -> Result<Option<Vec<u8>>, AppError> {
    let raw = read_package(zip, &ReadLimits::default())
        .map_err(|e| AppError::Internal(anyhow::anyhow!("stored package unreadable: {e}")))?;
    Ok(raw
        .datasets
        .into_iter()
        .find(|d| d.dataset_id == dataset_id)
        .and_then(|mut d| d.files.remove(file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_tables_escape_everything_and_stay_bounded() {
        let v = serde_json::json!({
            "name<script>": "a & b \"c\"",
            "rows": [{"x": 1, "y": "<b>"}, {"x": 2, "z": null}],
            "list": ["p", "q"],
            "deep": {"a": {"b": {"c": {"d": {"e": 1}}}}}
        });
        let html = json_html(&v, 0);
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<b>"));
        assert!(html.contains("name&lt;script&gt;"));
        assert!(html.contains("a &amp; b &quot;c&quot;"));
        assert!(html.contains("<th scope=\"col\">z</th>"));
        assert!(html.contains("<code>"));
    }

    #[test]
    fn csv_renders_with_header_and_refuses_non_utf8() {
        let html = csv_html("\u{feff}姓名,數值\n王<小明>,1\n".as_bytes()).unwrap();
        assert!(html.contains("<th scope=\"col\">姓名</th>"));
        assert!(html.contains("王&lt;小明&gt;"));
        assert!(csv_html(&[0xff, 0xfe, 0x00]).is_none());
    }
}
