//! The only functions that change a partition's run state and what it
//! holds. Each is one ledger transaction that checks the before-image it
//! read (run state and stage), so two operations never both win, and each
//! pairs the state change with its reservation or release:
//!
//! ```text
//!  stopped/crashed ──begin_start (reserve active share)──▶ starting
//!  starting ──mark_running──▶ running ◀──set_paused──▶ paused
//!  starting|running|paused ──settle(to, release active share)──▶ stopped | saved | crashed
//!  running ──freeze (keep memory, release vCPUs and NICs)──▶ template
//!  any inactive ──remove (release everything, return pool values)──▶ gone
//! ```
//!
//! What a live partition holds beyond its disks is [`active_share`]: the one
//! formula every reservation and release of a start uses.

use std::sync::Arc;
use std::time::Duration;

use brood_api::EventKind;
use brood_engine::{BoxedVm, ExitKind, VmExit, VmStatus};
use brood_ledger::{
    Lineage, Op, Owner, PartitionExpect, PartitionPatch, PartitionRecord, PendingOp, Resources,
    RunState, Stage, Tx,
};
use tracing::{info, warn};
use uuid::Uuid;

use super::Host;
use super::error::{HostError, HostResult, chain};
use super::registry::Running;

/// Most bytes of console history kept per partition.
pub const CONSOLE_HISTORY: usize = 1 << 20;

/// What a partition holds while live, beyond its disks (which it holds
/// for its whole life).
pub fn active_share(demand: &Resources) -> Resources {
    Resources {
        disk_gib: 0,
        ..*demand
    }
}

/// The run state a VM that ended on its own leaves its partition in.
pub fn exit_state(exit: &VmExit) -> RunState {
    match exit.kind {
        ExitKind::Poweroff | ExitKind::Reset | ExitKind::Quit => RunState::Stopped,
        ExitKind::Killed | ExitKind::Crashed => RunState::Crashed,
    }
}

/// How an operation ends a VM on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndMode {
    /// Power off through the agent or ACPI, kill after the deadline.
    Graceful(Duration),
    /// SIGKILL at once.
    Kill,
}

/// Where [`Host::settle`] leaves a partition.
#[derive(Debug, Clone)]
pub struct Settle {
    /// Stopped, saved or crashed.
    pub to: RunState,
    /// How its VM ended, for `last_exit`.
    pub last_exit: Option<String>,
    /// Reset the restart count (it ran long enough to count as stable).
    pub reset_restarts: bool,
    /// New fork details, written in the same transaction.
    pub lineage: Option<Lineage>,
    /// Give back the values it took from identity pools (a child that
    /// failed its identity step keeps none).
    pub return_pool_values: bool,
}

impl Settle {
    /// Stopped (or saved, or crashed), with why.
    pub fn to(to: RunState, why: impl Into<String>) -> Settle {
        Settle {
            to,
            last_exit: Some(why.into()),
            reset_restarts: false,
            lineage: None,
            return_pool_values: false,
        }
    }
}

impl Host {
    /// Finds a partition by name or uuid.
    pub async fn find(&self, key: &str) -> HostResult<PartitionRecord> {
        let rec = match Uuid::parse_str(key) {
            Ok(u) => self.ledger.partition_by_uuid(u).await?,
            Err(_) => self.ledger.partition_by_name(key).await?,
        };
        match rec {
            Some(r) => Ok(r),
            None => {
                // A typo gets its name suggested (from the first page of names).
                let names = self.ledger.partitions(None, 1000).await.unwrap_or_default();
                let hint = crate::suggest::did_you_mean(key, names.iter().map(|r| r.name.as_str()));
                Err(HostError::NotFound(format!(
                    "no partition named {key:?}{hint} (`brood vm list` shows the partitions)"
                )))
            }
        }
    }

    /// Reads a partition again.
    pub async fn reload(&self, uuid: Uuid) -> HostResult<PartitionRecord> {
        self.ledger
            .partition_by_uuid(uuid)
            .await?
            .ok_or_else(|| HostError::no_partition(&uuid.to_string()))
    }

