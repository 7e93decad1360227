//! Forking children from a template.
//!
//! All children of one request are recorded in one ledger transaction that
//! inserts them `starting` with `fork` pending, reserves what each is
//! charged (a share of memory, its vCPUs and NICs) and takes each one's
//! identity and address from their pools; an empty pool fails that
//! transaction and nothing is made. Then each child resumes a warm VM (or a
//! new one) under its own lock, and its agent applies the identity without
//! the lock held: a kill or delete of a child whose identity step hangs
//! acts at once. A child whose VM cannot start is removed again; one whose
//! identity step fails is stopped and kept as `failed`, holding nothing.

pub mod child;
pub mod identity;

use std::sync::Arc;
use std::time::{Duration, Instant};

use brood_api as api;
use brood_ledger::{
    ChildLineage, ChildStatus, Lineage, Op, PartitionExpect, PartitionPatch, PartitionRecord,
    PendingOp, Resources, RunState, Stage, Tx,
};
use futures::StreamExt;
use tracing::{info, warn};
use uuid::Uuid;

use crate::host::config::active_config;
use crate::host::runstate::{EndMode, Settle, active_share};
use crate::host::{Host, HostError, HostResult, Running, chain};
use crate::template::{TemplateRt, Templates, Warm, prepare, refill};
use crate::wire;

/// Most children one request may fork.
pub const MAX_FORK: u32 = 256;
/// Children started at once.
const PARALLEL: usize = 32;
/// How long a child's agent may take to apply its identity and run its services.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(120);

/// Checks a fork request against the template and the pools.
async fn validate(host: &Host, req: &api::ForkRequest, nics: usize) -> HostResult<()> {
    if req.count == 0 || req.count > MAX_FORK {
        return Err(HostError::invalid(format!(
            "count {} must be between 1 and {MAX_FORK}",
            req.count
        )));
    }
    if req.values.len() > 64 {
        return Err(HostError::invalid("at most 64 values"));
    }
    for (k, v) in &req.values {
        let ok = !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
        if !ok || v.len() > 4096 {
            return Err(HostError::invalid(format!(
                "value {k:?}: keys are 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'; values at most 4096 bytes"
            )));
        }
    }
    for (pool, kind) in [
        (&req.identity_pool, brood_ledger::PoolKind::Identity),
        (&req.ip_pool, brood_ledger::PoolKind::Ipv4),
    ] {
        if let Some(p) = pool {
            let info = host.ledger.pool(p).await?.ok_or_else(|| {
                HostError::invalid(format!(
                    "no identity pool named {p:?}: `brood identity-pool list` shows them"
                ))
            })?;
            if info.kind != kind {
                return Err(HostError::invalid(format!(
                    "identity pool {p:?} is not an {} pool",
                    crate::identity_pool::kind_name(kind)
                )));
            }
        }
    }
    if req.ip_pool.is_some() && nics == 0 {
        return Err(HostError::invalid(
            "the template has no NIC, so its children cannot take an IPv4 address: fork without --ip-pool, or make a template from a VM with a NIC",
        ));
    }
    Ok(())
}

/// A child recorded in the ledger, not yet running.
struct Recorded {
    uuid: Uuid,
    name: String,
    warm: Option<Warm>,
    lineage: ChildLineage,
    charge: u64,
}

