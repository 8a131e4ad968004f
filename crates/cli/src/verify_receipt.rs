//! `mydata verify-receipt`: checks a downloaded consent or deletion receipt offline with only the
//! platform's public key, printing a verdict per step (receipt signature, audit entry, inclusion
//! proof, tree head signature).

use anyhow::Context;
use clap::Args;
use mydata_server::receipts::{Step, read_platform_keys, verify_receipt_file};
use std::path::PathBuf;

/// Receipt files are a few kilobytes; anything far larger is not one.
const MAX_FILE: u64 = 1024 * 1024;

#[derive(Debug, Args)]
pub struct VerifyReceiptArgs {
    /// The receipt file (.json) downloaded from the platform.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The platform's public key: its JWK set (saved from /.well-known/mydata/jwks.json) or a PEM
    /// public key.
    #[arg(long, value_name = "JWKS_OR_PEM")]
    platform_key: PathBuf,
}

pub fn run(args: &VerifyReceiptArgs) -> anyhow::Result<()> {
    let keys = read_platform_keys(&read(&args.platform_key)?)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}: not a usable platform key", args.platform_key.display()))?;
    let bytes = read(&args.file)?;
    let report = verify_receipt_file(&bytes, &keys)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}", args.file.display()))?;
    println!("receipt {}", args.file.display());
    if let Some(st) = &report.statement {
        println!(
            "  {} receipt for transfer {}: datasets {}; purpose: {}",
            st.kind.code(),
            st.transfer_id,
            st.datasets.join(", "),
            st.purpose
        );
    }
    let mut failed = Vec::new();
    for (i, (name, step)) in report.steps().into_iter().enumerate() {
        match step {
            Step::Ok(what) => println!("{}. OK   {name}: {what}", i + 1),
            Step::Failed(why) => {
                println!("{}. FAIL {name}: {why}", i + 1);
                failed.push(format!("{name}: {why}"));
            }
        }
    }
    match failed.first() {
        None => {
            println!("OK: the receipt is signed by the platform and recorded in its audit log");
            Ok(())
        }
        Some(first) => anyhow::bail!(
            "receipt verification failed ({} of 4 checks); first: {first}",
            failed.len()
        ),
    }
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_FILE,
        "{} is larger than 1 MiB; not a receipt or key file",
        path.display()
    );
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
