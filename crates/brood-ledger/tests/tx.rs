#![allow(clippy::tests_outside_test_module)]
//! Transactions through the async `Ledger`: before-images, atomicity,
//! transitions, names, deletes, the audit log, reopening and concurrency.

mod common;

use brood_ledger::{
    Ledger, LedgerError, Op, Owner, PartitionExpect, PartitionPatch, ResourceKind, Resources,
    RunState, Stage, Tx, TxId,
};
use common::{CAP, create_tx, ledger, partition, start_tx, stop_tx};

fn vcpu_move(to: Owner, amount: u64, expect_from: Option<u64>, expect_to: Option<u64>) -> Op {
    Op::Move {
        kind: ResourceKind::Vcpus,
        from: Owner::Available,
        to,
        amount,
        expect_from,
        expect_to,
    }
}

#[tokio::test]
async fn move_with_matching_before_images_applies() {
    let (_d, l) = ledger().await;
    let p = partition("a", Resources::ZERO);
    let u = p.uuid;
    l.commit(create_tx(&p)).await.expect("create");
    let op = vcpu_move(Owner::Partition(u), 3, Some(4), Some(0));
    l.commit(Tx::new("t", "grab", vec![op]))
        .await
        .expect("move");
    assert_eq!(l.held_by(Owner::Partition(u)).await.expect("read").vcpus, 3);
    assert_eq!(l.held_by(Owner::Available).await.expect("read").vcpus, 1);
}

#[tokio::test]
async fn mismatching_before_image_applies_nothing() {
    let (_d, l) = ledger().await;
    let p = partition("a", Resources::ZERO);
    let u = p.uuid;
    l.commit(create_tx(&p)).await.expect("create");
    let before = l.holdings().await.expect("holdings");
    let last = l.last_tx_id().await.expect("last");
    let ops = vec![
        vcpu_move(Owner::Partition(u), 1, Some(4), Some(0)),
        // Sees the first op's result: available now holds 3, not 4.
        vcpu_move(Owner::Partition(u), 1, Some(4), None),
    ];
    let e = l
        .commit(Tx::new("t", "stale", ops))
        .await
        .expect_err("stale");
    match e {
        LedgerError::Precondition {
            op,
            expected,
            actual,
            ..
        } => assert_eq!((op, expected.as_str(), actual.as_str()), (1, "4", "3")),
        other => panic!("wrong error {other}"),
    }
    assert_eq!(l.holdings().await.expect("holdings"), before);
    assert_eq!(l.last_tx_id().await.expect("last"), last);
}

#[tokio::test]
async fn insufficient_applies_nothing_and_logs_nothing() {
    let (_d, l) = ledger().await;
    let p = partition("a", Resources::ZERO);
    let u = p.uuid;
    l.commit(create_tx(&p)).await.expect("create");
    let before = l.holdings().await.expect("holdings");
    let log = l.log(None, 100).await.expect("log");
    let mut ops = Op::reserve(u, &Resources::of(ResourceKind::MemoryMib, 512));
    ops.extend(Op::reserve(u, &Resources::of(ResourceKind::Vcpus, 5)));
    let e = l
        .commit(Tx::new("t", "greedy", ops))
        .await
        .expect_err("too many");
    assert!(
        matches!(
            e,
            LedgerError::Insufficient {
                kind: ResourceKind::Vcpus,
                owner: Owner::Available,
                have: 4,
                want: 5
            }
        ),
        "{e}"
    );
    assert_eq!(l.holdings().await.expect("holdings"), before);
    assert_eq!(l.log(None, 100).await.expect("log"), log);
}

