//! Refill by clone (claim 5 of US 9,225,596): a pool's first member is
//! cold-booted to the trigger point and saved there as the pool's template
//! (the fork machinery's `freeze`: its memory file and device state); every
//! later member is a fork of it. A child resumes inside the template's
//! blocked trigger point, gets an identity of its own through the fork
//! point (hostname, MACs, machine-id, fresh entropy), and is paused and
//! queued with the template's trigger point, which it answers like any
//! member when it is handed out. So a refill costs a fork, not a boot.
//!
//! The template is recorded in the pool's spec (its uuid, the generation it
//! was made for and its trigger point); a new generation (the image
//! changed) makes a new template, and the old one is deleted once no
//! service runs on a child of it.

use std::sync::Arc;
use std::time::Duration;

use brood_api as api;
use brood_ledger::{MemberOrigin, Op, ServicePoolOp, Stage, Tx};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;

use super::member::{self, AtTrigger};
use super::{ACTOR, PoolSpec, ServicePools};
use crate::host::{Host, HostError, HostResult, chain};
use crate::partition::lifecycle;
use crate::template::Templates;
use crate::template::freeze::{self, Shape};

/// How long the member's agent may take to reach its fork point.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);

/// The template a pool forks its members from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolTemplate {
    /// The template partition.
    pub uuid: Uuid,
    /// The pool generation it was made for.
    pub generation: u64,
    /// The trigger point every child waits at.
    pub point: u32,
}

/// The name of a pool's template of `generation`.
pub fn template_name(pool: &str, generation: u64) -> String {
    format!("{pool}-t{generation}")
}

/// Makes one member for `pool`: a fork of its template (made first, from a
/// cold-booted member, when the pool has none of its current generation),
/// or a cold boot when the pool refills by cold boot.
pub async fn refill_one(host: &Arc<Host>, pool: &str) -> HostResult<AtTrigger> {
    let rec = super::pool_record(host, pool).await?;
    let spec = PoolSpec::of(&rec)?;
    if spec.refill == api::service::RefillMode::Cold {
        return member::make(host, pool, MemberOrigin::Cold, true).await;
    }
    let tpl = match current(host, &spec, rec.generation) {
        Some(t) => t,
        None => make_template(host, pool, &spec, rec.generation).await?,
    };
    clone(host, pool, tpl).await
}

/// The pool's template when it is of `generation` and loaded.
fn current(host: &Host, spec: &PoolSpec, generation: u64) -> Option<PoolTemplate> {
    spec.template
        .filter(|t| t.generation == generation)
        .filter(|t| host.feature::<Templates>().get(t.uuid).is_some())
}

/// Cold-boots a member to the trigger point, takes it to a fork point
/// there and saves it as the pool's template. The spec names the template
/// before it is frozen: a broodd killed meanwhile leaves a name the next
/// start ([`recover`]) finds and cleans up, never a template nobody knows.
async fn make_template(
    host: &Arc<Host>,
    pool: &str,
    spec: &PoolSpec,
    generation: u64,
) -> HostResult<PoolTemplate> {
    let at = member::make(host, pool, MemberOrigin::Cold, false).await?;
    let mut old = None;
    let made = async {
        let (running, seq) = fork_point(host, at).await?;
        let tpl = PoolTemplate {
            uuid: at.uuid,
            generation,
            point: at.point,
        };
        let mut now = PoolSpec::of(&super::pool_record(host, pool).await?)?;
        old = now.template.replace(tpl);
        super::set_spec(host, pool, &now, false).await?;
        freeze_member(host, pool, at.uuid, running, seq, generation).await?;
        Ok::<_, HostError>(tpl)
    }
    .await;
    let tpl = match made {
        Ok(t) => t,
        Err(e) => {
            member::remove(host, at.uuid, "it could not become the pool's template").await;
            member::delete_partition(host, at.uuid).await;
            return Err(e);
        }
    };
    if let Some(old) = old.filter(|o| o.uuid != tpl.uuid) {
        retire(host, old.uuid).await;
    }
    info!(pool, template = %template_name(pool, generation), image = %spec.image, "pool template made at the trigger point");
    Ok(tpl)
}

/// Takes a member waiting (running) at its trigger point to a fork point.
async fn fork_point(host: &Host, at: AtTrigger) -> HostResult<(Arc<crate::host::Running>, u32)> {
    let running = host
        .registry
        .running(at.uuid)
        .ok_or_else(|| HostError::conflict("the member ended at its trigger point"))?;
    let agent = running
        .vm
        .agent()
        .map_err(|e| HostError::engine("the member's agent", e))?
        .clone();
    let (seq, _) = agent
        .prepare_fork(PREPARE_TIMEOUT)
        .await
        .map_err(|e| HostError::engine("take the member to a fork point", e))?;
    Ok((running, seq))
}

async fn freeze_member(
    host: &Arc<Host>,
    pool: &str,
    uuid: Uuid,
    running: Arc<crate::host::Running>,
    seq: u32,
    generation: u64,
) -> HostResult<()> {
    // It stops being a member first: the exit of its VM at the freeze is
    // then not taken for a member that died while waiting.
    host.ledger
        .commit(Tx::new(
            ACTOR,
            format!("member {uuid} becomes the template of pool {pool}"),
            vec![Op::ServicePool {
                change: ServicePoolOp::RemoveMember { partition: uuid },
            }],
        ))
        .await?;
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    let shape = Shape {
        name: Some(template_name(pool, generation)),
        warm: 0,
        persist: false,
    };
    freeze::freeze(host, ACTOR, rec, running, seq, shape).await?;
    Ok(())
}

