//! I/O partitions: supervised processes that own a host device class and
//! serve many guests over channels recorded in the ledger. Today's kind is
//! the switch of a network zone (`brood-switch`, see
//! `brood_engine::switch`); each is a ledger row of kind `io` with a run
//! state, pid and restart count, and a supervisor task here.
//!
//! - Started first: `start_all` runs before the ledger is reconciled with
//!   the VMs, so a guest reattached after a broodd restart finds its switch.
//! - A switch that outlives broodd (broodd killed) is adopted at the next
//!   start: its pid is checked to be a `brood-switch` on the same
//!   configuration file, then watched through a pidfd.
//! - A process that ends on its own is recorded `crashed` and restarted at
//!   once, then with a doubling backoff while it keeps failing.
//! - `stop` is refused while channels are open unless forced, which closes
//!   them first; `restart` ends the process and the supervisor starts it
//!   again (not counted as a failure).
//!
//! - Dedicated CPUs (`set`): the ledger records how many; the supervisor
//!   pins every thread of the process to the last that many CPUs broodd
//!   may use (`sched_setaffinity`), after each start or adoption and when
//!   the number changes.
//!
//! What the switch serves (its configuration file) is kept in step with the
//! ledger's channels ([`switch::switch_config`]).

pub mod confine;
pub mod storage;
pub mod supervise;
pub mod switch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use brood_api as api;
use brood_ledger::{IoRecord, IoState, NetOp, Op, Tx};
use tokio::sync::Notify;

use crate::host::{Host, HostError, HostResult};

/// The supervisors of the I/O partitions, by name.
#[derive(Debug, Default)]
pub struct IoPartitions {
    running: Mutex<HashMap<String, Arc<supervise::Supervisor>>>,
}

impl IoPartitions {
    pub(crate) fn get(&self, name: &str) -> Option<Arc<supervise::Supervisor>> {
        lock(&self.running).get(name).cloned()
    }

    /// Wakes every supervisor (channels changed: configurations follow).
    pub fn nudge_all(&self) {
        for s in lock(&self.running).values() {
            s.nudge.notify_one();
        }
    }
}