#[tokio::test]
async fn insert_and_moves_are_atomic() {
    let (_d, l) = ledger().await;
    let big = partition(
        "big",
        Resources {
            disk_gib: 101,
            ..Resources::ZERO
        },
    );
    let e = l
        .commit(create_tx(&big))
        .await
        .expect_err("disk exceeds capacity");
    assert!(matches!(e, LedgerError::Insufficient { .. }), "{e}");
    assert!(l.partition_by_name("big").await.expect("read").is_none());

    let ok = partition(
        "ok",
        Resources {
            disk_gib: 40,
            ..Resources::ZERO
        },
    );
    let id = l.commit(create_tx(&ok)).await.expect("create");
    let rec = l
        .partition_by_uuid(ok.uuid)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(rec.generation, 1);
    assert_eq!(rec.created_at, rec.updated_at);
    assert!(rec.created_at.ends_with('Z'), "{}", rec.created_at);
    assert_eq!(
        l.held_by(Owner::Partition(ok.uuid))
            .await
            .expect("read")
            .disk_gib,
        40
    );
    let entry = l
        .log_newest(None, 1)
        .await
        .expect("log")
        .pop()
        .expect("entry");
    assert_eq!(entry.id, id.id);
    assert_eq!(entry.reason, "create ok");
    assert!(l.verify().await.expect("verify").is_empty());
}

#[tokio::test]
async fn illegal_transition_is_refused() {
    let (_d, l) = ledger().await;
    let p = partition("a", Resources::ZERO);
    let u = p.uuid;
    l.commit(create_tx(&p)).await.expect("create");
    let to = |run_state, stage| Op::UpdatePartition {
        uuid: u,
        expect: PartitionExpect::default(),
        set: PartitionPatch {
            run_state,
            stage,
            pid: Some(Some(9)),
            ..PartitionPatch::default()
        },
    };
    for (op, want) in [
        (
            to(Some(RunState::Paused), None),
            "run state: cannot go from stopped to paused",
        ),
        (
            to(Some(RunState::Stopped), None),
            "run state: cannot go from stopped to stopped",
        ),
        (
            to(None, Some(Stage::Template)),
            "stage: cannot go from construction to template",
        ),
    ] {
        let e = l
            .commit(Tx::new("t", "bad", vec![op]))
            .await
            .expect_err("illegal");
        let LedgerError::Transition { uuid, refused } = e else {
            panic!("wrong error {e}");
        };
        assert_eq!((uuid, refused.to_string().as_str()), (u, want));
    }
    let rec = l.partition_by_uuid(u).await.expect("read").expect("exists");
    assert_eq!(
        (rec.run_state, rec.stage, rec.pid, rec.generation),
        (RunState::Stopped, Stage::Construction, None, 1)
    );

    let e = l
        .commit(Tx::new(
            "t",
            "stale",
            vec![Op::UpdatePartition {
                uuid: u,
                expect: PartitionExpect {
                    generation: Some(7),
                    ..PartitionExpect::default()
                },
                set: PartitionPatch::default(),
            }],
        ))
        .await
        .expect_err("generation mismatch");
    assert!(matches!(e, LedgerError::Precondition { .. }), "{e}");
}

#[tokio::test]
async fn names_are_unique() {
    let (_d, l) = ledger().await;
    l.commit(create_tx(&partition("a", Resources::ZERO)))
        .await
        .expect("create");
    let e = l
        .commit(create_tx(&partition("a", Resources::ZERO)))
        .await
        .expect_err("duplicate");
    assert!(
        matches!(&e, LedgerError::NameTaken { name } if name == "a"),
        "{e}"
    );
    assert_eq!(l.all_partitions().await.expect("read").len(), 1);
}

