#![allow(clippy::tests_outside_test_module)]
//! Kill -9 at random moments never loses an acknowledged transaction and
//! never leaves a half-applied one.
//!
//! The parent re-runs this test binary as a child (`crash_child`, selected
//! by an environment variable) that starts and stops partitions from
//! several tasks and prints `ack <id>` after each `commit` returns. After
//! each SIGKILL the parent reopens the file, runs `verify`, and checks the
//! audit log against the acknowledged ids: every acknowledged id is there,
//! and at most one more per committer (durable, but killed before its ack
//! was printed).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use brood_ledger::{Ledger, LedgerDb, Resources, RunState, TxId};
use common::{CAP, create_tx, partition, start_tx, stop_tx};

const CHILD_ENV: &str = "BROOD_LEDGER_CRASH_CHILD";
const COMMITTERS: usize = 8;
const ROUNDS: usize = 20;
const DEMAND: Resources = Resources {
    memory_mib: 64,
    vcpus: 0,
    disk_gib: 1,
    nics: 1,
};

/// The child's body, run only by the parent test (which passes
/// `--ignored`): on its own it is not a test, so it is ignored, and run by
/// hand without the parent it fails.
#[test]
#[ignore = "the crash test's child process: run by that test, not on its own"]
fn crash_child() {
    let path = std::env::var(CHILD_ENV).unwrap_or_else(|_| {
        panic!("crash_child is the child process of the crash test, which sets {CHILD_ENV}")
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l = Ledger::open(&path, CAP).await.expect("open");
        let parts = l.all_partitions().await.expect("partitions");
        let tasks: Vec<_> = parts
            .into_iter()
            .map(|p| {
                let l = l.clone();
                tokio::spawn(async move {
                    let mut active = p.run_state.is_active();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < deadline {
                        let tx = if active {
                            stop_tx(p.uuid, &DEMAND)
                        } else {
                            start_tx(p.uuid, &DEMAND)
                        };
                        let id = l.commit(tx).await.expect("commit").id;
                        active = !active;
                        let mut out = std::io::stdout().lock();
                        out.write_all(format!("ack {id}\n").as_bytes())
                            .expect("print");
                        out.flush().expect("flush");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("committer");
        }
    });
}

/// A small xorshift generator: random kill times without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Round {
    acked: Vec<u64>,
}

fn run_round(path: &std::path::Path, rng: &mut Rng) -> Round {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (first_ack, got_first) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print "test crash_child ... " just before the first ack.
            let id = line
                .rsplit_once("ack ")
                .and_then(|(_, id)| id.parse::<u64>().ok());
            if let Some(id) = id {
                if acked.is_empty() {
                    let _ = first_ack.send(());
                }
                acked.push(id);
            }
        }
        acked
    });
    // One round in five dies early (while opening or on its first commits);
    // the others die at a random moment once commits are flowing.
    if rng.below(5) == 0 {
        std::thread::sleep(Duration::from_millis(rng.below(40)));
    } else {
        got_first
            .recv_timeout(Duration::from_secs(60))
            .expect("child acknowledged nothing");
        std::thread::sleep(Duration::from_millis(rng.below(300)));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    Round {
        acked: reader.join().expect("reader"),
    }
}

fn last_id(db: &LedgerDb) -> u64 {
    db.last_tx_id().expect("last id").map_or(0, |TxId(id)| id)
}

#[test]
fn kill9_loses_no_acknowledged_tx_and_applies_none_by_half() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    {
        let mut db = LedgerDb::open(&path, CAP).expect("open");
        for i in 0..COMMITTERS {
            db.commit(create_tx(&partition(&format!("crash{i}"), DEMAND)))
                .expect("create");
        }
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() ^ (u64::from(d.subsec_nanos()) << 20))
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut total_acked = 0;
    for round in 0..ROUNDS {
        let before = last_id(&LedgerDb::open(&path, CAP).expect("open"));
        let Round { acked } = run_round(&path, &mut rng);
        let db = LedgerDb::open(&path, CAP).expect("reopen after kill");
        assert_eq!(
            db.verify().expect("verify"),
            [],
            "round {round} (seed {seed})"
        );
        let after = last_id(&db);
        let durable = after - before;
        let acked_n = u64::try_from(acked.len()).unwrap_or(u64::MAX);
        assert!(
            acked.iter().all(|id| (before + 1..=after).contains(id)),
            "round {round}: acknowledged ids {acked:?} outside ({before}, {after}] (seed {seed})"
        );
        if !(durable >= acked_n && durable - acked_n <= COMMITTERS as u64) {
            for e in db.log(Some(before), 100).expect("log") {
                eprintln!("{} {} {} {}", e.id, e.time, e.reason, e.changes[0]["uuid"]);
            }
            eprintln!("acked {acked:?}");
        }
        assert!(
            durable >= acked_n && durable - acked_n <= COMMITTERS as u64,
            "round {round}: {durable} durable, {acked_n} acknowledged (seed {seed})"
        );
        for p in db.all_partitions().expect("partitions") {
            assert!(
                matches!(p.run_state, RunState::Stopped | RunState::Starting),
                "{}",
                p.run_state
            );
        }
        total_acked += acked.len();
    }
    assert!(total_acked > 0, "no round acknowledged anything");
    eprintln!("crash test: {ROUNDS} kills, {total_acked} acknowledged commits checked");
}
