//! `mydata audit export`: an agency's or a service's transfer records for a time range, as CSV or
//! JSON, for operators to hand over while parties cannot yet fetch them over HTTP (that needs
//! client authentication, issue 8).

use anyhow::Context;
use clap::{Args, ValueEnum};
use mydata_core::Timestamp;
use mydata_server::records::{ExportFormat, ExportParty, export_records};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("party").required(true).args(["agency", "service"])))]
pub struct ExportArgs {
    #[command(flatten)]
    pub config: crate::ConfigArgs,
    /// Agency ID (catalogue agencies.tsv): records of its datasets in every transfer.
    #[arg(long, value_name = "ID")]
    agency: Option<String>,
    /// Service ID (catalogue services.tsv): records of the transfers it received.
    #[arg(long, value_name = "ID")]
    service: Option<String>,
    /// First day (YYYY-MM-DD, Taiwan time) or instant (RFC 3339) to include.
    #[arg(long, value_name = "DATE")]
    from: String,
    /// Last day to include (YYYY-MM-DD, Taiwan time, the whole day), or the instant (RFC 3339)
    /// before which to stop.
    #[arg(long, value_name = "DATE")]
    to: String,
    /// csv (a spreadsheet, formulas neutralised) or json (one object with the records).
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Write to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Taiwan has no daylight saving time: UTC+8 all year.
const TAIWAN: time::UtcOffset = match time::UtcOffset::from_hms(8, 0, 0) {
    Ok(o) => o,
    Err(_) => time::UtcOffset::UTC,
};

/// Parses `--from` / `--to`; a date means the start of that day (`end_of_day`: of the next day).
fn parse_time(flag: &str, raw: &str, end_of_day: bool) -> anyhow::Result<Timestamp> {
    use time::format_description::well_known::Rfc3339;
    let millis = |t: time::OffsetDateTime| {
        Timestamp::from_millis(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
    };
    if let Ok(t) = time::OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(millis(t));
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(raw, &fmt).map_err(|_| {
        anyhow::anyhow!("--{flag} `{raw}` is neither a date (YYYY-MM-DD) nor an RFC 3339 time")
    })?;
    let day = if end_of_day {
        day.next_day()
            .ok_or_else(|| anyhow::anyhow!("--{flag} `{raw}` is out of range"))?
    } else {
        day
    };
    Ok(millis(day.midnight().assume_offset(TAIWAN)))
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let from = parse_time("from", &args.from, false)?;
    let to = parse_time("to", &args.to, true)?;
    let party = match (args.agency, args.service) {
        (Some(a), _) => ExportParty::Agency(a),
        (None, Some(s)) => ExportParty::Service(s),
        (None, None) => anyhow::bail!("give --agency ID or --service ID"),
    };
    let settings = args.config.settings(None)?;
    let catalog = mydata_server::load_catalog(settings.catalog_dir().as_deref())?;
    let (store, _) = crate::open_store(&args.config).await?;
    let format = match args.format {
        Format::Csv => ExportFormat::Csv,
        Format::Json => ExportFormat::Json,
    };
    let mut out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let result = export_records(&store, &catalog, &party, from, to, format, &mut *out).await;
    store.close().await;
    let rows = result.context("export failed")?;
    out.flush().context("cannot write the export")?;
    drop(out);
    eprintln!("{rows} record(s) exported");
    Ok(())
}
