//! PDF documents: valid for every PDF dataset and several people, Traditional Chinese text comes
//! back out through the ToUnicode map (poppler's pdftotext), fonts are embedded subsets, output is
//! deterministic, and a missing glyph or font is a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::Timestamp;
use mydata_core::catalog::{Catalog, DataFormat, Dataset};
use mydata_core::identity::IdentityMethod;
use mydata_provider_sim::content::{Generator, Subject};
use mydata_provider_sim::pdf::{DocumentSpec, FontError, PdfError, PdfFonts, render};
use mydata_provider_sim::population::Welfare;
use mydata_provider_sim::{Date, Population};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

const ISSUED: Timestamp = Timestamp::from_millis(1_793_000_000_000);

fn fonts() -> &'static PdfFonts {
    static FONTS: OnceLock<PdfFonts> = OnceLock::new();
    FONTS.get_or_init(|| {
        PdfFonts::discover(None).unwrap_or_else(|e| {
            panic!("{e} (.ci/run installs fonts-noto-cjk; this test refuses to skip)")
        })
    })
}

/// Runs a poppler tool on the PDF and returns its stdout.
fn poppler(tool: &str, args: &[&str], pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doc.pdf");
    std::fs::write(&file, pdf).unwrap();
    let out = Command::new(tool)
        .args(args)
        .arg(&file)
        .args(if tool == "pdftotext" {
            &["-"][..]
        } else {
            &[][..]
        })
        .output()
        .unwrap_or_else(|e| {
            panic!("`{tool}` cannot run ({e}): install poppler-utils (.ci/run does); no skipping")
        });
    assert!(
        out.status.success(),
        "{tool} refused the PDF: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn text_of(pdf: &[u8]) -> String {
    poppler("pdftotext", &["-enc", "UTF-8"], pdf)
}

/// Without whitespace: a wrapped line or a layout gap must not hide a match.
fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

fn setup() -> (Population, Catalog) {
    (
        Population::generate(42, Date::new(2026, 11, 1).unwrap()),
        Catalog::embedded().unwrap(),
    )
}

fn dataset(catalog: &Catalog, no: u32) -> &Dataset {
    catalog.datasets().iter().find(|d| d.no == no).unwrap()
}

fn spec_for(
    g: &Generator<'_>,
    catalog: &Catalog,
    subject: Subject<'_>,
    d: &Dataset,
    transfer: &str,
) -> DocumentSpec {
    let c = g.render(subject, d).unwrap();
    let who = match subject {
        Subject::Person(p) => format!("{}（{}）", p.name, p.id.masked()),
        Subject::Company(c) => c.name.clone(),
    };
    DocumentSpec::new(
        d,
        catalog.agency(&d.agency),
        who,
        transfer,
        ISSUED,
        c.labels,
        c.rows,
    )
}

#[test]
fn household_register_pdf_gives_back_its_traditional_chinese_text() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    let p = pop
        .persons()
        .iter()
        .find(|p| pop.household_of(p).is_some() && !p.is_foreign())
        .unwrap();
    let d = dataset(&catalog, 1);
    let spec = spec_for(&g, &catalog, Subject::Person(p), d, "t-pdf-1");
    let pdf = render(&spec, fonts()).unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let text = squash(&text_of(&pdf));
    let agency = catalog.agency(&d.agency).unwrap();
    for want in [
        squash(&agency.name_zh),
        d.name_zh.clone(),
        p.name.clone(),
        squash(&p.address.full()),
        p.id.as_str().to_owned(),
        spec.request_no.clone(),
        "申請編號".to_owned(),
        "中華民國115年10月26日15:33".to_owned(),
        "戶籍地址".to_owned(),
    ] {
        assert!(text.contains(&want), "{want:?} not found in:\n{text}");
    }
    assert_eq!(spec.issued.iso(), "2026-10-26");
}

#[test]
fn fonts_are_embedded_subsets_with_unicode_maps() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    let spec = spec_for(
        &g,
        &catalog,
        Subject::Person(&pop.persons()[0]),
        dataset(&catalog, 59),
        "t",
    );
    let pdf = render(&spec, fonts()).unwrap();
    let listing = poppler("pdffonts", &[], &pdf);
    let rows: Vec<&str> = listing.lines().skip(2).collect();
    assert!(!rows.is_empty(), "{listing}");
    for row in rows {
        // name type... emb sub uni: every font embedded, subset (ABCDEF+ prefix), with ToUnicode.
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert!(cols[0].chars().nth(6) == Some('+'), "{row}");
        let n = cols.len();
        assert_eq!(&cols[n - 5..n - 2], ["yes", "yes", "yes"], "{row}");
    }
    // A subset, not the 19 MB collection.
    assert!(pdf.len() < 400_000, "{} bytes", pdf.len());
}

