//! The ledger's audit log with filters (actor, reason, text in the
//! changes), `verify`, and utilization over time: the memory and vCPUs
//! each unit's VMs held, replayed from the audit log's moves between a
//! unit (`unit:<uuid>`) and its partitions, as `charge` in brood-ledger
//! replays them for chargeback.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use brood_api::{AuditEntry, AuditLog, VerifyReport};
use maud::{Markup, html};
use serde_json::Value;

use super::client::{ApiFailure, enc};
use super::html::step_chart;
use super::{Ctx, P, failed, render};

/// Most matching entries one page of the log view shows.
const LOG_PAGE: usize = 200;
/// Entries read per call to the API while filtering.
const SCAN_PAGE: usize = 1000;
/// Most entries one page of the log view reads to find its matches; the
/// page then links to the older entries from where it stopped.
const SCAN_MAX: usize = 20_000;
/// Pages of the audit log read for the utilization chart (1000 entries each).
const UTILIZATION_PAGES: usize = 50;

/// `GET /ui/audit?actor=&reason=&text=&since=&until=&before=`.
pub async fn log(
    State(p): P,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ctx = match p.ctx(&headers, None) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match log_page(&ctx, &q).await {
        Ok(b) => render(&ctx, "Audit log", b),
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

fn field<'a>(q: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    q.get(k).map(|s| s.trim()).unwrap_or_default()
}

fn bad(message: String) -> ApiFailure {
    ApiFailure {
        status: axum::http::StatusCode::BAD_REQUEST,
        code: "bad_request".into(),
        message,
    }
}

/// A filter's time bound: an RFC 3339 time or a date (`2026-12-01`,
/// midnight UTC; `until` a date means the end of that day).
fn bound(
    q: &BTreeMap<String, String>,
    k: &str,
    end_of_day: bool,
) -> Result<Option<SystemTime>, ApiFailure> {
    let v = field(q, k);
    if v.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(v) {
        return Ok(Some(t));
    }
    let day = humantime::parse_rfc3339_weak(&format!("{v} 00:00:00")).map_err(|_| {
        bad(format!(
            "{k} must be a date (2026-12-01) or a time (2026-12-01T10:00:00Z), not {v:?}"
        ))
    })?;
    Ok(Some(if end_of_day {
        day + Duration::from_secs(86_400)
    } else {
        day
    }))
}

/// The filters of the log view, parsed.
struct Filter<'a> {
    actor: &'a str,
    reason: &'a str,
    text: &'a str,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
}

impl Filter<'_> {
    fn matches(&self, e: &AuditEntry) -> bool {
        let t = humantime::parse_rfc3339_weak(&e.time).ok();
        (self.actor.is_empty() || e.actor == self.actor)
            && (self.reason.is_empty() || e.reason.contains(self.reason))
            && (self.text.is_empty() || e.changes.to_string().contains(self.text))
            && self.since.is_none_or(|s| t.is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| t.is_some_and(|t| t < u))
    }
}

