//! Conversions between the ledger's types and the wire's (brood-api): state
//! enums, resources, timestamps. The two keep separate enums on purpose:
//! the wire is a contract with clients, the ledger one with the database.

use brood_api as api;
use brood_ledger::{ChildStatus, RunState, Stage};

/// Now, RFC 3339 in UTC.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Ledger stage to wire stage.
pub fn stage_out(s: Stage) -> api::Stage {
    match s {
        Stage::Construction => api::Stage::Construction,
        Stage::Provisioning => api::Stage::Provisioning,
        Stage::Operating => api::Stage::Operating,
        Stage::Manual => api::Stage::Manual,
        Stage::Disabled => api::Stage::Disabled,
        Stage::Decommissioned => api::Stage::Decommissioned,
        Stage::Template => api::Stage::Template,
    }
}

/// Wire stage to ledger stage.
pub fn stage_in(s: api::Stage) -> Stage {
    match s {
        api::Stage::Construction => Stage::Construction,
        api::Stage::Provisioning => Stage::Provisioning,
        api::Stage::Operating => Stage::Operating,
        api::Stage::Manual => Stage::Manual,
        api::Stage::Disabled => Stage::Disabled,
        api::Stage::Decommissioned => Stage::Decommissioned,
        api::Stage::Template => Stage::Template,
    }
}

/// Ledger run state to wire run state.
pub fn run_state_out(s: RunState) -> api::RunState {
    match s {
        RunState::Stopped => api::RunState::Stopped,
        RunState::Starting => api::RunState::Starting,
        RunState::Running => api::RunState::Running,
        RunState::Paused => api::RunState::Paused,
        RunState::Saved => api::RunState::Saved,
        RunState::Crashed => api::RunState::Crashed,
    }
}

/// Ledger child status to wire child status.
pub fn child_status_out(s: ChildStatus) -> api::ChildStatus {
    match s {
        ChildStatus::Pending => api::ChildStatus::Pending,
        ChildStatus::Ready => api::ChildStatus::Ready,
        ChildStatus::Failed => api::ChildStatus::Failed,
    }
}

/// Ledger resources to wire resources.
pub fn resources_out(r: &brood_ledger::Resources) -> api::Resources {
    api::Resources {
        memory_mib: r.memory_mib,
        vcpus: r.vcpus,
        disk_gib: r.disk_gib,
        nics: r.nics,
    }
}
