//! Requests for services, their release, and associations.
//!
//! A request takes the pool's next ready member of the current generation
//! with one ledger transaction that also records the service (its
//! configuration file and digest, its pairing limits and guests): a
//! concurrent request that took the same member first makes this
//! transaction fail its precondition, and this one takes the next. The
//! configuration is written to `DATA_DIR/services/<uuid>.json` before that
//! transaction; then the member is resumed, its trigger point answered with
//! the same configuration (over the agent channel: a forked or cold-booted
//! member reads it the same way, and no disk has to be hot-plugged into a
//! paused VM), and the class's probe run in it until it answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brood_api::service as api;
use brood_engine::EngineError;
use brood_ledger::{
    LedgerError, MemberOrigin, MemberState, Op, ServicePoolOp, ServiceRecord, ServiceState, Tx,
};
use brood_proto::ExecRequest;
use brood_proto::service::{
    FAILED_POINT, PROBE_TIMEOUT_KEY, READY_POINT, ServiceConfig, encode_config, is_config_key,
};
use sha2::Digest;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::class::{self, Class};
use super::{ACTOR, PoolSpec, ServicePools, member};
use crate::host::{Host, HostError, HostResult, chain};
use crate::partition::lifecycle;
use crate::wire;

/// Longest init script fetched.
const MAX_SCRIPT_BYTES: usize = 256 * 1024;
/// Members tried before a request gives up on the queue.
const MAX_TAKES: usize = 16;

fn settings_of(class: &Class, req: &api::ServiceRequest) -> HostResult<BTreeMap<String, String>> {
    let mut s = class.defaults.clone();
    for (k, v) in &req.set {
        if !is_config_key(k) {
            return Err(HostError::invalid(format!(
                "--set {k}: keys are 1-64 of [A-Za-z0-9_]"
            )));
        }
        if v.len() > 4096 || v.contains('\0') {
            return Err(HostError::invalid(format!(
                "--set {k}: values are at most 4096 bytes, without NUL"
            )));
        }
        s.insert(k.clone(), v.clone());
    }
    if s.len() > 200 {
        return Err(HostError::invalid("at most 200 key-values"));
    }
    Ok(s)
}

fn pairing(
    settings: &BTreeMap<String, String>,
    key: &str,
    default: u32,
    min: u32,
) -> HostResult<u32> {
    match settings.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= min && *n <= 4096)
            .ok_or_else(|| HostError::invalid(format!("{key}={v}: want a number {min}-4096"))),
    }
}

async fn read_script(uri: &str) -> HostResult<String> {
    if let Some(rest) = uri.strip_prefix("http://") {
        return fetch_http(rest).await;
    }
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if !path.starts_with('/') {
        return Err(HostError::invalid(format!(
            "--script {uri:?}: give an absolute host path or an http:// URL"
        )));
    }
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| HostError::invalid(format!("--script {path}: {e}")))?;
    if meta.len() > MAX_SCRIPT_BYTES as u64 {
        return Err(HostError::invalid(format!(
            "--script {path} is {} bytes, over the {MAX_SCRIPT_BYTES}-byte limit",
            meta.len()
        )));
    }
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| HostError::invalid(format!("--script {path}: {e}")))
}

/// A bounded HTTP/1.0 GET (no TLS): enough for an init script on a local server.
async fn fetch_http(rest: &str) -> HostResult<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let bad = |what: String| HostError::invalid(format!("--script http://{rest}: {what}"));
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| bad(e.to_string()))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| bad(e.to_string()))?;
        let mut buf = Vec::new();
        s.take((MAX_SCRIPT_BYTES + 16 * 1024) as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| bad(e.to_string()))?;
        Ok::<_, HostError>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| bad("no answer within 10 s".into()))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("not an HTTP response".into()))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(bad(format!("status {status}")));
    }
    if body.len() > MAX_SCRIPT_BYTES {
        return Err(bad(format!("over the {MAX_SCRIPT_BYTES}-byte limit")));
    }
    Ok(body.to_string())
}

