//! The jobs view: a table of jobs (state, kind, target, progress,
//! result or error, times) for a unit's page, the administrator's page
//! and `/ui/jobs`; a job's page with its event log and, while it may be
//! cancelled, a cancel form; and running a stored workflow with `k=v`
//! inputs. Everything is `/v1/jobs` and `/v1/workflows` called with the
//! session's token, so a job the caller may not read is the API's 404.
//! Live updates come from `events` (`event: job`) and `portal.js`.

use std::collections::BTreeMap;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use brood_api::{Job, JobList, JobState, WorkflowList};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::client::{ApiFailure, enc};
use super::html::{csrf, unit_field, unit_query};
use super::unit::run_post;
use super::{Ctx, Fields, P, failed, render};

/// Jobs a unit's page and the administrator's page show.
pub const RECENT: usize = 20;
/// Longest workflow input text, in bytes.
const MAX_INPUTS_BYTES: usize = 16 * 1024;
/// Most `k=v` inputs one run takes.
const MAX_INPUTS: usize = 64;
/// Longest result shown in a table cell, in characters.
const MAX_CELL_CHARS: usize = 160;

/// A job's result or error in one line, cut to a table cell.
pub fn outcome(j: &Job) -> String {
    let s = match (&j.error, &j.result) {
        (Some(e), _) => e.clone(),
        (None, Some(r)) => summary(r),
        _ => String::new(),
    };
    cut(&s, MAX_CELL_CHARS)
}