#[test]
fn every_pdf_dataset_is_a_valid_pdf_for_several_people_and_a_company() {
    let (pop, catalog) = setup();
    let g = Generator::new(&pop, &catalog).unwrap();
    let mut people: Vec<_> = pop.persons().iter().step_by(67).take(2).collect();
    people.extend(pop.persons().iter().find(|p| p.is_foreign()));
    people.extend(
        pop.persons()
            .iter()
            .find(|p| pop.welfare_of(p.index) != Welfare::None),
    );
    let company = &pop.companies()[0];
    let mut checked = 0;
    for d in catalog.datasets() {
        if !d.offers(DataFormat::Pdf) {
            continue;
        }
        let mut subjects: Vec<Subject<'_>> = people.iter().map(|p| Subject::Person(p)).collect();
        if d.accepts(IdentityMethod::MoeaCert) {
            subjects.push(Subject::Company(company));
        }
        for s in subjects {
            let spec = spec_for(&g, &catalog, s, d, "t-all");
            let pdf = render(&spec, fonts()).unwrap_or_else(|e| panic!("{}: {e}", d.id));
            assert!(pdf.starts_with(b"%PDF-1."), "{}", d.id);
            assert!(pdf.trim_ascii_end().ends_with(b"%%EOF"), "{}", d.id);
            // pdftotext parses the whole file (xref, fonts, content) and fails on a broken one.
            let text = squash(&text_of(&pdf));
            assert!(text.contains(&squash(&d.name_zh)), "{}: {text}", d.id);
            let first_value = spec.rows.first().and_then(|r| {
                r.iter()
                    .find(|v| !v.trim().is_empty() && v.chars().count() > 1)
            });
            if let Some(v) = first_value {
                assert!(text.contains(&squash(v)), "{}: {v:?} missing", d.id);
            } else {
                assert!(text.contains("查無資料"), "{}: {text}", d.id);
            }
            checked += 1;
        }
    }
    assert!(checked > 300, "only {checked} documents");
}

#[test]
fn same_inputs_give_the_same_bytes_and_another_request_differs() {
    let catalog = Catalog::embedded().unwrap();
    let date = Date::new(2026, 11, 1).unwrap();
    let (a, b) = (Population::generate(7, date), Population::generate(7, date));
    let (ga, gb) = (
        Generator::new(&a, &catalog).unwrap(),
        Generator::new(&b, &catalog).unwrap(),
    );
    let d = dataset(&catalog, 2);
    let one = render(
        &spec_for(&ga, &catalog, Subject::Person(&a.persons()[5]), d, "t-1"),
        fonts(),
    )
    .unwrap();
    let two = render(
        &spec_for(&gb, &catalog, Subject::Person(&b.persons()[5]), d, "t-1"),
        fonts(),
    )
    .unwrap();
    assert!(
        one == two,
        "same seed, person, transfer and time: same bytes"
    );
    let other = render(
        &spec_for(&ga, &catalog, Subject::Person(&a.persons()[5]), d, "t-2"),
        fonts(),
    )
    .unwrap();
    assert!(one != other, "the request number follows the transfer");
}

#[test]
fn long_values_wrap_and_many_records_continue_on_more_pages() {
    let catalog = Catalog::embedded().unwrap();
    let d = dataset(&catalog, 43);
    let long = "臺北市中正區重慶南路一段122號".repeat(12);
    let rows: Vec<Vec<String>> = (0..40)
        .map(|i| vec![format!("第{i}筆交易"), long.clone(), format!("END{i:02}")])
        .collect();
    let spec = DocumentSpec::new(
        d,
        catalog.agency(&d.agency),
        "測試者".into(),
        "t-long",
        ISSUED,
        vec!["交易說明".into(), "地址".into(), "結尾".into()],
        rows,
    );
    let pdf = render(&spec, fonts()).unwrap();
    let info = poppler("pdfinfo", &[], &pdf);
    let pages: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pages >= 5, "{pages} pages");
    let text = squash(&text_of(&pdf));
    assert!(text.contains("END39"), "the last record is printed");
    assert!(
        text.contains(&format!("第{pages}頁，共{pages}頁")),
        "{text}"
    );
    for i in 0..40 {
        assert!(text.contains(&format!("END{i:02}")), "record {i}");
    }
    // Nothing is cut: a wrapped address comes back whole once lines are joined, except where a
    // page break splits it (the rest follows under the repeated label, marked 續).
    let whole = text.matches(&squash(&long)).count();
    assert!(whole >= 40 - (pages as usize - 1) && whole <= 40, "{whole}");
    if whole < 40 {
        assert!(
            text.contains("地址（續）"),
            "a split value repeats its label"
        );
    }
}

#[test]
fn a_character_the_font_lacks_is_an_error_not_a_blank() {
    let catalog = Catalog::embedded().unwrap();
    let d = dataset(&catalog, 1);
    let spec = DocumentSpec::new(
        d,
        catalog.agency(&d.agency),
        "王\u{10FFFD}明".into(),
        "t",
        ISSUED,
        vec!["姓名".into()],
        vec![vec!["王小明".into()]],
    );
    match render(&spec, fonts()) {
        Err(PdfError::MissingGlyph { ch, code, .. }) => {
            assert_eq!((ch, code), ('\u{10FFFD}', 0x10FFFD));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bad_font_setting_is_named_in_the_error() {
    let missing = Path::new("/nonexistent/NotoSansCJK-Regular.ttc");
    let e = PdfFonts::discover(Some(missing)).unwrap_err();
    assert!(matches!(e, FontError::Read { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/NotoSansCJK-Regular.ttc") && msg.contains("pdf_font"),
        "{msg}"
    );

    let dir = tempfile::tempdir().unwrap();
    let not_font = dir.path().join("font.ttf");
    std::fs::write(&not_font, b"this is not a font").unwrap();
    let msg = PdfFonts::discover(Some(&not_font)).unwrap_err().to_string();
    assert!(msg.contains("not a font file"), "{msg}");

    // The setting wins over discovery: a good path loads the Traditional Chinese face.
    let good = PdfFonts::discover(Some(fonts().path())).unwrap();
    assert_eq!(good.family(), fonts().family());
}

#[test]
fn the_traditional_chinese_face_of_a_collection_is_chosen() {
    // Noto CJK collections hold JP, KR, SC, TC and HK faces; documents must use the TC one.
    if fonts().path().to_string_lossy().contains("NotoSansCJK") {
        assert_eq!(fonts().family(), "Noto Sans CJK TC");
    } else {
        assert!(!fonts().family().is_empty());
    }
}
