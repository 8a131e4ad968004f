//! The catalogue: agencies, categories, datasets and services, parsed from TSV files and validated.
//!
//! The files live in the repository's `catalog/` folder and are embedded into the binary as the default
//! ([`CatalogSources::embedded`]); an operator may point the platform at another folder. Every problem
//! found is reported with the file, line and field, all at once, so that one `mydata catalog check` run
//! lists everything to fix.
//!
//! Dataset and service IDs are permanent API identifiers: a dataset's seed number and agency are kept as
//! attributes, never as its identity.

use crate::identity::{AssuranceLevel, IdentityMethod};
use crate::limits::MAX_DATASETS_WITHOUT_LEGAL_BASIS;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

/// Longest ID accepted for any catalogue entry.
const MAX_ID_LEN: usize = 48;
/// Longest readiness an agency may announce (one day).
const MAX_READY_MINUTES: u32 = 24 * 60;

/// One problem in a catalogue file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogIssue {
    /// The file as the operator named it.
    pub file: String,
    /// 1-based line number; 0 when the problem concerns the file as a whole.
    pub line: usize,
    /// The column concerned, if any.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for CatalogIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All problems found while loading a catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CatalogErrors(pub Vec<CatalogIssue>);

impl fmt::Display for CatalogErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => write!(f, "invalid catalogue"),
            [one] => write!(f, "invalid catalogue: {one}"),
            [first, rest @ ..] => write!(
                f,
                "invalid catalogue: {first} (and {} more problems)",
                rest.len()
            ),
        }
    }
}

/// The text of one catalogue file and the name to report problems under.
#[derive(Debug, Clone)]
pub struct CatalogSource {
    pub file: String,
    pub text: String,
}

/// The catalogue files by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatalogFile {
    Categories,
    Sectors,
    Agencies,
    Datasets,
    Services,
}

impl CatalogFile {
    pub const ALL: [CatalogFile; 5] = [
        CatalogFile::Categories,
        CatalogFile::Sectors,
        CatalogFile::Agencies,
        CatalogFile::Datasets,
        CatalogFile::Services,
    ];

    /// The file name inside a catalogue folder.
    pub fn file_name(self) -> &'static str {
        match self {
            CatalogFile::Categories => "categories.tsv",
            CatalogFile::Sectors => "sectors.tsv",
            CatalogFile::Agencies => "agencies.tsv",
            CatalogFile::Datasets => "datasets.tsv",
            CatalogFile::Services => "services.tsv",
        }
    }

    /// Which kind a file name denotes, if any.
    pub fn from_file_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.file_name() == name)
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            CatalogFile::Categories | CatalogFile::Sectors | CatalogFile::Agencies => {
                &["id", "name_zh", "name_en"]
            }
            CatalogFile::Datasets => &[
                "id",
                "no",
                "agency",
                "name_zh",
                "name_en",
                "category",
                "auth_methods",
                "formats",
                "ready_minutes",
            ],
            CatalogFile::Services => &[
                "id",
                "provider_zh",
                "provider_en",
                "name_zh",
                "name_en",
                "mode",
                "datasets",
                "sector",
                "legal_basis",
            ],
        }
    }
}

/// The five catalogue files that make one catalogue.
#[derive(Debug, Clone)]
pub struct CatalogSources {
    pub categories: CatalogSource,
    pub sectors: CatalogSource,
    pub agencies: CatalogSource,
    pub datasets: CatalogSource,
    pub services: CatalogSource,
}

impl CatalogSources {
    /// The catalogue shipped with this build (the repository's `catalog/` folder).
    pub fn embedded() -> Self {
        fn src(file: &str, text: &str) -> CatalogSource {
            CatalogSource {
                file: format!("(built-in) catalog/{file}"),
                text: text.to_owned(),
            }
        }
        Self {
            categories: src(
                "categories.tsv",
                include_str!("../../../catalog/categories.tsv"),
            ),
            sectors: src("sectors.tsv", include_str!("../../../catalog/sectors.tsv")),
            agencies: src(
                "agencies.tsv",
                include_str!("../../../catalog/agencies.tsv"),
            ),
            datasets: src(
                "datasets.tsv",
                include_str!("../../../catalog/datasets.tsv"),
            ),
            services: src(
                "services.tsv",
                include_str!("../../../catalog/services.tsv"),
            ),
        }
    }

