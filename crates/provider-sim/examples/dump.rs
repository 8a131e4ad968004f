//! Prints one person's content for the datasets given on the command line (development aid).

use mydata_core::catalog::Catalog;
use mydata_provider_sim::content::{Generator, Subject};
use mydata_provider_sim::{Date, Population};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let person: usize = args.next().unwrap_or_default().parse().unwrap_or(0);
    let date = Date::new(2026, 11, 1).ok_or("bad date")?;
    let pop = Population::generate(42, date);
    let catalog = Catalog::embedded()?;
    let g = Generator::new(&pop, &catalog)?;
    let p = pop.person(person).ok_or("no such person")?;
    for no in args {
        let no: u32 = no.parse()?;
        let d = catalog
            .datasets()
            .iter()
            .find(|d| d.no == no)
            .ok_or("no such dataset")?;
        let c = g.render(Subject::Person(p), d)?;
        println!(
            "#{no} {:?}\n{}",
            c.outcome,
            serde_json::to_string_pretty(&c.json)?
        );
        if let Some(csv) = c.csv {
            println!("{csv}");
        }
    }
    Ok(())
}
