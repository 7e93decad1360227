//! Pools of service domains (US 9,225,596; issue 10): VMs booted to the
//! trigger point and paused there, all alike, until a request for a service
//! takes one, gives it its configuration and lets it finish booting as
//! that service.
//!
//! - [`class`]: service classes as data (recipes on disk and built-ins).
//! - [`clone`]: refill by clone: the pool's template, saved at the trigger
//!   point from its first member, and members forked from it.
//! - [`member`]: making a member (a partition booted with `brood.trigger`,
//!   paused once its agent announces the trigger point) and removing one.
//! - [`request`]: a request takes the next member off the pool's queue in
//!   one ledger transaction with the service's row, writes the
//!   configuration, resumes the member, answers its trigger point and waits
//!   for the class's probe; release, association and pairing.
//! - [`refill`]: the supervisor: keeps each pool at its minimum while host
//!   CPU is below the threshold, tears unused members down under memory
//!   pressure, replaces outdated, crashed and failed members, and after a
//!   restart finishes what the last broodd left half-done.
//!
//! The ledger holds pools, members (their queue), services and
//! associations (`brood_ledger::ServicePoolOp`); this module keeps only
//! caches: which partitions are members (so the fork-point watcher leaves
//! their points alone) and why a refill was last deferred.

pub mod class;
pub mod clone;
pub mod member;
pub mod refill;
pub mod request;
pub mod requires;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use brood_api::service as api;
use brood_ledger::{MemberState, RunState, ServicePoolOp, ServicePoolRecord, Tx};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::host::{Hooks, Host, HostError, HostResult};

/// The actor name of the pool machinery in the ledger.
pub const ACTOR: &str = "service-pool";
/// Default minimum when none is given and the host's memory allows it.
const DEFAULT_MIN: u32 = 2;
/// Largest default minimum from sizing to the host's memory.
const MAX_DEFAULT_MIN: u32 = 4;

/// A pool's parameters as stored in the ledger's `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// The image name.
    pub image: String,
    /// The image's manifest digest when the generation began.
    pub image_digest: String,
    /// The class members are kept as, if any.
    pub class: Option<String>,
    /// Members kept ready.
    pub min: u32,
    /// Most members.
    pub max: u32,
    /// Refill CPU threshold.
    pub cpu_threshold_pct: u32,
    /// Memory floor.
    pub memory_floor_mib: u64,
    /// Guest memory per member.
    pub memory_mib: u64,
    /// The network members' first NIC joins.
    pub network: Option<String>,
    /// The networks of their further NICs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// Policy for unused domains.
    pub unused: api::UnusedPolicy,
    /// How members after the first are made.
    #[serde(default)]
    pub refill: api::RefillMode,
    /// The template members are forked from, once made.
    #[serde(default)]
    pub template: Option<clone::PoolTemplate>,
}

impl PoolSpec {
    /// Every network a member has a NIC on, NIC 0 first.
    pub fn nic_networks(&self) -> impl Iterator<Item = &String> {
        self.network.iter().chain(self.networks.iter())
    }

    /// Reads a stored spec.
    pub fn of(rec: &ServicePoolRecord) -> HostResult<PoolSpec> {
        serde_json::from_value(rec.spec.clone())
            .map_err(|e| HostError::corrupt(format!("the spec of pool {}", rec.name), e))
    }
}

/// The feature's shared state.
#[derive(Debug, Default)]
pub struct ServicePools {
    claims: Mutex<HashSet<Uuid>>,
    deferred: Mutex<HashMap<String, String>>,
    making: Mutex<HashMap<String, u32>>,
    serving: std::sync::atomic::AtomicU32,
    /// Wakes the supervisor (a member left the queue, a pool changed).
    pub wake: tokio::sync::Notify,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ServicePools {
    /// Marks a partition as a member: its points are the pool's.
    pub fn claim(&self, uuid: Uuid) {
        guard(&self.claims).insert(uuid);
    }

    /// Forgets a member.
    pub fn unclaim(&self, uuid: Uuid) {
        guard(&self.claims).remove(&uuid);
    }

    /// Whether a partition is a member.
    pub fn is_claimed(&self, uuid: Uuid) -> bool {
        guard(&self.claims).contains(&uuid)
    }

    fn set_deferred(&self, pool: &str, why: Option<String>) {
        let mut d = guard(&self.deferred);
        match why {
            Some(w) => d.insert(pool.to_owned(), w),
            None => d.remove(pool),
        };
    }

    fn deferred(&self, pool: &str) -> Option<String> {
        guard(&self.deferred).get(pool).cloned()
    }

    /// Counts a request in flight until the guard drops: refills wait
    /// meanwhile (on a small host a member booting beside it would take the
    /// CPU the request's domain needs to start its service).
    pub fn serving(&self) -> Serving<'_> {
        self.serving
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Serving(self)
    }