    pub fn get_mut(&mut self, kind: CatalogFile) -> &mut CatalogSource {
        match kind {
            CatalogFile::Categories => &mut self.categories,
            CatalogFile::Sectors => &mut self.sectors,
            CatalogFile::Agencies => &mut self.agencies,
            CatalogFile::Datasets => &mut self.datasets,
            CatalogFile::Services => &mut self.services,
        }
    }
}

/// A file format an agency delivers a dataset in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    Json,
    Csv,
    Pdf,
}

impl DataFormat {
    pub const ALL: [DataFormat; 3] = [DataFormat::Json, DataFormat::Csv, DataFormat::Pdf];

    pub fn code(self) -> &'static str {
        match self {
            DataFormat::Json => "json",
            DataFormat::Csv => "csv",
            DataFormat::Pdf => "pdf",
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            DataFormat::Json => "application/json",
            DataFormat::Csv => "text/csv; charset=utf-8",
            DataFormat::Pdf => "application/pdf",
        }
    }
}

impl FromStr for DataFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.code() == s)
            .ok_or_else(|| format!("unknown format `{s}` (allowed: json, csv, pdf)"))
    }
}

/// Where a service can be used: online, at a counter, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    Online,
    Counter,
    Both,
}

impl ServiceMode {
    pub fn code(self) -> &'static str {
        match self {
            ServiceMode::Online => "online",
            ServiceMode::Counter => "counter",
            ServiceMode::Both => "both",
        }
    }

    /// True when a service of this mode can be used in the `wanted` way. `Both` offers either.
    pub fn offers(self, wanted: ServiceMode) -> bool {
        self == wanted || self == ServiceMode::Both
    }
}

impl FromStr for ServiceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(ServiceMode::Online),
            "counter" => Ok(ServiceMode::Counter),
            "both" => Ok(ServiceMode::Both),
            _ => Err(format!(
                "unknown mode `{s}` (allowed: online, counter, both)"
            )),
        }
    }
}

/// A named group (category of datasets, sector of services).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Label {
    pub id: String,
    pub name_zh: String,
    pub name_en: String,
}

/// A data-provider agency.
pub type Agency = Label;
/// A category of datasets.
pub type Category = Label;
/// A sector of services.
pub type Sector = Label;

/// One dataset an agency provides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dataset {
    /// Permanent identifier.
    pub id: String,
    /// The number in the seed table (an attribute, not the identity).
    pub no: u32,
    pub agency: String,
    pub name_zh: String,
    pub name_en: String,
    pub category: String,
    /// Identity methods the agency accepts, in catalogue order.
    pub identity_methods: Vec<IdentityMethod>,
    pub formats: Vec<DataFormat>,
    /// Expected minutes until the agency has the data ready (0 = at once).
    pub ready_minutes: u32,
}

impl Dataset {
    /// Whether the agency accepts `method`. A trusted verifier's assertion is accepted for any
    /// dataset; the level it states must still meet [`Dataset::min_level`].
    pub fn accepts(&self, method: IdentityMethod) -> bool {
        method == IdentityMethod::Asserted || self.identity_methods.contains(&method)
    }

    /// The weakest assurance level the agency accepts for this dataset.
    pub fn min_level(&self) -> AssuranceLevel {
        self.identity_methods
            .iter()
            .map(|m| m.level())
            .max()
            .unwrap_or(AssuranceLevel::L1)
    }

    pub fn offers(&self, format: DataFormat) -> bool {
        self.formats.contains(&format)
    }
}

/// A service that uses datasets, online or at a counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub id: String,
    pub provider_zh: String,
    pub provider_en: String,
    pub name_zh: String,
    pub name_en: String,
    pub mode: ServiceMode,
    pub datasets: Vec<String>,
    pub sector: String,
    /// The recorded legal basis that allows more than five datasets, if any.
    pub legal_basis: Option<String>,
}

