//! Start-up reconciliation: make the ledger and the QEMU processes agree
//! again after broodd was stopped or killed at any moment.
//!
//! The QEMUs are found by what they are (a QEMU whose command line names a
//! run directory under broodd's run root), not by pids the ledger may not
//! have recorded yet. Then, per partition: an operation recorded in
//! `pending_op` is finished (delete, provision) or settled (stop, kill,
//! save, restore); an active partition with a live QEMU is attached again
//! and its run state taken from QMP; one without is marked crashed (or
//! stopped, when it was being stopped) and its resources are returned. A
//! QEMU no active partition owns is killed, and stale run and disk
//! directories are removed. It runs before the API is served.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use brood_engine::VmStatus;
use brood_ledger::{Op, PartitionPatch, PartitionRecord, Resources, RunState, Stage};
use tracing::{info, warn};
use uuid::Uuid;

use crate::daemon::{Daemon, Running};
use crate::error::ApiResult;
use crate::{convert, ops, supervise};

const ACTOR: &str = "reconcile";

/// Reconciles the ledger with the processes on the host.
pub async fn run(d: &Arc<Daemon>) -> anyhow::Result<()> {
    let mut qemus: HashMap<String, brood_engine::FoundVm> = d
        .engine
        .find_vms()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let records = d.ledger.all_partitions().await?;
    let mut kept = std::collections::HashSet::new();
    for rec in records {
        let name = rec.name.clone();
        let qemu = qemus.remove(&rec.uuid.to_string());
        match reconcile_one(d, rec, qemu).await {
            Ok(Some(uuid)) => {
                kept.insert(uuid.to_string());
            }
            Ok(None) => {}
            Err(e) => warn!(partition = %name, "reconcile: {}", e.message),
        }
    }
    // QEMUs that belong to no active partition.
    for (name, vm) in qemus {
        warn!(vm = %name, pid = vm.pid, "killing a QEMU no partition owns");
        kill(d, &vm);
    }
    // Run directories of VMs that are gone.
    d.engine.remove_run_dirs(&|n| kept.contains(n));
    // Template directories of templates that no longer exist.
    if let Ok(dir) = std::fs::read_dir(&d.paths.templates) {
        for e in dir.flatten() {
            let keep = Uuid::parse_str(&e.file_name().to_string_lossy())
                .is_ok_and(|u| d.template(u).is_some());
            if !keep {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    // Disk directories of partitions that no longer exist.
    if let Ok(dir) = std::fs::read_dir(d.paths.data.join("disks")) {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let known = match Uuid::parse_str(&n) {
                Ok(u) => d.ledger.partition_by_uuid(u).await?.is_some(),
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
    d: &Arc<Daemon>,
    rec: PartitionRecord,
    qemu: Option<brood_engine::FoundVm>,
) -> ApiResult<Option<Uuid>> {
    let uuid = rec.uuid;
    match rec.pending_op.as_deref() {
        Some("delete") => {
            if let Some(vm) = &qemu {
                kill(d, vm);
            }
            let rec =
                settle_inactive(d, rec, RunState::Stopped, "deleting when broodd stopped").await?;
            drop(rec);
            ops::remove(
                d,
                ACTOR,
                uuid,
                "finishing a delete interrupted by a restart",
            )
            .await?;
            return Ok(None);
        }
        Some("provision") if rec.stage == Stage::Provisioning => {
            ops::provision(d, ACTOR, uuid).await?;
            return Ok(None);
        }
        Some("fork") => {
            // A child whose fork did not finish: no half-made children.
            if let Some(vm) = &qemu {
                kill(d, vm);
            }
            settle_inactive(d, rec, RunState::Stopped, "fork interrupted by a restart").await?;
            ops::remove(d, ACTOR, uuid, "its fork was interrupted by a restart").await?;
            return Ok(None);
        }
        Some("template") => {
            let _ = tokio::fs::remove_dir_all(d.paths.template_dir(uuid)).await;
            if qemu.is_none() {
                settle_inactive(
                    d,
                    rec,
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
        if let Some(vm) = &qemu {
            warn!(partition = %rec.name, pid = vm.pid, "killing a QEMU of a partition that is {}", rec.run_state);
            kill(d, vm);
        }
        return Ok(None);
    }
    let Some(found) = qemu else {
        let (to, why) = match rec.pending_op.as_deref() {
            Some("stop" | "kill") => (RunState::Stopped, "stopped while broodd was down"),
            Some("save") if d.paths.saved_state(uuid).exists() => (RunState::Saved, "state saved"),
            Some("restore") => (RunState::Saved, "restore interrupted by a restart"),
            _ if rec.run_state == RunState::Starting => {
                (RunState::Stopped, "start interrupted by a restart")
            }
            _ => (RunState::Crashed, "QEMU was gone when broodd restarted"),
        };
        settle_inactive(d, rec, to, why).await?;
        return Ok(None);
    };
    if matches!(rec.pending_op.as_deref(), Some("stop" | "kill")) {
        kill(d, &found);
        settle_inactive(
            d,
            rec,
            RunState::Stopped,
            "stopped: the stop was interrupted by a restart",
        )
        .await?;
        return Ok(None);
    }
    let spec = convert::vm_spec(&rec, &d.paths)?;
    let vm = match d.engine.attach(&spec).await {
        Ok(vm) => vm,
        Err(e) => {
            warn!(partition = %rec.name, "cannot attach to its QEMU ({e}); killing it");
            kill(d, &found);
            settle_inactive(
                d,
                rec,
                RunState::Crashed,
                "QEMU could not be attached after a restart",
            )
            .await?;
            return Ok(None);
        }
    };
    let status = vm.status().await.ok();
    if matches!(rec.pending_op.as_deref(), Some("save" | "template")) {
        // The save did not finish: carry on running.
        let _ =
            tokio::fs::remove_file(d.paths.saved_state(uuid).with_extension("state.partial")).await;
        let _ = vm.resume().await;
    }
    let to = match status {
        Some(VmStatus::Paused)
            if !matches!(rec.pending_op.as_deref(), Some("save" | "template")) =>
        {
            RunState::Paused
        }
        _ => RunState::Running,
    };
    let upid = vm.pid();
    let running = Arc::new(Running {
        vm,
        expected_exit: AtomicBool::new(false),
    });
    d.insert_running(uuid, running.clone());
    let patch = PartitionPatch {
        run_state: (to != rec.run_state).then_some(to),
        pid: Some(Some(upid)),
        pending_op: Some(None),
        ..Default::default()
    };
    ops::commit(
        d,
        ACTOR,
        format!("{} reattached (pid {upid})", rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await?;
    supervise::spawn(d.clone(), uuid, running);
    info!(partition = %rec.name, pid = upid, "reattached");
    Ok(Some(uuid))
}

/// Moves an active partition whose QEMU is gone to `to`, returning what it held.
async fn settle_inactive(
    d: &Daemon,
    rec: PartitionRecord,
    to: RunState,
    why: &str,
) -> ApiResult<PartitionRecord> {
    if !rec.run_state.is_active() {
        return Ok(rec);
    }
    let held = d
        .ledger
        .held_by(brood_ledger::Owner::Partition(rec.uuid))
        .await?;
    let release = Resources {
        disk_gib: 0,
        ..held
    };
    let patch = PartitionPatch {
        run_state: Some(to),
        pid: Some(None),
        pending_op: Some(None),
        last_exit: Some(Some(why.to_string())),
        ..Default::default()
    };
    let r = ops::commit(
        d,
        ACTOR,
        format!("{}: {why}", rec.name),
        &rec,
        patch,
        Op::release(rec.uuid, &release),
    )
    .await?;
    info!(partition = %r.name, "{why}");
    Ok(r)
}

fn kill(d: &Daemon, vm: &brood_engine::FoundVm) {
    if let Err(e) = d.engine.kill_found(vm) {
        warn!(vm = %vm.name, pid = vm.pid, "could not kill it: {e}");
    }
}
