//! The life cycle of a partition's VM: start, stop, kill, pause, resume,
//! save, restore, delete, and the definition changes allowed meanwhile
//! (active configuration, stage). Each operation takes the partition's
//! lock for its ledger and engine steps only, checks the state it needs,
//! and moves the run state through the host core's `runstate`, recording
//! a pending operation first when it spans several steps. A partition's
//! kind decides how it starts (its `Launcher`); nothing here branches on it.

use std::sync::Arc;
use std::time::Duration;

use brood_ledger::{PartitionPatch, PartitionRecord, PendingOp, Resources, RunState, Stage};
use tracing::warn;
use uuid::Uuid;

use crate::host::config::{all_disks, configs_of, demand, vm_spec};
use crate::host::runstate::{EndMode, Settle};
use crate::host::{Host, HostError, HostResult, Kind, chain};

/// Default deadline for a graceful stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a stopped or crashed partition with its active configuration.
pub async fn start(host: &Arc<Host>, actor: &str, uuid: Uuid) -> HostResult<PartitionRecord> {
    let (rec, launcher, running) = {
        let lock = host.registry.lock(uuid);
        let _g = lock.lock().await;
        let rec = host.reload(uuid).await?;
        if !rec.stage.can_start() {
            return Err(HostError::transition(format!(
                "cannot start {}: it is {} (only operating or manual partitions run)",
                rec.name, rec.stage
            )));
        }
        match rec.run_state {
            RunState::Stopped | RunState::Crashed => {}
            RunState::Saved => return Err(HostError::transition(no_vm_hint(&rec))),
            other => {
                return Err(HostError::transition(format!(
                    "cannot start {}: it is {other}",
                    rec.name
                )));
            }
        }
        let rec = super::change::before_start(host, actor, rec).await?;
        let launcher = host.launcher(Kind::of(&rec))?;
        let demand = launcher.demand(&rec)?;
        // A define with `start` stays marked until its VM runs.
        let keep = (rec.pending_op == Some(PendingOp::Create)).then_some(PendingOp::Create);
        let rec = host.begin_start(actor, &rec, demand, keep).await?;
        let vm = match launcher.launch(host, &rec).await {
            Ok(vm) => vm,
            Err(e) => {
                host.abandon_start(actor, uuid, "start", &chain(&e)).await?;
                return Err(e);
            }
        };
        let (rec, running) = host
            .mark_running(actor, &rec, vm, RunState::Running, None)
            .await?;
        (rec, launcher, running)
    };
    let rec = launcher.after_start(host, rec, running).await?;
    // The services it requires; without them it does not run.
    if let Err(e) = crate::pool::requires::ensure_boxed(host, &rec).await {
        if let Err(s) = stop(host, actor, uuid, EndMode::Kill).await {
            warn!(partition = %rec.name, "stop it after its services failed: {}", chain(&s));
        }
        return Err(e);
    }
    Ok(rec)
}

/// What to do about a partition that has no VM to act on (exec, console
/// input): one hint per run state, the same one `start` gives.
pub fn no_vm_hint(rec: &PartitionRecord) -> String {
    let name = &rec.name;
    match rec.run_state {
        RunState::Saved => format!(
            "{name} is saved: restore it first (`brood vm restore {name}`), or stop it to discard the saved state"
        ),
        RunState::Starting => format!("{name} is starting: retry once it runs"),
        RunState::Stopped | RunState::Crashed => {
            format!("{name} is {}: start it first", rec.run_state)
        }
        RunState::Running | RunState::Paused => {
            format!("{name} is {} but has no VM yet: retry", rec.run_state)
        }
    }
}

