//! The event bus: every state change broodd makes is published here and
//! streamed to `/v1/events` subscribers. A slow subscriber misses events
//! (and is told so), it never slows broodd down.

use std::sync::atomic::{AtomicU64, Ordering};

use brood_api::{Event, EventKind};
use brood_ledger::PartitionRecord;
use tokio::sync::broadcast;

use crate::wire;

/// Events buffered per subscriber before it lags.
const BUFFER: usize = 1024;

/// Publishes events to whoever listens.
#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BUFFER).0,
            seq: AtomicU64::new(0),
        }
    }
}

impl Events {
    /// Receives events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Publishes an event.
    pub fn publish(&self, kind: EventKind) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.tx.send(Event {
            seq,
            time: wire::now(),
            kind,
        });
    }

    /// Publishes a partition's current state.
    pub fn partition(&self, rec: &PartitionRecord, detail: Option<String>) {
        self.publish(EventKind::Partition {
            name: rec.name.clone(),
            uuid: rec.uuid,
            stage: wire::stage_out(rec.stage),
            run_state: wire::run_state_out(rec.run_state),
            detail,
        });
    }
}