/// Forks `req.count` children of template `uuid`. All of them are recorded
/// in one transaction (so an exhausted pool makes none); then they start in
/// parallel. With `req.wait` false the answer comes once they are recorded.
pub async fn fork(
    host: &Arc<Host>,
    actor: &str,
    unit: Option<Uuid>,
    uuid: Uuid,
    req: api::ForkRequest,
) -> HostResult<Vec<api::ForkChild>> {
    let t0 = Instant::now();
    let tpl = host.reload(uuid).await?;
    if tpl.stage != Stage::Template {
        return Err(HostError::invalid(format!(
            "{} is not a template: make one with `brood template create`",
            tpl.name
        )));
    }
    let rt = host.feature::<Templates>().get(uuid).ok_or_else(|| {
        HostError::transition(format!(
            "template {} lost its memory file (a host reboot?) and cannot fork",
            tpl.name
        ))
    })?;
    validate(host, &req, rt.tpl.spec.nics.len()).await?;
    crate::convert::child_charge(req.charge_mib, rt.tpl.spec.mem_mib)?;
    let busy = rt.forking();
    let recorded = record(host, actor, unit, &rt, &req).await?;
    let actor: Arc<str> = actor.into();
    let as_recorded: Vec<api::ForkChild> = recorded
        .iter()
        .map(|r| child_view(r.uuid, &r.name, &r.lineage, r.charge))
        .collect();
    let run_all = {
        let host = host.clone();
        let rt = rt.clone();
        async move {
            let jobs = recorded.into_iter().map(|r| {
                let (host, rt, actor) = (host.clone(), rt.clone(), actor.clone());
                async move { start_recorded(&host, &actor, &rt, r, t0).await }
            });
            let out: Vec<HostResult<api::ForkChild>> = futures::stream::iter(jobs)
                .buffered(PARALLEL)
                .collect()
                .await;
            drop(busy);
            refill(host, rt);
            out
        }
    };
    if !req.wait {
        tokio::spawn(async move {
            for r in run_all.await {
                if let Err(e) = r {
                    warn!("a child of a fork that did not wait failed: {}", chain(&e));
                }
            }
        });
        return Ok(as_recorded);
    }
    let mut children = Vec::new();
    let mut first_err = None;
    for r in run_all.await {
        match r {
            Ok(c) => children.push(c),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    // Cancelled meanwhile: the children that did start are the job's to
    // undo (`job::cancellable`); the others are gone already.
    if crate::job::cancel_requested() {
        return Ok(children);
    }
    match first_err {
        Some(e) if children.is_empty() => Err(e),
        Some(e) => {
            warn!(template = %tpl.name, "some children of a fork failed: {}", chain(&e));
            Ok(children)
        }
        None => Ok(children),
    }
}

fn child_view(uuid: Uuid, name: &str, c: &ChildLineage, charge: u64) -> api::ForkChild {
    let mut rec = PartitionRecord::new(name);
    rec.uuid = uuid;
    rec.demand.memory_mib = charge;
    identity::child_out(&rec, c)
}

/// Records `req.count` children in one transaction: indices and names from
/// the template, each child inserted with its charge reserved and its
/// identity and address taken from the pools. Warm children are claimed for
/// them; one the transaction did not use goes back.
async fn record(
    host: &Host,
    actor: &str,
    unit: Option<Uuid>,
    rt: &TemplateRt,
    req: &api::ForkRequest,
) -> HostResult<Vec<Recorded>> {
    let _g = rt.fork_lock.lock().await;
    let tpl = host.reload(rt.uuid).await?;
    let Some(Lineage::Template(mut tdata)) = tpl.lineage.clone() else {
        return Err(HostError::corrupt(
            format!("template {}", tpl.name),
            "its template details are missing from the ledger",
        ));
    };
    let config = active_config(&tpl)?;
    let charge = crate::convert::child_charge(req.charge_mib, config.memory_mib)?;
    let first = tdata.next_index;
    let names = (0..req.count)
        .map(|i| identity::child_name(&tpl.name, first.saturating_add(i)))
        .collect::<HostResult<Vec<_>>>()?;
    tdata.next_index = first.saturating_add(req.count);
    let ip_pool = match &req.ip_pool {
        Some(p) => host.ledger.pool(p).await?,
        None => None,
    };
    let top = crate::memory::top_of(&tpl)?;
    // Each child has its own overlay of its template's root disk (`host::root`).
    let root = crate::host::root::root_gib(
        &host.paths,
        tpl.uuid,
        &crate::host::config::configs_of(&tpl)?,
    )?;
    let mut ops = Vec::new();
    let mut recorded = Vec::new();
    for (i, name) in (0..req.count).zip(names) {
        let lineage = identity::new_child(first + i, config.nics.len(), req)?;
        let warm = rt.take().await;
        let uuid = warm.as_ref().map_or_else(Uuid::new_v4, |w| w.uuid);
        // A warm child already uses memory of its own: it is charged that
        // (and its headroom) from the start, in this transaction, so that
        // claiming it only lowers its limit.
        let used = warm
            .as_ref()
            .and_then(|w| w.vm.memory_private_bytes())
            .map_or(0, crate::memory::mib_up);
        let demand = Resources {
            memory_mib: crate::memory::trued_up(charge, used, top).unwrap_or(charge),
            vcpus: u64::from(config.vcpus),
            disk_gib: root,
            nics: config.nics.len() as u64,
        };
        let now = wire::now();
        ops.push(Op::InsertPartition(PartitionRecord {
            uuid,
            name: name.clone(),
            stage: Stage::Operating,
            run_state: RunState::Starting,
            active_config: tpl.active_config.clone(),
            configs: tpl.configs.clone(),
            demand,
            pid: None,
            pending_op: Some(PendingOp::Fork),
            restart_count: 0,
            last_exit: None,
            created_at: now.clone(),
            updated_at: now,
            generation: 0,
            parent: Some(tpl.uuid),
            lineage: Some(Lineage::Child(Box::new(lineage.clone()))),
        }));
        // A unit's child reserves from the unit, whoever's the template is.
        ops.extend(unit.map(|unit| {
            Op::Unit(brood_ledger::UnitOp::Join {
                partition: uuid,
                unit,
            })
        }));
        ops.extend(Op::reserve(uuid, &active_share(&demand)));
        ops.extend(Op::reserve(
            uuid,
            &Resources {
                disk_gib: root,
                ..Resources::default()
            },
        ));
        // A NIC on a brood network gets its own channel and address (the
        // switch connects to the child's port once it runs).
        ops.push(crate::network::open_op(uuid, &config.nics));
        // A child started cold has its disks served where its template's
        // were (a warm one's QEMU opened its overlays already).
        if warm.is_none() {
            ops.extend(crate::io::storage::child_open_op(
                host,
                uuid,
                &config,
                &rt.tpl.spec.disks,
            )?);
        }
        for pool in [&req.identity_pool, &req.ip_pool].into_iter().flatten() {
            ops.push(Op::TakeFromPool {
                pool: pool.clone(),
                holder: uuid,
                value: None,
            });
        }
        recorded.push(Recorded {
            uuid,
            name,
            warm,
            lineage,
            charge,
        });
    }
    ops.push(Op::UpdatePartition {
        uuid: tpl.uuid,
        expect: PartitionExpect {
            generation: Some(tpl.generation),
            ..Default::default()
        },
        set: PartitionPatch {
            lineage: Some(Some(Lineage::Template(tdata))),
            ..Default::default()
        },
    });
    let tx = Tx {
        actor: actor.into(),
        reason: format!("fork {} children of {}", req.count, tpl.name),
        ops,
    };
    let committed = match host.ledger.commit(tx).await {
        Ok(c) => c,
        Err(e) => {
            for w in recorded.into_iter().filter_map(|r| r.warm) {
                rt.put_back(w).await;
            }
            return Err(e.into());
        }
    };
    for r in &mut recorded {
        r.lineage = identity::with_taken(
            r.lineage.clone(),
            r.uuid,
            &committed.taken,
            ip_pool.as_ref(),
        );
    }
    Ok(recorded)
}

/// Starts one recorded child; when its VM cannot start it is removed,
/// giving everything back.
async fn start_recorded(
    host: &Arc<Host>,
    actor: &str,
    rt: &Arc<TemplateRt>,
    r: Recorded,
    t0: Instant,
) -> HostResult<api::ForkChild> {
    let started = {
        let lock = host.registry.lock(r.uuid);
        let _g = lock.lock().await;
        let made = async {
            // A job cancelled while it forks stops between children and
            // between a child's steps: a child not yet begun is not
            // started, and one whose VM is made but not yet resumed is
            // killed; either goes with the failure path below.
            if crate::job::cancel_requested() {
                if let Some(w) = r.warm {
                    let _ = w.vm.kill().await;
                }
                return Err(cancelled_child());
            }
            let warm = match r.warm {
                Some(w) => w,
                None => prepare(host, rt, r.uuid, true).await?,
            };
            if crate::job::cancel_requested() {
                let _ = warm.vm.kill().await;
                return Err(cancelled_child());
            }
            let rec = host.reload(r.uuid).await?;
            let vm = child::resume(host, &rec, warm).await?;
            let rec = host.reload(r.uuid).await?;
            host.mark_running(actor, &rec, vm, RunState::Running, Some(PendingOp::Fork))
                .await
        }
        .await;
        if let Err(e) = &made {
            warn!(child = %r.name, "its VM did not start; removing it: {}", chain(e));
            let _ = host.abandon_start(actor, r.uuid, "fork", &chain(e)).await;
            let _ = host.remove(actor, r.uuid, "its fork failed").await;
        }
        made?
    };
    let (rec, running) = started;
    let uuid = rec.uuid;
    let running_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let mut lineage = r.lineage;
    lineage.running_ms = Some(running_ms);
    let child = apply_identity(host, actor, rt, rec, &running, lineage, Some(t0)).await?;
    // A child requires what its template's VM required (`requires`): its
    // own services, as a start would give them; without them it goes.
    let rec = host.reload(uuid).await?;
    if let Err(e) = crate::pool::requires::ensure_boxed(host, &rec).await {
        warn!(child = %rec.name, "its required services could not be had; removing it: {}", chain(&e));
        if let Err(d) = crate::partition::lifecycle::delete(host, actor, uuid, true).await {
            warn!(child = %rec.name, "remove it: {}", chain(&d));
        }
        return Err(e);
    }
    Ok(child)
}

/// Why a child of a cancelled fork was not started.
fn cancelled_child() -> HostError {
    HostError::transition("its fork's job was cancelled before this child resumed")
}

/// Hands a running child its identity through its agent (without its
/// lock), then records the outcome: ready, or failed and stopped holding
/// nothing. Used by forks and by later starts of a child.
pub async fn apply_identity(
    host: &Host,
    actor: &str,
    rt: &TemplateRt,
    rec: PartitionRecord,
    running: &Arc<Running>,
    mut lineage: ChildLineage,
    t0: Option<Instant>,
) -> HostResult<api::ForkChild> {
    let t0 = t0.unwrap_or_else(Instant::now);
    let config = identity::child_config(&rec, &lineage)?;
    let report = match running.vm.agent() {
        Ok(agent) => agent.complete_fork(rt.seq, config, IDENTITY_TIMEOUT).await,
        Err(e) => Err(e),
    };
    let failure = match &report {
        Ok(r) => r.failed.as_ref().map(|f| {
            let out: Vec<String> = r
                .services
                .iter()
                .filter(|s| s.code != Some(0))
                .map(|s| s.output.clone())
                .collect();
            format!("{f}: {}", out.join("\n"))
                .trim_end_matches(": ")
                .to_string()
        }),
        Err(e) => Some(format!("applying its identity failed: {}", chain(e))),
    };
    lineage.ready_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    crate::metrics::fork_done(lineage.ready_ms.unwrap_or(0.0), &report);
    lineage.status = if failure.is_some() {
        ChildStatus::Failed
    } else {
        ChildStatus::Ready
    };
    lineage.error.clone_from(&failure);
    let lock = host.registry.lock(rec.uuid);
    let _g = lock.lock().await;
    let now = host.reload(rec.uuid).await?;
    if running.exit_expected() {
        // Killed or deleted while its identity was applied: whoever ended
        // it records the end.
        return Err(HostError::conflict(format!(
            "{} was stopped while its identity was applied ({})",
            rec.name,
            failure
                .as_deref()
                .unwrap_or("the identity step had finished")
        )));
    }
    if now.pid != Some(running.vm.pid()) || !now.run_state.is_active() {
        // Its VM ended on its own during the step (its end is recorded):
        // the identity was never applied, so it gives it back.
        let why = failure.unwrap_or_else(|| "its VM ended during the identity step".into());
        lineage.status = ChildStatus::Failed;
        lineage.error = Some(why.clone());
        let patch = PartitionPatch {
            pending_op: Some(None),
            lineage: Some(Some(Lineage::Child(Box::new(lineage.clone())))),
            ..Default::default()
        };
        let ops = vec![Op::ReturnToPool {
            holder: now.uuid,
            pool: None,
        }];
        let now = host
            .update(actor, format!("{}: {why}", now.name), &now, patch, ops)
            .await?;
        warn!(child = %now.name, "its VM ended during its identity step: {why}");
        return Ok(identity::child_out(&now, &lineage));
    }
    let rec = match &failure {
        None => {
            let patch = PartitionPatch {
                pending_op: Some(None),
                lineage: Some(Some(Lineage::Child(Box::new(lineage.clone())))),
                ..Default::default()
            };
            host.update(
                actor,
                format!("{} is ready", rec.name),
                &now,
                patch,
                Vec::new(),
            )
            .await?
        }
        Some(why) => {
            warn!(child = %rec.name, "its identity step failed; stopping it: {why}");
            host.end_vm(rec.uuid, EndMode::Kill).await;
            let how = Settle {
                to: RunState::Stopped,
                last_exit: Some(format!("identity step failed: {why}")),
                reset_restarts: false,
                lineage: Some(Lineage::Child(Box::new(lineage.clone()))),
                return_pool_values: true,
            };
            host.settle(actor, &now, how).await?
        }
    };
    info!(child = %rec.name, status = ?lineage.status, running_ms = ?lineage.running_ms, ready_ms = ?lineage.ready_ms, "forked");
    Ok(identity::child_out(&rec, &lineage))
}
