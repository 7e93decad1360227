//! `brood-bench`: runs brood and a peer side by side on the same guest and
//! prints medians and ratios.
//!
//! `brood-bench boot` compares `brood run --exec true` with the naive way:
//! a hand-written QEMU command line booting the same kernel and initramfs,
//! a client that waits for the agent's socket to appear, reads its Ready,
//! runs `true` and powers the guest off. Runs alternate between the two so
//! that drift in host load hits both alike.
//!
//! `brood-bench ledger` compares durable transactions per second through
//! brood's ledger (a writer thread with group commit: one fsync per batch)
//! with the naive way: one rusqlite connection behind a `Mutex`, one
//! `BEGIN IMMEDIATE ... COMMIT` (one fsync) per transaction, doing the same
//! row updates and audit insert. Both use WAL and `synchronous=FULL`, on
//! the same disk, with the same number of committers; rounds alternate.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use brood_proto::{Decoded, ExecRequest, FrameDecoder, GuestMsg, HostMsg, encode_frame};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "brood benchmarks: brood and a peer side by side")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// `brood run --exec true` against raw QEMU booting to the agent's Ready.
    Boot {
        /// Boots of each kind.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The brood binary.
        #[arg(long, default_value = "target/release/brood")]
        brood: PathBuf,
        /// Image directory (default: /var/lib/brood/images/default).
        #[arg(long)]
        image: Option<PathBuf>,
    },
    /// Durable ledger transactions per second: brood's group commit against
    /// one connection behind a mutex.
    Ledger {
        /// Concurrent committers on each side.
        #[arg(long, default_value_t = 32)]
        committers: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Runs of each kind; medians are printed.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Where the database files go (default: the system temp dir). Use a
        /// real disk: on tmpfs fsync costs nothing and durability is moot.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Boot { runs, brood, image } => boot(runs, &brood, image),
        Cmd::Ledger {
            committers,
            seconds,
            rounds,
            dir,
        } => ledger(committers, Duration::from_secs_f64(seconds), rounds, dir),
    }
}

/// One measured boot.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    ready_ms: f64,
    total_ms: f64,
    rss_mib: f64,
}