#[tokio::test]
async fn delete_is_refused_while_holding() {
    let (_d, l) = ledger().await;
    let demand = Resources {
        disk_gib: 10,
        ..Resources::ZERO
    };
    let p = partition("a", demand);
    let u = p.uuid;
    l.commit(create_tx(&p)).await.expect("create");
    let delete = || Op::DeletePartition {
        uuid: u,
        expect: PartitionExpect::default(),
    };
    let e = l
        .commit(Tx::new("t", "rm", vec![delete()]))
        .await
        .expect_err("holds");
    assert!(
        matches!(e, LedgerError::StillHolds { held, .. } if held == demand),
        "{e}"
    );
    let mut ops = Op::release(u, &demand);
    ops.push(delete());
    l.commit(Tx::new("t", "rm", ops))
        .await
        .expect("release and delete");
    assert!(l.partition_by_uuid(u).await.expect("read").is_none());
    assert_eq!(l.held_by(Owner::Available).await.expect("read"), CAP);
    assert!(l.verify().await.expect("verify").is_empty());
}

#[tokio::test]
async fn start_and_stop_keep_the_ledger_consistent() {
    let (_d, l) = ledger().await;
    let demand = Resources {
        memory_mib: 256,
        vcpus: 1,
        disk_gib: 5,
        nics: 1,
    };
    let p = partition("a", demand);
    l.commit(create_tx(&p)).await.expect("create");
    let stage = |from, to| Op::UpdatePartition {
        uuid: p.uuid,
        expect: PartitionExpect {
            stage: Some(from),
            ..PartitionExpect::default()
        },
        set: PartitionPatch {
            stage: Some(to),
            ..PartitionPatch::default()
        },
    };
    l.commit(Tx::new(
        "t",
        "provision",
        vec![
            stage(Stage::Construction, Stage::Provisioning),
            stage(Stage::Provisioning, Stage::Operating),
        ],
    ))
    .await
    .expect("stages");
    l.commit(start_tx(p.uuid, &demand)).await.expect("start");
    assert_eq!(
        l.held_by(Owner::Partition(p.uuid)).await.expect("read"),
        demand
    );
    assert!(l.verify().await.expect("verify").is_empty());
    l.commit(stop_tx(p.uuid, &demand)).await.expect("stop");
    let rec = l
        .partition_by_uuid(p.uuid)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        (rec.stage, rec.run_state, rec.generation),
        (Stage::Operating, RunState::Stopped, 5)
    );
    assert!(l.verify().await.expect("verify").is_empty());
}

#[tokio::test]
async fn set_capacity_moves_available_and_refuses_below_use() {
    let (_d, l) = ledger().await;
    let p = partition(
        "a",
        Resources {
            disk_gib: 60,
            ..Resources::ZERO
        },
    );
    l.commit(create_tx(&p)).await.expect("create");
    let bigger = Resources { vcpus: 8, ..CAP };
    l.set_capacity(bigger).await.expect("grow");
    assert_eq!(l.capacity().await.expect("cap"), bigger);
    assert_eq!(l.held_by(Owner::Available).await.expect("read").vcpus, 8);
    let e = l
        .set_capacity(Resources {
            disk_gib: 50,
            ..bigger
        })
        .await
        .expect_err("in use");
    assert!(
        matches!(
            e,
            LedgerError::CapacityInUse {
                kind: ResourceKind::DiskGib,
                capacity: 50,
                in_use: 60
            }
        ),
        "{e}"
    );
    assert!(l.verify().await.expect("verify").is_empty());
}

#[tokio::test]
async fn audit_log_records_images_and_pages_both_ways() {
    let (_d, l) = ledger().await;
    let mut ids = vec![TxId(1)];
    for i in 0..5 {
        let p = partition(&format!("p{i}"), Resources::ZERO);
        ids.push(l.commit(create_tx(&p)).await.expect("create").id);
    }
    assert_eq!(ids, (1..=6).map(TxId).collect::<Vec<_>>());
    let page1 = l.log(None, 4).await.expect("log");
    let page2 = l.log(Some(page1[3].id.0), 4).await.expect("log");
    let got: Vec<_> = page1.iter().chain(&page2).map(|e| e.id).collect();
    assert_eq!(got, ids);
    let newest = l.log_newest(None, 2).await.expect("log");
    assert_eq!(newest.iter().map(|e| e.id.0).collect::<Vec<_>>(), [6, 5]);
    let older = l.log_newest(Some(5), 10).await.expect("log");
    assert_eq!(older.first().map(|e| e.id), Some(TxId(4)));
    assert_eq!(older.len(), 4);

    let names: Vec<_> = l
        .partitions(None, 2)
        .await
        .expect("page")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["p0", "p1"]);
    let names: Vec<_> = l
        .partitions(Some("p1".into()), 10)
        .await
        .expect("page")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["p2", "p3", "p4"]);
}

