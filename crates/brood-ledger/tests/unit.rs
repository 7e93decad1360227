#![allow(clippy::tests_outside_test_module)]
//! Business units in the ledger: approval moves capacity from `available`
//! to the unit in one audited transaction, member partitions reserve from
//! the unit (never from `available`), a shrink below use is refused, and a
//! chargeback of a scripted day matches a hand computation, both models.

mod common;

use brood_ledger::{
    ChargeOp, LedgerDb, LedgerError, Op, Owner, PartitionRecord, RequestState, Resources, Tx,
    UnitOp, Uuid, chargeback,
};

const CAP: Resources = Resources {
    memory_mib: 8192,
    vcpus: 16,
    disk_gib: 100,
    nics: 8,
};

fn r(memory_mib: u64, vcpus: u64, disk_gib: u64, nics: u64) -> Resources {
    Resources {
        memory_mib,
        vcpus,
        disk_gib,
        nics,
    }
}

fn db() -> (tempfile::TempDir, LedgerDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = LedgerDb::open(dir.path().join("l.db"), CAP).expect("open");
    (dir, db)
}

fn commit(db: &mut LedgerDb, ops: Vec<Op>) -> Result<u64, LedgerError> {
    db.commit(Tx::new("alice", "test", ops)).map(|c| c.id.0)
}

fn register(db: &mut LedgerDb, name: &str) -> Uuid {
    let uuid = Uuid::new_v4();
    commit(
        db,
        vec![Op::Unit(UnitOp::Register {
            uuid,
            name: name.into(),
            contact: "ops@example.com".into(),
        })],
    )
    .expect("register");
    uuid
}

fn request(db: &mut LedgerDb, unit: Uuid, want: Resources) -> u64 {
    commit(
        db,
        vec![Op::Unit(UnitOp::Request {
            unit,
            want,
            networks: vec![],
            templates: vec![],
        })],
    )
    .expect("request");
    db.unit_requests(Some(unit), true)
        .expect("requests")
        .last()
        .expect("one")
        .id
}

fn decide(
    db: &mut LedgerDb,
    id: u64,
    state: RequestState,
    grant: Option<Resources>,
) -> Result<u64, LedgerError> {
    commit(
        db,
        vec![Op::Unit(UnitOp::Decide {
            id,
            state,
            grant,
            note: None,
        })],
    )
}

/// A member VM: insert, join, reserve (as broodd's define and start do).
fn vm(db: &mut LedgerDb, unit: Uuid, name: &str, need: Resources) -> Result<Uuid, LedgerError> {
    let p = PartitionRecord::new(name);
    let uuid = p.uuid;
    let mut ops = vec![
        Op::InsertPartition(p),
        Op::Unit(UnitOp::Join {
            partition: uuid,
            unit,
        }),
    ];
    ops.extend(Op::reserve(uuid, &need));
    commit(db, ops).map(|_| uuid)
}

#[test]
fn approval_moves_capacity_and_members_reserve_from_the_unit() {
    let (_d, mut db) = db();
    let eng = register(&mut db, "eng");
    let ops = register(&mut db, "ops");
    let a = request(&mut db, eng, r(4096, 8, 40, 2));
    let b = request(&mut db, ops, r(2048, 4, 20, 0));
    decide(&mut db, a, RequestState::Partial, Some(r(2048, 4, 20, 2))).expect("partial");
    decide(&mut db, b, RequestState::Approved, None).expect("approve");
    assert_eq!(
        db.held_by(Owner::Available).expect("avail"),
        r(4096, 8, 60, 6)
    );
    assert_eq!(
        db.held_by(Owner::Unit(eng)).expect("eng"),
        r(2048, 4, 20, 2)
    );
    // A second decision of the same request is refused.
    let again = decide(&mut db, a, RequestState::Approved, None).expect_err("decided");
    assert!(matches!(again, LedgerError::Precondition { .. }), "{again}");

    let w1 = vm(&mut db, eng, "w1", r(1024, 2, 10, 1)).expect("inside");
    assert_eq!(
        db.held_by(Owner::Partition(w1)).expect("w1"),
        r(1024, 2, 10, 1)
    );
    assert_eq!(
        db.held_by(Owner::Unit(eng)).expect("eng"),
        r(1024, 2, 10, 1)
    );
    assert_eq!(
        db.held_by(Owner::Available).expect("avail"),
        r(4096, 8, 60, 6)
    );
    // Beyond the allocation: refused, though `available` has plenty.
    let e = vm(&mut db, eng, "w2", r(1024, 3, 0, 0)).expect_err("beyond");
    match e {
        LedgerError::Insufficient {
            owner, have, want, ..
        } => {
            assert_eq!((owner, have, want), (Owner::Unit(eng), 2, 3));
        }
        other => panic!("{other}"),
    }
    assert!(
        db.partition_by_name("w2").expect("read").is_none(),
        "half-done"
    );
    // Releasing goes back to the unit.
    commit(&mut db, Op::release(w1, &r(1024, 2, 0, 1))).expect("release");
    assert_eq!(
        db.held_by(Owner::Unit(eng)).expect("eng"),
        r(2048, 4, 10, 2)
    );
    assert_eq!(db.unit_usage(eng).expect("usage").0, r(0, 0, 10, 0));
    // The test VMs hold without a demand (no define, no start): only
    // holding_mismatch may be found; the unit checks must pass.
    let problems = db.verify().expect("verify");
    assert!(
        problems.iter().all(|p| p.code == "holding_mismatch"),
        "{problems:?}"
    );
}