    fn is_serving(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    fn making(&self, pool: &str) -> u32 {
        guard(&self.making).get(pool).copied().unwrap_or(0)
    }

    fn add_making(&self, pool: &str, delta: i32) {
        let mut m = guard(&self.making);
        let n = m.entry(pool.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
    }
}

/// A request in flight (see [`ServicePools::serving`]).
#[derive(Debug)]
pub struct Serving<'a>(&'a ServicePools);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0
            .serving
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

/// Whether the partition's agent points belong to a pool (the fork-point
/// watcher then leaves them alone).
pub fn claims_points(host: &Host, uuid: Uuid) -> bool {
    host.feature::<ServicePools>().is_claimed(uuid)
}

/// Notices members that end while waiting: they are removed and replaced.
#[derive(Debug, Default)]
pub struct MemberExits;

impl Hooks for MemberExits {
    fn on_exit(&self, host: &Arc<Host>, uuid: Uuid, ended_as: RunState) {
        if !claims_points(host, uuid) {
            return;
        }
        let host = host.clone();
        tokio::spawn(async move {
            let Ok(Some(m)) = host.ledger.pool_member(uuid).await else {
                return;
            };
            if m.state != MemberState::Taken {
                tracing::warn!(member = %uuid, pool = %m.pool, "a waiting member ended ({ended_as}); replacing it");
                member::remove(&host, uuid, "it ended while waiting").await;
            }
            host.feature::<ServicePools>().wake.notify_one();
        });
    }
}

/// The digest of an image directory's manifest (what changes when it is rebuilt).
pub async fn image_digest(dir: &std::path::Path) -> String {
    use sha2::Digest;
    match tokio::fs::read(dir.join("manifest.json")).await {
        Ok(b) => hex::encode(sha2::Sha256::digest(&b)),
        Err(_) => String::from("unknown"),
    }
}

/// Resolves a pool's image name to the directory broodd boots.
async fn resolve_image(host: &Host, image: &str) -> HostResult<std::path::PathBuf> {
    if image == "default" {
        return Ok(host.paths.image.clone());
    }
    if !class::is_class_name(image) {
        return Err(HostError::invalid(format!(
            "image {image:?} is not an image name (1-32 of [a-z0-9-])"
        )));
    }
    let dir = host.paths.data.join("images").join(image);
    if tokio::fs::metadata(dir.join("manifest.json")).await.is_ok() {
        Ok(dir)
    } else {
        Err(HostError::invalid(format!(
            "image {image:?}: there is no image {} ; build it (`brood image build{}`) or use --image default",
            dir.display(),
            if image == "service" {
                " --service".to_string()
            } else {
                format!(" --name {image}")
            },
        )))
    }
}

fn available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
}

