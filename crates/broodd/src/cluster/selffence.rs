//! Self-fencing: a host that cannot reach the catalog stops running what
//! an operations service may start elsewhere, before it may.
//!
//! An operations service calls a host failed after `--failed-after` of
//! silence in the catalog, and may then re-place its movable partitions
//! (`failover.rs`) on other hosts. A host cut off from PostgreSQL (a
//! network partition, not a crash) still runs them: without this, each
//! would run twice. So each broodd watches its own heartbeats: when the
//! last one that reached the catalog began `failed_after - heartbeat` ago
//! (the catalog's silence of this host is at least that, since a
//! heartbeat is recorded after it begins), it pauses every running
//! partition it publishes as movable. A paused QEMU keeps the guest's
//! memory but runs none of its code, so nothing of it acts any more
//! (no packets, no writes), and nothing is lost if nothing moved.
//!
//! When heartbeats reach the catalog again, the sweep ([`super::fence`])
//! removes the copies that moved away meanwhile, and each copy this
//! paused that the catalog still places here at the generation it was
//! given is resumed. Which ones it paused is kept in
//! `<data>/self-fenced.json`, so a broodd restarted while fenced resumes
//! them too (and never resumes a VM a user paused).
//!
//! While fenced, the host's jobs cannot be admitted either: on a cluster
//! member they live in the catalog.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brood_ledger::RunState;
use tracing::{info, warn};
use uuid::Uuid;

use super::Member;
use crate::host::{Host, chain};

/// The actor the pauses and resumes are recorded under.
const ACTOR: &str = "self-fence";

/// When the last heartbeat that reached the catalog began.
#[derive(Debug)]
pub struct Health(Mutex<Instant>);

impl Default for Health {
    fn default() -> Self {
        Health(Mutex::new(Instant::now()))
    }
}

impl Health {
    /// A heartbeat (or registration) begun at `began` reached the catalog.
    pub fn beat(&self, began: Instant) {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if began > *last {
            *last = began;
        }
    }

    /// How long since the last heartbeat that reached the catalog began.
    pub fn silence(&self) -> Duration {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }
}

/// How long a host may go without reaching the catalog before it fences
/// itself: one heartbeat before the others may call it failed, and never
/// before they call it suspect.
pub fn threshold(heartbeat: Duration, suspect_after: Duration, failed_after: Duration) -> Duration {
    failed_after.saturating_sub(heartbeat).max(suspect_after)
}

fn state_file(host: &Host) -> PathBuf {
    host.paths.data.join("self-fenced.json")
}

fn load(host: &Host) -> BTreeSet<Uuid> {
    match std::fs::read(state_file(host)) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            warn!(
                "{} is unreadable ({e}): no self-fenced VMs to resume",
                state_file(host).display()
            );
            BTreeSet::new()
        }),
        Err(_) => BTreeSet::new(),
    }
}

fn save(host: &Host, paused: &BTreeSet<Uuid>) {
    let path = state_file(host);
    let r = if paused.is_empty() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        let tmp = path.with_extension("json.tmp");
        serde_json::to_vec(paused)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path))
    };
    if let Err(e) = r {
        warn!(
            "could not record the self-fenced VMs in {}: {e}",
            path.display()
        );
    }
}