/// Forks one child of the pool's template, records it as a member and
/// pauses it at the template's trigger point.
/// (The supervisor counts the refill as a member being made throughout.)
async fn clone(host: &Arc<Host>, pool: &str, tpl: PoolTemplate) -> HostResult<AtTrigger> {
    let req: api::ForkRequest = serde_json::from_value(serde_json::json!({"count": 1}))
        .map_err(|e| HostError::corrupt("a fork request", e))?;
    let children = crate::fork::fork(host, ACTOR, None, tpl.uuid, req).await?;
    let child = children
        .into_iter()
        .next()
        .ok_or_else(|| HostError::conflict("the fork made no child"))?;
    let uuid = child.uuid;
    host.feature::<ServicePools>().claim(uuid);
    if child.status != api::ChildStatus::Ready {
        member::delete_partition(host, uuid).await;
        host.feature::<ServicePools>().unclaim(uuid);
        return Err(HostError::conflict(format!(
            "the clone {} did not take its identity: {}",
            child.name,
            child.error.unwrap_or_default()
        )));
    }
    let added = host
        .ledger
        .commit(Tx::new(
            ACTOR,
            format!("add member {} (a clone) to pool {pool}", child.name),
            vec![Op::ServicePool {
                change: ServicePoolOp::AddMember {
                    partition: uuid,
                    pool: pool.into(),
                    origin: MemberOrigin::Clone,
                },
            }],
        ))
        .await;
    if let Err(e) = added {
        member::delete_partition(host, uuid).await;
        host.feature::<ServicePools>().unclaim(uuid);
        return Err(e.into());
    }
    let paused = async {
        // Forked unplugged already (the template was saved so); this
        // checks it and pulls the cable of a template saved before.
        if let Some(running) = host.registry.running(uuid) {
            member::unplug(&running, uuid).await?;
        }
        lifecycle::pause(host, ACTOR, uuid, true).await?;
        host.ledger
            .commit(Tx::new(
                ACTOR,
                format!("member {} at its trigger point", child.name),
                vec![Op::ServicePool {
                    change: ServicePoolOp::MemberReady {
                        partition: uuid,
                        point: tpl.point,
                    },
                }],
            ))
            .await?;
        Ok::<_, HostError>(())
    }
    .await;
    if let Err(e) = paused {
        member::remove(host, uuid, "it could not be paused at its trigger point").await;
        return Err(e);
    }
    info!(pool, member = %child.name, "member cloned at its trigger point");
    Ok(AtTrigger {
        uuid,
        point: tpl.point,
    })
}

/// Deletes a pool template nothing uses any more; one with children (the
/// domains of running services) stays until they are released.
pub async fn retire(host: &Arc<Host>, uuid: Uuid) {
    match freeze::delete(host, ACTOR, uuid, false).await {
        Ok(()) | Err(HostError::NotFound(_)) => {
            host.feature::<ServicePools>().unclaim(uuid);
        }
        Err(e) => {
            warn!(template = %uuid, "a pool template is kept: {}", chain(&e));
        }
    }
}

/// Whether the partition is a clone of a pool's template (its points are
/// its pool's, as a member's are).
pub async fn is_pool_clone(host: &Host, uuid: Uuid) -> bool {
    let pools = host.feature::<ServicePools>();
    match host.ledger.partition_by_uuid(uuid).await {
        Ok(Some(p)) => p.parent.is_some_and(|t| pools.is_claimed(t)),
        _ => false,
    }
}

/// At start: claims the pools' templates (so their clones' points stay the
/// pools'), deletes a named template that never became one (a broodd killed
/// while freezing it), and clones that are neither members nor a service's
/// domain (a broodd killed between the fork and the queue).
pub async fn recover(host: &Arc<Host>) -> HostResult<()> {
    let pools = host.feature::<ServicePools>();
    let mut named = Vec::new();
    for rec in host.ledger.service_pools().await? {
        let mut spec = PoolSpec::of(&rec)?;
        let Some(t) = spec.template else { continue };
        match host.ledger.partition_by_uuid(t.uuid).await? {
            Some(p) if p.stage == Stage::Template => {
                pools.claim(t.uuid);
                named.push(t.uuid);
            }
            other => {
                if other.is_some() {
                    member::delete_partition(host, t.uuid).await;
                }
                spec.template = None;
                super::set_spec(host, &rec.name, &spec, false).await?;
                warn!(pool = %rec.name, "its template was not finished when broodd stopped: a new one will be made");
            }
        }
    }
    let members: Vec<Uuid> = host
        .ledger
        .pool_members(None)
        .await?
        .into_iter()
        .map(|m| m.partition)
        .collect();
    let served: Vec<Uuid> = host
        .ledger
        .services()
        .await?
        .into_iter()
        .map(|s| s.member)
        .collect();
    for p in host.ledger.all_partitions().await? {
        if let Some(parent) = p.parent
            && named.contains(&parent)
            && !members.contains(&p.uuid)
            && !served.contains(&p.uuid)
        {
            info!(clone = %p.name, "a clone that never joined its pool: deleting it");
            member::delete_partition(host, p.uuid).await;
        }
    }
    Ok(())
}
