//! Supervision: one task per running VM waits for its QEMU to end. An end
//! nobody asked for (a crash, or the guest powering itself off) is recorded
//! in one ledger transaction that also gives the partition's memory, vCPUs
//! and NICs back to `available`; then the restart policy decides whether to
//! start it again, with exponential backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use brood_api::RestartPolicy;
use brood_ledger::{Op, PartitionPatch, Resources, RunState, Stage};
use tracing::{info, warn};
use uuid::Uuid;

use crate::daemon::{Daemon, Running};
use crate::{convert, ops};

/// Longest wait between automatic restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A VM that ran this long before ending starts its backoff afresh.
const STABLE_RUN: Duration = Duration::from_secs(300);

/// Starts supervising a running VM.
pub fn spawn(d: Arc<Daemon>, uuid: Uuid, running: Arc<Running>) {
    watch_points(d.clone(), uuid, running.clone());
    tokio::spawn(async move {
        let started = Instant::now();
        let exit = running.vm.wait_exit().await;
        if d.stopping.load(Ordering::SeqCst) || running.expected_exit.load(Ordering::SeqCst) {
            return;
        }
        let lock = d.partition_lock(uuid);
        let guard = lock.lock().await;
        // An operation that held the lock may have handled it meanwhile.
        if running.expected_exit.load(Ordering::SeqCst) {
            return;
        }
        let Ok(Some(rec)) = d.ledger.partition_by_uuid(uuid).await else {
            return;
        };
        if !rec.run_state.is_active() || rec.pid != Some(running.vm.pid()) {
            return;
        }
        ops::preserve_console(&d, uuid, &running).await;
        d.remove_running(uuid);
        let to = ops::exit_state(&exit);
        let stable = started.elapsed() >= STABLE_RUN;
        let patch = PartitionPatch {
            run_state: Some(to),
            pid: Some(None),
            pending_op: Some(None),
            last_exit: Some(Some(exit.to_string())),
            restart_count: stable.then_some(0),
            ..Default::default()
        };
        let held = Resources {
            disk_gib: 0,
            ..rec.demand
        };
        let ops = Op::release(uuid, &held);
        let why = format!("{} ended: {exit}", rec.name);
        let rec = match ops::commit(&d, "supervisor", why, &rec, patch, ops).await {
            Ok(r) => r,
            Err(e) => {
                warn!(partition = %rec.name, "recording the end of its VM failed: {}", e.message);
                return;
            }
        };
        info!(partition = %rec.name, "VM ended: {exit}");
        drop(guard);
        restart_if_wanted(d, uuid, to).await;
    });
}

/// Applies the restart policy after an unrequested end.
async fn restart_if_wanted(d: Arc<Daemon>, uuid: Uuid, ended_as: RunState) {
    let Ok(Some(rec)) = d.ledger.partition_by_uuid(uuid).await else {
        return;
    };
    let Ok(config) = convert::active_config(&rec) else {
        return;
    };
    let wanted = match config.policy.restart {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => ended_as == RunState::Crashed,
        RestartPolicy::Always => true,
    };
    // Manual partitions are left alone: an administrator holds them.
    if !wanted || rec.stage != Stage::Operating {
        return;
    }
    let delay = Duration::from_secs(1u64 << rec.restart_count.min(6)).min(MAX_BACKOFF);
    info!(partition = %rec.name, "restarting in {delay:?} ({:?} policy)", config.policy.restart);
    tokio::time::sleep(delay).await;
    if d.stopping.load(Ordering::SeqCst) {
        return;
    }
    let Ok(Some(now)) = d.ledger.partition_by_uuid(uuid).await else {
        return;
    };
    // Someone started, stopped or changed it during the backoff.
    if now.run_state != ended_as || now.generation != rec.generation {
        return;
    }
    let count = PartitionPatch {
        restart_count: Some(now.restart_count.saturating_add(1)),
        ..Default::default()
    };
    if ops::commit(
        &d,
        "supervisor",
        format!("restart {}", now.name),
        &now,
        count,
        Vec::new(),
    )
    .await
    .is_err()
    {
        return;
    }
    if let Err(e) = ops::start(&d, "supervisor", uuid).await {
        warn!(partition = %now.name, "automatic restart failed: {}", e.message);
    }
}

/// Listens for the guest asking to be forked (`brood-agent fork-point`):
/// the partition becomes a template named after itself.
fn watch_points(d: Arc<Daemon>, uuid: Uuid, running: Arc<Running>) {
    let Ok(agent) = running.vm.agent().cloned() else {
        return;
    };
    tokio::spawn(async move {
        loop {
            let point = tokio::select! {
                _ = running.vm.wait_exit() => return,
                p = agent.next_point(Duration::from_secs(3600)) => p,
            };
            match point {
                Ok(p) if p.name == brood_proto::FORK_POINT => {
                    let lock = d.partition_lock(uuid);
                    let _g = lock.lock().await;
                    let Ok(Some(rec)) = d.ledger.partition_by_uuid(uuid).await else {
                        return;
                    };
                    if rec.run_state != RunState::Running || rec.pid != Some(running.vm.pid()) {
                        return;
                    }
                    let name = rec.name.clone();
                    match crate::template::freeze(
                        &d,
                        "agent",
                        rec,
                        running.clone(),
                        p.seq,
                        None,
                        crate::template::DEFAULT_POOL,
                    )
                    .await
                    {
                        Ok(_) => {
                            info!(partition = %name, "became a template at the guest's request")
                        }
                        Err(e) => {
                            warn!(partition = %name, "the guest asked to be a template; that failed: {}", e.message)
                        }
                    }
                    return;
                }
                Ok(p) => {
                    info!(partition = %uuid, point = %p.name, "the guest announced a point nobody waits for")
                }
                Err(brood_engine::EngineError::Timeout { .. }) => {}
                Err(_) => return,
            }
        }
    });
}
