//! The content of any catalogued dataset for any person or company of the population.
//!
//! Each dataset's rows are built from the [`Population`] model (so datasets agree with each other),
//! then shaped as the agency would send them: upstream keys, wrappers and date formats for the
//! documented datasets (see `catalog/fields-notes.md`), snake_case keys from `fields.tsv` otherwise.
//! A subject without a record gets the agency's "no record" answer, not an error.

use crate::date::Date;
use crate::fields::{Field, FieldError, FieldTable, FieldType};
use crate::population::{Company, Person, Population, Role, Welfare};
use mydata_core::catalog::{Catalog, DataFormat, Dataset};
use mydata_core::id_number::Sex;
use mydata_core::identity::IdentityMethod;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::HashMap;

/// Who the data is about.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Person(&'a Person),
    Company(&'a Company),
}

/// Whether the agency holds a record for the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Found,
    /// A well-formed answer saying there is nothing (no vehicle, not low-income, …).
    NoRecord,
}

/// One dataset's content for one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    pub dataset_no: u32,
    pub outcome: Outcome,
    /// Always present.
    pub json: Value,
    /// Present when the dataset is offered as CSV: a header row of the `label_zh` column names.
    pub csv: Option<String>,
    /// The fields' `label_zh`, in `fields.tsv` order: the columns of [`Content::rows`].
    pub labels: Vec<String>,
    /// Every record as text, one value per label (what a printed document shows).
    pub rows: Vec<Vec<String>>,
}

/// Why content could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error(transparent)]
    Fields(#[from] FieldError),
    #[error("dataset {0} has no fields in fields.tsv")]
    NoFields(u32),
    #[error("dataset {0} is about natural persons and is not available for companies")]
    NotForCompanies(u32),
    #[error("writing CSV: {0}")]
    Csv(String),
}

/// A value before the dataset's date style is applied.
#[derive(Debug, Clone, PartialEq)]
enum V {
    S(String),
    D(Date),
    I(i64),
    N(f64),
    B(bool),
    Null,
}

