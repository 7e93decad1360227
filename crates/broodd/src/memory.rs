//! Forked children's memory charges, trued up from what they really use.
//!
//! A child is forked with a charge (at least `convert::MIN_CHARGE_MIB`) and
//! runs in a memory cgroup whose limit is that charge. What it dirties
//! (copy-on-write pages of its template's memory, QEMU's own heap) grows
//! past any charge picked up front, so a task looks at every live child on
//! a schedule ([`TRUE_UP_PERIOD`]): when its private memory (the cgroup's
//! anonymous and shmem pages) comes within [`HEADROOM_MIB`]/2 of its charge,
//! the charge is raised in one ledger transaction (the difference taken
//! from `available`, the reason in the audit log) and the cgroup limit with
//! it, never past a plain partition's charge for the template's memory.
//! When the host has less available, the charge is raised as far as it
//! can be and the cgroup holds the child there: the kernel reclaims or,
//! failing that, OOM-kills the child, which is then recorded as crashed.
//! The ledger never holds less than a child uses.
//!
//! Plain partitions and template parents need no true-up: their charge is
//! their cgroup limit (`host::config::memory_charge`). Warm children are
//! broodd's cache and charged to the host's infrastructure, each bounded by
//! a cgroup at its template's full charge until a fork claims it ([`fit`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brood_engine::VmHandle;
use brood_engine::cgroup::MIN_MEMORY_LIMIT_MIB;
use brood_ledger::{Op, Owner, PartitionPatch, PartitionRecord, Resources};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::host::config::{active_config, memory_charge};
use crate::host::{Host, HostError, HostResult, Kind, chain};

/// How often live children's charges are trued up.
pub const TRUE_UP_PERIOD: Duration = Duration::from_millis(500);
/// How far above what a child uses its charge is set: it keeps this much
/// room until the next look, and is raised once less than half is left.
pub const HEADROOM_MIB: u64 = 96;
/// How often a child's failing true-up is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Who the true-ups are recorded as in the audit log.
const ACTOR: &str = "memory";

/// The charge a child that uses `used_mib` of its `charge_mib` should have:
/// `None` while it has room enough; otherwise what it uses plus
/// [`HEADROOM_MIB`], at most `top_mib` (a plain partition's charge for the
/// template's memory) and never below a cgroup's smallest limit. A charge
/// is never lowered here.
pub fn trued_up(charge_mib: u64, used_mib: u64, top_mib: u64) -> Option<u64> {
    let floor = charge_mib.max(MIN_MEMORY_LIMIT_MIB);
    if floor == charge_mib && used_mib.saturating_add(HEADROOM_MIB / 2) <= charge_mib {
        return None;
    }
    let want = used_mib
        .saturating_add(HEADROOM_MIB)
        .min(top_mib)
        .max(floor);
    (want > charge_mib).then_some(want)
}

/// How far a raise from `charge_mib` to `want_mib` can go with
/// `available_mib` free: all of it, or what is free.
pub fn affordable(charge_mib: u64, want_mib: u64, available_mib: u64) -> u64 {
    want_mib.min(charge_mib.saturating_add(available_mib))
}

/// Bytes to MiB, rounded up (the ledger must not claim less than is used).
pub fn mib_up(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// The most a child of record `rec` can be charged: what a plain partition
/// with its template's memory is charged.
pub fn top_of(rec: &PartitionRecord) -> HostResult<u64> {
    Ok(memory_charge(&active_config(rec)?))
}

/// Trues up the charge of child `rec` whose VM is `vm` (the caller holds
/// its lock) and sets its cgroup limit to the charge. With `exact` the
/// limit is written even when the charge stays (a warm child claimed by a
/// fork still has its template's whole charge as its limit). Returns the
/// new record, or the same when nothing changed.
pub async fn fit(
    host: &Host,
    rec: &PartitionRecord,
    vm: &dyn VmHandle,
    exact: bool,
) -> HostResult<PartitionRecord> {
    let Some(current) = vm.memory_limit_mib() else {
        return Err(HostError::transition(format!(
            "{} has no memory limit, so its charge cannot hold it",
            rec.name
        )));
    };
    let used = vm.memory_private_bytes().map_or(0, mib_up);
    let charge = rec.demand.memory_mib;
    let top = top_of(rec)?.max(charge);
    let mut new = rec.clone();
    if let Some(want) = trued_up(charge, used, top) {
        let available = host.ledger.held_by(Owner::Available).await?.memory_mib;
        let to = affordable(charge, want, available);
        if to > charge {
            let demand = Resources {
                memory_mib: to,
                ..rec.demand
            };
            let patch = PartitionPatch {
                demand: Some(demand),
                ..Default::default()
            };
            let ops = Op::reserve(
                rec.uuid,
                &Resources {
                    memory_mib: to - charge,
                    ..Resources::default()
                },
            );
            let reason = format!(
                "true up {}'s memory charge from {charge} to {to} MiB (it uses {used} MiB of its own)",
                rec.name
            );
            new = host.update(ACTOR, reason, rec, patch, ops).await?;
            info!(child = %rec.name, from = charge, to, used, "memory charge trued up");
        }
        if to < want {
            debug!(child = %rec.name, want, to, "host memory is short: the cgroup holds the child at its charge");
        }
    }
    let limit = new.demand.memory_mib.max(MIN_MEMORY_LIMIT_MIB);
    if exact || new.demand.memory_mib != charge || current != limit {
        vm.set_memory_limit_mib(limit).map_err(|e| {
            HostError::engine(
                format!(
                    "hold {} at its charge of {limit} MiB (it uses {used} MiB)",
                    rec.name
                ),
                e,
            )
        })?;
    }
    Ok(new)
}

/// A VM's memory limit raised while it saves its state; put back on drop.
#[derive(Debug)]
pub struct SaveRoom<'a> {
    vm: &'a dyn VmHandle,
    limit_mib: u64,
}

