//! PDF rendering of a dataset as an agency would issue it: a Traditional Chinese document with the
//! agency, the dataset title, request number, issue date and the subject's fields in a table.
//!
//! Text is set in one CJK font found on the machine ([`PdfFonts::discover`]); krilla embeds it as a
//! subset CID font with a ToUnicode map, so the text can be searched and copied. Layout is done
//! here (glyph advances read with skrifa) so that cells wrap and pages break predictably. The same
//! inputs always give the same bytes.

use crate::date::Date;
use krilla::Document;
use krilla::color::rgb;
use krilla::geom::{PathBuilder, Point, Rect, Size};
use krilla::metadata::{DateTime, Metadata};
use krilla::num::NormalizedF32;
use krilla::page::PageSettings;
use krilla::paint::{Fill, Stroke};
use krilla::surface::Surface;
use krilla::text::{Font, GlyphId, KrillaGlyph};
use mydata_core::Timestamp;
use mydata_core::catalog::{Agency, Dataset};
use skrifa::MetadataProvider;
use skrifa::instance::{LocationRef, Size as FontSize};
use skrifa::raw::FileRef;
use skrifa::string::StringId;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Environment variable naming the font file, when not configured explicitly.
pub const FONT_ENV: &str = "MYDATA_PDF_FONT";

/// Where fonts with Traditional Chinese glyphs are installed by common packages, best first.
pub const FONT_CANDIDATES: [&str; 8] = [
    // Debian/Ubuntu fonts-noto-cjk (what .ci/run installs).
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    // Fedora google-noto-sans-cjk-ttc-fonts, Arch noto-fonts-cjk.
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto-cjk/NotoSansCJK-Regular.ttc",
    // Alpine font-noto-cjk, Homebrew/other layouts.
    "/usr/share/fonts/noto/NotoSansCJK-Regular.ttc",
    "/usr/local/share/fonts/NotoSansCJK-Regular.ttc",
    // Debian fonts-wqy-microhei / fonts-wqy-zenhei.
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
];

/// Characters every face must have: the fixed wording of the document.
const PROBE: &str = "臺灣中華民國申請編號核發日期資料當事人第頁共筆查無本機關電子簽章欄位內容模擬";

/// Why no usable font was loaded.
#[derive(Debug, thiserror::Error)]
pub enum FontError {
    #[error(
        "no font with Traditional Chinese glyphs for PDF datasets: none of {tried} exists. \
         Install one (Debian/Ubuntu: apt-get install fonts-noto-cjk) or set {FONT_ENV} \
         (`mydata provider-sim --pdf-font FILE`) to a TTF, OTF or TTC file"
    )]
    NotFound { tried: String },
    #[error("PDF font {path} (from {origin}) cannot be read: {reason}")]
    Read {
        path: PathBuf,
        origin: &'static str,
        reason: String,
    },
    #[error(
        "PDF font {path} (from {origin}) has no face with all the Traditional Chinese characters \
         the documents need (for example {missing:?}); use a CJK font such as Noto Sans CJK TC"
    )]
    NoCjkFace {
        path: PathBuf,
        origin: &'static str,
        missing: char,
    },
}

/// Why a document could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    #[error("the PDF font ({family}) has no glyph for {ch:?} (U+{code:04X})")]
    MissingGlyph { family: String, ch: char, code: u32 },
    #[error("the PDF font cannot be read: {0}")]
    Font(String),
    #[error("writing the PDF failed: {0}")]
    Write(String),
}

/// One face of a font file, shared by every document.
#[derive(Clone)]
struct Face {
    font: Font,
    data: Arc<Vec<u8>>,
    index: u32,
    family: String,
    units_per_em: f32,
}

