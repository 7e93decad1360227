//! One VM's page: its state (live), configuration and disks, start, stop
//! and delete, making it a template (so children can be forked from it),
//! running a command in it and seeing the output, and its console's tail.
//! A VM the caller may not read is the API's 404, and so the portal's.

use std::collections::BTreeMap;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use brood_api::{ConsoleLog, ExecResponse, Partition};
use maud::{Markup, html};
use serde_json::json;

use super::client::{ApiFailure, enc};
use super::html::{csrf, unit_field, unit_query};
use super::unit::{run_post, serde_plain, vm_actions};
use super::{Ctx, Fields, P, failed, render};

/// Longest command line accepted from the form, in bytes.
const MAX_COMMAND_BYTES: usize = 4096;
/// How long a command from the portal may run.
const EXEC_TIMEOUT_MS: u64 = 60_000;
/// Console bytes shown.
const CONSOLE_TAIL_BYTES: u64 = 16 * 1024;

/// `GET /ui/vms/{name}[?unit=]`.
pub async fn view(
    State(p): P,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ctx = match p.ctx(&headers, q.get("unit").map(String::as_str)) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match page(&ctx, &name, None).await {
        Ok(b) => render(&ctx, &format!("VM {name}"), b),
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

async fn page(ctx: &Ctx, name: &str, output: Option<Markup>) -> Result<Markup, ApiFailure> {
    let vm: Partition = ctx
        .api
        .get(&format!("/v1/partitions/{}", enc(name)))
        .await?;
    let console = console_tail(ctx, &vm.name).await;
    let operator_unit = if ctx.s.who.unit.is_none() {
        ctx.api.unit()
    } else {
        None
    };
    let uq = unit_query(operator_unit, true);
    let here = format!("/ui/vms/{}{uq}", enc(&vm.name));
    let cfg = vm.configs.get(&vm.active_config);
    Ok(html! {
        table.facts id="vms" data-events=(format!("/ui/events{uq}")) {
            tbody {
                tr data-vm=(vm.name) { th { "State" } td.state { (serde_plain(&vm.run_state)) } }
                tr { th { "Stage" } td { (serde_plain(&vm.stage)) } }
                tr { th { "vCPUs" } td { (cfg.map_or(0, |c| c.vcpus)) } }
                tr { th { "Memory" } td { (cfg.map_or(0, |c| c.memory_mib)) " MiB" } }
                tr { th { "Disks" } td { (vm.disks.iter().map(|d| format!("{} ({} GiB)", d.name, d.size_gib)).collect::<Vec<_>>().join(", ")) } }
                tr { th { "Uuid" } td { code { (vm.uuid) } } }
                @if let Some(parent) = &vm.parent { tr { th { "Forked from" } td { (parent) } } }
                @if let Some(e) = &vm.last_exit { tr { th { "Last exit" } td { (e) } } }
            }
        }
        (vm_actions(ctx, &vm.name, operator_unit, &here))
        section aria-labelledby="exec-h" {
            h2 id="exec-h" { "Run a command" }
            form.exec method="post" action=(format!("/ui/vms/{}/exec", enc(&vm.name))) data-async {
                (csrf(&ctx.s)) (unit_field(operator_unit))
                label for="command" { "Command" }
                input id="command" name="command" required maxlength="4096" placeholder="uname -a";
                button type="submit" { "Run" }
                div.result aria-live="polite" { @if let Some(o) = &output { (o) } }
            }
        }
        @if ctx.s.who.role != "unit-user" { section aria-labelledby="tpl-h" {
            h2 id="tpl-h" { "Make it a template" }
            p { "The VM stops being a VM and becomes a template children are forked from." }
            form method="post" action=(format!("/ui/vms/{}/template", enc(&vm.name))) data-async {
                (csrf(&ctx.s)) (unit_field(operator_unit))
                label { "Template name " input name="template" required pattern="[a-z0-9][a-z0-9_.-]*" maxlength="64"; }
                button type="submit" { "Make template" }
                div.result aria-live="polite" {}
            }
        } }
        section aria-labelledby="console-h" {
            h2 id="console-h" { "Console (tail)" }
            @match &console {
                Ok(c) => {
                    pre.console tabindex="0" aria-live="off"
                        data-follow=(format!("/ui/vms/{}/console{uq}", enc(&vm.name))) { (c.text) }
                    @if c.truncated { p.hint { "(older output cut)" } }
                    p.hint { "Followed live: the page reads the last " (CONSOLE_TAIL_BYTES / 1024) " KiB again every 2 s while it is shown." }
                }
                Err(e) => { (super::html::error_box(&e.message)) }
            }
            p { a href=(here) { "Refresh" } }
        }
    })
}

/// `POST /ui/vms/{name}/action`: start, stop, kill or delete.
pub async fn action(
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
            let op = f.get("op").map(String::as_str).unwrap_or_default();
            let path = format!("/v1/partitions/{}", enc(&name));
            match op {
                "start" | "stop" | "kill" => {
                    let vm: Partition = ctx
                        .api
                        .json(Method::POST, &format!("{path}/{op}"), None)
                        .await?;
                    Ok(format!("{} is {}", vm.name, serde_plain(&vm.run_state)))
                }
                "delete" => {
                    ctx.api.raw(Method::DELETE, &path, None).await?;
                    Ok(format!("{name} is deleted"))
                }
                other => Err(ApiFailure {
                    status: StatusCode::BAD_REQUEST,
                    code: "bad_request".into(),
                    message: format!("{other:?} is not an action: start, stop, kill or delete"),
                }),
            }
        },
    )
    .await
}

