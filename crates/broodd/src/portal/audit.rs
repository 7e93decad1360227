//! The ledger's audit log with filters (actor, reason, text in the
//! changes), `verify`, and utilization over time: the memory and vCPUs
//! each unit's VMs held, replayed from the audit log's moves between a
//! unit (`unit:<uuid>`) and its partitions, as `charge` in brood-ledger
//! replays them for chargeback.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use brood_api::{AuditEntry, AuditLog, VerifyReport};
use maud::{Markup, html};
use serde_json::Value;

use super::client::{ApiFailure, enc};
use super::html::step_chart;
use super::{Ctx, P, failed, render};

/// Entries fetched per page of the log view.
const LOG_PAGE: usize = 200;
/// Pages of the audit log read for the utilization chart (1000 entries each).
const UTILIZATION_PAGES: usize = 50;

/// `GET /ui/audit?actor=&reason=&text=&before=`.
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

async fn log_page(ctx: &Ctx, q: &BTreeMap<String, String>) -> Result<Markup, ApiFailure> {
    let mut path = format!("/v1/ledger/log?limit={LOG_PAGE}");
    if let Some(b) = q.get("before").filter(|b| !b.is_empty()) {
        let b: u64 = b.parse().map_err(|_| ApiFailure {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "bad_request".into(),
            message: format!("before must be a transaction id, not {b:?}"),
        })?;
        path.push_str(&format!("&before={b}"));
    }
    let log: AuditLog = ctx.api.get(&path).await?;
    let (actor, reason, text) = (field(q, "actor"), field(q, "reason"), field(q, "text"));
    let shown: Vec<&AuditEntry> = log
        .items
        .iter()
        .filter(|e| actor.is_empty() || e.actor == actor)
        .filter(|e| reason.is_empty() || e.reason.contains(reason))
        .filter(|e| text.is_empty() || e.changes.to_string().contains(text))
        .collect();
    let keep = format!(
        "actor={}&reason={}&text={}",
        enc(actor),
        enc(reason),
        enc(text)
    );
    Ok(html! {
        form.filters method="get" action="/ui/audit" role="search" {
            label { "Actor " input name="actor" value=(actor); }
            label { "Reason contains " input name="reason" value=(reason); }
            label { "Changes contain " input name="text" value=(text); }
            button type="submit" { "Filter" }
        }
        p.meta { (shown.len()) " of " (log.items.len()) " entries of this page match." }
        table.audit {
            thead { tr { th { "#" } th { "Time" } th { "Actor" } th { "Reason" } th { "Changes" } } }
            tbody { @for e in &shown { tr {
                td { (e.id) } td { (e.time) } td { (e.actor) } td { (e.reason) }
                td { details { summary { (e.changes.as_array().map_or(0, Vec::len)) " changes" }
                    pre { (serde_json::to_string_pretty(&e.changes).unwrap_or_default()) } } }
            } } }
        }
        @if let Some(n) = log.next { p { a href=(format!("/ui/audit?before={n}&{keep}")) { "Older entries" } } }
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
