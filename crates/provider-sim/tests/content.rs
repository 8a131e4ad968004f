//! Dataset content: every dataset renders for sample persons, CSV parses, data agree across datasets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::catalog::{Catalog, Dataset};
use mydata_core::identity::IdentityMethod;
use mydata_provider_sim::content::{ContentError, Generator, Outcome, Subject};
use mydata_provider_sim::population::Welfare;
use mydata_provider_sim::{Date, Person, Population};
use serde_json::Value;

fn setup() -> (Population, Catalog) {
    (
        Population::generate(42, Date::new(2026, 11, 1).unwrap()),
        Catalog::embedded().unwrap(),
    )
}

fn ds(catalog: &Catalog, no: u32) -> &Dataset {
    catalog.datasets().iter().find(|d| d.no == no).unwrap()
}

fn render(g: &Generator<'_>, catalog: &Catalog, p: &Person, no: u32) -> (Outcome, Value) {
    let c = g.render(Subject::Person(p), ds(catalog, no)).unwrap();
    (c.outcome, c.json)
}

/// A sample: the first persons, a foreign resident, and members of welfare households.
fn sample(pop: &Population) -> Vec<&Person> {
    let mut out: Vec<&Person> = pop.persons().iter().step_by(23).collect();
    out.extend(pop.persons().iter().find(|p| p.is_foreign()));
    out.extend(
        pop.persons()
            .iter()
            .find(|p| pop.welfare_of(p.index) != Welfare::None),
    );
    out.extend(pop.persons().iter().find(|p| p.disability.is_some()));
    out.extend(pop.persons().iter().find(|p| p.veteran.is_some()));
    out
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    r.records()
        .map(|x| x.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

#[test]
fn every_dataset_renders_for_a_sample() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    assert_eq!(catalog.datasets().len(), 105);
    let mut found = std::collections::HashMap::new();
    for d in catalog.datasets() {
        for p in sample(&pop) {
            let c = g.render(Subject::Person(p), d).unwrap();
            assert_eq!(c.dataset_no, d.no);
            // Valid JSON that round-trips through text.
            let text = serde_json::to_string(&c.json).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), c.json);
            assert!(c.json.is_object() || c.json.is_array(), "dataset {}", d.no);
            // CSV exactly when offered; a header row of the field labels, then equal-width rows.
            assert_eq!(
                c.csv.is_some(),
                d.offers(mydata_core::catalog::DataFormat::Csv)
            );
            if let Some(csv) = &c.csv {
                let rows = csv_rows(csv);
                assert!(!rows.is_empty());
                assert!(rows.iter().all(|r| r.len() == rows[0].len()));
                assert_eq!(rows.len() == 1, c.outcome == Outcome::NoRecord);
            }
            if c.outcome == Outcome::Found {
                *found.entry(d.no).or_insert(0) += 1;
            }
            // Same input, same output.
            assert_eq!(g.render(Subject::Person(p), d).unwrap(), c);
        }
    }
    // Most datasets have someone in the sample with a record (the rest are rare licences).
    assert!(
        found.len() >= 40,
        "only {} datasets had records",
        found.len()
    );
}

#[test]
fn no_record_is_an_answer_not_an_error() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    let carless = pop
        .persons()
        .iter()
        .find(|p| p.vehicles.is_empty())
        .unwrap();
    let (o, j) = render(&g, &catalog, carless, 38);
    assert_eq!(o, Outcome::NoRecord);
    assert_eq!(j, Value::Array(vec![]));
    let not_poor = pop
        .persons()
        .iter()
        .find(|p| pop.welfare_of(p.index) == Welfare::None)
        .unwrap();
    let (o, j) = render(&g, &catalog, not_poor, 59);
    assert_eq!(o, Outcome::NoRecord);
    assert_eq!(j["lowtypefam"], Value::Array(vec![]));
    let foreign = pop.persons().iter().find(|p| p.is_foreign()).unwrap();
    let (o, j) = render(&g, &catalog, foreign, 1);
    assert_eq!(o, Outcome::NoRecord);
    assert_eq!(j["httpCode"], "200");
    let healthy = pop
        .persons()
        .iter()
        .find(|p| p.disability.is_none())
        .unwrap();
    let (o, j) = render(&g, &catalog, healthy, 63);
    assert_eq!(o, Outcome::NoRecord);
    assert_eq!(j["query_result"], "查無資料");
}