/// `POST /ui/vms/{name}/template`: `POST /v1/templates`.
pub async fn make_template(
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
            let template = f.get("template").map(|s| s.trim()).unwrap_or_default();
            let t = ctx
                .api
                .post("/v1/templates", &json!({"vm": name, "name": template}))
                .await?;
            Ok(format!(
                "template {} made from {name}",
                super::unit::str_of(&t, "name")
            ))
        },
    )
    .await
}

/// The last [`CONSOLE_TAIL_BYTES`] of VM `name`'s console, from the API.
async fn console_tail(ctx: &Ctx, name: &str) -> Result<ConsoleLog, ApiFailure> {
    ctx.api
        .get(&format!(
            "/v1/partitions/{}/console?bytes={CONSOLE_TAIL_BYTES}",
            enc(name)
        ))
        .await
}

/// `GET /ui/vms/{name}/console[?unit=]`: the console's tail as plain text
/// (`GET /v1/partitions/{name}/console`), which `portal.js` reads again
/// every few seconds to follow it; an error is the portal's error page.
pub async fn console(
    State(p): P,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ctx = match p.ctx(&headers, q.get("unit").map(String::as_str)) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match console_tail(&ctx, &name).await {
        Ok(c) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            c.text,
        )
            .into_response(),
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

/// `POST /ui/vms/{name}/exec`: `POST /v1/partitions/{name}/exec`; the
/// output as a fragment (from `portal.js`) or in the VM's page.
pub async fn exec(
    State(p): P,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    let ctx = match p.post_ctx(&headers, &f) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let command = f.get("command").map(|s| s.trim()).unwrap_or_default();
    let out = if command.is_empty() || command.len() > MAX_COMMAND_BYTES {
        Err(ApiFailure {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request".into(),
            message: format!("enter a command of 1 to {MAX_COMMAND_BYTES} bytes"),
        })
    } else {
        run_exec(&ctx, &name, command).await
    };
    match out {
        Ok(m) if ctx.fragment => m.into_response(),
        Ok(m) => match page(&ctx, &name, Some(m)).await {
            Ok(b) => render(&ctx, &format!("VM {name}"), b),
            Err(e) => failed(&p, &headers, Some(&ctx), &e),
        },
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

async fn run_exec(ctx: &Ctx, name: &str, command: &str) -> Result<Markup, ApiFailure> {
    let r: ExecResponse = ctx
        .api
        .json(
            Method::POST,
            &format!("/v1/partitions/{}/exec", enc(name)),
            Some(&json!({"command": command, "timeout_ms": EXEC_TIMEOUT_MS})),
        )
        .await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let stdout =
        String::from_utf8_lossy(&b64.decode(&r.stdout_base64).unwrap_or_default()).into_owned();
    let stderr =
        String::from_utf8_lossy(&b64.decode(&r.stderr_base64).unwrap_or_default()).into_owned();
    let status = match (r.exit_code, r.signal, r.timed_out) {
        (_, _, true) => "killed at its timeout".to_string(),
        (Some(c), _, _) => format!("exit code {c}"),
        (None, Some(s), _) => format!("killed by signal {s}"),
        (None, None, false) => "ended".to_string(),
    };
    Ok(html! {
        div.exec-result {
            p.exit { code { (command) } ": " (status) }
            pre.stdout tabindex="0" { (stdout) }
            @if r.stdout_truncated { p.hint { "(standard output was cut)" } }
            @if !stderr.is_empty() { pre.stderr tabindex="0" { (stderr) } }
        }
    })
}
