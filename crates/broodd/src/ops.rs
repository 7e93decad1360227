//! The operations on partitions, independent of HTTP.
//!
//! Each takes the partition's lock for its whole length, checks the state
//! it needs, and changes the ledger in transactions ordered so that a crash
//! of broodd between any two steps leaves a state `reconcile` can finish:
//! resources are reserved together with the move to `starting` before QEMU
//! exists, and released together with the move to `stopped` only after QEMU
//! is gone; an operation that spans several steps records itself in
//! `pending_op` first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use brood_api as api;
use brood_engine::{Engine, ExitKind, VmExit};
use brood_ledger::{
    Op, PartitionExpect, PartitionPatch, PartitionRecord, Resources, RunState, Stage, Tx,
};
use tracing::{info, warn};
use uuid::Uuid;

use crate::convert;
use crate::daemon::{Daemon, Running};
use crate::error::{ApiError, ApiResult, chain};

/// Default deadline for a graceful stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds a partition by name or uuid.
pub async fn resolve(d: &Daemon, key: &str) -> ApiResult<PartitionRecord> {
    let rec = match Uuid::parse_str(key) {
        Ok(u) => d.ledger.partition_by_uuid(u).await?,
        Err(_) => d.ledger.partition_by_name(key).await?,
    };
    rec.ok_or_else(|| ApiError::not_found(key))
}

async fn reload(d: &Daemon, uuid: Uuid) -> ApiResult<PartitionRecord> {
    d.ledger
        .partition_by_uuid(uuid)
        .await?
        .ok_or_else(|| ApiError::not_found(&uuid.to_string()))
}

/// What a partition holds while active (its demand without disks).
fn active_part(r: &Resources) -> Resources {
    Resources { disk_gib: 0, ..*r }
}

/// Commits `ops` plus a patch of `rec`, expecting its run state and stage
/// as read, then returns the new record and publishes it.
pub async fn commit(
    d: &Daemon,
    actor: &str,
    reason: String,
    rec: &PartitionRecord,
    patch: PartitionPatch,
    mut ops: Vec<Op>,
) -> ApiResult<PartitionRecord> {
    let expect = PartitionExpect {
        run_state: Some(rec.run_state),
        stage: Some(rec.stage),
        generation: None,
    };
    ops.push(Op::UpdatePartition {
        uuid: rec.uuid,
        expect,
        set: patch,
    });
    d.ledger
        .commit(Tx {
            actor: actor.into(),
            reason,
            ops,
        })
        .await?;
    let new = reload(d, rec.uuid).await?;
    d.publish_partition(&new, new.last_exit.clone());
    Ok(new)
}

/// Defines a partition: records it with its disk space reserved, creates
/// its disks, then makes it operating. With `start`, also starts it, and
/// removes it again if the start fails.
pub async fn define(
    d: &Arc<Daemon>,
    actor: &str,
    req: api::DefineRequest,
) -> ApiResult<PartitionRecord> {
    let active = convert::validate_define(&req)?;
    let disks = convert::all_disks(&req.configs)?;
    let config = req.configs.get(&active).cloned().unwrap_or_default();
    let uuid = Uuid::new_v4();
    let now = convert::now();
    let rec = PartitionRecord {
        uuid,
        name: req.name.clone(),
        stage: Stage::Provisioning,
        run_state: RunState::Stopped,
        active_config: active,
        configs: brood_ledger::JsonText::from_serialize(&req.configs)
            .map_err(|e| ApiError::internal("encode configurations", &e))?,
        demand: convert::demand(&config, &disks),
        pid: None,
        pending_op: Some("provision".into()),
        restart_count: 0,
        last_exit: None,
        created_at: now.clone(),
        updated_at: now,
        generation: 0,
        parent: None,
        fork: None,
    };
    let disk = Resources {
        disk_gib: rec.demand.disk_gib,
        ..Resources::default()
    };
    let mut ops = vec![Op::InsertPartition(rec.clone())];
    ops.extend(Op::reserve(uuid, &disk));
    d.ledger
        .commit(Tx {
            actor: actor.into(),
            reason: format!("define {}", req.name),
            ops,
        })
        .await?;
    let lock = d.partition_lock(uuid);
    let guard = lock.lock().await;
    let rec = match provision(d, actor, uuid).await {
        Ok(r) => r,
        Err(e) => {
            let _ = remove(d, actor, uuid, "provisioning failed").await;
            return Err(e);
        }
    };
    drop(guard);
    if !req.start {
        return Ok(rec);
    }
    match start(d, actor, uuid).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let lock = d.partition_lock(uuid);
            let _g = lock.lock().await;
            if let Err(undo) = remove(d, actor, uuid, "start after define failed").await {
                warn!(
                    "removing {} after its failed start: {}",
                    req.name, undo.message
                );
            }
            Err(e)
        }
    }
}

