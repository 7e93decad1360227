//! `EngineError`: every way an engine operation can fail, with the variants
//! callers branch on (unsupported, wrong state, process gone, timeout) kept
//! apart from plain I/O and QMP failures.

use std::path::PathBuf;
use std::time::Duration;

use brood_proto::AgentError;
use brood_qmp::QmpError;

/// Errors of the engine and its QEMU backend.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The VM description is invalid; the message says what to change.
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    /// The engine cannot do this at all (on this host or backend).
    #[error("{op} is not supported by this engine")]
    Unsupported {
        /// The operation.
        op: &'static str,
    },
    /// The operation is not allowed in the VM's current state.
    #[error("cannot {op} a VM that is {state}")]
    InvalidState {
        /// The operation.
        op: &'static str,
        /// The state it was in.
        state: String,
    },
    /// QEMU could not be started.
    #[error("start {program}")]
    Spawn {
        /// The QEMU binary.
        program: PathBuf,
        /// Why exec failed.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited; `detail` is the tail of its error output or console.
    #[error("QEMU exited ({status}){detail}")]
    ProcessExited {
        /// How it exited.
        status: String,
        /// ": <what QEMU or the guest printed last>", or empty.
        detail: String,
    },
    /// An operation did not finish in time.
    #[error("{op} did not finish within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// A QMP command failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// The guest agent answered a request with an error.
    #[error("guest agent: {0}")]
    Agent(AgentError),
    /// The guest agent connection broke or the agent sent something invalid.
    #[error("guest agent channel: {0}")]
    AgentChannel(String),
    /// Saving or loading VM state failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// A host resource (file, socket, tap) could not be set up.
    #[error("{what}")]
    Host {
        /// What brood was doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// Builds a [`EngineError::Host`] from a description and an I/O error.
    pub fn host(what: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Host {
            what: what.into(),
            source,
        }
    }
}
