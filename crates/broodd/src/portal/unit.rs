//! A unit's view: its allocation as bars (allocated, used, free per
//! resource), its VMs with live state, creating a VM or forking one from
//! the unit's templates, its service domains and its allocation or change
//! requests. An operator (admin, auditor) picks the unit with `?unit=`
//! and the API is called inside it (`brood-unit`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use brood_api::{PartitionList, TemplateList, Unit, UnitList, UnitRequestList};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::client::{ApiFailure, enc};
use super::html::{bar, csrf, unit_field, unit_query};
use super::{Ctx, Fields, P, Portal, done, failed, render};

/// `GET /ui/unit[?unit=NAME]`.
pub async fn view(
    State(p): P,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ctx = match p.ctx(&headers, q.get("unit").map(String::as_str)) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let body = match (&ctx.unit, q.get("part").map(String::as_str)) {
        // The pieces portal.js refreshes in place.
        (Some(u), Some("bars")) => {
            match ctx.api.get::<Unit>(&format!("/v1/units/{}", enc(u))).await {
                Ok(u) => return bars(&u).into_response(),
                Err(e) => Err(e),
            }
        }
        (Some(u), Some("vms")) => match ctx
            .api
            .get::<PartitionList>("/v1/partitions?limit=1000")
            .await
        {
            Ok(vms) => {
                let hidden = ctx.s.who.unit.is_none().then_some(u.as_str());
                return vm_rows(&ctx, &vms, hidden).into_response();
            }
            Err(e) => Err(e),
        },
        (Some(u), _) => unit_page(&ctx, u).await,
        (None, _) => pick_unit(&ctx).await,
    };
    match body {
        Ok(b) => render(&ctx, &title(&ctx), b),
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

fn title(ctx: &Ctx) -> String {
    match &ctx.unit {
        Some(u) => format!("Unit {u}"),
        None => "Units".into(),
    }
}

/// An operator outside any unit: the units to pick from.
async fn pick_unit(ctx: &Ctx) -> Result<Markup, ApiFailure> {
    let units: UnitList = ctx.api.get("/v1/units").await?;
    Ok(html! {
        p { "Pick a unit to act inside it." }
        @if units.items.is_empty() { p { "No unit is registered yet." } }
        ul.units {
            @for u in &units.items {
                li { a href=(format!("/ui/unit?unit={}", enc(&u.name))) { (u.name) } }
            }
        }
    })
}

/// The services serving one of the unit's VMs `vms` (an operator's list
/// of services is every unit's).
fn of_unit<'a>(all: &'a [Value], vms: &PartitionList) -> Vec<&'a Value> {
    all.iter()
        .filter(|s| {
            s.get("guests").and_then(Value::as_array).is_some_and(|g| {
                g.iter()
                    .filter_map(Value::as_str)
                    .any(|g| vms.items.iter().any(|v| v.name == g))
            })
        })
        .collect()
}

/// The bars of a unit's allocation.
pub fn bars(u: &Unit) -> Markup {
    html! {
        section.allocation aria-label="Allocation" data-unit=(u.name) {
            (bar("memory", "MiB", u.allocated.memory_mib, u.used.memory_mib, u.free.memory_mib))
            (bar("vcpus", "vCPUs", u.allocated.vcpus, u.used.vcpus, u.free.vcpus))
            (bar("disk", "GiB", u.allocated.disk_gib, u.used.disk_gib, u.free.disk_gib))
            (bar("nics", "NICs", u.allocated.nics, u.used.nics, u.free.nics))
        }
    }
}

