//! `mydata verify`: checks a saved data package offline, in the order the seed documents give
//! (certificate, public key, manifest, files), printing a verdict for every step.

use anyhow::Context;
use base64::Engine;
use clap::Args;
use mydata_package::{
    DatasetError, DatasetReport, PlatformKeys, TrustStore, Verdict, verify_package,
    verify_package_with_keys,
};
use p256::ecdsa::VerifyingKey;
use std::fmt::Display;
use std::path::PathBuf;

/// Largest package file read (the reader also limits what the archive unpacks to).
const MAX_FILE: u64 = 256 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The package (.zip) to check.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Trusted root certificate(s) of the agencies' CA, PEM. Repeat for several roots.
    #[arg(long, value_name = "PEM", required = true)]
    trust: Vec<PathBuf>,
    /// Certificate revocation list(s) of that CA, PEM or DER. Without one, revocation cannot be
    /// checked and the certificate step fails unless --allow-missing-crl is given.
    #[arg(long, value_name = "FILE")]
    crl: Vec<PathBuf>,
    /// Accept certificates whose CA published no CRL given here (revocation left unchecked).
    #[arg(long)]
    allow_missing_crl: bool,
    /// The platform's public keys to check the receipt signature with: its JWK set (saved from
    /// /.well-known/mydata/jwks.json; the key the receipt's `kid` names is used, so receipts by a
    /// key the platform replaced still verify) or one PEM public key (used whatever the `kid`).
    /// Without it that check is reported as not run.
    #[arg(long, value_name = "JWKS_OR_PEM")]
    platform_key: Option<PathBuf>,
}

pub fn run(args: &VerifyArgs) -> anyhow::Result<()> {
    let mut trust = TrustStore::new();
    for path in &args.trust {
        let text = read(path)?;
        trust
            .add_roots_pem(&text)
            .with_context(|| format!("{}: not a usable root certificate", path.display()))?;
    }
    for path in &args.crl {
        let bytes = read(path)?;
        let der = pem_or_der(&bytes, "X509 CRL")
            .with_context(|| format!("{}: not a CRL in PEM or DER", path.display()))?;
        trust
            .add_crl_der(&der)
            .with_context(|| format!("{}: not a usable CRL", path.display()))?;
    }
    trust.allow_missing_crl(args.allow_missing_crl);
    let platform_keys = match &args.platform_key {
        Some(path) => Some(
            ReceiptKeys::read(&read(path)?)
                .with_context(|| format!("{}: not a usable platform key", path.display()))?,
        ),
        None => None,
    };
    let len = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_FILE,
        "{} is larger than {} MiB; refusing to read it",
        args.file.display(),
        MAX_FILE >> 20
    );
    let bytes = read(&args.file)?;
    let now = mydata_core::Clock::now(&mydata_core::SystemClock);
    let report = match &platform_keys {
        Some(ReceiptKeys::ByKid(keys)) => verify_package_with_keys(&bytes, &trust, keys, now),
        Some(ReceiptKeys::One(key)) => verify_package(&bytes, &trust, Some(key), now),
        None => verify_package(&bytes, &trust, None, now),
    };

    println!("package {}", args.file.display());
    line("archive readable and well-formed", &report.archive);
    if let Some(r) = &report.receipt {
        println!(
            "  transfer {}, {} dataset(s), purpose: {}",
            r.transfer_id,
            r.datasets.len(),
            r.purpose
        );
    }
    if report.platform_key_given {
        line("receipt signed by the platform", &report.receipt_signature);
    } else {
        println!(
            "  {:<40} not checked (give --platform-key)",
            "receipt signed by the platform"
        );
    }
    line("receipt matches the package", &report.receipt_contents);
    for ds in &report.datasets {
        print_dataset(ds);
    }
    if report.is_ok() {
        println!("verdict: VALID");
        Ok(())
    } else {
        println!("verdict: INVALID");
        anyhow::bail!("{}: {}", args.file.display(), first_failure(&report))
    }
}

/// What the receipt signature is checked with.
enum ReceiptKeys {
    /// A JWK set: the key the receipt's `kid` names (a key without a `kid` by its thumbprint, as
    /// the platform names its keys).
    ByKid(PlatformKeys),
    /// One PEM key, whatever the receipt's `kid` (a key file names none).
    One(VerifyingKey),
}

impl ReceiptKeys {
    fn read(bytes: &[u8]) -> anyhow::Result<Self> {
        let keys =
            mydata_server::receipts::read_platform_keys(bytes).map_err(anyhow::Error::msg)?;
        if let [only] = keys.as_slice()
            && only.kid.is_none()
            && std::str::from_utf8(bytes).is_ok_and(|t| t.trim_start().starts_with("-----BEGIN"))
        {
            return Ok(Self::One(only.key));
        }
        Ok(Self::ByKid(mydata_server::receipts::key_set(keys)))
    }
}

fn print_dataset(ds: &DatasetReport) {
    match &ds.agency_id {
        Some(agency) => println!("dataset {} (signed by agency {agency})", ds.dataset_id),
        None => println!("dataset {}", ds.dataset_id),
    }
    for (i, (name, verdict)) in ds.steps().iter().enumerate() {
        line(&format!("{}. {name}", i + 1), verdict);
    }
}

fn line<E: Display>(name: &str, v: &Verdict<E>) {
    match v {
        Verdict::Passed => println!("  {name:<40} ok"),
        Verdict::Failed(e) => println!("  {name:<40} FAIL: {e}"),
        Verdict::NotRun => println!("  {name:<40} not run (an earlier check failed)"),
    }
}

/// The most specific failed check, phrased for the one-line error. A tampered file also breaks the
/// receipt's package digest, so dataset checks are named before the receipt.
fn first_failure(report: &mydata_package::PackageReport) -> String {
    if let Some(e) = report.archive.error() {
        return format!("archive refused: {e}");
    }
    for ds in &report.datasets {
        for (i, (name, v)) in ds.steps().iter().enumerate() {
            if let Some(e) = v.error() {
                let e: &DatasetError = e;
                return format!(
                    "dataset {}: check {} ({name}) failed: {e}",
                    ds.dataset_id,
                    i + 1
                );
            }
        }
    }
    if let Some(e) = report
        .receipt_signature
        .error()
        .or(report.receipt_contents.error())
    {
        return format!("receipt: {e}");
    }
    "the package holds no dataset".into()
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The DER inside a PEM block with `label`, or the bytes themselves when they are not PEM.
fn pem_or_der(bytes: &[u8], label: &str) -> anyhow::Result<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(bytes.to_vec());
    };
    let begin = format!("-----BEGIN {label}-----");
    let Some(start) = text.find(&begin) else {
        anyhow::ensure!(
            !text.contains("-----BEGIN"),
            "a PEM file without a {label} block"
        );
        return Ok(bytes.to_vec());
    };
    let rest = &text[start + begin.len()..];
    let end = rest.find("-----END").context("PEM block is not closed")?;
    let b64: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
}
