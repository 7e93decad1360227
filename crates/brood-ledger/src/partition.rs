//! A partition as the ledger stores it (`PartitionRecord`), the
//! before-images an op may check (`PartitionExpect`) and the field changes
//! an update carries (`PartitionPatch`).
//!
//! The ledger does not read `configs`: it is broodd's JSON. It
//! does know what a partition must hold in each state (`expected_holding`),
//! which `verify` checks, and that a template never runs; broodd computes
//! `demand` from the active configuration.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::lineage::{Lineage, PendingOp};
use crate::resource::{ResourceKind, Resources};
use crate::state::{RunState, Stage, TransitionError};

/// One partition: its definition, state and what it holds while active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Identity; never changes.
    pub uuid: Uuid,
    /// Unique name.
    pub name: String,
    /// Life-cycle stage.
    pub stage: Stage,
    /// Run state.
    pub run_state: RunState,
    /// Key of the active configuration in `configs`.
    pub active_config: String,
    /// broodd's configurations, opaque to the ledger.
    pub configs: crate::JsonText,
    /// What the partition holds (see `expected_holding`): `disk_gib` for its
    /// whole life (until decommissioned), the other kinds while
    /// `run_state.is_active()`; a template holds `memory_mib` always.
    pub demand: Resources,
    /// The QEMU process, while there is one.
    pub pid: Option<u32>,
    /// An operation broodd began and must finish or undo after a crash.
    pub pending_op: Option<PendingOp>,
    /// Restarts after crashes.
    pub restart_count: u32,
    /// How the last process ended.
    pub last_exit: Option<String>,
    /// RFC 3339 UTC; set by the ledger on insert.
    pub created_at: String,
    /// RFC 3339 UTC; set by the ledger on every change.
    pub updated_at: String,
    /// 1 on insert, incremented by the ledger on every change.
    pub generation: u64,
    /// The template this partition was forked from, or the template a
    /// derived template came from. Must exist on insert; never changes
    /// after (an update leaves it alone). A partition that others name as
    /// parent cannot be deleted (`LedgerError::HasDescendants`).
    #[serde(default)]
    pub parent: Option<Uuid>,
    /// A template's or a forked child's details (its lineage and identity).
    #[serde(default, rename = "fork")]
    pub lineage: Option<Lineage>,
}

impl PartitionRecord {
    /// A new partition in construction, stopped, with a fresh uuid, no
    /// configurations and no demand. The ledger stamps the times and the
    /// generation when the insert commits.
    pub fn new(name: impl Into<String>) -> PartitionRecord {
        PartitionRecord {
            uuid: Uuid::new_v4(),
            name: name.into(),
            stage: Stage::Construction,
            run_state: RunState::Stopped,
            active_config: String::new(),
            configs: crate::JsonText::default(),
            demand: Resources::ZERO,
            pid: None,
            pending_op: None,
            restart_count: 0,
            last_exit: None,
            created_at: String::new(),
            updated_at: String::new(),
            generation: 0,
            parent: None,
            lineage: None,
        }
    }

    /// True when the partition is a template (stage `Template`).
    pub fn is_template(&self) -> bool {
        self.stage == Stage::Template
    }

    /// What the partition must hold in its current stage and run state.
    ///
    /// A template holds `demand.memory_mib` and `demand.disk_gib`, always
    /// (its saved memory file lives on while children are forked from it),
    /// and no vCPUs or NICs. Any other partition holds `demand.disk_gib`
    /// unless decommissioned, and `demand`'s memory, vCPUs and NICs while
    /// its run state is active.
    pub fn expected_holding(&self) -> Resources {
        let mut out = Resources::ZERO;
        if self.is_template() {
            out.memory_mib = self.demand.memory_mib;
            out.disk_gib = self.demand.disk_gib;
            return out;
        }
        if self.stage != Stage::Decommissioned {
            out.disk_gib = self.demand.disk_gib;
        }
        if self.run_state.is_active() {
            for kind in [
                ResourceKind::MemoryMib,
                ResourceKind::Vcpus,
                ResourceKind::Nics,
            ] {
                out.set(kind, self.demand.get(kind));
            }
        }
        out
    }
}

/// Before-images of a partition that an op requires; `None` checks nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionExpect {
    /// The run state the partition must be in.
    pub run_state: Option<RunState>,
    /// The stage the partition must be in.
    pub stage: Option<Stage>,
    /// The generation the partition must have (optimistic locking).
    pub generation: Option<u64>,
}