impl std::fmt::Debug for Face {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Face")
            .field("family", &self.family)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// The regular and bold faces the documents are set in.
#[derive(Debug, Clone)]
pub struct PdfFonts {
    regular: Face,
    /// `None`: the file has no bold sibling; bold text is then drawn with a thin outline.
    bold: Option<Face>,
    path: PathBuf,
}

impl PdfFonts {
    /// The configured file, else `$MYDATA_PDF_FONT`, else the first of [`FONT_CANDIDATES`] present.
    pub fn discover(configured: Option<&Path>) -> Result<Self, FontError> {
        if let Some(path) = configured {
            return Self::load(path, "the pdf_font setting");
        }
        if let Some(path) = std::env::var_os(FONT_ENV).filter(|v| !v.is_empty()) {
            return Self::load(Path::new(&path), "MYDATA_PDF_FONT");
        }
        match FONT_CANDIDATES.iter().map(Path::new).find(|p| p.is_file()) {
            Some(path) => Self::load(path, "the default font locations"),
            None => Err(FontError::NotFound {
                tried: FONT_CANDIDATES.join(", "),
            }),
        }
    }

    /// Load `path` (and its `-Bold` sibling if there is one); `origin` names where the path came
    /// from, for error messages.
    pub fn load(path: &Path, origin: &'static str) -> Result<Self, FontError> {
        let regular = load_face(path, origin)?;
        let bold = bold_sibling(path)
            .filter(|p| p.is_file())
            .and_then(|p| load_face(&p, origin).ok());
        Ok(Self {
            regular,
            bold,
            path: path.to_owned(),
        })
    }

