//! `LedgerError`, the one error type of the ledger, and the helper that
//! names the database step a rusqlite error came from.
//!
//! Messages say what failed, in lowercase, and never repeat their
//! `#[source]`: callers print the chain. The variants that callers branch on
//! (`Precondition`, `Insufficient`, `NameTaken`, `Transition`, `StillHolds`,
//! `NoSuchPartition`, `HasDescendants`, the pool errors) carry the values as
//! fields so broodd can map them to API errors without parsing text.

use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;

use crate::resource::{Owner, ResourceKind, Resources};
use crate::state::TransitionError;

/// Everything that can go wrong in the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The database file could not be opened or configured.
    #[error("open ledger database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The database file cannot be switched to write-ahead logging.
    #[error("ledger database {path} stays in journal mode {mode}, not wal")]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// A schema migration failed; the database is left at the previous version.
    #[error("migrate ledger schema to version {version}")]
    Migrate {
        /// The version being migrated to.
        version: u32,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer brood.
    #[error("ledger schema version {found} is newer than the newest this build knows ({known})")]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
        found: u32,
        /// The newest version this build can migrate to.
        known: u32,
    },
    /// A database step failed.
    #[error("ledger database: {what}")]
    Db {
        /// The step, e.g. "read holding".
        what: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// BEGIN or COMMIT of a group of transactions failed; none of them applied.
    #[error("{what} a batch of transactions")]
    BatchFailed {
        /// "begin" or "commit".
        what: &'static str,
        /// What SQLite said; shared by every transaction of the batch.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// An earlier failure in the same batch rolled back the whole SQLite
    /// transaction, so this one was not applied; retrying it is safe.
    #[error("transaction batch was rolled back by an earlier failure")]
    BatchAborted,
    /// A stored row does not decode (a hand-edited or corrupt database).
    #[error("unreadable {table} row {key}: {what}")]
    BadRow {
        /// The table.
        table: &'static str,
        /// The row's key.
        key: String,
        /// What is wrong with it.
        what: String,
    },
    /// A JSON value could not be encoded or decoded.
    #[error("encode or decode {what} as JSON")]
    Json {
        /// What was being converted.
        what: &'static str,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// A before-image did not match the current value; nothing was applied.
    #[error("precondition failed in op {op}: {what} is {actual}, expected {expected}")]
    Precondition {
        /// Index of the op in the transaction.
        op: usize,
        /// The field, e.g. "vcpus held by available" or "run_state of partition ...".
        what: String,
        /// The before-image the transaction carried.
        expected: String,
        /// The value in the ledger.
        actual: String,
    },
    /// A move would take more than the source owner holds.
    #[error("{owner} holds {have} {kind}, {want} wanted")]
    Insufficient {
        /// The resource.
        kind: ResourceKind,
        /// The owner that was to give it.
        owner: Owner,
        /// What the owner holds.
        have: u64,
        /// What the move asked for.
        want: u64,
    },
    /// A move would overflow the amount the receiving owner holds.
    #[error("{owner} would hold more {kind} than the ledger can count")]
    Overflow {
        /// The resource.
        kind: ResourceKind,
        /// The receiving owner.
        owner: Owner,
    },
    /// Another partition already has this name.
    #[error("partition name {name:?} is taken")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// Another partition already has this uuid.
    #[error("partition uuid {uuid} is taken")]
    UuidTaken {
        /// The uuid.
        uuid: Uuid,
    },
    /// An op names a partition that does not exist.
    #[error("no partition {uuid}")]
    NoSuchPartition {
        /// The uuid.
        uuid: Uuid,
    },
    /// An update asked for a stage or run-state change that is not allowed.
    /// `refused` is part of the message, not a cause: nothing failed below.
    #[error("partition {uuid}: {refused}")]
    Transition {
        /// The partition.
        uuid: Uuid,
        /// Which change was refused.
        refused: TransitionError,
    },
    /// A partition cannot be deleted while it holds resources.
    #[error("partition {uuid} still holds {held}")]
    StillHolds {
        /// The partition.
        uuid: Uuid,
        /// What it holds.
        held: Resources,
    },
    /// A partition cannot be deleted while it holds pool items; return them
    /// (`Op::ReturnToPool`) earlier in the same transaction.
    #[error("partition {uuid} still holds pool items {}", ItemList(items))]
    StillHoldsPoolItems {
        /// The partition.
        uuid: Uuid,
        /// What it holds: (pool, value), by pool then insertion order.
        items: Vec<(String, String)>,
    },
    /// A partition cannot be deleted while others name it as their parent.
    #[error("partition {uuid} has {count} partitions forked or derived from it")]
    HasDescendants {
        /// The partition.
        uuid: Uuid,
        /// How many partitions have it as their parent.
        count: u64,
    },
    /// Another pool already has this name.
    #[error("pool {name:?} already exists")]
    PoolExists {
        /// The name.
        name: String,
    },
    /// An op names a pool that does not exist.
    #[error("no pool {name:?}")]
    NoSuchPool {
        /// The name.
        name: String,
    },
    /// A pool cannot be deleted while partitions hold some of its values.
    #[error("pool {name:?} has {held} values held by partitions")]
    PoolInUse {
        /// The pool.
        name: String,
        /// How many of its values are held.
        held: u64,
    },
    /// Every value of the pool is held.
    #[error("pool {pool:?} has no free value: all {size} are held")]
    PoolExhausted {
        /// The pool.
        pool: String,
        /// How many values it has.
        size: u64,
    },
    /// The value asked for is held by a partition (possibly the asker).
    #[error("value {value:?} of pool {pool:?} is held by partition {holder}")]
    ValueTaken {
        /// The pool.
        pool: String,
        /// The value.
        value: String,
        /// Its holder.
        holder: Uuid,
    },
    /// The value asked for is not in the pool.
    #[error("pool {pool:?} has no value {value:?}")]
    NotInPool {
        /// The pool.
        pool: String,
        /// The value.
        value: String,
    },
    /// The new capacity is smaller than what partitions hold.
    #[error("capacity of {kind} cannot drop to {capacity}: partitions hold {in_use}")]
    CapacityInUse {
        /// The resource.
        kind: ResourceKind,
        /// The capacity asked for.
        capacity: u64,
        /// What partitions hold.
        in_use: u64,
    },
    /// An op is malformed (a move to its own source, an amount too large).
    #[error("invalid op {op}: {what}")]
    InvalidOp {
        /// Index of the op in the transaction.
        op: usize,
        /// What is wrong.
        what: String,
    },
    /// A network, I/O partition or channel change conflicts with what the
    /// ledger holds (a name taken, channels still open, no free address).
    #[error("{what}")]
    NetworkConflict {
        /// What conflicts, and with what.
        what: String,
    },
    /// No network or I/O partition of this name.
    #[error("no network or I/O partition {name:?}")]
    NoSuchNetwork {
        /// The name asked for.
        name: String,
    },
    /// A job store change that does not fit the job's row (no such job, a
    /// state it is not in).
    #[error("{what}")]
    Job {
        /// What is wrong.
        what: String,
    },
    /// The job store's database (the cluster catalog) did not answer.
    #[error("the job store is unavailable: {what}")]
    StoreUnavailable {
        /// What failed.
        what: String,
    },
    /// The ledger's threads have stopped (after `close`, or a panic).
    #[error("ledger is closed")]
    Closed,
    /// A ledger thread could not be started.
    #[error("spawn ledger thread")]
    Spawn(#[source] std::io::Error),
}

/// Formats (pool, value) pairs as `pool="value", ...`, at most
/// `ItemList::SHOWN` of them, so a message stays short.
struct ItemList<'a>(&'a [(String, String)]);

impl ItemList<'_> {
    const SHOWN: usize = 8;
}

impl std::fmt::Display for ItemList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (pool, value)) in self.0.iter().take(Self::SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{pool}={value:?}")?;
        }
        if let Some(more) = self.0.len().checked_sub(Self::SHOWN).filter(|n| *n > 0) {
            write!(f, " and {more} more")?;
        }
        Ok(())
    }
}

