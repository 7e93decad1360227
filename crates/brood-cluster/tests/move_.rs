//! Live migrations in the catalog against a real PostgreSQL: the move's
//! conditional writes (begin refused when the partition is not the
//! source's, already moving, or the target is the source; the target's
//! commit against an abort, exactly one winning in either order; the
//! placement the target's only after a commit), and placement choosing a
//! target other than the current host.

#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use brood_cluster::testing::TempPostgres;
use brood_cluster::{
    Capacity, Catalog, ClusterError, HostSpec, Liveness, LocalPartition, MoveEnd, MoveState,
};
use serde_json::json;
use uuid::Uuid;

const LIVE: Liveness = Liveness {
    suspect_after_ms: 60_000,
    failed_after_ms: 120_000,
};

fn spec(name: &str) -> HostSpec {
    HostSpec {
        name: name.into(),
        address: String::new(),
        capacity: Capacity {
            memory_mib: 4096,
            vcpus: 16,
            disk_gib: 100,
        },
        zones: Vec::new(),
    }
}

/// A catalog with hosts a and b, and partition `vm` held on a.
async fn setup(pg: &TempPostgres) -> (Catalog, Uuid) {
    let cat = Catalog::connect(&pg.url(), Duration::from_secs(30))
        .await
        .unwrap();
    for h in ["a", "b"] {
        cat.register_host(&spec(h), "0").await.unwrap();
    }
    let local = Uuid::new_v4();
    let r = cat
        .sync_host(
            "a",
            &[LocalPartition {
                id: local,
                name: "vm".into(),
                demand: Capacity {
                    memory_mib: 256,
                    vcpus: 1,
                    disk_gib: 0,
                },
            }],
        )
        .await
        .unwrap();
    assert_eq!(r.added, vec!["vm"]);
    (cat, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_commits_or_aborts_exactly_once() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let (cat, local) = setup(&pg).await;
    let def = json!({"name": "vm"});
    let before = cat.placement_named("vm").await.unwrap();

    // Refused: not the source's, to itself, to nowhere.
    let e = cat
        .begin_move("vm", "b", None, local, &def, LIVE)
        .await
        .unwrap_err();
    assert!(matches!(e, ClusterError::Conflict(_)), "{e}");
    let e = cat
        .begin_move("vm", "a", Some("a"), local, &def, LIVE)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--to"), "{e}");
    let e = cat
        .begin_move("vm", "a", Some("nowhere"), local, &def, LIVE)
        .await
        .unwrap_err();
    assert!(matches!(e, ClusterError::NotFound { .. }), "{e}");

    // Placement picks the other host; the generation is bumped first.
    let mv = cat
        .begin_move("vm", "a", None, local, &def, LIVE)
        .await
        .unwrap();
    assert_eq!(mv.target, "b");
    assert_eq!(mv.generation, before.generation + 1);
    assert_eq!(
        cat.placement_named("vm").await.unwrap().host.as_deref(),
        Some("a")
    );
    // One move at a time.
    let e = cat
        .begin_move("vm", "a", Some("b"), local, &def, LIVE)
        .await
        .unwrap_err();
    assert!(matches!(e, ClusterError::Conflict(_)), "{e}");
    // Not ready yet: a commit loses.
    assert!(
        cat.move_commit(mv.partition, mv.generation, "b", local)
            .await
            .is_err()
    );
    cat.move_ready(mv.partition, mv.generation, "10.0.0.2:4444")
        .await
        .unwrap();
    let row = cat.move_of(mv.partition).await.unwrap().unwrap();
    assert_eq!(row.state, MoveState::Ready);
    assert_eq!(row.address.as_deref(), Some("10.0.0.2:4444"));

    // Abort first: the commit loses, the placement stays a's.
    assert_eq!(
        cat.move_abort(mv.partition, mv.generation).await.unwrap(),
        MoveEnd::Aborted(None)
    );
    assert!(
        cat.move_commit(mv.partition, mv.generation, "b", local)
            .await
            .is_err()
    );
    assert_eq!(
        cat.placement_named("vm").await.unwrap().host.as_deref(),
        Some("a")
    );
    // Aborting again says the same.
    assert_eq!(
        cat.move_abort(mv.partition, mv.generation).await.unwrap(),
        MoveEnd::Aborted(None)
    );

    // Commit first: the abort loses and says so, the placement is b's.
    let mv = cat
        .begin_move("vm", "a", Some("b"), local, &def, LIVE)
        .await
        .unwrap();
    cat.move_ready(mv.partition, mv.generation, "10.0.0.2:4445")
        .await
        .unwrap();
    cat.move_commit(mv.partition, mv.generation, "b", local)
        .await
        .unwrap();
    let p = cat.placement_named("vm").await.unwrap();
    assert_eq!(p.host.as_deref(), Some("b"));
    assert!(p.held);
    assert_eq!(p.generation, mv.generation);
    assert_eq!(
        cat.move_abort(mv.partition, mv.generation).await.unwrap(),
        MoveEnd::Committed
    );
    // Finished by the source: the row goes, and an abort still tells.
    cat.move_finish(mv.partition, mv.generation).await.unwrap();
    assert!(cat.move_of(mv.partition).await.unwrap().is_none());
    assert_eq!(
        cat.move_abort(mv.partition, mv.generation).await.unwrap(),
        MoveEnd::Committed
    );

    // A refusal carries its reason to the abort.
    let mv = cat
        .begin_move("vm", "b", Some("a"), local, &def, LIVE)
        .await
        .unwrap();
    cat.move_refuse(mv.partition, mv.generation, "no room")
        .await
        .unwrap();
    assert_eq!(
        cat.move_abort(mv.partition, mv.generation).await.unwrap(),
        MoveEnd::Aborted(Some("no room".into()))
    );
    assert!(cat.moves_of_host("a").await.unwrap().is_empty());
}
