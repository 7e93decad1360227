//! The two state machines of a partition: its life-cycle `Stage` and its
//! `RunState`, and the `TransitionError` for a refused move.
//!
//! Each `transition` is an exhaustive `match (self, to)` with no `_` arm, so
//! adding a state breaks the build until every pair is decided. Moving to
//! the same state is not a transition and is refused. The ledger checks
//! these in `UpdatePartition`; which stage may start a partition is a
//! question for broodd (`Stage::can_start`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::resource::ParseNameError;

/// A refused state change, naming the machine and both states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{machine}: cannot go from {from} to {to}")]
pub struct TransitionError {
    /// "stage" or "run state"; "stage while running" (or starting, paused)
    /// and "run state of a template" when the pair is legal on its own but
    /// would make a template run (see `PartitionPatch::apply_to`).
    pub machine: &'static str,
    /// The current state.
    pub from: &'static str,
    /// The state asked for.
    pub to: &'static str,
}

/// Where a partition is in its life (WO 2005/036358, paragraphs 0304-0312).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Being defined; not yet runnable.
    Construction,
    /// Being installed.
    Provisioning,
    /// In service, started and stopped by policy.
    Operating,
    /// In service, started and stopped by an operator only.
    Manual,
    /// Switched off ("virtual power cord unplugged").
    Disabled,
    /// Retired; holds nothing.
    Decommissioned,
    /// A prototype to fork children from; never runs, but holds its memory
    /// (the saved memory file) and disk. Entered from `Operating` only
    /// while the run state is not active.
    Template,
}

impl Stage {
    /// Every stage, in life-cycle order.
    pub const ALL: [Stage; 7] = [
        Stage::Construction,
        Stage::Provisioning,
        Stage::Operating,
        Stage::Manual,
        Stage::Disabled,
        Stage::Decommissioned,
        Stage::Template,
    ];

    /// The snake_case name used in the database, JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Construction => "construction",
            Stage::Provisioning => "provisioning",
            Stage::Operating => "operating",
            Stage::Manual => "manual",
            Stage::Disabled => "disabled",
            Stage::Decommissioned => "decommissioned",
            Stage::Template => "template",
        }
    }

    /// True for the stages in which a partition may be started.
    pub fn can_start(self) -> bool {
        matches!(self, Stage::Operating | Stage::Manual)
    }

    /// Moves to `to`, or says why not.
    pub fn transition(self, to: Stage) -> Result<Stage, TransitionError> {
        use Stage::*;
        let ok = match (self, to) {
            (Construction, Provisioning | Decommissioned) => true,
            (Construction, Construction | Operating | Manual | Disabled | Template) => false,
            (Provisioning, Operating | Construction | Decommissioned) => true,
            (Provisioning, Provisioning | Manual | Disabled | Template) => false,
            (Operating, Manual | Disabled | Decommissioned | Template) => true,
            (Operating, Construction | Provisioning | Operating) => false,
            (Manual, Operating | Disabled | Decommissioned) => true,
            (Manual, Construction | Provisioning | Manual | Template) => false,
            (Disabled, Operating | Manual | Decommissioned) => true,
            (Disabled, Construction | Provisioning | Disabled | Template) => false,
            (Template, Decommissioned) => true,
            (Template, Construction | Provisioning | Operating | Manual | Disabled | Template) => {
                false
            }
            (
                Decommissioned,
                Construction | Provisioning | Operating | Manual | Disabled | Decommissioned
                | Template,
            ) => false,
        };
        if ok {
            Ok(to)
        } else {
            Err(TransitionError {
                machine: "stage",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

/// Whether a partition's VM is running (paragraph 0312: inactive stopped
/// and saved; active starting, running, paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// No process; holds no memory, vCPUs or NICs.
    Stopped,
    /// A process is being started; holds its resources.
    Starting,
    /// The guest runs.
    Running,
    /// The guest is paused but keeps its resources.
    Paused,
    /// The guest's state is saved to disk; no process.
    Saved,
    /// The process died unexpectedly; holds no memory, vCPUs or NICs.
    Crashed,
}

impl RunState {
    /// Every run state.
    pub const ALL: [RunState; 6] = [
        RunState::Stopped,
        RunState::Starting,
        RunState::Running,
        RunState::Paused,
        RunState::Saved,
        RunState::Crashed,
    ];

    /// The snake_case name used in the database, JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Stopped => "stopped",
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Saved => "saved",
            RunState::Crashed => "crashed",
        }
    }

    /// True while the partition holds memory, vCPUs and NICs.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunState::Starting | RunState::Running | RunState::Paused
        )
    }

    /// Moves to `to`, or says why not.
    pub fn transition(self, to: RunState) -> Result<RunState, TransitionError> {
        use RunState::*;
        let ok = match (self, to) {
            (Stopped, Starting) => true,
            (Stopped, Stopped | Running | Paused | Saved | Crashed) => false,
            // Saved: a restore that failed leaves the saved state in place.
            (Starting, Running | Stopped | Crashed | Saved) => true,
            (Starting, Starting | Paused) => false,
            (Running, Paused | Stopped | Crashed | Saved) => true,
            (Running, Starting | Running) => false,
            (Paused, Running | Stopped | Crashed | Saved) => true,
            (Paused, Starting | Paused) => false,
            (Saved, Starting | Stopped) => true,
            (Saved, Running | Paused | Saved | Crashed) => false,
            (Crashed, Starting | Stopped) => true,
            (Crashed, Running | Paused | Saved | Crashed) => false,
        };
        if ok {
            Ok(to)
        } else {
            Err(TransitionError {
                machine: "run state",
                from: self.as_str(),
                to: to.as_str(),
            })
        }
    }
}