    /// The family name of the regular face, e.g. `Noto Sans CJK TC`.
    pub fn family(&self) -> &str {
        &self.regular.family
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn face(&self, bold: bool) -> &Face {
        match (&self.bold, bold) {
            (Some(b), true) => b,
            _ => &self.regular,
        }
    }
}

fn bold_sibling(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let bold = name.replace("Regular", "Bold");
    (bold != name).then(|| path.with_file_name(bold))
}

fn load_face(path: &Path, origin: &'static str) -> Result<Face, FontError> {
    let read_err = |reason: String| FontError::Read {
        path: path.to_owned(),
        origin,
        reason,
    };
    let data = Arc::new(std::fs::read(path).map_err(|e| read_err(e.to_string()))?);
    let file = FileRef::new(&data).map_err(|e| read_err(format!("not a font file: {e}")))?;
    // Pick the face that covers the fixed wording, preferring a Traditional Chinese (TC) one:
    // in Noto CJK collections each region's face maps characters to that region's glyph forms.
    let mut best: Option<(u8, u32, String, f32)> = None;
    let mut first_missing = None;
    for (index, face) in file.fonts().enumerate() {
        let Ok(face) = face else { continue };
        let Ok(index) = u32::try_from(index) else {
            break;
        };
        let cmap = face.charmap();
        if let Some(ch) = PROBE.chars().find(|c| cmap.map(*c).is_none()) {
            first_missing.get_or_insert(ch);
            continue;
        }
        let family = face
            .localized_strings(StringId::FAMILY_NAME)
            .english_or_first()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let score =
            u8::from(family.split(' ').any(|w| w == "TC")) * 2 + u8::from(!family.contains("Mono"));
        let upem = f32::from(
            face.metrics(FontSize::unscaled(), LocationRef::default())
                .units_per_em,
        );
        if best.as_ref().is_none_or(|b| score > b.0) {
            best = Some((score, index, family, upem));
        }
    }
    let Some((_, index, family, units_per_em)) = best else {
        return Err(FontError::NoCjkFace {
            path: path.to_owned(),
            origin,
            missing: first_missing.unwrap_or('臺'),
        });
    };
    let font = Font::new(data.clone().into(), index)
        .ok_or_else(|| read_err(format!("krilla cannot read face {index}")))?;
    Ok(Face {
        font,
        data,
        index,
        family,
        units_per_em,
    })
}

/// What one document shows.
#[derive(Debug, Clone)]
pub struct DocumentSpec {
    pub agency_zh: String,
    pub agency_en: String,
    pub title_zh: String,
    pub title_en: String,
    /// The agency's number for this request.
    pub request_no: String,
    /// The transfer the platform asked for (shown so the person can match the document).
    pub transfer_id: String,
    /// Local date and time of issue (Taiwan, UTC+8).
    pub issued: Date,
    pub issued_hm: (u32, u32),
    /// Who the data is about, as the agency names them (name and masked ID).
    pub subject: String,
    /// Column labels (`label_zh` of fields.tsv).
    pub labels: Vec<String>,
    /// One entry per record; each has one value per label.
    pub rows: Vec<Vec<String>>,
}

impl DocumentSpec {
    /// The document for `dataset`'s records (`labels`, `rows` as in [`crate::Content`]), issued at
    /// `issued_at` for transfer `transfer_id`. `subject` names the person or company.
    pub fn new(
        dataset: &Dataset,
        agency: Option<&Agency>,
        subject: String,
        transfer_id: &str,
        issued_at: Timestamp,
        labels: Vec<String>,
        rows: Vec<Vec<String>>,
    ) -> Self {
        const TAIPEI_MS: i64 = 8 * 3_600_000;
        let local = issued_at.millis().saturating_add(TAIPEI_MS);
        let issued = Date::from_days(local.div_euclid(86_400_000));
        let minute_of_day = local.rem_euclid(86_400_000) / 60_000;
        let hm = (
            u32::try_from(minute_of_day / 60).unwrap_or(0),
            u32::try_from(minute_of_day % 60).unwrap_or(0),
        );
        Self {
            agency_zh: agency.map_or_else(|| dataset.agency.clone(), |a| a.name_zh.clone()),
            agency_en: agency.map_or_else(String::new, |a| a.name_en.clone()),
            title_zh: dataset.name_zh.clone(),
            title_en: dataset.name_en.clone(),
            request_no: request_number(dataset, transfer_id, issued),
            transfer_id: transfer_id.to_owned(),
            issued,
            issued_hm: hm,
            subject,
            labels,
            rows,
        }
    }
}

/// The agency's number for a request: ROC year, dataset number, then ten digits fixed by the
/// transfer and dataset, e.g. `1140010123456789` (the same request always gets the same number).
pub fn request_number(dataset: &Dataset, transfer_id: &str, issued: Date) -> String {
    // FNV-1a: a stable spread of the IDs, not a security property.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in transfer_id.bytes().chain([0]).chain(dataset.id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!(
        "{:03}{:03}{:010}",
        issued.roc_year(),
        dataset.no,
        h % 10_000_000_000
    )
}

const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const MARGIN: f32 = 54.0;
const CONTENT_W: f32 = PAGE_W - 2.0 * MARGIN;
const FOOTER_TOP: f32 = PAGE_H - 64.0;
const LABEL_W: f32 = 150.0;
const CELL_PAD: f32 = 5.0;
const BODY: f32 = 10.0;
const LINE: f32 = 15.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ink {
    Black,
    Grey,
    Red,
    Navy,
}

impl Ink {
    fn color(self) -> rgb::Color {
        match self {
            Ink::Black => rgb::Color::new(20, 20, 20),
            Ink::Grey => rgb::Color::new(95, 95, 95),
            Ink::Red => rgb::Color::new(190, 30, 35),
            Ink::Navy => rgb::Color::new(25, 45, 95),
        }
    }
}

/// A drawing step, recorded during layout and replayed once the page count is known.
#[derive(Debug, Clone)]
enum Op {
    Text {
        at: (f32, f32),
        size: f32,
        bold: bool,
        ink: Ink,
        run: Run,
    },
    Line {
        from: (f32, f32),
        to: (f32, f32),
        width: f32,
        ink: Ink,
    },
    Rect {
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        fill: Option<rgb::Color>,
        stroke: Option<(Ink, f32)>,
    },
}

/// A line of text mapped to glyphs, with its width in em.
#[derive(Debug, Clone)]
struct Run {
    text: String,
    glyphs: Vec<KrillaGlyph>,
    width_em: f32,
}

/// Maps text to glyphs of one face and measures it.
struct Shaper<'a> {
    face: &'a Face,
    font: skrifa::FontRef<'a>,
}

impl<'a> Shaper<'a> {
    fn new(face: &'a Face) -> Result<Self, PdfError> {
        let font = skrifa::FontRef::from_index(&face.data, face.index)
            .map_err(|e| PdfError::Font(e.to_string()))?;
        Ok(Self { face, font })
    }

