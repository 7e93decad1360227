//! Live migration of a running partition between two broodds of a cluster
//! (`brood vm migrate NAME [--to HOST]`), both halves: the source that
//! asks and pre-copies, and the target that reserves, receives and runs.
//!
//! The two broodds meet in the catalog (`brood_cluster::Move`, one row per
//! partition moving): the source bumps the placement generation and
//! records the move with the partition's definition; the target, which
//! watches the catalog for moves to it, reserves the partition's memory,
//! vCPUs and disk in its own ledger in one transaction (the partition
//! `starting` under the source's uuid), starts its QEMU waiting on
//! `-incoming`, listens on a TCP port of the address it reaches the
//! catalog from, and answers ready with it; the source's QEMU pre-copies
//! there, QEMU pauses the guest for the last pages; the target, holding
//! the whole state, commits the move (the catalog's placement becomes its
//! own), records the partition running in its ledger and resumes the
//! guest; the source sees the commit, kills its paused copy and releases
//! the partition from its ledger, and removes the move.
//!
//! Which copy runs is decided by one conditional write in the catalog:
//! the target's commit against an abort (by the source when the target
//! refused, failed, or did not answer; by either broodd restarting with a
//! move not committed). The target resumes only after its commit won; the
//! source resumes only when the commit did not happen. Recovery rule at
//! every cut (kill -9 of either broodd), applied by [`recover`] when the
//! broodd starts again:
//!
//! | cut                                   | left behind                         | rule at restart                       |
//! |---------------------------------------|-------------------------------------|---------------------------------------|
//! | before the target's ledger reserved   | a move `requested`                  | abort; nothing held on the target     |
//! | target reserved, QEMU waiting/loading | move `ready`, target `starting`     | abort; target kills its QEMU, removes the partition; source runs on |
//! | target loaded, not committed          | move `ready`, source paused         | abort wins; the source resumes        |
//! | target committed, not yet resumed     | move `committed`, target paused     | the target resumes it                 |
//! | target resumed, source not released   | move `committed`, source paused     | the source kills its copy, releases it, removes the move |
//! | source released, move not removed     | move `committed`                    | the source removes the move           |
//!
//! A forked child moves whole: the stream carries its template's pages it
//! shares and its own alike, and it arrives a plain partition of the
//! target, charged its whole memory (`as_plain`); its template stays on
//! the source, one child fewer.
//!
//! Storage: the disks are not copied and the hosts share no directory
//! yet, so a partition with disks (its own or an image's root disk) is
//! refused with that reason; a guest on kernel and initramfs (the default
//! image) moves whole. Networks: a NIC's network must exist on the target
//! by the same name (its switch serves it there); the target's ledger
//! opens the channel with the start.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use brood_cluster::{ClusterError, Move, MoveEnd, MoveState};
use brood_ledger::{Op, PartitionPatch, PartitionRecord, RunState, Stage, Tx};
use serde::Serialize;
use tracing::{info, warn};
use uuid::Uuid;

use super::Member;
use crate::api::error::ApiError;
use crate::host::config::vm_spec;
use crate::host::runstate::{EndMode, Settle};
use crate::host::{Host, HostError, Kind, chain};

/// How long the target may take to answer a move (start its QEMU).
const READY_WITHIN: Duration = Duration::from_secs(120);
/// How long the source's connection may take to arrive at the target.
const STREAM_WITHIN: Duration = Duration::from_secs(60);
/// How long the whole stream may take (pre-copy of a busy guest under TCG).
const MIGRATE_WITHIN: Duration = Duration::from_secs(600);
/// How long a moved guest's agent may take to answer on the target.
const AGENT_WITHIN: Duration = Duration::from_secs(60);
/// How long the source waits for the target's commit once the stream completed.
const COMMIT_WITHIN: Duration = Duration::from_secs(30);
/// How often the catalog is read while waiting on the other host.
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(250);