async fn pick_pool(host: &Host, req: &api::ServiceRequest, class: &Class) -> HostResult<String> {
    if let Some(p) = &req.pool {
        let rec = super::pool_record(host, p).await?;
        let spec = PoolSpec::of(&rec)?;
        if let Some(c) = &spec.class
            && c != &class.name
        {
            return Err(HostError::invalid(format!(
                "pool {p} keeps {c} domains, not {}",
                class.name
            )));
        }
        return Ok(p.clone());
    }
    let mut of_class = Vec::new();
    let mut generic = Vec::new();
    for rec in host.ledger.service_pools().await? {
        let spec = PoolSpec::of(&rec)?;
        match &spec.class {
            Some(c) if c == &class.name => of_class.push(rec.name),
            None => generic.push(rec.name),
            Some(_) => {}
        }
    }
    let pick = if of_class.is_empty() {
        generic
    } else {
        of_class
    };
    match pick.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(HostError::invalid(format!(
            "no service pool can serve class {}: create one (`brood pool create NAME --image default`)",
            class.name
        ))),
        many => Err(HostError::invalid(format!(
            "several pools can serve class {} ({}): name one with --pool",
            class.name,
            many.join(", ")
        ))),
    }
}

fn service_name(req: &api::ServiceRequest, uuid: Uuid) -> HostResult<String> {
    match &req.name {
        Some(n) => {
            if n.is_empty()
                || n.len() > 48
                || !n.starts_with(|c: char| c.is_ascii_lowercase())
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(HostError::invalid(format!(
                    "service name {n:?}: want 1-48 of [a-z0-9-], starting with a letter"
                )));
            }
            Ok(n.clone())
        }
        None => Ok(format!("{}-{}", req.class, &uuid.simple().to_string()[..8])),
    }
}

/// Serves a request: returns once the service's probe answers.
pub async fn request(host: &Arc<Host>, req: api::ServiceRequest) -> HostResult<api::Service> {
    let started = Instant::now();
    let pools = host.feature::<ServicePools>();
    let _serving = pools.serving();
    let class = class::load(host, &req.class).await?;
    let pool = pick_pool(host, &req, &class).await?;
    let pool_rec = super::pool_record(host, &pool).await?;
    let spec = PoolSpec::of(&pool_rec)?;
    if class.image != "default" && class.image != spec.image {
        return Err(HostError::invalid(format!(
            "class {} needs the {:?} image (issue 9's service image); pool {pool} boots {:?}",
            class.name, class.image, spec.image
        )));
    }
    let settings = settings_of(&class, &req)?;
    let domain_pairing = pairing(&settings, "domain_pairing", class.domain_pairing, 1)?;
    let device_pairing = pairing(&settings, "device_pairing", class.device_pairing, 0)?;
    let devices = u32::try_from(spec.nic_networks().count()).unwrap_or(u32::MAX);
    if devices > device_pairing {
        return Err(HostError::invalid(format!(
            "device_pairing={device_pairing}: a member of pool {pool} has {devices} NIC(s)"
        )));
    }
    if req.guests.len() > usize::try_from(domain_pairing).unwrap_or(usize::MAX) {
        return Err(HostError::invalid(format!(
            "{} guests asked for, but domain_pairing={domain_pairing} lets one {} domain serve at most {domain_pairing}",
            req.guests.len(),
            class.name
        )));
    }
    let mut guests = Vec::new();
    for g in &req.guests {
        let rec = guest(host, g).await?;
        if !guests.contains(&rec.uuid) {
            guests.push(rec.uuid);
        }
    }
    let script = match &req.script {
        Some(uri) => Some(read_script(uri).await?),
        None => None,
    };
    let uuid = Uuid::new_v4();
    let name = service_name(&req, uuid)?;
    if host.ledger.service(&name).await?.is_some() {
        return Err(HostError::conflict(format!(
            "a service named {name} exists"
        )));
    }
    let mut files = BTreeMap::new();
    files.insert("start.sh".to_string(), class.start.clone());
    files.insert("probe.sh".to_string(), class.probe.clone());
    if let Some(s) = script {
        files.insert("init.sh".to_string(), s);
    }
    let timeout = Duration::from_millis(
        req.timeout_ms
            .unwrap_or(class.probe_timeout_ms)
            .min(600_000),
    );
    let mut values = settings.clone();
    values.insert(
        PROBE_TIMEOUT_KEY.into(),
        u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .to_string(),
    );
    values.insert("domain_pairing".into(), domain_pairing.to_string());
    values.insert("device_pairing".into(), device_pairing.to_string());
    let cfg = ServiceConfig {
        class: class.name.clone(),
        service: uuid.to_string(),
        name: name.clone(),
        values,
        files,
        seed: crate::host::random::bytes::<32>()?.to_vec(),
    };
    let wire = encode_config(&cfg).map_err(|e| HostError::invalid(e.to_string()))?;
    let dir = host.paths.data.join("services");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
    let path = dir.join(format!("{uuid}.cfg"));
    tokio::fs::write(&path, &wire)
        .await
        .map_err(|e| HostError::io(format!("write {}", path.display()), e))?;
    let record = ServiceRecord {
        uuid,
        name: name.clone(),
        class: class.name.clone(),
        pool: pool.clone(),
        member: Uuid::nil(),
        state: ServiceState::Configuring,
        config_path: path.display().to_string(),
        config_sha256: hex::encode(sha2::Sha256::digest(&wire)),
        domain_pairing,
        device_pairing,
        settings,
        fallback: None,
        created_at: wire::now(),
        guests,
    };
    debug!(service = %name, ms = started.elapsed().as_millis(), "configuration written");
    let taken = take(host, &pool, pool_rec.generation, record).await;
    let (record, point) = match taken {
        Ok(t) => t,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
    };
    debug!(service = %name, ms = started.elapsed().as_millis(), "member taken");
    host.feature::<ServicePools>().wake.notify_one();
    if let Err(e) = differentiate(host, &record, point, &wire, timeout).await {
        warn!(service = %name, "service failed to start: {}", chain(&e));
        mark(host, uuid, ServiceState::Failed).await;
        return Err(e);
    }
    mark(host, uuid, ServiceState::Ready).await;
    info!(service = %name, class = %class.name, pool = %pool, "service ready");
    let rec = host
        .ledger
        .service(&name)
        .await?
        .ok_or_else(|| HostError::conflict(format!("service {name} was released meanwhile")))?;
    let mut v = view(host, &rec).await?;
    v.ready_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    Ok(v)
}

