//! `HostError`: the domain error of broodd's core and features. It says
//! what went wrong in the user's terms and keeps the cause; the HTTP edge
//! maps it to a status and a stable code (`api::error`), and logs it once
//! there. Background work (supervision, refills) logs its own.

use brood_engine::EngineError;
use brood_ledger::LedgerError;

/// A failed operation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The request is invalid; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The object does not exist (or the caller may not know it does).
    #[error("{0}")]
    NotFound(String),
    /// The caller's role may see the object but not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Not allowed in the object's current state.
    #[error("{0}")]
    Transition(String),
    /// Another operation holds the object, or a name is taken.
    #[error("{0}")]
    Conflict(String),
    /// The engine failed while `what`.
    #[error("{what}")]
    Engine {
        /// What broodd was doing.
        what: String,
        /// Why.
        #[source]
        source: EngineError,
    },
    /// The guest failed what it was asked (its agent reported the failure).
    #[error("{0}")]
    Guest(String),
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A host resource (a file, a program) failed while `what`.
    #[error("{what}")]
    Io {
        /// What broodd was doing.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something broodd stored cannot be read back: a bug or a damaged store.
    #[error("{what}")]
    Corrupt {
        /// What could not be read.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl HostError {
    /// The request is invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        HostError::Invalid(message.into())
    }

    /// No such partition.
    pub fn no_partition(name: &str) -> Self {
        HostError::NotFound(format!(
            "no partition named {name:?} (`brood vm list` shows the partitions)"
        ))
    }

    /// Not allowed in the current state.
    pub fn transition(message: impl Into<String>) -> Self {
        HostError::Transition(message.into())
    }

    /// Busy, or a name is taken.
    pub fn conflict(message: impl Into<String>) -> Self {
        HostError::Conflict(message.into())
    }

    /// The engine failed while `what`.
    pub fn engine(what: impl Into<String>, source: EngineError) -> Self {
        HostError::Engine {
            what: what.into(),
            source,
        }
    }

    /// A file or program failed while `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HostError::Io {
            what: what.into(),
            source,
        }
    }

    /// Stored data that cannot be read back.
    pub fn corrupt(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        HostError::Corrupt {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// An error and its sources, joined with ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Result of a core or feature operation.
pub type HostResult<T> = Result<T, HostError>;