const ACTOR: &str = "migrate";

/// Where a test stops a broodd dead (`--migrate-fault`), to check the
/// recovery rule of that cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// The source, once the target committed and before it released.
    SourceAfterCommit,
    /// The target, once its stream loaded and before it committed.
    TargetBeforeCommit,
}

/// A migration that completed.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    /// The host it left.
    pub from: String,
    /// The host it runs on now.
    pub to: String,
    /// The placement generation of the move.
    pub generation: u64,
    /// QEMU's total time of the stream, in milliseconds.
    pub total_ms: u64,
    /// The guest's pause for the switch, as QEMU measured it, in milliseconds.
    pub downtime_ms: u64,
    /// From the request to the source released, in milliseconds.
    pub wall_ms: u64,
}

/// The moves this broodd serves as target right now.
#[derive(Debug, Default)]
pub struct Receiving(Mutex<HashSet<Uuid>>);

impl Receiving {
    fn claim(&self, id: Uuid) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id)
    }
    fn release(&self, id: Uuid) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn fault(m: &Member, at: Fault) {
    if m.cfg.fault == Some(at) {
        warn!("--migrate-fault {at:?}: stopping dead here");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}

/// What refuses a partition's move before anything is asked of anyone.
fn check_movable(rec: &PartitionRecord) -> Result<(), ApiError> {
    match Kind::of(rec) {
        Kind::Template => {
            return Err(ApiError::transition(format!(
                "{} is a template: templates never run, so they do not migrate",
                rec.name
            )));
        }
        // A child moves whole (see `as_plain`).
        Kind::Child | Kind::Plain => {}
    }
    if rec.run_state != RunState::Running {
        return Err(ApiError::transition(format!(
            "cannot migrate {}: it is {} (only a running partition migrates; start it, or place it with `brood host place`)",
            rec.name, rec.run_state
        )));
    }
    let c = crate::host::config::active_config(rec)?;
    if !c.disks.is_empty() || c.image.is_some() || rec.demand.disk_gib > 0 {
        return Err(ApiError::transition(format!(
            "cannot migrate {}: it has disks, and the hosts share no storage yet (disks are not copied); a partition on kernel and initramfs only migrates",
            rec.name
        )));
    }
    Ok(())
}

/// Moves running partition `rec` off this host to `to` (or placement's
/// choice of another host). Returns when it runs on the target and this
/// host released it; on an error it runs here as before.
pub async fn migrate_out(
    host: &Arc<Host>,
    m: &Member,
    rec: PartitionRecord,
    to: Option<&str>,
) -> Result<Done, ApiError> {
    let t0 = Instant::now();
    check_movable(&rec)?;
    let definition = serde_json::to_value(&rec)
        .map_err(|e| HostError::corrupt("encode the partition for the target", e))?;
    let mv = m
        .catalog
        .begin_move(
            &rec.name,
            &m.cfg.name,
            to,
            rec.uuid,
            &definition,
            m.cfg.liveness,
        )
        .await?;
    info!(partition = %rec.name, to = %mv.target, generation = mv.generation, "migration requested");
    let addr = match wait_ready(m, &mv).await {
        Ok(a) => a,
        Err(why) => {
            let end = m.catalog.move_abort(mv.partition, mv.generation).await?;
            if matches!(end, MoveEnd::Aborted(_)) {
                m.given.rebase(rec.uuid, mv.generation);
            }
            return Err(match end {
                MoveEnd::Aborted(reason) => ApiError::conflict(format!(
                    "host {} did not take {}: {}",
                    mv.target,
                    rec.name,
                    reason.unwrap_or(why)
                )),
                MoveEnd::Committed => ApiError::conflict(format!(
                    "the move of {} to {} committed without a stream: the catalog is inconsistent",
                    rec.name, mv.target
                )),
            });
        }
    };
    let lock = host.registry.lock(rec.uuid);
    let guard = lock.lock().await;
    let Some(running) = host.registry.running(rec.uuid) else {
        drop(guard);
        if matches!(
            m.catalog.move_abort(mv.partition, mv.generation).await?,
            MoveEnd::Aborted(_)
        ) {
            m.given.rebase(rec.uuid, mv.generation);
        }
        return Err(ApiError::conflict(format!(
            "{} stopped while its move was prepared",
            rec.name
        )));
    };
    let sent = host
        .engine
        .migrate_out(&*running.vm, addr, MIGRATE_WITHIN)
        .await;
    let stats = match sent {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(partition = %rec.name, "the stream to {} failed: {}", mv.target, chain(&e));
            None
        }
    };
    // Completed or not, the catalog decides: wait for the target's commit
    // (a stream that completed) or abort it (one that did not).
    let committed = match stats {
        Some(_) => wait_commit(m, &mv).await?,
        None => false,
    };
    let committed = committed
        || match m.catalog.move_abort(mv.partition, mv.generation).await? {
            MoveEnd::Committed => true,
            MoveEnd::Aborted(reason) => {
                m.given.rebase(rec.uuid, mv.generation);
                // The source runs on (QEMU resumes it after a failed
                // stream; a completed one is paused until now).
                let _ = running.vm.resume().await;
                drop(guard);
                return Err(ApiError::conflict(format!(
                    "migration of {} to {} failed, {} runs here as before: {}",
                    rec.name,
                    mv.target,
                    rec.name,
                    reason.unwrap_or_else(|| "the stream did not complete".into())
                )));
            }
        };
    debug_assert!(committed);
    fault(m, Fault::SourceAfterCommit);
    drop(running);
    release_here(host, rec.uuid, &mv.target).await?;
    // Gone from here: a move back later starts from the generation it
    // then has, not from what this host saw before it left.
    m.given.forget(rec.uuid);
    drop(guard);
    m.catalog.move_finish(mv.partition, mv.generation).await?;
    let stats = stats.unwrap_or(brood_engine::qemu::migrate::MigrationStats {
        total_ms: 0,
        downtime_ms: 0,
        wall_ms: 0,
    });
    info!(partition = %rec.name, to = %mv.target, downtime_ms = stats.downtime_ms, "migrated");
    Ok(Done {
        from: mv.source,
        to: mv.target,
        generation: mv.generation,
        total_ms: stats.total_ms,
        downtime_ms: stats.downtime_ms,
        wall_ms: ms(t0.elapsed()),
    })
}

