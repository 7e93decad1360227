//! `LedgerDb`: the ledger over one SQLite connection, synchronous, for
//! tools and tests that have no tokio runtime, and the engine inside the
//! async `Ledger`'s writer thread.
//!
//! Opening creates or migrates the schema and, on a new database, gives
//! the initial capacity to `available` in the first audited transaction.
//! Applying ops is `store`'s job; queries are `read`'s.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::error::{DbContext, LedgerError};
use crate::partition::PartitionRecord;
use crate::read::{self, AuditEntry};
use crate::resource::{Holding, Owner, Resources};
use crate::schema;
use crate::store;
use crate::tx::{Op, Tx, TxId};
use crate::verify::{self, Problem};

/// The actor of the transactions the ledger makes itself.
pub const LEDGER_ACTOR: &str = "brood-ledger";

/// The ledger over one read-write connection.
#[derive(Debug)]
pub struct LedgerDb {
    conn: Connection,
    path: PathBuf,
}

impl LedgerDb {
    /// Opens or creates the ledger at `path`. On a new database the
    /// capacity is `initial_capacity`, all held by `available`; on an
    /// existing one `initial_capacity` is ignored (use `set_capacity`).
    pub fn open(
        path: impl AsRef<Path>,
        initial_capacity: Resources,
    ) -> Result<LedgerDb, LedgerError> {
        let path = path.as_ref().to_owned();
        let conn = schema::open_writer(&path)?;
        let mut db = LedgerDb { conn, path };
        db.initialize(initial_capacity)?;
        Ok(db)
    }

    /// Gives a new database its capacity, once: the check and the write
    /// share one IMMEDIATE transaction, so two processes opening the same
    /// new file do it once.
    fn initialize(&mut self, initial: Resources) -> Result<(), LedgerError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .ctx("begin initialization")?;
        let rows: u64 = tx
            .query_row("SELECT count(*) FROM capacity", [], |r| r.get(0))
            .ctx("count capacity rows")?;
        if rows == 0 {
            store::apply_tx(
                &tx,
                &Tx::new(
                    LEDGER_ACTOR,
                    "initial capacity",
                    vec![Op::SetCapacity {
                        capacity: initial,
                        expect: None,
                    }],
                ),
            )?;
        }
        tx.commit().ctx("commit initialization")
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `tx` atomically and durably; returns its audit id.
    pub fn commit(&mut self, tx: Tx) -> Result<TxId, LedgerError> {
        self.commit_batch(std::slice::from_ref(&tx))
            .pop()
            .unwrap_or(Err(LedgerError::BatchAborted))
    }

    /// Applies each Tx atomically, all with one COMMIT (one fsync). Results
    /// are in the order of `txs`; a failing Tx does not affect the others.
    pub fn commit_batch(&mut self, txs: &[Tx]) -> Vec<Result<TxId, LedgerError>> {
        store::commit_batch(&self.conn, txs)
    }

    /// Sets the host capacity; `available` gains or loses the difference.
    pub fn set_capacity(&mut self, capacity: Resources) -> Result<TxId, LedgerError> {
        self.commit(set_capacity_tx(capacity))
    }

    /// The host capacity.
    pub fn capacity(&self) -> Result<Resources, LedgerError> {
        read::capacity(&self.conn)
    }

    /// Every holding row, by owner then kind.
    pub fn holdings(&self) -> Result<Vec<Holding>, LedgerError> {
        read::holdings(&self.conn)
    }

    /// Everything `owner` holds.
    pub fn held_by(&self, owner: Owner) -> Result<Resources, LedgerError> {
        read::held_by(&self.conn, owner)
    }

    /// The partition with this name.
    pub fn partition_by_name(&self, name: &str) -> Result<Option<PartitionRecord>, LedgerError> {
        read::partition_by_name(&self.conn, name)
    }

    /// The partition with this uuid.
    pub fn partition_by_uuid(
        &self,
        uuid: uuid::Uuid,
    ) -> Result<Option<PartitionRecord>, LedgerError> {
        read::partition_by_uuid(&self.conn, uuid)
    }