    /// Commits `ops` plus a patch of `rec` that does not move its run state
    /// (a pending operation, a configuration, a stage, fork details),
    /// expecting the run state and stage as read; publishes the new record.
    pub async fn update(
        &self,
        actor: &str,
        reason: String,
        rec: &PartitionRecord,
        patch: PartitionPatch,
        ops: Vec<Op>,
    ) -> HostResult<PartitionRecord> {
        debug_assert!(
            patch.run_state.is_none() || patch.run_state == Some(rec.run_state),
            "run-state changes go through runstate's own functions"
        );
        self.commit_patch(actor, reason, rec, patch, ops).await
    }

    async fn commit_patch(
        &self,
        actor: &str,
        reason: String,
        rec: &PartitionRecord,
        patch: PartitionPatch,
        mut ops: Vec<Op>,
    ) -> HostResult<PartitionRecord> {
        // The event's detail is how the VM ended when this change says so
        // (a crash, an exit), never an earlier end's (a pause is no exit).
        let detail = patch.last_exit.clone().flatten();
        ops.push(Op::UpdatePartition {
            uuid: rec.uuid,
            expect: PartitionExpect {
                run_state: Some(rec.run_state),
                stage: Some(rec.stage),
                generation: None,
            },
            set: patch,
        });
        self.ledger
            .commit(Tx {
                actor: actor.into(),
                reason,
                ops,
            })
            .await?;
        let new = self.reload(rec.uuid).await?;
        self.events.partition(&new, detail);
        Ok(new)
    }

    /// Records an operation in progress (or none), so a crash of broodd in
    /// the middle is finished or undone by reconciliation.
    pub async fn set_pending(
        &self,
        actor: &str,
        rec: &PartitionRecord,
        op: Option<PendingOp>,
        reason: String,
    ) -> HostResult<PartitionRecord> {
        let patch = PartitionPatch {
            pending_op: Some(op),
            ..Default::default()
        };
        self.update(actor, reason, rec, patch, Vec::new()).await
    }

    /// Moves a stopped, crashed or saved partition to `starting`, taking its
    /// active share of `demand` from `available` in the same transaction.
    pub async fn begin_start(
        &self,
        actor: &str,
        rec: &PartitionRecord,
        demand: Resources,
        pending: Option<PendingOp>,
    ) -> HostResult<PartitionRecord> {
        let patch = PartitionPatch {
            run_state: Some(RunState::Starting),
            demand: Some(demand),
            pid: Some(None),
            pending_op: Some(pending),
            ..Default::default()
        };
        let mut ops = Op::reserve(rec.uuid, &active_share(&demand));
        // A NIC on a network gets its channel (and address) with the start.
        if let Ok(c) = super::config::active_config(rec) {
            ops.push(crate::network::open_op(rec.uuid, &c.nics));
        }
        // So does a disk served by a storage I/O partition.
        ops.extend(crate::io::storage::open_op(self, rec)?);
        self.commit_patch(actor, format!("start {}", rec.name), rec, patch, ops)
            .await
    }