/// Creates a provisioning partition's missing disks and makes it operating.
pub async fn provision(d: &Daemon, actor: &str, uuid: Uuid) -> ApiResult<PartitionRecord> {
    let rec = reload(d, uuid).await?;
    let disks = convert::all_disks(&convert::configs_of(&rec)?)?;
    let dir = d.paths.disk_dir(uuid);
    if !disks.is_empty() {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| ApiError::internal(&format!("create {}", dir.display()), &e))?;
    }
    for (name, size) in &disks {
        let path = d.paths.disk(uuid, name);
        if path.exists() {
            continue;
        }
        let tmp = path.with_extension("qcow2.partial");
        let out = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&tmp)
            .arg(format!("{size}G"))
            .output()
            .await
            .map_err(|e| ApiError::internal("run qemu-img", &e))?;
        if !out.status.success() {
            return Err(ApiError::bad_request(format!(
                "qemu-img could not create disk {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| ApiError::internal(&format!("rename {}", tmp.display()), &e))?;
    }
    let patch = PartitionPatch {
        stage: Some(Stage::Operating),
        pending_op: Some(None),
        ..Default::default()
    };
    commit(
        d,
        actor,
        format!("provisioned {}", rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await
}

/// Removes a stopped partition: its files, its disk space, its record.
/// The caller holds the partition lock.
pub async fn remove(d: &Daemon, actor: &str, uuid: Uuid, why: &str) -> ApiResult<()> {
    let rec = reload(d, uuid).await?;
    let rec = if rec.pending_op.as_deref() == Some("delete") {
        rec
    } else {
        let patch = PartitionPatch {
            pending_op: Some(Some("delete".into())),
            ..Default::default()
        };
        commit(
            d,
            actor,
            format!("delete {} ({why})", rec.name),
            &rec,
            patch,
            Vec::new(),
        )
        .await?
    };
    let _ = tokio::fs::remove_dir_all(d.paths.disk_dir(uuid)).await;
    let _ = tokio::fs::remove_file(d.paths.saved_state(uuid)).await;
    let _ = tokio::fs::remove_file(d.paths.console_log(uuid)).await;
    let held = d
        .ledger
        .held_by(brood_ledger::Owner::Partition(uuid))
        .await?;
    let mut ops = Op::release(uuid, &held);
    // A child's identity and address go back to their pools.
    ops.push(Op::ReturnToPool {
        holder: uuid,
        pool: None,
    });
    ops.push(Op::DeletePartition {
        uuid,
        expect: PartitionExpect {
            run_state: Some(rec.run_state),
            stage: None,
            generation: None,
        },
    });
    d.ledger
        .commit(Tx {
            actor: actor.into(),
            reason: format!("deleted {} ({why})", rec.name),
            ops,
        })
        .await?;
    d.drop_lock(uuid);
    d.publish(api::EventKind::PartitionDeleted {
        name: rec.name.clone(),
        uuid,
    });
    info!(partition = %rec.name, "deleted");
    Ok(())
}

/// Starts a partition (stopped or crashed) with its active configuration.
pub async fn start(d: &Arc<Daemon>, actor: &str, uuid: Uuid) -> ApiResult<PartitionRecord> {
    let lock = d.partition_lock(uuid);
    let _g = lock.lock().await;
    let rec = reload(d, uuid).await?;
    if !rec.stage.can_start() {
        return Err(ApiError::transition(format!(
            "cannot start {}: it is {} (only operating or manual partitions run)",
            rec.name, rec.stage
        )));
    }
    match rec.run_state {
        RunState::Stopped | RunState::Crashed => {}
        RunState::Saved => {
            return Err(ApiError::transition(format!(
                "{} has a saved state: restore it, or stop it to discard the state",
                rec.name
            )));
        }
        other => {
            return Err(ApiError::transition(format!(
                "cannot start {}: it is {other}",
                rec.name
            )));
        }
    }
    let is_child = rec.parent.is_some();
    // A child keeps the charge it was forked with; a partition takes the
    // demand of its active configuration.
    let demand = if is_child {
        rec.demand
    } else {
        let config = convert::active_config(&rec)?;
        let disks = convert::all_disks(&convert::configs_of(&rec)?)?;
        convert::demand(&config, &disks)
    };
    let patch = PartitionPatch {
        run_state: Some(RunState::Starting),
        demand: Some(demand),
        pid: Some(None),
        ..Default::default()
    };
    let ops = Op::reserve(uuid, &active_part(&demand));
    let rec = commit(d, actor, format!("start {}", rec.name), &rec, patch, ops).await?;
    if is_child {
        return match crate::fork::restart_child(d, actor, &rec).await {
            Ok(r) => Ok(r),
            Err(e) => {
                abandon_start(d, actor, uuid, "start", &e.message).await?;
                Err(e)
            }
        };
    }
    let spec = convert::vm_spec(&rec, &d.paths)?;
    launched(d, actor, rec, d.engine.boot(&spec).await).await
}

/// Ends a start that failed after its resources were reserved: kills the
/// VM if it got as far as running, and moves the partition back to stopped
/// in one transaction that returns its memory, vCPUs and NICs. The caller
/// holds the partition lock.
pub async fn abandon_start(
    d: &Daemon,
    actor: &str,
    uuid: Uuid,
    what: &str,
    why: &str,
) -> ApiResult<()> {
    if let Some(r) = d.remove_running(uuid) {
        r.expected_exit.store(true, Ordering::SeqCst);
        let _ = r.vm.kill().await;
    }
    let now = reload(d, uuid).await?;
    if now.run_state.is_active() {
        let patch = PartitionPatch {
            run_state: Some(RunState::Stopped),
            pid: Some(None),
            last_exit: Some(Some(format!("failed to {what}: {why}"))),
            ..Default::default()
        };
        let ops = Op::release(uuid, &active_part(&now.demand));
        commit(
            d,
            actor,
            format!("{what} of {} failed", now.name),
            &now,
            patch,
            ops,
        )
        .await?;
    }
    Ok(())
}

/// Finishes a start or restore: records the running VM, or gives the
/// resources back when QEMU did not start.
async fn launched(
    d: &Arc<Daemon>,
    actor: &str,
    rec: PartitionRecord,
    vm: Result<brood_engine::Vm, brood_engine::EngineError>,
) -> ApiResult<PartitionRecord> {
    let (back_to, restore) = match rec.pending_op.as_deref() {
        Some("restore") => (RunState::Saved, true),
        _ => (RunState::Stopped, false),
    };
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            let msg = format!(
                "failed to {}: {}",
                if restore { "restore" } else { "start" },
                chain(&e)
            );
            let patch = PartitionPatch {
                run_state: Some(back_to),
                pending_op: Some(None),
                last_exit: Some(Some(msg.clone())),
                ..Default::default()
            };
            let ops = Op::release(rec.uuid, &active_part(&rec.demand));
            commit(
                d,
                actor,
                format!(
                    "{} of {} failed",
                    if restore { "restore" } else { "start" },
                    rec.name
                ),
                &rec,
                patch,
                ops,
            )
            .await?;
            return Err(ApiError::engine(&format!("start {}", rec.name), &e));
        }
    };
    let pid = vm.pid();
    let patch = PartitionPatch {
        run_state: Some(RunState::Running),
        pid: Some(Some(pid)),
        pending_op: Some(None),
        ..Default::default()
    };
    let running = Arc::new(Running {
        vm,
        expected_exit: AtomicBool::new(false),
    });
    d.insert_running(rec.uuid, running.clone());
    let rec = match commit(
        d,
        actor,
        format!("{} running (pid {pid})", rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            running.expected_exit.store(true, Ordering::SeqCst);
            let _ = running.vm.kill().await;
            d.remove_running(rec.uuid);
            return Err(e);
        }
    };
    if restore {
        let _ = tokio::fs::remove_file(d.paths.saved_state(rec.uuid)).await;
    }
    crate::supervise::spawn(d.clone(), rec.uuid, running);
    Ok(rec)
}

/// How a stop ends the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Power off through the agent or ACPI, kill after the deadline.
    Graceful(Duration),
    /// SIGKILL at once.
    Kill,
}

/// Stops (or kills) a running or paused partition.
pub async fn stop(
    d: &Arc<Daemon>,
    actor: &str,
    uuid: Uuid,
    mode: StopMode,
) -> ApiResult<PartitionRecord> {
    if mode == StopMode::Kill
        && let Some(r) = d.running(uuid)
    {
        // SIGKILL before the lock: an operation that holds it while waiting
        // on a hung QEMU fails at once instead of delaying the kill.
        r.expected_exit.store(true, Ordering::SeqCst);
        r.vm.kill_now();
    }
    let lock = d.partition_lock(uuid);
    let _g = match mode {
        StopMode::Graceful(t) => match tokio::time::timeout(t, lock.lock()).await {
            Ok(g) => g,
            Err(_) => {
                preempt_if_hung(d, uuid).await;
                lock.lock().await
            }
        },
        StopMode::Kill => lock.lock().await,
    };
    let rec = reload(d, uuid).await?;
    match rec.run_state {
        RunState::Running | RunState::Paused | RunState::Starting => {}
        RunState::Saved => {
            // Discard the saved state.
            let _ = tokio::fs::remove_file(d.paths.saved_state(uuid)).await;
            let patch = PartitionPatch {
                run_state: Some(RunState::Stopped),
                ..Default::default()
            };
            return commit(
                d,
                actor,
                format!("discard the saved state of {}", rec.name),
                &rec,
                patch,
                Vec::new(),
            )
            .await;
        }
        RunState::Crashed => {
            let patch = PartitionPatch {
                run_state: Some(RunState::Stopped),
                ..Default::default()
            };
            return commit(
                d,
                actor,
                format!("acknowledge the crash of {}", rec.name),
                &rec,
                patch,
                Vec::new(),
            )
            .await;
        }
        RunState::Stopped => {
            return Err(ApiError::transition(format!(
                "{} is already stopped",
                rec.name
            )));
        }
    }
    let op = if mode == StopMode::Kill {
        "kill"
    } else {
        "stop"
    };
    let patch = PartitionPatch {
        pending_op: Some(Some(op.into())),
        ..Default::default()
    };
    let rec = commit(
        d,
        actor,
        format!("{op} {}", rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await?;
    let exit = end_vm(d, uuid, mode).await;
    let patch = PartitionPatch {
        run_state: Some(RunState::Stopped),
        pid: Some(None),
        pending_op: Some(None),
        last_exit: Some(exit.map(|e| e.to_string())),
        ..Default::default()
    };
    let ops = Op::release(uuid, &active_part(&rec.demand));
    commit(d, actor, format!("{} stopped", rec.name), &rec, patch, ops).await
}

/// Kills a partition's VM when its QEMU no longer answers QMP: a stop
/// that waited its whole deadline for the partition's lock may be queued
/// behind a call stuck on that QEMU, which the kill ends.
async fn preempt_if_hung(d: &Daemon, uuid: Uuid) {
    const PROBE: Duration = Duration::from_secs(2);
    let Some(r) = d.running(uuid) else { return };
    let answers = tokio::time::timeout(PROBE, r.vm.status())
        .await
        .is_ok_and(|s| s.is_ok());
    if !answers {
        warn!("QEMU of {uuid} does not answer QMP within {PROBE:?}; killing it for the stop");
        r.expected_exit.store(true, Ordering::SeqCst);
        r.vm.kill_now();
    }
}

/// Ends a partition's VM on purpose and forgets it; returns how it ended.
async fn end_vm(d: &Daemon, uuid: Uuid, mode: StopMode) -> Option<VmExit> {
    let running = d.running(uuid)?;
    running.expected_exit.store(true, Ordering::SeqCst);
    if mode != StopMode::Kill
        && running
            .vm
            .status()
            .await
            .is_ok_and(|s| s == brood_engine::VmStatus::Paused)
    {
        let _ = running.vm.resume().await;
    }
    let exit = match mode {
        StopMode::Graceful(t) => running.vm.shutdown(t).await,
        StopMode::Kill => running.vm.kill().await,
    };
    preserve_console(d, uuid, &running).await;
    d.remove_running(uuid);
    match exit {
        Ok(e) => Some(e),
        Err(e) => {
            warn!("ending VM {uuid}: {}", chain(&e));
            running.vm.kill().await.ok()
        }
    }
}

/// Most bytes of console history kept per partition.
pub const CONSOLE_HISTORY: usize = 1 << 20;

/// The console output of a VM's current run (its log lives in the run directory).
pub async fn current_console(running: &Running) -> Vec<u8> {
    let log = running.vm.console().log_path().to_path_buf();
    let mut text = tokio::fs::read(log.with_extension("log.1"))
        .await
        .unwrap_or_default();
    text.extend(tokio::fs::read(&log).await.unwrap_or_default());
    text
}

/// Appends a VM's console output to the partition's console history
/// (which outlives the run directory), keeping the newest
/// [`CONSOLE_HISTORY`] bytes.
pub async fn preserve_console(d: &Daemon, uuid: Uuid, running: &Running) {
    let dest = d.paths.console_log(uuid);
    let mut text = tokio::fs::read(&dest).await.unwrap_or_default();
    text.extend(current_console(running).await);
    let start = text.len().saturating_sub(CONSOLE_HISTORY);
    if let Some(dir) = dest.parent() {
        let _ = tokio::fs::create_dir_all(dir).await;
    }
    let _ = tokio::fs::write(dest, text.get(start..).unwrap_or_default()).await;
}

/// Pauses or resumes a partition.
pub async fn pause(d: &Daemon, actor: &str, uuid: Uuid, pause: bool) -> ApiResult<PartitionRecord> {
    let lock = d.partition_lock(uuid);
    let _g = lock.lock().await;
    let rec = reload(d, uuid).await?;
    let (from, to) = if pause {
        (RunState::Running, RunState::Paused)
    } else {
        (RunState::Paused, RunState::Running)
    };
    if rec.run_state != from {
        return Err(ApiError::transition(format!(
            "cannot {} {}: it is {} (only a {from} partition can be)",
            if pause { "pause" } else { "resume" },
            rec.name,
            rec.run_state
        )));
    }
    let running = d
        .running(uuid)
        .ok_or_else(|| ApiError::conflict(format!("{} has no VM yet; retry", rec.name)))?;
    let r = if pause {
        running.vm.pause().await
    } else {
        running.vm.resume().await
    };
    r.map_err(|e| {
        ApiError::engine(
            &format!("{} {}", if pause { "pause" } else { "resume" }, rec.name),
            &e,
        )
    })?;
    let patch = PartitionPatch {
        run_state: Some(to),
        ..Default::default()
    };
    commit(
        d,
        actor,
        format!("{} {}", if pause { "paused" } else { "resumed" }, rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await
}

/// Saves a partition's whole state to disk and ends its VM; memory, vCPUs
/// and NICs go back to `available`.
pub async fn save(d: &Arc<Daemon>, actor: &str, uuid: Uuid) -> ApiResult<PartitionRecord> {
    let lock = d.partition_lock(uuid);
    let _g = lock.lock().await;
    let rec = reload(d, uuid).await?;
    if !matches!(rec.run_state, RunState::Running | RunState::Paused) {
        return Err(ApiError::transition(format!(
            "cannot save {}: it is {}",
            rec.name, rec.run_state
        )));
    }
    let running = d
        .running(uuid)
        .ok_or_else(|| ApiError::conflict(format!("{} has no VM yet; retry", rec.name)))?;
    let patch = PartitionPatch {
        pending_op: Some(Some("save".into())),
        ..Default::default()
    };
    let rec = commit(
        d,
        actor,
        format!("save {}", rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await?;
    let path = d.paths.saved_state(uuid);
    let partial = path.with_extension("state.partial");
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| ApiError::internal("create the saves directory", &e))?;
    }
    if let Err(e) = running.vm.save(&partial).await {
        let _ = tokio::fs::remove_file(&partial).await;
        let _ = running.vm.resume().await;
        let patch = PartitionPatch {
            pending_op: Some(None),
            ..Default::default()
        };
        commit(
            d,
            actor,
            format!("save of {} failed", rec.name),
            &rec,
            patch,
            Vec::new(),
        )
        .await?;
        return Err(ApiError::engine(&format!("save {}", rec.name), &e));
    }
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(|e| ApiError::internal("keep the saved state", &e))?;
    end_vm(d, uuid, StopMode::Kill).await;
    let patch = PartitionPatch {
        run_state: Some(RunState::Saved),
        pid: Some(None),
        pending_op: Some(None),
        last_exit: Some(Some("state saved".into())),
        ..Default::default()
    };
    let ops = Op::release(uuid, &active_part(&rec.demand));
    commit(d, actor, format!("{} saved", rec.name), &rec, patch, ops).await
}

/// Starts a saved partition from its saved state.
pub async fn restore(d: &Arc<Daemon>, actor: &str, uuid: Uuid) -> ApiResult<PartitionRecord> {
    let lock = d.partition_lock(uuid);
    let _g = lock.lock().await;
    let rec = reload(d, uuid).await?;
    if rec.run_state != RunState::Saved {
        return Err(ApiError::transition(format!(
            "cannot restore {}: it is {}, not saved",
            rec.name, rec.run_state
        )));
    }
    let state = d.paths.saved_state(uuid);
    let patch = PartitionPatch {
        run_state: Some(RunState::Starting),
        pending_op: Some(Some("restore".into())),
        pid: Some(None),
        ..Default::default()
    };
    let ops = Op::reserve(uuid, &active_part(&rec.demand));
    let rec = commit(d, actor, format!("restore {}", rec.name), &rec, patch, ops).await?;
    let spec = convert::vm_spec(&rec, &d.paths)?;
    launched(d, actor, rec, d.engine.restore(&spec, &state).await).await
}

/// Deletes a partition; an active one only with `force` (it is killed first).
pub async fn delete(d: &Arc<Daemon>, actor: &str, uuid: Uuid, force: bool) -> ApiResult<()> {
    let rec = reload(d, uuid).await?;
    if rec.run_state.is_active() {
        if !force {
            return Err(ApiError::transition(format!(
                "{} is {}: stop it first, or delete with force",
                rec.name, rec.run_state
            )));
        }
        stop(d, actor, uuid, StopMode::Kill).await?;
    }
    let lock = d.partition_lock(uuid);
    let _g = lock.lock().await;
    let rec = reload(d, uuid).await?;
    if rec.run_state.is_active() {
        return Err(ApiError::conflict(format!(
            "{} was started again meanwhile",
            rec.name
        )));
    }
    remove(d, actor, uuid, "deleted through the API").await
}

/// Chooses the configuration used at the next start.
pub async fn set_config(
    d: &Daemon,
    actor: &str,
    uuid: Uuid,
    config: &str,
) -> ApiResult<PartitionRecord> {
    let lock = d.partition_lock(uuid);
    let _g = lock.lock().await;
    let rec = reload(d, uuid).await?;
    let configs = convert::configs_of(&rec)?;
    let Some(c) = configs.get(config) else {
        return Err(ApiError::bad_request(format!(
            "{} has no configuration {config:?} (it has {})",
            rec.name,
            configs.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    };
    let mut patch = PartitionPatch {
        active_config: Some(config.to_string()),
        ..Default::default()
    };
    // While it runs it keeps holding what it started with; the new demand
    // is taken at the next start.
    if !rec.run_state.is_active() {
        patch.demand = Some(convert::demand(c, &convert::all_disks(&configs)?));
    }
    commit(
        d,
        actor,
        format!("{} will start with configuration {config}", rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await
}

/// Moves a partition to another life-cycle stage.
pub async fn set_stage(
    d: &Daemon,
    actor: &str,
    uuid: Uuid,
    to: Stage,
) -> ApiResult<PartitionRecord> {
    let lock = d.partition_lock(uuid);
    let _g = lock.lock().await;
    let rec = reload(d, uuid).await?;
    rec.stage
        .transition(to)
        .map_err(|e| ApiError::transition(format!("{}: {e}", rec.name)))?;
    if matches!(
        to,
        Stage::Disabled | Stage::Decommissioned | Stage::Template
    ) && rec.run_state.is_active()
    {
        return Err(ApiError::transition(format!(
            "{} is {}: stop it before making it {to}",
            rec.name, rec.run_state
        )));
    }
    let mut ops = Vec::new();
    if to == Stage::Decommissioned {
        // A decommissioned partition keeps its definition, not its disks.
        let _ = tokio::fs::remove_dir_all(d.paths.disk_dir(uuid)).await;
        ops = Op::release(
            uuid,
            &Resources {
                disk_gib: rec.demand.disk_gib,
                ..Resources::default()
            },
        );
    }
    let patch = PartitionPatch {
        stage: Some(to),
        ..Default::default()
    };
    commit(
        d,
        actor,
        format!("{} is now {to}", rec.name),
        &rec,
        patch,
        ops,
    )
    .await
}

/// Treats an exit the supervisor saw: the VM ended on its own.
pub fn exit_state(exit: &VmExit) -> RunState {
    match exit.kind {
        ExitKind::Poweroff | ExitKind::Reset | ExitKind::Quit => RunState::Stopped,
        ExitKind::Killed | ExitKind::Crashed => RunState::Crashed,
    }
}
