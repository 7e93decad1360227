//! Text rendering shared by the broodd client commands: aligned tables,
//! key/value listings, units, the API's enum names, and pretty JSON for
//! `-o json`. What each command shows is decided in its own module.

use anyhow::Result;
use brood_api::Resources;
use serde::Serialize;

/// A table with a header row; columns are separated by two spaces.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<usize>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_string()).collect(),
            rows: Vec::new(),
            right: Vec::new(),
        }
    }

    /// Aligns these columns (by index) to the right, for numbers.
    pub fn right(mut self, columns: &[usize]) -> Self {
        self.right = columns.to_vec();
        self
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines, each ending in a newline, without trailing blanks.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let cell = |row: &[String], i: usize| row.get(i).cloned().unwrap_or_default();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(row, i).chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate().take(n) {
                let text = cell(row, i);
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = width.saturating_sub(text.chars().count());
                if self.right.contains(&i) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(&text);
                } else {
                    line.push_str(&text);
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key/value lines with the values aligned; an empty key continues the
/// previous entry.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let line = format!("{k:<width$}  {v}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The name an enum has on the wire (`running`, `invalid_transition`).
pub fn wire_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

/// Parses a wire name into an API enum; `-` may stand for `_`
/// (`on-failure`). `choices` lists the valid names for the message.
pub fn parse_wire<T: serde::de::DeserializeOwned>(s: &str, choices: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
        .map_err(|_| format!("{s:?} is not one of {choices}"))
}

/// `512 MiB`.
pub fn mib(n: u64) -> String {
    crate::units::human_mib(n)
}

/// An optional value, `-` when absent.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `512 MiB, 2 vCPUs, 10 GiB disk, 1 NIC`.
pub fn resources(r: &Resources) -> String {
    format!(
        "{}, {} vCPU{}, {} GiB disk, {} NIC{}",
        mib(r.memory_mib),
        r.vcpus,
        plural(r.vcpus),
        r.disk_gib,
        r.nics,
        plural(r.nics)
    )
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Prints a value as pretty JSON on stdout (`-o json`).
pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use brood_api::{RestartPolicy, RunState};

    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["NAME", "VCPUS", "PID"]).right(&[1]);
        t.row(vec!["web".into(), "2".into(), "-".into()]);
        t.row(vec!["database-1".into(), "16".into()]);
        assert_eq!(
            t.render(),
            "NAME        VCPUS  PID\n\
             web             2  -\n\
             database-1     16\n"
        );
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
    }

    #[test]
    fn key_values_align() {
        let s = key_values(&[
            ("name", "web".into()),
            ("disks", "a".into()),
            ("", "b".into()),
        ]);
        assert_eq!(s, "name   web\ndisks  a\n       b\n");
    }

    #[test]
    fn wire_names_round_trip() {
        assert_eq!(wire_name(&RunState::Running), "running");
        assert_eq!(wire_name(&RestartPolicy::OnFailure), "on_failure");
        assert_eq!(
            parse_wire::<RestartPolicy>("on-failure", "x"),
            Ok(RestartPolicy::OnFailure)
        );
        let e = parse_wire::<RestartPolicy>("sometimes", "never|on-failure|always").unwrap_err();
        assert!(e.contains("never|on-failure|always"), "{e}");
    }

    #[test]
    fn units() {
        let r = Resources {
            memory_mib: 512,
            vcpus: 1,
            disk_gib: 10,
            nics: 2,
        };
        assert_eq!(resources(&r), "512 MiB, 1 vCPU, 10 GiB disk, 2 NICs");
        assert_eq!(or_dash(Some(3)), "3");
        assert_eq!(or_dash(None::<u32>), "-");
    }
}