impl From<&str> for V {
    fn from(s: &str) -> Self {
        V::S(s.to_owned())
    }
}
impl From<String> for V {
    fn from(s: String) -> Self {
        V::S(s)
    }
}
impl From<Date> for V {
    fn from(d: Date) -> Self {
        V::D(d)
    }
}
impl From<i64> for V {
    fn from(n: i64) -> Self {
        V::I(n)
    }
}
impl From<u64> for V {
    fn from(n: u64) -> Self {
        V::I(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<u32> for V {
    fn from(n: u32) -> Self {
        V::I(i64::from(n))
    }
}
impl From<bool> for V {
    fn from(b: bool) -> Self {
        V::B(b)
    }
}

/// One record: who it is about and the values decided by the model; other fields get defaults.
#[derive(Debug, Clone, Default)]
struct Row {
    about: Option<usize>,
    vals: HashMap<&'static str, V>,
}

impl Row {
    fn about(person: usize) -> Self {
        Self {
            about: Some(person),
            vals: HashMap::new(),
        }
    }
    fn set(mut self, key: &'static str, v: impl Into<V>) -> Self {
        self.vals.insert(key, v.into());
        self
    }
}

/// How an agency writes dates.
#[derive(Debug, Clone, Copy)]
enum DateStyle {
    Roc7,
    RocSlash,
    RocChinese,
    IsoTaipei,
    Yyyymmdd,
    Iso,
}

fn date_style(no: u32) -> DateStyle {
    match no {
        1 | 2 | 4 | 22 => DateStyle::Roc7,
        3 => DateStyle::RocSlash,
        59 => DateStyle::RocChinese,
        38 => DateStyle::IsoTaipei,
        49 => DateStyle::Yyyymmdd,
        _ => DateStyle::Iso,
    }
}

fn fmt_date(d: Date, style: DateStyle, key: &str) -> String {
    match (style, key) {
        (DateStyle::IsoTaipei, "birthday") => d.roc_dash(),
        (DateStyle::RocChinese, "member_birthday") => d.roc_short_slash(),
        (DateStyle::Roc7, _) => d.roc7(),
        (DateStyle::RocSlash, _) => d.roc_slash(),
        (DateStyle::RocChinese, _) => d.roc_chinese(),
        (DateStyle::IsoTaipei, _) => d.iso_taipei(),
        (DateStyle::Yyyymmdd, _) => d.yyyymmdd(),
        (DateStyle::Iso, _) => d.iso(),
    }
}

/// Role prefixes of `<role>_name` / `<role>_id` keys that denote the subject.
const SUBJECT_ROLES: &[&str] = &[
    "person",
    "full_person",
    "applicant",
    "taxpayer",
    "owner",
    "violator",
    "payee",
    "account",
    "new_account",
    "policyholder",
    "insured",
    "researcher",
    "recipient",
    "registrant",
    "holder",
    "licensee",
    "student",
    "account_holder",
    "responsible",
];

fn subject_role(key: &str, suffix: &str) -> bool {
    key.strip_suffix(suffix)
        .is_some_and(|role| SUBJECT_ROLES.contains(&role))
}

/// Builds dataset content from a population.
#[derive(Debug)]
pub struct Generator<'p> {
    pop: &'p Population,
    fields: Cow<'p, FieldTable>,
    agency_names: Cow<'p, HashMap<String, String>>,
}

/// The 薪資 bracket cap of 勞保 (月投保薪資 top bracket).
const INSURED_SALARY_CAP: u32 = 45_800;

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: spreads (seed, subject, dataset) into an independent stream seed.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl<'p> Generator<'p> {
    /// A generator over `pop`, with the fields of `catalog/fields.tsv` and agency names from `catalog`.
    pub fn new(pop: &'p Population, catalog: &Catalog) -> Result<Self, FieldError> {
        Ok(Self::with_fields(pop, catalog, FieldTable::embedded()?))
    }

    pub fn with_fields(pop: &'p Population, catalog: &Catalog, fields: FieldTable) -> Self {
        Self {
            pop,
            fields: Cow::Owned(fields),
            agency_names: Cow::Owned(Self::agency_names(catalog)),
        }
    }

    /// A generator over tables its caller keeps (a server answering many requests builds them
    /// once; `agency_names` from [`Generator::agency_names`]).
    pub fn borrowing(
        pop: &'p Population,
        fields: &'p FieldTable,
        agency_names: &'p HashMap<String, String>,
    ) -> Self {
        Self {
            pop,
            fields: Cow::Borrowed(fields),
            agency_names: Cow::Borrowed(agency_names),
        }
    }

    /// The zh-TW name of every agency of `catalog`, by ID.
    pub fn agency_names(catalog: &Catalog) -> HashMap<String, String> {
        catalog
            .agencies()
            .iter()
            .map(|a| (a.id.clone(), a.name_zh.clone()))
            .collect()
    }

    fn rng(&self, subject: Subject<'_>, no: u32) -> ChaCha20Rng {
        let who = match subject {
            Subject::Person(p) => p.index as u64,
            Subject::Company(c) => 1_000_000 + c.index as u64,
        };
        ChaCha20Rng::seed_from_u64(mix(mix(self.pop.seed()) ^ mix(who) ^ u64::from(no) << 40))
    }

    /// A stable yes/no for optional records (licences, permits…), about `percent` in 100.
    fn chance(&self, p: &Person, no: u32, percent: u64) -> bool {
        mix(self.pop.seed() ^ (p.index as u64) << 20 ^ u64::from(no)) % 100 < percent
    }

    fn today(&self) -> Date {
        self.pop.reference_date()
    }

    fn person(&self, i: usize) -> Option<&'p Person> {
        self.pop.person(i)
    }

    /// The content of `dataset` for `subject`.
    pub fn render(&self, subject: Subject<'_>, dataset: &Dataset) -> Result<Content, ContentError> {
        let fields = self.fields.for_dataset(dataset.no);
        if fields.is_empty() {
            return Err(ContentError::NoFields(dataset.no));
        }
        let mut rng = self.rng(subject, dataset.no);
        let rows = match subject {
            Subject::Person(p) => self.person_rows(p, dataset.no, &mut rng),
            Subject::Company(c) => {
                if !dataset.accepts(IdentityMethod::MoeaCert) {
                    return Err(ContentError::NotForCompanies(dataset.no));
                }
                self.company_rows(c, dataset.no, &mut rng)
            }
        };
        let agency = self
            .agency_names
            .get(&dataset.agency)
            .cloned()
            .unwrap_or_else(|| dataset.agency.clone());
        let style = date_style(dataset.no);
        let rendered: Vec<Vec<(&Field, Value)>> = rows
            .iter()
            .map(|row| {
                fields
                    .iter()
                    .map(|f| {
                        let v = row.vals.get(f.key.as_str()).cloned().unwrap_or_else(|| {
                            self.default_value(subject, row, f, &agency, &mut rng)
                        });
                        (f, to_json(v, style, &f.key))
                    })
                    .collect()
            })
            .collect();
        let outcome = if rendered.is_empty() {
            Outcome::NoRecord
        } else {
            Outcome::Found
        };
        let json = shape(dataset.no, &rendered, subject);
        let csv = if dataset.offers(DataFormat::Csv) {
            Some(to_csv(fields, &rendered)?)
        } else {
            None
        };
        let labels = fields.iter().map(|f| f.label_zh.clone()).collect();
        let rows = rendered
            .iter()
            .map(|row| row.iter().map(|(_, v)| cell(v)).collect())
            .collect();
        Ok(Content {
            dataset_no: dataset.no,
            outcome,
            json,
            csv,
            labels,
            rows,
        })
    }

    /// Fills a field the model did not set, from the row's person and the field's meaning or type.
    fn default_value(
        &self,
        subject: Subject<'_>,
        row: &Row,
        f: &Field,
        agency: &str,
        rng: &mut ChaCha20Rng,
    ) -> V {
        let key = f.key.as_str();
        let about = row.about.and_then(|i| self.person(i));
        let today = self.today();
        match subject {
            Subject::Company(c) => {
                if key == "name" || subject_role(key, "_name") || key.ends_with("company_name") {
                    return c.name.clone().into();
                }
                if f.ty == FieldType::IdNumber || key.ends_with("_ban") || key == "ban_no" {
                    return c.ban.as_str().into();
                }
                if f.ty == FieldType::Address {
                    return c.address.postal().into();
                }
            }
            Subject::Person(_) => {
                if let Some(p) = about {
                    if key == "name" || key == "name_zh" || subject_role(key, "_name") {
                        return p.name.clone().into();
                    }
                    if f.ty == FieldType::IdNumber
                        && (key == "id_no" || key == "idn" || subject_role(key, "_id"))
                    {
                        return if f.label_zh.contains("部分遮罩") {
                            p.id.masked().into()
                        } else {
                            p.id.as_str().into()
                        };
                    }
                    if matches!(key, "birth_date" | "birthday" | "birth_yyymmdd") {
                        return p.birth_date.into();
                    }
                    if key == "gender" {
                        let male = p.sex == Sex::Male;
                        return match &f.ty {
                            FieldType::Enum(v) if v.iter().any(|x| x == "M") => {
                                if male { "M" } else { "F" }.into()
                            }
                            _ => if male { "男" } else { "女" }.into(),
                        };
                    }
                    if f.ty == FieldType::Address {
                        return p.address.full().into();
                    }
                    if key == "employer_name"
                        && let Some(c) = p
                            .employment
                            .as_ref()
                            .and_then(|e| self.pop.company(e.company))
                    {
                        return c.name.clone().into();
                    }
                }
            }
        }
        if key.ends_with("authority")
            || key.ends_with("issuing_unit")
            || key.ends_with("office")
            || key == "reg_unit_name"
            || key == "payment_unit"
        {
            return agency.into();
        }
        match &f.ty {
            FieldType::Date => today.add_days(-rng.random_range(1..1500)).into(),
            FieldType::Integer => {
                if key.contains("year") {
                    i64::from(today.year() - rng.random_range(0..3)).into()
                } else {
                    rng.random_range(1..60i64).into()
                }
            }
            FieldType::Decimal => V::N(f64::from(rng.random_range(10..5000u32)) / 10.0),
            FieldType::Boolean => rng.random_bool(0.2).into(),
            FieldType::Enum(values) => {
                // The first listed value is the usual state (有效, 核准, 已繳…).
                if rng.random_bool(0.75) {
                    values.first().cloned().unwrap_or_default().into()
                } else {
                    values[rng.random_range(0..values.len())].clone().into()
                }
            }
            FieldType::MoneyTwd => (u64::from(rng.random_range(1..500u32)) * 100).into(),
            FieldType::IdNumber => V::Null,
            FieldType::Address => about.map(|p| p.address.postal()).unwrap_or_default().into(),
            FieldType::String => string_default(key, &f.label_zh, today, rng),
        }
    }

    fn company_rows(&self, c: &Company, no: u32, rng: &mut ChaCha20Rng) -> Vec<Row> {
        let today = self.today();
        match no {
            22 => {
                let mut rows = vec![officer_row(c, c.representative, "董事長", true, today)];
                for &d in &c.directors {
                    rows.push(officer_row(c, d, "董事", false, today));
                }
                rows.into_iter()
                    .map(|r| {
                        let name = self.person(r.about.unwrap_or(0)).map(|p| p.name.clone());
                        r.set("name", name.unwrap_or_default())
                    })
                    .collect()
            }
            // Land, vehicles and energy or water permits: a company holds some, not all.
            5 | 38 | 31 | 32 | 28 | 33 | 35 | 103 | 104 | 79 | 80 => {
                if mix(self.pop.seed() ^ (c.index as u64) << 24 ^ u64::from(no)).is_multiple_of(3) {
                    Vec::new()
                } else {
                    let mut row = Row::default();
                    if no == 38 {
                        row = row
                            .set("owner_name", c.name.clone())
                            .set("owner_id", c.ban.as_str())
                            .set("birthday", V::Null)
                            .set(
                                "plate_no",
                                format!("{}-{:04}", "RCD", rng.random_range(0..10_000)),
                            )
                            .set("car_type", "自用小貨車")
                            .set("perm_addr", c.address.postal());
                    }
                    vec![row]
                }
            }
            _ => vec![Row::default()],
        }
    }

    /// The records the agency holds about `p` for dataset `no` (empty: no record).
    fn person_rows(&self, p: &Person, no: u32, rng: &mut ChaCha20Rng) -> Vec<Row> {
        let pop = self.pop;
        let today = self.today();
        let age = p.age_on(today);
        let adult = age >= 18;
        let me = || Row::about(p.index);
        let hh = pop.household_of(p);
        let name_of = |i: Option<usize>| i.and_then(|i| self.person(i)).map(|x| x.name.clone());
        let id_of = |i: Option<usize>| {
            i.and_then(|i| self.person(i))
                .map_or(V::S(String::new()), |x| x.id.as_str().into())
        };
        let employer = p
            .employment
            .as_ref()
            .and_then(|e| pop.company(e.company).map(|c| (e, c)));
        let opt = |pct: u64, ok: bool| ok && self.chance(p, no, pct);
        let one = |cond: bool| if cond { vec![me()] } else { Vec::new() };
        match no {
            1 | 4 => {
                let Some(h) = hh else { return Vec::new() };
                if no == 4 && p.id_card_issued.is_none() {
                    return Vec::new();
                }
                let mut r = me()
                    .set("birth_order_sex", birth_order(pop, p))
                    .set("birth_place_code", h.address.county.clone())
                    .set("marriage_code", marriage(p))
                    .set("spouse_name", name_of(p.spouse).unwrap_or_default())
                    .set("father_name", name_of(p.father).unwrap_or_default())
                    .set("mother_name", name_of(p.mother).unwrap_or_default())
                    .set("household_head_id", id_of(Some(h.head)))
                    .set("move_in_yyymmdd", h.moved_in)
                    .set("education_mark", p.education)
                    .set("military_code", military(p, age))
                    .set("personal_mark", "非特殊人口")
                    .set(
                        "id_card_apply_yyymmdd",
                        p.id_card_issued.map_or(V::S(String::new()), V::D),
                    )
                    .set("id_card_apply_code", "換發")
                    .set(
                        "reissue_site_id",
                        format!("{}{}戶政事務所", h.address.county, h.address.town),
                    )
                    .set("image_flag", "Y")
                    .set("special_inci_code", "");
                if no == 4 {
                    // A tiny stand-in; real images are JPEG. Deterministic per person.
                    r = r.set("image_base64", format!("U0lNLUlNQUdFLQ=={:08}", p.index));
                }
                vec![r]
            }
            2 => {
                let Some(h) = hh else { return Vec::new() };
                h.members
                    .iter()
                    .filter_map(|&m| self.person(m))
                    .map(|m| {
                        Row::about(m.index)
                            .set("household_id", h.number.clone())
                            .set("household_head_id", id_of(Some(h.head)))
                            .set(
                                "household_register_content",
                                format!("{}遷入", h.moved_in.roc_chinese()),
                            )
                            .set("relationship", relationship(pop, m))
                            .set("marriage_code", marriage(m))
                            .set("spouse_id", id_of(m.spouse))
                            .set("father_id", id_of(m.father))
                            .set("mother_id", id_of(m.mother))
                            .set("living_race_type", "")
                            .set("move_in_yyymmdd", h.moved_in)
                            .set("education_mark", m.education)
                    })
                    .collect()
            }
            3 => {
                if hh.is_none() {
                    return Vec::new();
                }
                let mut rel: Vec<(usize, &str, &str)> = Vec::new();
                if let Some(f) = p.father {
                    rel.push((f, "父", "1"));
                }
                if let Some(m) = p.mother {
                    rel.push((m, "母", "1"));
                }
                if let Some(s) = p.spouse {
                    rel.push((s, "配偶", "0"));
                }
                for &c in &p.children {
                    let title = match self.person(c).map(|x| x.sex) {
                        Some(Sex::Male) => "子",
                        _ => "女",
                    };
                    rel.push((c, title, "1"));
                }
                rel.into_iter()
                    .filter_map(|(i, title, grade)| self.person(i).map(|x| (x, title, grade)))
                    .map(|(x, title, grade)| {
                        Row::about(x.index)
                            .set("relationship", title)
                            .set("relation_grade", grade)
                            .set("death_date", "")
                            .set("spouse_person_id", id_of(x.spouse))
                            .set("full_spouse_name", name_of(x.spouse).unwrap_or_default())
                            .set("name_change_original", "")
                            .set("name_change_after", "")
                            .set("name_change_date", "")
                            .set("name_change_site", "")
                            .set("id_change_original", "")
                            .set("id_change_date", "")
                    })
                    .collect()
            }
            5 => p.real_estate.as_ref().map_or_else(Vec::new, |re| {
                let base = |kind: &str, number: &str, area: u32| {
                    me().set("property_type", kind)
                        .set("county", re.address.county.clone())
                        .set("township", re.address.town.clone())
                        .set("section", re.section.clone())
                        .set("land_building_no", number)
                        .set("building_doorplate", re.address.full())
                        .set("area_sqm", V::N(f64::from(area)))
                        .set("ownership_share", "全部")
                        .set("registration_date", re.acquired)
                        .set("registration_reason", "買賣")
                        .set("announced_land_value", re.announced_land_value)
                        .set("transaction_date", re.acquired)
                        .set("transaction_price", re.price)
                        .set("owner_id", p.id.masked())
                };
                vec![
                    base("土地", &re.land_no, re.land_area_sqm),
                    base("建物", &re.building_no, re.building_area_sqm),
                ]
            }),
            8 => {
                if !adult || !(p.is_foreign() || self.chance(p, no, 50)) {
                    return Vec::new();
                }
                let out = today.add_days(-rng.random_range(30..300));
                let back = out.add_days(rng.random_range(3..20));
                vec![
                    me().set("movement_type", "出國").set("movement_date", out),
                    me().set("movement_type", "入國").set("movement_date", back),
                ]
            }
            9 => one(p.sex == Sex::Male && !p.is_foreign() && (18..=36).contains(&age)),
            10 | 37 | 40 => {
                let cars: Vec<_> = p.vehicles.iter().filter(|v| !v.is_motorcycle()).collect();
                let vehicles: Vec<_> = if no == 10 {
                    p.vehicles.iter().collect()
                } else {
                    cars
                };
                if no != 10 && !self.chance(p, no, 40) {
                    return Vec::new();
                }
                vehicles
                    .into_iter()
                    .take(if no == 10 { 3 } else { 1 })
                    .map(|v| {
                        let tax: u64 = match v.cc {
                            0..=150 => 0,
                            151..=1800 => 7_120,
                            _ => 11_230,
                        };
                        me().set("plate_no", v.plate_no.clone())
                            .set("vehicle_type", v.car_type)
                            .set("engine_cc", v.cc)
                            .set("tax_amount", tax)
                            .set("paid_amount", tax)
                            .set("payment_status", if tax == 0 { "免稅" } else { "已繳納" })
                            .set("tax_year", i64::from(today.year()))
                            .set("owner_id", p.id.as_str())
                    })
                    .collect()
            }
            11 => {
                let mut rows = Vec::new();
                let year = i64::from(today.year() - 1);
                if let Some(re) = &p.real_estate {
                    let land = re.announced_land_value * u64::from(re.land_area_sqm);
                    rows.push((
                        "土地",
                        re.address.postal(),
                        re.land_area_sqm,
                        re.acquired,
                        land,
                    ));
                    rows.push((
                        "房屋",
                        re.address.postal(),
                        re.building_area_sqm,
                        re.acquired,
                        re.price / 4,
                    ));
                }
                for v in &p.vehicles {
                    let kind = if v.is_motorcycle() {
                        "機車"
                    } else {
                        "汽車"
                    };
                    rows.push((kind, v.plate_no.clone(), 1, v.registered, 0));
                }
                let total: u64 = rows.iter().map(|r| r.4).sum();
                rows.into_iter()
                    .map(|(kind, location, qty, acquired, value)| {
                        me().set("data_year", year)
                            .set("property_category", kind)
                            .set("property_location", location)
                            .set("area_or_quantity", V::N(f64::from(qty)))
                            .set("holding_share", "1/1")
                            .set("acquisition_date", acquired)
                            .set("acquisition_reason", "買賣")
                            .set("property_value", value)
                            .set("total_value", total)
                    })
                    .collect()
            }
            12 => {
                let lines = self.income_lines(p);
                let total: u64 = lines.iter().map(|l| l.gross).sum();
                lines
                    .into_iter()
                    .map(|l| {
                        me().set("income_year", i64::from(today.year() - 1))
                            .set("id_type", "身分證")
                            .set("income_category", l.category)
                            .set("format_code", l.format_code)
                            .set("payer_ban", l.payer_ban)
                            .set("payer_name", l.payer_name)
                            .set("gross_amount", l.gross)
                            .set("withholding_tax", l.withheld)
                            .set("deductible_tax", 0u64)
                            .set("total_gross_amount", total)
                    })
                    .collect()
            }
            13 | 21 => p.real_estate.as_ref().map_or_else(Vec::new, |re| {
                let assessed = re.price / 5;
                let tax = if no == 13 {
                    assessed * 12 / 1000
                } else {
                    re.announced_land_value * u64::from(re.land_area_sqm) * 2 / 1000
                };
                vec![
                    me().set("house_tax_no", re.house_tax_no.clone())
                        .set("house_location", re.address.full())
                        .set("tax_no", re.house_tax_no.clone())
                        .set(
                            "land_location",
                            format!("{}{}{}地號", re.address.town, re.section, re.land_no),
                        )
                        .set("land_area", V::N(f64::from(re.land_area_sqm)))
                        .set("holding_share", "1/1")
                        .set(
                            "assessed_land_value",
                            re.announced_land_value * u64::from(re.land_area_sqm),
                        )
                        .set("tax_year", i64::from(today.year()))
                        .set("use_type", "自住")
                        .set("tax_rate_type", "自用住宅用地")
                        .set("assessed_value", assessed)
                        .set("tax_rate", V::N(1.2))
                        .set("tax_amount", tax)
                        .set("paid_amount", tax)
                        .set("payment_status", "已繳納"),
                ]
            }),
            14 | 17 | 18 | 19 | 20 => {
                let unit = self.filing_unit(p);
                let gross: u64 = unit
                    .iter()
                    .map(|&i| self.person(i).map_or(0, |m| self.income_total(m)))
                    .sum();
                if gross == 0 || !adult {
                    return Vec::new();
                }
                let t = tax_of(gross, unit.len());
                let year = i64::from(today.year() - 1);
                let base = me()
                    .set("tax_year", year)
                    .set("gross_income", gross)
                    .set("net_income", t.net)
                    .set("tax_payable", t.payable)
                    .set("spouse_name", name_of(p.spouse).unwrap_or_default())
                    .set(
                        "dependents_count",
                        (unit
                            .len()
                            .saturating_sub(1 + usize::from(p.spouse.is_some())))
                            as u64,
                    )
                    .set("withholding_credit", t.withheld)
                    .set("self_paid_tax", t.payable.saturating_sub(t.withheld))
                    .set("refund_amount", t.withheld.saturating_sub(t.payable));
                match no {
                    14 => vec![
                        base.set("tax_item", "綜合所得稅")
                            .set(
                                "record_type",
                                if t.withheld > t.payable {
                                    "退稅"
                                } else {
                                    "繳納"
                                },
                            )
                            .set("assessed_tax", t.payable)
                            .set("paid_amount", t.payable.saturating_sub(t.withheld))
                            .set("outstanding_amount", 0u64),
                    ],
                    18 => unit
                        .iter()
                        .filter_map(|&i| self.person(i))
                        .map(|m| {
                            let rel = if m.index == p.index {
                                "納稅義務人"
                            } else if Some(m.index) == p.spouse {
                                "配偶"
                            } else {
                                "受扶養子女"
                            };
                            base.clone()
                                .set("member_relationship", rel)
                                .set("member_name", m.name.clone())
                                .set("member_id", m.id.masked())
                                .set("exemption_amount", 97_000u64)
                                .set("deduction_type", "標準扣除額")
                        })
                        .collect(),
                    19 | 20 => vec![
                        base.set("has_violation", false)
                            .set("has_arrears", false)
                            .set("arrears_amount", 0u64),
                    ],
                    _ => vec![base],
                }
            }
            15 | 16 => {
                if !adult || !self.chance(p, 15, 60) {
                    return Vec::new();
                }
                let card = format!(
                    "/{}",
                    p.id.as_str().chars().skip(3).take(7).collect::<String>()
                );
                (1..=3)
                    .map(|n| {
                        me().set("card_type", "3J0002")
                            .set("card_no", card.clone())
                            .set("row_num", n as u32)
                            .set(
                                "inv_num",
                                format!("AB{:08}", rng.random_range(0..100_000_000)),
                            )
                    })
                    .collect()
            }
            22 => pop
                .offices_of(p.index)
                .into_iter()
                .map(|(c, rep)| {
                    officer_row(c, p.index, if rep { "董事長" } else { "董事" }, rep, today)
                })
                .collect(),
            33 | 35 => one(p.role == Role::Head && adult && hh.is_some())
                .into_iter()
                .map(|r| r.set("service_address", p.address.full()))
                .collect(),
            36 => one(p.role == Role::Head && p.address.county == "新竹縣"),
            34 => one(opt(5, adult)),
            38 => p
                .vehicles
                .iter()
                .map(|v| {
                    me().set("plate_no", v.plate_no.clone())
                        .set("car_type", v.car_type)
                        .set("brand_name", v.brand)
                        .set("model_name", v.model)
                        .set("body_no", v.body_no.clone())
                        .set("cc", v.cc)
                        .set("color_name", v.color)
                        .set("lic_effect_dt", v.registered)
                        .set("last_print_lic_dt", v.registered)
                        .set("next_exam_dt", today.add_days(rng.random_range(30..365)))
                        .set("perm_addr", p.address.full())
                        .set("txn_name", "新領牌照")
                })
                .collect(),
            39 => one(adult && (!p.vehicles.is_empty() || self.chance(p, no, 60)))
                .into_iter()
                .map(|r| {
                    let moto =
                        p.vehicles.iter().all(|v| v.is_motorcycle()) && !p.vehicles.is_empty();
                    r.set(
                        "license_type",
                        if moto {
                            "普通重型機車"
                        } else {
                            "普通小型車"
                        },
                    )
                    .set("license_status", "正常")
                    .set("penalty_points", 0u32)
                    .set("registered_address", p.address.full())
                })
                .collect(),
            43 => {
                if p.savings == 0 {
                    return Vec::new();
                }
                let start = today.add_days(-90);
                let deposit = p.savings / 10;
                let mut balance = p.savings - deposit;
                let mut rows = vec![
                    me().set("transaction_date", start.add_days(5))
                        .set("summary", "存入")
                        .set("deposit_amount", deposit)
                        .set("withdrawal_amount", 0u64),
                ];
                balance += deposit;
                rows[0].vals.insert("balance", balance.into());
                let interest = balance / 1000;
                balance += interest;
                rows.push(
                    me().set("transaction_date", start.add_days(60))
                        .set("summary", "利息")
                        .set("deposit_amount", interest)
                        .set("withdrawal_amount", 0u64)
                        .set("balance", balance),
                );
                rows.into_iter()
                    .map(|r| {
                        r.set("query_start_date", start)
                            .set("query_end_date", today)
                            .set("total_balance", balance)
                            .set("account_no", format!("700{:011}", p.index * 7919))
                            .set("remark", "")
                    })
                    .collect()
            }
            47 | 50 | 55 => employer.map_or_else(Vec::new, |(e, c)| {
                let insured = insured_salary(e.monthly_wage);
                let years = f64::from(
                    u32::try_from((today.to_days() - e.since.to_days()) / 36).unwrap_or(0),
                ) / 10.0;
                let self_premium = u64::from(insured) * 23 / 1000;
                vec![
                    me().set("insurance_unit_no", c.insurance_unit_no.clone())
                        .set("employer_no", c.insurance_unit_no.clone())
                        .set("employer_name", c.name.clone())
                        .set("insurance_type", "勞工保險普通事故")
                        .set("change_type", if no == 50 { "開始提繳" } else { "加保" })
                        .set("effective_date", e.since)
                        .set("insured_salary", insured)
                        .set("insured_years", V::N(years))
                        .set("query_date", today)
                        .set("monthly_contribution_wage", insured)
                        .set("employer_rate", V::N(6.0))
                        .set("voluntary_rate", V::N(0.0))
                        .set("year_month", today.yyyymm())
                        .set("ordinary_premium_self", self_premium)
                        .set("employment_premium_self", u64::from(insured) * 2 / 1000)
                        .set(
                            "total_self_premium",
                            self_premium + u64::from(insured) * 2 / 1000,
                        )
                        .set(
                            "identity_type",
                            if p.disability.is_some() {
                                "身心障礙"
                            } else {
                                "一般"
                            },
                        ),
                ]
            }),
            48 => one(age >= 65 && !p.is_foreign() && p.index.is_multiple_of(2)),
            49 => {
                let kind = if age >= 65 {
                    Some("老年年金")
                } else if p.disability.is_some() && p.employment.is_none() && adult {
                    Some("身心障礙年金")
                } else {
                    None
                };
                kind.map_or_else(Vec::new, |k| {
                    (1..=3)
                        .map(|m| {
                            let month = today.add_days(-30 * m);
                            me().set("gv_idn", p.id.as_str())
                                .set("gv_name", p.name.clone())
                                .set("ap_dte", today.add_days(-400))
                                .set("pay_kind", k)
                                .set("pay_ym", month.yyyymm())
                                .set("issue_amt", 4_049u64)
                                .set("status", "已核付")
                        })
                        .collect()
                })
            }
            51 | 53 => one(opt(20, employer.is_some())),
            52 => match (&p.disability, employer) {
                (Some(d), Some((e, c))) => {
                    let ratio = match d.level.label() {
                        "輕度" => 25,
                        "中度" => 50,
                        _ => 100,
                    };
                    let insured = insured_salary(e.monthly_wage);
                    let premium = u64::from(insured) * 23 / 1000;
                    vec![
                        me().set("disability_level", d.level.label())
                            .set("subsidy_ratio", format!("{ratio}%"))
                            .set("subsidy_month", today.yyyymm())
                            .set("employer_name", c.name.clone())
                            .set("insured_salary", insured)
                            .set("self_premium", premium)
                            .set("subsidy_amount", premium * ratio / 100),
                    ]
                }
                _ => Vec::new(),
            },
            54 => one(age >= 65 && p.farmer)
                .into_iter()
                .map(|r| {
                    r.set("farmers_association", format!("{}農會", p.address.town))
                        .set("monthly_amount", 8_110u64)
                        .set("payment_status", "發放中")
                })
                .collect(),
            56 => one(opt(30, age >= 60 && !p.is_foreign())),
            57 | 58 => {
                let (category, identity, principal, unit) =
                    match (employer, pop.welfare_of(p.index)) {
                        (_, Welfare::LowIncome) => (
                            "第5類",
                            "本人",
                            p.name.clone(),
                            format!("{}{}公所", p.address.county, p.address.town),
                        ),
                        (Some((_, c)), _) => ("第1類", "本人", p.name.clone(), c.name.clone()),
                        (None, _) => {
                            let earner = hh.and_then(|h| {
                                h.members
                                    .iter()
                                    .filter_map(|&m| self.person(m))
                                    .find(|m| m.employment.is_some() && m.index != p.index)
                            });
                            match earner.and_then(|m| {
                                m.employment
                                    .as_ref()
                                    .and_then(|e| pop.company(e.company))
                                    .map(|c| (m, c))
                            }) {
                                Some((m, c)) => ("第1類", "眷屬", m.name.clone(), c.name.clone()),
                                None => (
                                    "第6類",
                                    "本人",
                                    p.name.clone(),
                                    format!("{}{}公所", p.address.county, p.address.town),
                                ),
                            }
                        }
                    };
                vec![
                    me().set("insured_category", category)
                        .set("insured_identity", identity)
                        .set("principal_name", principal)
                        .set("insurer_unit", unit)
                        .set("change_type", "加保")
                        .set("withdraw_date", "")
                        .set("billing_year_month", today.yyyymm())
                        .set("arrears_amount", 0u64)
                        .set("payment_status", "已繳"),
                ]
            }
            59 => {
                let Some(h) = hh.filter(|h| h.welfare != Welfare::None) else {
                    return Vec::new();
                };
                let title = if h.welfare == Welfare::LowIncome {
                    "低收入戶"
                } else {
                    "中低收入戶"
                };
                let kind = if h.address.county == "臺北市" {
                    "2類"
                } else {
                    "第2款"
                };
                let head = self.person(h.head);
                h.members
                    .iter()
                    .filter_map(|&m| self.person(m))
                    .map(|m| {
                        Row::about(p.index)
                            .set("cname", head.map(|x| x.name.clone()).unwrap_or_default())
                            .set("lic_title", title)
                            .set("low_type", kind)
                            .set(
                                "app_no",
                                format!("{}{:06}", h.welfare_approved.roc_year(), h.index * 37),
                            )
                            .set("chk_date", h.welfare_approved)
                            .set(
                                "until_date",
                                Date::new(today.year(), 12, 31).unwrap_or(today),
                            )
                            .set("cityname", h.address.county.clone())
                            .set("townname", h.address.town.clone())
                            .set("addr", h.address.full())
                            .set("risaddr", h.address.full())
                            .set("member_position", relationship(pop, m))
                            .set("member_name", m.name.clone())
                            .set("member_id_no", m.id.masked())
                            .set("member_birthday", m.birth_date)
                            .set(
                                "member_sys_subsidy",
                                format!(
                                    "{}~{} {}",
                                    h.welfare_approved.roc_short_slash(),
                                    today.roc_year(),
                                    kind
                                ),
                            )
                    })
                    .collect()
            }
            63 => p.disability.as_ref().map_or_else(Vec::new, |d| {
                vec![
                    me().set("disability_category", d.category)
                        .set("legacy_category", "")
                        .set("disability_level", d.level.label())
                        .set("assessment_date", d.assessed)
                        .set("reassessment_date", d.assessed.add_years(5))
                        .set("issue_date", d.assessed.add_days(30))
                        .set("certificate_status", "有效"),
                ]
            }),
            64 => {
                let severe = p
                    .disability
                    .as_ref()
                    .is_some_and(|d| d.level.label() == "重度" || d.level.label() == "極重度");
                let (identity, copay) = match pop.welfare_of(p.index) {
                    Welfare::LowIncome => ("低收入戶", "0%"),
                    Welfare::MiddleLowIncome => ("中低收入戶", "5%"),
                    Welfare::None => ("一般戶", "16%"),
                };
                one(age >= 75 || severe)
                    .into_iter()
                    .map(|r| r.set("welfare_identity", identity).set("copay_rate", copay))
                    .collect()
            }
            65 => (1..=2)
                .map(|n| {
                    me().set("dose_no", n as u32)
                        .set("vaccine_name", "COVID-19 Moderna")
                })
                .collect(),
            81 | 89 => p.veteran.as_ref().map_or_else(Vec::new, |v| {
                vec![
                    me().set("card_no", v.card_no.clone())
                        .set("service_branch", v.branch)
                        .set("discharge_rank", v.rank)
                        .set("discharge_date", v.discharged)
                        .set("start_date", v.discharged)
                        .set("status", if no == 81 { "有效" } else { "支領中" }),
                ]
            }),
            84 => one(p.veteran.is_some() && age >= 85),
            90 => one(p.veteran.is_some() && p.index.is_multiple_of(2)),
            82 => one(opt(
                30,
                p.sex == Sex::Female && age >= 65 && p.spouse.is_none(),
            )),
            83 => one(opt(8, p.sex == Sex::Male && (40..65).contains(&age))),
            85 | 88 => {
                let vet = [p.father, p.mother, p.spouse]
                    .into_iter()
                    .flatten()
                    .filter_map(|i| self.person(i))
                    .find(|x| x.veteran.is_some());
                vet.map_or_else(Vec::new, |v| {
                    let rel = if Some(v.index) == p.spouse {
                        "配偶"
                    } else {
                        "子女"
                    };
                    if no == 85 && !(6..23).contains(&age) {
                        return Vec::new();
                    }
                    vec![
                        me().set("veteran_name", v.name.clone())
                            .set("veteran_id", v.id.as_str())
                            .set("relationship", rel),
                    ]
                })
            }
            91 => one(!p.is_foreign() && self.chance(p, no, 60))
                .into_iter()
                .map(|r| {
                    r.set("name_en", format!("SIM, PERSON{:04}", p.index))
                        .set("place_of_birth", p.address.county.clone())
                })
                .collect(),
            92 => one((15..=26).contains(&age) && !p.is_foreign())
                .into_iter()
                .map(|r| {
                    let change_year = p.birth_date.roc_year() + 18;
                    let graduated = age >= 19;
                    r.set("query_result", "是")
                        .set("change_academic_year", i64::from(change_year))
                        .set("school_name", format!("{}立高級中學", p.address.county))
                        .set("department", "普通科")
                        .set("enrollment_status", if graduated { "畢業" } else { "在學" })
                })
                .collect(),
            // Licences, permits, grants and other records only some people hold.
            6 | 7 | 44 | 60 | 105 => one(opt(15, adult || no == 105)),
            23..=32 | 41 | 42 | 45 | 46 | 61 | 62 | 66..=80 | 86 | 87 | 93..=104 => {
                one(opt(4, adult && !p.is_foreign()))
            }
            _ => one(adult),
        }
    }

    /// The #12 lines of a person's income for last year.
    fn income_lines(&self, p: &Person) -> Vec<IncomeLine> {
        let mut lines = Vec::new();
        if let Some((e, c)) = p
            .employment
            .as_ref()
            .and_then(|e| self.pop.company(e.company).map(|c| (e, c)))
        {
            let gross = u64::from(e.monthly_wage) * 13; // 12 months plus a year-end bonus.
            lines.push(IncomeLine {
                category: "薪資",
                format_code: "50",
                payer_ban: c.ban.as_str().to_owned(),
                payer_name: c.name.clone(),
                gross,
                withheld: gross * 5 / 100,
            });
        }
        let interest = p.savings / 100;
        if interest > 0 {
            lines.push(IncomeLine {
                category: "利息",
                format_code: "5A",
                payer_ban: "03700301".to_owned(),
                payer_name: "中華郵政股份有限公司".to_owned(),
                gross: interest,
                withheld: 0,
            });
        }
        lines
    }

    fn income_total(&self, p: &Person) -> u64 {
        self.income_lines(p).iter().map(|l| l.gross).sum()
    }

    /// The filing household: the person, the spouse and minor children.
    fn filing_unit(&self, p: &Person) -> Vec<usize> {
        let today = self.today();
        let mut unit = vec![p.index];
        unit.extend(p.spouse);
        unit.extend(
            p.children
                .iter()
                .copied()
                .filter(|&c| self.person(c).is_some_and(|x| x.age_on(today) < 18)),
        );
        unit
    }

    /// The yearly income sum a household's members report in #12 (for welfare checks in tests).
    pub fn household_income(&self, household: usize) -> u64 {
        self.pop.household(household).map_or(0, |h| {
            h.members
                .iter()
                .filter_map(|&m| self.person(m))
                .map(|m| self.income_total(m))
                .sum()
        })
    }
}

struct IncomeLine {
    category: &'static str,
    format_code: &'static str,
    payer_ban: String,
    payer_name: String,
    gross: u64,
    withheld: u64,
}

struct Tax {
    net: u64,
    payable: u64,
    withheld: u64,
}

/// A simplified 綜所稅: exemptions and the standard deduction per person, then the 5%-12% brackets.
fn tax_of(gross: u64, members: usize) -> Tax {
    let allowance = (97_000 + 131_000) * members as u64;
    let net = gross.saturating_sub(allowance);
    let payable = if net <= 590_000 {
        net * 5 / 100
    } else {
        net * 12 / 100 - 41_300
    };
    Tax {
        net,
        payable,
        withheld: gross * 5 / 100 * 9 / 10,
    }
}

/// The 勞保 insured salary: the wage floored to a hundred, capped at the top bracket.
fn insured_salary(wage: u32) -> u32 {
    (wage / 100 * 100).min(INSURED_SALARY_CAP)
}

fn officer_row(c: &Company, person: usize, title: &'static str, rep: bool, today: Date) -> Row {
    Row::about(person)
        .set("ban_no", c.ban.as_str())
        .set("cmpy_name", c.name.clone())
        .set("cmpy_status", "核准設立")
        .set("org_type", c.org_type)
        .set("cmpy_add", c.address.postal())
        .set("invest_amt", c.capital)
        .set("estab_app_date", c.established)
        .set("chg_app_date", c.established.add_days(200))
        .set("pos_name", title)
        .set("cmpy_rep", rep)
        .set("corp_rep", false)
        .set("dtr_beg_date", today.add_days(-400))
        .set("dtr_end_date", today.add_days(-400).add_years(3))
}

fn marriage(p: &Person) -> &'static str {
    if p.spouse.is_some() {
        "有偶"
    } else {
        "未婚"
    }
}

