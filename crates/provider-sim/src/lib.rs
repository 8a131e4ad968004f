//! Simulated data-provider agencies: a deterministic synthetic population and, for any person or
//! company in it, the content of every catalogued dataset.
//!
//! [`population`] decides once everything agencies know about each person, from a seed and a
//! reference date (never the wall clock); [`content`] renders any dataset of the catalogue from that
//! model, so the same person's data agree across datasets, and [`pdf`] prints it as an agency
//! document. [`fields`] parses `catalog/fields.tsv`.
//! [`server`] is the HTTP service of the agencies (request tokens in [`token`], body shape in
//! [`wire`]).

pub mod content;
pub mod date;
pub mod fields;
pub mod pdf;
pub mod population;
pub mod server;
pub mod token;
pub mod wire;

pub use content::{Content, ContentError, Outcome, Subject};
pub use date::Date;
pub use fields::{Field, FieldError, FieldTable};
pub use population::{Company, Household, Person, Population};
