//! What the `qmp_reply` fuzz target checks, shared with brood-qmp's corpus
//! test (`crates/brood-qmp/tests/fuzz_corpus.rs`) so the corpus runs on
//! stable through exactly this code.
//!
//! Whatever bytes QEMU sends as one line, `brood_qmp::parse_message`
//! returns a message or an error and never panics; decoding a reply or
//! event into the typed replies (what `execute` does next) never panics
//! either.

use brood_qmp::{MigrationInfo, QmpMessage, StatusInfo, parse_message};

/// Parses `data` as one QMP line; panics only if brood-qmp misbehaves.
pub fn check(data: &[u8]) {
    let Ok(message) = parse_message(data) else {
        return;
    };
    let value = match message {
        QmpMessage::Return { value, .. } => value,
        QmpMessage::Event(event) => {
            let _ = event.data_as::<MigrationInfo>();
            event.data
        }
        QmpMessage::Greeting(_) | QmpMessage::Error { .. } => return,
    };
    let _ = serde_json::from_value::<StatusInfo>(value.clone());
    let _ = serde_json::from_value::<MigrationInfo>(value.clone());
    let _ = serde_json::from_value::<String>(value);
}
