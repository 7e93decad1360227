#![allow(clippy::tests_outside_test_module)]
//! Lineage and templates: children name their template as parent, a
//! partition with descendants cannot be deleted, a template holds its
//! memory and disk and never runs, fork details are patched and audited.

mod common;

use brood_ledger::{
    LedgerError, Op, Owner, PartitionExpect, PartitionPatch, Resources, RunState, Stage, Tx, Uuid,
};
use common::{child, create_tx, ledger, operate_tx, partition, start_tx, templatize_tx};
use serde_json::json;

const DEMAND: Resources = Resources {
    memory_mib: 256,
    vcpus: 1,
    disk_gib: 10,
    nics: 1,
};

/// A child's lineage with index `index` and address `ipv4`.
fn child_lineage(index: usize, ipv4: Option<&str>) -> brood_ledger::Lineage {
    brood_ledger::Lineage::Child(Box::new(brood_ledger::ChildLineage {
        index: u32::try_from(index).expect("index"),
        status: brood_ledger::ChildStatus::Pending,
        error: None,
        macs: vec!["52:54:00:00:00:01".into()],
        ipv4: ipv4.map(str::to_owned),
        gateway: None,
        identity: None,
        identity_pool: None,
        ip_pool: None,
        values: Default::default(),
        persistent: false,
        machine_id: "0".repeat(32),
        running_ms: None,
        ready_ms: None,
    }))
}

/// A running partition made a template; returns the ledger and its uuid.
async fn template() -> (tempfile::TempDir, brood_ledger::Ledger, Uuid) {
    let (dir, l) = ledger().await;
    let p = partition("tpl", DEMAND);
    l.commit(create_tx(&p)).await.expect("create");
    l.commit(operate_tx(p.uuid)).await.expect("operate");
    l.commit(start_tx(p.uuid, &DEMAND)).await.expect("start");
    let running = PartitionPatch {
        run_state: Some(RunState::Running),
        pid: Some(Some(4242)),
        ..PartitionPatch::default()
    };
    l.commit(Tx::new(
        "t",
        "running",
        vec![Op::UpdatePartition {
            uuid: p.uuid,
            expect: PartitionExpect::default(),
            set: running,
        }],
    ))
    .await
    .expect("running");
    l.commit(templatize_tx(p.uuid, &DEMAND))
        .await
        .expect("running -> stopped and operating -> template in one update");
    (dir, l, p.uuid)
}

fn delete(uuid: Uuid) -> Op {
    Op::DeletePartition {
        uuid,
        expect: PartitionExpect::default(),
    }
}

#[tokio::test]
async fn running_partition_becomes_a_template_holding_memory_and_disk() {
    let (_d, l, t) = template().await;
    let rec = l.partition_by_uuid(t).await.expect("read").expect("exists");
    assert_eq!(
        (rec.stage, rec.run_state, rec.pid),
        (Stage::Template, RunState::Stopped, None)
    );
    assert_eq!(
        l.held_by(Owner::Partition(t)).await.expect("held"),
        Resources {
            memory_mib: 256,
            disk_gib: 10,
            ..Resources::ZERO
        }
    );
    assert_eq!(l.verify().await.expect("verify"), []);
    let c = &l.log_newest(None, 1).await.expect("log")[0].changes[0];
    assert_eq!(c["before"]["stage"], "operating");
    assert_eq!(c["after"]["stage"], "template");
    assert_eq!(c["before"]["run_state"], "running");
    assert_eq!(c["after"]["run_state"], "stopped");
    assert_eq!(c["before"]["pid"], 4242);
    assert_eq!(c["after"]["pid"], serde_json::Value::Null);
}

#[tokio::test]
async fn stop_then_template_in_two_ops_works_the_other_order_does_not() {
    let (_d, l) = ledger().await;
    let p = partition("a", DEMAND);
    l.commit(create_tx(&p)).await.expect("create");
    l.commit(operate_tx(p.uuid)).await.expect("operate");
    l.commit(start_tx(p.uuid, &DEMAND)).await.expect("start");
    let set = |set| Op::UpdatePartition {
        uuid: p.uuid,
        expect: PartitionExpect::default(),
        set,
    };
    let stop = set(PartitionPatch {
        run_state: Some(RunState::Stopped),
        ..PartitionPatch::default()
    });
    let freeze = set(PartitionPatch {
        stage: Some(Stage::Template),
        ..PartitionPatch::default()
    });
    let last = l.last_tx_id().await.expect("last");
    let e = l
        .commit(Tx::new(
            "t",
            "template first",
            vec![freeze.clone(), stop.clone()],
        ))
        .await
        .expect_err("template while starting");
    let LedgerError::Transition { uuid, refused } = e else {
        panic!("wrong error {e}");
    };
    assert_eq!(uuid, p.uuid);
    assert_eq!(
        refused.to_string(),
        "stage while starting: cannot go from operating to template"
    );
    assert_eq!(l.last_tx_id().await.expect("last"), last);

    let mut ops = vec![stop, freeze];
    ops.extend(Op::release(
        p.uuid,
        &Resources {
            vcpus: 1,
            nics: 1,
            ..Resources::ZERO
        },
    ));
    l.commit(Tx::new("t", "stop, then template", ops))
        .await
        .expect("stop first");
    let rec = l
        .partition_by_uuid(p.uuid)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(rec.stage, Stage::Template);
    assert_eq!(l.verify().await.expect("verify"), []);
}

