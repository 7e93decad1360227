//! Helpers shared by the integration tests: a ledger in a tempdir, a
//! partition with a demand, and the usual transactions.

#![allow(dead_code)]

use brood_ledger::{
    Ledger, Op, PartitionExpect, PartitionPatch, PartitionRecord, Resources, RunState, Tx, Uuid,
};

/// The capacity every test starts with.
pub const CAP: Resources = Resources {
    memory_mib: 1024,
    vcpus: 4,
    disk_gib: 100,
    nics: 8,
};

/// A fresh ledger in its own tempdir (kept alive by the returned guard).
pub async fn ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = Ledger::open(dir.path().join("ledger.db"), CAP)
        .await
        .expect("open ledger");
    (dir, l)
}

/// A new partition record with `demand`.
pub fn partition(name: &str, demand: Resources) -> PartitionRecord {
    let mut p = PartitionRecord::new(name);
    p.demand = demand;
    p
}

/// Insert `p` and reserve its disk.
pub fn create_tx(p: &PartitionRecord) -> Tx {
    let mut ops = vec![Op::InsertPartition(p.clone())];
    ops.extend(Op::reserve(
        p.uuid,
        &Resources {
            disk_gib: p.demand.disk_gib,
            ..Resources::ZERO
        },
    ));
    Tx::new("test", format!("create {}", p.name), ops)
}

/// The demand's memory, vCPUs and NICs (what a start reserves).
pub fn active_part(d: &Resources) -> Resources {
    Resources { disk_gib: 0, ..*d }
}

/// Stopped -> starting, reserving the active part of `demand`.
pub fn start_tx(uuid: Uuid, demand: &Resources) -> Tx {
    let mut ops = vec![Op::UpdatePartition {
        uuid,
        expect: PartitionExpect {
            run_state: Some(RunState::Stopped),
            ..PartitionExpect::default()
        },
        set: PartitionPatch {
            run_state: Some(RunState::Starting),
            ..PartitionPatch::default()
        },
    }];
    ops.extend(Op::reserve(uuid, &active_part(demand)));
    Tx::new("test", "start", ops)
}

/// Starting -> stopped, releasing the active part of `demand`.
pub fn stop_tx(uuid: Uuid, demand: &Resources) -> Tx {
    let mut ops = vec![Op::UpdatePartition {
        uuid,
        expect: PartitionExpect {
            run_state: Some(RunState::Starting),
            ..PartitionExpect::default()
        },
        set: PartitionPatch {
            run_state: Some(RunState::Stopped),
            ..PartitionPatch::default()
        },
    }];
    ops.extend(Op::release(uuid, &active_part(demand)));
    Tx::new("test", "stop", ops)
}
