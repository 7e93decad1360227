//! `/v1/ledger`, `/v1/host` and `/v1/events`: who holds what, the audit
//! log, verification, the host's capacity, and the stream of state changes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use brood_api::{
    AuditEntry, AuditLog, EngineInfo, ErrorBody, HostInfo, LedgerView, OwnerHoldings, VerifyReport,
};
use brood_ledger::{Owner, Resources};
use futures::Stream;
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Auth, require};
use super::doc::Common;
use super::error::{ApiError, ApiResult};
use crate::host::Host;
use crate::tenancy::{Action, Kind};
use crate::wire::resources_out;

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(show))
        .routes(routes!(log))
        .routes(routes!(verify))
        .routes(routes!(host))
        .routes(routes!(events))
}

/// Who holds what: capacity and every owner's holdings, `available` first.
#[utoipa::path(
    get,
    path = "/v1/ledger",
    tag = "ledger",
    operation_id = "show_ledger",
    responses(
        (status = 200, description = "Capacity and every owner's holdings", body = LedgerView),
        Common
    )
)]
async fn show(State(d): D, caller: Auth) -> ApiResult<Json<LedgerView>> {
    require(&caller, Action::Read, Kind::Ledger)?;
    let capacity = d.ledger.capacity().await?;
    let mut by_owner: std::collections::BTreeMap<Owner, Resources> = Default::default();
    for h in d.ledger.holdings().await? {
        let e = by_owner.entry(h.owner).or_default();
        e.set(h.kind, e.get(h.kind) + h.amount);
    }
    let mut owners = Vec::new();
    owners.push(OwnerHoldings {
        owner: "available".into(),
        uuid: None,
        holds: resources_out(&by_owner.remove(&Owner::Available).unwrap_or_default()),
    });
    // Every partition, holding something or not.
    for rec in d.ledger.all_partitions().await? {
        let holds = by_owner
            .remove(&Owner::Partition(rec.uuid))
            .unwrap_or_default();
        owners.push(OwnerHoldings {
            owner: rec.name,
            uuid: Some(rec.uuid),
            holds: resources_out(&holds),
        });
    }
    // Units: what they were allocated and their VMs do not hold.
    for unit in d.ledger.units().await? {
        let holds = by_owner.remove(&Owner::Unit(unit.uuid)).unwrap_or_default();
        owners.push(OwnerHoldings {
            owner: format!("{}{}", Owner::UNIT_PREFIX, unit.name),
            uuid: Some(unit.uuid),
            holds: resources_out(&holds),
        });
    }
    // Holders that are no partition (verify reports them too).
    for (owner, holds) in by_owner {
        if let Owner::Partition(u) | Owner::Unit(u) = owner {
            owners.push(OwnerHoldings {
                owner: u.to_string(),
                uuid: Some(u),
                holds: resources_out(&holds),
            });
        }
    }
    Ok(Json(LedgerView {
        capacity: resources_out(&capacity),
        owners,
    }))
}

/// Audit-log page parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    /// Return entries older than this transaction id.
    before: Option<u64>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The audit log, newest first: every transaction with before- and after-images.
#[utoipa::path(
    get,
    path = "/v1/ledger/log",
    tag = "ledger",
    operation_id = "ledger_log",
    params(LogQuery),
    responses(
        (status = 200, description = "A page of the audit log, newest first", body = AuditLog),
        (status = 400, description = "an unknown query parameter, a `before` that is not a number, or `limit` outside 1-1000", body = ErrorBody),
        Common
    )
)]
async fn log(State(d): D, caller: Auth, Query(q): Query<LogQuery>) -> ApiResult<Json<AuditLog>> {
    require(&caller, Action::Read, Kind::Ledger)?;
    let limit = q.limit.unwrap_or(brood_api::DEFAULT_PAGE);
    if !(1..=brood_api::MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} must be between 1 and {}",
            brood_api::MAX_PAGE
        )));
    }
    let entries = d.ledger.log_newest(q.before, limit + 1).await?;
    let more = entries.len() > limit;
    let items: Vec<AuditEntry> = entries
        .into_iter()
        .take(limit)
        .map(|e| AuditEntry {
            id: e.id.0,
            time: e.time,
            actor: e.actor,
            reason: e.reason,
            changes: e.changes,
        })
        .collect();
    let next = if more {
        items.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(AuditLog { items, next }))
}

/// Checks the ledger's invariants and that it agrees with the QEMU processes.
#[utoipa::path(
    get,
    path = "/v1/ledger/verify",
    tag = "ledger",
    operation_id = "verify_ledger",
    responses(
        (status = 200, description = "Which invariants hold; `ok` is false when one does not", body = VerifyReport),
        Common
    )
)]
async fn verify(State(d): D, caller: Auth) -> ApiResult<Json<VerifyReport>> {
    require(&caller, Action::Read, Kind::Ledger)?;
    Ok(Json(crate::verify::verify(&d).await?))
}

/// The host: capacity, use, accelerator.
#[utoipa::path(
    get,
    path = "/v1/host",
    tag = "host",
    operation_id = "show_host",
    responses(
        (status = 200, description = "The host", body = HostInfo),
        Common
    )
)]
async fn host(State(d): D, caller: Auth) -> ApiResult<Json<HostInfo>> {
    require(&caller, Action::Read, Kind::Host)?;
    let caps = d.engine.caps();
    let capacity = d.ledger.capacity().await?;
    let available = d.ledger.held_by(Owner::Available).await?;
    let used = capacity.checked_sub(&available).unwrap_or_default();
    let records = d.ledger.all_partitions().await?;
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Json(HostInfo {
        hostname,
        version: env!("CARGO_PKG_VERSION").into(),
        accel: caps.accel.name().into(),
        capacity: resources_out(&capacity),
        used: resources_out(&used),
        available: resources_out(&available),
        vcpu_overcommit: d.vcpu_overcommit,
        partitions: records.len() as u64,
        active: records.iter().filter(|r| r.run_state.is_active()).count() as u64,
        data_dir: d.paths.data.display().to_string(),
        run_dir: d.engine.run_root().display().to_string(),
        job_store: d.jobs.backend().into(),
        engine: EngineInfo {
            name: caps.engine.into(),
            accel: caps.accel.name().into(),
            kvm: caps.kvm,
            save_restore: caps.save_restore,
            fork: caps.fork,
            rehost: caps.rehost,
            attach: caps.attach,
            max_vcpus: caps.max_vcpus,
        },
    }))
}

/// Server-sent events: one JSON `Event` per state change, from now on.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "host",
    operation_id = "events",
    responses(
        (status = 200, description = "A text/event-stream whose `data` lines are JSON `Event` objects; a `lagged` event means some were dropped", content_type = "text/event-stream"),
        Common
    )
)]
async fn events(
    State(d): D,
    caller: Auth,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    // Events name every unit's VMs: readers of the whole ledger only.
    require(&caller, Action::Read, Kind::Ledger)?;
    let stream = BroadcastStream::new(d.events.subscribe()).filter_map(|e| match e {
        Ok(ev) => SseEvent::default().json_data(ev).ok().map(Ok),
        // A slow reader missed events: tell it, so it can re-read state.
        Err(_) => Some(Ok(SseEvent::default()
            .event("lagged")
            .data("events were dropped; re-read the state"))),
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
