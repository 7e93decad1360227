//! Forking children from a template, and starting a child again.
//!
//! A child is recorded before its QEMU runs, in one ledger transaction that
//! inserts it, reserves what it is charged (a share of memory, its vCPUs
//! and NICs) and takes its identity and address from their pools; an empty
//! pool fails that transaction and nothing is made. Then a waiting QEMU
//! from the template's pool (or a new one) loads the template's state, and
//! the child's agent applies the identity. A child that fails after being
//! recorded is removed again, giving everything back.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use brood_api as api;
use brood_ledger::{Op, PartitionPatch, PartitionRecord, Resources, RunState, Stage, Tx};
use brood_proto::{ChildConfig, Ipv4Config};
use futures::StreamExt;
use tracing::{info, warn};
use uuid::Uuid;

use crate::daemon::{Daemon, Running};
use crate::error::{ApiError, ApiResult, chain};
use crate::template::{ChildData, ForkData, Prepared, TemplateRt, fork_data};
use crate::{convert, ops, template};

/// Most children one request may fork.
pub const MAX_FORK: u32 = 256;
/// Children started at once.
const PARALLEL: usize = 32;
/// How long a child's agent may take to apply its identity and run its services.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(120);

/// Random bytes from the kernel.
fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    s.parse::<brood_engine::MacAddr>().ok().map(|m| m.0)
}

/// Checks a fork request against the template and the pools.
async fn validate(d: &Daemon, req: &api::ForkRequest) -> ApiResult<()> {
    if req.count == 0 || req.count > MAX_FORK {
        return Err(ApiError::bad_request(format!(
            "count {} must be between 1 and {MAX_FORK}",
            req.count
        )));
    }
    if req.values.len() > 64 {
        return Err(ApiError::bad_request("at most 64 values"));
    }
    for (k, v) in &req.values {
        let ok = !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
        if !ok || v.len() > 4096 {
            return Err(ApiError::bad_request(format!(
                "value {k:?}: keys are 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'; values at most 4096 bytes"
            )));
        }
    }
    for (pool, kind) in [
        (&req.identity_pool, api::PoolKind::Identity),
        (&req.ip_pool, api::PoolKind::Ipv4),
    ] {
        if let Some(p) = pool {
            let info = d.ledger.pool(p).await?.ok_or_else(|| {
                ApiError::bad_request(format!("no pool named {p:?}: `brood pool list` shows them"))
            })?;
            if crate::pool::kind_out(info.kind) != kind {
                return Err(ApiError::bad_request(format!(
                    "pool {p:?} is not an {kind:?} pool"
                )));
            }
        }
    }
    Ok(())
}