macro_rules! text_form {
    ($ty:ty, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ParseNameError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty>::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| ParseNameError {
                        what: $what,
                        value: s.to_owned(),
                    })
            }
        }
    };
}

text_form!(Stage, "stage");
text_form!(RunState, "run state");

#[cfg(test)]
mod tests {
    use super::*;

    /// The legal run-state moves, spelled out independently of the match.
    const RUN_MOVES: &[(RunState, &[RunState])] = {
        use RunState::*;
        &[
            (Stopped, &[Starting]),
            (Starting, &[Running, Stopped, Crashed, Saved]),
            (Running, &[Paused, Stopped, Crashed, Saved]),
            (Paused, &[Running, Stopped, Crashed, Saved]),
            (Saved, &[Starting, Stopped]),
            (Crashed, &[Starting, Stopped]),
        ]
    };

    /// The legal stage moves, spelled out independently of the match.
    const STAGE_MOVES: &[(Stage, &[Stage])] = {
        use Stage::*;
        &[
            (Construction, &[Provisioning, Decommissioned]),
            (Provisioning, &[Operating, Construction, Decommissioned]),
            (Operating, &[Manual, Disabled, Decommissioned, Template]),
            (Manual, &[Operating, Disabled, Decommissioned]),
            (Disabled, &[Operating, Manual, Decommissioned]),
            (Template, &[Decommissioned]),
            (Decommissioned, &[]),
        ]
    };

    #[test]
    fn run_state_table_every_pair() {
        assert_eq!(RUN_MOVES.len(), RunState::ALL.len());
        for from in RunState::ALL {
            let legal = RUN_MOVES
                .iter()
                .find(|(f, _)| *f == from)
                .map(|(_, to)| *to)
                .unwrap_or_default();
            for to in RunState::ALL {
                let got = from.transition(to);
                if legal.contains(&to) {
                    assert_eq!(got, Ok(to), "{from} -> {to}");
                } else {
                    let e = got.expect_err("illegal move accepted");
                    assert_eq!(
                        e.to_string(),
                        format!("run state: cannot go from {from} to {to}")
                    );
                }
            }
        }
    }

    #[test]
    fn stage_table_every_pair() {
        assert_eq!(STAGE_MOVES.len(), Stage::ALL.len());
        for from in Stage::ALL {
            let legal = STAGE_MOVES
                .iter()
                .find(|(f, _)| *f == from)
                .map(|(_, to)| *to)
                .unwrap_or_default();
            for to in Stage::ALL {
                let got = from.transition(to);
                if legal.contains(&to) {
                    assert_eq!(got, Ok(to), "{from} -> {to}");
                } else {
                    let e = got.expect_err("illegal move accepted");
                    assert_eq!(
                        e.to_string(),
                        format!("stage: cannot go from {from} to {to}")
                    );
                }
            }
        }
    }

    #[test]
    fn same_state_is_not_a_transition() {
        for s in RunState::ALL {
            assert!(s.transition(s).is_err(), "{s}");
        }
        for s in Stage::ALL {
            assert!(s.transition(s).is_err(), "{s}");
        }
    }

    #[test]
    fn predicates() {
        let active: Vec<_> = RunState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect();
        assert_eq!(
            active,
            [RunState::Starting, RunState::Running, RunState::Paused]
        );
        let startable: Vec<_> = Stage::ALL.into_iter().filter(|s| s.can_start()).collect();
        assert_eq!(startable, [Stage::Operating, Stage::Manual]);
    }

    #[test]
    fn names_round_trip_through_text_and_json() {
        for s in RunState::ALL {
            assert_eq!(s.to_string().parse(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::Value::from(s.as_str()))
            );
        }
        for s in Stage::ALL {
            assert_eq!(s.to_string().parse(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::Value::from(s.as_str()))
            );
        }
        assert!("hibernating".parse::<RunState>().is_err());
        assert!("retired".parse::<Stage>().is_err());
    }
}
