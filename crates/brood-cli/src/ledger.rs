//! `brood ledger ...`: broodd's resource ledger, its audit log and its
//! self-check. The ledger itself is broodd's; this module only reads it.

use anyhow::Result;
use brood_api::{AuditEntry, AuditLog, LedgerView, VerifyReport};
use clap::Subcommand;
use serde_json::Value;

use crate::Output;
use crate::client::Client;
use crate::render::{Table, mib, print_json, resources};

/// Longest rendering of one change before it is cut.
const CHANGE_CHARS: usize = 160;

/// Commands on broodd's resource ledger.
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Show who holds what, and the host's capacity.
    #[command(after_help = "Examples:
  brood ledger show
  brood ledger show -o json")]
    Show,
    /// Show committed transactions, newest first.
    #[command(after_help = "Examples:
  brood ledger log
  brood ledger log --limit 100 -o json")]
    Log {
        /// Show at most N transactions.
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
    },
    /// Check the ledger's invariants against each other and the host.
    #[command(after_help = "Examples:
  brood ledger verify && echo consistent

Exit status: 0 when every invariant holds, 1 when one does not.")]
    Verify,
}

/// Runs a `brood ledger` command; returns the exit code.
pub async fn run(cmd: LedgerCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        LedgerCmd::Show => {
            let view: LedgerView = client.get("/v1/ledger").await?;
            match out {
                Output::Json => print_json(&view)?,
                Output::Text => print!("{}", holdings(&view)),
            }
            Ok(0)
        }
        LedgerCmd::Log { limit } => {
            let log = log(client, limit).await?;
            match out {
                Output::Json => print_json(&log)?,
                Output::Text => log.items.iter().for_each(|e| print!("{}", entry(e))),
            }
            Ok(0)
        }
        LedgerCmd::Verify => {
            let report: VerifyReport = client.get("/v1/ledger/verify").await?;
            match out {
                Output::Json => print_json(&report)?,
                Output::Text => print!("{}", verdict(&report)),
            }
            Ok(if report.ok { 0 } else { 1 })
        }
    }
}

/// Pages back through the audit log until `limit` entries or its start.
async fn log(client: &Client, limit: usize) -> Result<AuditLog> {
    let page = limit.clamp(1, brood_api::MAX_PAGE);
    let mut all = AuditLog {
        items: Vec::new(),
        next: None,
    };
    let mut before: Option<u64> = None;
    while all.items.len() < limit {
        let mut path = format!("/v1/ledger/log?limit={page}");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        let got: AuditLog = client.get(&path).await?;
        all.items.extend(got.items);
        all.next = got.next;
        match all.next {
            // Ids fall page by page; one that does not would loop for ever.
            Some(n) if before.is_none_or(|b| n < b) => before = Some(n),
            _ => break,
        }
    }
    if all.items.len() > limit {
        all.items.truncate(limit);
        all.next = all.items.last().map(|e| e.id);
    }
    Ok(all)
}

/// The table of `brood ledger show`, after a capacity line.
pub fn holdings(view: &LedgerView) -> String {
    let mut t = Table::new(&["OWNER", "MEMORY", "VCPUS", "DISK", "NICS"]).right(&[1, 2, 3, 4]);
    for o in &view.owners {
        t.row(vec![
            o.owner.clone(),
            mib(o.holds.memory_mib),
            o.holds.vcpus.to_string(),
            format!("{} GiB", o.holds.disk_gib),
            o.holds.nics.to_string(),
        ]);
    }
    format!("capacity: {}\n{}", resources(&view.capacity), t.render())
}

/// One audit entry: a heading line, then one indented line per change.
pub fn entry(e: &AuditEntry) -> String {
    let mut s = format!("#{}  {}  {}  {}\n", e.id, e.time, e.actor, e.reason);
    for line in change_lines(&e.changes) {
        s.push_str("    ");
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// The verdict of `brood ledger verify`: `ok`, or one line per problem.
pub fn verdict(r: &VerifyReport) -> String {
    if r.ok {
        return "ok\n".to_string();
    }
    if r.problems.is_empty() {
        return "not ok (broodd named no problem)\n".to_string();
    }
    r.problems
        .iter()
        .map(|p| format!("{}: {}\n", p.code, p.message))
        .collect()
}

/// Renders an entry's changes compactly, whatever their exact shape: a list
/// or map of `{before, after, ...}` images becomes `label: before -> after`.
pub fn change_lines(changes: &Value) -> Vec<String> {
    let lines = match changes {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().map(change).collect(),
        Value::Object(map) if !is_image_pair(changes) => map
            .iter()
            .map(|(k, v)| format!("{k}: {}", change(v)))
            .collect(),
        other => vec![change(other)],
    };
    lines.into_iter().map(|l| cut(&l)).collect()
}

fn is_image_pair(v: &Value) -> bool {
    v.get("before").is_some() || v.get("after").is_some()
}

fn change(v: &Value) -> String {
    let Value::Object(map) = v else {
        return compact(v);
    };
    if !is_image_pair(v) {
        return compact(v);
    }
    let label: Vec<String> = map
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "before" | "after"))
        .map(|(k, v)| format!("{k}={}", compact(v)))
        .collect();
    let before = compact(map.get("before").unwrap_or(&Value::Null));
    let after = compact(map.get("after").unwrap_or(&Value::Null));
    if label.is_empty() {
        format!("{before} -> {after}")
    } else {
        format!("{}: {before} -> {after}", label.join(" "))
    }
}