fn boot(runs: usize, brood: &Path, image: Option<PathBuf>) -> Result<()> {
    let dir = image.unwrap_or_else(|| PathBuf::from("/var/lib/brood/images/default"));
    let m =
        brood_image::read_manifest(&dir).context("read the default image; run scripts/setup")?;
    let kernel = m.outputs.kernel.path_in(&dir);
    let initrd = m.outputs.initrd.path_in(&dir);
    let (mut b, mut r) = (Vec::new(), Vec::new());
    for i in 0..runs {
        b.push(run_brood(brood).with_context(|| format!("brood run #{i}"))?);
        r.push(run_raw(&kernel, &initrd).with_context(|| format!("raw QEMU run #{i}"))?);
        eprintln!(
            "run {:>2}: brood ready {:>6.0} ms total {:>6.0} ms | raw ready {:>6.0} ms total {:>6.0} ms",
            i + 1,
            b[i].ready_ms,
            b[i].total_ms,
            r[i].ready_ms,
            r[i].total_ms
        );
    }
    let med = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    println!("boot benchmark: {runs} boots each, TCG, 256 MiB, 1 vCPU, default image");
    println!(
        "{:<34} {:>10} {:>10} {:>8}",
        "median", "brood", "raw QEMU", "ratio"
    );
    for (name, f) in [
        (
            "start -> agent ready (ms)",
            (|s: &Sample| s.ready_ms) as fn(&Sample) -> f64,
        ),
        ("start -> exec true -> exit (ms)", |s| s.total_ms),
        ("QEMU RSS at ready (MiB)", |s| s.rss_mib),
    ] {
        let (x, y) = (med(&b, f), med(&r, f));
        println!("{name:<34} {x:>10.1} {y:>10.1} {:>8.3}", x / y);
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn run_brood(brood: &Path) -> Result<Sample> {
    let t0 = Instant::now();
    let out = Command::new(brood)
        .args(["run", "--json", "--exec", "true"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", brood.display()))?;
    let total_ms = ms(t0.elapsed());
    if !out.status.success() {
        bail!("brood run failed: {}", out.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parse brood's JSON")?;
    let ready_ms = v["timings_ms"]["agent_ready"]
        .as_f64()
        .context("no agent_ready timing")?;
    let rss_kib = v["vm"]["qemu_rss_kib"].as_f64().unwrap_or(f64::NAN);
    Ok(Sample {
        ready_ms,
        total_ms,
        rss_mib: rss_kib / 1024.0,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn tsc_khz() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    format!("{:.0}", mhz * 1000.0)
}

/// Kills the raw QEMU's process group when dropped.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

fn run_raw(kernel: &Path, initrd: &Path) -> Result<Sample> {
    use std::os::unix::process::CommandExt;
    let dir = tempfile_dir()?;
    let sock = dir.join("agent.sock");
    let t0 = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "microvm,acpi=on,rtc=on,memory-backend=mem",
            "-accel",
            "tcg,tb-size=64",
        ])
        .args([
            "-m",
            "256M",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-bios", "/usr/share/qemu/qboot.rom"])
        .arg("-object")
        .arg(format!(
            "memory-backend-file,id=mem,size=256M,mem-path={},share=on",
            dir.join("mem").display()
        ))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 quiet tsc_early_khz={}", tsc_khz()),
        ])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .args([
            "-device",
            "virtio-serial-device,id=vser0,max_ports=2",
            "-chardev",
        ])
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            sock.display()
        ))
        .args([
            "-device",
            "virtserialport,bus=vser0.0,chardev=agent,name=org.brood.agent.0",
        ])
        .args([
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .context("start qemu-system-x86_64")?;
    let pid = child.id();
    let mut reaper = Reaper(child);
    // The naive client: poll for the socket, then read frames.
    let mut stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e).context("connect to the agent socket"),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut dec = FrameDecoder::new();
    wait_for(&mut stream, &mut dec, |id, m| {
        id == 0 && matches!(m, GuestMsg::Ready(_))
    })?;
    let ready_ms = ms(t0.elapsed());
    let rss_mib = rss_kib(pid) / 1024.0;
    stream.write_all(&encode_frame(
        1,
        &HostMsg::Exec(ExecRequest::shell("true")),
    )?)?;
    wait_for(&mut stream, &mut dec, |id, m| {
        id == 1 && matches!(m, GuestMsg::Exited(_))
    })?;
    stream.write_all(&encode_frame(2, &HostMsg::PowerOff)?)?;
    let status = reaper.0.wait()?;
    let total_ms = ms(t0.elapsed());
    if !status.success() {
        bail!("raw QEMU exited with {status}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Sample {
        ready_ms,
        total_ms,
        rss_mib,
    })
}

fn wait_for(
    s: &mut UnixStream,
    dec: &mut FrameDecoder,
    want: impl Fn(u32, &GuestMsg) -> bool,
) -> Result<()> {
    let mut buf = [0u8; 65536];
    loop {
        while let Some(d) = dec.next_frame() {
            if let Decoded::Frame(f) = d
                && want(f.id, &f.decode::<GuestMsg>()?)
            {
                return Ok(());
            }
        }
        let n = s.read(&mut buf).context("read from the agent")?;
        if n == 0 {
            bail!("agent socket closed");
        }
        dec.push(&buf[..n]);
    }
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/dev/shm/brood-bench-raw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One measured ledger run.
#[derive(Debug, Clone, Copy, Default)]
struct TxSample {
    tx_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl TxSample {
    fn new(latencies: &mut [Duration], elapsed: Duration) -> TxSample {
        latencies.sort_unstable();
        let pct = |p: usize| {
            latencies
                .get(latencies.len() * p / 100)
                .map_or(f64::NAN, |d| ms(*d))
        };
        TxSample {
            tx_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(50),
            p99_ms: pct(99),
        }
    }
}

fn ledger(committers: usize, run: Duration, rounds: usize, dir: Option<PathBuf>) -> Result<()> {
    let committers = committers.max(1);
    let base = dir.unwrap_or_else(std::env::temp_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let (mut b, mut n) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let d = tempfile::tempdir_in(&base).context("make a database directory")?;
        b.push(
            rt.block_on(ledger_brood(&d.path().join("brood.db"), committers, run))
                .with_context(|| format!("brood ledger run #{i}"))?,
        );
        n.push(
            ledger_naive(&d.path().join("naive.db"), committers, run)
                .with_context(|| format!("naive run #{i}"))?,
        );
        eprintln!(
            "run {:>2}: brood {:>8.0} tx/s p50 {:>6.2} ms | naive {:>8.0} tx/s p50 {:>6.2} ms",
            i + 1,
            b[i].tx_per_s,
            b[i].p50_ms,
            n[i].tx_per_s,
            n[i].p50_ms
        );
    }
    let med = |v: &[TxSample], f: fn(&TxSample) -> f64| median(v.iter().map(f).collect());
    println!(
        "ledger benchmark: {committers} committers, {:.1} s per run, {rounds} runs each; \
         a Tx reserves and releases 1 vCPU (2 moves + 1 audit row); WAL, synchronous=FULL",
        run.as_secs_f64()
    );
    println!(
        "{:<34} {:>10} {:>10} {:>8}",
        "median", "brood", "naive", "ratio"
    );
    for (name, f) in [
        (
            "durable transactions per second",
            (|s: &TxSample| s.tx_per_s) as fn(&TxSample) -> f64,
        ),
        ("commit latency p50 (ms)", |s| s.p50_ms),
        ("commit latency p99 (ms)", |s| s.p99_ms),
    ] {
        let (x, y) = (med(&b, f), med(&n, f));
        println!("{name:<34} {x:>10.1} {y:>10.1} {:>8.3}", x / y);
    }
    Ok(())
}

/// brood's ledger: `committers` tasks commit until `run` is over.
async fn ledger_brood(path: &Path, committers: usize, run: Duration) -> Result<TxSample> {
    use brood_ledger::{Ledger, Op, PartitionRecord, Resources, Tx};
    let n = u64::try_from(committers)?;
    let cap = Resources {
        memory_mib: 1 << 20,
        vcpus: n,
        disk_gib: 1 << 20,
        nics: n,
    };
    let ledger = Ledger::open(path, cap).await?;
    let mut parts = Vec::new();
    for i in 0..committers {
        let p = PartitionRecord::new(format!("bench-{i}"));
        parts.push(p.uuid);
        ledger
            .commit(Tx::new("bench", "create", vec![Op::InsertPartition(p)]))
            .await?;
    }
    let first = ledger.last_tx_id().await?.map_or(0, |t| t.0);
    let one = Resources {
        vcpus: 1,
        ..Resources::ZERO
    };
    let t0 = Instant::now();
    let deadline = t0 + run;
    let tasks: Vec<_> = parts
        .into_iter()
        .map(|uuid| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let mut ops = Op::reserve(uuid, &one);
                    ops.extend(Op::release(uuid, &one));
                    let t = Instant::now();
                    ledger
                        .commit(Tx::new("bench", "reserve+release", ops))
                        .await?;
                    lat.push(t.elapsed());
                }
                Ok::<_, brood_ledger::LedgerError>(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = t0.elapsed();
    let last = ledger.last_tx_id().await?.map_or(0, |t| t.0);
    if last - first != u64::try_from(lat.len())? {
        bail!(
            "{} commits acknowledged, {} audit rows",
            lat.len(),
            last - first
        );
    }
    let problems = ledger.verify().await?;
    if !problems.is_empty() {
        bail!("ledger inconsistent after the run: {problems:?}");
    }
    ledger.close().await?;
    Ok(TxSample::new(&mut lat, elapsed))
}

/// The naive way: one connection behind a mutex, one transaction (one
/// fsync) per commit, the same row updates and audit insert.
fn ledger_naive(path: &Path, committers: usize, run: Duration) -> Result<TxSample> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE holding (owner TEXT NOT NULL, kind TEXT NOT NULL,
             amount INTEGER NOT NULL CHECK (amount >= 0), PRIMARY KEY (owner, kind)) WITHOUT ROWID;
         CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL,
             actor TEXT NOT NULL, reason TEXT NOT NULL, changes TEXT NOT NULL);",
    )?;
    conn.execute(
        "INSERT INTO holding VALUES ('available', 'vcpus', ?1)",
        [i64::try_from(committers)?],
    )?;
    let conn = Arc::new(Mutex::new(conn));
    let t0 = Instant::now();
    let deadline = t0 + run;
    let threads: Vec<_> = (0..committers)
        .map(|i| {
            let conn = conn.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let owner = format!("partition-{i}");
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let c = conn.lock().map_err(|_| anyhow::anyhow!("mutex poisoned"))?;
                    naive_tx(&c, &owner)?;
                    drop(c);
                    lat.push(t.elapsed());
                }
                Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("committer panicked"))??,
        );
    }
    Ok(TxSample::new(&mut lat, t0.elapsed()))
}

/// Reserve then release 1 vCPU for `owner` and append an audit row.
fn naive_tx(c: &rusqlite::Connection, owner: &str) -> Result<()> {
    let held = |who: &str| -> rusqlite::Result<i64> {
        c.prepare_cached(
            "SELECT coalesce(max(amount), 0) FROM holding WHERE owner = ?1 AND kind = 'vcpus'",
        )?
        .query_row([who], |r| r.get(0))
    };
    let set = |who: &str, amount: i64| -> rusqlite::Result<usize> {
        c.prepare_cached(
            "INSERT INTO holding VALUES (?1, 'vcpus', ?2)
             ON CONFLICT (owner, kind) DO UPDATE SET amount = excluded.amount",
        )?
        .execute(rusqlite::params![who, amount])
    };
    c.execute_batch("BEGIN IMMEDIATE")?;
    let (a, p) = (held("available")?, held(owner)?);
    if a < 1 {
        c.execute_batch("ROLLBACK")?;
        bail!("no vCPU available");
    }
    set("available", a - 1)?;
    set(owner, p + 1)?;
    set(owner, p)?;
    set("available", a)?;
    let changes = serde_json::json!([
        {"op": "move", "kind": "vcpus", "amount": 1,
         "from": {"owner": "available", "before": a, "after": a - 1},
         "to": {"owner": owner, "before": p, "after": p + 1}},
        {"op": "move", "kind": "vcpus", "amount": 1,
         "from": {"owner": owner, "before": p + 1, "after": p},
         "to": {"owner": "available", "before": a - 1, "after": a}},
    ]);
    c.prepare_cached(
        "INSERT INTO audit (time, actor, reason, changes)
         VALUES (strftime('%Y-%m-%dT%H:%M:%fZ'), 'bench', 'reserve+release', ?1)",
    )?
    .execute([changes.to_string()])?;
    c.execute_batch("COMMIT")?;
    Ok(())
}