#[test]
fn identity_agrees_across_datasets() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    let mut checked_59 = 0;
    let mut checked_38 = 0;
    for p in pop.persons().iter().filter(|p| !p.is_foreign()) {
        let (_, one) = render(&g, &catalog, p, 1);
        let d12 = &one["responseData"]["personHouseholdData12"];
        assert_eq!(d12["person_id"], p.id.as_str());
        assert_eq!(d12["person_name"], p.name.as_str());
        assert_eq!(d12["birth_yyymmdd"], p.birth_date.roc7());
        let h = pop.household_of(p).unwrap();
        assert_eq!(
            d12["household_head_id"],
            pop.person(h.head).unwrap().id.as_str()
        );
        assert_eq!(
            d12["householdAddress"]["village"],
            h.address.village.as_str()
        );
        assert_eq!(
            d12["householdAddress"]["from_site_id"],
            format!("{}{}", h.address.county, h.address.town)
        );
        assert_eq!(d12["marriage_code"] == "有偶", p.spouse.is_some());

        let (_, two) = render(&g, &catalog, p, 2);
        let members = two["responseData"]["personHouseholdData21"]
            .as_array()
            .unwrap();
        let me = members
            .iter()
            .find(|m| m["person_id"] == p.id.as_str())
            .unwrap();
        assert_eq!(me["person_name"], p.name.as_str());
        assert_eq!(me["birth_yyymmdd"], d12["birth_yyymmdd"]);
        assert_eq!(members.len(), h.members.len());
        // 稱謂 of a child in #2 agrees with 出生別 in #1 (長男 → 長子) and with the ID's sex digit.
        if p.role == mydata_provider_sim::population::Role::Child {
            let order = d12["birth_order_sex"].as_str().unwrap();
            assert_eq!(me["relationship"], order.replace('男', "子"));
            let sex_char = if p.id.as_str().as_bytes()[1] == b'1' {
                '男'
            } else {
                '女'
            };
            assert!(order.ends_with(sex_char));
        }
        let basic = &two["responseData"]["householdBasicData21"];
        assert_eq!(basic["household_id"], h.number.as_str());
        assert_eq!(basic["household_head_id"], d12["household_head_id"]);
        assert_eq!(basic["householdAddress"], d12["householdAddress"]);

        let (o59, j59) = render(&g, &catalog, p, 59);
        if o59 == Outcome::Found {
            checked_59 += 1;
            let fam = j59["lowtypefam"].as_array().unwrap();
            let mine = fam.iter().find(|m| m["id_no"] == p.id.masked()).unwrap();
            assert_eq!(mine["cnameh"], p.name.as_str());
            assert_eq!(mine["birthday"], p.birth_date.roc_short_slash());
            assert_eq!(j59["risaddr"], h.address.full());
        }
        let (o38, j38) = render(&g, &catalog, p, 38);
        if o38 == Outcome::Found {
            checked_38 += 1;
            for car in j38.as_array().unwrap() {
                assert_eq!(car["ownerId"], p.id.as_str());
                assert_eq!(car["ownerName"], p.name.as_str());
                assert_eq!(car["birthday"], p.birth_date.roc_dash());
                assert_eq!(car["permAddr"], h.address.full());
            }
            // Plates in 10 (tax) are the 38 plates.
            let (_, j10) = render(&g, &catalog, p, 10);
            let plates38: Vec<&Value> = j38
                .as_array()
                .unwrap()
                .iter()
                .map(|c| &c["plateNo"])
                .collect();
            for r in j10["records"].as_array().unwrap() {
                assert!(plates38.contains(&&r["plate_no"]));
            }
        }
    }
    assert!(
        checked_59 >= 6 && checked_38 >= 20,
        "{checked_59} {checked_38}"
    );
}

