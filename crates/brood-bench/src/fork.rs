//! `brood-bench fork`: broodd's fork against the ways a VM can be had
//! otherwise, all on the same guest image and the same template, in one run.
//!
//! - brood: `POST /v1/templates/T/fork` from a template with a pool of
//!   children that already loaded its state and rehearsed the identity step;
//!   latency from the API call to the child running (broodd's own figure)
//!   and to ready (the call returns once the identity is applied), single
//!   forks with the pool refilled between them, and fan-outs of 16 and 32.
//! - (a) a cold boot of the same image to the same readiness (the agent
//!   answering), through broodd;
//! - (b) the naive clone: a fresh QEMU per child that loads the same
//!   template state and then gets its identity (no pool, nothing warmed);
//! - (c) a full-state save and restore of a VM of the same image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use brood_engine::qemu::fork::Template;
use brood_engine::{QemuConfig, QemuEngine, VmSpec};
use serde_json::{Value, json};

use crate::api::{Conn, pct, wait_socket};
use crate::{median, ms};

/// The daemon under test, on throw-away directories.
pub(crate) struct Daemon {
    sock: PathBuf,
    token: String,
    child: std::process::Child,
    run: tempfile::TempDir,
    _data: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: broodd drains its pools on the way out.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Its socket.
    pub(crate) fn sock(&self) -> &std::path::Path {
        &self.sock
    }