/// Creates a pool; members start booting at once.
pub async fn create(
    host: &Arc<Host>,
    req: api::ServicePoolCreateRequest,
) -> HostResult<api::ServicePool> {
    if !class::is_class_name(&req.name) {
        return Err(HostError::invalid(format!(
            "pool name {:?}: want 1-32 of [a-z0-9-], starting with a letter",
            req.name
        )));
    }
    let image = req.image.clone().unwrap_or_else(|| "default".into());
    let dir = resolve_image(host, &image).await?;
    if let Some(c) = &req.class {
        let cl = class::load(host, c).await?;
        if cl.image != "default" && cl.image != image {
            return Err(HostError::invalid(format!(
                "class {c} needs the {:?} image; this pool boots {image:?}",
                cl.image
            )));
        }
    }
    let memory_mib = req.memory_mib.unwrap_or(256);
    if !(64..=65536).contains(&memory_mib) {
        return Err(HostError::invalid(format!(
            "memory_mib {memory_mib} is out of range: want 64-65536"
        )));
    }
    let min = match req.min {
        Some(m) => m,
        // Sized to the host: members take at most a quarter of what is free.
        None => {
            let per = memory_mib + crate::host::config::QEMU_OVERHEAD_MIB;
            let fit = available_mib().map_or(DEFAULT_MIN, |a| {
                u32::try_from(a / 4 / per.max(1)).unwrap_or(u32::MAX)
            });
            fit.clamp(1, MAX_DEFAULT_MIN)
        }
    };
    let max = req.max.unwrap_or(min.saturating_add(8));
    if min > 256 || max > 1024 || max < min {
        return Err(HostError::invalid(format!(
            "min {min} and max {max}: want min <= 256, max <= 1024 and min <= max"
        )));
    }
    let cpu = req.cpu_threshold_pct.unwrap_or(90);
    if !(1..=100).contains(&cpu) {
        return Err(HostError::invalid(format!(
            "cpu_threshold_pct {cpu}: want 1-100"
        )));
    }
    let nics: Vec<String> = req.network.iter().chain(&req.networks).cloned().collect();
    if nics.len() > 8 {
        return Err(HostError::invalid(format!(
            "{} networks given: a member has at most 8 NICs",
            nics.len()
        )));
    }
    if !nics.is_empty() {
        let networks = crate::network::names(host).await?;
        crate::convert::validate_define_on(
            &brood_api::DefineRequest {
                name: "probe".into(),
                configs: [(
                    "member".to_string(),
                    brood_api::PartitionConfig {
                        nics: nics
                            .iter()
                            .map(|n| brood_api::NicConfig {
                                network: n.clone(),
                                mac: None,
                                mbps: None,
                            })
                            .collect(),
                        ..Default::default()
                    },
                )]
                .into(),
                active_config: None,
                start: false,
                publish: Vec::new(),
            },
            &networks,
        )?;
    }
    let spec = PoolSpec {
        image,
        image_digest: image_digest(&dir).await,
        class: req.class.clone(),
        min,
        max,
        cpu_threshold_pct: cpu,
        memory_floor_mib: req.memory_floor_mib.unwrap_or(0),
        memory_mib,
        network: req.network.clone(),
        networks: req.networks.clone(),
        unused: req.unused,
        refill: req.refill,
        template: None,
    };
    let spec_json =
        serde_json::to_value(&spec).map_err(|e| HostError::corrupt("encode a pool spec", e))?;
    host.ledger
        .commit(Tx::new(
            ACTOR,
            format!("create service pool {}", req.name),
            vec![brood_ledger::Op::ServicePool {
                change: ServicePoolOp::CreatePool {
                    name: req.name.clone(),
                    spec: spec_json,
                },
            }],
        ))
        .await
        .map_err(|e| match e {
            brood_ledger::LedgerError::Precondition { .. } => {
                HostError::conflict(format!("a service pool named {} exists", req.name))
            }
            e => e.into(),
        })?;
    host.feature::<ServicePools>().wake.notify_one();
    show(host, &req.name).await
}

/// Changes a pool's refill policy at runtime (`PATCH /v1/pools/{name}`):
/// the supervisor acts on it at once (a raised floor tears unused members
/// down, oldest first; a lowered one lets refills run again).
pub async fn update(
    host: &Arc<Host>,
    name: &str,
    req: api::ServicePoolUpdateRequest,
) -> HostResult<api::ServicePool> {
    let rec = pool_record(host, name).await?;
    let mut spec = PoolSpec::of(&rec)?;
    let min = req.min.unwrap_or(spec.min);
    let max = req.max.unwrap_or(spec.max);
    if min > 256 || max > 1024 || max < min {
        return Err(HostError::invalid(format!(
            "min {min} and max {max}: want min <= 256, max <= 1024 and min <= max"
        )));
    }
    let cpu = req.cpu_threshold_pct.unwrap_or(spec.cpu_threshold_pct);
    if !(1..=100).contains(&cpu) {
        return Err(HostError::invalid(format!(
            "cpu_threshold_pct {cpu}: want 1-100"
        )));
    }
    spec.min = min;
    spec.max = max;
    spec.cpu_threshold_pct = cpu;
    spec.memory_floor_mib = req.memory_floor_mib.unwrap_or(spec.memory_floor_mib);
    set_spec(host, name, &spec, false).await?;
    let pools = host.feature::<ServicePools>();
    // The old reason no longer holds; the supervisor says the new one.
    pools.set_deferred(name, None);
    pools.wake.notify_one();
    show(host, name).await
}