    fn run(&self, text: &str) -> Result<Run, PdfError> {
        let cmap = self.font.charmap();
        let metrics = self
            .font
            .glyph_metrics(FontSize::unscaled(), LocationRef::default());
        let upem = self.face.units_per_em;
        let mut glyphs = Vec::with_capacity(text.len());
        let mut width_em = 0.0;
        for (at, ch) in text.char_indices() {
            let gid = cmap.map(ch).ok_or(PdfError::MissingGlyph {
                family: self.face.family.clone(),
                ch,
                code: u32::from(ch),
            })?;
            let advance = metrics.advance_width(gid).unwrap_or(upem) / upem;
            glyphs.push(KrillaGlyph::new(
                GlyphId::new(gid.to_u32()),
                advance,
                0.0,
                0.0,
                0.0,
                at..at + ch.len_utf8(),
                None,
            ));
            width_em += advance;
        }
        Ok(Run {
            text: text.to_owned(),
            glyphs,
            width_em,
        })
    }

    /// Break `text` into runs no wider than `width` points at `size`; any character may end a
    /// line (CJK has no spaces), but a line never starts with a space.
    fn wrap(&self, text: &str, size: f32, width: f32) -> Result<Vec<Run>, PdfError> {
        let mut lines = Vec::new();
        for paragraph in text.split('\n') {
            let whole = self.run(paragraph)?;
            if whole.width_em * size <= width {
                lines.push(whole);
                continue;
            }
            let mut start = 0;
            let mut acc = 0.0;
            for g in &whole.glyphs {
                let w = g.x_advance * size;
                if acc + w > width && g.text_range.start > start {
                    lines.push(self.run(paragraph[start..g.text_range.start].trim_end())?);
                    start = g.text_range.start;
                    acc = 0.0;
                    if paragraph[start..].starts_with(' ') {
                        start += 1;
                        continue;
                    }
                }
                acc += w;
            }
            if start < paragraph.len() {
                lines.push(self.run(&paragraph[start..])?);
            }
        }
        Ok(lines)
    }
}

/// Replace what a PDF text line cannot hold (control characters, tabs).
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect()
}

struct Layout<'a> {
    regular: Shaper<'a>,
    bold: Shaper<'a>,
    pages: Vec<Vec<Op>>,
    y: f32,
}