/// Filters for [`Catalog::find_datasets`]; each set filter must match.
#[derive(Debug, Clone, Default)]
pub struct DatasetFilter {
    pub agency: Option<String>,
    pub category: Option<String>,
    pub identity_method: Option<IdentityMethod>,
    pub format: Option<DataFormat>,
    /// Free text: every whitespace-separated term must occur in the zh-TW or English name of the
    /// dataset or of its agency, or in its ID (case-insensitive).
    pub query: Option<String>,
}

/// Filters for [`Catalog::find_services`].
#[derive(Debug, Clone, Default)]
pub struct ServiceFilter {
    /// Services usable this way (`both` services match `online` and `counter`).
    pub mode: Option<ServiceMode>,
    pub sector: Option<String>,
}

/// Why a basket of datasets cannot be requested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("no dataset was chosen")]
    Empty,
    #[error("unknown dataset `{0}`")]
    UnknownDataset(String),
}

/// An identity method that the selection cannot use, and the datasets that rule it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MethodExclusion {
    pub method: IdentityMethod,
    pub excluded_by: Vec<String>,
}

/// What a basket of datasets needs: the identity methods every dataset accepts, why the others are
/// not offered, the level to reach and the expected wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub datasets: Vec<String>,
    pub identity_methods: Vec<IdentityMethod>,
    pub excluded_methods: Vec<MethodExclusion>,
    /// The strictest of the datasets' minimum levels: a verification at this level or stronger is
    /// accepted by every dataset of the selection.
    pub required_level: AssuranceLevel,
    /// The longest expected readiness among the datasets.
    pub ready_minutes: u32,
}

/// The validated catalogue.
#[derive(Debug, Clone)]
pub struct Catalog {
    categories: Vec<Category>,
    sectors: Vec<Sector>,
    agencies: Vec<Agency>,
    datasets: Vec<Dataset>,
    services: Vec<Service>,
    dataset_index: HashMap<String, usize>,
    service_index: HashMap<String, usize>,
    agency_index: HashMap<String, usize>,
}

impl Catalog {
    /// The catalogue shipped with this build.
    pub fn embedded() -> Result<Self, CatalogErrors> {
        Self::parse(&CatalogSources::embedded())
    }

    /// Parses and validates all five files; returns every problem found.
    pub fn parse(src: &CatalogSources) -> Result<Self, CatalogErrors> {
        let mut issues = Vec::new();
        let categories = parse_labels(&src.categories, CatalogFile::Categories, &mut issues);
        let sectors = parse_labels(&src.sectors, CatalogFile::Sectors, &mut issues);
        let agencies = parse_labels(&src.agencies, CatalogFile::Agencies, &mut issues);
        let agency_ids: BTreeSet<&str> = agencies.iter().map(|a| a.id.as_str()).collect();
        let category_ids: BTreeSet<&str> = categories.iter().map(|c| c.id.as_str()).collect();
        let datasets = parse_datasets(&src.datasets, &agency_ids, &category_ids, &mut issues);
        let dataset_ids: BTreeSet<&str> = datasets.iter().map(|d| d.id.as_str()).collect();
        let sector_ids: BTreeSet<&str> = sectors.iter().map(|s| s.id.as_str()).collect();
        let services = parse_services(&src.services, &dataset_ids, &sector_ids, &mut issues);
        if !issues.is_empty() {
            return Err(CatalogErrors(issues));
        }
        let index = |ids: Vec<&String>| {
            ids.into_iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect()
        };
        Ok(Self {
            dataset_index: index(datasets.iter().map(|d| &d.id).collect()),
            service_index: index(services.iter().map(|s| &s.id).collect()),
            agency_index: index(agencies.iter().map(|a| &a.id).collect()),
            categories,
            sectors,
            agencies,
            datasets,
            services,
        })
    }