#[test]
fn a_shrink_below_use_is_refused_and_a_shrink_above_it_returns_capacity() {
    let (_d, mut db) = db();
    let eng = register(&mut db, "eng");
    let a = request(&mut db, eng, r(4096, 8, 40, 0));
    decide(&mut db, a, RequestState::Approved, None).expect("approve");
    vm(&mut db, eng, "big", r(3072, 6, 0, 0)).expect("inside");
    let s = request(&mut db, eng, r(2048, 8, 40, 0));
    let e = decide(&mut db, s, RequestState::Approved, None).expect_err("below use");
    assert!(
        matches!(e, LedgerError::Insufficient { owner: Owner::Unit(u), .. } if u == eng),
        "{e}"
    );
    // The refused decision changed nothing, and the request is still pending.
    assert_eq!(
        db.held_by(Owner::Unit(eng)).expect("eng"),
        r(1024, 2, 40, 0)
    );
    assert_eq!(db.unit_requests(Some(eng), true).expect("pending").len(), 1);
    decide(&mut db, s, RequestState::Partial, Some(r(3072, 8, 40, 0))).expect("to use");
    assert_eq!(db.held_by(Owner::Unit(eng)).expect("eng"), r(0, 2, 40, 0));
    assert_eq!(
        db.held_by(Owner::Available).expect("avail"),
        r(5120, 8, 60, 8)
    );
    // The test VMs hold without a demand (no define, no start): only
    // holding_mismatch may be found; the unit checks must pass.
    let problems = db.verify().expect("verify");
    assert!(
        problems.iter().all(|p| p.code == "holding_mismatch"),
        "{problems:?}"
    );
}

#[test]
fn approval_beyond_the_host_is_refused() {
    let (_d, mut db) = db();
    let eng = register(&mut db, "eng");
    let a = request(&mut db, eng, r(16384, 1, 1, 0));
    let e = decide(&mut db, a, RequestState::Approved, None).expect_err("too much");
    assert!(
        matches!(
            e,
            LedgerError::Insufficient {
                owner: Owner::Available,
                ..
            }
        ),
        "{e}"
    );
    let e = decide(&mut db, a, RequestState::Partial, Some(r(99999, 1, 1, 0))).expect_err("out");
    assert!(matches!(e, LedgerError::InvalidOp { .. }), "{e}");
    decide(&mut db, a, RequestState::Rejected, None).expect("reject");
    assert_eq!(db.held_by(Owner::Available).expect("avail"), CAP);
}

#[test]
fn a_fork_child_of_a_member_joins_its_unit() {
    let (_d, mut db) = db();
    let eng = register(&mut db, "eng");
    let a = request(&mut db, eng, r(2048, 2, 10, 0));
    decide(&mut db, a, RequestState::Approved, None).expect("approve");
    let t = vm(&mut db, eng, "tpl", r(512, 0, 0, 0)).expect("template");
    let mut child = PartitionRecord::new("c0");
    child.parent = Some(t);
    let c = child.uuid;
    let mut ops = vec![Op::InsertPartition(child)];
    ops.extend(Op::reserve(c, &r(256, 2, 0, 0)));
    commit(&mut db, ops).expect("child");
    assert_eq!(
        db.held_by(Owner::Unit(eng)).expect("eng"),
        r(1280, 0, 10, 0)
    );
}

/// Sets every audit entry's time: `times[i]` for entry `i` (the ledger's
/// own clock is the wall clock; the report reads only these fields).
fn scripted(db: &LedgerDb, times: &[(u64, &str)]) -> Vec<brood_ledger::AuditEntry> {
    let mut log = db.log(None, 10_000).expect("log");
    let mut at = "2026-01-01T00:00:00Z";
    for e in &mut log {
        if let Some((_, t)) = times.iter().find(|(id, _)| *id == e.id.0) {
            at = t;
        }
        e.time = at.to_owned();
    }
    log
}