/// 稱謂 relative to the head; children by birth order (長子, 次女, …) as 出生別 in #1.
fn relationship(pop: &Population, p: &Person) -> String {
    match (p.role, p.sex) {
        (Role::Head, _) => "戶長".to_owned(),
        (Role::Spouse, Sex::Female) => "妻".to_owned(),
        (Role::Spouse, Sex::Male) => "夫".to_owned(),
        (Role::Child, _) => birth_order(pop, p).replace('男', "子"),
        (Role::Parent, Sex::Male) => "父".to_owned(),
        (Role::Parent, Sex::Female) => "母".to_owned(),
    }
}

/// 出生別: 長男, 次女, … by birth order among the same parents' children of the same sex.
fn birth_order(pop: &Population, p: &Person) -> String {
    let siblings: Vec<&Person> = p
        .father
        .or(p.mother)
        .and_then(|par| pop.person(par))
        .map(|par| {
            par.children
                .iter()
                .filter_map(|&c| pop.person(c))
                .filter(|c| c.sex == p.sex)
                .collect()
        })
        .unwrap_or_default();
    let older = siblings
        .iter()
        .filter(|s| s.birth_date < p.birth_date)
        .count();
    let rank = ["長", "次", "三", "四", "五"]
        .get(older)
        .copied()
        .unwrap_or("么");
    let sex = if p.sex == Sex::Male { "男" } else { "女" };
    format!("{rank}{sex}")
}