async fn unit_page(ctx: &Ctx, name: &str) -> Result<Markup, ApiFailure> {
    let u: Unit = ctx.api.get(&format!("/v1/units/{}", enc(name))).await?;
    let vms: PartitionList = ctx.api.get("/v1/partitions?limit=1000").await?;
    let templates: TemplateList = ctx.api.get("/v1/templates").await?;
    let services: Value = ctx.api.get("/v1/services").await.unwrap_or(Value::Null);
    // Networks a new VM may join (none offered if the API refuses the list).
    let networks: Vec<String> = ctx
        .api
        .get::<brood_api::NetworkList>("/v1/networks")
        .await
        .map(|l| l.items.into_iter().map(|n| n.name).collect())
        .unwrap_or_default();
    let requests: UnitRequestList = ctx.api.get("/v1/requests").await?;
    let jobs: brood_api::JobList = ctx
        .api
        .get(&format!("/v1/jobs?limit={}", super::jobs::RECENT))
        .await?;
    let workflows: brood_api::WorkflowList = ctx.api.get("/v1/workflows").await?;
    let uq = unit_query(ctx.s.who.unit.is_none().then_some(name), true);
    let here = format!("/ui/unit{uq}");
    let hidden_unit = ctx.s.who.unit.is_none().then_some(name);
    // What a unit's user may not do (requests, chargeback) is not offered;
    // the API would refuse it anyway.
    let user_only = ctx.s.who.role == "unit-user";
    Ok(html! {
        div data-refresh=(format!("/ui/unit?part=bars{}", unit_query(hidden_unit, false))) { (bars(&u)) }
        p.meta.registration { "Registered " (u.created_at) " · contact " (u.contact) " · id " code { (u.uuid) } }
        p.meta { "Networks: " (join(&u.networks)) " · templates: " (join(&u.templates))
            @if !user_only { " · " a href=(format!("/ui/chargeback{uq}")) { "chargeback" } } }
        section aria-labelledby="vms-h" {
            h2 id="vms-h" { "VMs" }
            table.vms id="vms" data-events=(format!("/ui/events{uq}")) data-unit-q=(uq) {
                thead { tr { th { "Name" } th { "State" } th { "vCPUs" } th { "Memory" } th { "Actions" } } }
                tbody data-refresh=(format!("/ui/unit?part=vms{}", unit_query(hidden_unit, false))) {
                    (vm_rows(ctx, &vms, hidden_unit))
                }
            }
            p.live aria-live="polite" {}
        }
        section aria-labelledby="create-h" {
            h2 id="create-h" { "Create a VM" }
            form.create method="post" action="/ui/unit/vms" data-async {
                (csrf(&ctx.s)) (unit_field(hidden_unit))
                input type="hidden" name="back" value=(here);
                label { "Name " input name="name" required pattern="[a-z0-9][a-z0-9_.-]*" maxlength="64"; }
                label { "Memory (MiB) " input name="memory_mib" type="number" min="32" value="256"; }
                label { "vCPUs " input name="vcpus" type="number" min="1" max="255" value="1"; }
                label { "Image " input name="image" placeholder="default" maxlength="64"; }
                @if !networks.is_empty() {
                    label { "Network " select name="network" {
                        option value="" { "none" }
                        @for n in &networks { option value=(n) { (n) } } } }
                }
                label { "Requires " input name="requires" placeholder="dns,log" maxlength="256"; }
                label { input name="start" type="checkbox" value="true" checked; " start it" }
                button type="submit" { "Create" }
                div.result aria-live="polite" {}
            }
        }
        section aria-labelledby="jobs-h" {
            h2 id="jobs-h" { "Jobs" }
            (super::jobs::table(&jobs, None, &uq, true))
            p { a href=(format!("/ui/jobs{uq}")) { "All of the unit's jobs" } }
        }
        (super::jobs::workflows_section(ctx, &workflows, hidden_unit))
        section aria-labelledby="tpl-h" {
            h2 id="tpl-h" { "Templates" }
            @if templates.items.is_empty() { p { "No template this unit may fork from." } }
            @for t in &templates.items {
                form.fork method="post" action=(format!("/ui/templates/{}/fork", enc(&t.name))) data-async {
                    (csrf(&ctx.s)) (unit_field(hidden_unit))
                    input type="hidden" name="back" value=(here);
                    span { (t.name) " (" (t.memory_mib) " MiB, " (t.vcpus) " vCPUs, " (t.children.len()) " children)" }
                    label { " children " input name="count" type="number" min="1" max="256" value="1"; }
                    button type="submit" { "Fork" }
                    div.result aria-live="polite" {}
                }
            }
        }
        section aria-labelledby="svc-h" {
            h2 id="svc-h" { "Service domains" }
            @match services.get("items").and_then(Value::as_array).map(|all| of_unit(all, &vms)) {
                Some(items) if !items.is_empty() => {
                    table { thead { tr { th { "Name" } th { "Class" } th { "State" } th { "Addresses" } } }
                        tbody { @for s in items { tr {
                            td { (str_of(s, "name")) } td { (str_of(s, "class")) } td { (str_of(s, "state")) }
                            td { (s.get("addresses").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                        } } } }
                }
                _ => { p { "No service domain." } }
            }
        }
        section aria-labelledby="req-h" {
            h2 id="req-h" { "Allocation requests" }
            (requests_table(&requests))
            @if !user_only { form.request method="post" action="/ui/unit/requests" data-async {
                (csrf(&ctx.s)) (unit_field(hidden_unit))
                input type="hidden" name="back" value=(here);
                p { "Ask for the whole allocation you want (a change grows or shrinks it):" }
                label { "vCPUs " input name="vcpus" type="number" min="0" value=(u.allocated.vcpus); }
                label { "Memory (MiB) " input name="memory_mib" type="number" min="0" value=(u.allocated.memory_mib); }
                label { "Disk (GiB) " input name="disk_gib" type="number" min="0" value=(u.allocated.disk_gib); }
                label { "NICs " input name="nics" type="number" min="0" value=(u.allocated.nics); }
                button type="submit" { "Request" }
                div.result aria-live="polite" {}
            } }
        }
    })
}

/// The rows of the VMs table.
fn vm_rows(ctx: &Ctx, vms: &PartitionList, hidden_unit: Option<&str>) -> Markup {
    let uq = unit_query(hidden_unit, true);
    let here = format!("/ui/unit{uq}");
    html! {
        @for vm in &vms.items {
            @let cfg = vm.configs.get(&vm.active_config);
            tr data-vm=(vm.name) {
                td { a href=(format!("/ui/vms/{}{uq}", enc(&vm.name))) { (vm.name) } }
                td.state { (serde_plain(&vm.run_state)) }
                td { (cfg.map_or(0, |c| c.vcpus)) }
                td { (cfg.map_or(0, |c| c.memory_mib)) " MiB" }
                td { (vm_actions(ctx, &vm.name, hidden_unit, &here)) }
            }
        }
    }
}

/// A table of requests.
pub fn requests_table(r: &UnitRequestList) -> Markup {
    html! {
        @if r.items.is_empty() { p { "No request." } } @else {
            table.requests { thead { tr { th { "#" } th { "Unit" } th { "Wants" } th { "State" } th { "Granted" } th { "Note" } } }
                tbody { @for q in &r.items { tr data-request=(q.id) {
                    td { (q.id) } td { (q.unit) }
                    td { (res(&q.want)) }
                    td.state { (serde_plain(&q.state)) }
                    td { (q.granted.as_ref().map(res).unwrap_or_default()) }
                    td { (q.note.clone().unwrap_or_default()) }
                } } } }
        }
    }
}

/// Resources in one line.
pub fn res(r: &brood_api::Resources) -> String {
    format!(
        "{} vCPUs, {} MiB, {} GiB, {} NICs",
        r.vcpus, r.memory_mib, r.disk_gib, r.nics
    )
}

/// The start, stop and delete buttons of a VM.
pub fn vm_actions(ctx: &Ctx, name: &str, unit: Option<&str>, back: &str) -> Markup {
    html! {
        form.actions method="post" action=(format!("/ui/vms/{}/action", enc(name))) data-async {
            (csrf(&ctx.s)) (unit_field(unit))
            input type="hidden" name="back" value=(back);
            button type="submit" name="op" value="start" { "Start" }
            button type="submit" name="op" value="stop" { "Stop" }
            button type="submit" name="op" value="delete" data-confirm=(format!("Delete {name} and its disks?")) { "Delete" }
            span.result aria-live="polite" {}
        }
    }
}

/// An enum as its wire name (`running`).
pub fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn join(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// A string field of a JSON object, or "".
pub fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// A number field of a form: absent or empty is `None`; anything else must parse.
pub fn number(f: &BTreeMap<String, String>, k: &str) -> Result<Option<u64>, ApiFailure> {
    match f.get(k).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| ApiFailure {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "bad_request".into(),
            message: format!("{k} must be a whole number, not {s:?}"),
        }),
    }
}

/// Runs a post: checks the session and CSRF, then `run`; shows its message or the API's error.
pub async fn run_post<F>(
    p: Arc<Portal>,
    headers: HeaderMap,
    f: BTreeMap<String, String>,
    run: F,
) -> Response
where
    F: AsyncFnOnce(&Ctx, &BTreeMap<String, String>) -> Result<String, ApiFailure>,
{
    let ctx = match p.post_ctx(&headers, &f) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match run(&ctx, &f).await {
        Ok(msg) => done(&ctx, &f, &msg),
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

/// `POST /ui/unit/vms`: defines a VM (and starts it) with `POST /v1/partitions`.
pub async fn create_vm(State(p): P, headers: HeaderMap, Form(f): Fields) -> Response {
    run_post(
        p,
        headers,
        f,
        async |ctx: &Ctx, f: &BTreeMap<String, String>| {
            let name = f.get("name").map(|s| s.trim()).unwrap_or_default();
            let mut cfg = serde_json::Map::new();
            if let Some(m) = number(f, "memory_mib")? {
                cfg.insert("memory_mib".into(), json!(m));
            }
            if let Some(v) = number(f, "vcpus")? {
                cfg.insert("vcpus".into(), json!(v));
            }
            let text = |k: &str| f.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
            if let Some(image) = text("image") {
                cfg.insert("image".into(), json!(image));
            }
            if let Some(network) = text("network") {
                cfg.insert("nics".into(), json!([{"network": network}]));
            }
            if let Some(r) = text("requires") {
                let classes: Vec<&str> = r
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect();
                cfg.insert("requires".into(), json!(classes));
            }
            let start = f.get("start").is_some_and(|v| v == "true" || v == "on");
            let body = json!({"name": name, "configs": {"default": cfg}, "start": start});
            let vm: brood_api::Partition = ctx
                .api
                .json(axum::http::Method::POST, "/v1/partitions", Some(&body))
                .await?;
            Ok(format!("{} is {}", vm.name, serde_plain(&vm.run_state)))
        },
    )
    .await
}

/// `POST /ui/templates/{name}/fork`: `POST /v1/templates/{name}/fork`.
pub async fn fork(
    State(p): P,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    run_post(
        p,
        headers,
        f,
        async move |ctx: &Ctx, f: &BTreeMap<String, String>| {
            let count = number(f, "count")?.unwrap_or(1);
            let out = ctx
                .api
                .post(
                    &format!("/v1/templates/{}/fork", enc(&name)),
                    &json!({"count": count}),
                )
                .await?;
            let children: Vec<&str> = out
                .get("children")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.get("name").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            Ok(format!(
                "forked {}",
                if children.is_empty() {
                    count.to_string()
                } else {
                    children.join(", ")
                }
            ))
        },
    )
    .await
}

/// `POST /ui/unit/requests`: `POST /v1/units/{unit}/requests`.
pub async fn request(State(p): P, headers: HeaderMap, Form(f): Fields) -> Response {
    run_post(
        p,
        headers,
        f,
        async |ctx: &Ctx, f: &BTreeMap<String, String>| {
            let Some(unit) = ctx.unit.clone() else {
                return Err(ApiFailure {
                    status: axum::http::StatusCode::BAD_REQUEST,
                    code: "bad_request".into(),
                    message: "pick a unit first".into(),
                });
            };
            let mut body = serde_json::Map::new();
            for k in ["vcpus", "memory_mib", "disk_gib", "nics"] {
                if let Some(v) = number(f, k)? {
                    body.insert(k.into(), json!(v));
                }
            }
            let r = ctx
                .api
                .post(
                    &format!("/v1/units/{}/requests", enc(&unit)),
                    &Value::Object(body),
                )
                .await?;
            Ok(format!(
                "request {} is {}",
                r.get("id").cloned().unwrap_or(Value::Null),
                str_of(&r, "state")
            ))
        },
    )
    .await
}