/// JSON without quotes and braces noise: `{memory_mib=256 vcpus=1}`, `-` for null.
fn compact(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(compact).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{k}={}", compact(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() <= CHANGE_CHARS {
        return s.to_string();
    }
    let mut c: String = s.chars().take(CHANGE_CHARS - 1).collect();
    c.push('…');
    c
}

#[cfg(test)]
mod tests {
    use brood_api::{OwnerHoldings, Problem, Resources};
    use serde_json::json;

    use super::*;

    #[test]
    fn holdings_table() {
        let r = |m, v, d, n| Resources {
            memory_mib: m,
            vcpus: v,
            disk_gib: d,
            nics: n,
        };
        let view = LedgerView {
            capacity: r(8192, 16, 100, 32),
            owners: vec![
                OwnerHoldings {
                    owner: "available".into(),
                    uuid: None,
                    holds: r(7680, 14, 90, 31),
                },
                OwnerHoldings {
                    owner: "web".into(),
                    uuid: None,
                    holds: r(512, 2, 10, 1),
                },
            ],
        };
        assert_eq!(
            holdings(&view),
            "capacity: 8 GiB, 16 vCPUs, 100 GiB disk, 32 NICs\n\
             OWNER       MEMORY  VCPUS    DISK  NICS\n\
             available  7.5 GiB     14  90 GiB    31\n\
             web        512 MiB      2  10 GiB     1\n"
        );
    }

    #[test]
    fn changes_render_compactly() {
        let changes = json!([
            {"owner": "web", "before": null, "after": {"memory_mib": 256, "vcpus": 1}},
            {"owner": "available", "before": {"memory_mib": 512}, "after": {"memory_mib": 256}},
        ]);
        assert_eq!(
            change_lines(&changes),
            [
                "owner=web: - -> {memory_mib=256 vcpus=1}",
                "owner=available: {memory_mib=512} -> {memory_mib=256}",
            ]
        );
        let keyed =
            json!({"web": {"before": {"stage": "construction"}, "after": {"stage": "operating"}}});
        assert_eq!(
            change_lines(&keyed),
            ["web: {stage=construction} -> {stage=operating}"]
        );
        assert_eq!(change_lines(&json!({"before": 1, "after": 2})), ["1 -> 2"]);
        assert_eq!(change_lines(&json!("freeform")), ["freeform"]);
        assert!(change_lines(&Value::Null).is_empty());
        let long = json!([{"after": "x".repeat(500)}]);
        assert_eq!(change_lines(&long)[0].chars().count(), CHANGE_CHARS);
    }

    #[test]
    fn entry_has_heading_and_changes() {
        let e = AuditEntry {
            id: 7,
            time: "2025-01-01T00:00:00Z".into(),
            actor: "cli".into(),
            reason: "define web".into(),
            changes: json!([{"owner": "web", "before": null, "after": {"nics": 1}}]),
        };
        assert_eq!(
            entry(&e),
            "#7  2025-01-01T00:00:00Z  cli  define web\n    owner=web: - -> {nics=1}\n"
        );
    }

    #[test]
    fn verdicts() {
        let mut r = VerifyReport {
            ok: true,
            problems: Vec::new(),
            checked: Default::default(),
        };
        assert_eq!(verdict(&r), "ok\n");
        r.ok = false;
        r.problems.push(Problem {
            code: "sum_mismatch".into(),
            message: "memory sums to 9000 MiB, capacity is 8192 MiB".into(),
        });
        assert_eq!(
            verdict(&r),
            "sum_mismatch: memory sums to 9000 MiB, capacity is 8192 MiB\n"
        );
    }
}
