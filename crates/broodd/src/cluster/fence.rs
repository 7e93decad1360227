//! Generation fencing: a host's broodd acts on a clustered partition only
//! while the catalog still places it here at the generation this broodd
//! was given. Every partition job passes [`admit`] when its turn comes
//! (the job engine's one entry: start, restore, resume, pause, save, fork,
//! define and the rest), so a broodd that comes back after its partitions
//! were moved to other hosts cannot start them again: the job fails with
//! 409 and the reason. Stop, kill and delete are let through: they only
//! end this host's copy, which is what fencing wants.
//!
//! When the catalog does not answer, [`admit`] retries to the catalog's
//! deadline (`--catalog-retry`) and then refuses with 503: acting blind
//! could run a partition twice. At start, and on every failover tick,
//! [`sweep`] stops and removes the local copies the catalog places on
//! another host.
//!
//! What this does not cover: runs that are not jobs (the restart policy
//! applied to a crashed VM, autostart at broodd's start, workflow tasks and
//! `set_config`/`set_stage`) rely on [`sweep`], which runs before the
//! cluster's other work at join.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use brood_api::ErrorCode;
use brood_cluster::{ClusterError, Placement};
use brood_ledger::JobRecord;
use tracing::{info, warn};
use uuid::Uuid;

use super::{Cluster, Member};
use crate::api::error::{ApiError, ApiResult};
use crate::host::{Host, Kind, chain};

/// The generation of each local partition's placement as this broodd
/// first saw it here, by the partition's id in the ledger.
#[derive(Debug, Default)]
pub struct Given(Mutex<HashMap<Uuid, u64>>);

impl Given {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, u64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the generation seen here for `local` (first sight only).
    fn record(&self, local: Uuid, generation: u64) -> u64 {
        *self.lock().entry(local).or_insert(generation)
    }

    /// Replaces what was seen for `local` with `generation`: this host's own
    /// move of it was aborted, which left the generation the move took with
    /// the partition still here, so that is the one it runs under now.
    pub fn rebase(&self, local: Uuid, generation: u64) {
        self.lock().insert(local, generation);
    }

    /// Forgets a partition removed here (fenced, or moved away).
    pub fn forget(&self, local: Uuid) {
        self.lock().remove(&local);
    }
}

/// What the catalog says about a local partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The catalog does not know it (not reconciled yet): local as ever.
    Unknown,
    /// Placed here, at the generation this host was given.
    Ours,
    /// Placed here but not yet held: arriving (a failover start).
    Arriving,
    /// Placed on another host (or moved and placed back): not ours.
    Fenced {
        /// Where the catalog places it.
        host: Option<String>,
        /// Its generation there.
        generation: u64,
        /// The generation this host was given, if it saw one.
        given: Option<u64>,
    },
}

/// Judges a local partition (`local`; `None` for a name about to be
/// defined) against its placement, found by the partition's id (`left`:
/// a failover left this copy behind) or by its name. Pure; `given` is the
/// generation this host recorded.
pub fn judge(
    me: &str,
    local: Option<Uuid>,
    given: Option<u64>,
    found: Option<(&Placement, bool)>,
) -> Verdict {
    let Some((p, left)) = found else {
        return Verdict::Unknown;
    };
    let fenced = || Verdict::Fenced {
        host: p.host.clone(),
        generation: p.generation,
        given,
    };
    let same = local.is_some() && p.local_id == local;
    if left {
        return fenced();
    }
    if p.host.as_deref() != Some(me) {
        return match local {
            // The same partition, placed elsewhere; or a name about to be
            // defined that another host's partition has.
            _ if same => fenced(),
            None => fenced(),
            // Another partition of the same name: the reconcile reports it.
            Some(_) => Verdict::Unknown,
        };
    }
    if same {
        return match given {
            Some(g) if g != p.generation => fenced(),
            _ => Verdict::Ours,
        };
    }
    if p.held {
        // Held here under another id: the ledger's own checks decide.
        Verdict::Ours
    } else {
        Verdict::Arriving
    }
}

/// Whether a kind of job changes what runs (and so must be fenced).
fn fenced_kind(kind: &str) -> bool {
    match kind {
        "partition.stop" | "partition.kill" | "partition.delete" => false,
        k => k.starts_with("partition.") || k == "template.fork",
    }
}