/// Marks a fork in progress on a template while it lives.
struct Busy(Arc<TemplateRt>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.forking.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A child recorded in the ledger, not yet running.
struct Recorded {
    uuid: Uuid,
    name: String,
    prepared: Option<Prepared>,
}

/// Forks `req.count` children of template `key`. All of them are recorded
/// in one transaction (so an exhausted pool makes none); then they start in
/// parallel. With `req.wait` false the answer comes once they are recorded.
pub async fn fork(
    d: &Arc<Daemon>,
    actor: &'static str,
    key: &str,
    req: api::ForkRequest,
) -> ApiResult<Vec<api::ForkChild>> {
    let t0 = Instant::now();
    let tpl_rec = ops::resolve(d, key).await?;
    if tpl_rec.stage != Stage::Template {
        return Err(ApiError::bad_request(format!(
            "{} is not a template: make one with `brood template create`",
            tpl_rec.name
        )));
    }
    let rt = d.template(tpl_rec.uuid).ok_or_else(|| {
        ApiError::transition(format!(
            "template {} lost its memory file (a host reboot?) and cannot fork",
            tpl_rec.name
        ))
    })?;
    validate(d, &req).await?;
    convert::child_charge(req.charge_mib, rt.tpl.spec.mem_mib)?;
    rt.forking.fetch_add(1, Ordering::SeqCst);
    let busy = Busy(rt.clone());
    let recorded = record(d, actor, &rt, &req).await?;
    let mine: Vec<Uuid> = recorded.iter().map(|r| r.uuid).collect();
    let tpl_rec = ops::resolve(d, &tpl_rec.uuid.to_string()).await?;
    let run_all = {
        let d = d.clone();
        let rt = rt.clone();
        async move {
            let jobs = recorded.into_iter().map(|r| {
                let (d, rt) = (d.clone(), rt.clone());
                async move { start_recorded(&d, actor, &rt, r, t0).await }
            });
            let out: Vec<ApiResult<api::ForkChild>> = futures::stream::iter(jobs)
                .buffered(PARALLEL)
                .collect()
                .await;
            drop(busy);
            template::refill(d, rt);
            out
        }
    };
    if !req.wait {
        // As recorded: pending, their identities not yet applied.
        let mut out = Vec::with_capacity(mine.len());
        for uuid in &mine {
            if let Some(r) = d.ledger.partition_by_uuid(*uuid).await?
                && let Some(ForkData::Child(c)) = fork_data(&r)
            {
                out.push(child_out(&r, &c));
            }
        }
        tokio::spawn(run_all);
        return Ok(out);
    }
    let mut children = Vec::new();
    let mut first_err = None;
    for r in run_all.await {
        match r {
            Ok(c) => children.push(c),
            Err(e) => {
                warn!("fork of {}: {}", tpl_rec.name, e.message);
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) if children.is_empty() => Err(e),
        _ => Ok(children),
    }
}

/// Records `req.count` children in one transaction: indices from the
/// template, each child inserted with its charge reserved and its identity
/// and address taken from the pools. Waiting QEMUs from the pool are
/// claimed for them; one the transaction did not use goes back.
async fn record(
    d: &Daemon,
    actor: &str,
    rt: &TemplateRt,
    req: &api::ForkRequest,
) -> ApiResult<Vec<Recorded>> {
    let _g = rt.fork_lock.lock().await;
    let tpl_rec = ops::resolve(d, &rt.uuid.to_string()).await?;
    let Some(ForkData::Template(mut tdata)) = fork_data(&tpl_rec) else {
        return Err(ApiError::internal(
            "template data",
            &std::io::Error::other("missing"),
        ));
    };
    let config = convert::active_config(&tpl_rec)?;
    let charge = convert::child_charge(req.charge_mib, config.memory_mib)?;
    let first = tdata.next_index;
    tdata.next_index += req.count;
    let mut ops_list = Vec::new();
    let mut recorded = Vec::new();
    for i in 0..req.count {
        let index = first + i;
        let prepared = rt.take().await;
        let uuid = prepared.as_ref().map_or_else(Uuid::new_v4, |p| p.uuid);
        let name = format!("{}-{index}", tpl_rec.name);
        let macs = (0..config.nics.len())
            .map(|n| {
                let r: [u8; 3] = random();
                let n = u8::try_from(n % 64).unwrap_or(0);
                mac_text([0x52, 0x54, 0x01 | (n << 2), r[0], r[1], r[2]])
            })
            .collect();
        let data = ChildData {
            index,
            status: api::ChildStatus::Pending,
            error: None,
            macs,
            ipv4: None,
            gateway: None,
            identity: None,
            identity_pool: req.identity_pool.clone(),
            ip_pool: req.ip_pool.clone(),
            values: req.values.clone(),
            persistent: req.persistent,
            machine_id: hex(&random::<16>()),
            running_ms: None,
            ready_ms: None,
        };
        let demand = Resources {
            memory_mib: charge,
            vcpus: u64::from(config.vcpus),
            disk_gib: 0,
            nics: config.nics.len() as u64,
        };
        let now = convert::now();
        ops_list.push(Op::InsertPartition(PartitionRecord {
            uuid,
            name: name.clone(),
            stage: Stage::Operating,
            run_state: RunState::Starting,
            active_config: tpl_rec.active_config.clone(),
            configs: tpl_rec.configs.clone(),
            demand,
            pid: None,
            pending_op: Some("fork".into()),
            restart_count: 0,
            last_exit: None,
            created_at: now.clone(),
            updated_at: now,
            generation: 0,
            parent: Some(tpl_rec.uuid),
            fork: Some(to_json(&ForkData::Child(Box::new(data)))?),
        }));
        ops_list.extend(Op::reserve(uuid, &demand));
        for pool in [&req.identity_pool, &req.ip_pool].into_iter().flatten() {
            ops_list.push(Op::TakeFromPool {
                pool: pool.clone(),
                holder: uuid,
                value: None,
            });
        }
        recorded.push(Recorded {
            uuid,
            name,
            prepared,
        });
    }
    ops_list.push(Op::UpdatePartition {
        uuid: tpl_rec.uuid,
        expect: brood_ledger::PartitionExpect {
            generation: Some(tpl_rec.generation),
            ..Default::default()
        },
        set: PartitionPatch {
            fork: Some(Some(to_json(&ForkData::Template(tdata))?)),
            ..Default::default()
        },
    });
    let tx = Tx {
        actor: actor.into(),
        reason: format!("fork {} children of {}", req.count, tpl_rec.name),
        ops: ops_list,
    };
    if let Err(e) = d.ledger.commit(tx).await {
        for r in recorded.into_iter().filter_map(|r| r.prepared) {
            rt.put_back(r).await;
        }
        return Err(e.into());
    }
    Ok(recorded)
}

fn to_json(v: &ForkData) -> ApiResult<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| ApiError::internal("encode fork data", &e))
}

