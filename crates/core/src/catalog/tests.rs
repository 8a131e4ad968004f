//! Tests of catalogue parsing, validation and the queries the API and pages rely on.

use super::*;
use proptest::prelude::*;

fn embedded_sources() -> CatalogSources {
    CatalogSources::embedded()
}

/// Replaces `from` by `to` in one file of the embedded catalogue and returns the problems found.
fn issues_after(kind: CatalogFile, from: &str, to: &str) -> Vec<CatalogIssue> {
    let mut src = embedded_sources();
    let file = src.get_mut(kind);
    assert!(
        file.text.contains(from),
        "fixture text `{from}` not in {}",
        file.file
    );
    file.text = file.text.replacen(from, to, 1);
    match Catalog::parse(&src) {
        Ok(_) => Vec::new(),
        Err(CatalogErrors(issues)) => issues,
    }
}

fn line_of(kind: CatalogFile, needle: &str) -> usize {
    let src = embedded_sources();
    let text = match kind {
        CatalogFile::Datasets => src.datasets.text,
        CatalogFile::Services => src.services.text,
        _ => String::new(),
    };
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(0)
}

#[test]
fn embedded_catalogue_has_all_datasets_and_services() {
    let c = Catalog::embedded().unwrap();
    assert_eq!(c.datasets().len(), 105);
    assert_eq!(c.services().len(), 28);
    // Seed numbers 1..=105 are all present once.
    let mut nos: Vec<u32> = c.datasets().iter().map(|d| d.no).collect();
    nos.sort_unstable();
    assert_eq!(nos, (1..=105).collect::<Vec<_>>());
    let tax = c.datasets().iter().find(|d| d.no == 12).unwrap();
    assert_eq!(tax.ready_minutes, 60);
    assert_eq!(tax.formats, vec![DataFormat::Pdf]);
    assert!(c.agency(&tax.agency).is_some());
}

#[test]
fn duplicate_dataset_id_names_file_line_and_field() {
    let issues = issues_after(
        CatalogFile::Datasets,
        "npm-registration-history\t105",
        "rf-equipment-import-permit\t105",
    );
    let line = line_of(CatalogFile::Datasets, "npm-registration-history\t105");
    assert_eq!(issues.len(), 1, "{issues:?}");
    let i = &issues[0];
    assert!(i.file.ends_with("datasets.tsv"));
    assert_eq!(i.line, line);
    assert_eq!(i.field.as_deref(), Some("id"));
    assert!(
        i.message
            .contains("duplicate ID `rf-equipment-import-permit`"),
        "{}",
        i.message
    );
    // The rendered message names all three for an operator.
    let shown = i.to_string();
    assert!(
        shown.contains(&format!("datasets.tsv:{line}: field `id`")),
        "{shown}"
    );
}

#[test]
fn unknown_identity_method_is_refused() {
    let issues = issues_after(
        CatalogFile::Datasets,
        "\tmoica_cert,tw_fido\tjson,pdf\t0",
        "\tmoica_cert,tw_fido,palm_scan\tjson,pdf\t0",
    );
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].field.as_deref(), Some("auth_methods"));
    assert!(
        issues[0]
            .message
            .contains("unknown identity method `palm_scan`")
    );
    assert!(
        issues[0].message.contains("moica_cert"),
        "lists the allowed codes"
    );
    assert_eq!(
        issues[0].line,
        line_of(CatalogFile::Datasets, "household-register-personal\t1")
    );
}

#[test]
fn unknown_format_is_refused() {
    let issues = issues_after(CatalogFile::Datasets, "\tjson,pdf\t0", "\tjson,xml\t0");
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].field.as_deref(), Some("formats"));
    assert!(issues[0].message.contains("unknown format `xml`"));
}

#[test]
fn service_naming_unknown_dataset_is_refused() {
    let issues = issues_after(
        CatalogFile::Services,
        "\tlow-income-household\teducation",
        "\tno-such-dataset\teducation",
    );
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].file.ends_with("services.tsv"));
    assert_eq!(issues[0].field.as_deref(), Some("datasets"));
    assert_eq!(
        issues[0].line,
        line_of(CatalogFile::Services, "k12-tuition-reduction")
    );
    assert!(
        issues[0]
            .message
            .contains("unknown dataset `no-such-dataset`")
    );
}