#[test]
fn chargeback_of_a_scripted_day_matches_a_hand_computation() {
    let (_d, mut db) = db();
    let price = |item: &str, micros: u64| {
        Op::Charge(ChargeOp::SetPrice {
            item: item.into(),
            micros_per_hour: micros,
        })
    };
    // 00:00 prices: vcpu 0.01/h, memory 0.02 per GiB-hour, disk 0.001 per GiB-hour,
    // template "web" 0.5 per VM-hour.
    let t_prices = commit(
        &mut db,
        vec![
            price("vcpu", 10_000),
            price("memory_gib", 20_000),
            price("disk_gib", 1_000),
            price("template:web", 500_000),
        ],
    )
    .expect("prices");
    let eng = register(&mut db, "eng");
    let req = request(&mut db, eng, r(4096, 4, 10, 0));
    // 06:00 approved: 4 GiB, 4 vCPUs, 10 GiB.
    let t_approve = decide(&mut db, req, RequestState::Approved, None).expect("approve");
    // 08:00 a VM of 2 GiB and 2 vCPUs, 10 GiB disk, forked from template "web".
    let tpl = PartitionRecord::new("web");
    let tpl_id = tpl.uuid;
    let t_tpl = commit(&mut db, vec![Op::InsertPartition(tpl)]).expect("template");
    let mut child = PartitionRecord::new("web-0");
    child.parent = Some(tpl_id);
    let c = child.uuid;
    let mut ops = vec![
        Op::InsertPartition(child),
        Op::Unit(UnitOp::Join {
            partition: c,
            unit: eng,
        }),
    ];
    ops.extend(Op::reserve(c, &r(2048, 2, 10, 0)));
    let t_vm = commit(&mut db, ops).expect("vm");
    // 12:00 the vCPU price doubles.
    let t_price2 = commit(&mut db, vec![price("vcpu", 20_000)]).expect("price");
    // 20:00 the VM stops: memory and vCPUs go back, the disk stays.
    let t_stop = commit(&mut db, Op::release(c, &r(2048, 2, 0, 0))).expect("stop");
    // 22:00 a refund of 0.1.
    let t_refund = commit(
        &mut db,
        vec![Op::Charge(ChargeOp::Refund {
            unit: eng,
            micros: 100_000,
            reason: "outage".into(),
        })],
    )
    .expect("refund");
    let log = scripted(
        &db,
        &[
            (t_prices, "2026-01-01T00:00:00Z"),
            (t_approve, "2026-01-01T06:00:00Z"),
            (t_tpl, "2026-01-01T07:00:00Z"),
            (t_vm, "2026-01-01T08:00:00Z"),
            (t_price2, "2026-01-01T12:00:00Z"),
            (t_stop, "2026-01-01T20:00:00Z"),
            (t_refund, "2026-01-01T22:00:00Z"),
        ],
    );
    let rep =
        chargeback(&log, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", None).expect("report");
    let u = rep.units.iter().find(|u| u.name == "eng").expect("eng");
    // Reservation: allocated 06:00-24:00 (18 h).
    //   vcpu: 4 x (6 h x 0.01 + 12 h x 0.02) = 4 x 0.30 = 1.20
    //   memory: 4 GiB x 18 h x 0.02 = 1.44; disk: 10 GiB x 18 h x 0.001 = 0.18
    let reservation = 1_200_000 + 1_440_000 + 180_000;
    // Allocation: the VM 08:00-20:00 (12 h), its disk 08:00-24:00 (16 h).
    //   vcpu: 2 x (4 h x 0.01 + 8 h x 0.02) = 2 x 0.20 = 0.40
    //   memory: 2 GiB x 12 h x 0.02 = 0.48; disk: 10 x 16 h x 0.001 = 0.16
    //   template web: 12 VM-hours x 0.5 = 6.00
    let allocation = 400_000 + 480_000 + 160_000 + 6_000_000;
    assert_eq!(u.reservation_micros, reservation, "{u:#?}");
    assert_eq!(u.allocation_micros, allocation, "{u:#?}");
    assert_eq!(u.refunds_micros, 100_000);
    // A period after the refund has none, and only the disk and allocation.
    let later = chargeback(
        &log,
        "2026-01-01T23:00:00Z",
        "2026-01-02T00:00:00Z",
        Some(eng),
    )
    .expect("report");
    let u = later.units.first().expect("eng");
    assert_eq!(u.refunds_micros, 0);
    assert_eq!(u.allocation_micros, 10_000, "10 GiB x 1 h x 0.001");
    // The real ledger's report reads the same log.
    assert!(
        db.chargeback("2026-01-01T00:00:00Z", "2030-01-01T00:00:00Z", None)
            .is_ok()
    );
    let bad = chargeback(&log, "tomorrow", "2026-01-02T00:00:00Z", None).expect_err("bad");
    assert!(bad.to_string().contains("RFC 3339"), "{bad}");
}
