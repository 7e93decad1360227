//! The catalog against a real PostgreSQL (a temporary cluster per test):
//! migrations, hosts and liveness, placement with its conditional write
//! under contention, reconciliation with a host's ledger, and a PostgreSQL
//! restart in the middle of placing.

#![allow(clippy::tests_outside_test_module)]

use std::time::{Duration, Instant};

use brood_cluster::testing::TempPostgres;
use brood_cluster::{
    Capacity, Catalog, ClusterError, DomainPolicy, HostSpec, HostState, Importance, Liveness,
    LocalPartition, PartitionDef, Requirement, latest_version,
};
use uuid::Uuid;

const RETRY: Duration = Duration::from_secs(60);

fn spec(name: &str, mem: u64, zones: &[&str]) -> HostSpec {
    HostSpec {
        name: name.into(),
        address: format!("{name}:7070"),
        capacity: Capacity {
            memory_mib: mem,
            vcpus: 16,
            disk_gib: 100,
        },
        zones: zones.iter().map(|z| z.parse().unwrap()).collect(),
    }
}

fn def(name: &str, mem: u64, requires: &[&str]) -> PartitionDef {
    PartitionDef {
        id: Uuid::new_v4(),
        name: name.into(),
        domain: "default".into(),
        demand: Capacity {
            memory_mib: mem,
            vcpus: 1,
            disk_gib: 1,
        },
        requires: requires
            .iter()
            .map(|r| Requirement::parse(r).unwrap())
            .collect(),
    }
}

