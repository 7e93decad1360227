#![allow(clippy::tests_outside_test_module)]
//! Pools of identities through the async `Ledger`: create and delete,
//! take (named, lowest free, exhausted, concurrent), return, and deleting
//! a partition that holds pool items.

mod common;

use std::collections::HashSet;

use brood_ledger::{
    Ledger, LedgerError, Op, PartitionExpect, PartitionRecord, PoolItem, PoolKind, Resources, Tx,
    TxId, Uuid,
};
use common::{create_tx, ledger, partition};
use serde_json::json;

fn create_pool(name: &str, values: &[&str]) -> Op {
    Op::CreatePool {
        name: name.into(),
        kind: PoolKind::Identity,
        meta: json!({"prefix": "52:54:00"}),
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    }
}

fn take(pool: &str, holder: Uuid, value: Option<&str>) -> Op {
    Op::TakeFromPool {
        pool: pool.into(),
        holder,
        value: value.map(str::to_owned),
    }
}

fn tx(ops: Vec<Op>) -> Tx {
    Tx::new("test", "pool", ops)
}

async fn commit(l: &Ledger, ops: Vec<Op>) -> Result<TxId, LedgerError> {
    l.commit(tx(ops)).await.map(|c| c.id)
}

/// A ledger with pool `macs` of a, b, c and partitions p0 and p1.
async fn fixture() -> (tempfile::TempDir, Ledger, [PartitionRecord; 2]) {
    let (d, l) = ledger().await;
    let ps = [
        partition("p0", Resources::ZERO),
        partition("p1", Resources::ZERO),
    ];
    let mut ops = vec![create_pool("macs", &["a", "b", "c"])];
    ops.extend(ps.iter().map(|p| Op::InsertPartition(p.clone())));
    commit(&l, ops).await.expect("fixture");
    (d, l, ps)
}

async fn last_change(l: &Ledger) -> serde_json::Value {
    l.log_newest(None, 1).await.expect("log")[0].changes[0].clone()
}

#[tokio::test]
async fn create_lists_and_audits_the_pool() {
    let (_d, l, _) = fixture().await;
    let info = l.pool("macs").await.expect("read").expect("exists");
    assert_eq!(
        (info.kind, info.size, info.free),
        (PoolKind::Identity, 3, 3)
    );
    assert_eq!(info.meta, json!({"prefix": "52:54:00"}));
    assert!(info.created_at.ends_with('Z'));
    assert_eq!(l.pools().await.expect("pools"), std::slice::from_ref(&info));
    assert_eq!(l.pool("nope").await.expect("read"), None);
    let items = l.pool_items("macs").await.expect("items");
    let values: Vec<_> = items.iter().map(|i| i.value.as_str()).collect();
    assert_eq!(values, ["a", "b", "c"]);
    assert!(items.iter().all(|i| i.holder.is_none()));
    assert!(l.pool_items("nope").await.expect("items").is_empty());

    let log = l.log_newest(None, 1).await.expect("log");
    let c = &log[0].changes[0];
    assert_eq!(c["op"], "create_pool");
    assert_eq!(c["name"], "macs");
    assert_eq!(c["after"]["kind"], "identity");
    assert_eq!(c["after"]["values"], json!(["a", "b", "c"]));
    assert_eq!(c["after"]["created_at"], info.created_at.as_str());

    let e = commit(&l, vec![create_pool("macs", &["z"])])
        .await
        .expect_err("exists");
    assert!(
        matches!(&e, LedgerError::PoolExists { name } if name == "macs"),
        "{e}"
    );
}

#[tokio::test]
async fn create_refuses_bad_names_and_values() {
    let (_d, l) = ledger().await;
    let long = "v".repeat(257);
    let bad = [
        create_pool("Macs", &["a"]),
        create_pool("", &["a"]),
        create_pool(&"x".repeat(65), &["a"]),
        create_pool("ok", &[]),
        create_pool("ok", &["a", "b", "a"]),
        create_pool("ok", &[""]),
        create_pool("ok", &[&long]),
    ];
    for op in bad {
        let e = commit(&l, vec![op.clone()]).await;
        assert!(
            matches!(e, Err(LedgerError::InvalidOp { op: 0, .. })),
            "{op:?}: {e:?}"
        );
    }
    assert!(l.pools().await.expect("pools").is_empty());
    assert_eq!(l.last_tx_id().await.expect("last"), Some(TxId(1)));
}

