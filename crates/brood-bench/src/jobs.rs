//! `brood-bench jobs`: what the job engine costs.
//!
//! 1. Light jobs admitted and completed per second on the fake engine
//!    (`brood-testkit`, broodd's router in-process, no HTTP): `clients`
//!    clients each pause and resume their own VM for `seconds`; every
//!    request is a job (admission, queue, two state changes, each its own
//!    durable ledger transaction). Side by side in the same run: the same
//!    clients reading their VM (`GET /v1/partitions/NAME`), a route that
//!    is no job (every mutating route is one: `PUT .../config` became a
//!    light job too).
//!    Then the same again with the job store in the cluster catalog (a
//!    temporary PostgreSQL on loopback, durable commits).
//! 2. On real VMs (a broodd from `--broodd`, QEMU): `brood vm start`'s
//!    route, `runs` times; each time the job's record says when its work
//!    (the start itself, the same code a direct start runs) began and
//!    ended, so the latency the queue adds is the request's total less the
//!    work's span, measured on the same start (that remainder includes the
//!    HTTP request and its authentication, which a start had before jobs
//!    too: an upper bound of what the queue adds). Medians are printed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use axum::http::StatusCode;
use brood_ledger::Resources;
use brood_testkit::TestApp;

use crate::api::Conn;
use crate::{median, ms};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct JobsBench {
    /// Concurrent clients on the fake engine.
    pub clients: usize,
    /// Seconds per fake-engine run.
    pub seconds: f64,
    /// Rounds of the fake-engine runs; medians are printed.
    pub rounds: usize,
    /// Starts on real VMs.
    pub runs: usize,
}

/// Runs both parts.
pub fn jobs(b: JobsBench, broodd: &Path, image: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (jobs, direct) = rt.block_on(fake(b, None))?;
    println!(
        "light jobs (pause/resume) on the fake engine, {} clients: median {:.0} jobs/s \
         (admitted and completed); a route that is no job (GET the VM): {:.0} requests/s; \
         ratio {:.2}",
        b.clients,
        jobs,
        direct,
        jobs / direct
    );
    // The same, the job store in the cluster catalog: a temporary
    // PostgreSQL on loopback (Debian's, fsync on as in production).
    let pg = brood_cluster::testing::TempPostgres::start_durable()
        .map_err(|e| anyhow::anyhow!("start a PostgreSQL for the catalog: {e}"))?;
    let (pg_jobs, pg_direct) = rt.block_on(fake(b, Some(&pg.url())))?;
    println!(
        "the same with the job store in PostgreSQL (broodd --catalog): median {pg_jobs:.0} jobs/s; \
         the read route {pg_direct:.0} requests/s; jobs ratio PostgreSQL / SQLite {:.2}",
        pg_jobs / jobs
    );
    drop(pg);
    if b.runs > 0 {
        real(b.runs, broodd, image)?;
    }
    Ok(())
}

async fn fake(b: JobsBench, catalog: Option<&str>) -> Result<(f64, f64)> {
    let mut builder = TestApp::builder().capacity(Resources {
        memory_mib: 1 << 20,
        vcpus: 4096,
        disk_gib: 1000,
        nics: 64,
    });
    if let Some(url) = catalog {
        builder = builder.cluster(broodd::cluster::ClusterConfig {
            url: url.into(),
            name: "bench".into(),
            address: String::new(),
            zones: Vec::new(),
            heartbeat: Duration::from_secs(5),
            liveness: brood_cluster::Liveness {
                suspect_after_ms: 15_000,
                failed_after_ms: 60_000,
            },
            retry_for: Duration::from_secs(30),
            fault: None,
        });
    }
    let app = Arc::new(builder.build().await);
    for i in 0..b.clients {
        app.running(&format!("v{i}")).await;
    }
    let (mut jobs, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..b.rounds {
        jobs.push(load(&app, b, true).await?);
        direct.push(load(&app, b, false).await?);
    }
    Ok((median(jobs), median(direct)))
}

/// Requests per second of `clients` clients for `seconds`.
async fn load(app: &Arc<TestApp>, b: JobsBench, as_jobs: bool) -> Result<f64> {
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(b.seconds);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..b.clients {
        let (app, done) = (app.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let vm = format!("/v1/partitions/v{i}");
            while Instant::now() < deadline {
                let steps: &[&str] = if as_jobs {
                    &["pause", "resume"]
                } else {
                    &["read", "read"]
                };
                for step in steps {
                    let (s, v) = if *step == "read" {
                        app.get(&vm).await
                    } else {
                        app.post_empty(&format!("{vm}/{step}")).await
                    };
                    if s != StatusCode::OK {
                        return Err(anyhow::anyhow!("{vm}/{step}: {s} {v}"));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a client")??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
}

fn at(v: &serde_json::Value, key: &str) -> Result<SystemTime> {
    let s = v[key]
        .as_str()
        .with_context(|| format!("the job has no {key}: {v}"))?;
    humantime::parse_rfc3339(s).with_context(|| format!("{key} {s:?}"))
}

fn real(runs: usize, broodd: &Path, image: &Path) -> Result<()> {
    let d = crate::fork::Daemon::start(broodd, image)?;
    let (sock, token) = (d.sock(), d.token());
    // One connection per request: broodd may close an idle keep-alive one.
    let call = |m: &str, p: &str, b: Option<&str>| Conn::open(sock)?.request(m, p, token, b);
    let (s, v) = call(
        "POST",
        "/v1/partitions",
        Some(r#"{"name":"jb","configs":{"default":{"memory_mib":256}}}"#),
    )?;
    if s != 201 {
        bail!("define jb: {s} {v}");
    }
    let measured = starts(runs, &call);
    // Whatever happened, the VM goes: broodd leaves VMs running when it stops.
    let _ = call("DELETE", "/v1/partitions/jb?force=true", None);
    let (total, work, added) = measured?;
    println!(
        "brood vm start on real VMs, median of {runs}: {:.1} ms the request, {:.1} ms the \
         start itself (the job's work, what a direct start runs), {:.2} ms outside it \
         (admission, queue, three durable job-state transactions, and the HTTP request \
         itself; {:.1}% of the request)",
        median(total.clone()),
        median(work),
        median(added.clone()),
        100.0 * median(added) / median(total)
    );
    Ok(())
}

type Spans = (Vec<f64>, Vec<f64>, Vec<f64>);
/// One request to broodd: method, path, body; status and body back.
type Call<'a> = &'a dyn Fn(&str, &str, Option<&str>) -> Result<(u16, String)>;

/// `runs` starts and kills of `jb`: each request's time, its job's work, the rest.
fn starts(runs: usize, call: Call<'_>) -> Result<Spans> {
    let (mut total, mut work, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        let (s, v) = call("POST", "/v1/partitions/jb/start", Some("{}"))?;
        let took = t.elapsed();
        if s != 200 {
            bail!("start #{i}: {s} {v}");
        }
        let (_, l) = call("GET", "/v1/jobs?target=jb&limit=1", None)?;
        let l: serde_json::Value = serde_json::from_str(&l)?;
        let job = &l["items"][0];
        if job["kind"] != "partition.start" {
            bail!("the newest job of jb is not its start: {job}");
        }
        let span = at(job, "finished_at")?
            .duration_since(at(job, "started_at")?)
            .unwrap_or_default();
        total.push(ms(took));
        work.push(ms(span));
        added.push(ms(took.saturating_sub(span)));
        let (s, v) = call("POST", "/v1/partitions/jb/kill", Some("{}"))?;
        if s != 200 {
            bail!("kill #{i}: {s} {v}");
        }
    }
    Ok((total, work, added))
}
