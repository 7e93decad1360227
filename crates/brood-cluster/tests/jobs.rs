//! The job store in the catalog against a real PostgreSQL (a temporary
//! cluster per test): the same conformance checks the SQLite ledger's job
//! store passes, each host seeing only its own jobs, the log append-only,
//! and a PostgreSQL restart in the middle of admitting and running jobs
//! losing nothing and doing nothing twice.

#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use brood_cluster::testing::TempPostgres;
use brood_cluster::{Catalog, PgJobStore};
use brood_ledger::{
    AdmitLimits, JobChange, JobFilter, JobQueue, JobState, JobStore, Ledger, NewJob, Resources,
    job_store_conformance as conformance,
};

const RETRY: Duration = Duration::from_secs(60);

async fn ledger(dir: &tempfile::TempDir) -> Ledger {
    let cap = Resources {
        memory_mib: 4096,
        vcpus: 4,
        disk_gib: 10,
        nics: 4,
    };
    Ledger::open(dir.path().join("ledger.db"), cap)
        .await
        .unwrap()
}

fn job(kind: &str, target: &str) -> NewJob {
    NewJob {
        unit: None,
        actor: "alice".into(),
        kind: kind.into(),
        target: target.into(),
        queue: JobQueue::High,
        priority: 0,
        adds_vm: false,
        params: serde_json::json!({"name": target}),
    }
}

const OPEN: AdmitLimits = AdmitLimits {
    queue_bound: 1000,
    max_vms: None,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_job_store_behaves_as_the_ledgers_does() {
    let pg = TempPostgres::start().unwrap();
    let cat = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(&dir).await;
    // Each check wants a store with no jobs: a host of its own.
    let store = |host: &str| PgJobStore::new(cat.clone(), host, l.clone());
    assert_eq!(store("a").backend(), "postgresql");
    conformance::queue_bound(&store("a")).await.unwrap();
    conformance::max_vms(&store("b")).await.unwrap();
    conformance::state_changes(&store("c")).await.unwrap();
    conformance::workflows(&store("d"), "web").await.unwrap();
    // Workflows are the cluster's: one host stores, another reads.
    store("d")
        .put_workflow("shared", serde_json::json!({"tasks": []}), "alice")
        .await
        .unwrap();
    let w = store("e").workflow("shared", None).await.unwrap().unwrap();
    assert_eq!((w.name.as_str(), w.version), ("shared", 1));
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_sees_only_its_own_jobs_and_their_logs_are_append_only() {
    let pg = TempPostgres::start().unwrap();
    let cat = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(&dir).await;
    let a = PgJobStore::new(cat.clone(), "a", l.clone());
    let b = PgJobStore::new(cat.clone(), "b", l.clone());
    let ja = a
        .admit_job(job("partition.start", "web"), OPEN)
        .await
        .unwrap();
    let jb = b
        .admit_job(job("partition.start", "db"), OPEN)
        .await
        .unwrap();
    assert_ne!(ja.id, jb.id, "job ids are the cluster's");
    assert!(b.job(ja.id).await.unwrap().is_none());
    assert!(b.job_events(ja.id).await.unwrap().is_empty());
    let listed = b
        .jobs(JobFilter {
            limit: 10,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), [jb.id]);
    let e = b
        .set_job_state(JobChange::new(
            ja.id,
            &[JobState::Queued],
            JobState::Running,
        ))
        .await
        .expect_err("another host's job");
    assert!(e.to_string().contains("no job"), "{e}");
    // A host's queue bound counts only its own waiting jobs.
    let tight = AdmitLimits {
        queue_bound: 1,
        max_vms: None,
    };
    let refused = a
        .admit_job(job("partition.stop", "web"), tight)
        .await
        .unwrap();
    assert_eq!(refused.state, JobState::Refused);
    let c = PgJobStore::new(cat.clone(), "c", l.clone());
    let admitted = c
        .admit_job(job("partition.stop", "x"), tight)
        .await
        .unwrap();
    assert_eq!(admitted.state, JobState::Queued);

    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for sql in ["UPDATE job_event SET kind = 'x'", "DELETE FROM job_event"] {
        let e = client.execute(sql, &[]).await.expect_err(sql);
        assert!(format!("{e:?}").contains("append-only"), "{sql}: {e:?}");
    }
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_job_loses_nothing_and_repeats_nothing() {
    let pg = TempPostgres::start().unwrap();
    let cat = Catalog::connect(&pg.url(), RETRY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(&dir).await;
    let store = PgJobStore::new(cat.clone(), "h", l.clone());
    const N: usize = 40;
    let worker = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..N {
                let j = store
                    .admit_job(job("partition.start", &format!("vm{n}")), OPEN)
                    .await?;
                let mut run = JobChange::new(j.id, &[JobState::Queued], JobState::Running);
                run.runner = Some("run-1".into());
                store.set_job_state(run).await?;
                store
                    .append_job_event(j.id, "task", serde_json::json!({"n": n}))
                    .await?;
                let mut done = JobChange::new(j.id, &[JobState::Running], JobState::Succeeded);
                done.result = Some(serde_json::json!({"n": n}));
                store.set_job_state(done).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, brood_ledger::LedgerError>(())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!worker.is_finished(), "the restart must come mid-run");
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart(Duration::from_secs(2)).unwrap();
        pg
    })
    .await
    .unwrap();
    worker.await.unwrap().unwrap();
    let all = store
        .jobs(JobFilter {
            limit: 1000,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), N, "one job per admission: {all:?}");
    for j in &all {
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        let kinds: Vec<String> = store
            .job_events(j.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["state", "state", "task", "state"], "job {}", j.id);
    }
    drop(pg);
}
