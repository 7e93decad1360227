#![allow(clippy::tests_outside_test_module)]
//! Generation fencing on the fake engine against a real PostgreSQL
//! catalog (issue 15): a broodd whose partition an operations service moved
//! to another host refuses every job that would run it (409, with where it
//! runs), lets stop through, and at its next start removes the stale copy;
//! with the catalog away a start waits to the retry deadline and then is
//! refused (503), having done nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use brood_cluster::testing::TempPostgres;
use brood_cluster::{Capacity, Catalog, HostSpec, Liveness, OpsCredential};
use brood_ledger::Resources;
use brood_testkit::{FakeEngine, Mode};
use broodd::cluster::ClusterConfig;
use broodd::{Broodd, Config, Paths};
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "fence-test-token";

fn config(dir: &std::path::Path) -> Config {
    let data = dir.join("data");
    let image = dir.join("image");
    for d in [&data, &image, &dir.join("run")] {
        std::fs::create_dir_all(d).unwrap();
    }
    // A bzImage header is "HdrS" at 0x202: enough for the spec's check.
    let mut k = vec![0u8; 0x400];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(image.join("vmlinuz"), k).unwrap();
    std::fs::write(image.join("initrd.img"), b"070701fake").unwrap();
    Config {
        paths: Paths {
            data,
            image,
            templates: dir.join("templates"),
        },
        capacity: Resources {
            memory_mib: 2048,
            vcpus: 8,
            disk_gib: 20,
            nics: 4,
        },
        set_capacity: false,
        vcpu_overcommit: 4.0,
        token: TOKEN.into(),
        jobs: broodd::job::JobConfig::default(),
        nat: Default::default(),
    }
}

fn cluster(url: &str, retry: Duration) -> ClusterConfig {
    ClusterConfig {
        url: url.into(),
        name: "h1".into(),
        address: String::new(),
        zones: Vec::new(),
        // Slow ticks: the test, not the sweep, acts on the fenced copy.
        heartbeat: Duration::from_secs(60),
        liveness: Liveness {
            suspect_after_ms: 120_000,
            failed_after_ms: 240_000,
        },
        retry_for: retry,
        fault: None,
    }
}

async fn call(r: &Router, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = r
        .clone()
        .oneshot(b.body(body).unwrap())
        .await
        .unwrap_or_else(|e| match e {});
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < end {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn define(name: &str) -> Value {
    json!({"name": name, "configs": {"default": {"vcpus": 1, "memory_mib": 256}}, "start": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broodd_whose_partition_moved_refuses_to_run_it_and_removes_it_at_start() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let fake = FakeEngine::new(dir.path().join("run"), Mode::Auto);
    let b = Broodd::start_with(
        cfg.clone(),
        Arc::new(fake.clone()),
        Some(cluster(&pg.url(), Duration::from_secs(3))),
    )
    .await
    .unwrap();
    let r = b.router();
    let (st, v) = call(&r, Method::POST, "/v1/partitions", Some(define("web"))).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = call(&r, Method::POST, "/v1/partitions", Some(define("db"))).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let cat = Catalog::connect(&pg.url(), Duration::from_secs(30))
        .await
        .unwrap();
    until("the catalog holds web here", || async {
        cat.placements(Some("h1"))
            .await
            .unwrap()
            .iter()
            .any(|p| p.name == "web" && p.held)
    })
    .await;
    // A start of one that runs: refused by state, not by the fence.
    let (st, v) = call(&r, Method::POST, "/v1/partitions/db/pause", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // An operations service moves web to h2 (as after a host failure).
    cat.register_host(
        &HostSpec {
            name: "h2".into(),
            address: String::new(),
            capacity: Capacity {
                memory_mib: 2048,
                vcpus: 8,
                disk_gib: 20,
            },
            zones: Vec::new(),
        },
        "t",
    )
    .await
    .unwrap();
    let ops = OpsCredential {
        name: "ops1".into(),
        token_sha256: "0".repeat(64),
    };
    cat.add_ops("ops1", &ops.token_sha256).await.unwrap();
    cat.take_leases(&ops, Duration::from_secs(60))
        .await
        .unwrap();
    let web = cat
        .placements(Some("h1"))
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.name == "web")
        .unwrap();
    cat.move_placement(&ops, web.partition, "h1", "h2", web.generation)
        .await
        .unwrap();

    // Every job that would run it here is refused with where it runs.
    for verb in ["pause", "save"] {
        let (st, v) = call(
            &r,
            Method::POST,
            &format!("/v1/partitions/web/{verb}"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::CONFLICT, "{verb}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("fenced") && msg.contains("h2") && msg.contains("generation 2"),
            "{verb}: {msg}"
        );
    }
    // Stop passes: it only ends this host's copy. Start then is refused.
    let (st, v) = call(&r, Method::POST, "/v1/partitions/web/stop", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = call(&r, Method::POST, "/v1/partitions/web/start", None).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    // A partition that did not move is not fenced.
    let (st, v) = call(&r, Method::POST, "/v1/partitions/db/resume", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // The refused job is recorded failed with the reason.
    let (_, jobs) = call(&r, Method::GET, "/v1/jobs?state=failed", None).await;
    assert!(jobs.to_string().contains("fenced"), "{jobs}");

    // The catalog away: a start waits to the deadline, then is refused
    // (its job cannot even be admitted: jobs live in the catalog).
    let (st, v) = call(&r, Method::POST, "/v1/partitions/db/stop", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    pg.stop_server().unwrap();
    let (st, v) = call(&r, Method::POST, "/v1/partitions/db/start", None).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("job store is unavailable"), "{msg}");
    let (_, db) = call(&r, Method::GET, "/v1/partitions/db", None).await;
    assert_eq!(db["run_state"], "stopped", "nothing was done: {db}");
    pg.start_server().unwrap();

    // broodd starts again: the stale copy is removed, the other stays.
    b.shutdown().await;
    drop(r);
    let b = Broodd::start_with(
        cfg,
        Arc::new(fake),
        Some(cluster(&pg.url(), Duration::from_secs(30))),
    )
    .await
    .unwrap();
    let r = b.router();
    let (st, _) = call(&r, Method::GET, "/v1/partitions/web", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(&r, Method::GET, "/v1/partitions/db", None).await;
    assert_eq!(st, StatusCode::OK);
    // Nor is it defined here again while it runs on h2.
    let (st, v) = call(&r, Method::POST, "/v1/partitions", Some(define("web"))).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (st, v) = call(&r, Method::GET, "/v1/ledger/verify", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    b.shutdown().await;
}
