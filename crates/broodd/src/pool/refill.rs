//! The supervisor of service pools: one task, woken by changes and every
//! half second. For each pool it removes members that must not be handed
//! out (an older generation, a VM that is gone), tears down unused members
//! oldest first while the host's available memory is below the pool's
//! floor, and starts one member at a time while the pool is below its
//! minimum, if host CPU use is below its threshold (otherwise the refill is
//! deferred, and `brood pool show` says why). Services whose guests are all
//! gone are released under the `teardown` policy.
//!
//! At start ([`recover`]) it finishes what a killed broodd left: member
//! rows without a partition are dropped, members still booting (their
//! trigger point was announced to the dead broodd) are replaced, and
//! services still configuring get their configuration (from the file the
//! ledger names) and probe again.

use std::sync::Arc;
use std::time::Duration;

use brood_api::service::UnusedPolicy;
use brood_ledger::{MemberState, ServiceState};
use tracing::{info, warn};

use super::{PoolSpec, ServicePools, member, request};
use crate::host::{Host, chain};

/// How often the supervisor looks when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);

/// Host CPU use between two samples of /proc/stat, percent.
///
/// A wake-up can come a few milliseconds after the last tick, when
/// /proc/stat (counted in clock ticks of 10 ms) has barely moved: such an
/// interval is not a measurement. The meter then keeps its last reading and
/// its older sample, and before it has any reading it waits out the
/// shortest interval it trusts, so a pool made just after broodd starts is
/// never refilled on "no reading" while the host is busy.
#[derive(Debug, Default)]
struct CpuMeter {
    last: Option<(u64, u64, tokio::time::Instant)>,
    pct: Option<u32>,
}

/// The shortest interval between two samples that counts as a reading.
const CPU_SPAN: Duration = Duration::from_millis(200);

impl CpuMeter {
    fn sample() -> Option<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().next()?.strip_prefix("cpu ")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        // idle + iowait
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Some((total, idle))
    }

    async fn busy_pct(&mut self) -> Option<u32> {
        let Some((t0, i0, at)) = self.last else {
            let (t, i) = Self::sample()?;
            self.last = Some((t, i, tokio::time::Instant::now()));
            return None;
        };
        let age = at.elapsed();
        if age < CPU_SPAN {
            if self.pct.is_some() {
                return self.pct;
            }
            tokio::time::sleep(CPU_SPAN.saturating_sub(age)).await;
        }
        let (t, i) = Self::sample()?;
        let total = t.saturating_sub(t0);
        let idle = i.saturating_sub(i0);
        if total == 0 {
            return self.pct;
        }
        self.last = Some((t, i, tokio::time::Instant::now()));
        self.pct = u32::try_from(100 * total.saturating_sub(idle) / total).ok();
        self.pct
    }
}