/// Stops (or kills) a live partition; discards a saved state; acknowledges
/// a crash. A kill does not wait behind another operation: the VM ends at
/// once and the operation that held the partition fails.
pub async fn stop(
    host: &Arc<Host>,
    actor: &str,
    uuid: Uuid,
    mode: EndMode,
) -> HostResult<PartitionRecord> {
    let lock = host.registry.lock(uuid);
    let _g = match mode {
        EndMode::Kill => {
            host.kill_now(uuid);
            lock.lock().await
        }
        EndMode::Graceful(t) => match tokio::time::timeout(t, lock.lock()).await {
            Ok(g) => g,
            Err(_) => {
                host.kill_if_hung(uuid).await;
                lock.lock().await
            }
        },
    };
    let rec = host.reload(uuid).await?;
    match rec.run_state {
        RunState::Running | RunState::Paused | RunState::Starting => {}
        RunState::Saved => {
            let _ = tokio::fs::remove_file(host.paths.saved_state(uuid)).await;
            return host
                .settle(
                    actor,
                    &rec,
                    Settle::to(RunState::Stopped, "its saved state was discarded"),
                )
                .await;
        }
        RunState::Crashed => {
            let how = Settle {
                to: RunState::Stopped,
                last_exit: None,
                reset_restarts: false,
                lineage: None,
                return_pool_values: false,
            };
            return host.settle(actor, &rec, how).await;
        }
        RunState::Stopped => {
            return Err(HostError::transition(format!(
                "{} is already stopped",
                rec.name
            )));
        }
    }
    let op = if mode == EndMode::Kill {
        PendingOp::Kill
    } else {
        PendingOp::Stop
    };
    let rec = host
        .set_pending(actor, &rec, Some(op), format!("{op} {}", rec.name))
        .await?;
    let exit = match host.end_vm_checked(uuid, mode).await {
        Ok(exit) => exit,
        Err(e) => {
            // The VM may still run: it stays as it was, with no operation on it.
            host.set_pending(actor, &rec, None, format!("{op} of {} failed", rec.name))
                .await?;
            return Err(match e {
                HostError::Engine { what, source } => {
                    HostError::engine(format!("{op} {}: {what}", rec.name), source)
                }
                other => other,
            });
        }
    };
    let how = Settle {
        to: RunState::Stopped,
        last_exit: exit.map(|e| e.to_string()),
        reset_restarts: false,
        lineage: None,
        return_pool_values: false,
    };
    host.settle(actor, &rec, how).await
}

/// Pauses or resumes a partition's vCPUs.
pub async fn pause(
    host: &Host,
    actor: &str,
    uuid: Uuid,
    paused: bool,
) -> HostResult<PartitionRecord> {
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    host.set_paused(actor, &rec, paused).await
}

/// Saves a partition's whole state to disk and ends its VM; its memory,
/// vCPUs and NICs go back to `available`.
pub async fn save(host: &Arc<Host>, actor: &str, uuid: Uuid) -> HostResult<PartitionRecord> {
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    if !matches!(rec.run_state, RunState::Running | RunState::Paused) {
        return Err(HostError::transition(format!(
            "cannot save {}: it is {}",
            rec.name, rec.run_state
        )));
    }
    let running = host
        .registry
        .running(uuid)
        .ok_or_else(|| HostError::conflict(format!("{} has no VM yet; retry", rec.name)))?;
    let was_running = rec.run_state == RunState::Running;
    let rec = host
        .set_pending(
            actor,
            &rec,
            Some(PendingOp::Save),
            format!("save {}", rec.name),
        )
        .await?;
    let path = host.paths.saved_state(uuid);
    let partial = path.with_extension("state.partial");
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| HostError::io("create the saves directory", e))?;
    }
    let room = crate::memory::room_to_save(&rec, running.vm.as_ref());
    let saved = running.vm.save(&partial).await;
    drop(room);
    if let Err(e) = saved {
        let _ = tokio::fs::remove_file(&partial).await;
        // A save leaves the VM paused: a running one carries on.
        if was_running {
            let _ = running.vm.resume().await;
        }
        host.set_pending(actor, &rec, None, format!("save of {} failed", rec.name))
            .await?;
        return Err(HostError::engine(format!("save {}", rec.name), e));
    }
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(|e| HostError::io("keep the saved state", e))?;
    host.end_vm(uuid, EndMode::Kill).await;
    host.settle(actor, &rec, Settle::to(RunState::Saved, "state saved"))
        .await
}