    /// Up to `limit` partitions whose names sort after `after_name`, by name.
    pub fn partitions(
        &self,
        after_name: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PartitionRecord>, LedgerError> {
        read::partitions(&self.conn, after_name, limit)
    }

    /// Every partition, by name.
    pub fn all_partitions(&self) -> Result<Vec<PartitionRecord>, LedgerError> {
        read::all_partitions(&self.conn)
    }

    /// Up to `limit` audit entries with ids above `after_id`, oldest first.
    pub fn log(&self, after_id: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, LedgerError> {
        read::log(&self.conn, after_id, limit)
    }

    /// Up to `limit` audit entries with ids below `before_id`, newest first.
    pub fn log_newest(
        &self,
        before_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, LedgerError> {
        read::log_newest(&self.conn, before_id, limit)
    }

    /// The id of the newest audit entry.
    pub fn last_tx_id(&self) -> Result<Option<TxId>, LedgerError> {
        read::last_tx_id(&self.conn)
    }

    /// Checks the ledger's invariants; empty means consistent.
    pub fn verify(&self) -> Result<Vec<Problem>, LedgerError> {
        let tx = self.conn.unchecked_transaction().ctx("begin verify")?;
        let problems = verify::verify(&tx)?;
        tx.rollback().ctx("end verify")?;
        Ok(problems)
    }
}

/// The transaction `set_capacity` commits.
pub(crate) fn set_capacity_tx(capacity: Resources) -> Tx {
    Tx::new(
        LEDGER_ACTOR,
        "set capacity",
        vec![Op::SetCapacity {
            capacity,
            expect: None,
        }],
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::partition::{PartitionExpect, PartitionPatch};
    use crate::resource::ResourceKind;
    use crate::state::RunState;

    fn open() -> (tempfile::TempDir, LedgerDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cap = Resources {
            memory_mib: 1024,
            vcpus: 4,
            disk_gib: 100,
            nics: 8,
        };
        let db = LedgerDb::open(dir.path().join("l.db"), cap).expect("open");
        (dir, db)
    }

    fn last_changes(db: &LedgerDb) -> serde_json::Value {
        db.log_newest(None, 1)
            .expect("log")
            .pop()
            .map(|e| e.changes)
            .unwrap_or_default()
    }

    #[test]
    fn new_database_audits_its_initial_capacity() {
        let (_d, db) = open();
        let log = db.log(None, 10).expect("log");
        assert_eq!(log.len(), 1);
        let c = &log[0].changes[0];
        assert_eq!(c["op"], "set_capacity");
        assert_eq!(c["after"]["vcpus"], 4);
        assert_eq!(c["available"]["before"]["vcpus"], 0);
        assert_eq!(c["available"]["after"]["memory_mib"], 1024);
        assert_eq!(
            db.held_by(Owner::Available).expect("held"),
            db.capacity().expect("cap")
        );
    }

    #[test]
    fn move_change_has_both_owners_before_and_after() {
        let (_d, mut db) = open();
        let p = PartitionRecord::new("a");
        let u = p.uuid;
        let mut ops = vec![Op::InsertPartition(p)];
        ops.extend(Op::reserve(u, &Resources::of(ResourceKind::Vcpus, 3)));
        db.commit(Tx::new("t", "r", ops)).expect("commit");
        let c = last_changes(&db);
        assert_eq!(c[0]["op"], "insert_partition");
        assert_eq!(c[0]["after"]["name"], "a");
        assert_eq!(c[0]["after"]["generation"], 1);
        assert_eq!(
            c[1],
            json!({
                "op": "move", "kind": "vcpus", "amount": 3,
                "from": {"owner": "available", "before": 4, "after": 1},
                "to": {"owner": u.to_string(), "before": 0, "after": 3},
            })
        );
    }

    #[test]
    fn update_change_lists_only_changed_fields() {
        let (_d, mut db) = open();
        let p = PartitionRecord::new("a");
        let u = p.uuid;
        db.commit(Tx::new("t", "r", vec![Op::InsertPartition(p)]))
            .expect("insert");
        let set = PartitionPatch {
            run_state: Some(RunState::Starting),
            pid: Some(Some(77)),
            ..PartitionPatch::default()
        };
        let expect = PartitionExpect {
            generation: Some(1),
            ..PartitionExpect::default()
        };
        db.commit(Tx::new(
            "t",
            "r",
            vec![Op::UpdatePartition {
                uuid: u,
                expect,
                set,
            }],
        ))
        .expect("update");
        let c = &last_changes(&db)[0];
        assert_eq!(c["op"], "update_partition");
        let mut keys: Vec<_> = c["after"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        assert_eq!(keys, ["generation", "pid", "run_state", "updated_at"]);
        assert_eq!(c["before"]["run_state"], "stopped");
        assert_eq!(c["after"]["run_state"], "starting");
        assert_eq!(c["before"]["pid"], serde_json::Value::Null);
        assert_eq!(c["after"]["pid"], 77);
        assert_eq!(c["before"]["generation"], 1);
        assert_eq!(c["after"]["generation"], 2);
    }

    #[test]
    fn delete_change_keeps_the_whole_record() {
        let (_d, mut db) = open();
        let p = PartitionRecord::new("gone");
        let u = p.uuid;
        db.commit(Tx::new("t", "r", vec![Op::InsertPartition(p)]))
            .expect("insert");
        db.commit(Tx::new(
            "t",
            "r",
            vec![Op::DeletePartition {
                uuid: u,
                expect: PartitionExpect::default(),
            }],
        ))
        .expect("delete");
        let c = &last_changes(&db)[0];
        assert_eq!(c["op"], "delete_partition");
        assert_eq!(c["before"]["name"], "gone");
        assert_eq!(c["before"]["stage"], "construction");
        assert!(db.partition_by_uuid(u).expect("read").is_none());
    }

    #[test]
    fn batch_isolates_a_failing_tx() {
        let (_d, mut db) = open();
        let good = Tx::new("t", "ok", vec![]);
        let bad = Tx::new(
            "t",
            "too much",
            vec![Op::transfer(
                ResourceKind::Vcpus,
                Owner::Available,
                Owner::Partition(uuid::Uuid::nil()),
                1,
            )],
        );
        let results = db.commit_batch(&[good.clone(), bad, good]);
        assert!(matches!(results[0], Ok(TxId(2))), "{results:?}");
        assert!(matches!(
            results[1],
            Err(LedgerError::NoSuchPartition { .. })
        ));
        assert!(matches!(results[2], Ok(TxId(3))), "{results:?}");
        assert_eq!(db.last_tx_id().expect("last"), Some(TxId(3)));
    }
}