async fn wait_until<F, Fut>(deadline: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_versioned_and_idempotent() {
    let pg = TempPostgres::start().unwrap();
    let a = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    // A second broodd against the same catalog applies nothing twice.
    let b = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    assert_eq!(a.schema_version().await.unwrap(), latest_version());
    assert_eq!(b.schema_version().await.unwrap(), latest_version());
    assert!(b.domains().await.unwrap().contains_key("default"));
    let bad = Catalog::connect("postgres://brood@127.0.0.1:notaport/x", RETRY).await;
    assert!(matches!(bad, Err(ClusterError::Url(_))), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_register_heartbeat_and_go_suspect_then_failed() {
    let pg = TempPostgres::start().unwrap();
    let cat = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    let live = Liveness {
        suspect_after_ms: 300,
        failed_after_ms: 900,
    };
    cat.add_host(&spec("h1", 4096, &[])).await.unwrap();
    assert_eq!(
        cat.host("h1", live).await.unwrap().state,
        HostState::Pending
    );
    let again = cat.add_host(&spec("h1", 4096, &[])).await;
    assert!(matches!(again, Err(ClusterError::Conflict(_))), "{again:?}");
    cat.register_host(&spec("h1", 8192, &["storage:shared"]), "0.1.0")
        .await
        .unwrap();
    let h = cat.host("h1", live).await.unwrap();
    assert_eq!(h.state, HostState::Active);
    assert_eq!(h.capacity.memory_mib, 8192);
    assert_eq!(h.zones, vec!["storage:shared"]);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            cat.host("h1", live).await.unwrap().state == HostState::Suspect
        })
        .await
    );
    assert!(
        wait_until(Duration::from_secs(20), || async {
            cat.host("h1", live).await.unwrap().state == HostState::Failed
        })
        .await
    );
    cat.heartbeat("h1").await.unwrap();
    assert_eq!(cat.host("h1", live).await.unwrap().state, HostState::Active);
    cat.set_draining("h1", true).await.unwrap();
    assert_eq!(
        cat.host("h1", live).await.unwrap().state,
        HostState::Draining
    );
    assert!(matches!(
        cat.heartbeat("nope").await,
        Err(ClusterError::NotFound { .. })
    ));
    cat.remove_host("h1").await.unwrap();
    assert!(cat.hosts(live).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_by_zone_and_domain_and_refusal_with_reason() {
    let pg = TempPostgres::start().unwrap();
    let cat = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    let live = Liveness::default();
    cat.register_host(&spec("a", 4096, &["storage:local-a"]), "t")
        .await
        .unwrap();
    cat.register_host(&spec("b", 4096, &["storage:shared", "network:front"]), "t")
        .await
        .unwrap();
    let p = cat
        .place(&def("web", 512, &["storage:shared"]), live)
        .await
        .unwrap();
    assert_eq!(p.host.as_deref(), Some("b"));
    assert_eq!(p.generation, 1);
    // Placing it again is the same placement, not a second one.
    let same = cat
        .place(&def("web", 512, &["storage:shared"]), live)
        .await
        .unwrap();
    assert_eq!(same.partition, p.partition);
    assert_eq!(same.generation, 1);
    let e = cat
        .place(&def("db", 512, &["storage:nowhere"]), live)
        .await
        .unwrap_err();
    let ClusterError::Refused(why) = e else {
        panic!("{e:?}")
    };
    assert!(why.contains("storage:nowhere"), "{why}");
    // Refused: nothing of it stays in the catalog, so a host's VM of that
    // name is later placed where it runs.
    assert!(
        cat.placements(None)
            .await
            .unwrap()
            .iter()
            .all(|p| p.name != "db")
    );
    let db = LocalPartition {
        id: Uuid::new_v4(),
        name: "db".into(),
        demand: Capacity::ZERO,
    };
    let r = cat.sync_host("a", &[db]).await.unwrap();
    assert_eq!(r.added, vec!["db"]);
    cat.put_domain(
        "dev",
        &DomainPolicy {
            importance: Importance::Development,
            available: vec!["a".into()],
            ..DomainPolicy::default()
        },
    )
    .await
    .unwrap();
    let mut d = def("scratch", 256, &[]);
    d.domain = "dev".into();
    assert_eq!(
        cat.place(&d, live).await.unwrap().host.as_deref(),
        Some("a")
    );
    let hosts = cat.hosts(live).await.unwrap();
    assert_eq!(hosts[0].partitions, 2); // scratch and db
    assert_eq!(hosts[1].used.memory_mib, 512);
    // A host with partitions placed on it is not removed.
    let e = cat.remove_host("b").await.unwrap_err();
    assert!(e.to_string().contains("drain it"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_placements_never_overshoot_a_host() {
    let pg = TempPostgres::start().unwrap();
    let cat = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    cat.register_host(&spec("only", 2048, &[]), "t")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..20 {
        let cat = cat.clone();
        tasks.push(tokio::spawn(async move {
            cat.place(&def(&format!("vm{n}"), 400, &[]), Liveness::default())
                .await
        }));
    }
    let mut placed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => placed += 1,
            Err(ClusterError::Refused(why)) => assert!(why.contains("free"), "{why}"),
            Err(e) => panic!("{e}"),
        }
    }
    // 2048 / 400: five fit, and the conditional write lets no sixth in.
    assert_eq!(placed, 5);
    let h = cat.host("only", Liveness::default()).await.unwrap();
    assert_eq!(h.used.memory_mib, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_placement_loses_nothing() {
    let pg = TempPostgres::start().unwrap();
    let cat = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    for name in ["a", "b"] {
        let mut big = spec(name, 1 << 20, &[]);
        big.capacity.vcpus = 1000;
        cat.register_host(&big, "t").await.unwrap();
    }
    let worker = {
        let cat = cat.clone();
        tokio::spawn(async move {
            for n in 0..60 {
                cat.place(&def(&format!("p{n}"), 64, &[]), Liveness::default())
                    .await?;
                cat.heartbeat(if n % 2 == 0 { "a" } else { "b" }).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, ClusterError>(())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!worker.is_finished(), "the restart must come mid-operation");
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart(Duration::from_secs(2)).unwrap();
        pg
    })
    .await
    .unwrap();
    worker.await.unwrap().unwrap();
    let all = cat.placements(None).await.unwrap();
    assert_eq!(all.len(), 60, "{all:?}");
    assert!(all.iter().all(|p| p.generation == 1 && p.host.is_some()));
    let used: u64 = cat
        .hosts(Liveness::default())
        .await
        .unwrap()
        .iter()
        .map(|h| h.partitions)
        .sum();
    assert_eq!(used, 60);
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_ledger_is_reconciled_with_the_catalog() {
    let pg = TempPostgres::start().unwrap();
    let cat = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    cat.register_host(&spec("a", 8192, &[]), "t").await.unwrap();
    cat.register_host(&spec("b", 8192, &[]), "t").await.unwrap();
    let local = |name: &str| LocalPartition {
        id: Uuid::new_v4(),
        name: name.into(),
        demand: Capacity {
            memory_mib: 256,
            vcpus: 1,
            disk_gib: 0,
        },
    };
    let (x, y) = (local("x"), local("y"));
    let r = cat.sync_host("a", &[x.clone(), y.clone()]).await.unwrap();
    assert_eq!(r.added, vec!["x", "y"]);
    // Again: nothing to do.
    let r = cat.sync_host("a", &[x.clone(), y.clone()]).await.unwrap();
    assert!(r.added.is_empty() && r.released.is_empty(), "{r:?}");
    // A pending placement on a is adopted when a's ledger has it.
    let mut pd = def("z", 256, &[]);
    pd.domain = "default".into();
    let placed = cat.place(&pd, Liveness::default()).await.unwrap();
    let z = LocalPartition {
        name: "z".into(),
        ..local("z")
    };
    let host = placed.host.clone().unwrap();
    let r = cat
        .sync_host(&host, std::slice::from_ref(&z))
        .await
        .unwrap();
    assert_eq!(r.adopted, vec!["z"]);
    // y deleted on a: released from the catalog.
    let r = cat.sync_host("a", std::slice::from_ref(&x)).await.unwrap();
    assert_eq!(r.released, vec!["y"]);
    // x moved to b (generation bumped): a's ledger still listing it is
    // reported, never taken back.
    let px = cat
        .placements(Some("a"))
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.name == "x")
        .unwrap();
    let moved = cat
        .commit_placement(px.partition, "b", px.generation)
        .await
        .unwrap();
    assert_eq!(moved.generation, px.generation + 1);
    let stale = cat.commit_placement(px.partition, "a", px.generation).await;
    assert!(matches!(stale, Err(ClusterError::Conflict(_))), "{stale:?}");
    let r = cat.sync_host("a", std::slice::from_ref(&x)).await.unwrap();
    assert_eq!(r.elsewhere, vec![("x".to_owned(), Some("b".to_owned()))]);
    // Another host's partition of the same name is not adopted.
    let r = cat.sync_host("b", &[local("z")]).await.unwrap();
    assert_eq!(r.name_taken, vec!["z"]);
}