/// Attaches the name of a database step to a rusqlite error.
pub(crate) trait DbContext<T> {
    /// Maps `Err(e)` to `LedgerError::Db { what, source: e }`.
    fn ctx(self, what: &'static str) -> Result<T, LedgerError>;
}

impl<T> DbContext<T> for Result<T, rusqlite::Error> {
    fn ctx(self, what: &'static str) -> Result<T, LedgerError> {
        self.map_err(|source| LedgerError::Db { what, source })
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::state::RunState;

    #[test]
    fn messages_do_not_repeat_their_source() {
        let source = rusqlite::Error::QueryReturnedNoRows;
        let cause = source.to_string();
        let e = LedgerError::Db {
            what: "read holding",
            source,
        };
        assert_eq!(e.to_string(), "ledger database: read holding");
        assert_eq!(e.source().map(ToString::to_string), Some(cause));
    }

    #[test]
    fn transition_names_partition_and_states() {
        let refused = RunState::Stopped
            .transition(RunState::Paused)
            .expect_err("stopped -> paused is illegal");
        let e = LedgerError::Transition {
            uuid: Uuid::nil(),
            refused,
        };
        assert_eq!(
            e.to_string(),
            "partition 00000000-0000-0000-0000-000000000000: \
             run state: cannot go from stopped to paused"
        );
        assert!(e.source().is_none());
    }

    #[test]
    fn insufficient_names_owner_kind_and_amounts() {
        let e = LedgerError::Insufficient {
            kind: ResourceKind::MemoryMib,
            owner: Owner::Available,
            have: 256,
            want: 512,
        };
        assert_eq!(e.to_string(), "available holds 256 memory_mib, 512 wanted");
    }

    #[test]
    fn pool_items_are_listed_briefly() {
        let item = |i: usize| ("macs".to_owned(), format!("52:54:00:00:00:{i:02x}"));
        let e = LedgerError::StillHoldsPoolItems {
            uuid: Uuid::nil(),
            items: vec![item(1), ("ips".into(), "10.0.0.2".into())],
        };
        assert_eq!(
            e.to_string(),
            "partition 00000000-0000-0000-0000-000000000000 still holds pool items \
             macs=\"52:54:00:00:00:01\", ips=\"10.0.0.2\""
        );
        let e = LedgerError::StillHoldsPoolItems {
            uuid: Uuid::nil(),
            items: (0..11).map(item).collect(),
        };
        assert!(
            e.to_string().ends_with("\"52:54:00:00:00:07\" and 3 more"),
            "{e}"
        );
    }
}
