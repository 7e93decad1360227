//! Making and removing members. A member is a plain partition named
//! `<pool>-m<N>` with `brood.trigger` on its kernel command line: its agent
//! goes to the trigger point once hardware discovery is done, and broodd
//! pauses it there (QMP `stop`: its vCPUs use no CPU while it waits).

use std::sync::Arc;
use std::time::Duration;

use brood_api as api;
use brood_engine::EngineError;
use brood_ledger::{LedgerError, MemberOrigin, Op, ServicePoolOp, Tx};
use brood_proto::service::{TRIGGER_CMDLINE, TRIGGER_POINT};
use tracing::{info, warn};
use uuid::Uuid;

use super::{ACTOR, PoolSpec, ServicePools};
use crate::host::{Host, HostError, HostResult, chain};
use crate::partition::{define, lifecycle};

/// How long a member may take to reach its trigger point.
const TRIGGER_TIMEOUT: Duration = Duration::from_secs(180);

/// A member that reached its trigger point.
#[derive(Debug, Clone, Copy)]
pub struct AtTrigger {
    /// Its partition.
    pub uuid: Uuid,
    /// The agent's point.
    pub point: u32,
}

fn member_request(name: String, spec: &PoolSpec) -> api::DefineRequest {
    let config = api::PartitionConfig {
        vcpus: 1,
        memory_mib: spec.memory_mib,
        nics: spec
            .nic_networks()
            .map(|n| api::NicConfig {
                network: n.clone(),
                mac: None,
                mbps: None,
            })
            .collect(),
        // Under TCG on a loaded host the guest's clocksource watchdog takes
        // the (host-derived, steady) TSC for unstable and falls back to
        // jiffies, and then every sleep in the guest, the agent's polls of
        // the class's start included, rounds up to a timer tick.
        cmdline: format!("{TRIGGER_CMDLINE} tsc=reliable"),
        // A named image (the Debian `service` image) brings its root disk.
        image: (spec.image != "default").then(|| spec.image.clone()),
        ..Default::default()
    };
    api::DefineRequest {
        name,
        configs: [("member".to_string(), config)].into(),
        active_config: None,
        start: false,
        publish: Vec::new(),
    }
}

/// Defines a member of `pool`, records it (booting) and boots it to the
/// trigger point; with `pause` (a pool refill) it is paused and queued
/// there, without (a fallback for one request) it is left waiting, running.
/// On failure nothing of it is left.
pub async fn make(
    host: &Arc<Host>,
    pool: &str,
    origin: MemberOrigin,
    pause: bool,
) -> HostResult<AtTrigger> {
    let pools = host.feature::<ServicePools>();
    pools.add_making(pool, 1);
    let made = make_inner(host, pool, origin, pause).await;
    pools.add_making(pool, -1);
    made
}

