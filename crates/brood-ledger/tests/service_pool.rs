#![allow(clippy::tests_outside_test_module)]
//! Service pools through the async `Ledger`: members queue, concurrent
//! takes of one member (exactly one wins), services and their pairing
//! limit, verify's service-pool checks, and the audit of every change.

mod common;

use std::collections::BTreeMap;

use brood_ledger::{
    Ledger, LedgerError, MemberOrigin, MemberState, Op, Resources, ServicePoolOp, ServiceRecord,
    ServiceState, Tx, Uuid,
};
use common::{ledger, partition};
use serde_json::json;

fn sp(change: ServicePoolOp) -> Op {
    Op::ServicePool { change }
}

async fn commit(l: &Ledger, ops: Vec<Op>) -> Result<(), LedgerError> {
    l.commit(Tx::new("test", "service pool", ops))
        .await
        .map(drop)
}

fn service(name: &str, member: Uuid, pairing: u32) -> ServiceRecord {
    ServiceRecord {
        uuid: Uuid::new_v4(),
        name: name.into(),
        class: "http".into(),
        pool: "svc".into(),
        member,
        state: ServiceState::Configuring,
        config_path: "/x".into(),
        config_sha256: "00".into(),
        domain_pairing: pairing,
        device_pairing: 1,
        settings: BTreeMap::new(),
        fallback: None,
        created_at: "now".into(),
        guests: Vec::new(),
    }
}

/// A pool `svc` with two ready members.
async fn fixture() -> (tempfile::TempDir, Ledger, Vec<Uuid>) {
    let (d, l) = ledger().await;
    commit(
        &l,
        vec![sp(ServicePoolOp::CreatePool {
            name: "svc".into(),
            spec: json!({"min": 2}),
        })],
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..2 {
        let p = partition(&format!("svc-m{i}"), Resources::ZERO);
        ids.push(p.uuid);
        commit(
            &l,
            vec![
                Op::InsertPartition(p.clone()),
                sp(ServicePoolOp::AddMember {
                    partition: p.uuid,
                    pool: "svc".into(),
                    origin: MemberOrigin::Cold,
                }),
                sp(ServicePoolOp::MemberReady {
                    partition: p.uuid,
                    point: 7,
                }),
            ],
        )
        .await
        .unwrap();
    }
    (d, l, ids)
}

fn take_ops(member: Uuid, name: &str) -> Vec<Op> {
    vec![
        sp(ServicePoolOp::TakeMember {
            partition: member,
            expect: MemberState::Ready,
        }),
        sp(ServicePoolOp::InsertService(Box::new(service(
            name, member, 1,
        )))),
    ]
}

#[tokio::test]
async fn concurrent_takes_of_one_member_hand_it_out_once() {
    let (_d, l, ids) = fixture().await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let l = l.clone();
            let m = ids[0];
            tokio::spawn(async move { commit(&l, take_ops(m, &format!("s{i}"))).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(LedgerError::Precondition { op: 0, .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    let members = l.pool_members(Some("svc")).await.unwrap();
    assert_eq!(members[0].state, MemberState::Taken);
    assert_eq!(members[1].state, MemberState::Ready);
    assert_eq!(l.services().await.unwrap().len(), 1);
    assert!(l.verify().await.unwrap().is_empty());
}

#[tokio::test]
async fn pairing_is_a_precondition_and_verify_sees_broken_rows() {
    let (_d, l, ids) = fixture().await;
    commit(&l, take_ops(ids[0], "web")).await.unwrap();
    let s = l.service("web").await.unwrap().unwrap();
    let (g1, g2) = (Uuid::new_v4(), Uuid::new_v4());
    commit(
        &l,
        vec![sp(ServicePoolOp::AddGuest {
            service: s.uuid,
            guest: g1,
        })],
    )
    .await
    .unwrap();
    let err = commit(
        &l,
        vec![sp(ServicePoolOp::AddGuest {
            service: s.uuid,
            guest: g2,
        })],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LedgerError::Precondition { .. }), "{err}");
    assert_eq!(l.service("web").await.unwrap().unwrap().guests, vec![g1]);
    // A pool with waiting members cannot be deleted.
    let err = commit(
        &l,
        vec![sp(ServicePoolOp::DeletePool { name: "svc".into() })],
    )
    .await;
    assert!(err.is_err());
    // A member row whose partition is gone is a problem verify reports.
    commit(
        &l,
        vec![sp(ServicePoolOp::AddMember {
            partition: Uuid::new_v4(),
            pool: "svc".into(),
            origin: MemberOrigin::Cold,
        })],
    )
    .await
    .unwrap();
    let problems = l.verify().await.unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.code == "member_partition_missing"),
        "{problems:?}"
    );
    // Every change is in the audit log.
    let log = l.log(None, 100).await.unwrap();
    let text = serde_json::to_string(&log).unwrap();
    assert!(
        text.contains("take_member") && text.contains("insert_service"),
        "{text}"
    );
}