impl Layout<'_> {
    fn ops(&mut self) -> &mut Vec<Op> {
        if self.pages.is_empty() {
            self.pages.push(Vec::new());
        }
        let last = self.pages.len() - 1;
        &mut self.pages[last]
    }

    fn new_page(&mut self) {
        self.pages.push(Vec::new());
        self.y = MARGIN + 10.0;
    }

    fn shaper(&self, bold: bool) -> &Shaper<'_> {
        if bold { &self.bold } else { &self.regular }
    }

    fn text(&mut self, x: f32, y: f32, size: f32, bold: bool, ink: Ink, run: Run) {
        self.ops().push(Op::Text {
            at: (x, y),
            size,
            bold,
            ink,
            run,
        });
    }

    fn centered(&mut self, text: &str, size: f32, bold: bool, ink: Ink) -> Result<(), PdfError> {
        for run in self.shaper(bold).wrap(text, size, CONTENT_W)? {
            let x = MARGIN + (CONTENT_W - run.width_em * size) / 2.0;
            self.y += size * 1.45;
            let y = self.y;
            self.text(x, y, size, bold, ink, run);
        }
        Ok(())
    }

    fn rule(&mut self, width: f32, ink: Ink) {
        let y = self.y;
        self.ops().push(Op::Line {
            from: (MARGIN, y),
            to: (MARGIN + CONTENT_W, y),
            width,
            ink,
        });
    }

    /// A two-column row: label (shaded) and value, wrapped; breaks to a new page when needed.
    fn row(&mut self, label: &str, value: &str, continued: &str) -> Result<(), PdfError> {
        let label_lines = self.bold.wrap(label, BODY, LABEL_W - 2.0 * CELL_PAD)?;
        let value_lines = self
            .regular
            .wrap(value, BODY, CONTENT_W - LABEL_W - 2.0 * CELL_PAD)?;
        let passes = 2 * (1 + label_lines.len() + value_lines.len());
        let mut label_lines = label_lines.into_iter().peekable();
        let mut value_lines = value_lines.into_iter().peekable();
        // A long value may continue on the next page; the label is repeated there.
        let mut first = true;
        // Each pass places at least one line or opens a page, so this many passes always suffice.
        for _ in 0..passes {
            if !(first || value_lines.peek().is_some() || label_lines.peek().is_some()) {
                break;
            }
            let room = ((FOOTER_TOP - 8.0 - self.y - 2.0 * CELL_PAD) / LINE).floor();
            if room < 1.0 {
                self.new_page();
                self.caption(continued)?;
                continue;
            }
            let take = room as usize;
            let labels: Vec<Run> = if first {
                label_lines.by_ref().take(take).collect()
            } else {
                let mut rest: Vec<Run> = label_lines.by_ref().take(take).collect();
                if rest.is_empty() {
                    rest = self.bold.wrap(&format!("{label}（續）"), BODY, LABEL_W)?;
                    rest.truncate(1);
                }
                rest
            };
            let values: Vec<Run> = value_lines.by_ref().take(take).collect();
            let n = labels.len().max(values.len()).max(1);
            let h = n as f32 * LINE + 2.0 * CELL_PAD;
            let top = self.y;
            self.ops().push(Op::Rect {
                x: MARGIN,
                y: top,
                w: LABEL_W,
                h,
                fill: Some(rgb::Color::new(236, 239, 244)),
                stroke: None,
            });
            self.ops().push(Op::Rect {
                x: MARGIN,
                y: top,
                w: CONTENT_W,
                h,
                fill: None,
                stroke: Some((Ink::Grey, 0.6)),
            });
            self.ops().push(Op::Line {
                from: (MARGIN + LABEL_W, top),
                to: (MARGIN + LABEL_W, top + h),
                width: 0.6,
                ink: Ink::Grey,
            });
            for (i, run) in labels.into_iter().enumerate() {
                let y = top + CELL_PAD + (i as f32 + 1.0) * LINE - 4.0;
                self.text(MARGIN + CELL_PAD, y, BODY, true, Ink::Navy, run);
            }
            for (i, run) in values.into_iter().enumerate() {
                let y = top + CELL_PAD + (i as f32 + 1.0) * LINE - 4.0;
                self.text(MARGIN + LABEL_W + CELL_PAD, y, BODY, false, Ink::Black, run);
            }
            self.y = top + h;
            first = false;
        }
        Ok(())
    }

    /// A small heading above a table ("第 1 筆，共 3 筆").
    fn caption(&mut self, text: &str) -> Result<(), PdfError> {
        if text.is_empty() {
            return Ok(());
        }
        if self.y + 40.0 > FOOTER_TOP {
            self.new_page();
        }
        self.y += 18.0;
        for run in self.bold.wrap(text, 11.0, CONTENT_W)? {
            let y = self.y;
            self.text(MARGIN, y, 11.0, true, Ink::Navy, run);
            self.y += 15.0;
        }
        self.y -= 9.0;
        Ok(())
    }
}

/// ROC date in words, e.g. `中華民國114年12月31日`.
fn roc_words(d: Date) -> String {
    format!("中華民國{}年{}月{}日", d.roc_year(), d.month(), d.day())
}