#[test]
fn more_than_five_datasets_need_a_legal_basis() {
    let six = "household-register-personal;household-register-full;kinship-relations;vehicle-registration;driver-licence;low-income-household";
    let issues = issues_after(
        CatalogFile::Services,
        "\tlow-income-household\teducation\t",
        &format!("\t{six}\teducation\t"),
    );
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].field.as_deref(), Some("datasets"));
    assert!(
        issues[0].message.contains("legal basis"),
        "{}",
        issues[0].message
    );
    // With a recorded legal basis the same service is accepted.
    let ok = issues_after(
        CatalogFile::Services,
        "\tlow-income-household\teducation\t",
        &format!("\t{six}\teducation\t教育部國民及學前教育署組織法第二條"),
    );
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn exactly_five_datasets_need_no_legal_basis() {
    let five = "household-register-personal;household-register-full;kinship-relations;vehicle-registration;driver-licence";
    let issues = issues_after(
        CatalogFile::Services,
        "\tlow-income-household\teducation\t",
        &format!("\t{five}\teducation\t"),
    );
    assert!(issues.is_empty(), "{issues:?}");
}

#[test]
fn other_problems_are_reported_with_their_field() {
    let cases: &[(CatalogFile, &str, &str, &str, &str)] = &[
        (
            CatalogFile::Datasets,
            "\tmoi-household\t個人戶籍資料",
            "\tmoi-nowhere\t個人戶籍資料",
            "agency",
            "unknown agency",
        ),
        (
            CatalogFile::Datasets,
            "household-register-personal\t1\t",
            "household-register-personal\tone\t",
            "no",
            "positive whole number",
        ),
        (
            CatalogFile::Datasets,
            "npm-registration-history\t105\t",
            "NPM_History\t105\t",
            "id",
            "not a valid ID",
        ),
        (
            CatalogFile::Datasets,
            "\tjson,pdf\t0\n",
            "\tjson,pdf\tsoon\n",
            "ready_minutes",
            "minutes",
        ),
        (
            CatalogFile::Datasets,
            "\tmoica_cert,tw_fido\tjson",
            "\tmoica_cert,moica_cert\tjson",
            "auth_methods",
            "listed twice",
        ),
        (
            CatalogFile::Services,
            "\tonline\tlow-income-household",
            "\tweb\tlow-income-household",
            "mode",
            "unknown mode `web`",
        ),
        (
            CatalogFile::Services,
            "\tlow-income-household\teducation",
            "\tlow-income-household\tspace",
            "sector",
            "unknown sector",
        ),
    ];
    for (kind, from, to, field, msg) in cases {
        let issues = issues_after(*kind, from, to);
        assert_eq!(issues.len(), 1, "{from} -> {to}: {issues:?}");
        assert_eq!(issues[0].field.as_deref(), Some(*field), "{to}");
        assert!(
            issues[0].message.contains(msg),
            "{to}: {}",
            issues[0].message
        );
        assert!(issues[0].line > 0);
    }
}