/// The 409 of a fenced partition.
fn refusal(name: &str, me: &str, v: &Verdict) -> ApiError {
    let Verdict::Fenced {
        host,
        generation,
        given,
    } = v
    else {
        return ApiError::conflict(format!("{name} is not fenced on host {me}"));
    };
    let was = given.map_or(String::new(), |g| {
        format!(" (this host was given generation {g})")
    });
    let there = match host.as_deref() {
        Some(h) if h == me => "on this host under a newer placement".to_owned(),
        Some(h) => format!("on host {h}"),
        None => "on no host".to_owned(),
    };
    ApiError::conflict(format!(
        "{name} is fenced on host {me}: the catalog places it {there} at generation {generation}{was}; \
         it moved while this host was away, so this host must not run it. Nothing was done: \
         use it where it runs (`brood host placements`)"
    ))
}

/// The check of the job engine's entry: a partition job on a clustered
/// host runs only if the catalog still places the partition here.
pub async fn admit(host: &Arc<Host>, job: &JobRecord) -> ApiResult<()> {
    let Some(m) = host.feature::<Cluster>().member() else {
        return Ok(());
    };
    if !fenced_kind(&job.kind) {
        return Ok(());
    }
    let local = match job
        .params
        .get("uuid")
        .and_then(|u| u.as_str())
        .and_then(|u| u.parse::<Uuid>().ok())
    {
        Some(u) => Some(u),
        None => host
            .ledger
            .partition_by_name(&job.target)
            .await?
            .map(|p| p.uuid),
    };
    check(&m, local, &job.target).await
}

