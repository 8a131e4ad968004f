//! `mydata catalog check`: the start-up validation of the catalogue, for operators editing its files.

use anyhow::Context;
use mydata_core::Catalog;
use mydata_core::catalog::{CatalogErrors, CatalogFile, CatalogSources};
use mydata_server::serve::read_catalog_file;
use std::path::PathBuf;

/// Validates the given files (or folders) on top of the built-in catalogue and prints the verdict.
pub fn run(paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut sources = CatalogSources::embedded();
    let mut given = Vec::new();
    for path in paths {
        // Said plainly rather than as a bad file name or an empty folder.
        if let Err(e) = std::fs::metadata(path) {
            anyhow::bail!("{}: {e}", path.display());
        }
        if path.is_dir() {
            std::fs::read_dir(path).with_context(|| format!("{}", path.display()))?;
            for kind in CatalogFile::ALL {
                let file = path.join(kind.file_name());
                if file.is_file() {
                    read_catalog_file(&mut sources, kind, &file)?;
                    given.push(file);
                }
            }
        } else {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let kind = CatalogFile::from_file_name(name).with_context(|| {
                let names: Vec<&str> = CatalogFile::ALL.iter().map(|k| k.file_name()).collect();
                format!(
                    "{}: not a catalogue file name (expected a folder or one of {})",
                    path.display(),
                    names.join(", ")
                )
            })?;
            read_catalog_file(&mut sources, kind, path)?;
            given.push(path.clone());
        }
    }
    if given.is_empty() {
        anyhow::bail!("no catalogue files found in the given folders");
    }
    match Catalog::parse(&sources) {
        Ok(c) => {
            println!(
                "catalogue OK: {} datasets, {} services, {} agencies, {} categories, {} sectors ({} file(s) checked)",
                c.datasets().len(),
                c.services().len(),
                c.agencies().len(),
                c.categories().len(),
                c.sectors().len(),
                given.len()
            );
            Ok(())
        }
        Err(CatalogErrors(issues)) => {
            for issue in &issues {
                println!("{issue}");
            }
            anyhow::bail!("{} problem(s) found in the catalogue", issues.len())
        }
    }
}
