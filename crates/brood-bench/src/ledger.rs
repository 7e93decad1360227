//! `brood-bench ledger`: durable transactions per second through brood's
//! ledger (a writer thread with group commit: one fsync per batch) against
//! the naive way: one rusqlite connection behind a `Mutex`, one `BEGIN
//! IMMEDIATE ... COMMIT` (one fsync) per transaction, doing the same row
//! updates and audit insert. Both use WAL and `synchronous=FULL`, on the
//! same disk, with the same number of committers; rounds alternate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{median, ms};

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

pub fn ledger(committers: usize, run: Duration, rounds: usize, dir: Option<PathBuf>) -> Result<()> {
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