    pub fn datasets(&self) -> &[Dataset] {
        &self.datasets
    }
    pub fn services(&self) -> &[Service] {
        &self.services
    }
    pub fn agencies(&self) -> &[Agency] {
        &self.agencies
    }
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }
    pub fn sectors(&self) -> &[Sector] {
        &self.sectors
    }

    pub fn dataset(&self, id: &str) -> Option<&Dataset> {
        self.dataset_index
            .get(id)
            .and_then(|&i| self.datasets.get(i))
    }
    pub fn service(&self, id: &str) -> Option<&Service> {
        self.service_index
            .get(id)
            .and_then(|&i| self.services.get(i))
    }
    pub fn agency(&self, id: &str) -> Option<&Agency> {
        self.agency_index
            .get(id)
            .and_then(|&i| self.agencies.get(i))
    }
    pub fn category(&self, id: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.id == id)
    }
    pub fn sector(&self, id: &str) -> Option<&Sector> {
        self.sectors.iter().find(|s| s.id == id)
    }

    /// Datasets matching every set filter, in catalogue order.
    pub fn find_datasets(&self, f: &DatasetFilter) -> Vec<&Dataset> {
        let terms: Vec<String> = f
            .query
            .as_deref()
            .map(|q| q.split_whitespace().map(str::to_lowercase).collect())
            .unwrap_or_default();
        self.datasets
            .iter()
            .filter(|d| f.agency.as_deref().is_none_or(|a| d.agency == a))
            .filter(|d| f.category.as_deref().is_none_or(|c| d.category == c))
            .filter(|d| f.identity_method.is_none_or(|m| d.accepts(m)))
            .filter(|d| f.format.is_none_or(|x| d.offers(x)))
            .filter(|d| terms.is_empty() || self.matches_terms(d, &terms))
            .collect()
    }

    fn matches_terms(&self, d: &Dataset, terms: &[String]) -> bool {
        let agency = self.agency(&d.agency);
        let haystack = [
            d.id.as_str(),
            d.name_zh.as_str(),
            d.name_en.as_str(),
            agency.map_or("", |a| a.name_zh.as_str()),
            agency.map_or("", |a| a.name_en.as_str()),
        ]
        .join("\n")
        .to_lowercase();
        terms.iter().all(|t| haystack.contains(t.as_str()))
    }

    /// Services matching every set filter, in catalogue order.
    pub fn find_services(&self, f: &ServiceFilter) -> Vec<&Service> {
        self.services
            .iter()
            .filter(|s| f.mode.is_none_or(|m| s.mode.offers(m)))
            .filter(|s| f.sector.as_deref().is_none_or(|x| s.sector == x))
            .collect()
    }

    /// What a basket of datasets requires. Duplicates in `ids` are ignored.
    pub fn selection<S: AsRef<str>>(&self, ids: &[S]) -> Result<Selection, SelectionError> {
        let mut chosen: Vec<&Dataset> = Vec::new();
        for id in ids {
            let id = id.as_ref();
            let d = self
                .dataset(id)
                .ok_or_else(|| SelectionError::UnknownDataset(id.to_owned()))?;
            if !chosen.iter().any(|c| c.id == d.id) {
                chosen.push(d);
            }
        }
        if chosen.is_empty() {
            return Err(SelectionError::Empty);
        }
        let mut identity_methods = Vec::new();
        let mut excluded_methods = Vec::new();
        for m in IdentityMethod::ALL {
            let excluded_by: Vec<String> = chosen
                .iter()
                .filter(|d| !d.accepts(m))
                .map(|d| d.id.clone())
                .collect();
            if excluded_by.is_empty() {
                identity_methods.push(m);
            } else if excluded_by.len() < chosen.len() {
                // A method no chosen dataset accepts is not worth explaining.
                excluded_methods.push(MethodExclusion {
                    method: m,
                    excluded_by,
                });
            }
        }
        let required_level = chosen
            .iter()
            .map(|d| d.min_level())
            .min()
            .unwrap_or(AssuranceLevel::L1);
        let ready_minutes = chosen.iter().map(|d| d.ready_minutes).max().unwrap_or(0);
        Ok(Selection {
            datasets: chosen.iter().map(|d| d.id.clone()).collect(),
            identity_methods,
            excluded_methods,
            required_level,
            ready_minutes,
        })
    }
}

/// A data row of a TSV file, with its 1-based line number.
struct Row<'a> {
    line: usize,
    cells: Vec<&'a str>,
}

impl<'a> Row<'a> {
    fn get(&self, col: usize) -> &'a str {
        self.cells.get(col).copied().unwrap_or("")
    }
}

/// Collects problems for one file.
struct Reporter<'i> {
    file: &'i str,
    kind: CatalogFile,
    issues: &'i mut Vec<CatalogIssue>,
}

