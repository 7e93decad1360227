//! `Ledger`: the cheap, cloneable async handle broodd uses.
//!
//! ```text
//!  tasks ──commit──▶ writer queue ──▶ [ledger-writer thread]  LedgerDb (read-write)
//!                                       drain queue → BEGIN IMMEDIATE
//!                                       SAVEPOINT/RELEASE per Tx → COMMIT (1 fsync)
//!                                       → answer every Tx of the batch
//!  tasks ──read───▶ reader queue ──▶ [ledger-reader-N threads] read-only connections
//! ```
//!
//! No SQLite call runs on a tokio worker: callers only enqueue a job and
//! await a oneshot. While the writer fsyncs one batch the next one queues
//! up, which is what makes group commit pay off. WAL lets readers run
//! during a commit, so reads never wait behind one; a read started after
//! `commit` returned sees that commit. Applying ops is `store`'s job.
//! Every committed transaction is announced to [`Ledger::subscribe`]rs
//! (id, actor, reason) before its committer hears back.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

use crate::db::{LedgerDb, set_capacity_tx};
use crate::error::{DbContext, LedgerError};
use crate::partition::PartitionRecord;
use crate::pool::{self, PoolInfo, PoolItem};
use crate::read::{self, AuditEntry};
use crate::resource::{Holding, Owner, Resources};
use crate::schema;
use crate::tx::{Committed, Tx, TxId};
use crate::verify::{self, Problem};

/// Tuning of a `Ledger`.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Read-only connections, each on its own thread (at least 1).
    pub readers: usize,
    /// Most transactions committed together.
    pub max_batch: usize,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            readers: 2,
            max_batch: 512,
        }
    }
}

/// Commit notes buffered per subscriber before it lags (and misses some).
const NOTE_BUFFER: usize = 1024;

/// A transaction that committed, as [`Ledger::subscribe`] announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitNote {
    /// Its audit row.
    pub id: TxId,
    /// Who made it.
    pub actor: String,
    /// Why.
    pub reason: String,
}

enum WriteJob {
    Commit {
        tx: Tx,
        reply: oneshot::Sender<Result<Committed, LedgerError>>,
    },
    Close(oneshot::Sender<()>),
    /// A write of the job store (`job`): its own transaction, after the batch.
    Run(WriteFn),
}

type WriteFn = Box<dyn FnOnce(&Connection) + Send>;

type ReadFn = Box<dyn FnOnce(&Connection) + Send>;

enum ReadJob {
    Run(ReadFn),
    Stop(oneshot::Sender<()>),
}

struct Shared {
    path: PathBuf,
    writer: mpsc::Sender<WriteJob>,
    commits: broadcast::Sender<CommitNote>,
    readers: mpsc::Sender<ReadJob>,
    reader_count: usize,
}

/// Async handle to the ledger; clone it freely. The threads stop when the
/// last clone is dropped or `close` is called.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.shared.path)
            .field("readers", &self.shared.reader_count)
            .finish()
    }
}

impl Ledger {
    /// Opens or creates the ledger at `path` with default options; see
    /// `LedgerDb::open` for what happens to `initial_capacity`.
    pub async fn open(
        path: impl AsRef<Path>,
        initial_capacity: Resources,
    ) -> Result<Ledger, LedgerError> {
        Ledger::open_with(path, initial_capacity, LedgerOptions::default()).await
    }