/// A result in brief: a partition (or anything named) as its name and run
/// state, a workflow as its outputs, anything else as its JSON.
fn summary(r: &Value) -> String {
    if r.is_null() {
        return String::new();
    }
    if let Some(name) = r.get("name").and_then(Value::as_str) {
        return match r.get("run_state").and_then(Value::as_str) {
            Some(state) => format!("{name}: {state}"),
            None => name.to_owned(),
        };
    }
    match r.get("outputs") {
        Some(o) => o.to_string(),
        None => r.to_string(),
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// Whether the API may still cancel the job (a queued job, or a running
/// workflow before its next task).
pub fn cancellable(j: &Job) -> bool {
    j.state == JobState::Queued || (j.state == JobState::Running && j.kind == "workflow.run")
}

/// The data `/ui/events` sends for a job (`event: job`).
pub fn event_data(j: &Job) -> Value {
    json!({
        "id": j.id,
        "kind": j.kind,
        "target": j.target,
        "state": j.state.as_str(),
        "progress": j.progress,
        "outcome": outcome(j),
        "started_at": j.started_at.clone().unwrap_or_default(),
        "finished_at": j.finished_at.clone().unwrap_or_default(),
        "cancellable": cancellable(j),
    })
}

/// A table of jobs, newest first; `units` names the units by uuid (an
/// operator outside any unit sees the column), `uq` is the unit query links
/// keep, and `refresh` the rows `portal.js` fetches again when a job it
/// does not show yet changes.
pub fn table(
    jobs: &JobList,
    units: Option<&BTreeMap<String, String>>,
    uq: &str,
    refresh: bool,
) -> Markup {
    let rows = format!("/ui/jobs?part=rows{}", uq.replacen('?', "&", 1));
    html! {
        table.jobs data-jobs {
            thead { tr {
                th { "#" } th { "State" } th { "Kind" } th { "Target" }
                @if units.is_some() { th { "Unit" } }
                th { "Progress" } th { "Result" } th { "Created" } th { "Finished" }
            } }
            tbody data-refresh=[refresh.then_some(rows)] {
                (rows_of(jobs, units, uq))
            }
        }
        @if jobs.items.is_empty() { p.empty { "No job yet." } }
    }
}

fn rows_of(jobs: &JobList, units: Option<&BTreeMap<String, String>>, uq: &str) -> Markup {
    html! { @for j in &jobs.items { (row(j, units, uq)) } }
}

fn row(j: &Job, units: Option<&BTreeMap<String, String>>, uq: &str) -> Markup {
    html! {
        tr data-job=(j.id) {
            td { a href=(format!("/ui/jobs/{}{uq}", j.id)) { (j.id) } }
            td data-f="state" { (j.state.as_str()) }
            td { (j.kind) }
            td { (j.target) }
            @if let Some(names) = units {
                td { (j.unit.map(|u| names.get(&u.to_string()).cloned().unwrap_or_else(|| u.to_string())).unwrap_or_else(|| "-".into())) }
            }
            td data-f="progress" { (j.progress) }
            td data-f="outcome" { (outcome(j)) }
            td { (j.created_at) }
            td data-f="finished_at" { (j.finished_at.clone().unwrap_or_default()) }
        }
    }
}

/// `GET /ui/jobs[?unit=&state=&before=]`: a page of jobs.
pub async fn list(
    State(p): P,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ctx = match p.ctx(&headers, q.get("unit").map(String::as_str)) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if q.get("part").is_some_and(|p| p == "rows") {
        // The rows portal.js refreshes in place (the newest jobs).
        let path = format!(
            "/v1/jobs?limit={RECENT}{}",
            unit_query(hidden_unit(&ctx), false)
        );
        return match ctx.api.get::<JobList>(&path).await {
            Ok(jobs) => {
                let units = unit_names(&ctx).await;
                let uq = unit_query(hidden_unit(&ctx), true);
                rows_of(&jobs, units.as_ref(), &uq).into_response()
            }
            Err(e) => failed(&p, &headers, Some(&ctx), &e),
        };
    }
    match list_page(&ctx, &q).await {
        Ok(b) => render(&ctx, "Jobs", b),
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

async fn list_page(ctx: &Ctx, q: &BTreeMap<String, String>) -> Result<Markup, ApiFailure> {
    let hidden = hidden_unit(ctx);
    let mut query = format!("/v1/jobs?limit=100{}", unit_query(hidden, false));
    for k in ["state", "before", "target"] {
        if let Some(v) = q.get(k).filter(|v| !v.is_empty()) {
            query.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    let jobs: JobList = ctx.api.get(&query).await?;
    let units = unit_names(ctx).await;
    let uq = unit_query(hidden, true);
    let state = q.get("state").map(String::as_str).unwrap_or_default();
    Ok(html! {
        form.filter method="get" action="/ui/jobs" {
            (unit_field(hidden))
            label { "State "
                select name="state" {
                    option value="" selected[state.is_empty()] { "any" }
                    @for s in ["queued", "running", "succeeded", "failed", "cancelled", "refused"] {
                        option value=(s) selected[state == s] { (s) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
        div data-events=(format!("/ui/events{uq}")) {
            (table(&jobs, units.as_ref(), &uq, false))
        }
        @if let Some(next) = jobs.next {
            p { a href=(format!("/ui/jobs?before={next}{}{}", unit_query(hidden, false),
                if state.is_empty() { String::new() } else { format!("&state={}", enc(state)) })) { "Older jobs" } }
        }
    })
}

/// The units' names by uuid, for an operator outside any unit (others see
/// only their own unit's jobs and need no column).
pub async fn unit_names(ctx: &Ctx) -> Option<BTreeMap<String, String>> {
    if !ctx.s.who.is_operator() || ctx.unit.is_some() {
        return None;
    }
    let units: brood_api::UnitList = ctx.api.get("/v1/units").await.ok()?;
    Some(
        units
            .items
            .into_iter()
            .map(|u| (u.uuid.to_string(), u.name))
            .collect(),
    )
}

/// `GET /ui/jobs/{id}`: a job with its event log.
pub async fn view(
    State(p): P,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ctx = match p.ctx(&headers, q.get("unit").map(String::as_str)) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    // The API reads the id (a bad one is its 400, a hidden one its 404).
    match ctx.api.get::<Job>(&format!("/v1/jobs/{}", enc(&id))).await {
        Ok(j) => {
            let title = format!("Job {}", j.id);
            render(&ctx, &title, job_page(&ctx, &j))
        }
        Err(e) => failed(&p, &headers, Some(&ctx), &e),
    }
}

/// The unit an operator acts inside (kept in links and forms); none for a
/// unit role, whose unit the API knows from its token.
pub fn hidden_unit(ctx: &Ctx) -> Option<&str> {
    ctx.unit.as_deref().filter(|_| ctx.s.who.unit.is_none())
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn job_page(ctx: &Ctx, j: &Job) -> Markup {
    let hidden = hidden_unit(ctx);
    let uq = unit_query(hidden, true);
    let here = format!("/ui/jobs/{}{uq}", j.id);
    html! {
        dl.job data-job=(j.id) data-events=(format!("/ui/events{uq}")) {
            dt { "State" } dd data-f="state" { (j.state.as_str()) }
            dt { "Kind" } dd { (j.kind) }
            dt { "Target" } dd { (j.target) }
            dt { "Submitted by" } dd { (j.actor) }
            dt { "Queue" } dd { (super::unit::serde_plain(&j.queue)) " (priority " (j.priority) ")" }
            dt { "Progress" } dd data-f="progress" { (j.progress) }
            dt { "Created" } dd { (j.created_at) }
            dt { "Started" } dd data-f="started_at" { (j.started_at.clone().unwrap_or_default()) }
            dt { "Finished" } dd data-f="finished_at" { (j.finished_at.clone().unwrap_or_default()) }
            dt { "Result" } dd data-f="outcome" { (outcome(j)) }
        }
        @if cancellable(j) {
            form.cancel data-f="cancel" method="post" action=(format!("/ui/jobs/{}/cancel", j.id)) data-async {
                (csrf(&ctx.s)) (unit_field(hidden))
                input type="hidden" name="back" value=(here);
                button type="submit" data-confirm=(format!("Cancel job {}?", j.id)) { "Cancel" }
                span.result aria-live="polite" {}
            }
        }
        p.live aria-live="polite" {}
        @if let Some(e) = &j.error { (super::html::error_box(e)) }
        @if let Some(r) = j.result.as_ref().filter(|r| !r.is_null()) {
            h2 { "Result" } pre.result tabindex="0" { (pretty(r)) }
        }
        details { summary { "Parameters" } pre tabindex="0" { (pretty(&j.params)) } }
        section aria-labelledby="log-h" {
            h2 id="log-h" { "Event log" }
            @if j.events.is_empty() { p { "No event yet." } } @else {
                table.events { thead { tr { th { "#" } th { "Time" } th { "Event" } th { "Details" } } }
                    tbody { @for e in &j.events { tr {
                        td { (e.seq) } td { (e.time) } td { (e.kind) }
                        td { code { (cut(&e.body.to_string(), 2000)) } }
                    } } } }
            }
            p { a href=(format!("/ui/jobs/{}{uq}", j.id)) { "Reload the log" } }
        }
        p { a href=(format!("/ui/jobs{uq}")) { "All jobs" } }
    }
}

/// `POST /ui/jobs/{id}/cancel`: `POST /v1/jobs/{id}/cancel`.
pub async fn cancel(
    State(p): P,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    run_post(
        p,
        headers,
        f,
        async move |ctx: &Ctx, _f: &BTreeMap<String, String>| {
            let path = format!("/v1/jobs/{}/cancel", enc(&id));
            let j: Job = ctx.api.json(axum::http::Method::POST, &path, None).await?;
            Ok(if j.state == JobState::Cancelled {
                format!("job {} is cancelled", j.id)
            } else {
                format!("job {} is cancelled before its next task", j.id)
            })
        },
    )
    .await
}

/// The workflows section of a unit's page: a form per stored workflow.
pub fn workflows_section(ctx: &Ctx, wfs: &WorkflowList, hidden_unit: Option<&str>) -> Markup {
    let here = format!("/ui/unit{}", unit_query(hidden_unit, true));
    html! {
        section aria-labelledby="wf-h" {
            h2 id="wf-h" { "Workflows" }
            @if wfs.items.is_empty() { p { "No workflow is stored (" code { "brood workflow create" } " stores one)." } }
            @for w in &wfs.items {
                @let inputs = w.definition.get("inputs").and_then(Value::as_object);
                form.workflow method="post" action=(format!("/ui/workflows/{}/run", enc(&w.name))) data-async {
                    (csrf(&ctx.s)) (unit_field(hidden_unit))
                    input type="hidden" name="back" value=(here);
                    span { strong { (w.name) } " v" (w.version)
                        @if let Some(i) = inputs { " · inputs: " (i.keys().cloned().collect::<Vec<_>>().join(", ")) } }
                    label { " inputs (" code { "k=v" } ", one a line) "
                        textarea name="inputs" rows="2" cols="30" maxlength=(MAX_INPUTS_BYTES) {} }
                    button type="submit" { "Run" }
                    div.result aria-live="polite" {}
                }
            }
        }
    }
}

/// `k=v` lines (blank lines skipped) as the run's data items.
fn parse_inputs(text: &str) -> Result<BTreeMap<String, Value>, ApiFailure> {
    let bad = |message: String| ApiFailure {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request".into(),
        message,
    };
    if text.len() > MAX_INPUTS_BYTES {
        return Err(bad(format!(
            "the inputs are {} bytes; at most {MAX_INPUTS_BYTES} are taken",
            text.len()
        )));
    }
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once('=') else {
            return Err(bad(format!(
                "input {:?} is not k=v: write one NAME=VALUE a line",
                cut(line, 80)
            )));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(bad(format!(
                "input {:?} has no name before '='",
                cut(line, 80)
            )));
        }
        if out.insert(k.to_owned(), Value::from(v.trim())).is_some() {
            return Err(bad(format!("input {k:?} is given twice: give it once")));
        }
        if out.len() > MAX_INPUTS {
            return Err(bad(format!("more than {MAX_INPUTS} inputs")));
        }
    }
    Ok(out)
}

/// `POST /ui/workflows/{name}/run`: `POST /v1/workflows/{name}/run?wait=false`,
/// then the job's page (or a fragment linking it).
pub async fn run_workflow(
    State(p): P,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Fields,
) -> Response {
    let ctx = match p.post_ctx(&headers, &f) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let job = async {
        let data = parse_inputs(f.get("inputs").map(String::as_str).unwrap_or_default())?;
        let path = format!("/v1/workflows/{}/run?wait=false", enc(&name));
        ctx.api
            .json::<Job>(
                axum::http::Method::POST,
                &path,
                Some(&json!({ "data": data })),
            )
            .await
    }
    .await;
    let j = match job {
        Ok(j) => j,
        Err(e) => return failed(&p, &headers, Some(&ctx), &e),
    };
    let hidden = hidden_unit(&ctx);
    let link = format!("/ui/jobs/{}{}", j.id, unit_query(hidden, true));
    if ctx.fragment {
        return html! {
            p.notice role="status" { "workflow " (name) " is " a href=(link) { "job " (j.id) } " (" (j.state.as_str()) ")" }
        }
        .into_response();
    }
    Redirect::to(&link).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_k_v_lines() {
        let d = parse_inputs("name=web-1\n\n  password = a=b \n").unwrap();
        assert_eq!(d.get("name"), Some(&Value::from("web-1")));
        assert_eq!(d.get("password"), Some(&Value::from("a=b")));
        for bad in ["novalue", "=x", "a=1\na=2"] {
            let e = parse_inputs(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        let long = "a".repeat(MAX_INPUTS_BYTES + 1);
        assert!(parse_inputs(&long).is_err());
        let many: String = (0..=MAX_INPUTS).map(|i| format!("k{i}=v\n")).collect();
        assert!(parse_inputs(&many).is_err());
    }

    #[test]
    fn a_long_result_is_cut_on_a_char_boundary() {
        let s = "é".repeat(MAX_CELL_CHARS + 5);
        let c = cut(&s, MAX_CELL_CHARS);
        assert_eq!(c.chars().count(), MAX_CELL_CHARS + 1);
    }
}
