//! The administrator's view: the host's capacity and who holds it,
//! networks and I/O partitions, the infrastructure hierarchy, units with
//! their bars, pending requests to approve or reject, users and roles,
//! pools and templates, utilization over time per unit (from the audit
//! log), and, when broodd is a member of a cluster, the catalog's hosts,
//! zones and domains. An auditor sees the same page; the API refuses its
//! posts.

use std::collections::BTreeMap;

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use brood_api::cluster::{ClusterDomainList, ClusterHostList, ClusterInfo, ClusterZoneList};
use brood_api::{
    HostInfo, InfraView, IoPartitionList, LedgerView, NetworkList, RequestState, TemplateList,
    TokenCreated, TokenList, UnitList, UnitRequestList, UserList, service::ServicePoolList,
};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::client::{ApiFailure, enc};
use super::html::csrf;
use super::unit::{bars, number, requests_table, res, run_post, serde_plain, str_of};
use super::{Ctx, Fields, P, failed, render};

/// The roles a user may have, as the API names them, with what each may do.
const ROLES: [(&str, &str); 4] = [
    ("unit-user", "its unit's VMs"),
    ("unit-admin", "its unit: users, requests, VMs"),
    ("auditor", "reads everything"),
    ("admin", "everything"),
];

/// `GET /ui/admin`.
pub async fn view(State(p): P, headers: HeaderMap) -> Response {
    let ctx = match p.ctx(&headers, None) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match page(&ctx).await {
        Ok(b) => render(&ctx, "Administration", b),
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

async fn page(ctx: &Ctx) -> Result<Markup, ApiFailure> {
    let host: HostInfo = ctx.api.get("/v1/host").await?;
    let ledger: LedgerView = ctx.api.get("/v1/ledger").await?;
    let units: UnitList = ctx.api.get("/v1/units").await?;
    let requests: UnitRequestList = ctx.api.get("/v1/requests").await?;
    let networks: NetworkList = ctx.api.get("/v1/networks").await?;
    let io: IoPartitionList = ctx.api.get("/v1/io").await?;
    let infra: InfraView = ctx.api.get("/v1/infra").await?;
    let users: UserList = ctx.api.get("/v1/users").await?;
    let tokens: TokenList = ctx.api.get("/v1/tokens").await?;
    let pools: ServicePoolList = ctx.api.get("/v1/pools").await?;
    let templates: TemplateList = ctx.api.get("/v1/templates").await?;
    let utilization = super::audit::utilization(ctx).await?;
    let cluster = cluster(ctx).await?;
    let jobs: brood_api::JobList = ctx
        .api
        .get(&format!("/v1/jobs?limit={}", super::jobs::RECENT))
        .await?;
    let unit_names: BTreeMap<String, String> = units
        .items
        .iter()
        .map(|u| (u.uuid.to_string(), u.name.clone()))
        .collect();
    let pending: Vec<_> = requests
        .items
        .iter()
        .filter(|r| r.state == RequestState::Pending)
        .collect();
    Ok(html! {
        nav.quick aria-label="Sections" {
            a href="#host" { "Host" } a href="#requests" { "Requests" } a href="#units" { "Units" } a href="#jobs" { "Jobs" }
            a href="#use" { "Utilization" } a href="#infra" { "Infrastructure" } a href="#users" { "Users" }
            a href="#pools" { "Pools and templates" } a href="/ui/chargeback" { "Chargeback" }
            a href="/ui/audit" { "Audit log" } a href="/ui/verify" { "Verify" }
        }
        section id="host" aria-labelledby="host-h" {
            h2 id="host-h" { "Host " (host.hostname) }
            p.meta { "brood " (host.version) " · " (host.accel) " · " (host.active) " of " (host.partitions) " partitions active · vCPU overcommit " (host.vcpu_overcommit) }
            (super::html::bar_of("memory", "MiB", ["capacity", "available"], host.capacity.memory_mib, host.used.memory_mib, host.available.memory_mib))
            (super::html::bar_of("vcpus", "vCPUs", ["capacity", "available"], host.capacity.vcpus, host.used.vcpus, host.available.vcpus))
            (super::html::bar_of("disk", "GiB", ["capacity", "available"], host.capacity.disk_gib, host.used.disk_gib, host.available.disk_gib))
            (super::html::bar_of("nics", "NICs", ["capacity", "available"], host.capacity.nics, host.used.nics, host.available.nics))
            details { summary { "Who holds what (" (ledger.owners.len()) " owners)" }
                table { thead { tr { th { "Owner" } th { "Holds" } } }
                    tbody { @for o in &ledger.owners { tr { td { (o.owner) } td { (res(&o.holds)) } } } } }
            }
        }
        section id="requests" aria-labelledby="req-h" {
            h2 id="req-h" { "Pending requests" }
            @if pending.is_empty() { p { "No request is pending." } }
            @for r in &pending {
                div.request data-request=(r.id) {
                    p { "#" (r.id) " from " strong { (r.unit) } ": " (res(&r.want)) }
                    form method="post" action=(format!("/ui/requests/{}/approve", r.id)) data-async {
                        (csrf(&ctx.s)) input type="hidden" name="back" value="/ui/admin";
                        label { "vCPUs " input name="vcpus" type="number" min="0" placeholder=(r.want.vcpus); }
                        label { "Memory (MiB) " input name="memory_mib" type="number" min="0" placeholder=(r.want.memory_mib); }
                        label { "Disk (GiB) " input name="disk_gib" type="number" min="0" placeholder=(r.want.disk_gib); }
                        label { "NICs " input name="nics" type="number" min="0" placeholder=(r.want.nics); }
                        label { "Note " input name="note" maxlength="512"; }
                        button type="submit" { "Approve" }
                        div.result aria-live="polite" {}
                    }
                    form method="post" action=(format!("/ui/requests/{}/reject", r.id)) data-async {
                        (csrf(&ctx.s)) input type="hidden" name="back" value="/ui/admin";
                        label { "Note " input name="note" maxlength="512"; }
                        button type="submit" { "Reject" }
                        div.result aria-live="polite" {}
                    }
                }
            }
            details { summary { "Every request (" (requests.items.len()) ")" } (requests_table(&requests)) }
        }
        section id="units" aria-labelledby="units-h" {
            h2 id="units-h" { "Units" }
            form.register method="post" action="/ui/units" data-async {
                (csrf(&ctx.s)) input type="hidden" name="back" value="/ui/admin";
                label { "Name " input name="name" required pattern="[a-z0-9][a-z0-9_.-]*" maxlength="64"; }
                label { "Contact " input name="contact" required maxlength="256"; }
                button type="submit" { "Register a unit" }
                div.result aria-live="polite" {}
            }
            @if units.items.is_empty() { p { "No unit is registered." } }
            @for u in &units.items {
                article.unit {
                    h3 { a href=(format!("/ui/unit?unit={}", enc(&u.name))) { (u.name) } " · " (u.contact) }
                    (bars(u))
                }
            }
        }
        section id="jobs" aria-labelledby="jobs-h" data-events="/ui/events" {
            h2 id="jobs-h" { "Recent jobs" }
            (super::jobs::table(&jobs, Some(&unit_names), "", true))
            p { a href="/ui/jobs" { "All jobs" } }
        }
        section id="use" aria-labelledby="use-h" {
            h2 id="use-h" { "Utilization over time" }
            (utilization)
        }
        section id="infra" aria-labelledby="infra-h" {
            h2 id="infra-h" { "Infrastructure" }
            (infra_tree(&infra))
            (cluster_view(cluster.as_ref()))
            h3 { "Networks" }
            table { thead { tr { th { "Name" } th { "Zone" } th { "Subnet" } th { "NAT" } th { "I/O partition" } th { "NICs" } } }
                tbody { @for n in &networks.items { tr { td { (n.name) } td { (n.zone) } td { (n.subnet) } td { (n.nat) } td { (n.io_partition) } td { (n.members.len()) } } } } }
            h3 { "I/O partitions" }
            table { thead { tr { th { "Name" } th { "Kind" } th { "Serves" } th { "Zone" } th { "State" } th { "Restarts" } th { "Clients" } } }
                tbody { @for i in &io.items { tr { td { (i.name) } td { (i.kind) } td { (i.serves) } td { (i.zone) } td { (i.state) } td { (i.restart_count) } td { (i.clients.len()) } } } } }
        }
        section id="users" aria-labelledby="users-h" {
            h2 id="users-h" { "Users and roles" }
            form.user method="post" action="/ui/users" data-async {
                (csrf(&ctx.s)) input type="hidden" name="back" value="/ui/admin#users";
                label { "Name " input name="name" required pattern="[a-z0-9_.-]+" maxlength="64"; }
                label { "Role " select name="role" {
                    @for (v, what) in ROLES { option value=(v) { (v) " (" (what) ")" } } } }
                label { "Unit " select name="unit" {
                    option value="" { "none (admin, auditor)" }
                    @for u in &units.items { option value=(u.name) { (u.name) } } } }
                button type="submit" { "Add the user" }
                div.result aria-live="polite" {}
            }
            table.users { thead { tr { th { "User" } th { "Role" } th { "Unit" } th { "Since" } th { "Token" } th { "Remove" } } }
                tbody { @for u in &users.items { tr data-user=(u.name) {
                    td { (u.name) } td { (serde_plain(&u.role)) } td { (u.unit.clone().unwrap_or_default()) } td { (u.created_at) }
                    td { form method="post" action="/ui/tokens" data-async {
                        (csrf(&ctx.s)) input type="hidden" name="back" value="/ui/admin#users";
                        input type="hidden" name="user" value=(u.name);
                        label { "Days " input name="expires_in_days" type="number" min="1" max="3650" placeholder="never"; }
                        button type="submit" { "Make a token" }
                        div.result aria-live="polite" {}
                    } }
                    td { form method="post" action=(format!("/ui/users/{}/delete", enc(&u.name))) data-async {
                        (csrf(&ctx.s)) input type="hidden" name="back" value="/ui/admin#users";
                        button type="submit" { "Delete " (u.name) }
                        div.result aria-live="polite" {}
                    } }
                } } } }
            h3 { "Tokens" }
            table.tokens { thead { tr { th { "Id" } th { "User" } th { "State" } th { "Made" } th { "Expires" } th { "Revoke" } } }
                tbody { @for t in &tokens.items { tr data-token=(t.id) {
                    td { code { (t.id) } } td { (t.user) } td { (t.state) } td { (t.created_at) }
                    td { (t.expires_at.clone().unwrap_or_else(|| "never".into())) }
                    td { @if t.state == "active" {
                        form method="post" action=(format!("/ui/tokens/{}/revoke", enc(&t.id))) data-async {
                            (csrf(&ctx.s)) input type="hidden" name="back" value="/ui/admin#users";
                            button type="submit" { "Revoke " (t.id) }
                            div.result aria-live="polite" {}
                        }
                    } }
                } } } }
        }
        section id="pools" aria-labelledby="pools-h" {
            h2 id="pools-h" { "Pools of service domains" }
            table { thead { tr { th { "Pool" } th { "Class" } th { "Ready" } th { "Min–max" } th { "Members" } th { "Deferred" } } }
                tbody { @for pl in &pools.items { tr { td { (pl.name) } td { (pl.class.clone().unwrap_or_default()) } td { (pl.ready) } td { (pl.min) "–" (pl.max) } td { (pl.members.len()) } td { (pl.deferred.clone().unwrap_or_default()) } } } } }
            h3 { "Templates" }
            table { thead { tr { th { "Template" } th { "Parent" } th { "Memory" } th { "vCPUs" } th { "Children" } th { "Warm" } } }
                tbody { @for t in &templates.items { tr { td { (t.name) } td { (t.parent.clone().unwrap_or_default()) } td { (t.memory_mib) " MiB" } td { (t.vcpus) } td { (t.children.len()) } td { (t.warm_ready) "/" (t.warm) } } } } }
        }
    })
}

/// The catalog as this broodd sees it: `None` when broodd is a single host
/// (the API answers 409 to `/v1/cluster`); a catalog that does not answer
/// is the API's error, shown as any other.
struct ClusterView {
    info: ClusterInfo,
    hosts: ClusterHostList,
    zones: ClusterZoneList,
    domains: ClusterDomainList,
}

async fn cluster(ctx: &Ctx) -> Result<Option<ClusterView>, ApiFailure> {
    let info: ClusterInfo = match ctx.api.get("/v1/cluster").await {
        Ok(i) => i,
        Err(e) if e.status == StatusCode::CONFLICT => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(ClusterView {
        info,
        hosts: ctx.api.get("/v1/cluster/hosts").await?,
        zones: ctx.api.get("/v1/cluster/zones").await?,
        domains: ctx.api.get("/v1/cluster/domains").await?,
    }))
}

fn cluster_view(c: Option<&ClusterView>) -> Markup {
    let Some(c) = c else {
        return html! {
            h3 { "Cluster" }
            p { "This broodd is a single host (started without " code { "--catalog" } ")." }
        };
    };
    let cap = |c: &brood_api::cluster::ClusterCapacity| {
        format!(
            "{} MiB · {} vCPUs · {} GiB",
            c.memory_mib, c.vcpus, c.disk_gib
        )
    };
    html! {
        h3 { "Cluster" }
        p.meta { "This host is " strong { (c.info.host) } " · catalog schema " (c.info.schema_version)
            " · heartbeat " (c.info.heartbeat_ms) " ms, suspect after " (c.info.suspect_after_ms)
            " ms, failed after " (c.info.failed_after_ms) " ms" }
        table.hosts { thead { tr { th { "Host" } th { "Address" } th { "State" } th { "Capacity" } th { "Used" }
                th { "Partitions" } th { "Zones" } th { "Watched by" } th { "broodd" } } }
            tbody { @for h in &c.hosts.hosts { tr data-host=(h.name) {
                td { (h.name) } td { (h.address) } td { (h.state) } td { (cap(&h.capacity)) } td { (cap(&h.used)) }
                td { (h.partitions) } td { (h.zones.join(", ")) } td { (h.ops.clone().unwrap_or_default()) }
                td { (h.broodd_version) } } } } }
        h4 { "Zones" }
        @if c.zones.zones.is_empty() { p { "No zone is declared." } }
        ul { @for z in &c.zones.zones { li { code { (z.zone) } ": " (z.hosts.join(", ")) } } }
        h4 { "Domains" }
        @if c.domains.domains.is_empty() { p { "No domain is declared." } }
        table { thead { tr { th { "Domain" } th { "Importance" } th { "Available hosts" } th { "Preferred" } th { "Guarantee per host" } th { "Limit per host" } } }
            tbody { @for d in &c.domains.domains { tr {
                td { (d.name) } td { (d.policy.importance.clone().unwrap_or_default()) }
                td { (d.policy.available.join(", ")) } td { (d.policy.preferred.join(", ")) }
                td { (cap(&d.policy.guarantee)) } td { (cap(&d.policy.limit)) } } } } }
    }
}

fn infra_tree(v: &InfraView) -> Markup {
    let Some(dc) = &v.datacenter else {
        return html! { p { "No hierarchy is set (" code { "brood infra set dc.json" } ")." } };
    };
    html! {
        ul.tree {
            li { "Datacenter " strong { (dc.name) }
                ul { @for i in &dc.infrastructures { li { "Infrastructure " strong { (i.name) }
                    " · hosts: " (i.hosts.iter().map(|h| format!("{} ({})", h.name, res(&h.capacity))).collect::<Vec<_>>().join("; "))
                    " · storage zones: " (i.storage_zones.join(", ")) " · networks: " (i.networks.join(", "))
                    ul { @for s in &i.services { li { "Service " strong { (s.name) }
                        ul { @for r in &s.roles { li { "Role " strong { (r.name) } ": " (r.vms.join(", ")) } } }
                    } } }
                } } }
            }
        }
    }
}

/// `POST /ui/requests/{id}/approve`: `POST /v1/requests/{id}/approve`, in part when amounts are given.
pub async fn approve(
    State(p): P,
    Path(id): Path<u64>,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    run_post(
        p,
        headers,
        f,
        async move |ctx: &Ctx, f: &BTreeMap<String, String>| {
            let mut body = serde_json::Map::new();
            for k in ["vcpus", "memory_mib", "disk_gib", "nics"] {
                if let Some(v) = number(f, k)? {
                    body.insert(k.into(), json!(v));
                }
            }
            if let Some(n) = f.get("note").filter(|n| !n.trim().is_empty()) {
                body.insert("note".into(), json!(n.trim()));
            }
            let r = ctx
                .api
                .post(&format!("/v1/requests/{id}/approve"), &Value::Object(body))
                .await?;
            Ok(format!("request {id} is {}", str_of(&r, "state")))
        },
    )
    .await
}

/// `POST /ui/units`: registers a unit (`POST /v1/units`).
pub async fn register(State(p): P, headers: HeaderMap, Form(f): Fields) -> Response {
    run_post(
        p,
        headers,
        f,
        async |ctx: &Ctx, f: &BTreeMap<String, String>| {
            let field = |k: &str| f.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
            let u = ctx
                .api
                .post(
                    "/v1/units",
                    &json!({"name": field("name"), "contact": field("contact")}),
                )
                .await?;
            Ok(format!("unit {} is registered", str_of(&u, "name")))
        },
    )
    .await
}

/// `POST /ui/requests/{id}/reject`.
pub async fn reject(
    State(p): P,
    Path(id): Path<u64>,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    run_post(
        p,
        headers,
        f,
        async move |ctx: &Ctx, f: &BTreeMap<String, String>| {
            let note = f.get("note").map(|n| n.trim()).filter(|n| !n.is_empty());
            let r = ctx
                .api
                .post(&format!("/v1/requests/{id}/reject"), &json!({"note": note}))
                .await?;
            Ok(format!("request {id} is {}", str_of(&r, "state")))
        },
    )
    .await
}

/// `POST /ui/users`: adds a user with a role (`POST /v1/users`).
pub async fn create_user(State(p): P, headers: HeaderMap, Form(f): Fields) -> Response {
    run_post(
        p,
        headers,
        f,
        async |ctx: &Ctx, f: &BTreeMap<String, String>| {
            let field = |k: &str| f.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
            let unit = Some(field("unit")).filter(|u| !u.is_empty());
            let u = ctx
                .api
                .post(
                    "/v1/users",
                    &json!({"name": field("name"), "role": field("role"), "unit": unit}),
                )
                .await?;
            Ok(format!(
                "user {} is a {}; make it a token to sign in",
                str_of(&u, "name"),
                str_of(&u, "role")
            ))
        },
    )
    .await
}

/// `POST /ui/users/{name}/delete`: `DELETE /v1/users/{name}` (its tokens go with it).
pub async fn delete_user(
    State(p): P,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    run_post(
        p,
        headers,
        f,
        async move |ctx: &Ctx, _: &BTreeMap<String, String>| {
            let _: Value = ctx
                .api
                .json(Method::DELETE, &format!("/v1/users/{}", enc(&name)), None)
                .await?;
            Ok(format!("user {name} and its tokens are deleted"))
        },
    )
    .await
}

/// `POST /ui/tokens`: makes a token for a user (`POST /v1/tokens`); its
/// secret is in this answer only, so without JavaScript it is a page of
/// its own rather than a redirect.
pub async fn create_token(State(p): P, headers: HeaderMap, Form(f): Fields) -> Response {
    let ctx = match p.post_ctx(&headers, &f) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let made = async {
        let days = number(&f, "expires_in_days")?;
        let user = f.get("user").map(|s| s.trim()).unwrap_or_default();
        let body = json!({"user": user, "expires_in_s": days.map(|d| d.saturating_mul(86_400))});
        ctx.api
            .json::<TokenCreated>(Method::POST, "/v1/tokens", Some(&body))
            .await
    }
    .await;
    match made {
        Ok(t) => {
            let shown = html! {
                p.notice role="status" {
                    "Token " code { (t.id) } " for " strong { (t.user) } " (expires "
                    (t.expires_at.clone().unwrap_or_else(|| "never".into())) "), shown only now: "
                    code.secret { (t.token) }
                }
            };
            if ctx.fragment {
                shown.into_response()
            } else {
                render(
                    &ctx,
                    "Token made",
                    html! { (shown) p { a href="/ui/admin#users" { "Back to users" } } },
                )
            }
        }
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

/// `POST /ui/tokens/{id}/revoke`: `DELETE /v1/tokens/{id}`.
pub async fn revoke_token(
    State(p): P,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    run_post(
        p,
        headers,
        f,
        async move |ctx: &Ctx, _: &BTreeMap<String, String>| {
            let t: brood_api::Token = ctx
                .api
                .json(Method::DELETE, &format!("/v1/tokens/{}", enc(&id)), None)
                .await?;
            Ok(format!("token {} of {} is {}", t.id, t.user, t.state))
        },
    )
    .await
}
