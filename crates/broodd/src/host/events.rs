//! The event bus: every state change broodd makes is published here and
//! streamed to `/v1/events` subscribers, and so is every committed ledger
//! transaction (from the ledger's own announcements, so a feature's
//! transactions are published without it doing anything). A slow
//! subscriber misses events (and is told so), it never slows broodd down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use brood_api::{Event, EventKind};
use brood_ledger::{Ledger, PartitionRecord};
use tokio::sync::broadcast;

use crate::wire;

/// Events buffered per subscriber before it lags.
const BUFFER: usize = 1024;

/// Publishes events to whoever listens.
#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    seq: Arc<AtomicU64>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BUFFER).0,
            seq: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Publishes one event on `tx`, numbered from `seq`.
fn send(tx: &broadcast::Sender<Event>, seq: &AtomicU64, kind: EventKind) {
    let seq = seq.fetch_add(1, Ordering::Relaxed) + 1;
    let _ = tx.send(Event {
        seq,
        time: wire::now(),
        kind,
    });
}

impl Events {
    /// An event bus that also publishes every transaction `ledger` commits
    /// from now on, as a `ledger` event with its id, reason and actor
    /// (needs a tokio runtime; without one only the other events flow).
    pub fn following(ledger: &Ledger) -> Self {
        let events = Events::default();
        let mut notes = ledger.subscribe();
        let (tx, seq) = (events.tx.clone(), events.seq.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                loop {
                    match notes.recv().await {
                        Ok(n) => send(
                            &tx,
                            &seq,
                            EventKind::Ledger {
                                tx: n.id.0,
                                reason: n.reason,
                                actor: n.actor,
                            },
                        ),
                        // Missed notes are in the audit log; go on.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        events
    }

    /// Receives events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Publishes an event.
    pub fn publish(&self, kind: EventKind) {
        send(&self.tx, &self.seq, kind);
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