async fn log_page(ctx: &Ctx, q: &BTreeMap<String, String>) -> Result<Markup, ApiFailure> {
    let mut before: Option<u64> = match q.get("before").filter(|b| !b.is_empty()) {
        Some(b) => Some(
            b.parse()
                .map_err(|_| bad(format!("before must be a transaction id, not {b:?}")))?,
        ),
        None => None,
    };
    let f = Filter {
        actor: field(q, "actor"),
        reason: field(q, "reason"),
        text: field(q, "text"),
        since: bound(q, "since", false)?,
        until: bound(q, "until", true)?,
    };
    // Newest first: read pages until the view is full, the log ends, the
    // entries are older than `since`, or SCAN_MAX entries were read.
    let mut shown: Vec<AuditEntry> = Vec::new();
    let mut scanned = 0usize;
    let mut next: Option<u64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/v1/ledger/log?limit={SCAN_PAGE}&before={b}"),
            None => format!("/v1/ledger/log?limit={SCAN_PAGE}"),
        };
        let page: AuditLog = ctx.api.get(&path).await?;
        let mut older_than_since = false;
        let mut cut = None;
        for e in page.items {
            scanned += 1;
            if let Some(s) = f.since
                && humantime::parse_rfc3339_weak(&e.time).is_ok_and(|t| t < s)
            {
                older_than_since = true;
                break;
            }
            if f.matches(&e) {
                let id = e.id;
                shown.push(e);
                if shown.len() == LOG_PAGE {
                    cut = Some(id);
                    break;
                }
            }
        }
        if older_than_since {
            next = None;
            break;
        }
        if let Some(id) = cut {
            next = Some(id);
            break;
        }
        match page.next {
            Some(n) if scanned < SCAN_MAX => before = Some(n),
            Some(n) => {
                next = Some(n);
                break;
            }
            None => break,
        }
    }
    let keep = format!(
        "actor={}&reason={}&text={}&since={}&until={}",
        enc(f.actor),
        enc(f.reason),
        enc(f.text),
        enc(field(q, "since")),
        enc(field(q, "until"))
    );
    Ok(html! {
        form.filters method="get" action="/ui/audit" role="search" {
            label { "Actor " input name="actor" value=(f.actor); }
            label { "Reason contains " input name="reason" value=(f.reason); }
            label { "Changes contain " input name="text" value=(f.text); }
            label { "Since " input name="since" placeholder="2026-12-01" value=(field(q, "since")); }
            label { "Until " input name="until" placeholder="2026-12-31" value=(field(q, "until")); }
            button type="submit" { "Filter" }
        }
        p.meta data-matches=(shown.len()) { (shown.len()) " matching entries, of " (scanned) " read." }
        table.audit {
            thead { tr { th { "#" } th { "Time" } th { "Actor" } th { "Reason" } th { "Changes" } } }
            tbody { @for e in &shown { tr data-tx=(e.id) {
                td { (e.id) } td { (e.time) } td { (e.actor) } td { (e.reason) }
                td { details { summary { (e.changes.as_array().map_or(0, Vec::len)) " changes" }
                    pre { (serde_json::to_string_pretty(&e.changes).unwrap_or_default()) } } }
            } } }
        }
        @if let Some(n) = next { p { a href=(format!("/ui/audit?before={n}&{keep}")) { "Older entries" } } }
    })
}

