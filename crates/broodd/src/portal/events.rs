//! `GET /ui/events`: the live state of the VMs the caller may read, as
//! server-sent events (`data: {"name":..,"run_state":..}`, and `event:
//! deleted` for a VM that is gone), for `portal.js` to apply without a
//! reload.
//!
//! `/v1/events` is for readers of the whole ledger; a unit's user may not
//! read it. So the portal takes the host's event bus as a doorbell only:
//! for each partition event it asks the API, with the session's token,
//! for that partition (`GET /v1/partitions/{uuid}`) and forwards only what
//! the API answered. A partition the API hides (404) is never mentioned,
//! and the answer is remembered per stream. Job events are the same: a
//! job event is forwarded (`event: job`, the job's state, progress and
//! outcome) only after `GET /v1/jobs/{id}` answered for the caller's
//! token; a hidden job is remembered and never asked for again. The stream
//! ends when the session does (signed out, expired, or its token refused).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use brood_api::{EventKind, Job, Partition};
use futures::StreamExt;
use serde_json::json;
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

use super::client::Api;
use super::session::SESSION_COOKIE;
use super::unit::serde_plain;
use super::{P, Portal};

/// Partitions whose readability one stream remembers before it forgets them all.
const MAX_REMEMBERED: usize = 4096;
/// How often an idle stream checks its session is still live.
const SESSION_CHECK: Duration = Duration::from_secs(15);

/// `GET /ui/events[?unit=]`.
pub async fn stream(
    State(p): P,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ctx = match p.ctx(&headers, q.get("unit").map(String::as_str)) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Some(id) = super::session::cookie(&headers, SESSION_COOKIE).map(str::to_owned) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    tokio::spawn(forward(p.clone(), id, ctx.api, tx));
    let out = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(out)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Reads the bus and sends what the API shows this session, until the
/// browser leaves or the session ends.
async fn forward(
    p: Arc<Portal>,
    session: String,
    api: Api,
    tx: tokio::sync::mpsc::Sender<SseEvent>,
) {
    let mut bus = BroadcastStream::new(p.host.events.subscribe());
    // uuid -> the name the API showed (None: hidden from this caller).
    let mut seen: HashMap<Uuid, Option<String>> = HashMap::new();
    // Jobs the API hid from this caller (a job's unit never changes).
    let mut hidden_jobs: HashSet<u64> = HashSet::new();
    loop {
        if p.sessions.find(&session).is_err() {
            return;
        }
        let next = tokio::select! {
            n = bus.next() => n,
            () = tx.closed() => return,
            () = tokio::time::sleep(SESSION_CHECK) => continue,
        };
        // Signed out or expired while waiting: nothing more is sent.
        if p.sessions.find(&session).is_err() {
            return;
        }
        let ev = match next {
            None => return,
            // Missed events: tell the page to re-read.
            Some(Err(_)) => Some(SseEvent::default().event("lagged").data("reload")),
            Some(Ok(e)) => match e.kind {
                EventKind::Partition { uuid, .. } => shown(&api, &mut seen, uuid).await,
                EventKind::PartitionDeleted { uuid, .. } => match seen.remove(&uuid) {
                    Some(Some(name)) => Some(
                        SseEvent::default()
                            .event("deleted")
                            .data(json!({ "name": name }).to_string()),
                    ),
                    _ => None,
                },
                EventKind::Job { id, .. } => job_shown(&api, &mut hidden_jobs, id).await,
                EventKind::Ledger { .. } => None,
            },
        };
        if let Some(ev) = ev
            && tx.send(ev).await.is_err()
        {
            return;
        }
    }
}

/// The event for partition `uuid` as this caller may see it, or nothing.
async fn shown(
    api: &Api,
    seen: &mut HashMap<Uuid, Option<String>>,
    uuid: Uuid,
) -> Option<SseEvent> {
    if matches!(seen.get(&uuid), Some(None)) {
        return None;
    }
    if seen.len() >= MAX_REMEMBERED {
        seen.clear();
    }
    match api
        .get::<Partition>(&format!("/v1/partitions/{uuid}"))
        .await
    {
        Ok(vm) => {
            seen.insert(uuid, Some(vm.name.clone()));
            let data = json!({
                "name": vm.name,
                "run_state": serde_plain(&vm.run_state),
                "stage": serde_plain(&vm.stage),
            });
            Some(SseEvent::default().data(data.to_string()))
        }
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            // Hidden, or already gone: a VM the caller could read that is
            // gone comes as `deleted`.
            seen.entry(uuid).or_insert(None);
            None
        }
        Err(_) => None,
    }
}

/// The event for job `id` as this caller may see it, or nothing.
async fn job_shown(api: &Api, hidden: &mut HashSet<u64>, id: u64) -> Option<SseEvent> {
    if hidden.contains(&id) {
        return None;
    }
    if hidden.len() >= MAX_REMEMBERED {
        hidden.clear();
    }
    match api.get::<Job>(&format!("/v1/jobs/{id}")).await {
        Ok(j) => Some(
            SseEvent::default()
                .event("job")
                .data(super::jobs::event_data(&j).to_string()),
        ),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            hidden.insert(id);
            None
        }
        Err(_) => None,
    }
}
