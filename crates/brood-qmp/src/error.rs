//! [`QmpError`], the one error type of this crate.
//!
//! Variants are what a caller branches on: the socket could not be reached
//! ([`QmpError::Connect`]), QEMU answered a command with an error reply
//! ([`QmpError::Command`]), the connection is gone ([`QmpError::Closed`]), a
//! wait ran out ([`QmpError::Timeout`]), or QEMU sent something this client
//! could not make sense of. Messages never repeat their `#[source]`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of talking QMP to a QEMU process.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Reading from or writing to the QMP socket failed.
    #[error("QMP socket I/O")]
    Io(#[source] io::Error),

    /// Connecting to the QMP socket failed (after retrying until the deadline).
    #[error("connect to QMP socket {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The last connect error.
        #[source]
        source: io::Error,
    },

    /// The greeting or the capabilities negotiation failed.
    #[error("QMP handshake failed while {step}")]
    Handshake {
        /// What the handshake was doing: reading the greeting or negotiating capabilities.
        step: &'static str,
        /// Why it failed.
        #[source]
        source: Box<QmpError>,
    },

    /// QEMU answered a command with an error reply.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The QMP command name, such as `migrate-incoming`.
        command: String,
        /// QEMU's error class, such as `GenericError` or `CommandNotFound`.
        class: String,
        /// QEMU's human-readable description.
        desc: String,
    },

    /// The connection ended; pending and later commands fail with this.
    #[error("QMP connection closed")]
    Closed,

    /// A line from QEMU is not JSON.
    #[error("QMP message is not valid JSON")]
    Json(#[source] serde_json::Error),

    /// A line from QEMU is a JSON value but neither a greeting, a reply nor an event.
    #[error("QMP message is neither a greeting, a reply nor an event")]
    Unrecognized,

    /// A message of one kind arrived where another was expected.
    #[error("expected QMP {expected}, got {got}")]
    Unexpected {
        /// The kind that was expected.
        expected: &'static str,
        /// The kind that arrived.
        got: &'static str,
    },

    /// A reply or event did not match the expected type.
    #[error("QMP {what} does not match the expected type")]
    Decode {
        /// What was decoded, such as `reply to query-status`.
        what: String,
        /// The mismatch.
        #[source]
        source: serde_json::Error,
    },

    /// A command's arguments could not be encoded as JSON.
    #[error("encode arguments of QMP command {command}")]
    Encode {
        /// The QMP command name.
        command: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },

    /// A line from QEMU was longer than the limit; it was discarded.
    #[error("QMP line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },

    /// A wait ran past its deadline.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        op: String,
        /// How long it waited.
        after: Duration,
    },
}

impl QmpError {
    /// Whether this is QEMU's error reply of class `class` (for example `CommandNotFound`).
    pub fn is_command_error(&self, class: &str) -> bool {
        matches!(self, QmpError::Command { class: c, .. } if c == class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn messages_do_not_repeat_their_source() {
        let err = QmpError::Connect {
            path: PathBuf::from("/run/q.sock"),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(err.to_string(), "connect to QMP socket /run/q.sock");
        assert!(err.source().is_some());

        let err = QmpError::Handshake {
            step: "reading the greeting",
            source: Box::new(QmpError::Closed),
        };
        assert_eq!(
            err.to_string(),
            "QMP handshake failed while reading the greeting"
        );
        assert_eq!(
            err.source().map(ToString::to_string).as_deref(),
            Some("QMP connection closed")
        );
    }

    #[test]
    fn command_error_class_is_matchable() {
        let err = QmpError::Command {
            command: "nope".into(),
            class: "CommandNotFound".into(),
            desc: "The command nope has not been found".into(),
        };
        assert!(err.is_command_error("CommandNotFound"));
        assert!(!err.is_command_error("GenericError"));
    }
}