#[test]
fn welfare_households_appear_whole_in_59() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    for h in pop
        .households()
        .iter()
        .filter(|h| h.welfare != Welfare::None)
    {
        let title = if h.welfare == Welfare::LowIncome {
            "低收入戶"
        } else {
            "中低收入戶"
        };
        // Monthly income per member within the limit for the status (社會救助法 §4, §4-1).
        let limit = if h.welfare == Welfare::LowIncome {
            1.0
        } else {
            1.5
        } * f64::from(h.min_living_cost);
        let per_member = g.household_income(h.index) as f64 / 12.0 / h.members.len() as f64;
        assert!(per_member <= limit, "{per_member} > {limit}");
        let mut seen = None;
        for &m in &h.members {
            let p = pop.person(m).unwrap();
            let (o, j) = render(&g, &catalog, p, 59);
            assert_eq!(o, Outcome::Found);
            assert_eq!(j["lic_title"], title);
            assert_eq!(j["cityname"], h.address.county.as_str());
            let fam: Vec<String> = j["lowtypefam"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id_no"].as_str().unwrap().to_owned())
                .collect();
            let expected: Vec<String> = h
                .members
                .iter()
                .map(|&x| pop.person(x).unwrap().id.masked())
                .collect();
            assert_eq!(fam, expected);
            // Masked like A14****692, and the same list for every member.
            assert!(fam.iter().all(|id| id.len() == 10 && &id[3..7] == "****"));
            if let Some(prev) = &seen {
                assert_eq!(prev, &fam);
            }
            seen = Some(fam);
            // Date format 「107年08月13日」.
            assert!(j["chk_date"].as_str().unwrap().ends_with('日'));
            // #64 copay follows the status.
            let (o64, j64) = render(&g, &catalog, p, 64);
            if o64 == Outcome::Found {
                let copay = if h.welfare == Welfare::LowIncome {
                    "0%"
                } else {
                    "5%"
                };
                assert_eq!(j64["records"][0]["copay_rate"], copay);
            }
        }
    }
}

#[test]
fn disability_appears_in_63_and_related_datasets() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    let mut n = 0;
    for p in pop.persons() {
        let (o, j) = render(&g, &catalog, p, 63);
        assert_eq!(o == Outcome::Found, p.disability.is_some());
        if let Some(d) = &p.disability {
            n += 1;
            let r = &j["records"][0];
            assert_eq!(r["disability_level"], d.level.label());
            assert_eq!(r["disability_category"], d.category);
            assert_eq!(r["id_no"], p.id.as_str());
            let (o52, j52) = render(&g, &catalog, p, 52);
            if o52 == Outcome::Found {
                let ratio = match d.level.label() {
                    "輕度" => "25%",
                    "中度" => "50%",
                    _ => "100%",
                };
                assert_eq!(j52["records"][0]["subsidy_ratio"], ratio);
            }
        }
        // #55 identity_type is 身心障礙 only with a valid #63.
        let (o55, j55) = render(&g, &catalog, p, 55);
        if o55 == Outcome::Found {
            assert_eq!(
                j55["records"][0]["identity_type"] == "身心障礙",
                p.disability.is_some()
            );
        }
        // #49 old-age pension needs 65+, disability pension needs #63.
        let (o49, j49) = render(&g, &catalog, p, 49);
        if o49 == Outcome::Found {
            let kind = j49["returnData"][0]["payKind"].as_str().unwrap();
            assert!(kind != "老年年金" || p.age_on(pop.reference_date()) >= 65);
            assert!(kind != "身心障礙年金" || p.disability.is_some());
            assert_eq!(j49["returnData"][0]["apDte"].as_str().unwrap().len(), 8);
        }
    }
    assert!(n >= 8);
}