/// Records a service's state (failures are logged).
pub async fn mark(host: &Host, uuid: Uuid, state: ServiceState) {
    let r = host
        .ledger
        .commit(Tx::new(
            ACTOR,
            format!("service {uuid} {state}"),
            vec![Op::ServicePool {
                change: ServicePoolOp::SetServiceState { uuid, state },
            }],
        ))
        .await;
    if let Err(e) = r {
        warn!(service = %uuid, "record its state: {}", chain(&e));
    }
}

/// Takes a member for `record` (queue first, then a cold boot), in one
/// transaction with the service's row. Returns the record and the point.
async fn take(
    host: &Arc<Host>,
    pool: &str,
    generation: u64,
    mut record: ServiceRecord,
) -> HostResult<(ServiceRecord, u32)> {
    let mut tried = 0;
    loop {
        let next = host
            .ledger
            .pool_members(Some(pool))
            .await?
            .into_iter()
            .filter(|m| m.state == MemberState::Ready && m.generation == generation)
            .find(|m| host.registry.running(m.partition).is_some());
        let Some(m) = next else { break };
        let Some(point) = m.point else { break };
        record.member = m.partition;
        match commit_take(host, &record, MemberState::Ready).await {
            Ok(()) => return Ok((record, point)),
            // Another request took it first: try the next one.
            Err(HostError::Ledger(LedgerError::Precondition { op: 0, .. }))
                if tried < MAX_TAKES =>
            {
                tried += 1;
            }
            Err(e) => return Err(e),
        }
    }
    // The queue is empty: a cold boot, said so in the answer.
    let at = member::make(host, pool, MemberOrigin::Fallback, false).await?;
    let member_name = host
        .ledger
        .partition_by_uuid(at.uuid)
        .await?
        .map_or_else(|| at.uuid.to_string(), |p| p.name);
    record.member = at.uuid;
    record.fallback = Some(format!(
        "pool {pool} had no member ready at its trigger point: cold-booted {member_name}"
    ));
    if let Err(e) = commit_take(host, &record, MemberState::Booting).await {
        member::remove(host, at.uuid, "its request failed").await;
        return Err(e);
    }
    Ok((record, at.point))
}

async fn commit_take(host: &Host, record: &ServiceRecord, expect: MemberState) -> HostResult<()> {
    host.ledger
        .commit(Tx::new(
            ACTOR,
            format!("request {} ({})", record.name, record.class),
            vec![
                Op::ServicePool {
                    change: ServicePoolOp::TakeMember {
                        partition: record.member,
                        expect,
                    },
                },
                Op::ServicePool {
                    change: ServicePoolOp::InsertService(Box::new(record.clone())),
                },
            ],
        ))
        .await?;
    Ok(())
}