impl Reporter<'_> {
    fn at(&mut self, line: usize, col: Option<usize>, message: impl Into<String>) {
        let field = col
            .and_then(|c| self.kind.columns().get(c))
            .map(|s| (*s).to_owned());
        self.issues.push(CatalogIssue {
            file: self.file.to_owned(),
            line,
            field,
            message: message.into(),
        });
    }

    /// A non-empty value without surrounding whitespace.
    fn text(&mut self, row: &Row<'_>, col: usize) -> String {
        let v = row.get(col);
        if v.trim().is_empty() {
            self.at(row.line, Some(col), "must not be empty");
        } else if v.trim() != v {
            self.at(row.line, Some(col), "has leading or trailing spaces");
        }
        v.trim().to_owned()
    }

    /// A permanent identifier: lowercase words joined by single hyphens.
    fn id(&mut self, row: &Row<'_>, col: usize, seen: &mut HashMap<String, usize>) -> String {
        let v = row.get(col);
        if !is_slug(v) {
            self.at(
                row.line,
                Some(col),
                format!("`{v}` is not a valid ID (lowercase letters and digits joined by single hyphens, at most {MAX_ID_LEN} characters)"),
            );
        } else if let Some(first) = seen.get(v) {
            self.at(
                row.line,
                Some(col),
                format!("duplicate ID `{v}` (first on line {first})"),
            );
        } else {
            seen.insert(v.to_owned(), row.line);
        }
        v.to_owned()
    }

    /// Parses a delimited list of codes, reporting unknown and repeated ones.
    fn list<T: FromStr<Err = String> + PartialEq + Copy>(
        &mut self,
        row: &Row<'_>,
        col: usize,
        sep: char,
    ) -> Vec<T> {
        let mut out = Vec::new();
        let v = row.get(col);
        if v.is_empty() {
            self.at(row.line, Some(col), "must list at least one value");
            return out;
        }
        for part in v.split(sep) {
            match part.parse::<T>() {
                Ok(x) if out.contains(&x) => {
                    self.at(row.line, Some(col), format!("`{part}` is listed twice"))
                }
                Ok(x) => out.push(x),
                Err(e) => self.at(row.line, Some(col), e),
            }
        }
        out
    }
}

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Splits a TSV file into data rows after checking its header. `#` lines and blank lines are comments.
fn table<'a>(src: &'a CatalogSource, rep: &mut Reporter<'_>) -> Vec<Row<'a>> {
    let expected = rep.kind.columns();
    let mut lines = src
        .text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let Some((header_line, header)) = lines.next() else {
        rep.at(
            0,
            None,
            format!("no header line; expected columns: {}", expected.join(", ")),
        );
        return Vec::new();
    };
    let found: Vec<&str> = header.split('\t').collect();
    if found != expected {
        rep.at(
            header_line,
            None,
            format!(
                "header must be exactly `{}` (tab-separated), found `{}`",
                expected.join(" "),
                found.join(" ")
            ),
        );
        return Vec::new();
    }
    let mut rows = Vec::new();
    for (line, text) in lines {
        let cells: Vec<&str> = text.split('\t').collect();
        if cells.len() != expected.len() {
            rep.at(
                line,
                None,
                format!("has {} columns, expected {}", cells.len(), expected.len()),
            );
            continue;
        }
        rows.push(Row { line, cells });
    }
    rows
}

fn parse_labels(
    src: &CatalogSource,
    kind: CatalogFile,
    issues: &mut Vec<CatalogIssue>,
) -> Vec<Label> {
    let mut rep = Reporter {
        file: &src.file,
        kind,
        issues,
    };
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for row in table(src, &mut rep) {
        out.push(Label {
            id: rep.id(&row, 0, &mut seen),
            name_zh: rep.text(&row, 1),
            name_en: rep.text(&row, 2),
        });
    }
    out
}

