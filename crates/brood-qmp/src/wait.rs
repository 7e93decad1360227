//! Waiting on QEMU with a deadline: for a named event, and for a migration to end.
//!
//! Waits end on an event or on a backoff poll, never on a fixed sleep, and
//! always have a deadline ([`QmpError::Timeout`]). The events come from
//! [`QmpClient::events`]; subscribe before sending the command that causes
//! the event, or it may pass unseen.
//!
//! Migration events: QEMU 10.0.2 sends `MIGRATION` (and `MIGRATION_PASS`)
//! events only when the migration capability `events` is on; it is off by
//! default. This is documented on the capability in QEMU's
//! `qapi/migration.json` ("generate events for each migration state change",
//! since 2.4) and was checked against the installed QEMU 10.0.2: a `file:`
//! migration without the capability produced no event at all
//! (`tests/transcripts/migrate_poll.txt`), with it `setup`, `active`,
//! `device`, `completed` (`migrate_events.txt`); the incoming side behaves the
//! same (`migrate_incoming.txt`). So [`QmpClient::wait_migration`] always
//! polls `query-migrate` as well, and the events only make it return sooner.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, warn};

use crate::client::until;
use crate::command::MigrationStatus;
use crate::message::QmpEvent;
use crate::{QmpClient, QmpError};

/// First pause between `query-migrate` polls; it doubles up to a cap.
const MIGRATION_POLL_FIRST: Duration = Duration::from_millis(2);
/// Poll cap while no `MIGRATION` event has been seen (the `events` capability may be off).
const MIGRATION_POLL_MAX: Duration = Duration::from_millis(100);
/// Poll cap once `MIGRATION` events arrive; polling is then only a safety net.
const MIGRATION_POLL_MAX_WITH_EVENTS: Duration = Duration::from_secs(1);

/// The `data` of a `MIGRATION` event.
#[derive(Debug, Deserialize)]
struct MigrationEventData {
    status: MigrationStatus,
}

impl QmpClient {
    /// Waits on `rx` for the next event called `name` (such as `STOP`), up to `deadline`.
    ///
    /// Fails with [`QmpError::Closed`] if the connection ends first. Events
    /// lost because `rx` fell more than [`crate::EVENT_CAPACITY`] behind are
    /// logged and skipped.
    pub async fn wait_event(
        &self,
        rx: &mut broadcast::Receiver<QmpEvent>,
        name: &str,
        deadline: Duration,
    ) -> Result<QmpEvent, QmpError> {
        self.wait_event_matching(rx, deadline, |event| event.event == name)
            .await
            .map_err(|err| match err {
                QmpError::Timeout { after, .. } => QmpError::Timeout {
                    op: format!("wait for QMP event {name}"),
                    after,
                },
                other => other,
            })
    }

    /// Waits on `rx` for the next event for which `matches` returns true, up to `deadline`.
    pub async fn wait_event_matching(
        &self,
        rx: &mut broadcast::Receiver<QmpEvent>,
        deadline: Duration,
        mut matches: impl FnMut(&QmpEvent) -> bool,
    ) -> Result<QmpEvent, QmpError> {
        let until = until(deadline);
        loop {
            match timeout_at(until, rx.recv()).await {
                Ok(Ok(event)) if matches(&event) => return Ok(event),
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Lagged(missed))) => {
                    warn!(missed, "QMP event receiver fell behind, events lost");
                }
                Ok(Err(RecvError::Closed)) => return Err(QmpError::Closed),
                Err(_elapsed) => {
                    return Err(QmpError::Timeout {
                        op: "wait for QMP event".into(),
                        after: deadline,
                    });
                }
            }
        }
    }

    /// Waits until the current migration (outgoing or incoming) is completed,
    /// failed or cancelled, up to `deadline`, and returns that status.
    ///
    /// Polls `query-migrate` with a doubling backoff and returns early on a
    /// final `MIGRATION` event (sent only with the `events` capability on; see
    /// the module docs). A `Failed` status is returned as `Ok`; its
    /// `error-desc` is in [`QmpClient::query_migrate`].
    pub async fn wait_migration(&self, deadline: Duration) -> Result<MigrationStatus, QmpError> {
        let until = until(deadline);
        let timed_out = || QmpError::Timeout {
            op: "wait for migration".into(),
            after: deadline,
        };
        // Subscribe before the first poll so no event falls between the two.
        let mut rx = self.events();
        let mut backoff = MIGRATION_POLL_FIRST;
        let mut events_seen = false;
        loop {
            let info = timeout_at(until, self.query_migrate())
                .await
                .map_err(|_elapsed| timed_out())??;
            match info.status {
                Some(status) if status.is_final() => return Ok(status),
                status => debug!(?status, "migration still running"),
            }
            let next_poll = (Instant::now() + backoff).min(until);
            loop {
                match timeout_at(next_poll, rx.recv()).await {
                    Ok(Ok(event)) if event.event == "MIGRATION" => {
                        events_seen = true;
                        match event.data_as::<MigrationEventData>() {
                            Ok(data) if data.status.is_final() => return Ok(data.status),
                            Ok(_) => {}
                            Err(err) => warn!(error = %err, "odd MIGRATION event, ignored"),
                        }
                    }
                    Ok(Ok(_)) => {}
                    // Missed events: poll now instead.
                    Ok(Err(RecvError::Lagged(_))) => break,
                    Ok(Err(RecvError::Closed)) => return Err(QmpError::Closed),
                    Err(_elapsed) => break,
                }
            }
            if Instant::now() >= until {
                return Err(timed_out());
            }
            let cap = if events_seen {
                MIGRATION_POLL_MAX_WITH_EVENTS
            } else {
                MIGRATION_POLL_MAX
            };
            backoff = (backoff * 2).min(cap);
        }
    }
}
