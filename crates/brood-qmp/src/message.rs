//! What QEMU sends: one JSON object per line, classified into [`QmpMessage`].
//!
//! [`parse_message`] is pure and bounded (it is the fuzz target
//! `fuzz/fuzz_targets/qmp_reply.rs`); reading lines off the socket is
//! [`crate::line`]'s job and routing them is [`crate::client`]'s. Parsing is
//! lenient: members this client does not know are ignored, so a newer QEMU
//! that adds members to a reply or an event still parses.
//!
//! Wire shapes, as recorded from QEMU 10.0.2 (`tests/transcripts/`):
//!
//! ```text
//! {"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "..."}, "capabilities": ["oob"]}}
//! {"return": {...}, "id": 1}
//! {"id": 6, "error": {"class": "CommandNotFound", "desc": "..."}}
//! {"timestamp": {"seconds": 1795312079, "microseconds": 496209}, "event": "RESUME"}
//! ```

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::QmpError;

/// The longest line accepted from QEMU (16 MiB). QEMU is semi-trusted; a
/// longer line is discarded rather than buffered.
pub const MAX_LINE_LEN: usize = 16 << 20;

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpMessage {
    /// The greeting QEMU sends when a client connects.
    Greeting(Greeting),
    /// A successful reply to a command.
    Return {
        /// The `id` the command carried, echoed by QEMU (any JSON value).
        id: Option<Value>,
        /// The `return` member.
        value: Value,
    },
    /// An error reply. QEMU sends one without `id` when it could not parse the request.
    Error {
        /// The `id` the command carried, if QEMU could read it.
        id: Option<Value>,
        /// QEMU's error class, such as `GenericError`.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// An asynchronous event.
    Event(QmpEvent),
}

impl QmpMessage {
    /// A short name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            QmpMessage::Greeting(_) => "greeting",
            QmpMessage::Return { .. } => "reply",
            QmpMessage::Error { .. } => "error reply",
            QmpMessage::Event(_) => "event",
        }
    }
}

/// The QMP greeting: QEMU's version and the protocol capabilities it offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Greeting {
    /// QEMU's version.
    #[serde(default)]
    pub version: VersionInfo,
    /// Capabilities QEMU offers (QEMU 10.0: `["oob"]`); this client enables none.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// The `version` member of the greeting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct VersionInfo {
    /// Upstream version numbers.
    #[serde(default)]
    pub qemu: QemuVersion,
    /// The distribution's package string, such as `Debian 1:10.0.2+ds-2`.
    #[serde(default)]
    pub package: String,
}

/// QEMU's upstream version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct QemuVersion {
    /// Major version.
    #[serde(default)]
    pub major: u32,
    /// Minor version.
    #[serde(default)]
    pub minor: u32,
    /// Micro version.
    #[serde(default)]
    pub micro: u32,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// An asynchronous QMP event, such as `STOP`, `RESUME`, `SHUTDOWN` or `MIGRATION`.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// The event name.
    pub event: String,
    /// The `data` member; `Null` when the event has none (`STOP`, `RESUME`).
    pub data: Value,
    /// When QEMU emitted it: (seconds, microseconds) since the Unix epoch.
    pub timestamp: Option<(i64, i64)>,
}

impl QmpEvent {
    /// Decodes the event's `data` member as `T`, leniently.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, QmpError> {
        T::deserialize(&self.data).map_err(|source| QmpError::Decode {
            what: format!("data of event {}", self.event),
            source,
        })
    }
}