/// Checks one partition (or a name about to be defined) against the catalog.
pub async fn check(m: &Member, local: Option<Uuid>, name: &str) -> ApiResult<()> {
    let p = match m
        .catalog
        .placement_of(local.unwrap_or(Uuid::nil()), name)
        .await
    {
        Ok(p) => p,
        Err(e @ (ClusterError::Unavailable { .. } | ClusterError::Pool(_))) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                format!(
                    "refused {name}: the catalog could not confirm that this host still owns it ({e}); \
                     nothing was done, so it cannot run twice: retry once PostgreSQL answers"
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let given = match (local, p.as_ref()) {
        (Some(l), Some((p, false)))
            if p.local_id == Some(l) && p.host.as_deref() == Some(&m.cfg.name) =>
        {
            Some(m.given.record(l, p.generation))
        }
        (Some(l), _) => m.given.lock().get(&l).copied(),
        _ => None,
    };
    let v = judge(&m.cfg.name, local, given, p.as_ref().map(|(p, l)| (p, *l)));
    if matches!(v, Verdict::Fenced { .. }) {
        return Err(refusal(name, &m.cfg.name, &v));
    }
    Ok(())
}

/// Stops and removes every local copy of a partition the catalog places on
/// another host; returns their names.
pub async fn sweep(host: &Arc<Host>, m: &Member) -> Result<Vec<String>, ClusterError> {
    let parts = host
        .ledger
        .all_partitions()
        .await
        .map_err(|e| ClusterError::Invalid(format!("read the ledger's partitions: {e}")))?;
    let all = m.catalog.placements(None).await?;
    let left = m.catalog.left_behind().await?;
    let by_local: HashMap<Uuid, &Placement> = all
        .iter()
        .filter_map(|p| p.local_id.map(|l| (l, p)))
        .collect();
    let by_name: HashMap<&str, &Placement> = all.iter().map(|p| (p.name.as_str(), p)).collect();
    // A live migration briefly leaves a copy on a host the catalog does not
    // place it on (the target's reservation before the commit, the source's
    // paused copy after it): the move's own recovery settles those
    // (`migrate.rs`), never the sweep.
    let moving: std::collections::HashSet<Uuid> = m
        .catalog
        .moves_of_host(&m.cfg.name)
        .await?
        .into_iter()
        .map(|mv| mv.local_id)
        .collect();
    let mut released = Vec::new();
    for rec in parts {
        if Kind::of(&rec) == Kind::Template || moving.contains(&rec.uuid) {
            continue;
        }
        let is_left = left.contains(&rec.uuid);
        let p = by_local
            .get(&rec.uuid)
            .or_else(|| by_name.get(rec.name.as_str()))
            .copied();
        let given = m.given.lock().get(&rec.uuid).copied();
        let v = judge(&m.cfg.name, Some(rec.uuid), given, p.map(|p| (p, is_left)));
        let Verdict::Fenced { host: there, .. } = &v else {
            continue;
        };
        warn!(
            "partition {} moved to {} while this host was away: stopping and removing this host's copy",
            rec.name,
            there.as_deref().unwrap_or("no host")
        );
        match crate::partition::lifecycle::delete(host, "fence", rec.uuid, true).await {
            Ok(()) => {
                m.given.forget(rec.uuid);
                info!(partition = %rec.name, "fenced copy removed");
                released.push(rec.name);
            }
            Err(e) => warn!(
                partition = %rec.name,
                "could not remove the fenced copy (tried again): {}",
                chain(&e)
            ),
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;
    use brood_cluster::Capacity;

    fn placed(host: Option<&str>, generation: u64, held: bool, local: Option<Uuid>) -> Placement {
        Placement {
            partition: Uuid::new_v4(),
            name: "web".into(),
            domain: "default".into(),
            host: host.map(str::to_owned),
            generation,
            held,
            local_id: local,
            demand: Capacity::ZERO,
            evict: Vec::new(),
        }
    }

    #[test]
    fn a_partition_placed_elsewhere_or_at_another_generation_is_fenced() {
        let l = Uuid::new_v4();
        assert_eq!(judge("h1", Some(l), None, None), Verdict::Unknown);
        let here = placed(Some("h1"), 1, true, Some(l));
        assert_eq!(
            judge("h1", Some(l), None, Some((&here, false))),
            Verdict::Ours
        );
        assert_eq!(
            judge("h1", Some(l), Some(1), Some((&here, false))),
            Verdict::Ours
        );
        // Moved away and back while this host was away: a newer generation.
        let back = placed(Some("h1"), 3, true, Some(l));
        assert!(matches!(
            judge("h1", Some(l), Some(1), Some((&back, false))),
            Verdict::Fenced {
                generation: 3,
                given: Some(1),
                ..
            }
        ));
        // A failover moved it and left this copy behind.
        let moved = placed(Some("h2"), 2, true, Some(Uuid::new_v4()));
        assert!(matches!(
            judge("h1", Some(l), None, Some((&moved, true))),
            Verdict::Fenced { host: Some(ref h), generation: 2, .. } if h == "h2"
        ));
        // Placed elsewhere under this very id.
        let away = placed(Some("h2"), 2, false, Some(l));
        assert!(matches!(
            judge("h1", Some(l), None, Some((&away, false))),
            Verdict::Fenced { .. }
        ));
        // Another partition of the same name elsewhere: not this one's fence.
        assert_eq!(
            judge("h1", Some(Uuid::new_v4()), None, Some((&moved, false))),
            Verdict::Unknown
        );
        // A name about to be defined: here by a failover start, or taken.
        let arriving = placed(Some("h1"), 2, false, None);
        assert_eq!(
            judge("h1", None, None, Some((&arriving, false))),
            Verdict::Arriving
        );
        assert!(matches!(
            judge("h2", None, None, Some((&here, false))),
            Verdict::Fenced { .. }
        ));
    }

    #[test]
    fn stop_kill_and_delete_pass_the_fence_every_other_partition_job_is_checked() {
        for k in [
            "partition.stop",
            "partition.kill",
            "partition.delete",
            "workflow.run",
        ] {
            assert!(!fenced_kind(k), "{k}");
        }
        for k in [
            "partition.start",
            "partition.restore",
            "partition.resume",
            "partition.pause",
            "partition.save",
            "partition.define.start",
            "template.fork",
        ] {
            assert!(fenced_kind(k), "{k}");
        }
    }

    #[test]
    fn the_refusal_names_where_it_runs_and_what_to_do() {
        let v = Verdict::Fenced {
            host: Some("h2".into()),
            generation: 2,
            given: Some(1),
        };
        let e = refusal("web", "h1", &v);
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert!(e.message.contains("host h2"), "{}", e.message);
        assert!(e.message.contains("generation 2"), "{}", e.message);
        assert!(e.message.contains("given generation 1"), "{}", e.message);
    }
}