/// Resumes a taken member, answers its trigger point with the
/// configuration and waits for the probe.
pub async fn differentiate(
    host: &Arc<Host>,
    record: &ServiceRecord,
    point: u32,
    wire: &[u8],
    timeout: Duration,
) -> HostResult<()> {
    let t0 = Instant::now();
    let uuid = record.member;
    let rec = host.reload(uuid).await?;
    let running = host.registry.running(uuid).ok_or_else(|| {
        HostError::conflict(format!("the domain of {} is not running", record.name))
    })?;
    // Its NICs join the guests' networks before it continues.
    member::plug(&running).await?;
    if rec.run_state == brood_ledger::RunState::Paused {
        lifecycle::pause(host, ACTOR, uuid, false).await?;
    }
    debug!(service = %record.name, ms = t0.elapsed().as_millis(), "member plugged and resumed");
    let agent = running
        .vm
        .agent()
        .map_err(|e| HostError::engine("the service domain's agent", e))?
        .clone();
    match agent.answer_point(point, wire).await {
        Ok(()) => {}
        // Already answered (a restarted broodd finishing a request).
        Err(EngineError::Agent(e)) if e.kind == brood_proto::ErrorKind::NoSuchPoint => {}
        Err(e) => {
            return Err(HostError::engine(
                "give the service domain its configuration",
                e,
            ));
        }
    }
    debug!(service = %record.name, ms = t0.elapsed().as_millis(), "trigger point answered");
    probe(&agent, &record.name, timeout).await
}

/// Waits for the domain's word that its probe passed (the point
/// [`READY_POINT`], announced by the agent once `probe.sh` passed in the
/// guest) or failed ([`FAILED_POINT`]). Between points it looks at the
/// status itself (the class's probe run through the agent), so a request
/// finished by a restarted broodd, whose agent announced to the dead one,
/// still ends.
async fn probe(agent: &brood_engine::AgentClient, name: &str, timeout: Duration) -> HostResult<()> {
    /// How long to wait for the point before looking at the status.
    const LOOK_AFTER: Duration = Duration::from_secs(1);
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match agent.next_point(left.min(LOOK_AFTER)).await {
            Ok(p) if p.name == READY_POINT || p.name == FAILED_POINT => {
                debug!(service = %name, point = %p.name, "the domain announced its outcome");
                if let Err(e) = agent.answer_point(p.seq, &[]).await {
                    debug!(service = %name, "answer its {} point: {}", p.name, chain(&e));
                }
                if p.name == READY_POINT {
                    return Ok(());
                }
                // The status and the logs say why.
                check(agent, name).await?;
                return Err(HostError::conflict(format!(
                    "service {name} did not start (its domain said so; see /run/brood/service in it)"
                )));
            }
            Ok(p) => {
                warn!(service = %name, point = ?p.name, "a service domain announced an unknown point");
            }
            Err(EngineError::Timeout { .. }) => match check(agent, name).await? {
                Check::Ready => return Ok(()),
                Check::Starting => {}
                Check::NotRun(why) => last = why,
            },
            Err(e) => last = chain(&e),
        }
        if Instant::now() >= deadline {
            return Err(HostError::conflict(format!(
                "service {name} did not answer its readiness probe within {timeout:?}{}",
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" (last: {last})")
                }
            )));
        }
    }
}

/// What one look at a service domain's status found.
#[derive(Debug)]
enum Check {
    /// The probe passed.
    Ready,
    /// Still starting (or the probe did not pass yet).
    Starting,
    /// The check itself could not run: why.
    NotRun(String),
}