/// Field changes of an update; `None` leaves a field alone. For the
/// optional fields, `Some(None)` clears them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionPatch {
    /// New name; must be unique (`LedgerError::NameTaken`).
    #[serde(default)]
    pub name: Option<String>,
    /// New run state; must be a legal `RunState::transition`.
    pub run_state: Option<RunState>,
    /// New stage; must be a legal `Stage::transition`.
    pub stage: Option<Stage>,
    /// New active configuration key.
    pub active_config: Option<String>,
    /// New configurations.
    pub configs: Option<crate::JsonText>,
    /// New demand.
    pub demand: Option<Resources>,
    /// New process id, or `Some(None)` to clear it.
    pub pid: Option<Option<u32>>,
    /// New pending operation, or `Some(None)` to clear it.
    pub pending_op: Option<Option<PendingOp>>,
    /// New restart count.
    pub restart_count: Option<u32>,
    /// New exit description, or `Some(None)` to clear it.
    pub last_exit: Option<Option<String>>,
    /// New fork details, or `Some(None)` to clear them. (`parent` has no
    /// patch field: it never changes.)
    #[serde(default)]
    #[serde(rename = "fork")]
    pub lineage: Option<Option<Lineage>>,
}

impl PartitionPatch {
    /// Applies the patch to `rec`, checking state changes first; on error
    /// `rec` is unchanged. Does not touch `generation` or `updated_at`.
    ///
    /// Besides each machine's own table, a template never runs: a patch
    /// that leaves a partition in stage `Template` with an active run state
    /// is refused. So a running partition becomes a template by setting
    /// `stage: Template` and an inactive `run_state` (`Stopped`) in the
    /// same patch, or in an update after the one that stops it.
    pub fn apply_to(&self, rec: &mut PartitionRecord) -> Result<(), TransitionError> {
        let run_state = match self.run_state {
            Some(to) => rec.run_state.transition(to)?,
            None => rec.run_state,
        };
        let stage = match self.stage {
            Some(to) => rec.stage.transition(to)?,
            None => rec.stage,
        };
        if stage == Stage::Template && run_state.is_active() {
            return Err(template_runs(rec, run_state));
        }
        rec.run_state = run_state;
        rec.stage = stage;
        if let Some(v) = &self.name {
            rec.name.clone_from(v);
        }
        if let Some(v) = &self.active_config {
            rec.active_config.clone_from(v);
        }
        if let Some(v) = &self.configs {
            rec.configs.clone_from(v);
        }
        if let Some(v) = self.demand {
            rec.demand = v;
        }
        if let Some(v) = self.pid {
            rec.pid = v;
        }
        if let Some(v) = &self.pending_op {
            rec.pending_op.clone_from(v);
        }
        if let Some(v) = self.restart_count {
            rec.restart_count = v;
        }
        if let Some(v) = &self.last_exit {
            rec.last_exit.clone_from(v);
        }
        if let Some(v) = &self.lineage {
            rec.lineage.clone_from(v);
        }
        Ok(())
    }
}