#[tokio::test]
async fn a_template_never_starts() {
    let (_d, l, t) = template().await;
    let e = l
        .commit(start_tx(t, &DEMAND))
        .await
        .expect_err("template started");
    assert!(
        matches!(&e, LedgerError::Transition { refused, .. }
            if refused.to_string() == "run state of a template: cannot go from stopped to starting"),
        "{e}"
    );
    let mut running = partition("inserted", Resources::ZERO);
    running.stage = Stage::Template;
    running.run_state = RunState::Running;
    let e = l
        .commit(Tx::new("t", "r", vec![Op::InsertPartition(running)]))
        .await
        .expect_err("running template inserted");
    assert!(matches!(e, LedgerError::InvalidOp { op: 0, .. }), "{e}");
}

#[tokio::test]
async fn children_name_their_template_and_keep_it_from_deletion() {
    let (_d, l, t) = template().await;
    let charge = Resources {
        memory_mib: 64,
        vcpus: 1,
        ..Resources::ZERO
    };
    let mut kids = Vec::new();
    for name in ["kid-b", "kid-a"] {
        let mut c = child(name, t, charge);
        c.lineage = Some(child_lineage(kids.len(), None));
        l.commit(create_tx(&c)).await.expect("fork");
        kids.push(c);
    }
    let got = l.children_of(t).await.expect("children");
    let names: Vec<_> = got.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kid-a", "kid-b"]);
    assert!(got.iter().all(|c| c.parent == Some(t)));
    assert_eq!(got[1].lineage, kids[0].lineage);
    assert!(l.children_of(kids[0].uuid).await.expect("none").is_empty());

    // A derived template: a child made a template keeps its parent.
    let grandchild = child("grandchild", kids[0].uuid, Resources::ZERO);
    l.commit(create_tx(&grandchild)).await.expect("grandchild");

    let mut ops = Op::release(
        t,
        &Resources {
            memory_mib: 256,
            disk_gib: 10,
            ..Resources::ZERO
        },
    );
    ops.push(delete(t));
    let before = l.holdings().await.expect("holdings");
    let e = l
        .commit(Tx::new("t", "rm template", ops.clone()))
        .await
        .expect_err("has children");
    assert!(
        matches!(e, LedgerError::HasDescendants { uuid, count: 2 } if uuid == t),
        "{e}"
    );
    assert_eq!(l.holdings().await.expect("holdings"), before);

    let e = l
        .commit(Tx::new("t", "rm kid-b", vec![delete(kids[0].uuid)]))
        .await
        .expect_err("has a child");
    assert!(
        matches!(e, LedgerError::HasDescendants { count: 1, .. }),
        "{e}"
    );

    let mut rm_all = vec![delete(grandchild.uuid)];
    rm_all.extend(kids.iter().map(|k| delete(k.uuid)));
    rm_all.extend(ops);
    l.commit(Tx::new("t", "rm family", rm_all))
        .await
        .expect("leaves first, then the template");
    assert!(l.all_partitions().await.expect("read").is_empty());
    assert_eq!(l.verify().await.expect("verify"), []);
}

#[tokio::test]
async fn parent_must_exist_and_never_changes() {
    let (_d, l, t) = template().await;
    let ghost = Uuid::new_v4();
    let orphan = child("orphan", ghost, Resources::ZERO);
    let last = l.last_tx_id().await.expect("last");
    let e = l
        .commit(create_tx(&orphan))
        .await
        .expect_err("unknown parent");
    assert!(
        matches!(e, LedgerError::NoSuchPartition { uuid } if uuid == ghost),
        "{e}"
    );
    assert_eq!(l.last_tx_id().await.expect("last"), last);

    let c = child("c", t, Resources::ZERO);
    l.commit(create_tx(&c)).await.expect("fork");
    let patch = PartitionPatch {
        lineage: Some(Some(child_lineage(0, Some("10.0.0.2/24")))),
        name: Some("c2".into()),
        ..PartitionPatch::default()
    };
    l.commit(Tx::new(
        "t",
        "r",
        vec![Op::UpdatePartition {
            uuid: c.uuid,
            expect: PartitionExpect::default(),
            set: patch,
        }],
    ))
    .await
    .expect("patch fork and name");
    let rec = l
        .partition_by_uuid(c.uuid)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(rec.parent, Some(t));
    assert_eq!(rec.name, "c2");
    assert_eq!(rec.lineage, Some(child_lineage(0, Some("10.0.0.2/24"))));
    let change = &l.log_newest(None, 1).await.expect("log")[0].changes[0];
    assert_eq!(change["before"]["fork"], serde_json::Value::Null);
    assert_eq!(change["after"]["fork"]["ipv4"], json!("10.0.0.2/24"));
    assert_eq!(change["after"]["name"], "c2");
    assert!(change["after"].get("parent").is_none());

    let e = l
        .commit(Tx::new(
            "t",
            "rename onto the template",
            vec![Op::UpdatePartition {
                uuid: c.uuid,
                expect: PartitionExpect::default(),
                set: PartitionPatch {
                    name: Some("tpl".into()),
                    ..PartitionPatch::default()
                },
            }],
        ))
        .await
        .expect_err("name taken");
    assert!(matches!(e, LedgerError::NameTaken { .. }), "{e}");
}

#[tokio::test]
async fn foreign_key_backs_the_descendant_check() {
    let (dir, l, t) = template().await;
    l.commit(create_tx(&child("c", t, Resources::ZERO)))
        .await
        .expect("fork");
    let raw = rusqlite::Connection::open(dir.path().join("ledger.db")).expect("raw open");
    raw.execute_batch("PRAGMA foreign_keys = ON; DELETE FROM holding WHERE owner <> 'available'")
        .expect("drop holdings");
    let e = raw
        .execute("DELETE FROM partition WHERE uuid = ?1", [t.to_string()])
        .expect_err("parent row deleted");
    assert!(e.to_string().contains("FOREIGN KEY"), "{e}");
    assert_eq!(l.children_of(t).await.expect("children").len(), 1);
}