/// Starts one recorded child; on failure removes it, giving everything back.
async fn start_recorded(
    d: &Arc<Daemon>,
    actor: &str,
    rt: &Arc<TemplateRt>,
    r: Recorded,
    t0: Instant,
) -> ApiResult<api::ForkChild> {
    let lock = d.partition_lock(r.uuid);
    let _g = lock.lock().await;
    let prepared = match r.prepared {
        Some(p) => Ok(p),
        None => template::prepare(d, rt, r.uuid, true).await,
    };
    let result = match prepared {
        Ok(p) => run_child(d, actor, rt, r.uuid, p, t0, true).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        warn!(child = %r.name, "fork failed, removing it: {}", e.message);
        let _ = ops::abandon_start(d, actor, r.uuid, "fork", &e.message).await;
        let _ = ops::remove(d, actor, r.uuid, "fork failed").await;
    }
    result
}

/// Loads the template's state into `prepared` as child `uuid` (recorded and
/// starting), records it running and applies its identity.
pub async fn run_child(
    d: &Arc<Daemon>,
    actor: &str,
    rt: &TemplateRt,
    uuid: Uuid,
    prepared: Prepared,
    t0: Instant,
    first_start: bool,
) -> ApiResult<api::ForkChild> {
    let mut vm = prepared.vm;
    // A partition's VM now: it outlives broodd.
    vm.set_kill_on_drop(false);
    let started = async {
        d.engine.attach_child_nics(&vm)?;
        vm.resume().await
    }
    .await;
    if let Err(e) = started {
        let _ = vm.kill().await;
        return Err(ApiError::engine("start the child", &e));
    }
    let running_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let pid = vm.pid();
    let running = Arc::new(Running {
        vm,
        expected_exit: AtomicBool::new(false),
    });
    d.insert_running(uuid, running.clone());
    let rec = ops::resolve(d, &uuid.to_string()).await?;
    let patch = PartitionPatch {
        run_state: Some(RunState::Running),
        pid: Some(Some(pid)),
        ..Default::default()
    };
    let rec = ops::commit(
        d,
        actor,
        format!("{} running (pid {pid})", rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await?;
    crate::supervise::spawn(d.clone(), uuid, running.clone());
    identity(d, actor, rt, rec, &running, t0, running_ms, first_start).await
}

/// Hands the child its identity through its agent and records the outcome.
#[allow(clippy::too_many_arguments)]
async fn identity(
    d: &Daemon,
    actor: &str,
    rt: &TemplateRt,
    rec: PartitionRecord,
    running: &Running,
    t0: Instant,
    running_ms: f64,
    first_start: bool,
) -> ApiResult<api::ForkChild> {
    let Some(ForkData::Child(mut data)) = fork_data(&rec) else {
        return Err(ApiError::internal(
            "child data",
            &std::io::Error::other("missing"),
        ));
    };
    if first_start {
        // What the pools handed out in the record's transaction.
        for (pool, value) in d.ledger.items_held_by(rec.uuid).await? {
            if Some(&pool) == data.identity_pool.as_ref() {
                data.identity = Some(value);
            } else if Some(&pool) == data.ip_pool.as_ref() {
                let info = d.ledger.pool(&pool).await?;
                let (prefix, gateway) = info
                    .as_ref()
                    .map(crate::pool::ipv4_meta)
                    .unwrap_or((24, None));
                data.ipv4 = Some(format!("{value}/{prefix}"));
                data.gateway = gateway;
            }
        }
    }
    let ipv4 = match &data.ipv4 {
        Some(a) => Some(parse_ipv4(a, data.gateway.as_deref())?),
        None => None,
    };
    let mut entropy = random::<64>().to_vec();
    entropy.extend_from_slice(rec.uuid.as_bytes());
    let config = ChildConfig {
        index: data.index,
        hostname: rec.name.clone(),
        macs: data.macs.iter().filter_map(|m| parse_mac(m)).collect(),
        ipv4,
        identity: data.identity.clone(),
        entropy,
        machine_id: data.machine_id.clone(),
        values: data.values.clone().into_iter().collect(),
        // The child's clock carries on from the template's: set it to now.
        time_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0)),
    };
    let agent = running
        .vm
        .agent()
        .map_err(|e| ApiError::engine("the agent", &e))?;
    let report = agent.complete_fork(rt.seq, config, IDENTITY_TIMEOUT).await;
    let ready_ms = t0.elapsed().as_secs_f64() * 1000.0;
    crate::metrics::fork_done(ready_ms, &report);
    let (status, error) = match &report {
        Ok(r) => match &r.failed {
            None => (api::ChildStatus::Ready, None),
            Some(f) => {
                let out: Vec<String> = r
                    .services
                    .iter()
                    .filter(|s| s.code != Some(0))
                    .map(|s| s.output.clone())
                    .collect();
                (
                    api::ChildStatus::Failed,
                    Some(
                        format!("{f}: {}", out.join("\n"))
                            .trim_end_matches(": ")
                            .to_string(),
                    ),
                )
            }
        },
        Err(e) => (
            api::ChildStatus::Failed,
            Some(format!("applying its identity failed: {}", chain(e))),
        ),
    };
    data.status = status;
    data.error = error;
    data.running_ms = Some(running_ms);
    data.ready_ms = Some(ready_ms);
    let patch = PartitionPatch {
        pending_op: Some(None),
        fork: Some(Some(to_json(&ForkData::Child(data.clone()))?)),
        ..Default::default()
    };
    let rec = ops::commit(
        d,
        actor,
        format!("{} is {:?}", rec.name, status).to_lowercase(),
        &rec,
        patch,
        Vec::new(),
    )
    .await?;
    info!(child = %rec.name, ?status, running_ms, ready_ms, "forked");
    Ok(child_out(&rec, &data))
}

