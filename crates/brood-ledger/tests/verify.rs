#![allow(clippy::tests_outside_test_module)]
//! `verify` finds each kind of inconsistency planted with a raw SQLite
//! connection (foreign keys off, as a hand edit would be), and nothing in
//! a ledger changed only through transactions: one with a running, a
//! stopped and an empty partition, a template with a child, and a pool.

mod common;

use brood_ledger::{LedgerDb, Op, PartitionRecord, PoolKind, Resources, Tx, Uuid};
use common::{CAP, child, create_tx, operate_tx, partition, start_tx, templatize_tx};

struct Fixture {
    _dir: tempfile::TempDir,
    db: LedgerDb,
    raw: rusqlite::Connection,
    /// Running, holding its whole demand.
    running: PartitionRecord,
    /// Stopped, holding its disk.
    stopped: PartitionRecord,
    /// Holds nothing.
    empty: PartitionRecord,
    /// A stopped template, holding its memory and disk.
    template: PartitionRecord,
    /// Forked from `template`, stopped, holding value "a" of pool "macs".
    child: PartitionRecord,
}

const DEMAND: Resources = Resources {
    memory_mib: 256,
    vcpus: 1,
    disk_gib: 10,
    nics: 1,
};

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let mut db = LedgerDb::open(&path, CAP).expect("open");
    let running = partition("running", DEMAND);
    let stopped = partition("stopped", DEMAND);
    let empty = partition("empty", Resources::ZERO);
    for p in [&running, &stopped, &empty] {
        db.commit(create_tx(p)).expect("create");
    }
    db.commit(start_tx(running.uuid, &DEMAND)).expect("start");
    let template = partition("template", DEMAND);
    db.commit(create_tx(&template)).expect("create");
    db.commit(operate_tx(template.uuid)).expect("operate");
    db.commit(start_tx(template.uuid, &DEMAND)).expect("start");
    db.commit(templatize_tx(template.uuid, &DEMAND))
        .expect("template");
    let child = child("child", template.uuid, Resources::ZERO);
    let mut fork = create_tx(&child);
    fork.ops.extend([
        Op::CreatePool {
            name: "macs".into(),
            kind: PoolKind::Identity,
            meta: serde_json::json!({}),
            values: vec!["a".into(), "b".into()],
        },
        Op::TakeFromPool {
            pool: "macs".into(),
            holder: child.uuid,
            value: None,
        },
    ]);
    db.commit(fork).expect("fork");
    let raw = rusqlite::Connection::open(&path).expect("raw open");
    // The bundled SQLite turns foreign keys on by default; the sqlite3 shell does not.
    raw.execute_batch("PRAGMA foreign_keys = OFF")
        .expect("foreign keys off");
    assert!(db.verify().expect("verify").is_empty());
    Fixture {
        _dir: dir,
        db,
        raw,
        running,
        stopped,
        empty,
        template,
        child,
    }
}

fn codes(f: &Fixture, sql: &str) -> Vec<&'static str> {
    f.raw.execute_batch(sql).expect("plant");
    let mut codes: Vec<_> =
        f.db.verify()
            .expect("verify")
            .into_iter()
            .map(|p| p.code)
            .collect();
    codes.sort_unstable();
    codes
}

#[test]
fn clean_after_a_busy_history() {
    let f = fixture();
    let mut db = f.db;
    let extra = partition("extra", DEMAND);
    db.commit(create_tx(&extra)).expect("create");
    let mut ops = Op::release(
        extra.uuid,
        &Resources::of(brood_ledger::ResourceKind::DiskGib, 10),
    );
    ops.push(Op::DeletePartition {
        uuid: extra.uuid,
        expect: Default::default(),
    });
    db.commit(Tx::new("t", "rm", ops)).expect("delete");
    assert_eq!(db.verify().expect("verify"), []);
}

#[test]
fn holdings_not_summing_to_capacity() {
    let f = fixture();
    let got = codes(
        &f,
        "UPDATE holding SET amount = amount + 1 WHERE owner = 'available' AND kind = 'vcpus'",
    );
    assert_eq!(got, ["capacity_sum"]);
}

#[test]
fn missing_capacity_row() {
    let f = fixture();
    let got = codes(&f, "DELETE FROM capacity WHERE kind = 'nics'");
    assert_eq!(got, ["capacity_missing", "capacity_sum"]);
}

#[test]
fn holder_that_is_no_partition() {
    let f = fixture();
    let sql = format!(
        "UPDATE holding SET amount = amount - 2 WHERE owner = 'available' AND kind = 'nics';
         INSERT INTO holding (owner, kind, amount) VALUES ('{}', 'nics', 1), ('ghost', 'nics', 1);",
        Uuid::new_v4()
    );
    assert_eq!(codes(&f, &sql), ["orphan_holding", "orphan_holding"]);
}