#[tokio::test]
async fn take_gives_the_lowest_free_or_the_named_value() {
    let (_d, l, [p0, p1]) = fixture().await;
    commit(&l, vec![take("macs", p0.uuid, Some("b"))])
        .await
        .expect("named");
    let c = last_change(&l).await;
    assert_eq!(
        c,
        json!({
            "op": "take_from_pool", "pool": "macs", "value": "b", "seq": 1,
            "before": {"holder": null}, "after": {"holder": p0.uuid},
        })
    );
    commit(&l, vec![take("macs", p1.uuid, None)])
        .await
        .expect("lowest");
    assert_eq!(last_change(&l).await["value"], "a");
    commit(&l, vec![take("macs", p1.uuid, None)])
        .await
        .expect("next");
    assert_eq!(last_change(&l).await["value"], "c");
    assert_eq!(
        l.items_held_by(p1.uuid).await.expect("held"),
        [
            ("macs".to_owned(), "a".to_owned()),
            ("macs".into(), "c".into())
        ]
    );
    assert_eq!(
        l.pool_items("macs").await.expect("items"),
        [
            PoolItem {
                value: "a".into(),
                holder: Some(p1.uuid)
            },
            PoolItem {
                value: "b".into(),
                holder: Some(p0.uuid)
            },
            PoolItem {
                value: "c".into(),
                holder: Some(p1.uuid)
            },
        ]
    );
    let info = l.pool("macs").await.expect("read").expect("exists");
    assert_eq!((info.size, info.free), (3, 0));

    let e = commit(&l, vec![take("macs", p1.uuid, Some("b"))])
        .await
        .expect_err("held");
    assert!(
        matches!(&e, LedgerError::ValueTaken { pool, value, holder }
            if pool == "macs" && value == "b" && *holder == p0.uuid),
        "{e}"
    );
    let e = commit(&l, vec![take("macs", p1.uuid, Some("zz"))])
        .await
        .expect_err("absent");
    assert!(matches!(e, LedgerError::NotInPool { .. }), "{e}");
    let e = commit(&l, vec![take("ips", p1.uuid, None)])
        .await
        .expect_err("no pool");
    assert!(
        matches!(&e, LedgerError::NoSuchPool { name } if name == "ips"),
        "{e}"
    );
    let ghost = Uuid::new_v4();
    let e = commit(&l, vec![take("macs", ghost, None)])
        .await
        .expect_err("no holder");
    assert!(
        matches!(e, LedgerError::NoSuchPartition { uuid } if uuid == ghost),
        "{e}"
    );
    assert_eq!(l.verify().await.expect("verify"), []);
}

