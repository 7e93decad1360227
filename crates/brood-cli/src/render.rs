//! Text rendering shared by the broodd client commands: aligned tables,
//! key/value listings, units, the API's enum names, and pretty JSON for
//! `-o json`, and errors as JSON for `-o json`. What each command shows is
//! decided in its own module.

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

/// What a command run in a guest printed and how it ended: the one JSON
/// shape of `brood run -o json` and `brood vm exec -o json`. `exit_code`
/// is the status brood exits with (the command's code, 124 when its
/// timeout killed it, 128+N for signal N); the output is given as text
/// (`stdout`, invalid UTF-8 replaced) and exactly (`stdout_base64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandResult {
    /// The exit status brood exits with.
    pub exit_code: i32,
    /// The signal that ended the command, if one did.
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Standard output as text.
    pub stdout: String,
    /// Standard error as text.
    pub stderr: String,
    /// Standard output's bytes, base64.
    pub stdout_base64: String,
    /// Standard error's bytes, base64.
    pub stderr_base64: String,
    /// Standard output was cut at the output limit.
    pub stdout_truncated: bool,
    /// Standard error was cut at the output limit.
    pub stderr_truncated: bool,
}

/// How a command ended, as [`CommandResult::new`] takes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ending {
    /// The status brood exits with.
    pub exit_code: i32,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Standard output was cut.
    pub stdout_truncated: bool,
    /// Standard error was cut.
    pub stderr_truncated: bool,
}

impl CommandResult {
    /// The result of a command that ended so, having printed these bytes.
    pub fn new(end: Ending, stdout: &[u8], stderr: &[u8]) -> Self {
        use base64::Engine as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        CommandResult {
            exit_code: end.exit_code,
            signal: end.signal,
            timed_out: end.timed_out,
            stdout: String::from_utf8_lossy(stdout).into_owned(),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
            stdout_base64: b64.encode(stdout),
            stderr_base64: b64.encode(stderr),
            stdout_truncated: end.stdout_truncated,
            stderr_truncated: end.stderr_truncated,
        }
    }
}

/// An error as one line of JSON, for stderr under `-o json`: the API's
/// error shape (`{"error": {"code", "message"}}`) plus the HTTP `status`
/// when broodd refused the request. broodd's code is kept; an error of
/// brood's own (unreachable broodd, bad input file) has code `brood`.
pub fn error_json(e: &anyhow::Error) -> String {
    let mut code = "brood".to_string();
    let mut status = None;
    let parts: Vec<String> = e
        .chain()
        .map(|c| match c.downcast_ref::<crate::client::ClientError>() {
            Some(crate::client::ClientError::Api {
                status: s,
                code: c,
                message,
            }) => {
                code = wire_name(c);
                status = Some(*s);
                message.clone()
            }
            _ => c.to_string(),
        })
        .collect();
    let mut detail = serde_json::json!({"code": code, "message": parts.join(": ")});
    if let Some(s) = status {
        detail["status"] = s.into();
    }
    serde_json::json!({ "error": detail }).to_string()
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

    #[test]
    fn errors_as_json_keep_the_api_code() {
        let api = anyhow::Error::new(crate::client::ClientError::Api {
            status: 409,
            code: brood_api::ErrorCode::InvalidTransition,
            message: "web is saved: restore it first".into(),
        })
        .context("start web");
        let v: serde_json::Value = serde_json::from_str(&error_json(&api)).unwrap();
        assert_eq!(v["error"]["code"], "invalid_transition");
        assert_eq!(v["error"]["status"], 409);
        assert_eq!(
            v["error"]["message"],
            "start web: web is saved: restore it first"
        );
        let own = anyhow::anyhow!("no such file").context("read web.json");
        let v: serde_json::Value = serde_json::from_str(&error_json(&own)).unwrap();
        assert_eq!(v["error"]["code"], "brood");
        assert_eq!(v["error"]["message"], "read web.json: no such file");
        assert!(v["error"].get("status").is_none());
        assert!(!error_json(&own).contains('\n'));
    }
}