#[test]
fn partition_holding_too_little_disk() {
    let f = fixture();
    let sql = format!(
        "UPDATE holding SET amount = amount - 1 WHERE owner = '{}' AND kind = 'disk_gib';
         UPDATE holding SET amount = amount + 1 WHERE owner = 'available' AND kind = 'disk_gib';",
        f.stopped.uuid
    );
    assert_eq!(codes(&f, &sql), ["holding_mismatch"]);
}

#[test]
fn stopped_partition_holding_memory() {
    let f = fixture();
    let sql = format!(
        "INSERT INTO holding (owner, kind, amount) VALUES ('{}', 'memory_mib', 256);
         UPDATE holding SET amount = amount - 256 WHERE owner = 'available' AND kind = 'memory_mib';",
        f.stopped.uuid
    );
    assert_eq!(codes(&f, &sql), ["holding_mismatch"]);
}

#[test]
fn running_partition_marked_stopped() {
    let f = fixture();
    // Memory, vCPUs and NICs are now held by a stopped partition.
    let sql = format!(
        "UPDATE partition SET run_state = 'stopped' WHERE uuid = '{}'",
        f.running.uuid
    );
    assert_eq!(
        codes(&f, &sql),
        ["holding_mismatch", "holding_mismatch", "holding_mismatch"]
    );
}

#[test]
fn decommissioned_partition_holding_disk() {
    let f = fixture();
    let sql = format!(
        "UPDATE partition SET stage = 'decommissioned' WHERE uuid = '{}'",
        f.stopped.uuid
    );
    assert_eq!(codes(&f, &sql), ["holding_mismatch"]);
}

#[test]
fn pid_on_an_inactive_partition() {
    let f = fixture();
    let sql = format!(
        "UPDATE partition SET pid = 4242 WHERE uuid = '{}'",
        f.stopped.uuid
    );
    assert_eq!(codes(&f, &sql), ["pid_while_inactive"]);
    let sql = format!(
        "UPDATE partition SET pid = 4243 WHERE uuid = '{}'",
        f.running.uuid
    );
    assert_eq!(
        codes(&f, &sql),
        ["pid_while_inactive"],
        "a running partition may have a pid"
    );
}

#[test]
fn undecodable_partition_row() {
    let f = fixture();
    let sql = format!(
        "UPDATE partition SET uuid = 'not-a-uuid' WHERE uuid = '{}'",
        f.empty.uuid
    );
    assert_eq!(codes(&f, &sql), ["bad_row"]);
}

#[test]
fn template_not_holding_its_memory() {
    let f = fixture();
    let sql = format!(
        "DELETE FROM holding WHERE owner = '{}' AND kind = 'memory_mib';
         UPDATE holding SET amount = amount + 256 WHERE owner = 'available' AND kind = 'memory_mib';",
        f.template.uuid
    );
    assert_eq!(codes(&f, &sql), ["holding_mismatch"]);
}

#[test]
fn template_holding_vcpus() {
    let f = fixture();
    let sql = format!(
        "INSERT INTO holding (owner, kind, amount) VALUES ('{}', 'vcpus', 1);
         UPDATE holding SET amount = amount - 1 WHERE owner = 'available' AND kind = 'vcpus';",
        f.template.uuid
    );
    assert_eq!(codes(&f, &sql), ["holding_mismatch"]);
}

#[test]
fn running_template() {
    let f = fixture();
    // Its holdings follow the template rule whatever the run state.
    let sql = format!(
        "UPDATE partition SET run_state = 'running' WHERE uuid = '{}'",
        f.template.uuid
    );
    assert_eq!(codes(&f, &sql), ["active_template"]);
}

#[test]
fn parent_that_is_no_partition() {
    let f = fixture();
    let sql = format!(
        "UPDATE partition SET parent = '{}' WHERE uuid = '{}'",
        Uuid::new_v4(),
        f.empty.uuid
    );
    assert_eq!(codes(&f, &sql), ["missing_parent"]);
}

#[test]
fn pool_value_held_by_no_partition() {
    let f = fixture();
    let sql = format!(
        "UPDATE pool_item SET holder = '{}' WHERE value = 'b'",
        Uuid::new_v4()
    );
    assert_eq!(codes(&f, &sql), ["pool_holder_missing"]);
}

#[test]
fn pool_items_without_their_pool() {
    let f = fixture();
    assert_eq!(
        codes(&f, "DELETE FROM pool WHERE name = 'macs'"),
        ["orphan_pool_item"]
    );
}

#[test]
fn a_value_cannot_be_stored_twice() {
    let f = fixture();
    let e = f.raw.execute_batch(&format!(
        "INSERT INTO pool_item (pool, seq, value, holder) VALUES ('macs', 9, 'a', '{}')",
        f.stopped.uuid
    ));
    assert!(e.is_err(), "duplicate (pool, value) accepted");
    assert_eq!(f.db.verify().expect("verify"), []);
    assert_eq!(
        f.db.items_held_by(f.child.uuid).expect("held"),
        [("macs".to_owned(), "a".to_owned())]
    );
}