/// The refusal of a patch that would leave a template with the active run
/// state `run_state`: of the stage change if it makes `rec` a template,
/// else of the run-state change.
fn template_runs(rec: &PartitionRecord, run_state: RunState) -> TransitionError {
    if rec.is_template() {
        return TransitionError {
            machine: "run state of a template",
            from: rec.run_state.as_str(),
            to: run_state.as_str(),
        };
    }
    let machine = match run_state {
        RunState::Starting => "stage while starting",
        RunState::Running => "stage while running",
        RunState::Paused => "stage while paused",
        RunState::Stopped | RunState::Saved | RunState::Crashed => "stage",
    };
    TransitionError {
        machine,
        from: rec.stage.as_str(),
        to: Stage::Template.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand() -> Resources {
        Resources {
            memory_mib: 512,
            vcpus: 2,
            disk_gib: 10,
            nics: 1,
        }
    }

    #[test]
    fn expected_holding_follows_stage_and_run_state() {
        let mut p = PartitionRecord::new("a");
        p.demand = demand();
        assert_eq!(
            p.expected_holding(),
            Resources::of(ResourceKind::DiskGib, 10)
        );
        for rs in RunState::ALL {
            p.run_state = rs;
            let want = if rs.is_active() {
                demand()
            } else {
                Resources::of(ResourceKind::DiskGib, 10)
            };
            assert_eq!(p.expected_holding(), want, "{rs}");
        }
        p.run_state = RunState::Stopped;
        p.stage = Stage::Decommissioned;
        assert!(p.expected_holding().is_zero());
    }

    #[test]
    fn template_holds_memory_and_disk_in_every_run_state() {
        let mut p = PartitionRecord::new("t");
        p.demand = demand();
        p.stage = Stage::Template;
        let want = Resources {
            memory_mib: 512,
            disk_gib: 10,
            ..Resources::ZERO
        };
        for rs in RunState::ALL {
            p.run_state = rs;
            assert_eq!(p.expected_holding(), want, "{rs}");
        }
    }

    fn running_operating() -> PartitionRecord {
        let mut p = PartitionRecord::new("a");
        p.stage = Stage::Operating;
        p.run_state = RunState::Running;
        p.pid = Some(42);
        p
    }

    #[test]
    fn running_partition_becomes_a_template_when_stopped_in_the_same_patch() {
        let mut p = running_operating();
        let patch = PartitionPatch {
            stage: Some(Stage::Template),
            run_state: Some(RunState::Stopped),
            pid: Some(None),
            lineage: Some(Some(crate::lineage::Lineage::Template(
                crate::lineage::TemplateLineage {
                    dir: "/t".into(),
                    seq: 1,
                    warm: 0,
                    next_index: 0,
                    state_bytes: 1,
                    created_at: String::new(),
                },
            ))),
            ..PartitionPatch::default()
        };
        assert!(patch.apply_to(&mut p).is_ok());
        assert_eq!(
            (p.stage, p.run_state, p.pid),
            (Stage::Template, RunState::Stopped, None)
        );
        assert!(matches!(p.lineage, Some(Lineage::Template(_))));
    }

    #[test]
    fn template_never_runs() {
        for rs in [RunState::Starting, RunState::Running, RunState::Paused] {
            let mut p = running_operating();
            p.run_state = rs;
            let before = p.clone();
            let patch = PartitionPatch {
                stage: Some(Stage::Template),
                ..PartitionPatch::default()
            };
            let e = patch.apply_to(&mut p).expect_err("active template");
            assert_eq!(
                e.to_string(),
                format!("stage while {rs}: cannot go from operating to template")
            );
            assert_eq!(p, before);
        }
        let mut t = PartitionRecord::new("t");
        t.stage = Stage::Template;
        let start = PartitionPatch {
            run_state: Some(RunState::Starting),
            ..PartitionPatch::default()
        };
        let e = start.apply_to(&mut t).expect_err("template started");
        assert_eq!(
            e.to_string(),
            "run state of a template: cannot go from stopped to starting"
        );
        let clear = PartitionPatch {
            lineage: Some(None),
            ..PartitionPatch::default()
        };
        t.lineage = Some(crate::lineage::Lineage::Template(
            crate::lineage::TemplateLineage {
                dir: "/t".into(),
                seq: 1,
                warm: 0,
                next_index: 0,
                state_bytes: 1,
                created_at: String::new(),
            },
        ));
        assert!(clear.apply_to(&mut t).is_ok());
        assert_eq!(t.lineage, None);
    }

    #[test]
    fn records_without_lineage_fields_still_decode() {
        let p = PartitionRecord::new("old");
        let mut v = serde_json::to_value(&p).expect("encode");
        if let Some(m) = v.as_object_mut() {
            m.remove("parent");
            m.remove("fork");
        }
        let back: PartitionRecord = serde_json::from_value(v).expect("decode");
        assert_eq!(back, p);
    }

    #[test]
    fn patch_checks_transitions_before_changing_anything() {
        let mut p = PartitionRecord::new("a");
        let patch = PartitionPatch {
            run_state: Some(RunState::Paused),
            pid: Some(Some(42)),
            ..PartitionPatch::default()
        };
        let before = p.clone();
        let e = patch.apply_to(&mut p).expect_err("stopped -> paused");
        assert_eq!(e.to_string(), "run state: cannot go from stopped to paused");
        assert_eq!(p, before);

        let patch = PartitionPatch {
            run_state: Some(RunState::Starting),
            stage: Some(Stage::Provisioning),
            pid: Some(Some(42)),
            pending_op: Some(Some(PendingOp::Restore)),
            ..PartitionPatch::default()
        };
        assert!(patch.apply_to(&mut p).is_ok());
        assert_eq!(p.run_state, RunState::Starting);
        assert_eq!(p.stage, Stage::Provisioning);
        assert_eq!(p.pid, Some(42));
        assert_eq!(p.pending_op, Some(PendingOp::Restore));

        let clear = PartitionPatch {
            pid: Some(None),
            pending_op: Some(None),
            ..PartitionPatch::default()
        };
        assert!(clear.apply_to(&mut p).is_ok());
        assert_eq!((p.pid, p.pending_op), (None, None));
    }
}