/// Parses one line from QEMU (without or with its `\r\n`).
///
/// Never panics; input longer than [`MAX_LINE_LEN`] is refused unread.
pub fn parse_message(line: &[u8]) -> Result<QmpMessage, QmpError> {
    if line.len() > MAX_LINE_LEN {
        return Err(QmpError::LineTooLong {
            limit: MAX_LINE_LEN,
        });
    }
    let mut obj: Map<String, Value> = serde_json::from_slice(line).map_err(QmpError::Json)?;
    if let Some(greeting) = obj.remove("QMP") {
        let greeting = Greeting::deserialize(greeting).map_err(|source| QmpError::Decode {
            what: "greeting".into(),
            source,
        })?;
        return Ok(QmpMessage::Greeting(greeting));
    }
    if let Some(Value::String(event)) = obj.remove("event") {
        let timestamp = obj.remove("timestamp").and_then(|t| {
            let seconds = t.get("seconds")?.as_i64()?;
            let micros = t.get("microseconds")?.as_i64()?;
            Some((seconds, micros))
        });
        let data = obj.remove("data").unwrap_or(Value::Null);
        return Ok(QmpMessage::Event(QmpEvent {
            event,
            data,
            timestamp,
        }));
    }
    let id = obj.remove("id");
    if let Some(value) = obj.remove("return") {
        return Ok(QmpMessage::Return { id, value });
    }
    if let Some(error) = obj.remove("error") {
        let error = ErrorBody::deserialize(error).map_err(|source| QmpError::Decode {
            what: "error reply".into(),
            source,
        })?;
        return Ok(QmpMessage::Error {
            id,
            class: error.class,
            desc: error.desc,
        });
    }
    Err(QmpError::Unrecognized)
}

/// The `error` member of an error reply.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    class: String,
    #[serde(default)]
    desc: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_qemu_10_greeting() {
        let line = br#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#;
        let QmpMessage::Greeting(g) = parse_message(line).unwrap() else {
            panic!("not a greeting");
        };
        assert_eq!(g.version.qemu.to_string(), "10.0.2");
        assert_eq!(g.capabilities, vec!["oob".to_string()]);
    }

    #[test]
    fn parses_return_error_and_event_with_crlf() {
        let msg = parse_message(
            b"{\"return\": {\"status\": \"prelaunch\", \"running\": false}, \"id\": 2}\r\n",
        );
        assert_eq!(
            msg.unwrap(),
            QmpMessage::Return {
                id: Some(json!(2)),
                value: json!({"status": "prelaunch", "running": false}),
            }
        );
        let msg = parse_message(br#"{"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'garbage'"}}"#);
        assert!(
            matches!(msg.unwrap(), QmpMessage::Error { id: None, class, .. } if class == "GenericError")
        );
        let msg = parse_message(
            br#"{"timestamp": {"seconds": 1795312079, "microseconds": 496209}, "event": "RESUME"}"#,
        )
        .unwrap();
        assert_eq!(
            msg,
            QmpMessage::Event(QmpEvent {
                event: "RESUME".into(),
                data: Value::Null,
                timestamp: Some((1795312079, 496209)),
            })
        );
    }

    #[test]
    fn refuses_non_objects_and_unknown_objects() {
        assert!(matches!(parse_message(b"garbage"), Err(QmpError::Json(_))));
        assert!(matches!(parse_message(b"[1,2]"), Err(QmpError::Json(_))));
        assert!(matches!(parse_message(b""), Err(QmpError::Json(_))));
        assert!(matches!(parse_message(b"{}"), Err(QmpError::Unrecognized)));
        assert!(matches!(
            parse_message(br#"{"error": 5}"#),
            Err(QmpError::Decode { .. })
        ));
        // An event whose name is not a string is not an event.
        assert!(matches!(
            parse_message(br#"{"event": 5}"#),
            Err(QmpError::Unrecognized)
        ));
    }

    #[test]
    fn refuses_over_long_input_and_deep_nesting() {
        let long = vec![b' '; MAX_LINE_LEN + 1];
        assert!(matches!(
            parse_message(&long),
            Err(QmpError::LineTooLong { .. })
        ));
        // serde_json's recursion limit turns this into an error, not a stack overflow.
        let deep = format!(
            "{{\"return\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse_message(deep.as_bytes()).is_err());
    }
}