    /// Opens or creates the ledger at `path`.
    pub async fn open_with(
        path: impl AsRef<Path>,
        initial_capacity: Resources,
        options: LedgerOptions,
    ) -> Result<Ledger, LedgerError> {
        let path = path.as_ref().to_owned();
        let (writer, jobs) = mpsc::channel();
        let (ready, is_ready) = oneshot::channel();
        let (p, max_batch) = (path.clone(), options.max_batch.max(1));
        let commits = broadcast::channel(NOTE_BUFFER).0;
        let notes = commits.clone();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || match LedgerDb::open(&p, initial_capacity) {
                Ok(db) => {
                    let _ = ready.send(Ok(()));
                    write_loop(db, &jobs, max_batch, &notes);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(LedgerError::Spawn)?;
        is_ready.await.map_err(|_| LedgerError::Closed)??;

        let reader_count = options.readers.max(1);
        let (readers, read_jobs) = mpsc::channel();
        let read_jobs = Arc::new(Mutex::new(read_jobs));
        for i in 0..reader_count {
            let (ready, is_ready) = oneshot::channel();
            let (p, jobs) = (path.clone(), read_jobs.clone());
            std::thread::Builder::new()
                .name(format!("ledger-reader-{i}"))
                .spawn(move || match schema::open_reader(&p) {
                    Ok(conn) => {
                        let _ = ready.send(Ok(()));
                        read_loop(conn, &jobs);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                })
                .map_err(LedgerError::Spawn)?;
            is_ready.await.map_err(|_| LedgerError::Closed)??;
        }
        Ok(Ledger {
            shared: Arc::new(Shared {
                path,
                writer,
                commits,
                readers,
                reader_count,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Announces every transaction committed from now on (not the ones
    /// before): one note each, sent before its committer hears back. A
    /// subscriber that falls [`NOTE_BUFFER`] notes behind misses some
    /// (`RecvError::Lagged`); the audit log has them all.
    pub fn subscribe(&self) -> broadcast::Receiver<CommitNote> {
        self.shared.commits.subscribe()
    }

    /// Applies `tx` atomically; returns once it is on disk (or why not).
    ///
    /// The Tx is queued as soon as this is first polled; dropping the
    /// future afterwards (a timeout, a cancelled request) does not withdraw
    /// it, so re-read before retrying. On `BatchFailed` (a failed COMMIT,
    /// i.e. an I/O error) the outcome is unknown in the same way.
    pub async fn commit(&self, tx: Tx) -> Result<Committed, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .writer
            .send(WriteJob::Commit { tx, reply })
            .map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }

    /// Sets the host capacity in an audited transaction; `available` gains
    /// or loses the difference. Refused (`CapacityInUse`) if partitions
    /// hold more than the new capacity.
    pub async fn set_capacity(&self, capacity: Resources) -> Result<Committed, LedgerError> {
        self.commit(set_capacity_tx(capacity)).await
    }

    /// Stops the writer after the transactions queued before this call and
    /// closes every connection; other clones then get `Closed`.
    pub async fn close(self) -> Result<(), LedgerError> {
        let (done, is_done) = oneshot::channel();
        self.shared
            .writer
            .send(WriteJob::Close(done))
            .map_err(|_| LedgerError::Closed)?;
        is_done.await.map_err(|_| LedgerError::Closed)?;
        for _ in 0..self.shared.reader_count {
            let (done, is_done) = oneshot::channel();
            if self.shared.readers.send(ReadJob::Stop(done)).is_ok() {
                let _ = is_done.await;
            }
        }
        Ok(())
    }

    /// Runs `f` on a reader thread inside one read transaction (a
    /// consistent snapshot).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: ReadFn = Box::new(move |conn| {
            let result = conn
                .unchecked_transaction()
                .ctx("begin read")
                .and_then(|tx| f(&tx));
            let _ = reply.send(result);
        });
        self.shared
            .readers
            .send(ReadJob::Run(job))
            .map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }

    /// Runs `f` on the writer thread inside its own transaction, committed
    /// (durably) when `f` returns `Ok`, rolled back otherwise. For the job
    /// store's rows, which are not resource transactions.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: WriteFn = Box::new(move |conn| {
            let result = conn
                .unchecked_transaction()
                .ctx("begin write")
                .and_then(|tx| {
                    let v = f(&tx)?;
                    tx.commit().ctx("commit write")?;
                    Ok(v)
                });
            let _ = reply.send(result);
        });
        self.shared
            .writer
            .send(WriteJob::Run(job))
            .map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }

    /// The host capacity.
    pub async fn capacity(&self) -> Result<Resources, LedgerError> {
        self.read(read::capacity).await
    }

    /// Every holding row, by owner then kind.
    pub async fn holdings(&self) -> Result<Vec<Holding>, LedgerError> {
        self.read(read::holdings).await
    }

    /// Everything `owner` holds.
    pub async fn held_by(&self, owner: Owner) -> Result<Resources, LedgerError> {
        self.read(move |c| read::held_by(c, owner)).await
    }

    /// The partition with this name.
    pub async fn partition_by_name(
        &self,
        name: &str,
    ) -> Result<Option<PartitionRecord>, LedgerError> {
        let name = name.to_owned();
        self.read(move |c| read::partition_by_name(c, &name)).await
    }

    /// The partition with this uuid.
    pub async fn partition_by_uuid(
        &self,
        uuid: Uuid,
    ) -> Result<Option<PartitionRecord>, LedgerError> {
        self.read(move |c| read::partition_by_uuid(c, uuid)).await
    }

    /// Up to `limit` partitions whose names sort after `after_name`, by
    /// name; pass the last name of a page to get the next.
    pub async fn partitions(
        &self,
        after_name: Option<String>,
        limit: usize,
    ) -> Result<Vec<PartitionRecord>, LedgerError> {
        self.read(move |c| read::partitions(c, after_name.as_deref(), limit))
            .await
    }

    /// Every partition, by name.
    pub async fn all_partitions(&self) -> Result<Vec<PartitionRecord>, LedgerError> {
        self.read(read::all_partitions).await
    }

    /// The partitions whose parent is `uuid` (forked or derived from it),
    /// by name.
    pub async fn children_of(&self, uuid: Uuid) -> Result<Vec<PartitionRecord>, LedgerError> {
        self.read(move |c| read::children_of(c, uuid)).await
    }

    /// Every pool, by name, with its size and free count.
    pub async fn pools(&self) -> Result<Vec<PoolInfo>, LedgerError> {
        self.read(pool::pools).await
    }

    /// The pool with this name.
    pub async fn pool(&self, name: &str) -> Result<Option<PoolInfo>, LedgerError> {
        let name = name.to_owned();
        self.read(move |c| pool::pool(c, &name)).await
    }

    /// The values of pool `name` with their holders, in insertion order;
    /// empty if there is no such pool.
    pub async fn pool_items(&self, name: &str) -> Result<Vec<PoolItem>, LedgerError> {
        let name = name.to_owned();
        self.read(move |c| pool::items(c, &name)).await
    }

    /// The (pool, value) pairs `holder` holds, by pool then insertion order.
    pub async fn items_held_by(&self, holder: Uuid) -> Result<Vec<(String, String)>, LedgerError> {
        self.read(move |c| pool::held_by(c, holder)).await
    }

    /// Up to `limit` audit entries with ids above `after_id`, oldest first;
    /// pass the last id of a page to get the next.
    pub async fn log(
        &self,
        after_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, LedgerError> {
        self.read(move |c| read::log(c, after_id, limit)).await
    }

    /// Up to `limit` audit entries with ids below `before_id`, newest
    /// first; pass the last id of a page to get the next.
    pub async fn log_newest(
        &self,
        before_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, LedgerError> {
        self.read(move |c| read::log_newest(c, before_id, limit))
            .await
    }

    /// The id of the newest audit entry.
    pub async fn last_tx_id(&self) -> Result<Option<TxId>, LedgerError> {
        self.read(read::last_tx_id).await
    }

    /// Checks the ledger's invariants on one snapshot; empty means consistent.
    pub async fn verify(&self) -> Result<Vec<Problem>, LedgerError> {
        self.read(verify::verify).await
    }
}

/// The writer thread: takes every queued job, commits the batch, answers.
fn write_loop(
    mut db: LedgerDb,
    jobs: &mpsc::Receiver<WriteJob>,
    max_batch: usize,
    notes: &broadcast::Sender<CommitNote>,
) {
    let mut txs = Vec::new();
    let mut replies = Vec::new();
    while let Ok(first) = jobs.recv() {
        let mut close = None;
        let mut run = None;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                WriteJob::Commit { tx, reply } => {
                    txs.push(tx);
                    replies.push(reply);
                }
                WriteJob::Close(done) => {
                    close = Some(done);
                    break;
                }
                WriteJob::Run(f) => {
                    run = Some(f);
                    break;
                }
            }
            if txs.len() < max_batch {
                next = jobs.try_recv().ok();
            }
        }
        if !txs.is_empty() {
            let results = db.commit_batch(&txs);
            tracing::trace!(batch = txs.len(), "ledger group commit");
            for (tx, result) in txs.iter().zip(&results) {
                if let Ok(c) = result {
                    // No subscriber is no error.
                    let _ = notes.send(CommitNote {
                        id: c.id,
                        actor: tx.actor.clone(),
                        reason: tx.reason.clone(),
                    });
                }
            }
            for (reply, result) in replies.drain(..).zip(results) {
                let _ = reply.send(result);
            }
            txs.clear();
        }
        if let Some(f) = run {
            f(db.conn());
        }
        if let Some(done) = close {
            drop(db);
            let _ = done.send(());
            return;
        }
    }
}

/// A reader thread: runs read jobs on its own read-only connection.
fn read_loop(conn: Connection, jobs: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        // Only the receiving is under the lock; the job runs without it.
        let job = {
            let rx = jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            rx.recv()
        };
        match job {
            Ok(ReadJob::Run(f)) => f(&conn),
            Ok(ReadJob::Stop(done)) => {
                drop(conn);
                let _ = done.send(());
                return;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tx::Op;

    #[test]
    fn handle_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Ledger>();
    }

    #[tokio::test]
    async fn every_commit_is_announced_and_a_refused_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cap = Resources {
            vcpus: 4,
            ..Resources::ZERO
        };
        let l = Ledger::open(dir.path().join("l.db"), cap)
            .await
            .expect("open");
        let mut notes = l.subscribe();
        let p = crate::partition::PartitionRecord::new("p");
        let u = p.uuid;
        let take = |n: u64| {
            Op::reserve(
                u,
                &Resources {
                    vcpus: n,
                    ..Resources::ZERO
                },
            )
        };
        let mut ops = vec![Op::InsertPartition(p)];
        ops.extend(take(2));
        let c = l
            .commit(Tx::new("api", "take two", ops))
            .await
            .expect("commit");
        // More than is available: refused, so not announced.
        assert!(
            l.commit(Tx::new("api", "take ten", take(10)))
                .await
                .is_err()
        );
        let d = l
            .commit(Tx::new("memory", "take one", take(1)))
            .await
            .expect("commit");
        let first = notes.recv().await.expect("a note");
        assert_eq!(
            first,
            CommitNote {
                id: c.id,
                actor: "api".into(),
                reason: "take two".into()
            }
        );
        let second = notes.recv().await.expect("a note");
        assert_eq!((second.id, second.reason.as_str()), (d.id, "take one"));
        assert!(notes.try_recv().is_err(), "nothing else was committed");
    }

    #[tokio::test]
    async fn a_batch_of_concurrent_commits_gets_distinct_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cap = Resources {
            vcpus: 64,
            ..Resources::ZERO
        };
        let options = LedgerOptions {
            readers: 1,
            max_batch: 8,
        };
        let l = Ledger::open_with(dir.path().join("l.db"), cap, options)
            .await
            .expect("open");
        let commits: Vec<_> = (0..40)
            .map(|i| {
                let l = l.clone();
                tokio::spawn(async move {
                    // Every fifth one fails; its neighbours in the batch must not.
                    let ops = if i % 5 == 0 {
                        vec![Op::transfer(
                            crate::ResourceKind::Vcpus,
                            Owner::Available,
                            Owner::Partition(Uuid::nil()),
                            1,
                        )]
                    } else {
                        vec![]
                    };
                    l.commit(Tx::new("t", format!("{i}"), ops)).await
                })
            })
            .collect();
        let mut ids = Vec::new();
        for c in commits {
            match c.await.expect("task") {
                Ok(done) => ids.push(done.id.0),
                Err(LedgerError::NoSuchPartition { .. }) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        ids.sort_unstable();
        assert_eq!(ids, (2..34).collect::<Vec<u64>>());
        assert_eq!(l.last_tx_id().await.expect("last"), Some(TxId(33)));
    }
}