#[tokio::test]
async fn audit_log_refuses_update_and_delete() {
    let (dir, l) = ledger().await;
    l.commit(Tx::new("t", "note", vec![]))
        .await
        .expect("commit");
    let raw = rusqlite::Connection::open(dir.path().join("ledger.db")).expect("raw open");
    for sql in [
        "UPDATE audit SET actor = 'mallory'",
        "DELETE FROM audit WHERE id = 1",
    ] {
        let e = raw.execute(sql, []).expect_err("append-only");
        assert!(e.to_string().contains("append-only"), "{e}");
    }
    let log = l.log(None, 10).await.expect("log");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].actor, "t");
}

#[tokio::test]
async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    let l = Ledger::open(&path, CAP).await.expect("open");
    let demand = Resources {
        memory_mib: 512,
        vcpus: 2,
        disk_gib: 10,
        nics: 1,
    };
    let p = partition("keep", demand);
    l.commit(create_tx(&p)).await.expect("create");
    l.commit(start_tx(p.uuid, &demand)).await.expect("start");
    let holdings = l.holdings().await.expect("holdings");
    let log = l.log(None, 100).await.expect("log");
    let rec = l.partition_by_uuid(p.uuid).await.expect("read");
    l.close().await.expect("close");

    // A different initial capacity is ignored on an existing database.
    let l = Ledger::open(&path, Resources::ZERO).await.expect("reopen");
    assert_eq!(l.capacity().await.expect("cap"), CAP);
    assert_eq!(l.holdings().await.expect("holdings"), holdings);
    assert_eq!(l.log(None, 100).await.expect("log"), log);
    assert_eq!(l.partition_by_uuid(p.uuid).await.expect("read"), rec);
    assert!(l.verify().await.expect("verify").is_empty());
    let clone = l.clone();
    l.close().await.expect("close");
    assert!(matches!(clone.capacity().await, Err(LedgerError::Closed)));
    assert!(matches!(
        clone.commit(Tx::new("t", "x", vec![])).await,
        Err(LedgerError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_never_exceed_capacity() {
    let (_d, l) = ledger().await;
    let want = Resources::of(ResourceKind::MemoryMib, 256);
    let watcher = {
        let l = l.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                let held: u64 = l
                    .holdings()
                    .await
                    .expect("holdings")
                    .iter()
                    .filter(|h| h.kind == ResourceKind::MemoryMib)
                    .map(|h| h.amount)
                    .sum();
                assert_eq!(held, CAP.memory_mib);
                tokio::task::yield_now().await;
            }
        })
    };
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let l = l.clone();
            tokio::spawn(async move {
                let p = partition(&format!("c{i:02}"), Resources::ZERO);
                let mut ops = vec![Op::InsertPartition(p.clone())];
                ops.extend(Op::reserve(p.uuid, &want));
                l.commit(Tx::new("t", "reserve", ops)).await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(LedgerError::Insufficient {
                kind: ResourceKind::MemoryMib,
                owner: Owner::Available,
                have: 0,
                want: 256,
            }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    watcher.await.expect("watcher");
    assert_eq!(ok, 4);
    assert_eq!(
        l.held_by(Owner::Available).await.expect("read").memory_mib,
        0
    );
    assert_eq!(l.all_partitions().await.expect("read").len(), 4);
    // 1 initial capacity + 4 reservations.
    assert_eq!(l.last_tx_id().await.expect("last"), Some(TxId(5)));
}