#[test]
fn wrong_header_or_column_count_is_refused() {
    // A broken header makes the file's rows unreadable; that problem is reported first.
    let issues = issues_after(
        CatalogFile::Datasets,
        "id\tno\tagency",
        "id\tnumber\tagency",
    );
    assert!(issues[0].file.ends_with("datasets.tsv"));
    assert!(
        issues[0].message.contains("header must be exactly"),
        "{:?}",
        issues[0]
    );
    assert_eq!(issues[0].field, None);

    let issues = issues_after(
        CatalogFile::Datasets,
        "history\teducation\tmoica_cert,tw_fido,nhi_card,dual_id\t",
        "history\teducation\t",
    );
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(
        issues[0].message.contains("has 8 columns, expected 9"),
        "{:?}",
        issues[0]
    );

    let mut src = embedded_sources();
    src.agencies.text = "# only comments\n".into();
    let Err(CatalogErrors(issues)) = Catalog::parse(&src) else {
        panic!("empty agencies accepted")
    };
    assert!(
        issues[0].message.contains("no header line"),
        "{:?}",
        issues[0]
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut src = embedded_sources();
    src.datasets.text = src
        .datasets
        .text
        .replacen("\tjson,pdf\t0", "\tjson,xml\t0", 1);
    src.services.text = src.services.text.replacen("\tonline\t", "\tweb\t", 1);
    let Err(CatalogErrors(issues)) = Catalog::parse(&src) else {
        panic!("accepted")
    };
    assert_eq!(issues.len(), 2, "{issues:?}");
}

#[test]
fn crlf_line_endings_are_accepted() {
    let mut src = embedded_sources();
    src.services.text = src.services.text.replace('\n', "\r\n");
    assert_eq!(Catalog::parse(&src).unwrap().services().len(), 28);
}

#[test]
fn dataset_search_covers_chinese_english_agency_and_filters() {
    let c = Catalog::embedded().unwrap();
    let zh = c.find_datasets(&DatasetFilter {
        query: Some("戶籍".into()),
        ..Default::default()
    });
    assert!(zh.iter().any(|d| d.id == "household-register-personal"));
    let en = c.find_datasets(&DatasetFilter {
        query: Some("LOW-INCOME".into()),
        ..Default::default()
    });
    assert!(en.iter().any(|d| d.id == "low-income-household"));
    // Two terms must both match.
    let none = c.find_datasets(&DatasetFilter {
        query: Some("household vaccination".into()),
        ..Default::default()
    });
    assert!(none.is_empty());
    // Agency name matches too.
    let by_agency_name = c.find_datasets(&DatasetFilter {
        query: Some("勞工保險局".into()),
        ..Default::default()
    });
    assert_eq!(by_agency_name.len(), 10);

    let pdf_only_tax = c.find_datasets(&DatasetFilter {
        category: Some("tax".into()),
        format: Some(DataFormat::Json),
        ..Default::default()
    });
    assert!(
        pdf_only_tax
            .iter()
            .all(|d| d.category == "tax" && d.offers(DataFormat::Json))
    );
    assert!(!pdf_only_tax.is_empty());
    let dual = c.find_datasets(&DatasetFilter {
        identity_method: Some(IdentityMethod::DualId),
        ..Default::default()
    });
    assert!(dual.iter().all(|d| d.accepts(IdentityMethod::DualId)));
    assert!(dual.iter().any(|d| d.id == "low-income-household"));
    let csv = c.find_datasets(&DatasetFilter {
        format: Some(DataFormat::Csv),
        ..Default::default()
    });
    assert_eq!(csv.len(), 1);
}

#[test]
fn service_mode_filter_includes_services_offered_both_ways() {
    let c = Catalog::embedded().unwrap();
    let counter = c.find_services(&ServiceFilter {
        mode: Some(ServiceMode::Counter),
        ..Default::default()
    });
    assert!(!counter.is_empty());
    assert!(
        counter
            .iter()
            .all(|s| s.mode == ServiceMode::Both || s.mode == ServiceMode::Counter)
    );
    let online = c.find_services(&ServiceFilter {
        mode: Some(ServiceMode::Online),
        ..Default::default()
    });
    assert_eq!(online.len(), 28, "every seed service is usable online");
    let edu = c.find_services(&ServiceFilter {
        sector: Some("education".into()),
        ..Default::default()
    });
    assert!(edu.iter().all(|s| s.sector == "education"));
}

#[test]
fn selection_explains_which_dataset_rules_out_which_method() {
    let c = Catalog::embedded().unwrap();
    // Personal register accepts only certificate and FIDO; low-income also accepts card and dual ID.
    let s = c
        .selection(&[
            "low-income-household",
            "household-register-personal",
            "low-income-household",
        ])
        .unwrap();
    assert_eq!(
        s.datasets,
        vec!["low-income-household", "household-register-personal"]
    );
    assert_eq!(
        s.identity_methods,
        vec![IdentityMethod::MoicaCert, IdentityMethod::TwFido]
    );
    let nhi = s
        .excluded_methods
        .iter()
        .find(|e| e.method == IdentityMethod::NhiCard)
        .unwrap();
    assert_eq!(nhi.excluded_by, vec!["household-register-personal"]);
    assert_eq!(s.required_level, AssuranceLevel::L2);
    assert_eq!(c.selection::<&str>(&[]), Err(SelectionError::Empty));
    assert_eq!(
        c.selection(&["nope"]),
        Err(SelectionError::UnknownDataset("nope".into()))
    );
}

proptest! {
    #[test]
    fn selection_offers_exactly_the_methods_all_datasets_accept(picks in proptest::collection::vec(0usize..105, 1..8)) {
        let c = Catalog::embedded().unwrap();
        let ids: Vec<&str> = picks.iter().map(|&i| c.datasets()[i].id.as_str()).collect();
        let s = c.selection(&ids).unwrap();
        let chosen: Vec<&Dataset> = s.datasets.iter().map(|id| c.dataset(id).unwrap()).collect();
        for m in IdentityMethod::ALL {
            let all_accept = chosen.iter().all(|d| d.accepts(m));
            prop_assert_eq!(s.identity_methods.contains(&m), all_accept);
            if let Some(e) = s.excluded_methods.iter().find(|e| e.method == m) {
                for d in &chosen {
                    prop_assert_eq!(e.excluded_by.contains(&d.id), !d.accepts(m));
                }
            }
        }
        // A level satisfies the selection exactly when it satisfies every dataset.
        for n in 1..=4u8 {
            let level = AssuranceLevel::try_from(n).unwrap();
            prop_assert_eq!(
                level.satisfies(s.required_level),
                chosen.iter().all(|d| level.satisfies(d.min_level()))
            );
        }
        prop_assert_eq!(s.ready_minutes, chosen.iter().map(|d| d.ready_minutes).max().unwrap());
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in ".{0,400}") {
        let mut src = embedded_sources();
        src.services.text = text;
        let _ = Catalog::parse(&src);
    }
}
