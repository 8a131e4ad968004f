//! The fields of each dataset, parsed from `catalog/fields.tsv`.

use std::collections::BTreeMap;

/// The value type of a field, as written in the `type` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    String,
    Date,
    Integer,
    Decimal,
    Boolean,
    /// One of the listed values.
    Enum(Vec<String>),
    IdNumber,
    Address,
    MoneyTwd,
}

impl FieldType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => Self::String,
            "date" => Self::Date,
            "integer" => Self::Integer,
            "decimal" => Self::Decimal,
            "boolean" => Self::Boolean,
            "id_number" => Self::IdNumber,
            "address" => Self::Address,
            "money_twd" => Self::MoneyTwd,
            _ => {
                let values: Vec<String> = s
                    .strip_prefix("enum:")?
                    .split('|')
                    .map(str::to_owned)
                    .collect();
                if values.iter().any(String::is_empty) {
                    return None;
                }
                Self::Enum(values)
            }
        })
    }
}

/// One field of one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Dataset number (`no` in datasets.tsv).
    pub no: u32,
    /// snake_case key.
    pub key: String,
    pub label_zh: String,
    pub ty: FieldType,
    /// True when named in public material (see fields-notes.md), false when inferred.
    pub documented: bool,
}

/// A malformed row of `fields.tsv`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fields.tsv line {line}: {message}")]
pub struct FieldError {
    pub line: usize,
    pub message: String,
}

const HEADER: [&str; 5] = ["no", "field_key", "label_zh", "type", "source"];

/// All fields, by dataset number, in file order.
#[derive(Debug, Clone)]
pub struct FieldTable {
    by_no: BTreeMap<u32, Vec<Field>>,
}

impl FieldTable {
    /// The table shipped in the repository's `catalog/` folder.
    pub fn embedded() -> Result<Self, FieldError> {
        Self::parse(include_str!("../../../catalog/fields.tsv"))
    }

    /// Parses the TSV text; `#` lines and blank lines are comments. Stops at the first bad row.
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        let mut by_no: BTreeMap<u32, Vec<Field>> = BTreeMap::new();
        let mut header_seen = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.strip_suffix('\r').unwrap_or(raw);
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            let cells: Vec<&str> = l.split('\t').collect();
            let err = |message: String| FieldError { line, message };
            if !header_seen {
                if cells != HEADER {
                    return Err(err(format!("header must be `{}`", HEADER.join(" "))));
                }
                header_seen = true;
                continue;
            }
            let [no, key, label, ty, source] = cells.as_slice() else {
                return Err(err(format!("has {} columns, expected 5", cells.len())));
            };
            let no: u32 = no
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| err(format!("`{no}` is not a dataset number")))?;
            let key_ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !key_ok {
                return Err(err(format!("`{key}` is not a snake_case key")));
            }
            if label.trim().is_empty() {
                return Err(err("label_zh is empty".to_owned()));
            }
            let ty = FieldType::parse(ty).ok_or_else(|| err(format!("unknown type `{ty}`")))?;
            let documented = match *source {
                "documented" => true,
                "inferred" => false,
                other => return Err(err(format!("unknown source `{other}`"))),
            };
            let fields = by_no.entry(no).or_default();
            if fields.iter().any(|f| f.key == *key) {
                return Err(err(format!("key `{key}` repeated for dataset {no}")));
            }
            fields.push(Field {
                no,
                key: (*key).to_owned(),
                label_zh: (*label).to_owned(),
                ty,
                documented,
            });
        }
        if !header_seen {
            return Err(FieldError {
                line: 0,
                message: "no header line".to_owned(),
            });
        }
        Ok(Self { by_no })
    }

    /// The fields of dataset `no`, in file order (empty if unknown).
    pub fn for_dataset(&self, no: u32) -> &[Field] {
        self.by_no.get(&no).map_or(&[], Vec::as_slice)
    }

    /// Dataset numbers that have fields.
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_no.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "# comment\nno\tfield_key\tlabel_zh\ttype\tsource\n";

    #[test]
    fn embedded_table_covers_every_dataset() {
        let t = FieldTable::embedded().unwrap();
        let catalog = mydata_core::Catalog::embedded().unwrap();
        for d in catalog.datasets() {
            let n = t.for_dataset(d.no).len();
            assert!((7..=15).contains(&n), "dataset {} has {n} fields", d.no);
        }
        assert_eq!(t.numbers().count(), catalog.datasets().len());
    }

    #[test]
    fn parses_types() {
        let t = FieldTable::parse(&format!(
            "{HEAD}1\ta\t甲\tenum:x|y\tdocumented\n1\tb\t乙\tmoney_twd\tinferred\n"
        ))
        .unwrap();
        let f = t.for_dataset(1);
        assert_eq!(f[0].ty, FieldType::Enum(vec!["x".into(), "y".into()]));
        assert!(f[0].documented && !f[1].documented);
        assert!(t.for_dataset(2).is_empty());
    }

    #[test]
    fn malformed_rows_are_errors() {
        let cases = [
            ("1\ta\t甲\tstring\n", 3, "columns"),
            ("x\ta\t甲\tstring\tinferred\n", 3, "dataset number"),
            ("1\tA-b\t甲\tstring\tinferred\n", 3, "snake_case"),
            ("1\ta\t甲\tstrin\tinferred\n", 3, "unknown type"),
            ("1\ta\t甲\tenum:x||y\tinferred\n", 3, "unknown type"),
            ("1\ta\t甲\tstring\tguessed\n", 3, "unknown source"),
            ("1\ta\t \tstring\tinferred\n", 3, "label_zh"),
            (
                "1\ta\t甲\tstring\tinferred\n1\ta\t乙\tdate\tinferred\n",
                4,
                "repeated",
            ),
        ];
        for (rows, line, msg) in cases {
            let e = FieldTable::parse(&format!("{HEAD}{rows}")).unwrap_err();
            assert_eq!(e.line, line, "{rows}");
            assert!(e.message.contains(msg), "{e}");
        }
        assert!(FieldTable::parse("1\ta\t甲\tstring\tinferred\n").is_err());
        assert_eq!(FieldTable::parse("").unwrap_err().line, 0);
    }
}