/// Render the document. Deterministic: the same spec and fonts give the same bytes.
pub fn render(spec: &DocumentSpec, fonts: &PdfFonts) -> Result<Vec<u8>, PdfError> {
    let mut l = Layout {
        regular: Shaper::new(fonts.face(false))?,
        bold: Shaper::new(fonts.face(true))?,
        pages: vec![Vec::new()],
        y: MARGIN - 12.0,
    };
    let agency = clean(&spec.agency_zh);
    let title = clean(&spec.title_zh);

    // Banner: what this is, in both languages, so nobody mistakes it for a real certificate.
    l.centered(
        "模擬資料・僅供 MyData 開發測試使用，不具法律效力  SIMULATED DATA — NOT A REAL GOVERNMENT DOCUMENT",
        7.5,
        false,
        Ink::Red,
    )?;
    l.y += 10.0;
    l.centered(&agency, 20.0, true, Ink::Black)?;
    l.centered(&clean(&spec.agency_en), 8.5, false, Ink::Grey)?;
    l.y += 6.0;
    l.centered(&title, 17.0, true, Ink::Black)?;
    l.centered(&clean(&spec.title_en), 9.0, false, Ink::Grey)?;
    l.y += 10.0;
    l.rule(1.6, Ink::Navy);
    l.y += 2.5;
    l.rule(0.5, Ink::Navy);
    l.y += 10.0;

    // Stamp at the right of the request details, like the seal on a paper certificate.
    let stamp_top = l.y + 2.0;
    let stamp = 84.0;
    let stamp_x = MARGIN + CONTENT_W - stamp;
    l.ops().push(Op::Rect {
        x: stamp_x,
        y: stamp_top,
        w: stamp,
        h: stamp,
        fill: None,
        stroke: Some((Ink::Red, 1.8)),
    });
    // The agency's name, a line per word (名稱 like 「內政部 戶政司」), at most five characters each.
    let mut seal_lines: Vec<String> = agency
        .split_whitespace()
        .flat_map(|word| {
            word.chars()
                .collect::<Vec<_>>()
                .chunks(5)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
        })
        .collect();
    seal_lines.truncate(3);
    seal_lines.push("電子核發章".to_owned());
    let seal_size = 10.5;
    let seal_h = seal_lines.len() as f32 * (seal_size + 4.0);
    let mut sy = stamp_top + (stamp - seal_h) / 2.0 + seal_size;
    for line in &seal_lines {
        let run = l.bold.run(line)?;
        let x = stamp_x + (stamp - run.width_em * seal_size) / 2.0;
        l.text(x, sy, seal_size, true, Ink::Red, run);
        sy += seal_size + 4.0;
    }

    // Request details.
    let (h, m) = spec.issued_hm;
    let details = [
        ("申請編號 Request No.", clean(&spec.request_no)),
        (
            "核發日期 Issued",
            format!(
                "{} {h:02}:{m:02}（{} UTC+8）",
                roc_words(spec.issued),
                spec.issued.iso()
            ),
        ),
        ("資料當事人 Data subject", clean(&spec.subject)),
        ("傳輸編號 Transfer ID", clean(&spec.transfer_id)),
    ];
    for (label, value) in details {
        l.y += 15.0;
        let y = l.y;
        let run = l.regular.run(label)?;
        l.text(MARGIN, y, 9.0, false, Ink::Grey, run);
        for (i, run) in l
            .regular
            .wrap(&value, 10.0, CONTENT_W - stamp - 130.0)?
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                l.y += 13.0;
            }
            let y = l.y;
            l.text(MARGIN + 125.0, y, 10.0, false, Ink::Black, run);
        }
    }
    l.y = l.y.max(stamp_top + stamp) + 6.0;

    // The records.
    let n = spec.rows.len();
    if n == 0 {
        l.caption("查詢結果 Result")?;
        l.y += 4.0;
        l.row(
            "查詢結果",
            &format!("查無資料：{agency}未保有資料當事人之「{title}」紀錄。No record is held."),
            "",
        )?;
    }
    for (i, row) in spec.rows.iter().enumerate() {
        let caption = if n == 1 {
            "資料內容 Record".to_owned()
        } else {
            format!("第 {} 筆，共 {n} 筆  Record {} of {n}", i + 1, i + 1)
        };
        l.caption(&caption)?;
        l.y += 4.0;
        let continued = format!("{caption}（續 continued）");
        for (label, value) in spec.labels.iter().zip(row) {
            let value = if value.is_empty() { "—" } else { value };
            l.row(&clean(label), &clean(value), &continued)?;
        }
    }

    // Closing statement.
    let closing = format!(
        "本文件由{agency}依資料當事人之申請，經 MyData 平臺以電子方式核發；資料檔案並經本機關憑證數位簽章\
         （manifest.sig、manifest.jws），可依 PACKAGE.md 所載方式驗證。如與 data.json 不一致，以簽章之資料檔為準。"
    );
    let lines = l.regular.wrap(&closing, 8.5, CONTENT_W)?;
    if l.y + 20.0 + lines.len() as f32 * 12.0 > FOOTER_TOP {
        l.new_page();
    }
    l.y += 20.0;
    for run in lines {
        let y = l.y;
        l.text(MARGIN, y, 8.5, false, Ink::Grey, run);
        l.y += 12.0;
    }

    // Footers, now that the page count is known.
    let total = l.pages.len();
    for p in 0..total {
        let footer = format!("{agency}　{title}　第 {} 頁，共 {total} 頁", p + 1);
        let run = l.regular.run(&footer)?;
        let x = MARGIN + (CONTENT_W - run.width_em * 8.0) / 2.0;
        let page = &mut l.pages[p];
        page.push(Op::Line {
            from: (MARGIN, FOOTER_TOP + 14.0),
            to: (MARGIN + CONTENT_W, FOOTER_TOP + 14.0),
            width: 0.5,
            ink: Ink::Grey,
        });
        page.push(Op::Text {
            at: (x, FOOTER_TOP + 30.0),
            size: 8.0,
            bold: false,
            ink: Ink::Grey,
            run,
        });
    }
    emit(spec, fonts, &l.pages)
}

