//! `brood ledger verify`: the ledger's own invariants (holdings add up to
//! capacity, nothing held twice, holdings match run states) plus the ones
//! only broodd can check: every active partition has a live QEMU with the
//! pid the ledger records, and every QEMU under broodd's run root belongs to
//! an active partition; no job runs without this broodd running it, and no
//! failed or cancelled create left its partition behind (`job::verify`).
//! Each partition is checked under its lock, so an
//! operation in flight is never reported as a broken invariant.

use std::collections::BTreeMap;
use std::time::Duration;

use brood_api::{Problem, VerifyReport};

use crate::host::{Host, HostResult};
use crate::template::Templates;

/// How long verify waits for an operation on a partition to finish.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Checks every invariant.
pub async fn verify(d: &Host) -> HostResult<VerifyReport> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut checked = BTreeMap::new();
    let records = d.ledger.all_partitions().await?;
    let mut guards = Vec::new();
    for rec in &records {
        let lock = d.registry.lock(rec.uuid);
        match tokio::time::timeout(LOCK_WAIT, lock.lock_owned()).await {
            Ok(g) => guards.push(g),
            Err(_) => problems.push(Problem {
                code: "busy".into(),
                message: format!("{} stayed busy for {LOCK_WAIT:?}; not checked", rec.name),
            }),
        }
    }
    for p in d.ledger.verify().await? {
        problems.push(Problem {
            code: p.code.to_string(),
            message: p.message,
        });
    }
    crate::job::verify(d, &mut problems).await?;
    checked.insert("ledger".into(), 1);
    // Re-read under the locks.
    let records = d.ledger.all_partitions().await?;
    let qemus = d.engine.find_vms();
    let mut active = 0u64;
    for rec in &records {
        if !rec.run_state.is_active() {
            continue;
        }
        active += 1;
        let found: Vec<i32> = qemus
            .iter()
            .filter(|v| v.name == rec.uuid.to_string())
            .map(|v| v.pid)
            .collect();
        let recorded = rec.pid.and_then(|p| i32::try_from(p).ok());
        match (found.as_slice(), recorded) {
            ([], _) => problems.push(Problem {
                code: "no_qemu".into(),
                message: format!("{} is {} but no QEMU of it runs", rec.name, rec.run_state),
            }),
            ([pid], Some(r)) if *pid == r => {}
            (pids, r) => problems.push(Problem {
                code: "pid_mismatch".into(),
                message: format!(
                    "{} records pid {r:?} but its QEMU processes are {pids:?}",
                    rec.name
                ),
            }),
        }
        if d.registry.running(rec.uuid).is_none() {
            problems.push(Problem {
                code: "unsupervised".into(),
                message: format!(
                    "{} is {} but broodd does not supervise a VM for it",
                    rec.name, rec.run_state
                ),
            });
        }
    }
    checked.insert("active_partitions".into(), active);
    // Templates' warm children are broodd's own, not partitions yet.
    let mut pooled = std::collections::HashSet::new();
    for t in d.feature::<Templates>().all() {
        pooled.extend(t.warm_uuids().await.into_iter().map(|u| u.to_string()));
    }
    checked.insert("warm_children".into(), pooled.len() as u64);
    for brood_engine::FoundVm { pid, name } in &qemus {
        if pooled.contains(name) {
            continue;
        }
        let owner = records.iter().find(|r| r.uuid.to_string() == *name);
        match owner {
            Some(r) if r.run_state.is_active() => {}
            Some(r) => problems.push(Problem {
                code: "stray_qemu".into(),
                message: format!("QEMU {pid} runs for {} which is {}", r.name, r.run_state),
            }),
            None => problems.push(Problem {
                code: "orphan_qemu".into(),
                message: format!("QEMU {pid} runs for {name}, which is no partition"),
            }),
        }
    }
    checked.insert("qemu_processes".into(), qemus.len() as u64);
    drop(guards);
    Ok(VerifyReport {
        ok: problems.is_empty(),
        problems,
        checked,
    })
}
