//! Automated accessibility checks with axe-core, injected into the page under test.

use crate::{BrowserError, Page};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One rule the page breaks, with the elements that break it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AxeViolation {
    pub id: String,
    /// `minor`, `moderate`, `serious` or `critical`.
    pub impact: String,
    pub help: String,
    pub help_url: String,
    /// CSS selectors of the offending elements (at most 10 kept).
    pub targets: Vec<String>,
}

impl std::fmt::Display for AxeViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {}: {} ({}) at {}",
            self.impact,
            self.id,
            self.help,
            self.help_url,
            self.targets.join(", ")
        )
    }
}

/// What axe-core found on one page.
#[derive(Debug, Clone, Default)]
pub struct AxeReport {
    pub violations: Vec<AxeViolation>,
    /// How many rules passed (a report with none means axe did not really run).
    pub passes: u64,
}

impl AxeReport {
    /// The violations a person using assistive technology would be blocked or seriously hindered by.
    pub fn serious(&self) -> Vec<&AxeViolation> {
        self.violations
            .iter()
            .filter(|v| v.impact == "serious" || v.impact == "critical")
            .collect()
    }

    pub fn to_json(&self) -> String {
        let v: Vec<Value> = self
            .violations
            .iter()
            .map(|v| {
                serde_json::json!({
                    "id": v.id, "impact": v.impact, "help": v.help,
                    "helpUrl": v.help_url, "targets": v.targets,
                })
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({ "passes": self.passes, "violations": v }))
            .unwrap_or_default()
    }
}

/// Where axe-core's browser bundle is: `MYDATA_AXE_JS`, else the copy `npm ci` puts under
/// `tools/browser/`.
pub fn axe_path() -> PathBuf {
    std::env::var_os("MYDATA_AXE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../tools/browser/node_modules/axe-core/axe.min.js")
        })
}

fn axe_source() -> Result<&'static str, BrowserError> {
    static SOURCE: OnceLock<Result<String, BrowserError>> = OnceLock::new();
    SOURCE
        .get_or_init(|| {
            let path = axe_path();
            std::fs::read_to_string(&path)
                .map_err(|_| BrowserError::AxeMissing(path.display().to_string()))
        })
        .as_ref()
        .map(String::as_str)
        .map_err(Clone::clone)
}

const RUN: &str = r#"axe.run(document, {
  runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice'] },
  resultTypes: ['violations']
}).then(r => ({
  passes: r.passes.length,
  violations: r.violations.map(v => ({
    id: v.id, impact: v.impact || 'minor', help: v.help, helpUrl: v.helpUrl,
    targets: v.nodes.slice(0, 10).map(n => n.target.join(' '))
  }))
}))"#;

pub(crate) async fn run(page: &Page) -> Result<AxeReport, BrowserError> {
    let source = axe_source()?;
    if page.eval("typeof window.axe === 'object'").await? != Value::Bool(true) {
        page.eval(&format!("{source};\ntrue")).await?;
    }
    let r = page.eval(RUN).await?;
    let violations = r["violations"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|v| AxeViolation {
                    id: v["id"].as_str().unwrap_or_default().to_owned(),
                    impact: v["impact"].as_str().unwrap_or("minor").to_owned(),
                    help: v["help"].as_str().unwrap_or_default().to_owned(),
                    help_url: v["helpUrl"].as_str().unwrap_or_default().to_owned(),
                    targets: v["targets"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let passes = r["passes"].as_u64().unwrap_or(0);
    if passes == 0 {
        return Err(BrowserError::Script(
            "axe-core ran no rule on the page (was it injected?)".into(),
        ));
    }
    Ok(AxeReport { violations, passes })
}