/// Starts a saved partition from its saved state.
pub async fn restore(host: &Arc<Host>, actor: &str, uuid: Uuid) -> HostResult<PartitionRecord> {
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    if rec.run_state != RunState::Saved {
        return Err(HostError::transition(format!(
            "cannot restore {}: it is {}, not saved",
            rec.name, rec.run_state
        )));
    }
    let state = host.paths.saved_state(uuid);
    let rec = host
        .begin_start(actor, &rec, rec.demand, Some(PendingOp::Restore))
        .await?;
    let vm = match vm_spec(&super::change::as_running(host, &rec), &host.paths) {
        Ok(spec) => host
            .engine
            .restore(&spec, &state)
            .await
            .map_err(|e| HostError::engine(format!("restore {}", rec.name), e)),
        Err(e) => Err(e),
    };
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            host.abandon_start(actor, uuid, "restore", &chain(&e))
                .await?;
            return Err(e);
        }
    };
    // A restored child runs with a memory file of its own (its save was a
    // full one), started within its template's whole charge: its charge is
    // trued up to what it now uses and its cgroup held to that at once.
    let rec = if Kind::of(&rec) == Kind::Child {
        match crate::memory::fit(host, &rec, vm.as_ref(), true).await {
            Ok(rec) => rec,
            Err(e) => {
                let _ = vm.kill().await;
                host.abandon_start(actor, uuid, "restore", &chain(&e))
                    .await?;
                return Err(e);
            }
        }
    } else {
        rec
    };
    let (rec, _) = host
        .mark_running(actor, &rec, vm, RunState::Running, None)
        .await?;
    let _ = tokio::fs::remove_file(&state).await;
    Ok(rec)
}

/// Deletes a partition; a live one only with `force` (it is killed first).
pub async fn delete(host: &Arc<Host>, actor: &str, uuid: Uuid, force: bool) -> HostResult<()> {
    let rec = host.reload(uuid).await?;
    if Kind::of(&rec) == Kind::Template {
        return Err(HostError::transition(format!(
            "{} is a template: delete it with `brood template delete {}`",
            rec.name, rec.name
        )));
    }
    if rec.run_state.is_active() {
        if !force {
            return Err(HostError::transition(format!(
                "{} is {}: stop it first, or delete with force",
                rec.name, rec.run_state
            )));
        }
        stop(host, actor, uuid, EndMode::Kill).await?;
    }
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    if rec.run_state.is_active() {
        return Err(HostError::conflict(format!(
            "{} was started again meanwhile",
            rec.name
        )));
    }
    host.remove(actor, uuid, "deleted through the API").await
}

/// Chooses the configuration used at the next start.
pub async fn set_config(
    host: &Host,
    actor: &str,
    uuid: Uuid,
    config: &str,
) -> HostResult<PartitionRecord> {
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    let configs = configs_of(&rec)?;
    let Some(c) = configs.get(config) else {
        return Err(HostError::invalid(format!(
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
        patch.demand = Some(crate::host::root::with_root(
            &host.paths,
            rec.uuid,
            &configs,
            demand(c, &all_disks(&configs)?),
        )?);
    }
    host.update(
        actor,
        format!("{} will start with configuration {config}", rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await
}

/// Moves a partition to another life-cycle stage. Templates are made by
/// `template create` only: a stopped VM has no fork point to freeze.
pub async fn set_stage(
    host: &Host,
    actor: &str,
    uuid: Uuid,
    to: Stage,
) -> HostResult<PartitionRecord> {
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    if to == Stage::Template || rec.stage == Stage::Template {
        return Err(HostError::transition(format!(
            "{}: templates are made from a running VM with `brood template create` and removed with `brood template delete`, not by changing the stage",
            rec.name
        )));
    }
    rec.stage
        .transition(to)
        .map_err(|e| HostError::transition(format!("{}: {e}", rec.name)))?;
    if matches!(to, Stage::Disabled | Stage::Decommissioned) && rec.run_state.is_active() {
        return Err(HostError::transition(format!(
            "{} is {}: stop it before making it {to}",
            rec.name, rec.run_state
        )));
    }
    let mut ops = Vec::new();
    if to == Stage::Decommissioned {
        // A decommissioned partition keeps its definition, not its disks.
        let _ = tokio::fs::remove_dir_all(host.paths.disk_dir(uuid)).await;
        ops = brood_ledger::Op::release(
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
    host.update(actor, format!("{} is now {to}", rec.name), &rec, patch, ops)
        .await
}