fn emit(spec: &DocumentSpec, fonts: &PdfFonts, pages: &[Vec<Op>]) -> Result<Vec<u8>, PdfError> {
    let mut doc = Document::new();
    let (h, m) = spec.issued_hm;
    let date = DateTime::new(u16::try_from(spec.issued.year()).unwrap_or(0))
        .month(u8::try_from(spec.issued.month()).unwrap_or(1))
        .day(u8::try_from(spec.issued.day()).unwrap_or(1))
        .hour(u8::try_from(h).unwrap_or(0))
        .minute(u8::try_from(m).unwrap_or(0))
        .utc_offset_hour(8);
    doc.set_metadata(
        Metadata::new()
            .title(format!("{} {}", spec.title_zh, spec.request_no))
            .authors(vec![spec.agency_zh.clone()])
            .language("zh-TW".to_owned())
            .creator("mydata provider-sim".to_owned())
            .creation_date(date),
    );
    let size = Size::from_wh(PAGE_W, PAGE_H).ok_or_else(|| PdfError::Write("page size".into()))?;
    for ops in pages {
        let mut page = doc.start_page_with(PageSettings::new(size));
        let mut s = page.surface();
        for op in ops {
            draw(&mut s, fonts, op);
        }
        s.finish();
        page.finish();
    }
    doc.finish().map_err(|e| PdfError::Write(format!("{e:?}")))
}

fn fill(color: rgb::Color) -> Fill {
    Fill {
        paint: color.into(),
        opacity: NormalizedF32::ONE,
        rule: Default::default(),
    }
}

fn stroke(color: rgb::Color, width: f32) -> Stroke {
    Stroke {
        paint: color.into(),
        width,
        ..Default::default()
    }
}

fn draw(s: &mut Surface<'_>, fonts: &PdfFonts, op: &Op) {
    match op {
        Op::Text {
            at,
            size,
            bold,
            ink,
            run,
        } => {
            let face = fonts.face(*bold);
            s.set_fill(Some(fill(ink.color())));
            // Without a bold face, a hairline outline stands in for the heavier weight.
            let fake_bold = *bold && fonts.bold.is_none();
            s.set_stroke(fake_bold.then(|| stroke(ink.color(), size * 0.03)));
            s.draw_glyphs(
                Point::from_xy(at.0, at.1),
                &run.glyphs,
                face.font.clone(),
                &run.text,
                *size,
                false,
            );
            s.set_stroke(None);
        }
        Op::Line {
            from,
            to,
            width,
            ink,
        } => {
            let mut pb = PathBuilder::new();
            pb.move_to(from.0, from.1);
            pb.line_to(to.0, to.1);
            if let Some(path) = pb.finish() {
                s.set_fill(None);
                s.set_stroke(Some(stroke(ink.color(), *width)));
                s.draw_path(&path);
                s.set_stroke(None);
            }
        }
        Op::Rect {
            x,
            y,
            w,
            h,
            fill: f,
            stroke: st,
        } => {
            let mut pb = PathBuilder::new();
            if let Some(rect) = Rect::from_xywh(*x, *y, *w, *h) {
                pb.push_rect(rect);
            }
            if let Some(path) = pb.finish() {
                s.set_fill(f.map(fill));
                s.set_stroke(st.map(|(ink, width)| stroke(ink.color(), width)));
                s.draw_path(&path);
                s.set_fill(None);
                s.set_stroke(None);
            }
        }
    }
}