#[tokio::test]
async fn exhausted_pool_fails_the_whole_tx() {
    let (_d, l, [p0, p1]) = fixture().await;
    commit(
        &l,
        vec![
            take("macs", p0.uuid, None),
            take("macs", p0.uuid, None),
            take("macs", p1.uuid, None),
        ],
    )
    .await
    .expect("take all");
    let holdings = l.holdings().await.expect("holdings");
    let items = l.pool_items("macs").await.expect("items");
    let log = l.log(None, 100).await.expect("log");

    let newcomer = partition(
        "new",
        Resources {
            disk_gib: 5,
            ..Resources::ZERO
        },
    );
    let mut create = create_tx(&newcomer);
    create.ops.push(take("macs", newcomer.uuid, None));
    let e = l.commit(create).await.expect_err("exhausted");
    assert!(
        matches!(&e, LedgerError::PoolExhausted { pool, size: 3 } if pool == "macs"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "pool \"macs\" has no free value: all 3 are held"
    );
    assert!(
        l.partition_by_uuid(newcomer.uuid)
            .await
            .expect("read")
            .is_none()
    );
    assert_eq!(l.holdings().await.expect("holdings"), holdings);
    assert_eq!(l.pool_items("macs").await.expect("items"), items);
    assert_eq!(l.log(None, 100).await.expect("log"), log);
}

#[tokio::test]
async fn return_frees_one_pool_or_all() {
    let (_d, l, [p0, _]) = fixture().await;
    commit(
        &l,
        vec![
            create_pool("ips", &["10.0.0.2", "10.0.0.3"]),
            take("macs", p0.uuid, Some("c")),
            take("macs", p0.uuid, Some("a")),
            take("ips", p0.uuid, None),
        ],
    )
    .await
    .expect("take");
    commit(
        &l,
        vec![Op::ReturnToPool {
            holder: p0.uuid,
            pool: Some("ips".into()),
        }],
    )
    .await
    .expect("return ips");
    let c = last_change(&l).await;
    assert_eq!(c["op"], "return_to_pool");
    assert_eq!(c["pool"], "ips");
    assert_eq!(
        c["items"],
        json!([{"pool": "ips", "value": "10.0.0.2", "seq": 0}])
    );
    assert_eq!(c["before"]["holder"], json!(p0.uuid));
    assert_eq!(c["after"]["holder"], serde_json::Value::Null);
    assert_eq!(
        l.items_held_by(p0.uuid).await.expect("held"),
        [
            ("macs".to_owned(), "a".to_owned()),
            ("macs".into(), "c".into())
        ]
    );
    commit(
        &l,
        vec![Op::ReturnToPool {
            holder: p0.uuid,
            pool: None,
        }],
    )
    .await
    .expect("return all");
    assert_eq!(
        last_change(&l).await["items"],
        json!([{"pool": "macs", "value": "a", "seq": 0}, {"pool": "macs", "value": "c", "seq": 2}])
    );
    assert!(l.items_held_by(p0.uuid).await.expect("held").is_empty());
    for p in l.pools().await.expect("pools") {
        assert_eq!(p.free, p.size, "{}", p.name);
    }
    // Returning nothing is fine; an unknown pool is not.
    commit(
        &l,
        vec![Op::ReturnToPool {
            holder: p0.uuid,
            pool: None,
        }],
    )
    .await
    .expect("nothing to return");
    let e = commit(
        &l,
        vec![Op::ReturnToPool {
            holder: p0.uuid,
            pool: Some("nope".into()),
        }],
    )
    .await
    .expect_err("no pool");
    assert!(matches!(e, LedgerError::NoSuchPool { .. }), "{e}");
}

#[tokio::test]
async fn delete_pool_is_refused_while_held() {
    let (_d, l, [p0, _]) = fixture().await;
    commit(&l, vec![take("macs", p0.uuid, None)])
        .await
        .expect("take");
    let del = || Op::DeletePool {
        name: "macs".into(),
    };
    let e = commit(&l, vec![del()]).await.expect_err("in use");
    assert!(
        matches!(&e, LedgerError::PoolInUse { name, held: 1 } if name == "macs"),
        "{e}"
    );
    commit(
        &l,
        vec![
            Op::ReturnToPool {
                holder: p0.uuid,
                pool: None,
            },
            del(),
        ],
    )
    .await
    .expect("return, then delete");
    let c = last_change(&l).await;
    let log = l.log_newest(None, 1).await.expect("log");
    let c2 = &log[0].changes[1];
    assert_eq!(c["op"], "return_to_pool");
    assert_eq!(c2["op"], "delete_pool");
    assert_eq!(c2["before"]["values"], json!(["a", "b", "c"]));
    assert_eq!(c2["before"]["meta"], json!({"prefix": "52:54:00"}));
    assert!(l.pools().await.expect("pools").is_empty());
    assert!(l.pool_items("macs").await.expect("items").is_empty());
    let e = commit(&l, vec![del()]).await.expect_err("gone");
    assert!(matches!(e, LedgerError::NoSuchPool { .. }), "{e}");
    // The name is free again.
    commit(&l, vec![create_pool("macs", &["x"])])
        .await
        .expect("recreate");
}

#[tokio::test]
async fn partition_holding_items_is_deleted_only_after_returning_them() {
    let (_d, l, [p0, _]) = fixture().await;
    commit(
        &l,
        vec![
            create_pool("ips", &["10.0.0.2"]),
            take("ips", p0.uuid, None),
            take("macs", p0.uuid, None),
        ],
    )
    .await
    .expect("take");
    let delete = || Op::DeletePartition {
        uuid: p0.uuid,
        expect: PartitionExpect::default(),
    };
    let e = commit(&l, vec![delete()]).await.expect_err("holds items");
    match &e {
        LedgerError::StillHoldsPoolItems { uuid, items } => {
            assert_eq!(*uuid, p0.uuid);
            assert_eq!(
                items,
                &[
                    ("ips".to_owned(), "10.0.0.2".to_owned()),
                    ("macs".into(), "a".into())
                ]
            );
        }
        other => panic!("wrong error {other}"),
    }
    assert!(
        e.to_string().contains("ips=\"10.0.0.2\", macs=\"a\""),
        "{e}"
    );
    commit(
        &l,
        vec![
            Op::ReturnToPool {
                holder: p0.uuid,
                pool: None,
            },
            delete(),
        ],
    )
    .await
    .expect("return and delete in one tx");
    assert!(l.partition_by_uuid(p0.uuid).await.expect("read").is_none());
    for p in l.pools().await.expect("pools") {
        assert_eq!(p.free, p.size, "{}", p.name);
    }
    assert_eq!(l.verify().await.expect("verify"), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_takes_hand_out_each_value_once() {
    let (_d, l) = ledger().await;
    let values: Vec<String> = (0..10).map(|i| format!("10.0.0.{}", i + 2)).collect();
    commit(
        &l,
        vec![Op::CreatePool {
            name: "ips".into(),
            kind: PoolKind::Ipv4,
            meta: json!({"prefix": 24}),
            values: values.clone(),
        }],
    )
    .await
    .expect("pool");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let l = l.clone();
            tokio::spawn(async move {
                let p = partition(&format!("c{i:02}"), Resources::ZERO);
                let ops = vec![Op::InsertPartition(p.clone()), take("ips", p.uuid, None)];
                l.commit(Tx::new("t", "fork", ops)).await.map(|_| p.uuid)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(u) => winners.push(u),
            Err(LedgerError::PoolExhausted { size: 10, .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 10);
    let mut got = HashSet::new();
    for u in &winners {
        let held = l.items_held_by(*u).await.expect("held");
        assert_eq!(held.len(), 1);
        assert!(
            got.insert(held[0].1.clone()),
            "{} handed out twice",
            held[0].1
        );
    }
    assert_eq!(got, values.into_iter().collect());
    assert_eq!(l.all_partitions().await.expect("read").len(), 10);
    let info = l.pool("ips").await.expect("read").expect("exists");
    assert_eq!((info.size, info.free), (10, 0));
    assert_eq!(l.verify().await.expect("verify"), []);
}

#[tokio::test]
async fn large_pool_hands_out_in_order() {
    let (_d, l, [p0, _]) = fixture().await;
    let values: Vec<String> = (0..brood_ledger::POOL_MAX_VALUES)
        .map(|i| format!("{i:05}"))
        .collect();
    let mut ops = vec![Op::CreatePool {
        name: "idx".into(),
        kind: PoolKind::Identity,
        meta: json!(null),
        values,
    }];
    ops.extend(
        ["00007", "00000"]
            .into_iter()
            .map(|v| take("idx", p0.uuid, Some(v))),
    );
    ops.push(take("idx", p0.uuid, None));
    commit(&l, ops).await.expect("create and take");
    let held = l.items_held_by(p0.uuid).await.expect("held");
    let values: Vec<_> = held.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["00000", "00001", "00007"]);
    let info = l.pool("idx").await.expect("read").expect("exists");
    assert_eq!((info.size, info.free), (65536, 65533));
    assert_eq!(l.verify().await.expect("verify"), []);
}