    /// Records a `starting` partition's VM as live (running, or paused when
    /// it was found paused), starts watching it and tells the features.
    /// `pending` is what stays recorded (`None` clears it). If the record
    /// cannot be written, the VM is killed.
    pub async fn mark_running(
        self: &Arc<Self>,
        actor: &str,
        rec: &PartitionRecord,
        vm: BoxedVm,
        to: RunState,
        pending: Option<PendingOp>,
    ) -> HostResult<(PartitionRecord, Arc<Running>)> {
        let pid = vm.pid();
        let running = Arc::new(Running::new(vm));
        self.registry.insert(rec.uuid, running.clone());
        let patch = PartitionPatch {
            run_state: (to != rec.run_state).then_some(to),
            pid: Some(Some(pid)),
            pending_op: Some(pending),
            ..Default::default()
        };
        let new = match self
            .commit_patch(
                actor,
                format!("{} {to} (pid {pid})", rec.name),
                rec,
                patch,
                Vec::new(),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                running.expect_exit();
                let _ = running.vm.kill().await;
                self.registry.remove(rec.uuid);
                return Err(e);
            }
        };
        super::watch::spawn(self.clone(), rec.uuid, running.clone());
        for h in self.hooks() {
            h.on_running(self, rec.uuid, &running);
        }
        Ok((new, running))
    }

    /// Moves a live partition (starting, running, paused) to stopped, saved
    /// or crashed, giving its active share back in the same transaction,
    /// and clears its pid and pending operation. An inactive one is only
    /// re-labelled (a saved state discarded, a crash acknowledged).
    pub async fn settle(
        &self,
        actor: &str,
        rec: &PartitionRecord,
        how: Settle,
    ) -> HostResult<PartitionRecord> {
        let mut ops = if rec.run_state.is_active() {
            Op::release(rec.uuid, &active_share(&rec.demand))
        } else {
            Vec::new()
        };
        ops.push(Op::Net(brood_ledger::NetOp::CloseChannels {
            partition: rec.uuid,
        }));
        if how.return_pool_values {
            ops.push(Op::ReturnToPool {
                holder: rec.uuid,
                pool: None,
            });
        }
        let reason = format!(
            "{} {}{}",
            rec.name,
            how.to,
            how.last_exit
                .as_deref()
                .map(|w| format!(": {w}"))
                .unwrap_or_default()
        );
        let patch = PartitionPatch {
            run_state: Some(how.to),
            pid: Some(None),
            pending_op: Some(None),
            last_exit: how.last_exit.map(Some),
            restart_count: how.reset_restarts.then_some(0),
            lineage: how.lineage.map(Some),
            ..Default::default()
        };
        self.commit_patch(actor, reason, rec, patch, ops).await
    }

    /// Ends a start that failed after its resources were reserved: kills the
    /// VM if it got as far as running and settles the partition (back to
    /// saved when it was a restore, stopped otherwise). The caller holds the
    /// partition lock.
    pub async fn abandon_start(
        &self,
        actor: &str,
        uuid: Uuid,
        what: &str,
        why: &str,
    ) -> HostResult<PartitionRecord> {
        if let Some(r) = self.registry.remove(uuid) {
            r.expect_exit();
            let _ = r.vm.kill().await;
        }
        let rec = self.reload(uuid).await?;
        if !rec.run_state.is_active() {
            return Ok(rec);
        }
        let to = if rec.pending_op == Some(PendingOp::Restore) {
            RunState::Saved
        } else {
            RunState::Stopped
        };
        self.settle(
            actor,
            &rec,
            Settle::to(to, format!("failed to {what}: {why}")),
        )
        .await
    }

    /// Ends a partition's VM on purpose, keeps its console, forgets it, and
    /// returns how it ended (`None` when it had no VM).
    pub async fn end_vm(&self, uuid: Uuid, mode: EndMode) -> Option<VmExit> {
        match self.end_vm_checked(uuid, mode).await {
            Ok(exit) => exit,
            Err(e) => {
                // Nothing more can be done to it: it is forgotten all the same.
                warn!(partition = %uuid, "ending its VM: {}", chain(&e));
                if let Some(running) = self.registry.running(uuid) {
                    self.preserve_console(uuid, &running).await;
                }
                self.registry.remove(uuid);
                None
            }
        }
    }

    /// Ends a partition's VM as [`Host::end_vm`] does, but fails when it
    /// could not: when both the first attempt (the guest shutdown, or the
    /// kill) and the kill after it fail, the error names both causes and the
    /// VM stays registered, since its process may still run.
    pub async fn end_vm_checked(&self, uuid: Uuid, mode: EndMode) -> HostResult<Option<VmExit>> {
        let Some(running) = self.registry.running(uuid) else {
            return Ok(None);
        };
        running.expect_exit();
        if mode != EndMode::Kill
            && running
                .vm
                .status()
                .await
                .is_ok_and(|s| s == VmStatus::Paused)
        {
            let _ = running.vm.resume().await;
        }
        let first = match mode {
            EndMode::Graceful(t) => running.vm.shutdown(t).await,
            EndMode::Kill => running.vm.kill().await,
        };
        let exit = match first {
            Ok(e) => e,
            Err(first) => match running.vm.kill().await {
                Ok(e) => {
                    warn!(partition = %uuid, "ending its VM: {}; killed it instead", chain(&first));
                    e
                }
                Err(kill) => {
                    let how = match mode {
                        EndMode::Graceful(_) => "the guest shutdown",
                        EndMode::Kill => "the kill",
                    };
                    return Err(HostError::engine(
                        format!(
                            "could not end the VM: {how} failed ({}), and then the kill",
                            chain(&first)
                        ),
                        kill,
                    ));
                }
            },
        };
        self.preserve_console(uuid, &running).await;
        self.registry.remove(uuid);
        Ok(Some(exit))
    }

    /// Kills a partition's VM now, without waiting for the partition's lock
    /// (an operation stuck on the guest or on a hung VMM holds it); the
    /// operation that held it then fails, and the caller records the end
    /// once it has the lock.
    pub fn kill_now(&self, uuid: Uuid) {
        if let Some(r) = self.registry.running(uuid) {
            r.expect_exit();
            r.vm.kill_now();
        }
    }

    /// Kills a partition's VM when its VMM no longer answers: a stop that
    /// waited its whole deadline for the partition's lock may be queued
    /// behind a call stuck on that VMM, which the kill ends.
    pub async fn kill_if_hung(&self, uuid: Uuid) {
        const PROBE: Duration = Duration::from_secs(2);
        let Some(r) = self.registry.running(uuid) else {
            return;
        };
        let answers = tokio::time::timeout(PROBE, r.vm.status())
            .await
            .is_ok_and(|s| s.is_ok());
        if !answers {
            warn!(partition = %uuid, "its VMM does not answer within {PROBE:?}; killing it for the stop");
            r.expect_exit();
            r.vm.kill_now();
        }
    }

    /// Pauses or resumes a live partition's vCPUs and records it.
    pub async fn set_paused(
        &self,
        actor: &str,
        rec: &PartitionRecord,
        paused: bool,
    ) -> HostResult<PartitionRecord> {
        let (from, to, verb) = if paused {
            (RunState::Running, RunState::Paused, "pause")
        } else {
            (RunState::Paused, RunState::Running, "resume")
        };
        if rec.run_state != from {
            return Err(HostError::transition(format!(
                "cannot {verb} {}: it is {} (only a {from} partition can be)",
                rec.name, rec.run_state
            )));
        }
        let running = self
            .registry
            .running(rec.uuid)
            .ok_or_else(|| HostError::conflict(format!("{} has no VM yet; retry", rec.name)))?;
        let r = if paused {
            running.vm.pause().await
        } else {
            running.vm.resume().await
        };
        r.map_err(|e| HostError::engine(format!("{verb} {}", rec.name), e))?;
        let patch = PartitionPatch {
            run_state: Some(to),
            ..Default::default()
        };
        self.commit_patch(actor, format!("{}: {to}", rec.name), rec, patch, Vec::new())
            .await
    }

    /// Records a partition whose VM was just saved as a template: stage
    /// template, stopped, its vCPUs and NICs given back, its memory kept
    /// (a child made a template holds its template's whole memory now, not
    /// just its charge), optionally renamed.
    pub async fn freeze(
        &self,
        actor: &str,
        rec: &PartitionRecord,
        memory_mib: u64,
        lineage: Lineage,
        name: Option<String>,
    ) -> HostResult<PartitionRecord> {
        let mut demand = rec.demand;
        let mut ops = Op::release(
            rec.uuid,
            &Resources {
                memory_mib: 0,
                disk_gib: 0,
                ..rec.demand
            },
        );
        if memory_mib > demand.memory_mib {
            ops.extend(Op::reserve(
                rec.uuid,
                &Resources {
                    memory_mib: memory_mib - demand.memory_mib,
                    ..Resources::default()
                },
            ));
        }
        demand.memory_mib = memory_mib.max(demand.memory_mib);
        // Its VM is gone: its channels close (its disks' server lets the
        // images go, so its children can open them as backing files).
        ops.push(Op::Net(brood_ledger::NetOp::CloseChannels {
            partition: rec.uuid,
        }));
        let patch = PartitionPatch {
            stage: Some(Stage::Template),
            run_state: Some(RunState::Stopped),
            pid: Some(None),
            pending_op: Some(None),
            demand: Some(demand),
            name,
            lineage: Some(Some(lineage)),
            last_exit: Some(Some("frozen as a template".into())),
            ..Default::default()
        };
        self.commit_patch(
            actor,
            format!("{} is a template", rec.name),
            rec,
            patch,
            ops,
        )
        .await
    }

    /// Removes an inactive partition: its files, everything it holds, the
    /// pool values it took, its record. The caller holds the partition
    /// lock; a crash in the middle is finished by reconciliation (the
    /// delete is recorded first).
    pub async fn remove(&self, actor: &str, uuid: Uuid, why: &str) -> HostResult<()> {
        let rec = self.reload(uuid).await?;
        if rec.run_state.is_active() {
            return Err(HostError::transition(format!(
                "{} is {}: stop it before it is removed",
                rec.name, rec.run_state
            )));
        }
        let rec = if rec.pending_op == Some(PendingOp::Delete) {
            rec
        } else {
            self.set_pending(
                actor,
                &rec,
                Some(PendingOp::Delete),
                format!("delete {} ({why})", rec.name),
            )
            .await?
        };
        let _ = tokio::fs::remove_dir_all(self.paths.disk_dir(uuid)).await;
        let _ = tokio::fs::remove_file(self.paths.saved_state(uuid)).await;
        let _ = tokio::fs::remove_file(self.paths.console_log(uuid)).await;
        let held = self.ledger.held_by(Owner::Partition(uuid)).await?;
        let mut ops = Op::release(uuid, &held);
        ops.push(Op::Net(brood_ledger::NetOp::CloseChannels {
            partition: uuid,
        }));
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
        self.ledger
            .commit(Tx {
                actor: actor.into(),
                reason: format!("deleted {} ({why})", rec.name),
                ops,
            })
            .await?;
        self.registry.forget(uuid);
        self.events.publish(EventKind::PartitionDeleted {
            name: rec.name.clone(),
            uuid,
        });
        info!(partition = %rec.name, "deleted");
        Ok(())
    }

    /// The console output of a VM's current run.
    pub async fn current_console(&self, running: &Running) -> Vec<u8> {
        let log = running.vm.console_log();
        let mut text = tokio::fs::read(log.with_extension("log.1"))
            .await
            .unwrap_or_default();
        text.extend(tokio::fs::read(&log).await.unwrap_or_default());
        text
    }

    /// Appends a VM's console output to the partition's console history
    /// (which outlives the run directory), keeping the newest
    /// [`CONSOLE_HISTORY`] bytes.
    pub async fn preserve_console(&self, uuid: Uuid, running: &Running) {
        let dest = self.paths.console_log(uuid);
        let mut text = tokio::fs::read(&dest).await.unwrap_or_default();
        text.extend(self.current_console(running).await);
        let start = text.len().saturating_sub(CONSOLE_HISTORY);
        if let Some(dir) = dest.parent() {
            let _ = tokio::fs::create_dir_all(dir).await;
        }
        let _ = tokio::fs::write(dest, text.get(start..).unwrap_or_default()).await;
    }
}
