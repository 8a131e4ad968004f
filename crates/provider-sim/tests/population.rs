//! Population invariants: size, valid and unique numbers, determinism, special statuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::id_number::{BusinessId, IdKind, IdNumber};
use mydata_provider_sim::population::{DisabilityLevel, Role, Welfare};
use mydata_provider_sim::{Date, Population};
use proptest::prelude::*;
use std::collections::HashSet;

fn reference() -> Date {
    Date::new(2026, 11, 1).unwrap()
}

/// Everything the population must satisfy, whatever the seed.
fn check_invariants(pop: &Population) {
    let today = pop.reference_date();
    assert!(
        pop.persons().len() >= 200,
        "{} persons",
        pop.persons().len()
    );
    assert!(pop.companies().len() >= 20);
    let mut ids = HashSet::new();
    for p in pop.persons() {
        // The stored number re-parses (valid checksum) and its sex digit matches the person.
        let reparsed = IdNumber::parse(p.id.as_str()).unwrap();
        assert_eq!(reparsed.sex(), p.sex);
        assert!(ids.insert(p.id.as_str().to_owned()), "duplicate ID");
        assert_eq!(p.id.kind() == IdKind::National, !p.is_foreign());
        assert_eq!(pop.find(&p.id).map(|x| x.index), Some(p.index));
        assert_eq!(p.nhi_card_no.len(), 12);
        assert!(p.nhi_card_no.bytes().all(|b| b.is_ascii_digit()));
        assert!(p.mobile.starts_with("09") && p.mobile.len() == 10);
        assert!(p.email.contains('@'));
        assert!(p.birth_date <= today);
        assert_eq!(
            p.id_card_issued.is_some(),
            p.age_on(today) >= 14 && !p.is_foreign()
        );
        assert!(
            p.id_card_issued
                .is_none_or(|d| d <= today && d >= p.birth_date.add_years(14))
        );
        if let Some(s) = p.spouse {
            assert_eq!(pop.person(s).unwrap().spouse, Some(p.index));
        }
        for &c in &p.children {
            let child = pop.person(c).unwrap();
            assert!(child.father == Some(p.index) || child.mother == Some(p.index));
            assert!(child.birth_date > p.birth_date);
        }
    }
    let mut numbers = HashSet::new();
    for h in pop.households() {
        let n = h.number.as_bytes();
        assert!(n.len() == 8 && n[0].is_ascii_uppercase() && n[1..].iter().all(u8::is_ascii_digit));
        assert!(numbers.insert(h.number.clone()));
        assert!(h.members.contains(&h.head));
        assert_eq!(pop.person(h.head).unwrap().role, Role::Head);
        for &m in &h.members {
            let p = pop.person(m).unwrap();
            assert_eq!(p.household, Some(h.index));
            assert_eq!(p.address, h.address, "members share the address");
            assert_eq!(pop.welfare_of(m), h.welfare);
        }
    }
    let mut bans = HashSet::new();
    for c in pop.companies() {
        BusinessId::parse(c.ban.as_str()).unwrap();
        assert!(bans.insert(c.ban.as_str().to_owned()));
        assert!(pop.person(c.representative).is_some());
        assert_eq!(pop.find_company(&c.ban).map(|x| x.index), Some(c.index));
    }
    // Special statuses, each in several people.
    let count = |f: &dyn Fn(&mydata_provider_sim::Person) -> bool| {
        pop.persons().iter().filter(|p| f(p)).count()
    };
    assert!(count(&|p| p.age_on(today) < 18) >= 10, "minors");
    assert!(count(&|p| p.age_on(today) >= 65) >= 10, "elderly");
    assert!(count(&|p| p.is_foreign()) >= 3, "foreign residents");
    assert!(count(&|p| p.veteran.is_some()) >= 3, "veterans");
    for level in DisabilityLevel::ALL {
        assert!(
            count(&|p| p.disability.as_ref().is_some_and(|d| d.level == level)) >= 2,
            "{level:?}"
        );
    }
    for w in [Welfare::LowIncome, Welfare::MiddleLowIncome] {
        let households = pop.households().iter().filter(|h| h.welfare == w).count();
        assert!(households >= 3, "{w:?}: {households} households");
        assert!(
            pop.households()
                .iter()
                .filter(|h| h.welfare == w)
                .all(|h| h.members.len() >= 2)
        );
    }
    let multi = pop
        .households()
        .iter()
        .filter(|h| h.members.len() >= 4)
        .count();
    assert!(multi >= 5, "households with several members");
}

#[test]
fn default_seed_population_holds_invariants() {
    check_invariants(&Population::generate(42, reference()));
}

#[test]
fn same_seed_same_population_other_seed_differs() {
    let a = Population::generate(7, reference());
    let b = Population::generate(7, reference());
    let c = Population::generate(8, reference());
    let key = |p: &Population| -> Vec<(String, String, Date)> {
        p.persons()
            .iter()
            .map(|x| (x.id.as_str().to_owned(), x.name.clone(), x.birth_date))
            .collect()
    };
    assert_eq!(key(&a), key(&b));
    assert_eq!(
        format!("{:?}", a.households()),
        format!("{:?}", b.households())
    );
    assert_ne!(key(&a), key(&c));
}

#[test]
fn debug_output_does_not_leak_full_ids() {
    let pop = Population::generate(1, reference());
    let p = &pop.persons()[0];
    assert!(!format!("{p:?}").contains(p.id.as_str()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn invariants_hold_for_any_seed(seed in any::<u64>()) {
        check_invariants(&Population::generate(seed, reference()));
    }
}