/// Waits for the target's answer: its stream address, or why not.
async fn wait_ready(m: &Member, mv: &Move) -> Result<SocketAddr, String> {
    let row = poll(m, mv, READY_WITHIN, |r| r.state != MoveState::Requested).await;
    match row {
        Ok(Some(r)) if r.state == MoveState::Ready => r
            .address
            .as_deref()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("it answered an unusable address {:?}", r.address)),
        Ok(Some(r)) => Err(r
            .reason
            .unwrap_or_else(|| format!("it answered {}", r.state.as_str()))),
        Ok(None) => Err("the move was aborted meanwhile".into()),
        Err(e) => Err(e),
    }
}

/// Waits until the target committed (true) or the move was refused or
/// removed (false); `Err` when the catalog did not answer.
async fn wait_commit(m: &Member, mv: &Move) -> Result<bool, ClusterError> {
    match poll(m, mv, COMMIT_WITHIN, |r| {
        matches!(r.state, MoveState::Committed | MoveState::Refused)
    })
    .await
    {
        Ok(Some(r)) => Ok(r.state == MoveState::Committed),
        Ok(None) => Ok(false),
        // Timed out: the caller aborts, which also tells if it committed.
        Err(_) => Ok(false),
    }
}

/// Reads the move until `done` holds for it (or it is gone: `None`),
/// within `within`.
async fn poll(
    m: &Member,
    mv: &Move,
    within: Duration,
    done: impl Fn(&Move) -> bool,
) -> Result<Option<Move>, String> {
    let deadline = Instant::now() + within;
    let mut pause = POLL_FIRST;
    loop {
        match m.catalog.move_of(mv.partition).await {
            Ok(Some(r)) if r.generation != mv.generation => return Ok(None),
            Ok(Some(r)) if done(&r) => return Ok(Some(r)),
            Ok(None) => return Ok(None),
            Ok(Some(_)) => {}
            Err(e) => return Err(format!("the catalog did not answer: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!("no answer within {within:?}"));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Ends this host's copy of a partition that moved to `to` and releases
/// everything it held here. The caller holds its lock (or runs before the
/// API is served). Idempotent: a partition already gone is success.
async fn release_here(host: &Arc<Host>, uuid: Uuid, to: &str) -> Result<(), HostError> {
    let why = format!("migrated to {to}");
    host.end_vm(uuid, EndMode::Kill).await;
    let Some(rec) = host.ledger.partition_by_uuid(uuid).await? else {
        return Ok(());
    };
    if rec.run_state.is_active() {
        host.settle(ACTOR, &rec, Settle::to(RunState::Stopped, why.clone()))
            .await?;
    }
    host.remove(ACTOR, uuid, &why).await
}

/// The address this host receives streams on: the host part of
/// `--advertise`, or else the one it reaches the catalog's server from.
fn stream_ip(m: &Member) -> Result<IpAddr, String> {
    if let Some(ip) = m
        .cfg
        .address
        .rsplit_once(':')
        .and_then(|(h, _)| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
    {
        return Ok(ip);
    }
    let (server, port) = brood_cluster::catalog_server(&m.cfg.url)
        .ok_or("the catalog is not reached over TCP: give --advertise IP:PORT")?;
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect((server.as_str(), port))?;
            s.local_addr()
        })
        .map_err(|e| format!("find the address that reaches {server}: {e}"))?;
    Ok(probe.ip())
}

/// Watches the catalog for moves to this host and receives each.
pub fn spawn_receiver(host: Arc<Host>, m: Arc<Member>) {
    tokio::spawn(async move {
        let receiving = Arc::new(Receiving::default());
        let mut pause = POLL_FIRST;
        while !host.is_stopping() {
            match m.catalog.moves_of_host(&m.cfg.name).await {
                Ok(moves) => {
                    let mut any = false;
                    for mv in moves {
                        if mv.target != m.cfg.name
                            || mv.state != MoveState::Requested
                            || !receiving.claim(mv.partition)
                        {
                            continue;
                        }
                        any = true;
                        let (host, m, receiving) = (host.clone(), m.clone(), receiving.clone());
                        tokio::spawn(async move {
                            let id = mv.partition;
                            receive(&host, &m, mv).await;
                            receiving.release(id);
                        });
                    }
                    pause = if any {
                        POLL_FIRST
                    } else {
                        (pause * 2).min(POLL_MAX)
                    };
                }
                Err(e) => {
                    warn!("reading the catalog's moves failed (retried): {e}");
                    pause = POLL_MAX;
                }
            }
            tokio::time::sleep(pause).await;
        }
    });
}

/// The target's half of one move; every failure refuses it in the catalog
/// and leaves nothing held here.
async fn receive(host: &Arc<Host>, m: &Member, mv: Move) {
    let name = mv.name.clone();
    match do_receive(host, m, &mv).await {
        Ok(()) => info!(partition = %name, from = %mv.source, "migrated here"),
        Err(why) => {
            warn!(partition = %name, from = %mv.source, "refusing the move: {why}");
            if let Err(e) = m
                .catalog
                .move_refuse(mv.partition, mv.generation, &why)
                .await
            {
                warn!(partition = %name, "recording the refusal: {e}");
            }
        }
    }
}

async fn do_receive(host: &Arc<Host>, m: &Member, mv: &Move) -> Result<(), String> {
    let src: PartitionRecord = serde_json::from_value(mv.definition.clone())
        .map_err(|e| format!("the move's definition is not a partition: {e}"))?;
    if src.uuid != mv.local_id {
        return Err("the move's definition names another partition".into());
    }
    let was_child = Kind::of(&src) == Kind::Child;
    let rec = PartitionRecord {
        // Provisioning with nothing pending marks it as a move's until the
        // catalog says whose it is: a restart in between asks the catalog
        // ([`recover`]). Only a move leaves a partition so.
        stage: Stage::Provisioning,
        run_state: RunState::Starting,
        pid: None,
        pending_op: None,
        restart_count: 0,
        last_exit: Some(format!("migrating from {}", mv.source)),
        generation: 0,
        parent: None,
        lineage: None,
        ..src.clone()
    };
    let rec = if was_child {
        as_plain(host, &src, rec).map_err(|e| chain(&e))?
    } else {
        rec
    };
    let uuid = rec.uuid;
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    // One transaction: the record, everything it holds while running, and
    // its NICs' channels; refused whole when this host lacks any of it.
    let mut ops = vec![Op::InsertPartition(rec.clone())];
    ops.extend(Op::reserve(uuid, &rec.demand));
    if let Ok(c) = crate::host::config::active_config(&rec) {
        ops.push(crate::network::open_op(uuid, &c.nics));
    }
    host.ledger
        .commit(Tx {
            actor: ACTOR.into(),
            reason: format!("reserve {} migrating from {}", rec.name, mv.source),
            ops,
        })
        .await
        .map_err(|e| format!("this host's ledger refused it: {}", chain(&e)))?;
    let vm = match prepare(host, m, mv, &rec).await {
        Ok(vm) => vm,
        Err(why) => {
            forget(host, uuid, &why).await;
            return Err(why);
        }
    };
    let mut vm = vm;
    match m
        .catalog
        .move_commit(mv.partition, mv.generation, &m.cfg.name, uuid)
        .await
    {
        Ok(()) => {}
        Err(e) => {
            drop(vm);
            forget(host, uuid, "the move was aborted").await;
            return Err(format!("the move was aborted before it committed: {e}"));
        }
    }
    // Ours now: the VM outlives this broodd like any other, and this host
    // runs it at the move's generation (whatever it saw of it before).
    vm.set_kill_on_drop(false);
    m.given.rebase(uuid, mv.generation);
    let rec = host.reload(uuid).await.map_err(|e| chain(&e))?;
    let rec = host
        .update(
            ACTOR,
            format!("{} migrated here from {}", rec.name, mv.source),
            &rec,
            PartitionPatch {
                stage: Some(Stage::Operating),
                ..Default::default()
            },
            Vec::new(),
        )
        .await
        .map_err(|e| format!("record it operating: {}", chain(&e)))?;
    let (_, running) = host
        .mark_running(ACTOR, &rec, vm, RunState::Running, None)
        .await
        .map_err(|e| format!("record it running: {}", chain(&e)))?;
    running
        .vm
        .resume()
        .await
        .map_err(|e| format!("resume it: {}", chain(&e)))?;
    agent_ready(&running.vm).await;
    Ok(())
}

/// A forked child arriving: it becomes a plain partition of this host.
/// The stream carries all of its memory, the pages it shared with its
/// template (mapped private from the template's memory file on the source)
/// and its own alike, and this host's QEMU holds them in plain memory of
/// its own; nothing of the template is needed here. So it is charged its
/// whole memory, as any plain partition, not the share a child is charged
/// beside its template; and its NICs keep the MACs its identity step gave
/// it, written into its configuration, so a later start here keeps them.
fn as_plain(
    host: &Host,
    src: &PartitionRecord,
    mut rec: PartitionRecord,
) -> Result<PartitionRecord, HostError> {
    let macs = match &src.lineage {
        Some(brood_ledger::Lineage::Child(c)) => c.macs.clone(),
        _ => Vec::new(),
    };
    let mut configs = crate::host::config::configs_of(&rec)?;
    for c in configs.values_mut() {
        for (nic, mac) in c.nics.iter_mut().zip(&macs) {
            nic.mac = Some(mac.clone());
        }
    }
    rec.configs = brood_ledger::JsonText::from_serialize(&configs)
        .map_err(|e| HostError::corrupt(format!("the configuration of {}", rec.name), e))?;
    rec.demand = host.launcher(Kind::Plain)?.demand(&rec)?;
    Ok(rec)
}

/// Marks a moved guest's agent ready: it announced itself long ago, to
/// the source's QEMU, and answers here as soon as the guest runs.
async fn agent_ready(vm: &brood_engine::BoxedVm) {
    if let Ok(agent) = vm.agent() {
        match tokio::time::timeout(AGENT_WITHIN, agent.assume_ready()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(vm = %vm.name(), "its agent does not answer after the move: {}", chain(&e))
            }
            Err(_) => {
                warn!(vm = %vm.name(), "its agent did not answer within {AGENT_WITHIN:?} of the move")
            }
        }
    }
}

/// Starts the waiting QEMU, answers ready, and loads the stream; the guest
/// is left paused with the whole state.
async fn prepare(
    host: &Arc<Host>,
    m: &Member,
    mv: &Move,
    rec: &PartitionRecord,
) -> Result<brood_engine::BoxedVm, String> {
    let mut spec = vm_spec(rec, &host.paths).map_err(|e| chain(&e))?;
    crate::network::use_channels(host, rec.uuid, &mut spec)
        .await
        .map_err(|e| chain(&e))?;
    let ip = stream_ip(m)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .map_err(|e| format!("listen on {ip} for the stream: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("read the stream's address: {e}"))?;
    let vm = host
        .engine
        .prepare_incoming(&spec)
        .await
        .map_err(|e| format!("start its QEMU: {}", chain(&e)))?;
    m.catalog
        .move_ready(mv.partition, mv.generation, &addr.to_string())
        .await
        .map_err(|e| e.to_string())?;
    let (stream, peer) = tokio::time::timeout(STREAM_WITHIN, listener.accept())
        .await
        .map_err(|_| format!("no stream arrived within {STREAM_WITHIN:?}"))?
        .map_err(|e| format!("accept the stream: {e}"))?;
    drop(listener);
    let stream = stream
        .into_std()
        .map_err(|e| format!("take the stream: {e}"))?;
    info!(partition = %rec.name, %peer, "receiving the stream");
    host.engine
        .migrate_in(&*vm, stream, MIGRATE_WITHIN)
        .await
        .map_err(|e| format!("load the stream: {}", chain(&e)))?;
    fault(m, Fault::TargetBeforeCommit);
    Ok(vm)
}

/// Removes a partition this host reserved for a move that did not happen.
async fn forget(host: &Arc<Host>, uuid: Uuid, why: &str) {
    let r = async {
        if let Some(rec) = host.ledger.partition_by_uuid(uuid).await? {
            if rec.run_state.is_active() {
                host.settle(ACTOR, &rec, Settle::to(RunState::Stopped, why))
                    .await?;
            }
            host.remove(ACTOR, uuid, why).await?;
        }
        Ok::<(), HostError>(())
    }
    .await;
    if let Err(e) = r {
        warn!(partition = %uuid, "releasing a move's reservation: {}", chain(&e));
    }
}

/// Settles the moves this host took part in when it stopped (the table in
/// the module's docs); runs at join, after the ledger was reconciled with
/// the VMs still running. The catalog decides: a partition this host
/// reserved for a move (stage provisioning, nothing pending) is kept when the catalog
/// places it here, and released otherwise; one that left is released when
/// the move committed, and runs on here when it did not.
pub async fn recover(host: &Arc<Host>, m: &Member) -> Result<(), ClusterError> {
    let moves = m.catalog.moves_of_host(&m.cfg.name).await?;
    // The target's side: every reservation a move left here.
    let locals = host
        .ledger
        .all_partitions()
        .await
        .map_err(|e| ClusterError::Invalid(format!("read the ledger's partitions: {e}")))?;
    for rec in locals
        .into_iter()
        .filter(|r| r.stage == Stage::Provisioning && r.pending_op.is_none())
    {
        let mv = moves
            .iter()
            .find(|mv| mv.local_id == rec.uuid && mv.target == m.cfg.name);
        let ours = match mv {
            Some(mv) if mv.state == MoveState::Committed => true,
            Some(mv) => matches!(
                m.catalog.move_abort(mv.partition, mv.generation).await?,
                MoveEnd::Committed
            ),
            None => match m.catalog.placement_named(&rec.name).await {
                Ok(p) => p.host.as_deref() == Some(m.cfg.name.as_str()),
                Err(ClusterError::NotFound { .. }) => false,
                Err(e) => return Err(e),
            },
        };
        if ours {
            keep_here(host, rec).await;
        } else {
            host.end_vm(rec.uuid, EndMode::Kill).await;
            forget(
                host,
                rec.uuid,
                "its move was cut by a restart and did not commit",
            )
            .await;
            info!(partition = %rec.name, "a move here cut by a restart did not commit: nothing kept");
        }
    }
    // The source's side.
    for mv in moves.into_iter().filter(|mv| mv.source == m.cfg.name) {
        let here = mv.local_id;
        let end = if mv.state == MoveState::Committed {
            MoveEnd::Committed
        } else {
            m.catalog.move_abort(mv.partition, mv.generation).await?
        };
        match end {
            MoveEnd::Committed => {
                let lock = host.registry.lock(here);
                let _g = lock.lock().await;
                if let Err(e) = release_here(host, here, &mv.target).await {
                    warn!(partition = %mv.name, "releasing a partition that moved: {}", chain(&e));
                    continue;
                }
                m.catalog.move_finish(mv.partition, mv.generation).await?;
                info!(partition = %mv.name, to = %mv.target, "a move cut by a restart had committed: released here");
            }
            MoveEnd::Aborted(_) => {
                run_on(host, here).await;
                info!(partition = %mv.name, "a move from here cut by a restart: aborted, it runs here");
            }
        }
    }
    Ok(())
}

/// A reservation of a move that committed here: operating, and running.
async fn keep_here(host: &Arc<Host>, rec: PartitionRecord) {
    let name = rec.name.clone();
    let r = host
        .update(
            ACTOR,
            format!("{name} migrated here (finished after a restart)"),
            &rec,
            PartitionPatch {
                stage: Some(Stage::Operating),
                ..Default::default()
            },
            Vec::new(),
        )
        .await;
    match r {
        Ok(_) => {
            run_on(host, rec.uuid).await;
            info!(partition = %name, "a move committed here before a restart: kept, running");
        }
        Err(e) => warn!(partition = %name, "keeping a partition that moved here: {}", chain(&e)),
    }
}

/// Resumes a partition's VM if it is paused (a copy left waiting by a move).
async fn run_on(host: &Arc<Host>, uuid: Uuid) {
    let Ok(rec) = host.reload(uuid).await else {
        return;
    };
    if rec.run_state == RunState::Paused {
        if let Err(e) = host.set_paused(ACTOR, &rec, false).await {
            warn!(partition = %rec.name, "resuming it: {}", chain(&e));
        }
    } else if let Some(r) = host.registry.running(uuid) {
        let _ = r.vm.resume().await;
    }
    if let Some(r) = host.registry.running(uuid) {
        agent_ready(&r.vm).await;
    }
}