fn military(p: &Person, age: i32) -> &'static str {
    match (p.sex, &p.veteran) {
        (Sex::Male, Some(_)) => "常備兵役",
        (Sex::Male, None) if age >= 20 => "已服役",
        _ => "",
    }
}

/// Plausible text for a string field whose meaning the model does not decide.
fn string_default(key: &str, label: &str, today: Date, rng: &mut ChaCha20Rng) -> V {
    if key.ends_with("_no") || key.ends_with("_number") || key == "call_sign" || key == "mmsi" {
        return format!(
            "{}{}{:06}",
            char::from(b'A' + rng.random_range(0..26u8)),
            today.roc_year(),
            rng.random_range(0..1_000_000)
        )
        .into();
    }
    if key.contains("month") || key.ends_with("_period") {
        return today.add_days(-rng.random_range(0..365)).yyyymm().into();
    }
    let stem = label
        .split(['(', '（'])
        .next()
        .unwrap_or(label)
        .trim_end_matches("名稱");
    format!("{stem}{}", rng.random_range(1..100)).into()
}

fn to_json(v: V, style: DateStyle, key: &str) -> Value {
    match v {
        V::S(s) => Value::String(s),
        V::D(d) => Value::String(fmt_date(d, style, key)),
        V::I(n) => json!(n),
        V::N(x) => json!(x),
        V::B(b) => json!(b),
        V::Null => Value::Null,
    }
}