/// Runs the status check and the class's probe in the domain once; a start
/// that failed is an error saying why.
async fn check(agent: &brood_engine::AgentClient, name: &str) -> HostResult<Check> {
    const CHECK: &str = "d=/run/brood/service; st=$(cat $d/status 2>/dev/null); \
        case \"$st\" in ok) . $d/env; export $(sed -n 's/=.*//p' $d/env); exec sh $d/probe.sh ;; \
        failed*) echo \"$st\"; tail -c 2000 $d/start.sh.log $d/init.sh.log $d/probe.sh.log 2>/dev/null; exit 97 ;; \
        *) exit 98 ;; esac";
    let req = ExecRequest {
        timeout_ms: Some(5000),
        output_limit: 8192,
        ..ExecRequest::shell(CHECK)
    };
    match agent.exec(&req).await {
        Ok(out) if out.status.code == Some(0) => Ok(Check::Ready),
        Ok(out) if out.status.code == Some(97) => Err(HostError::conflict(format!(
            "service {name} did not start: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ))),
        Ok(out) => {
            let err: String = String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(500)
                .collect();
            if err.trim().is_empty() {
                Ok(Check::Starting)
            } else {
                Ok(Check::NotRun(err.trim().to_string()))
            }
        }
        Err(e) => Ok(Check::NotRun(chain(&e))),
    }
}

/// A service as the API shows it.
pub async fn view(host: &Host, rec: &ServiceRecord) -> HostResult<api::Service> {
    let mut guests = Vec::new();
    for g in &rec.guests {
        guests.push(
            host.ledger
                .partition_by_uuid(*g)
                .await?
                .map_or_else(|| g.to_string(), |p| p.name),
        );
    }
    guests.sort();
    let macs = match host.ledger.partition_by_uuid(rec.member).await? {
        Some(p) => crate::host::config::active_config(&p)
            .map(|c| {
                (0..c.nics.len())
                    .map(|i| {
                        c.nics[i].mac.clone().unwrap_or_else(|| {
                            crate::host::config::stable_mac(p.uuid, i).to_string()
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(api::Service {
        name: rec.name.clone(),
        uuid: rec.uuid,
        class: rec.class.clone(),
        pool: rec.pool.clone(),
        member: rec.member,
        state: rec.state.to_string(),
        addresses: rec
            .settings
            .get("ip")
            .map(|ip| vec![ip.split('/').next().unwrap_or(ip).to_string()])
            .unwrap_or_default(),
        macs,
        guests,
        domain_pairing: rec.domain_pairing,
        device_pairing: rec.device_pairing,
        settings: rec.settings.clone(),
        config_path: rec.config_path.clone(),
        fallback: rec.fallback.clone(),
        ready_ms: None,
        created_at: rec.created_at.clone(),
    })
}

/// A service by name or uuid, or 404.
pub async fn find(host: &Host, key: &str) -> HostResult<ServiceRecord> {
    host.ledger.service(key).await?.ok_or_else(|| {
        HostError::NotFound(format!("no service {key:?} (see `brood service list`)"))
    })
}

/// Every service.
pub async fn list(host: &Host) -> HostResult<api::ServiceList> {
    let mut items = Vec::new();
    for s in host.ledger.services().await? {
        items.push(view(host, &s).await?);
    }
    Ok(api::ServiceList { items })
}

/// Releases a service: its domain is torn down, then the service and its
/// member leave the ledger together (a crash between the two is finished
/// by the next start's recovery).
pub async fn release(host: &Arc<Host>, key: &str) -> HostResult<()> {
    let rec = find(host, key).await?;
    member::delete_partition(host, rec.member).await;
    if host.ledger.partition_by_uuid(rec.member).await?.is_some() {
        return Err(HostError::conflict(format!(
            "the domain of {} could not be deleted; retry",
            rec.name
        )));
    }
    forget(host, &rec).await?;
    let _ = tokio::fs::remove_file(&rec.config_path).await;
    host.feature::<ServicePools>().wake.notify_one();
    Ok(())
}

/// A guest a service may serve: any partition but a template.
async fn guest(host: &Host, name: &str) -> HostResult<brood_ledger::PartitionRecord> {
    let rec = host.find(name).await?;
    if rec.stage == brood_ledger::Stage::Template {
        return Err(HostError::transition(format!(
            "{name} is a template, which never runs: a service serves running partitions"
        )));
    }
    Ok(rec)
}

/// Removes a service and its member from the ledger in one transaction.
pub async fn forget(host: &Host, rec: &ServiceRecord) -> HostResult<()> {
    let mut ops = vec![Op::ServicePool {
        change: ServicePoolOp::DeleteService { uuid: rec.uuid },
    }];
    if host.ledger.pool_member(rec.member).await?.is_some() {
        ops.push(Op::ServicePool {
            change: ServicePoolOp::RemoveMember {
                partition: rec.member,
            },
        });
    }
    host.ledger
        .commit(Tx::new(ACTOR, format!("release {}", rec.name), ops))
        .await?;
    host.feature::<ServicePools>().unclaim(rec.member);
    Ok(())
}

/// Associates a guest with a service, within its `domain_pairing`.
pub async fn associate(host: &Host, key: &str, guest_name: &str) -> HostResult<api::Service> {
    let g = guest(host, guest_name).await?;
    let rec = find(host, key).await?;
    host.ledger
        .commit(Tx::new(
            ACTOR,
            format!("associate {} with {}", g.name, rec.name),
            vec![Op::ServicePool {
                change: ServicePoolOp::AddGuest {
                    service: rec.uuid,
                    guest: g.uuid,
                },
            }],
        ))
        .await
        .map_err(|e| match e {
            LedgerError::Precondition { .. } => HostError::conflict(format!(
                "service {} already serves {} guest(s), its domain_pairing: release one or request another {} domain",
                rec.name,
                rec.guests.len(),
                rec.class
            )),
            e => e.into(),
        })?;
    view(host, &find(host, key).await?).await
}
