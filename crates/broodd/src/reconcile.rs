//! Start-up reconciliation: make the ledger and the VM processes agree
//! again after broodd was stopped or killed at any moment.
//!
//! The VMs are found by what they are (the engine's `find_vms`: a QEMU
//! whose command line names a run directory under the run root), not by
//! pids the ledger may not have recorded yet. Then, per partition: an
//! operation recorded as pending is finished (delete, provision) or undone
//! (create, fork) or settled (stop, kill, save, restore, template); a live
//! partition with a live VM is attached again and its run state taken from
//! the VM; one without is marked crashed (or stopped, when it was being
//! stopped) and its resources are returned. A VM no live partition owns is
//! killed, and stale run and disk directories are removed. It runs before
//! the API is served.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use brood_engine::{FoundVm, VmStatus};
use brood_ledger::{PartitionRecord, PendingOp, RunState, Stage};
use tracing::{info, warn};
use uuid::Uuid;

use crate::host::config::vm_spec;
use crate::host::runstate::Settle;
use crate::host::{Host, HostResult, chain};
use crate::partition::define::provision;
use crate::template::Templates;

const ACTOR: &str = "reconcile";

/// Reconciles the ledger with the processes on the host.
pub async fn run(host: &Arc<Host>) -> HostResult<()> {
    let mut found: HashMap<String, FoundVm> = host
        .engine
        .find_vms()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let mut kept = HashSet::new();
    // Every partition the ledger had, including those reconcile removes.
    let mut known = HashSet::new();
    for rec in host.ledger.all_partitions().await? {
        known.insert(rec.uuid.to_string());
        let name = rec.name.clone();
        let vm = found.remove(&rec.uuid.to_string());
        match reconcile_one(host, rec, vm).await {
            Ok(Some(uuid)) => {
                kept.insert(uuid.to_string());
            }
            Ok(None) => {}
            Err(e) => warn!(partition = %name, "reconcile: {}", chain(&e)),
        }
    }
    for (name, vm) in found {
        warn!(vm = %name, pid = vm.pid, "killing a VM no partition owns");
        kill(host, &vm);
    }
    host.engine.remove_run_dirs(&|n| kept.contains(n));
    // Groups of QEMUs that ended while no broodd watched them; a running
    // VM's group is not empty, so it stays. Only this ledger's VMs: other
    // brood daemons on the host have their own.
    host.engine.remove_idle_groups(&|n| known.contains(n));
    let templates = host.feature::<Templates>();
    if let Ok(dir) = std::fs::read_dir(&host.paths.templates) {
        for e in dir.flatten() {
            let keep = Uuid::parse_str(&e.file_name().to_string_lossy())
                .is_ok_and(|u| templates.get(u).is_some());
            if !keep {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(host.paths.data.join("disks")) {
        for e in dir.flatten() {
            let known = match Uuid::parse_str(&e.file_name().to_string_lossy()) {
                Ok(u) => host.ledger.partition_by_uuid(u).await?.is_some(),
                Err(_) => true,
            };
            if !known {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// Settles one partition; returns its uuid when its VM is running.
async fn reconcile_one(
    host: &Arc<Host>,
    rec: PartitionRecord,
    vm: Option<FoundVm>,
) -> HostResult<Option<Uuid>> {
    let uuid = rec.uuid;
    match rec.pending_op {
        Some(op @ (PendingOp::Delete | PendingOp::Create | PendingOp::Fork)) => {
            // A delete is finished; a define-and-start or a fork that did
            // not complete is undone: no half-made partitions.
            if let Some(vm) = &vm {
                kill(host, vm);
            }
            let why = match op {
                PendingOp::Delete => "finishing a delete interrupted by a restart",
                PendingOp::Create => "its create was interrupted by a restart",
                _ => "its fork was interrupted by a restart",
            };
            settle_inactive(host, &rec, RunState::Stopped, why).await?;
            host.remove(ACTOR, uuid, why).await?;
            return Ok(None);
        }
        Some(PendingOp::Provision) if rec.stage == Stage::Provisioning => {
            provision(host, ACTOR, uuid, None).await?;
            return Ok(None);
        }
        Some(PendingOp::Template) => {
            let _ = tokio::fs::remove_dir_all(host.paths.template_dir(uuid)).await;
            if vm.is_none() {
                settle_inactive(
                    host,
                    &rec,
                    RunState::Crashed,
                    "making a template was interrupted by a restart",
                )
                .await?;
                return Ok(None);
            }
        }
        _ => {}
    }
    if !rec.run_state.is_active() {
        if let Some(vm) = &vm {
            warn!(partition = %rec.name, pid = vm.pid, "killing a VM of a partition that is {}", rec.run_state);
            kill(host, vm);
        }
        return Ok(None);
    }
    let Some(found) = vm else {
        let (to, why) = match rec.pending_op {
            Some(PendingOp::Stop | PendingOp::Kill) => {
                (RunState::Stopped, "stopped while broodd was down")
            }
            Some(PendingOp::Save) if host.paths.saved_state(uuid).exists() => {
                (RunState::Saved, "state saved")
            }
            Some(PendingOp::Restore) => (RunState::Saved, "restore interrupted by a restart"),
            _ if rec.run_state == RunState::Starting => {
                (RunState::Stopped, "start interrupted by a restart")
            }
            _ => (RunState::Crashed, "its VM was gone when broodd restarted"),
        };
        settle_inactive(host, &rec, to, why).await?;
        return Ok(None);
    };
    if matches!(rec.pending_op, Some(PendingOp::Stop | PendingOp::Kill)) {
        kill(host, &found);
        settle_inactive(
            host,
            &rec,
            RunState::Stopped,
            "stopped: the stop was interrupted by a restart",
        )
        .await?;
        return Ok(None);
    }
    let attached = match vm_spec(
        &crate::partition::change::as_running(host, &rec),
        &host.paths,
    ) {
        Ok(spec) => host.engine.attach(&spec).await.map_err(|e| e.to_string()),
        Err(e) => Err(chain(&e)),
    };
    let vm = match attached {
        Ok(vm) => vm,
        Err(e) => {
            warn!(partition = %rec.name, "cannot attach to its VM ({e}); killing it");
            kill(host, &found);
            settle_inactive(
                host,
                &rec,
                RunState::Crashed,
                "its VM could not be attached after a restart",
            )
            .await?;
            return Ok(None);
        }
    };
    let status = vm.status().await.ok();
    let interrupted = matches!(rec.pending_op, Some(PendingOp::Save | PendingOp::Template));
    if interrupted {
        // The save did not finish: carry on running.
        let _ =
            tokio::fs::remove_file(host.paths.saved_state(uuid).with_extension("state.partial"))
                .await;
        let _ = vm.resume().await;
    }
    let to = match status {
        Some(VmStatus::Paused) if !interrupted => RunState::Paused,
        _ => RunState::Running,
    };
    let (rec, running) = host.mark_running(ACTOR, &rec, vm, to, None).await?;
    info!(partition = %rec.name, pid = running.vm.pid(), "reattached");
    Ok(Some(uuid))
}

/// Moves a live partition whose VM is gone to `to`, returning what it held.
async fn settle_inactive(
    host: &Host,
    rec: &PartitionRecord,
    to: RunState,
    why: &str,
) -> HostResult<()> {
    if rec.run_state.is_active() {
        let r = host.settle(ACTOR, rec, Settle::to(to, why)).await?;
        info!(partition = %r.name, "{why}");
    }
    Ok(())
}

fn kill(host: &Host, vm: &FoundVm) {
    if let Err(e) = host.engine.kill_found(vm) {
        warn!(vm = %vm.name, pid = vm.pid, "could not kill it: {e}");
    }
}