/// Watches this host's heartbeats until broodd stops.
pub fn spawn(host: Arc<Host>, m: Arc<Member>) {
    tokio::spawn(async move {
        let limit = threshold(
            m.cfg.heartbeat,
            Duration::from_millis(m.cfg.liveness.suspect_after_ms),
            Duration::from_millis(m.cfg.liveness.failed_after_ms),
        );
        let mut paused = load(&host);
        let mut fenced = !paused.is_empty();
        let mut tick = tokio::time::interval(m.cfg.heartbeat.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !host.is_stopping() {
            tick.tick().await;
            let silence = m.health.silence();
            if silence >= limit {
                if !fenced {
                    warn!(
                        "the catalog has not been reached for {silence:?} (limit {limit:?}): \
                         pausing the VMs another host may be given, so none runs twice"
                    );
                    fenced = true;
                }
                // Again on every tick: a VM started meanwhile is paused too.
                if fence(&host, &mut paused).await {
                    save(&host, &paused);
                }
            } else if fenced {
                if unfence(&host, &m, &mut paused).await {
                    fenced = false;
                    info!("the catalog answers again: self-fencing ended");
                }
                save(&host, &paused);
            }
        }
    });
}

/// Pauses every running movable partition; true if it paused any.
async fn fence(host: &Arc<Host>, paused: &mut BTreeSet<Uuid>) -> bool {
    let parts = match host.ledger.all_partitions().await {
        Ok(p) => p,
        Err(e) => {
            warn!("self-fence: read the ledger: {e}");
            return false;
        }
    };
    let mut any = false;
    for rec in parts {
        if rec.run_state != RunState::Running || super::failover::spec_of(&rec).is_none() {
            continue;
        }
        match crate::partition::lifecycle::pause(host, ACTOR, rec.uuid, true).await {
            Ok(_) => {
                warn!(partition = %rec.name, "self-fenced: paused");
                paused.insert(rec.uuid);
                any = true;
            }
            Err(e) => warn!(partition = %rec.name, "self-fence: could not pause it: {}", chain(&e)),
        }
    }
    any
}

/// Once the catalog answers: removes what moved away, resumes what is
/// still this host's. True when nothing is left to decide.
async fn unfence(host: &Arc<Host>, m: &Member, paused: &mut BTreeSet<Uuid>) -> bool {
    if let Err(e) = super::fence::sweep(host, m).await {
        warn!("self-fence: sweep after the catalog came back: {e} (tried again)");
        return false;
    }
    let mut settled = true;
    for uuid in paused.clone() {
        let rec = match host.ledger.partition_by_uuid(uuid).await {
            Ok(Some(r)) => r,
            // Removed by the sweep (it moved away) or deleted meanwhile.
            Ok(None) => {
                paused.remove(&uuid);
                continue;
            }
            Err(e) => {
                warn!("self-fence: read partition {uuid}: {e}");
                settled = false;
                continue;
            }
        };
        if rec.run_state != RunState::Paused {
            // Stopped or resumed by someone else meanwhile.
            paused.remove(&uuid);
            continue;
        }
        match super::fence::check(m, Some(uuid), &rec.name).await {
            Ok(()) => match crate::partition::lifecycle::pause(host, ACTOR, uuid, false).await {
                Ok(_) => {
                    info!(partition = %rec.name, "self-fence ended: resumed");
                    paused.remove(&uuid);
                }
                Err(e) => {
                    warn!(partition = %rec.name, "could not resume it: {}", chain(&e));
                    settled = false;
                }
            },
            // Moved away: the next sweep removes it; it stays paused.
            Err(e) if e.status == axum::http::StatusCode::CONFLICT => {
                warn!(partition = %rec.name, "stays paused: {}", e.message);
                settled = false;
            }
            Err(e) => {
                warn!(partition = %rec.name, "self-fence: {} (tried again)", e.message);
                settled = false;
            }
        }
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_fences_itself_a_heartbeat_before_it_may_be_called_failed() {
        let s = Duration::from_secs;
        assert_eq!(threshold(s(5), s(15), s(60)), s(55));
        assert_eq!(
            threshold(
                Duration::from_millis(300),
                Duration::from_millis(1500),
                s(3)
            ),
            Duration::from_millis(2700)
        );
        // Never before the host would be suspect.
        assert_eq!(threshold(s(10), s(15), s(20)), s(15));
    }

    #[test]
    fn the_last_heartbeat_counts_from_when_it_began() {
        let h = Health::default();
        let early = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        h.beat(Instant::now());
        // A slow heartbeat that began earlier and ended later does not
        // make the host look more recently heard of than it was.
        h.beat(early);
        assert!(h.silence() < Duration::from_millis(20));
    }
}
