//! Exports of transfer records for agencies and services, whose own rules require them to keep
//! transfer records (data name, time, counterpart, subject, outcome) for at least two years.
//!
//! One row per dataset of a transfer. The subject is a pseudonym derived for the party
//! (SHA-256 of the party and the platform pseudonym, 32 hex digits), so one party's export cannot
//! be joined with another's to follow a person across services; the transfer ID joins a row to
//! the party's own logs. CSV cells that a spreadsheet would run as a formula are neutralised.
//!
//! Used by `mydata audit export` and by the HTTP export (`routes::party_records`), where a service
//! authenticates with its client assertion and an agency with a token signed by its agency key.

use mydata_core::{Catalog, Timestamp};
use mydata_store::{RecordCursor, RecordParty, Store, StoreError, TransferRecord};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;

/// Rows read per page.
const PAGE: u32 = 1000;

/// Whose records to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportParty {
    Agency(String),
    /// A service (or counter) ID as recorded as the transfer's recipient.
    Service(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no agency `{0}` in the catalogue")]
    UnknownAgency(String),
    #[error("no service `{0}` in the catalogue")]
    UnknownService(String),
    #[error("the time range is empty: `from` must be before `to`")]
    EmptyRange,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot write the export: {0}")]
    Csv(#[from] csv::Error),
}

/// One exported row.
#[derive(Debug, Clone, Serialize)]
pub struct ExportRow {
    pub transfer_id: String,
    pub created_at: String,
    pub flow: String,
    pub recipient: String,
    pub purpose: String,
    pub agency_id: String,
    pub dataset_id: String,
    pub dataset_name: String,
    pub dataset_outcome: String,
    pub dataset_updated_at: String,
    pub transfer_state: String,
    pub subject: String,
}

const COLUMNS: [&str; 12] = [
    "transfer_id",
    "created_at",
    "flow",
    "recipient",
    "purpose",
    "agency_id",
    "dataset_id",
    "dataset_name",
    "dataset_outcome",
    "dataset_updated_at",
    "transfer_state",
    "subject",
];

/// The party's pseudonym of a person: not linkable to other parties' exports.
pub fn party_subject(party: &ExportParty, subject: &str) -> String {
    let (kind, id) = match party {
        ExportParty::Agency(id) => ("agency", id),
        ExportParty::Service(id) => ("service", id),
    };
    let mut h = Sha256::new();
    for part in ["mydata-party-subject/1", kind, id, subject] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// RFC 3339 UTC time of a millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A CSV cell a spreadsheet would not run: cells starting with `=`, `+`, `-`, `@`, tab or carriage
/// return get a leading apostrophe (OWASP's advice for CSV injection).
pub fn csv_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

fn row(catalog: &Catalog, party: &ExportParty, r: TransferRecord) -> ExportRow {
    let ds = catalog.dataset(&r.dataset_id);
    ExportRow {
        created_at: rfc3339(r.created_at),
        flow: r.kind,
        recipient: r.recipient.unwrap_or_else(|| "self".into()),
        purpose: r.purpose,
        agency_id: ds.map(|d| d.agency.clone()).unwrap_or_default(),
        dataset_name: ds.map(|d| d.name_zh.clone()).unwrap_or_default(),
        dataset_id: r.dataset_id,
        dataset_outcome: r.dataset_status,
        dataset_updated_at: rfc3339(r.dataset_updated_at),
        transfer_state: r.state,
        subject: party_subject(party, &r.subject),
        transfer_id: r.transfer_id,
    }
}

/// The store query of a party listed in the catalogue.
pub fn records_query(catalog: &Catalog, party: &ExportParty) -> Result<RecordParty, ExportError> {
    Ok(match party {
        ExportParty::Agency(id) => {
            catalog
                .agency(id)
                .ok_or_else(|| ExportError::UnknownAgency(id.clone()))?;
            RecordParty::Agency {
                datasets: catalog
                    .datasets()
                    .iter()
                    .filter(|d| &d.agency == id)
                    .map(|d| d.id.clone())
                    .collect(),
            }
        }
        ExportParty::Service(id) => {
            catalog
                .service(id)
                .ok_or_else(|| ExportError::UnknownService(id.clone()))?;
            RecordParty::Recipient(id.clone())
        }
    })
}

/// One page of a party's records (`query` selects them, `party` names the pseudonyms): at most
/// `limit` rows after `after`, and where the next page starts.
#[allow(clippy::too_many_arguments)]
pub async fn export_page(
    store: &Store,
    catalog: &Catalog,
    party: &ExportParty,
    query: &RecordParty,
    from: Timestamp,
    to: Timestamp,
    after: Option<&RecordCursor>,
    limit: u32,
) -> Result<(Vec<ExportRow>, Option<RecordCursor>), ExportError> {
    if from >= to {
        return Err(ExportError::EmptyRange);
    }
    let (page, next) = store
        .transfer_records(query, from, to, after, limit)
        .await?;
    Ok((
        page.into_iter().map(|r| row(catalog, party, r)).collect(),
        next,
    ))
}

/// The CSV header row.
pub fn csv_header() -> [&'static str; 12] {
    COLUMNS
}

/// The CSV cells of a row, formula-safe.
pub fn csv_cells(r: &ExportRow) -> [String; 12] {
    [
        &r.transfer_id,
        &r.created_at,
        &r.flow,
        &r.recipient,
        &r.purpose,
        &r.agency_id,
        &r.dataset_id,
        &r.dataset_name,
        &r.dataset_outcome,
        &r.dataset_updated_at,
        &r.transfer_state,
        &r.subject,
    ]
    .map(|c| csv_safe(c).into_owned())
}

enum Sink<'a> {
    Csv(Box<csv::Writer<&'a mut (dyn Write + Send)>>),
    Json(&'a mut (dyn Write + Send)),
}

/// Writes the party's records for transfers created in `[from, to)` to `out`, page by page;
/// returns how many rows were written.
pub async fn export_records(
    store: &Store,
    catalog: &Catalog,
    party: &ExportParty,
    from: Timestamp,
    to: Timestamp,
    format: ExportFormat,
    out: &mut (dyn Write + Send),
) -> Result<u64, ExportError> {
    if from >= to {
        return Err(ExportError::EmptyRange);
    }
    let query = records_query(catalog, party)?;
    let mut sink = match format {
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(COLUMNS)?;
            Sink::Csv(Box::new(w))
        }
        ExportFormat::Json => {
            let (kind, id) = match party {
                ExportParty::Agency(id) => ("agency", id),
                ExportParty::Service(id) => ("service", id),
            };
            let mut head = serde_json::Map::new();
            head.insert(kind.into(), id.clone().into());
            head.insert("from".into(), rfc3339(from.millis()).into());
            head.insert("to".into(), rfc3339(to.millis()).into());
            // The header object without its closing brace, then the records array streamed into it.
            let head = serde_json::Value::Object(head).to_string();
            out.write_all(head.trim_end_matches('}').as_bytes())?;
            out.write_all(b",\"records\":[")?;
            Sink::Json(out)
        }
    };
    let mut written = 0u64;
    let mut cursor: Option<RecordCursor> = None;
    loop {
        let (page, next) = store
            .transfer_records(&query, from, to, cursor.as_ref(), PAGE)
            .await?;
        for r in page {
            let r = row(catalog, party, r);
            match &mut sink {
                Sink::Csv(w) => w.write_record(csv_cells(&r))?,
                Sink::Json(out) => {
                    if written > 0 {
                        out.write_all(b",")?;
                    }
                    out.write_all(b"\n")?;
                    serde_json::to_writer(&mut **out, &r).map_err(std::io::Error::from)?;
                }
            }
            written += 1;
        }
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    match sink {
        Sink::Csv(mut w) => w.flush()?,
        Sink::Json(out) => out.write_all(b"\n]}\n")?,
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_and_others_kept() {
        for bad in ["=HYPERLINK(\"x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert!(csv_safe(bad).starts_with('\''), "{bad}");
        }
        for good in ["tr-1", "低收入戶", "", "1-2"] {
            assert_eq!(csv_safe(good), good);
        }
    }

    #[test]
    fn party_pseudonyms_differ_between_parties_and_are_stable() {
        let a = ExportParty::Agency("moi".into());
        let s = ExportParty::Service("bank".into());
        assert_eq!(party_subject(&a, "p1"), party_subject(&a, "p1"));
        assert_ne!(party_subject(&a, "p1"), party_subject(&s, "p1"));
        assert_ne!(party_subject(&a, "p1"), party_subject(&a, "p2"));
        assert_eq!(party_subject(&a, "p1").len(), 32);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_790_000_000_123), "2026-09-21T14:13:20.123Z");
    }
}
