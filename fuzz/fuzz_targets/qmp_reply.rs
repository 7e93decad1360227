//! Fuzzes QMP message parsing: whatever bytes QEMU sends as one line,
//! `brood_qmp::parse_message` returns a message or an error and never panics.
//! Decoding a reply or event into the typed replies (what `execute` does
//! next) is exercised too.

#![no_main]

use brood_qmp::{MigrationInfo, QmpMessage, StatusInfo, parse_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