/// Starts the supervisor.
pub fn spawn(host: Arc<Host>) {
    tokio::spawn(async move {
        recover(&host).await;
        let mut cpu = CpuMeter::default();
        let _ = cpu.busy_pct().await;
        let pools = host.feature::<ServicePools>();
        while !host.is_stopping() {
            tokio::select! {
                () = pools.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            let busy = cpu.busy_pct().await;
            if let Err(e) = tick(&host, busy).await {
                warn!("service pools: {}", chain(&e));
            }
        }
    });
}

async fn tick(host: &Arc<Host>, busy: Option<u32>) -> crate::host::HostResult<()> {
    let pools = host.feature::<ServicePools>();
    let available = super::available_mib();
    for rec in host.ledger.service_pools().await? {
        let spec = PoolSpec::of(&rec)?;
        // The image was rebuilt: a new generation; older members are replaced.
        if spec.max > 0
            && let Ok(dir) = super::resolve_image(host, &spec.image).await
        {
            let digest = super::image_digest(&dir).await;
            if digest != spec.image_digest {
                let new = PoolSpec {
                    image_digest: digest,
                    ..spec.clone()
                };
                super::set_spec(host, &rec.name, &new, true).await?;
                info!(pool = %rec.name, "its image changed: members of the old one are replaced");
                continue;
            }
        }
        let members = host.ledger.pool_members(Some(&rec.name)).await?;
        let mut waiting = Vec::new();
        for m in &members {
            if m.state == MemberState::Taken {
                continue;
            }
            let alive = host.registry.running(m.partition).is_some();
            if m.state == MemberState::Ready && (!alive || m.generation != rec.generation) {
                let why = if alive {
                    "it is of an older image"
                } else {
                    "its VM is gone"
                };
                member::remove(host, m.partition, why).await;
                continue;
            }
            if m.state == MemberState::Ready {
                waiting.push(m.clone());
            }
        }
        // Memory pressure: unused members go, oldest first.
        if let Some(avail) = available
            && avail < spec.memory_floor_mib
            && let Some(oldest) = waiting.first()
        {
            info!(pool = %rec.name, available_mib = avail, "memory below the floor: tearing down an unused member");
            member::remove(
                host,
                oldest.partition,
                "the host's memory is below the pool's floor",
            )
            .await;
            pools.set_deferred(
                &rec.name,
                Some(format!(
                    "available memory {avail} MiB is below the floor of {} MiB",
                    spec.memory_floor_mib
                )),
            );
            continue;
        }
        let booting = members
            .iter()
            .filter(|m| m.state == MemberState::Booting)
            .count();
        let have = u32::try_from(waiting.len() + booting)
            .unwrap_or(u32::MAX)
            .max(pools.making(&rec.name));
        let total = u32::try_from(members.len()).unwrap_or(u32::MAX);
        if have >= spec.min || total >= spec.max || pools.making(&rec.name) > 0 {
            if have >= spec.min {
                pools.set_deferred(&rec.name, None);
            }
            continue;
        }
        // A request is being served from this host's members: the refill
        // waits for it to finish (it is woken then), unless the pool is empty.
        if pools.is_serving() && !waiting.is_empty() {
            continue;
        }
        if let Some(b) = busy
            && b > spec.cpu_threshold_pct
        {
            pools.set_deferred(
                &rec.name,
                Some(format!(
                    "host CPU at {b}% is above the threshold of {}%",
                    spec.cpu_threshold_pct
                )),
            );
            continue;
        }
        if let Some(avail) = available
            && avail < spec.memory_floor_mib.saturating_add(spec.memory_mib)
        {
            pools.set_deferred(
                &rec.name,
                Some(format!(
                    "available memory {avail} MiB would fall below the floor of {} MiB",
                    spec.memory_floor_mib
                )),
            );
            continue;
        }
        pools.set_deferred(&rec.name, None);
        let (host2, name) = (host.clone(), rec.name.clone());
        pools.add_making(&name, 1);
        tokio::spawn(async move {
            let made = super::clone::refill_one(&host2, &name).await;
            host2.feature::<ServicePools>().add_making(&name, -1);
            if let Err(e) = made {
                warn!(pool = %name, "refill failed: {}", chain(&e));
            }
            host2.feature::<ServicePools>().wake.notify_one();
        });
    }
    release_orphans(host).await
}

/// Services whose every guest is gone are released (teardown policy).
async fn release_orphans(host: &Arc<Host>) -> crate::host::HostResult<()> {
    for s in host.ledger.services().await? {
        if s.guests.is_empty() || s.state == ServiceState::Configuring {
            continue;
        }
        let mut any = false;
        for g in &s.guests {
            if host.ledger.partition_by_uuid(*g).await?.is_some() {
                any = true;
            }
        }
        if any {
            continue;
        }
        let policy = match host.ledger.service_pool(&s.pool).await? {
            Some(p) => PoolSpec::of(&p)?.unused,
            None => UnusedPolicy::Teardown,
        };
        if policy == UnusedPolicy::Teardown {
            info!(service = %s.name, "its guests are gone: releasing it");
            request::release(host, &s.name).await?;
        }
    }
    Ok(())
}

/// Finishes what a killed broodd left half-done (see the module docs).
pub async fn recover(host: &Arc<Host>) {
    if let Err(e) = super::clone::recover(host).await {
        warn!("service pools: recover the pools' templates: {}", chain(&e));
    }
    // A release that deleted the domain but not yet the rows.
    if let Ok(services) = host.ledger.services().await {
        for s in services {
            if let Ok(None) = host.ledger.partition_by_uuid(s.member).await
                && let Err(e) = request::forget(host, &s).await
            {
                warn!(service = %s.name, "forget a service whose domain is gone: {}", chain(&e));
            }
        }
    }
    let Ok(members) = host.ledger.pool_members(None).await else {
        return;
    };
    for m in &members {
        if m.state == MemberState::Taken {
            continue;
        }
        let part = host
            .ledger
            .partition_by_uuid(m.partition)
            .await
            .ok()
            .flatten();
        let gone = part.is_none();
        if gone || m.state == MemberState::Booting {
            member::remove(
                host,
                m.partition,
                "broodd restarted while it was being made",
            )
            .await;
        }
        // A ready member whose VM did not survive is removed by the tick.
    }
    let Ok(services) = host.ledger.services().await else {
        return;
    };
    for s in services {
        if s.state != ServiceState::Configuring {
            continue;
        }
        let point = members
            .iter()
            .find(|m| m.partition == s.member)
            .and_then(|m| m.point);
        let wire = tokio::fs::read(&s.config_path).await;
        let (Some(point), Ok(wire)) = (point, wire) else {
            warn!(service = %s.name, "cannot finish its request after a restart; marking it failed");
            super::request::mark(host, s.uuid, ServiceState::Failed).await;
            continue;
        };
        let host = host.clone();
        tokio::spawn(async move {
            let state = match request::differentiate(
                &host,
                &s,
                point,
                &wire,
                Duration::from_secs(60),
            )
            .await
            {
                Ok(()) => ServiceState::Ready,
                Err(e) => {
                    warn!(service = %s.name, "finishing its request after a restart failed: {}", chain(&e));
                    ServiceState::Failed
                }
            };
            super::request::mark(&host, s.uuid, state).await;
        });
    }
}