/// Ends the supervisor (and process) of an I/O partition the ledger no
/// longer has (its zone's last network was deleted).
pub async fn forget(host: &Host, name: &str) {
    let sup = lock(&host.feature::<IoPartitions>().running).remove(name);
    if let Some(s) = sup {
        s.stop.notify_one();
        s.wait_done().await;
    }
    let _ = tokio::fs::remove_dir_all(supervise::dir(host, name)).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts (or adopts) a supervisor for every I/O partition not stopped on
/// purpose. Runs at broodd start before the VMs are reconciled.
pub async fn start_all(host: &Arc<Host>) -> HostResult<()> {
    for rec in host.ledger.io_partitions().await? {
        if rec.run_state != IoState::Stopped {
            ensure(host, &rec.name).await?;
        }
    }
    Ok(())
}

/// Makes sure I/O partition `name` has a supervisor (starting its process).
pub async fn ensure(host: &Arc<Host>, name: &str) -> HostResult<()> {
    let state = host.feature::<IoPartitions>();
    let rec = find(host, name).await?;
    let mut map = lock(&state.running);
    if map.get(name).is_some_and(|s| !s.is_done()) {
        return Ok(());
    }
    let sup = Arc::new(supervise::Supervisor {
        name: rec.name.clone(),
        zone: rec.zone.clone(),
        nudge: Notify::new(),
        stop: Notify::new(),
        restart: Notify::new(),
        done: std::sync::atomic::AtomicBool::new(false),
        kind: rec.kind,
        served: tokio::sync::watch::Sender::new(Vec::new()),
    });
    map.insert(rec.name.clone(), sup.clone());
    drop(map);
    tokio::spawn(supervise::run(host.clone(), sup));
    Ok(())
}

async fn find(host: &Host, name: &str) -> HostResult<IoRecord> {
    host.ledger.io_partition(name).await?.ok_or_else(|| {
        HostError::NotFound(format!(
            "no I/O partition named {name:?}: `brood io list` shows them"
        ))
    })
}

/// The API's view of an I/O partition.
pub async fn show(host: &Host, name: &str) -> HostResult<api::IoPartition> {
    let rec = find(host, name).await?;
    let members = switch::members(host).await?;
    let disks = storage::clients(host, &rec.name).await?;
    Ok(render(rec, &members, disks))
}

/// Every I/O partition.
pub async fn list(host: &Host) -> HostResult<api::IoPartitionList> {
    let members = switch::members(host).await?;
    let mut items = Vec::new();
    for r in host.ledger.io_partitions().await? {
        let disks = storage::clients(host, &r.name).await?;
        items.push(render(r, &members, disks));
    }
    Ok(api::IoPartitionList { items })
}

fn render(
    r: IoRecord,
    members: &[(String, api::NetworkMember)],
    disk_clients: Vec<api::DiskClient>,
) -> api::IoPartition {
    api::IoPartition {
        kind: "io".into(),
        serves: r.kind.as_str().into(),
        clients: members
            .iter()
            .filter(|(io, _)| *io == r.name)
            .map(|(_, m)| m.clone())
            .collect(),
        disk_clients,
        state: r.run_state.as_str().into(),
        cpu_list: r.pid.and_then(supervise::cpu_list),
        cpus: r.cpus,
        pid: r.pid,
        restart_count: r.restart_count,
        last_exit: r.last_exit,
        zone: r.zone,
        name: r.name,
    }
}

/// Restarts I/O partition `name`: ends its process, and its supervisor
/// starts it again at once (a stopped one is started).
pub async fn restart(host: &Arc<Host>, name: &str) -> HostResult<api::IoPartition> {
    let rec = find(host, name).await?;
    match host.feature::<IoPartitions>().get(&rec.name) {
        Some(s) if !s.is_done() => s.restart.notify_one(),
        _ => ensure(host, &rec.name).await?,
    }
    show(host, name).await
}

/// Stops I/O partition `name`; refused while it has clients unless
/// `force`, which closes their channels first (their NICs lose the network).
pub async fn stop(host: &Arc<Host>, name: &str, force: bool) -> HostResult<api::IoPartition> {
    let rec = find(host, name).await?;
    let clients = switch::members(host)
        .await?
        .into_iter()
        .filter(|(io, _)| *io == rec.name)
        .count()
        + storage::clients(host, &rec.name).await?.len();
    if clients > 0 && !force {
        return Err(HostError::conflict(format!(
            "I/O partition {name:?} has {clients} clients: stop the VMs it serves first, or stop it with --force to detach them"
        )));
    }
    let mut ops = Vec::new();
    if clients > 0 {
        ops.push(Op::Net(NetOp::DetachIo {
            name: rec.name.clone(),
        }));
    }
    if let Some(s) = host.feature::<IoPartitions>().get(&rec.name) {
        s.stop.notify_one();
        s.wait_done().await;
    }
    ops.push(Op::Net(NetOp::SetIoState {
        name: rec.name.clone(),
        run_state: IoState::Stopped,
        pid: None,
        restart_count: None,
        last_exit: Some("stopped".into()),
    }));
    host.ledger
        .commit(Tx::new(
            "api",
            format!("stop {}{}", rec.name, if force { " (forced)" } else { "" }),
            ops,
        ))
        .await?;
    show(host, name).await
}

/// Dedicates `cpus` host CPUs to I/O partition `name` (`None`: every CPU
/// again); refused when that would leave the VMs no CPU.
pub async fn set(
    host: &Arc<Host>,
    name: &str,
    patch: api::IoPartitionPatch,
) -> HostResult<api::IoPartition> {
    let rec = find(host, name).await?;
    if let Some(n) = patch.cpus {
        let have = supervise::host_cpus().len();
        if n == 0 || usize::try_from(n).unwrap_or(usize::MAX) >= have {
            return Err(HostError::invalid(format!(
                "cannot dedicate {n} CPUs to {name:?}: broodd may use {have}, and at least one must stay for the VMs; give 1-{}",
                have.saturating_sub(1)
            )));
        }
    }
    host.ledger
        .commit(Tx::new(
            "api",
            format!("dedicate CPUs to {}", rec.name),
            vec![Op::Net(NetOp::SetIoCpus {
                name: rec.name.clone(),
                cpus: patch.cpus,
            })],
        ))
        .await?;
    if let Some(s) = host.feature::<IoPartitions>().get(&rec.name) {
        s.nudge.notify_one();
        // The supervisor pins at its next round; wait (bounded) for it so
        // the answer shows the new CPU list.
        let deadline = std::time::Instant::now() + supervise::SYNC_EVERY * 3;
        while std::time::Instant::now() < deadline {
            let now = find(host, name).await?;
            let want = supervise::dedicated(now.cpus);
            if now
                .pid
                .and_then(supervise::allowed)
                .is_none_or(|a| a == want)
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    show(host, name).await
}
