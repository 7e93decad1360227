//! Helpers shared by the integration tests: a ledger in a tempdir, a
//! partition with a demand, and the usual transactions.

#![allow(dead_code)]

use brood_ledger::{
    Ledger, Op, PartitionExpect, PartitionPatch, PartitionRecord, Resources, RunState, Stage, Tx,
    Uuid,
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

/// Construction -> provisioning -> operating, in one Tx.
pub fn operate_tx(uuid: Uuid) -> Tx {
    let stage = |to| Op::UpdatePartition {
        uuid,
        expect: PartitionExpect::default(),
        set: PartitionPatch {
            stage: Some(to),
            ..PartitionPatch::default()
        },
    };
    Tx::new(
        "test",
        "operate",
        vec![stage(Stage::Provisioning), stage(Stage::Operating)],
    )
}

/// Running (or starting) operating partition -> stopped template in one
/// update, giving back its vCPUs and NICs and keeping memory and disk.
pub fn templatize_tx(uuid: Uuid, demand: &Resources) -> Tx {
    let mut ops = vec![Op::UpdatePartition {
        uuid,
        expect: PartitionExpect {
            stage: Some(Stage::Operating),
            ..PartitionExpect::default()
        },
        set: PartitionPatch {
            stage: Some(Stage::Template),
            run_state: Some(RunState::Stopped),
            pid: Some(None),
            ..PartitionPatch::default()
        },
    }];
    ops.extend(Op::release(
        uuid,
        &Resources {
            memory_mib: 0,
            disk_gib: 0,
            ..*demand
        },
    ));
    Tx::new("test", "make template", ops)
}

/// A new partition record forked from `parent`, with `demand`.
pub fn child(name: &str, parent: Uuid, demand: Resources) -> PartitionRecord {
    let mut p = partition(name, demand);
    p.parent = Some(parent);
    p.stage = Stage::Operating;
    p
}