fn parse_datasets(
    src: &CatalogSource,
    agencies: &BTreeSet<&str>,
    categories: &BTreeSet<&str>,
    issues: &mut Vec<CatalogIssue>,
) -> Vec<Dataset> {
    let mut rep = Reporter {
        file: &src.file,
        kind: CatalogFile::Datasets,
        issues,
    };
    let mut seen = HashMap::new();
    let mut numbers: HashMap<u32, usize> = HashMap::new();
    let mut out = Vec::new();
    for row in table(src, &mut rep) {
        let id = rep.id(&row, 0, &mut seen);
        let no = match row.get(1).parse::<u32>() {
            Ok(n) if n > 0 => {
                if let Some(first) = numbers.insert(n, row.line) {
                    rep.at(
                        row.line,
                        Some(1),
                        format!("number {n} is already used on line {first}"),
                    );
                }
                n
            }
            _ => {
                rep.at(
                    row.line,
                    Some(1),
                    format!("`{}` is not a positive whole number", row.get(1)),
                );
                0
            }
        };
        let agency = rep.text(&row, 2);
        if !agency.is_empty() && !agencies.contains(agency.as_str()) {
            rep.at(
                row.line,
                Some(2),
                format!("unknown agency `{agency}` (not in agencies.tsv)"),
            );
        }
        let category = rep.text(&row, 5);
        if !category.is_empty() && !categories.contains(category.as_str()) {
            rep.at(
                row.line,
                Some(5),
                format!("unknown category `{category}` (not in categories.tsv)"),
            );
        }
        let ready_minutes = match row.get(8).parse::<u32>() {
            Ok(n) if n <= MAX_READY_MINUTES => n,
            _ => {
                rep.at(
                    row.line,
                    Some(8),
                    format!(
                        "`{}` is not a number of minutes from 0 to {MAX_READY_MINUTES}",
                        row.get(8)
                    ),
                );
                0
            }
        };
        out.push(Dataset {
            id,
            no,
            agency,
            name_zh: rep.text(&row, 3),
            name_en: rep.text(&row, 4),
            category,
            identity_methods: rep.list(&row, 6, ','),
            formats: rep.list(&row, 7, ','),
            ready_minutes,
        });
    }
    out
}

fn parse_services(
    src: &CatalogSource,
    datasets: &BTreeSet<&str>,
    sectors: &BTreeSet<&str>,
    issues: &mut Vec<CatalogIssue>,
) -> Vec<Service> {
    let mut rep = Reporter {
        file: &src.file,
        kind: CatalogFile::Services,
        issues,
    };
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for row in table(src, &mut rep) {
        let id = rep.id(&row, 0, &mut seen);
        let mode = row.get(5).parse::<ServiceMode>().unwrap_or_else(|e| {
            rep.at(row.line, Some(5), e);
            ServiceMode::Online
        });
        let mut ds: Vec<String> = Vec::new();
        if row.get(6).is_empty() {
            rep.at(row.line, Some(6), "must list at least one dataset");
        }
        for d in row.get(6).split(';').filter(|d| !d.is_empty()) {
            if !datasets.contains(d) {
                rep.at(
                    row.line,
                    Some(6),
                    format!("unknown dataset `{d}` (not in datasets.tsv)"),
                );
            } else if ds.iter().any(|x| x == d) {
                rep.at(row.line, Some(6), format!("dataset `{d}` is listed twice"));
            } else {
                ds.push(d.to_owned());
            }
        }
        let legal_basis = Some(row.get(8).trim().to_owned()).filter(|s| !s.is_empty());
        if ds.len() > MAX_DATASETS_WITHOUT_LEGAL_BASIS && legal_basis.is_none() {
            rep.at(
                row.line,
                Some(6),
                format!(
                    "lists {} datasets; more than {MAX_DATASETS_WITHOUT_LEGAL_BASIS} need a recorded legal basis in `legal_basis`",
                    ds.len()
                ),
            );
        }
        let sector = rep.text(&row, 7);
        if !sector.is_empty() && !sectors.contains(sector.as_str()) {
            rep.at(
                row.line,
                Some(7),
                format!("unknown sector `{sector}` (not in sectors.tsv)"),
            );
        }
        out.push(Service {
            id,
            provider_zh: rep.text(&row, 1),
            provider_en: rep.text(&row, 2),
            name_zh: rep.text(&row, 3),
            name_en: rep.text(&row, 4),
            mode,
            datasets: ds,
            sector,
            legal_basis,
        });
    }
    out
}

#[cfg(test)]
mod tests;