#[test]
fn income_tax_and_employment_agree() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    let mut checked = 0;
    for p in pop.persons() {
        let (o12, j12) = render(&g, &catalog, p, 12);
        let lines = j12["records"].as_array().unwrap();
        let sum12: i64 = lines
            .iter()
            .map(|l| l["gross_amount"].as_i64().unwrap())
            .sum();
        if o12 == Outcome::Found {
            assert!(
                lines
                    .iter()
                    .all(|l| l["total_gross_amount"].as_i64() == Some(sum12))
            );
        }
        let (o47, j47) = render(&g, &catalog, p, 47);
        if o47 == Outcome::Found {
            let salary = lines.iter().find(|l| l["format_code"] == "50").unwrap();
            assert_eq!(salary["payer_name"], j47["records"][0]["employer_name"]);
            assert!(
                salary["gross_amount"].as_i64().unwrap()
                    >= 12 * j47["records"][0]["insured_salary"].as_i64().unwrap()
            );
            let (_, j57) = render(&g, &catalog, p, 57);
            assert_eq!(
                j57["records"][0]["insurer_unit"],
                j47["records"][0]["employer_name"]
            );
        }
        // #17 gross income is the sum of #12 over the filing unit (self, spouse, minor children).
        let (o17, j17) = render(&g, &catalog, p, 17);
        if o17 == Outcome::Found {
            checked += 1;
            let mut unit_sum = sum12;
            for other in p.spouse.into_iter().chain(
                p.children
                    .iter()
                    .copied()
                    .filter(|&c| pop.person(c).unwrap().age_on(pop.reference_date()) < 18),
            ) {
                let (_, j) = render(&g, &catalog, pop.person(other).unwrap(), 12);
                unit_sum += j["records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["gross_amount"].as_i64().unwrap())
                    .sum::<i64>();
            }
            assert_eq!(j17["records"][0]["gross_income"].as_i64(), Some(unit_sum));
            let (_, j18) = render(&g, &catalog, p, 18);
            assert!(
                j18["records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r["gross_income"].as_i64() == Some(unit_sum))
            );
        }
        // #11 property rows include every #38 plate.
        let (_, j11) = render(&g, &catalog, p, 11);
        for v in &p.vehicles {
            assert!(
                j11["records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["property_location"] == v.plate_no.as_str())
            );
        }
    }
    assert!(checked >= 50);
}

#[test]
fn csv_dataset_has_header_and_documented_columns() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    let owner = pop
        .persons()
        .iter()
        .find(|p| p.real_estate.is_some())
        .unwrap();
    let c = g.render(Subject::Person(owner), ds(&catalog, 5)).unwrap();
    let rows = csv_rows(c.csv.as_deref().unwrap());
    for col in ["縣市", "鄉鎮市區", "段小段", "建物門牌", "地建號"] {
        assert!(rows[0].iter().any(|h| h == col), "{col}");
    }
    assert_eq!(rows.len(), 3);
    assert!(rows[1..].iter().all(|r| {
        r.iter()
            .any(|x| x == &owner.real_estate.as_ref().unwrap().section)
    }));
}

#[test]
fn companies_get_company_datasets_only() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    let c = &pop.companies()[0];
    for d in catalog.datasets() {
        let r = g.render(Subject::Company(c), d);
        if d.accepts(IdentityMethod::MoeaCert) {
            let content = r.unwrap();
            assert!(content.json.is_object() || content.json.is_array());
        } else {
            assert!(matches!(r, Err(ContentError::NotForCompanies(n)) if n == d.no));
        }
    }
    let j = g
        .render(Subject::Company(c), ds(&catalog, 22))
        .unwrap()
        .json;
    let officers = j.as_array().unwrap();
    assert_eq!(officers[0]["BAN_NO"], c.ban.as_str());
    assert_eq!(
        officers[0]["NAME"],
        pop.person(c.representative).unwrap().name.as_str()
    );
    assert_eq!(officers[0]["ESTAB_APP_DATE"], c.established.roc7());
    // The representative's own #22 lists the company.
    let rep = pop.person(c.representative).unwrap();
    let (_, mine) = render(&g, &catalog, rep, 22);
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .any(|o| o["BAN_NO"] == c.ban.as_str())
    );
}

#[test]
fn different_seeds_give_different_content() {
    let catalog = Catalog::embedded().unwrap();
    let date = Date::new(2026, 11, 1).unwrap();
    let a = Population::generate(1, date);
    let b = Population::generate(2, date);
    let ga = Generator::new(&a, &catalog).unwrap();
    let gb = Generator::new(&b, &catalog).unwrap();
    let d = ds(&catalog, 1);
    let ja = ga.render(Subject::Person(&a.persons()[0]), d).unwrap().json;
    let jb = gb.render(Subject::Person(&b.persons()[0]), d).unwrap().json;
    assert_ne!(ja, jb);
}
