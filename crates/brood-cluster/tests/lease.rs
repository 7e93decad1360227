//! Operations instances, host leases and the failover move against a real
//! PostgreSQL (a temporary cluster per test).

#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use brood_cluster::testing::TempPostgres;
use brood_cluster::{
    Capacity, Catalog, ClusterError, HostSpec, Liveness, LocalPartition, OpsCredential,
};
use uuid::Uuid;

const RETRY: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(30);

fn spec(name: &str) -> HostSpec {
    HostSpec {
        name: name.into(),
        address: String::new(),
        capacity: Capacity {
            memory_mib: 1024,
            vcpus: 4,
            disk_gib: 10,
        },
        zones: Vec::new(),
    }
}

fn cred(name: &str, c: char) -> OpsCredential {
    OpsCredential {
        name: name.into(),
        token_sha256: std::iter::repeat_n(c, 64).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_hosts_by_leases_and_only_authorized_ones_act() {
    let pg = TempPostgres::start().unwrap();
    let cat = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    for h in ["h1", "h2", "h3"] {
        cat.register_host(&spec(h), "t").await.unwrap();
    }
    let (a, b) = (cred("a", 'a'), cred("b", 'b'));
    assert!(matches!(
        cat.take_leases(&a, TTL).await,
        Err(ClusterError::Conflict(m)) if m.contains("not authorized")
    ));
    cat.add_ops("a", &a.token_sha256).await.unwrap();
    // The same add again is a retry; another token for the name is refused.
    cat.add_ops("a", &a.token_sha256).await.unwrap();
    assert!(cat.add_ops("a", &b.token_sha256).await.is_err());
    assert!(cat.add_ops("b", "short").await.is_err());
    cat.add_ops("b", &b.token_sha256).await.unwrap();
    // Alone, a watches every host.
    assert_eq!(cat.take_leases(&a, TTL).await.unwrap(), ["h1", "h2", "h3"]);
    // b arrives: it finds nothing free until a gives back beyond its share.
    assert!(cat.take_leases(&b, TTL).await.unwrap().is_empty());
    assert_eq!(cat.take_leases(&a, TTL).await.unwrap(), ["h1", "h2"]);
    assert_eq!(cat.take_leases(&b, TTL).await.unwrap(), ["h3"]);
    let w = cat.watchers().await.unwrap();
    assert_eq!(w.get("h3").map(String::as_str), Some("b"));
    assert_eq!(w.len(), 3);
    // A wrong token is refused even under a known name.
    assert!(cat.take_leases(&cred("a", 'c'), TTL).await.is_err());
    // a dies (its leases expire): b takes its hosts.
    let short = Duration::from_millis(300);
    cat.take_leases(&a, short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(cat.take_leases(&b, TTL).await.unwrap(), ["h1", "h2", "h3"]);
    let listed = cat.ops_instances().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].hosts, ["h1", "h2", "h3"]);
    // Removing an instance takes its leases with it.
    cat.remove_ops("b").await.unwrap();
    assert!(cat.watchers().await.unwrap().is_empty());
    assert!(matches!(
        cat.remove_ops("b").await,
        Err(ClusterError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_needs_the_lease_bumps_the_generation_and_leaves_the_old_copy_fenced() {
    let pg = TempPostgres::start().unwrap();
    let cat = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    for h in ["h1", "h2"] {
        cat.register_host(&spec(h), "t").await.unwrap();
    }
    let local = Uuid::new_v4();
    let web = LocalPartition {
        id: local,
        name: "web".into(),
        demand: Capacity {
            memory_mib: 384,
            vcpus: 1,
            disk_gib: 0,
        },
    };
    cat.sync_host("h1", std::slice::from_ref(&web))
        .await
        .unwrap();
    let spec = serde_json::json!({"name": "web", "configs": {}, "start": true});
    assert!(cat.publish_spec("h1", local, Some(&spec)).await.unwrap());
    // Only the host holding it publishes.
    assert!(!cat.publish_spec("h2", local, Some(&spec)).await.unwrap());
    let (p, left) = cat.placement_of(local, "web").await.unwrap().unwrap();
    assert_eq!(
        (p.host.as_deref(), p.generation, left),
        (Some("h1"), 1, false)
    );
    let stranded = cat.stranded_on("h1").await.unwrap();
    assert_eq!(stranded.len(), 1);
    assert_eq!(stranded[0].spec.as_ref(), Some(&spec));

    let a = cred("a", 'a');
    cat.add_ops("a", &a.token_sha256).await.unwrap();
    cat.take_leases(&a, TTL).await.unwrap();
    let b = cred("b", 'b');
    cat.add_ops("b", &b.token_sha256).await.unwrap();
    // Not b's host: refused.
    assert!(matches!(
        cat.move_placement(&b, p.partition, "h1", "h2", 1).await,
        Err(ClusterError::Conflict(m)) if m.contains("lease")
    ));
    let moved = cat
        .move_placement(&a, p.partition, "h1", "h2", 1)
        .await
        .unwrap();
    assert_eq!(
        (moved.host.as_deref(), moved.generation, moved.held),
        (Some("h2"), 2, false)
    );
    // Once: a second try from the same generation changes nothing.
    assert!(
        cat.move_placement(&a, p.partition, "h1", "h2", 1)
            .await
            .is_err()
    );
    // h1's copy is left behind (fenced); h2 sees it arriving.
    let (p2, left) = cat.placement_of(local, "web").await.unwrap().unwrap();
    assert!(left);
    assert_eq!(p2.host.as_deref(), Some("h2"));
    assert!(cat.left_behind().await.unwrap().contains(&local));
    let arriving = cat.arriving("h2").await.unwrap();
    assert_eq!(arriving.len(), 1);
    assert_eq!(arriving[0].1, spec);
    // h2 defines it: the reconcile adopts it there by name.
    let there = LocalPartition {
        id: Uuid::new_v4(),
        ..web
    };
    let r = cat.sync_host("h2", &[there]).await.unwrap();
    assert_eq!(r.adopted, ["web"]);
    assert!(cat.arriving("h2").await.unwrap().is_empty());
    let hosts = cat.hosts(Liveness::default()).await.unwrap();
    assert_eq!(hosts.iter().find(|h| h.name == "h2").unwrap().partitions, 1);
}
