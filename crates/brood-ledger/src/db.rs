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
use crate::pool::{self, PoolInfo, PoolItem};
use crate::read::{self, AuditEntry};
use crate::resource::{Holding, Owner, Resources};
use crate::schema;
use crate::store;
use crate::tx::{Committed, Op, Tx, TxId};
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

    /// The connection, for the tenancy reads (`tenancy`).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `tx` atomically and durably; returns its audit id.
    pub fn commit(&mut self, tx: Tx) -> Result<Committed, LedgerError> {
        self.commit_batch(std::slice::from_ref(&tx))
            .pop()
            .unwrap_or(Err(LedgerError::BatchAborted))
    }

    /// Applies each Tx atomically, all with one COMMIT (one fsync). Results
    /// are in the order of `txs`; a failing Tx does not affect the others.
    pub fn commit_batch(&mut self, txs: &[Tx]) -> Vec<Result<Committed, LedgerError>> {
        store::commit_batch(&self.conn, txs)
    }

    /// Sets the host capacity; `available` gains or loses the difference.
    pub fn set_capacity(&mut self, capacity: Resources) -> Result<Committed, LedgerError> {
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

    /// The partitions whose parent is `uuid`, by name.
    pub fn children_of(&self, uuid: uuid::Uuid) -> Result<Vec<PartitionRecord>, LedgerError> {
        read::children_of(&self.conn, uuid)
    }

    /// Every pool, by name.
    pub fn pools(&self) -> Result<Vec<PoolInfo>, LedgerError> {
        pool::pools(&self.conn)
    }

    /// The pool with this name.
    pub fn pool(&self, name: &str) -> Result<Option<PoolInfo>, LedgerError> {
        pool::pool(&self.conn, name)
    }

    /// The values of pool `name` with their holders, in insertion order;
    /// empty if there is no such pool.
    pub fn pool_items(&self, name: &str) -> Result<Vec<PoolItem>, LedgerError> {
        pool::items(&self.conn, name)
    }

    /// The (pool, value) pairs `holder` holds, by pool then insertion order.
    pub fn items_held_by(&self, holder: uuid::Uuid) -> Result<Vec<(String, String)>, LedgerError> {
        pool::held_by(&self.conn, holder)
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
    use crate::error::LedgerError;
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

    /// A version-1 file as v1 brood left it: capacity, a running partition
    /// with its holdings, two audit rows.
    fn write_v1(path: &Path, uuid: uuid::Uuid) {
        let raw = Connection::open(path).expect("raw open");
        raw.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;")
            .expect("pragmas");
        raw.execute_batch(schema::V1).expect("v1 schema");
        raw.pragma_update(None, "user_version", 1).expect("version");
        raw.execute_batch(&format!(
            r#"
            INSERT INTO capacity (kind, amount) VALUES
                ('memory_mib', 1024), ('vcpus', 4), ('disk_gib', 100), ('nics', 8);
            INSERT INTO partition (uuid, name, stage, run_state, active_config, configs,
                demand_memory_mib, demand_vcpus, demand_disk_gib, demand_nics, pid,
                pending_op, restart_count, last_exit, created_at, updated_at, generation)
            VALUES ('{uuid}', 'old', 'operating', 'running', 'default',
                '{{"default":{{"memory_mib":256}}}}', 256, 1, 10, 1, 4242, NULL, 2,
                'killed', '2025-01-01T00:00:00Z', '2025-01-02T00:00:00Z', 7);
            INSERT INTO holding (owner, kind, amount) VALUES
                ('available', 'memory_mib', 768), ('available', 'vcpus', 3),
                ('available', 'disk_gib', 90), ('available', 'nics', 7),
                ('{uuid}', 'memory_mib', 256), ('{uuid}', 'vcpus', 1),
                ('{uuid}', 'disk_gib', 10), ('{uuid}', 'nics', 1);
            INSERT INTO audit (time, actor, reason, changes) VALUES
                ('2025-01-01T00:00:00Z', 'brood-ledger', 'initial capacity',
                 '[{{"op":"set_capacity"}}]'),
                ('2025-01-02T00:00:00Z', 'alice', 'start old', '[]');
            "#
        ))
        .expect("v1 rows");
    }

    fn user_version(path: &Path) -> u32 {
        Connection::open(path)
            .and_then(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .expect("read version")
    }

    #[test]
    fn version_1_database_upgrades_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v1.db");
        let uuid = uuid::Uuid::from_u128(0xb10d);
        write_v1(&path, uuid);
        assert_eq!(user_version(&path), 1);

        // The initial capacity is ignored: the file has one.
        let mut db = LedgerDb::open(&path, Resources::ZERO).expect("open migrates");
        assert_eq!(user_version(&path), crate::schema::latest_version());
        let cap = Resources {
            memory_mib: 1024,
            vcpus: 4,
            disk_gib: 100,
            nics: 8,
        };
        assert_eq!(db.capacity().expect("cap"), cap);
        let demand = Resources {
            memory_mib: 256,
            vcpus: 1,
            disk_gib: 10,
            nics: 1,
        };
        assert_eq!(db.held_by(Owner::Partition(uuid)).expect("held"), demand);
        assert_eq!(db.holdings().expect("holdings").len(), 8);
        let rec = db.partition_by_uuid(uuid).expect("read").expect("kept");
        let mut want = PartitionRecord::new("old");
        want.uuid = uuid;
        want.stage = crate::state::Stage::Operating;
        want.run_state = RunState::Running;
        "default".clone_into(&mut want.active_config);
        want.configs = json!({"default": {"memory_mib": 256}}).into();
        want.demand = demand;
        want.pid = Some(4242);
        want.restart_count = 2;
        want.last_exit = Some("killed".into());
        "2025-01-01T00:00:00Z".clone_into(&mut want.created_at);
        "2025-01-02T00:00:00Z".clone_into(&mut want.updated_at);
        want.generation = 7;
        assert_eq!(rec, want);
        let log = db.log(None, 10).expect("log");
        let reasons: Vec<_> = log.iter().map(|e| (e.id.0, e.reason.as_str())).collect();
        assert_eq!(reasons, [(1, "initial capacity"), (2, "start old")]);
        assert_eq!(log[0].changes, json!([{"op": "set_capacity"}]));
        assert!(db.pools().expect("pools").is_empty());
        assert_eq!(db.verify().expect("verify"), []);

        // The new columns and tables work on the migrated file.
        let mut ops = vec![Op::UpdatePartition {
            uuid,
            expect: PartitionExpect {
                generation: Some(7),
                ..PartitionExpect::default()
            },
            set: PartitionPatch {
                stage: Some(crate::state::Stage::Template),
                run_state: Some(RunState::Stopped),
                pid: Some(None),
                ..PartitionPatch::default()
            },
        }];
        ops.extend(Op::release(
            uuid,
            &Resources {
                vcpus: 1,
                nics: 1,
                ..Resources::ZERO
            },
        ));
        let mut kid = PartitionRecord::new("kid");
        kid.parent = Some(uuid);
        kid.lineage = Some(crate::lineage::Lineage::Child(Box::new(
            crate::lineage::ChildLineage {
                index: 0,
                status: crate::lineage::ChildStatus::Pending,
                error: None,
                macs: Vec::new(),
                ipv4: None,
                gateway: None,
                identity: None,
                identity_pool: None,
                ip_pool: None,
                values: Default::default(),
                persistent: false,
                machine_id: "0".repeat(32),
                running_ms: None,
                ready_ms: None,
            },
        )));
        let kid_uuid = kid.uuid;
        ops.push(Op::InsertPartition(kid));
        ops.push(Op::CreatePool {
            name: "macs".into(),
            kind: crate::pool::PoolKind::Identity,
            meta: json!({}),
            values: vec!["52:54:00:00:00:01".into()],
        });
        ops.push(Op::TakeFromPool {
            pool: "macs".into(),
            holder: kid_uuid,
            value: None,
        });
        let done = db.commit(Tx::new("t", "fork", ops)).expect("fork");
        assert_eq!(done.id, TxId(3));
        assert_eq!(
            done.taken,
            [crate::lineage::Taken {
                pool: "macs".into(),
                holder: kid_uuid,
                value: "52:54:00:00:00:01".into(),
            }]
        );
        assert_eq!(db.verify().expect("verify"), []);
        let e = db
            .commit(Tx::new(
                "t",
                "rm",
                vec![Op::DeletePartition {
                    uuid,
                    expect: PartitionExpect::default(),
                }],
            ))
            .expect_err("holds memory and disk");
        assert!(matches!(e, LedgerError::StillHolds { .. }), "{e}");
        // The foreign keys added by ALTER TABLE hold too.
        let raw = Connection::open(&path).expect("raw open");
        raw.execute_batch("PRAGMA foreign_keys = ON")
            .expect("fk on");
        let e = raw.execute(
            "DELETE FROM partition WHERE uuid = ?1",
            [kid_uuid.to_string()],
        );
        assert!(e.is_err(), "holder of a pool item deleted");
        drop(raw);
        drop(db);

        let db = LedgerDb::open(&path, Resources::ZERO).expect("reopen");
        assert_eq!(user_version(&path), crate::schema::latest_version());
        assert_eq!(db.children_of(uuid).expect("children").len(), 1);
        assert_eq!(db.log(None, 10).expect("log").len(), 3);
        assert_eq!(db.verify().expect("verify"), []);
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
        assert!(
            matches!(results[0], Ok(Committed { id: TxId(2), .. })),
            "{results:?}"
        );
        assert!(matches!(
            results[1],
            Err(LedgerError::NoSuchPartition { .. })
        ));
        assert!(
            matches!(results[2], Ok(Committed { id: TxId(3), .. })),
            "{results:?}"
        );
        assert_eq!(db.last_tx_id().expect("last"), Some(TxId(3)));
    }
}