    /// Its token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub(crate) fn start(broodd: &Path, image: &Path) -> Result<Self> {
        let data = tempfile::Builder::new()
            .prefix("brood-bench-fork-")
            .tempdir()?;
        let run = tempfile::Builder::new()
            .prefix("brood-bench-fork-")
            .tempdir_in("/dev/shm")?;
        let child = Command::new(broodd)
            .arg("--data-dir")
            .arg(data.path())
            .arg("--run-dir")
            .arg(run.path().join("vms"))
            .arg("--image")
            .arg(image)
            .args(["--memory-mib", "20000", "--vcpu-overcommit", "64"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", broodd.display()))?;
        let sock = data.path().join("broodd.sock");
        wait_socket(&sock)?;
        let token = std::fs::read_to_string(data.path().join("token"))?
            .trim()
            .to_string();
        Ok(Self {
            sock,
            token,
            child,
            run,
            _data: data,
        })
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let body = body.map(Value::to_string);
        let (status, text) =
            Conn::open(&self.sock)?.request(method, path, &self.token, body.as_deref())?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    pub(crate) fn delete(&self, name: &str) -> Result<()> {
        self.call("DELETE", &format!("/v1/partitions/{name}?force=true"), None)?;
        Ok(())
    }

    pub(crate) fn exec_true(&self, name: &str) -> Result<()> {
        self.call(
            "POST",
            &format!("/v1/partitions/{name}/exec"),
            Some(&json!({"command": "true"})),
        )?;
        Ok(())
    }

    /// Its data directory.
    pub(crate) fn data(&self) -> &Path {
        self._data.path()
    }

    pub(crate) fn wait_pool(&self, tpl: &str, size: u64) -> Result<()> {
        let t0 = Instant::now();
        while self.call("GET", &format!("/v1/templates/{tpl}"), None)?["warm_ready"].as_u64()
            != Some(size)
        {
            if t0.elapsed() > Duration::from_secs(300) {
                bail!("the pool of {tpl} did not refill");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

pub(crate) fn smaps_kib(pid: u64, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(field))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .sum()
}

/// Runs the fork benchmark.
pub fn fork(runs: usize, pool: u64, broodd: &Path, image: &Path) -> Result<()> {
    let d = Daemon::start(broodd, image)?;
    let parent = json!({"name": "tpl", "configs": {"default": {"memory_mib": 256}}, "start": true});
    d.call("POST", "/v1/partitions", Some(&parent))?;
    d.exec_true("tpl")?;
    let rss = smaps_kib(
        d.call("GET", "/v1/partitions/tpl", None)?["pid"]
            .as_u64()
            .unwrap_or(0),
        "Rss:",
    );
    let tpl = d.call(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": "tpl", "warm": pool})),
    )?;
    let uuid = tpl["uuid"].as_str().context("template uuid")?.to_string();
    eprintln!(
        "template made ({} bytes of state); filling a pool of {pool}",
        tpl["state_bytes"]
    );
    d.wait_pool("tpl", pool)?;

    // brood: single forks.
    let (mut running, mut ready) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let t0 = Instant::now();
        let r = d.call("POST", "/v1/templates/tpl/fork", Some(&json!({"count": 1})))?;
        ready.push(ms(t0.elapsed()));
        let c = &r["children"][0];
        if c["status"] != "ready" {
            bail!("fork {i}: {c}");
        }
        running.push(c["running_ms"].as_f64().unwrap_or(f64::NAN));
        d.delete(c["name"].as_str().unwrap_or(""))?;
        d.wait_pool("tpl", pool)?;
    }
    eprintln!("{runs} single forks done");

    // brood: fan-outs.
    let mut fan = Vec::new();
    let (mut pss, mut private) = (Vec::new(), Vec::new());
    for n in [16u64, 32] {
        d.wait_pool("tpl", pool)?;
        let t0 = Instant::now();
        let r = d.call("POST", "/v1/templates/tpl/fork", Some(&json!({"count": n})))?;
        let wall = ms(t0.elapsed());
        let kids = r["children"].as_array().cloned().unwrap_or_default();
        if kids.len() as u64 != n || kids.iter().any(|c| c["status"] != "ready") {
            bail!("fan-out of {n}: {r}");
        }
        fan.push((n, wall));
        for c in &kids {
            let p = d.call(
                "GET",
                &format!("/v1/partitions/{}", c["name"].as_str().unwrap_or("")),
                None,
            )?;
            let pid = p["pid"].as_u64().unwrap_or(0);
            if n == 32 {
                pss.push(smaps_kib(pid, "Pss:") / 1024.0);
                private.push(
                    (smaps_kib(pid, "Private_Dirty:") + smaps_kib(pid, "Private_Clean:")) / 1024.0,
                );
            }
        }
        for c in &kids {
            d.delete(c["name"].as_str().unwrap_or(""))?;
        }
        eprintln!("fan-out of {n}: {wall:.0} ms");
    }

    // (a) cold boots to agent readiness, through broodd.
    let mut cold = Vec::new();
    for i in 0..runs.min(10) {
        let t0 = Instant::now();
        let body = json!({"name": format!("cold{i}"), "configs": {"default": {"memory_mib": 256}}, "start": true});
        d.call("POST", "/v1/partitions", Some(&body))?;
        d.exec_true(&format!("cold{i}"))?;
        cold.push(ms(t0.elapsed()));
        d.delete(&format!("cold{i}"))?;
    }
    eprintln!("cold boots done");

    // (b) and (c) with the engine directly, on the same template and image.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tpl_dir =
        PathBuf::from(format!("{}-templates", d.run.path().join("vms").display())).join(&uuid);
    let seq = u32::try_from(tpl["fork_point"].as_u64().context("fork point")?)?;
    let (naive_run, naive_ready) = rt.block_on(naive_clones(&tpl_dir, seq, runs.min(20)))?;
    eprintln!("naive clones done");
    let restore = rt.block_on(save_restore(image, runs.min(10)))?;
    eprintln!("save/restore done");

    report(
        runs,
        pool,
        rss,
        &mut running,
        &mut ready,
        &fan,
        &pss,
        &private,
        &cold,
        &naive_run,
        &naive_ready,
        &restore,
    );
    let _ = d.call("DELETE", "/v1/templates/tpl?cascade=true", None);
    Ok(())
}

fn engine(root: &Path) -> QemuEngine {
    let mut cfg = QemuConfig::detect();
    cfg.run_root = root.to_path_buf();
    QemuEngine::new(cfg)
}

fn identity(i: u32) -> brood_proto::ChildConfig {
    brood_proto::ChildConfig {
        index: i,
        hostname: format!("naive-{i}"),
        macs: Vec::new(),
        ipv4: None,
        identity: None,
        entropy: vec![u8::try_from(i % 251).unwrap_or(0); 64],
        machine_id: format!("{i:032x}"),
        values: Vec::new(),
        time_unix_ns: 0,
    }
}

/// (b): a fresh QEMU per child, loading the template state, no pool.
async fn naive_clones(dir: &Path, seq: u32, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let tpl = Template::load(dir)?;
    let root = tempfile::Builder::new()
        .prefix("brood-bench-naive-")
        .tempdir_in("/dev/shm")?;
    let engine = engine(root.path());
    let (mut running, mut ready) = (Vec::new(), Vec::new());
    for i in 0..n {
        let index = u32::try_from(i).unwrap_or(0);
        let mut spec = tpl.child_spec(&format!("naive{i}"), Vec::new())?;
        spec.die_with_parent = true;
        let t0 = Instant::now();
        let inc = engine.prepare_child(&tpl, &spec).await?;
        let vm = engine.start_child(&tpl, inc).await?;
        running.push(ms(t0.elapsed()));
        let report = vm
            .agent()?
            .complete_fork(seq, identity(index), Duration::from_secs(60))
            .await?;
        ready.push(ms(t0.elapsed()));
        if let Some(f) = report.failed {
            bail!("naive clone {i}: {f}");
        }
        vm.kill().await?;
    }
    Ok((running, ready))
}

/// (c): a VM of the same image saved whole once, restored `n` times.
async fn save_restore(image: &Path, n: usize) -> Result<Vec<f64>> {
    let root = tempfile::Builder::new()
        .prefix("brood-bench-restore-")
        .tempdir_in("/dev/shm")?;
    let engine = engine(root.path());
    let mut spec = VmSpec::new("saved", image.join("vmlinuz"));
    spec.initrd = Some(image.join("initrd.img"));
    let vm = engine.boot(&spec).await?;
    vm.wait_ready(Duration::from_secs(60)).await?;
    let state = root.path().join("vm.state");
    vm.save(&state).await?;
    vm.kill().await?;
    drop(vm);
    let mut out = Vec::new();
    for i in 0..n {
        let mut s = spec.clone();
        s.name = format!("restored{i}");
        let t0 = Instant::now();
        let vm = engine.restore(&s, &state).await?;
        vm.agent()?.info().await?;
        out.push(ms(t0.elapsed()));
        vm.kill().await?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn report(
    runs: usize,
    pool: u64,
    rss: f64,
    running: &mut [f64],
    ready: &mut [f64],
    fan: &[(u64, f64)],
    pss: &[f64],
    private: &[f64],
    cold: &[f64],
    naive_run: &[f64],
    naive_ready: &[f64],
    restore: &[f64],
) {
    let p50 = |v: &mut Vec<f64>| pct(v, 0.5);
    let mut naive_run = naive_run.to_vec();
    let mut naive_ready = naive_ready.to_vec();
    println!("fork benchmark: template of 256 MiB, TCG, pool of {pool}; {runs} single forks");
    println!("{:<44} {:>10} {:>10}", "", "p50", "p99");
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "brood fork: API call -> child running (ms)",
        pct(running, 0.5),
        pct(running, 0.99)
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "brood fork: API call -> child ready (ms)",
        pct(ready, 0.5),
        pct(ready, 0.99)
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "(b) naive clone: start -> running (ms)",
        p50(&mut naive_run),
        pct(&mut naive_run, 0.99)
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "(b) naive clone: start -> ready (ms)",
        p50(&mut naive_ready),
        pct(&mut naive_ready, 0.99)
    );
    let mut cold = cold.to_vec();
    let mut restore = restore.to_vec();
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "(a) cold boot -> agent ready (ms)",
        p50(&mut cold),
        pct(&mut cold, 0.99)
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "(c) full restore -> agent answers (ms)",
        p50(&mut restore),
        pct(&mut restore, 0.99)
    );
    for (n, wall) in fan {
        println!(
            "{:<44} {:>10.0}",
            format!("brood fan-out of {n}: all ready (ms)"),
            wall
        );
    }
    println!(
        "{:<44} {:>10.1}",
        "per-child PSS, 32 live children (MiB, median)",
        median(pss.to_vec())
    );
    println!(
        "{:<44} {:>10.1}",
        "per-child private memory (MiB, median)",
        median(private.to_vec())
    );
    println!(
        "{:<44} {:>10.1}",
        "template VM RSS before the fork (MiB)",
        rss / 1024.0
    );
    let ratio = pct(ready, 0.5) / pct(&mut cold, 0.5);
    println!(
        "{:<44} {:>10.3}",
        "fork-to-ready / cold-boot-to-ready", ratio
    );
    println!(
        "{:<44} {:>10.3}",
        "fork-to-ready / naive-clone-to-ready",
        pct(ready, 0.5) / pct(&mut naive_ready, 0.5)
    );
    println!(
        "{:<44} {:>10.3}",
        "fork-to-ready / restore-to-ready",
        pct(ready, 0.5) / pct(&mut restore, 0.5)
    );
}