fn object(row: &[(&Field, Value)], rename: impl Fn(&str) -> String) -> Map<String, Value> {
    row.iter()
        .map(|(f, v)| (rename(&f.key), v.clone()))
        .collect()
}

fn camel(key: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for ch in key.chars() {
        if ch == '_' {
            up = true;
        } else if up {
            out.extend(ch.to_uppercase());
            up = false;
        } else {
            out.push(ch);
        }
    }
    out
}

fn pascal(key: &str) -> String {
    let c = camel(key);
    let mut chars = c.chars();
    chars
        .next()
        .map(|f| f.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// 戶政's structured address from a one-line 縣市鄉鎮市區村里鄰路街門牌 string.
fn household_address(full: &Value) -> Value {
    let s = full.as_str().unwrap_or_default();
    // Split at 里 (village end) and 鄰 (neighbourhood end); the model always writes both.
    let (site_village, rest) = s.split_once('鄰').unwrap_or((s, ""));
    let (site_and_village, neighbor) = site_village
        .char_indices()
        .rev()
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or((site_village, ""), |(i, c)| {
            site_village.split_at(i + c.len_utf8())
        });
    // The town ends with its last 區/市/鎮/鄉; village names never contain those.
    let (site, village) = site_and_village
        .char_indices()
        .filter(|(_, c)| matches!(c, '區' | '市' | '鎮' | '鄉'))
        .map(|(i, c)| i + c.len_utf8())
        .next_back()
        .map_or((site_and_village, ""), |i| site_and_village.split_at(i));
    json!({
        "from_site_id": site,
        "village": village,
        "neighbor": neighbor,
        "neighbor_char": "鄰",
        "street_doorplate": rest,
    })
}

/// The agency's response shape for dataset `no`.
fn shape(no: u32, rows: &[Vec<(&Field, Value)>], subject: Subject<'_>) -> Value {
    let first = rows.first();
    match no {
        1 => match first {
            Some(row) => {
                let mut obj = object(row, str::to_owned);
                if let Some(addr) = obj.remove("household_address") {
                    obj.insert("householdAddress".into(), household_address(&addr));
                }
                json!({"httpCode": "200", "httpMessage": "OK", "rdCode": "RS7009", "rdMessage": "查詢作業完成",
                       "responseData": {"personHouseholdData12": obj}})
            }
            None => no_household_record(),
        },
        2 => match first {
            Some(row) => {
                const BASIC: [&str; 4] = [
                    "household_id",
                    "household_head_id",
                    "household_address",
                    "household_register_content",
                ];
                let members: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        Value::Object(
                            r.iter()
                                .filter(|(f, _)| !BASIC.contains(&f.key.as_str()))
                                .map(|(f, v)| (f.key.clone(), v.clone()))
                                .collect(),
                        )
                    })
                    .collect();
                let get = |k: &str| {
                    row.iter()
                        .find(|(f, _)| f.key == k)
                        .map_or(Value::Null, |(_, v)| v.clone())
                };
                let head_id = get("household_head_id");
                let head_name = rows
                    .iter()
                    .find(|r| r.iter().any(|(f, v)| f.key == "person_id" && *v == head_id))
                    .and_then(|r| r.iter().find(|(f, _)| f.key == "person_name"))
                    .map_or(Value::Null, |(_, v)| v.clone());
                json!({"httpCode": "200", "httpMessage": "OK", "rdCode": "RS7009", "rdMessage": "查詢作業完成",
                "responseData": {
                    "personHouseholdData21": members,
                    "householdBasicData21": {
                        "household_head_name": head_name,
                        "household_head_id": head_id,
                        "household_id": get("household_id"),
                        "household_register_content": [get("household_register_content")],
                        "householdAddress": household_address(&get("household_address")),
                    }}})
            }
            None => no_household_record(),
        },
        3 => {
            let grades: Vec<Value> = rows
                .iter()
                .map(|r| {
                    Value::Object(
                        r.iter()
                            .filter(|(f, _)| {
                                !f.key.starts_with("name_change") && !f.key.starts_with("id_change")
                            })
                            .map(|(f, v)| (pascal(&f.key), v.clone()))
                            .collect(),
                    )
                })
                .collect();
            json!({"RelationGradeData": grades, "SelfFullPersonNameChangeRecord": [], "SelfPersonIdChangeRecord": Value::Null})
        }
        22 => Value::Array(
            rows.iter()
                .map(|r| Value::Object(object(r, str::to_uppercase)))
                .collect(),
        ),
        38 => Value::Array(
            rows.iter()
                .map(|r| Value::Object(object(r, camel)))
                .collect(),
        ),
        49 => {
            let rename = |k: &str| {
                match k {
                    "idn" => "IDN",
                    "gv_idn" => "gvIdn",
                    "gv_name" => "gvname",
                    "ap_dte" => "apDte",
                    "pay_kind" => "payKind",
                    "pay_ym" => "payYM",
                    "issue_amt" => "issueAmt",
                    other => other,
                }
                .to_owned()
            };
            let data: Vec<Value> = rows
                .iter()
                .map(|r| Value::Object(object(r, rename)))
                .collect();
            let (code, msg) = if data.is_empty() {
                ("0001", "查無資料")
            } else {
                ("0000", "查詢成功")
            };
            json!({"httpCode": "200", "httpMessage": "OK", "returnCode": code, "returnMessage": msg, "returnData": data})
        }
        59 => match first {
            Some(row) => {
                let mut top: Map<String, Value> = row
                    .iter()
                    .filter(|(f, _)| !f.key.starts_with("member_"))
                    .map(|(f, v)| (f.key.clone(), v.clone()))
                    .collect();
                let chk = top.get("chk_date").cloned().unwrap_or(Value::Null);
                top.insert("app_date".into(), chk.clone());
                top.insert(
                    "doc_no_s".into(),
                    top.get("app_no").cloned().unwrap_or(Value::Null),
                );
                top.insert("doc_no_date".into(), chk);
                top.insert("cipher_str".into(), Value::String(String::new()));
                let fam: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        let get = |k: &str| {
                            r.iter()
                                .find(|(f, _)| f.key == k)
                                .map_or(Value::Null, |(_, v)| v.clone())
                        };
                        json!({"position": get("member_position"), "cnameh": get("member_name"),
                               "id_no": get("member_id_no"), "birthday": get("member_birthday"),
                               "sys_subsidy": get("member_sys_subsidy")})
                    })
                    .collect();
                top.insert("lowtypefam".into(), Value::Array(fam));
                Value::Object(top)
            }
            // 社會司 answers a non-listed person with an empty status, not an error.
            None => {
                json!({"lic_title": "", "lowtypefam": [], "message": "查無低收入戶或中低收入戶列冊資料"})
            }
        },
        _ => {
            let records: Vec<Value> = rows
                .iter()
                .map(|r| Value::Object(object(r, str::to_owned)))
                .collect();
            let found = !records.is_empty();
            let mut out = json!({
                "query_result": if found { "有資料" } else { "查無資料" },
                "records": records,
            });
            if let (Subject::Company(c), Some(obj)) = (subject, out.as_object_mut()) {
                obj.insert("ban_no".into(), Value::String(c.ban.as_str().to_owned()));
            }
            out
        }
    }
}

/// 戶政's answer when it holds no register for the person (e.g. a foreign resident).
fn no_household_record() -> Value {
    json!({"httpCode": "200", "httpMessage": "OK", "rdCode": "RS7010", "rdMessage": "查無戶籍資料", "responseData": {}})
}

/// A value as one table cell: strings as they are, null empty, numbers and booleans as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn to_csv(fields: &[Field], rows: &[Vec<(&Field, Value)>]) -> Result<String, ContentError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: &dyn std::fmt::Display| ContentError::Csv(e.to_string());
    w.write_record(fields.iter().map(|f| f.label_zh.as_str()))
        .map_err(|e| err(&e))?;
    for row in rows {
        w.write_record(row.iter().map(|(_, v)| cell(v)))
            .map_err(|e| err(&e))?;
    }
    let bytes = w.into_inner().map_err(|e| err(&e))?;
    String::from_utf8(bytes).map_err(|e| err(&e))
}