fn parse_ipv4(a: &str, gw: Option<&str>) -> ApiResult<Ipv4Config> {
    let (addr, prefix) = a.split_once('/').unwrap_or((a, "24"));
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| ApiError::bad_request(format!("bad IPv4 address {a:?} in the pool")))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| ApiError::bad_request(format!("bad prefix in {a:?}")))?;
    let gateway = match gw {
        Some(g) => Some(
            g.parse::<Ipv4Addr>()
                .map_err(|_| ApiError::bad_request(format!("bad gateway {g:?}")))?
                .octets(),
        ),
        None => None,
    };
    Ok(Ipv4Config {
        address: addr.octets(),
        prefix,
        gateway,
    })
}

/// A child as the API shows it.
pub fn child_out(rec: &PartitionRecord, data: &ChildData) -> api::ForkChild {
    api::ForkChild {
        name: rec.name.clone(),
        uuid: rec.uuid,
        index: data.index,
        status: data.status,
        error: data.error.clone(),
        mac: data.macs.first().cloned(),
        ipv4: data.ipv4.clone(),
        identity: data.identity.clone(),
        persistent: data.persistent,
        running_ms: data.running_ms,
        ready_ms: data.ready_ms,
    }
}

/// Starts a stopped or crashed child again: a fresh fork from its template
/// with the same identity (new entropy); its overlay is kept if it is
/// persistent and made anew otherwise. The caller holds the partition lock
/// and has recorded it starting with its resources reserved.
pub async fn restart_child(
    d: &Arc<Daemon>,
    actor: &str,
    rec: &PartitionRecord,
) -> ApiResult<PartitionRecord> {
    let parent = rec.parent.ok_or_else(|| {
        ApiError::internal("restart a child", &std::io::Error::other("no template"))
    })?;
    let rt = d.template(parent).ok_or_else(|| {
        ApiError::transition(format!(
            "the template of {} is gone; the child cannot start again",
            rec.name
        ))
    })?;
    let Some(ForkData::Child(data)) = fork_data(rec) else {
        return Err(ApiError::internal(
            "child data",
            &std::io::Error::other("missing"),
        ));
    };
    let prepared = template::prepare(d, &rt, rec.uuid, !data.persistent).await?;
    run_child(d, actor, &rt, rec.uuid, prepared, Instant::now(), false).await?;
    ops::resolve(d, &rec.uuid.to_string()).await
}