/// `GET /ui/verify`: `GET /v1/ledger/verify`.
pub async fn verify(State(p): P, headers: HeaderMap) -> Response {
    let ctx = match p.ctx(&headers, None) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let r: Result<VerifyReport, _> = ctx.api.get("/v1/ledger/verify").await;
    match r {
        Ok(v) => render(
            &ctx,
            "Verify",
            html! {
                @if v.ok { p.notice role="status" { "The ledger is consistent and agrees with the QEMU processes." } }
                @else { p.error role="alert" { (v.problems.len()) " problems" } }
                @if !v.problems.is_empty() {
                    table { thead { tr { th { "Code" } th { "Problem" } } }
                        tbody { @for pr in &v.problems { tr { td { code { (pr.code) } } td { (pr.message) } } } } }
                }
                h2 { "Checked" }
                table { tbody { @for (k, n) in &v.checked { tr { th { (k) } td { (n) } } } } }
            },
        ),
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

/// Reads the whole audit log (oldest first, at most [`UTILIZATION_PAGES`] pages).
async fn whole_log(ctx: &Ctx) -> Result<Vec<AuditEntry>, ApiFailure> {
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    for _ in 0..UTILIZATION_PAGES {
        let path = match before {
            Some(b) => format!("/v1/ledger/log?limit=1000&before={b}"),
            None => "/v1/ledger/log?limit=1000".to_string(),
        };
        let page: AuditLog = ctx.api.get(&path).await?;
        all.extend(page.items);
        match page.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    all.reverse();
    Ok(all)
}

/// Per unit, the (seconds since the first entry, memory MiB, vCPUs) its VMs held after each change.
pub fn replay(entries: &[AuditEntry]) -> BTreeMap<String, Vec<(f64, u64, u64)>> {
    let t0 = entries
        .first()
        .and_then(|e| humantime::parse_rfc3339_weak(&e.time).ok());
    let mut names: HashMap<String, String> = HashMap::new();
    let mut held: HashMap<String, (u64, u64)> = HashMap::new();
    let mut out: BTreeMap<String, Vec<(f64, u64, u64)>> = BTreeMap::new();
    for e in entries {
        let t = match (t0, humantime::parse_rfc3339_weak(&e.time).ok()) {
            (Some(a), Some(b)) => b.duration_since(a).map_or(0.0, |d| d.as_secs_f64()),
            _ => 0.0,
        };
        for c in e.changes.as_array().map(Vec::as_slice).unwrap_or_default() {
            let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
            match s("op") {
                "unit_register" => {
                    if let Some(n) = c.pointer("/after/name").and_then(Value::as_str) {
                        names.insert(s("unit").to_owned(), n.to_owned());
                    }
                }
                "move" => {
                    let owner = |side: &str| {
                        c.pointer(&format!("/{side}/owner"))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                    };
                    let (from, to) = (owner("from"), owner("to"));
                    let is_vm = |o: &str| o != "available" && !o.starts_with("unit:");
                    let (unit, grows) = match (from.strip_prefix("unit:"), to.strip_prefix("unit:"))
                    {
                        (Some(u), None) if is_vm(to) => (u, true),
                        (None, Some(u)) if is_vm(from) => (u, false),
                        _ => continue,
                    };
                    let amount = c.get("amount").and_then(Value::as_u64).unwrap_or(0);
                    let h = held.entry(unit.to_owned()).or_default();
                    let slot = match s("kind") {
                        "memory_mib" => &mut h.0,
                        "vcpus" => &mut h.1,
                        _ => continue,
                    };
                    *slot = if grows {
                        slot.saturating_add(amount)
                    } else {
                        slot.saturating_sub(amount)
                    };
                    let (m, v) = *h;
                    let name = names.get(unit).cloned().unwrap_or_else(|| unit.to_owned());
                    out.entry(name).or_default().push((t, m, v));
                }
                _ => {}
            }
        }
    }
    out
}

/// The utilization charts (memory, vCPUs) per unit.
pub async fn utilization(ctx: &Ctx) -> Result<Markup, ApiFailure> {
    let log = whole_log(ctx).await?;
    let per_unit = replay(&log);
    if per_unit.is_empty() {
        return Ok(html! { p { "No unit's VM has held anything yet." } });
    }
    let mem: Vec<(String, Vec<(f64, f64)>)> = per_unit
        .iter()
        .map(|(u, p)| {
            (
                u.clone(),
                p.iter().map(|(t, m, _)| (*t, *m as f64)).collect(),
            )
        })
        .collect();
    let cpu: Vec<(String, Vec<(f64, f64)>)> = per_unit
        .iter()
        .map(|(u, p)| {
            (
                u.clone(),
                p.iter().map(|(t, _, v)| (*t, *v as f64)).collect(),
            )
        })
        .collect();
    let since = log.first().map(|e| e.time.clone()).unwrap_or_default();
    Ok(html! {
        p.meta { "Since " (since) ", from " (log.len()) " audit entries." }
        div.charts {
            (step_chart("Memory held per unit (MiB)", "MiB", &mem))
            (step_chart("vCPUs held per unit", "vCPUs", &cpu))
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(id: u64, time: &str, changes: Value) -> AuditEntry {
        AuditEntry {
            id,
            time: time.into(),
            actor: "admin".into(),
            reason: "r".into(),
            changes,
        }
    }

    #[test]
    fn moves_between_a_unit_and_its_vms_are_replayed() {
        let u = "11111111-1111-1111-1111-111111111111";
        let vm = "22222222-2222-2222-2222-222222222222";
        let log = vec![
            entry(
                1,
                "2026-01-01T00:00:00Z",
                json!([{"op":"unit_register","unit":u,"after":{"name":"eng"}}]),
            ),
            entry(
                2,
                "2026-01-01T00:00:10Z",
                json!([
                    {"op":"move","kind":"memory_mib","amount":512,"from":{"owner":format!("unit:{u}")},"to":{"owner":vm}},
                    {"op":"move","kind":"vcpus","amount":2,"from":{"owner":format!("unit:{u}")},"to":{"owner":vm}},
                    {"op":"move","kind":"vcpus","amount":9,"from":{"owner":"available"},"to":{"owner":format!("unit:{u}")}}
                ]),
            ),
            entry(
                3,
                "2026-01-01T00:01:00Z",
                json!([
                    {"op":"move","kind":"memory_mib","amount":512,"from":{"owner":vm},"to":{"owner":format!("unit:{u}")}}
                ]),
            ),
        ];
        let r = replay(&log);
        let eng = r.get("eng").expect("eng");
        assert_eq!(eng, &vec![(10.0, 512, 0), (10.0, 512, 2), (60.0, 0, 2)]);
    }

    #[test]
    fn hostile_changes_are_skipped() {
        let log = vec![entry(
            1,
            "not a time",
            json!([{"op":"move"}, 7, null, {"op":"move","from":{"owner":5}}]),
        )];
        assert!(replay(&log).is_empty());
    }
}