/// Deletes a pool: its waiting members are torn down; services made from
/// it keep running until they are released.
pub async fn delete(host: &Arc<Host>, name: &str) -> HostResult<()> {
    let rec = pool_record(host, name).await?;
    // Stops refills first: the spec says max 0.
    let mut spec = PoolSpec::of(&rec)?;
    spec.min = 0;
    spec.max = 0;
    set_spec(host, name, &spec, false).await?;
    let pools = host.feature::<ServicePools>();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let waiting: Vec<_> = host
            .ledger
            .pool_members(Some(name))
            .await?
            .into_iter()
            .filter(|m| m.state != MemberState::Taken)
            .collect();
        if waiting.is_empty() && pools.making(name) == 0 {
            break;
        }
        for m in waiting {
            member::remove(host, m.partition, "its pool is deleted").await;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(HostError::conflict(format!(
                "pool {name}: members are still being made; retry"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if let Some(t) = spec.template {
        clone::retire(host, t.uuid).await;
    }
    host.ledger
        .commit(Tx::new(
            ACTOR,
            format!("delete service pool {name}"),
            vec![brood_ledger::Op::ServicePool {
                change: ServicePoolOp::DeletePool { name: name.into() },
            }],
        ))
        .await?;
    pools.set_deferred(name, None);
    Ok(())
}

async fn set_spec(
    host: &Host,
    name: &str,
    spec: &PoolSpec,
    new_generation: bool,
) -> HostResult<()> {
    let spec =
        serde_json::to_value(spec).map_err(|e| HostError::corrupt("encode a pool spec", e))?;
    host.ledger
        .commit(Tx::new(
            ACTOR,
            format!("change service pool {name}"),
            vec![brood_ledger::Op::ServicePool {
                change: ServicePoolOp::SetPoolSpec {
                    name: name.into(),
                    spec,
                    new_generation,
                },
            }],
        ))
        .await?;
    Ok(())
}

/// A pool's ledger record, or 404.
pub async fn pool_record(host: &Host, name: &str) -> HostResult<ServicePoolRecord> {
    host.ledger.service_pool(name).await?.ok_or_else(|| {
        HostError::NotFound(format!("no service pool {name:?} (see `brood pool list`)"))
    })
}

/// A pool as the API shows it.
pub async fn show(host: &Host, name: &str) -> HostResult<api::ServicePool> {
    let rec = pool_record(host, name).await?;
    view(host, &rec).await
}

async fn view(host: &Host, rec: &ServicePoolRecord) -> HostResult<api::ServicePool> {
    let spec = PoolSpec::of(rec)?;
    let mut members = Vec::new();
    let mut ready = 0;
    for m in host.ledger.pool_members(Some(&rec.name)).await? {
        let p = host.ledger.partition_by_uuid(m.partition).await?;
        if m.state == MemberState::Ready && m.generation == rec.generation {
            ready += 1;
        }
        members.push(api::PoolMember {
            name: p
                .as_ref()
                .map_or_else(|| m.partition.to_string(), |p| p.name.clone()),
            uuid: m.partition,
            state: m.state.to_string(),
            origin: m.origin.to_string(),
            seq: m.seq,
            generation: m.generation,
            pid: p.and_then(|p| p.pid),
        });
    }
    Ok(api::ServicePool {
        name: rec.name.clone(),
        image: spec.image,
        class: spec.class,
        min: spec.min,
        max: spec.max,
        cpu_threshold_pct: spec.cpu_threshold_pct,
        memory_floor_mib: spec.memory_floor_mib,
        memory_mib: spec.memory_mib,
        network: spec.network,
        networks: spec.networks,
        unused: spec.unused,
        refill: spec.refill,
        template: match spec.template {
            Some(t) => host
                .ledger
                .partition_by_uuid(t.uuid)
                .await?
                .filter(|p| p.stage == brood_ledger::Stage::Template)
                .map(|p| p.name),
            None => None,
        },
        generation: rec.generation,
        ready,
        deferred: host.feature::<ServicePools>().deferred(&rec.name),
        members,
    })
}

/// Every pool.
pub async fn list(host: &Host) -> HostResult<api::ServicePoolList> {
    let mut items = Vec::new();
    for rec in host.ledger.service_pools().await? {
        items.push(view(host, &rec).await?);
    }
    Ok(api::ServicePoolList { items })
}

/// At start, before reconciliation: claims every member, so the fork-point
/// watcher leaves their points alone when they are reattached.
pub async fn load_claims(host: &Host) -> HostResult<()> {
    let pools = host.feature::<ServicePools>();
    for m in host.ledger.pool_members(None).await? {
        pools.claim(m.partition);
    }
    for rec in host.ledger.service_pools().await? {
        if let Some(t) = PoolSpec::of(&rec)?.template {
            pools.claim(t.uuid);
        }
    }
    Ok(())
}
