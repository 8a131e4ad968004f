//! Writes one person's PDF documents for the datasets given on the command line into a folder
//! (development aid: look at the layout). Usage: `pdf OUT_DIR PERSON DATASET_NO...`.

use mydata_core::Timestamp;
use mydata_core::catalog::Catalog;
use mydata_provider_sim::content::{Generator, Subject};
use mydata_provider_sim::pdf::{DocumentSpec, PdfFonts, render};
use mydata_provider_sim::{Date, Population};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().ok_or("usage: pdf OUT_DIR PERSON NO...")?);
    let person: usize = args.next().unwrap_or_default().parse().unwrap_or(0);
    let pop = Population::generate(42, Date::new(2026, 11, 1).ok_or("bad date")?);
    let catalog = Catalog::embedded()?;
    let g = Generator::new(&pop, &catalog)?;
    let fonts = PdfFonts::discover(None)?;
    eprintln!("font: {} ({})", fonts.family(), fonts.path().display());
    let p = pop.person(person).ok_or("no such person")?;
    std::fs::create_dir_all(&out)?;
    for no in args {
        let no: u32 = no.parse()?;
        let d = catalog
            .datasets()
            .iter()
            .find(|d| d.no == no)
            .ok_or("no such dataset")?;
        let c = g.render(Subject::Person(p), d)?;
        let spec = DocumentSpec::new(
            d,
            catalog.agency(&d.agency),
            format!("{}（{}）", p.name, p.id.masked()),
            "t-example",
            Timestamp::from_millis(1_793_000_000_000),
            c.labels,
            c.rows,
        );
        let path = out.join(format!("{no}-{}.pdf", d.id));
        std::fs::write(&path, render(&spec, &fonts)?)?;
        println!("{}", path.display());
    }
    Ok(())
}