impl Drop for SaveRoom<'_> {
    fn drop(&mut self) {
        // The VM resumes after a failed save: its charge holds it again.
        let _ = self.vm.set_memory_limit_mib(self.limit_mib);
    }
}

/// Raises the cgroup limit of `rec`'s VM (QEMU `pid`) by its guest memory
/// while it saves: QEMU writes the state file itself, so the file's pages
/// are charged to its cgroup until written back, and a data directory on
/// a tmpfs (as the tests keep it) never writes them back. The state file
/// is the partition's saved state, not its running memory, and its memory
/// charge is given back once it is saved.
pub fn room_to_save<'a>(rec: &PartitionRecord, vm: &'a dyn VmHandle) -> Option<SaveRoom<'a>> {
    let limit_mib = vm.memory_limit_mib()?;
    let guest = active_config(rec).ok()?.memory_mib;
    vm.set_memory_limit_mib(limit_mib.saturating_add(guest))
        .ok()?;
    Some(SaveRoom { vm, limit_mib })
}

/// One look at every live child; a failure is logged at most once a
/// minute per child (`warned`).
async fn true_up_all(host: &Arc<Host>, warned: &mut HashMap<Uuid, Instant>) {
    let live = host.registry.all_running();
    warned.retain(|u, _| live.iter().any(|(l, _)| l == u));
    for (uuid, running) in live {
        let lock = host.registry.lock(uuid);
        // A child busy with an operation is looked at next time.
        let Ok(_g) = lock.try_lock() else {
            continue;
        };
        let rec = match host.reload(uuid).await {
            Ok(r) => r,
            Err(_) => continue,
        };
        if Kind::of(&rec) != Kind::Child
            || !rec.run_state.is_active()
            || rec.pid != Some(running.vm.pid())
            || running.vm.exit_status().is_some()
        {
            continue;
        }
        // A child started by a broodd older than memory cgroups has none.
        if running.vm.memory_limit_mib().is_none() {
            continue;
        }
        if let Err(e) = fit(host, &rec, running.vm.as_ref(), false).await {
            let quiet = warned.get(&uuid).is_some_and(|t| t.elapsed() < WARN_EVERY);
            if !quiet {
                warned.insert(uuid, Instant::now());
                warn!(child = %rec.name, "truing up its memory charge: {}", chain(&e));
            }
        }
    }
}

/// Starts the task that trues up children's charges until broodd stops.
pub fn spawn(host: Arc<Host>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRUE_UP_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = HashMap::new();
        while !host.is_stopping() {
            tick.tick().await;
            true_up_all(&host, &mut warned).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_with_room_stays() {
        assert_eq!(trued_up(300, 100, 304), None);
        assert_eq!(trued_up(300, 300 - HEADROOM_MIB / 2, 304), None);
    }

    #[test]
    fn a_charge_near_use_is_raised_with_headroom_up_to_the_top() {
        assert_eq!(
            trued_up(300, 300 - HEADROOM_MIB / 2 + 1, 1000),
            Some(300 + HEADROOM_MIB / 2 + 1)
        );
        assert_eq!(trued_up(100, 150, 1000), Some(150 + HEADROOM_MIB));
        // Never past the top, never lowered.
        assert_eq!(trued_up(100, 290, 304), Some(304));
        assert_eq!(trued_up(304, 400, 304), None);
        assert_eq!(trued_up(500, 499, 304), None);
        assert_eq!(trued_up(100, u64::MAX, 304), Some(304));
    }

    #[test]
    fn the_floor_charge_gets_a_cgroup_sized_limit() {
        // 48 MiB is below a cgroup's smallest limit: the charge is raised to
        // it even when the child uses little, so the limit never exceeds it.
        assert_eq!(trued_up(48, 0, 304), Some(HEADROOM_MIB));
        assert_eq!(trued_up(48, 20, 304), Some(20 + HEADROOM_MIB));
        assert_eq!(trued_up(48, 0, 70), Some(70));
        assert_eq!(trued_up(48, 0, 50), Some(MIN_MEMORY_LIMIT_MIB));
    }

    #[test]
    fn a_raise_takes_at_most_what_is_available() {
        assert_eq!(affordable(100, 200, 1000), 200);
        assert_eq!(affordable(100, 200, 30), 130);
        assert_eq!(affordable(100, 200, 0), 100);
        assert_eq!(affordable(u64::MAX - 1, u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn usage_rounds_up() {
        assert_eq!(mib_up(0), 0);
        assert_eq!(mib_up(1), 1);
        assert_eq!(mib_up(1 << 20), 1);
        assert_eq!(mib_up((1 << 20) + 1), 2);
    }
}