async fn make_inner(
    host: &Arc<Host>,
    pool: &str,
    origin: MemberOrigin,
    pause: bool,
) -> HostResult<AtTrigger> {
    let rec = super::pool_record(host, pool).await?;
    let spec = PoolSpec::of(&rec)?;
    // Names come from the pool's counter; one taken by someone else's
    // partition is skipped.
    let mut index = rec.next_index;
    let partition = loop {
        let name = format!("{pool}-m{index}");
        match define::define(host, ACTOR, None, member_request(name, &spec)).await {
            Ok(p) => break p,
            Err(HostError::Ledger(LedgerError::NameTaken { .. }))
                if index < rec.next_index + 64 =>
            {
                index += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let uuid = partition.uuid;
    host.feature::<ServicePools>().claim(uuid);
    let added = host
        .ledger
        .commit(Tx::new(
            ACTOR,
            format!("add member {} to pool {pool}", partition.name),
            vec![Op::ServicePool {
                change: ServicePoolOp::AddMember {
                    partition: uuid,
                    pool: pool.into(),
                    origin,
                },
            }],
        ))
        .await;
    if let Err(e) = added {
        delete_partition(host, uuid).await;
        host.feature::<ServicePools>().unclaim(uuid);
        return Err(e.into());
    }
    match boot_to_trigger(host, uuid, pause).await {
        Ok(point) => {
            info!(pool, member = %partition.name, "member at its trigger point");
            Ok(AtTrigger { uuid, point })
        }
        Err(e) => {
            warn!(pool, member = %partition.name, "member did not reach its trigger point: {}", chain(&e));
            remove(host, uuid, "it did not reach its trigger point").await;
            Err(e)
        }
    }
}

async fn boot_to_trigger(host: &Arc<Host>, uuid: Uuid, pause: bool) -> HostResult<u32> {
    lifecycle::start(host, ACTOR, uuid).await?;
    let running = host
        .registry
        .running(uuid)
        .ok_or_else(|| HostError::conflict("the member ended as it started"))?;
    let agent = running
        .vm
        .agent()
        .map_err(|e| HostError::engine("the member's agent", e))?
        .clone();
    let deadline = tokio::time::Instant::now() + TRIGGER_TIMEOUT;
    let point = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let p = tokio::select! {
            exit = running.vm.wait_exit() => {
                return Err(HostError::conflict(format!("the member ended before its trigger point: {exit}")));
            }
            p = agent.next_point(left) => p,
        };
        match p {
            Ok(p) if p.name == TRIGGER_POINT => break p.seq,
            Ok(p) => {
                warn!(member = %uuid, point = ?p.name, "a member announced a point that is not its trigger point")
            }
            Err(e @ EngineError::Timeout { .. }) => {
                return Err(HostError::engine("wait for the member's trigger point", e));
            }
            Err(e) => return Err(HostError::engine("wait for the member's trigger point", e)),
        }
    };
    if pause {
        unplug(&running, uuid).await?;
        lifecycle::pause(host, ACTOR, uuid, true).await?;
        host.ledger
            .commit(Tx::new(
                ACTOR,
                format!("member {uuid} at its trigger point"),
                vec![Op::ServicePool {
                    change: ServicePoolOp::MemberReady {
                        partition: uuid,
                        point,
                    },
                }],
            ))
            .await?;
    }
    Ok(point)
}

/// How long a member's guest may take to see its NICs' carrier drop.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(15);

/// Pulls the cable of every NIC of a member at its trigger point (QMP
/// `set_link` down: members wait with their NICs unplugged) and waits
/// until its guest sees every carrier down, so a template saved from it
/// and the clones forked from that keep them down too. An engine without
/// link control (the fake one) leaves them as they are.
pub async fn unplug(running: &crate::host::Running, uuid: Uuid) -> HostResult<()> {
    let nics = running.vm.spec().nics.len();
    if nics == 0 {
        return Ok(());
    }
    for i in 0..nics {
        match running.vm.set_link(i, false).await {
            Ok(()) => {}
            Err(EngineError::Unsupported { .. }) => return Ok(()),
            Err(e) => {
                return Err(HostError::engine(
                    format!("unplug NIC {i} of the member"),
                    e,
                ));
            }
        }
    }
    let agent = running
        .vm
        .agent()
        .map_err(|e| HostError::engine("the member's agent", e))?;
    // Every ethN's carrier reads 0 (a NIC whose link is down reads 0; one
    // that is administratively down fails to read, also "not up").
    let req = brood_proto::ExecRequest {
        timeout_ms: Some(2000),
        output_limit: 1024,
        ..brood_proto::ExecRequest::shell(
            "for n in /sys/class/net/eth*; do [ \"$(cat $n/carrier 2>/dev/null)\" = 1 ] && exit 1; done; exit 0",
        )
    };
    let deadline = tokio::time::Instant::now() + UNPLUG_TIMEOUT;
    loop {
        if let Ok(out) = agent.exec(&req).await
            && out.status.code == Some(0)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HostError::conflict(format!(
                "member {uuid}: its guest still sees a carrier {UNPLUG_TIMEOUT:?} after its NICs were unplugged"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Plugs every NIC of a member back in (QMP `set_link` up) as it is
/// differentiated: its NICs join the networks of the guests it serves.
pub async fn plug(running: &crate::host::Running) -> HostResult<()> {
    for i in 0..running.vm.spec().nics.len() {
        match running.vm.set_link(i, true).await {
            Ok(()) => {}
            Err(EngineError::Unsupported { .. }) => return Ok(()),
            Err(e) => return Err(HostError::engine(format!("plug NIC {i} of the domain"), e)),
        }
    }
    Ok(())
}

/// Kills and deletes a member's partition (gone already is fine).
pub async fn delete_partition(host: &Arc<Host>, uuid: Uuid) {
    match lifecycle::delete(host, ACTOR, uuid, true).await {
        Ok(()) | Err(HostError::NotFound(_)) => {}
        Err(e) => warn!(member = %uuid, "delete the member's partition: {}", chain(&e)),
    }
}

/// Removes a member: its VM is killed, its partition deleted, then its row
/// (in that order: a crash between leaves a row without partition, which
/// the next start removes). Failures are logged; the supervisor retries.
pub async fn remove(host: &Arc<Host>, uuid: Uuid, why: &str) {
    delete_partition(host, uuid).await;
    if host
        .ledger
        .partition_by_uuid(uuid)
        .await
        .ok()
        .flatten()
        .is_some()
    {
        return;
    }
    let removed = host
        .ledger
        .commit(Tx::new(
            ACTOR,
            format!("remove member {uuid}: {why}"),
            vec![Op::ServicePool {
                change: ServicePoolOp::RemoveMember { partition: uuid },
            }],
        ))
        .await;
    match removed {
        Ok(_) | Err(LedgerError::Precondition { .. }) => {
            host.feature::<ServicePools>().unclaim(uuid);
        }
        Err(e) => warn!(member = %uuid, "remove the member's row: {}", chain(&e)),
    }
}
