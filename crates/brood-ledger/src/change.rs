//! Changes to a running partition's definition that wait for its next
//! start (`brood vm set`, `vm disk`, `vm nic` with `--apply next-start`,
//! or on a machine that cannot hotplug): one row per partition holding the
//! configuration its VM runs now and a summary of what changes at the next
//! start. The partition's `configs` already hold the new definition; the
//! row is what `vm list` marks as pending and what a restore of its saved
//! state needs (a saved VM comes back with the devices it was saved with).
//!
//! The row goes in the same transaction as the definition change
//! (`ChangeOp::Mark`) and out with the start that applies it
//! (`ChangeOp::Clear`); deleting the partition deletes it.
//!
//! Change records:
//!
//! ```text
//! {"op":"change_mark","partition":"<uuid>","before":{<row>}|null,"after":{<row>}}
//! {"op":"change_clear","partition":"<uuid>","before":{<row>}|null}
//! ```

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};
use crate::json::JsonText;
use crate::ledger::Ledger;
use crate::read;

/// Longest change summary, in bytes.
pub const CHANGE_SUMMARY_MAX_BYTES: usize = 4096;

/// `V_CHANGE`: pending definition changes of running partitions.
pub(crate) const V_CHANGE: &str = "
CREATE TABLE pending_change (
    partition TEXT PRIMARY KEY REFERENCES partition (uuid) ON DELETE CASCADE,
    running   TEXT NOT NULL CHECK (json_valid(running)),
    summary   TEXT NOT NULL CHECK (length(summary) BETWEEN 1 AND 4096),
    since     TEXT NOT NULL
) WITHOUT ROWID;
";

/// A partition's pending change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// The partition.
    pub partition: Uuid,
    /// The configuration its VM runs now (JSON of one configuration).
    pub running: JsonText,
    /// What changes at the next start, for people.
    pub summary: String,
    /// When the first pending change was made (RFC 3339).
    pub since: String,
}

/// An op on pending changes (`Op::Change`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change_op", rename_all = "snake_case")]
pub enum ChangeOp {
    /// Records that `partition`'s definition differs from what runs. A row
    /// already there keeps its `since`; `running` and the summary are
    /// replaced (a live change, a CPU cap say, changes what runs too).
    Mark {
        /// The partition.
        partition: Uuid,
        /// The configuration its VM runs now.
        running: JsonText,
        /// What changes at the next start (1-4096 bytes).
        summary: String,
    },
    /// Forgets the pending change (the new definition now runs). Clearing
    /// a partition with none is no error.
    Clear {
        /// The partition.
        partition: Uuid,
    },
}

fn row_json(r: &ChangeRecord) -> Value {
    json!({"running": r.running.value(), "summary": r.summary, "since": r.since})
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<(String, String, String, String)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn record(t: (String, String, String, String)) -> Result<ChangeRecord, LedgerError> {
    let partition = Uuid::parse_str(&t.0).map_err(|e| LedgerError::BadRow {
        table: "pending_change",
        key: t.0.clone(),
        what: e.to_string(),
    })?;
    Ok(ChangeRecord {
        partition,
        running: JsonText::from_stored(t.1),
        summary: t.2,
        since: t.3,
    })
}

/// The pending change of a partition.
pub(crate) fn of(conn: &Connection, partition: Uuid) -> Result<Option<ChangeRecord>, LedgerError> {
    conn.prepare_cached(
        "SELECT partition, running, summary, since FROM pending_change WHERE partition = ?1",
    )
    .ctx("prepare pending change read")?
    .query_row(params![partition.to_string()], from_row)
    .optional()
    .ctx("read pending change")?
    .map(record)
    .transpose()
}

/// Every pending change.
pub(crate) fn all(conn: &Connection) -> Result<Vec<ChangeRecord>, LedgerError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT partition, running, summary, since FROM pending_change ORDER BY partition",
        )
        .ctx("prepare pending changes read")?;
    let rows = stmt
        .query_map([], from_row)
        .ctx("read pending changes")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read pending changes")?;
    rows.into_iter().map(record).collect()
}

/// Applies op `i` of a transaction; returns its change record.
pub(crate) fn apply(
    conn: &Connection,
    i: usize,
    op: &ChangeOp,
    now: &str,
) -> Result<Value, LedgerError> {
    match op {
        ChangeOp::Mark {
            partition,
            running,
            summary,
        } => {
            if summary.is_empty() || summary.len() > CHANGE_SUMMARY_MAX_BYTES {
                return Err(LedgerError::InvalidOp {
                    op: i,
                    what: format!(
                        "a change summary has 1 to {CHANGE_SUMMARY_MAX_BYTES} bytes, not {}",
                        summary.len()
                    ),
                });
            }
            if read::partition_by_uuid(conn, *partition)?.is_none() {
                return Err(LedgerError::NoSuchPartition { uuid: *partition });
            }
            let before = of(conn, *partition)?;
            let after = ChangeRecord {
                partition: *partition,
                running: running.clone(),
                summary: summary.clone(),
                since: before
                    .as_ref()
                    .map_or_else(|| now.to_string(), |b| b.since.clone()),
            };
            conn.prepare_cached(
                "INSERT INTO pending_change (partition, running, summary, since) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (partition) DO UPDATE SET \
                 running = excluded.running, summary = excluded.summary, since = excluded.since",
            )
            .ctx("prepare pending change insert")?
            .execute(params![
                partition.to_string(),
                after.running.as_str(),
                after.summary,
                after.since
            ])
            .ctx("insert pending change")?;
            Ok(json!({
                "op": "change_mark",
                "partition": partition,
                "before": before.as_ref().map(row_json),
                "after": row_json(&after),
            }))
        }
        ChangeOp::Clear { partition } => {
            let before = of(conn, *partition)?;
            conn.prepare_cached("DELETE FROM pending_change WHERE partition = ?1")
                .ctx("prepare pending change delete")?
                .execute(params![partition.to_string()])
                .ctx("delete pending change")?;
            Ok(json!({
                "op": "change_clear",
                "partition": partition,
                "before": before.as_ref().map(row_json),
            }))
        }
    }
}

impl crate::db::LedgerDb {
    /// The pending change of a partition, if it has one.
    pub fn pending_change(&self, partition: Uuid) -> Result<Option<ChangeRecord>, LedgerError> {
        of(self.conn(), partition)
    }
}

impl Ledger {
    /// The pending change of a partition, if it has one.
    pub async fn pending_change(
        &self,
        partition: Uuid,
    ) -> Result<Option<ChangeRecord>, LedgerError> {
        self.read(move |c| of(c, partition)).await
    }

    /// Every pending change.
    pub async fn pending_changes(&self) -> Result<Vec<ChangeRecord>, LedgerError> {
        self.read(all).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LedgerDb, Op, PartitionRecord, Resources, Tx};

    #[test]
    fn a_mark_keeps_its_since_goes_with_a_clear_and_with_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let cap = Resources {
            memory_mib: 1024,
            vcpus: 2,
            disk_gib: 10,
            nics: 2,
        };
        let mut db = LedgerDb::open(dir.path().join("l.db"), cap).unwrap();
        let p = PartitionRecord::new("web");
        let u = p.uuid;
        db.commit(Tx::new("t", "define", vec![Op::InsertPartition(p)]))
            .unwrap();
        let mark = |summary: &str, memory: u64| {
            Op::Change(ChangeOp::Mark {
                partition: u,
                running: JsonText::from(json!({"memory_mib": memory})),
                summary: summary.into(),
            })
        };
        db.commit(Tx::new(
            "t",
            "set",
            vec![mark("memory 256 MiB -> 512 MiB", 256)],
        ))
        .unwrap();
        let first = db.pending_change(u).unwrap().unwrap();
        db.commit(Tx::new("t", "set", vec![mark("vCPUs 1 -> 2", 300)]))
            .unwrap();
        let second = db.pending_change(u).unwrap().unwrap();
        assert_eq!(second.since, first.since);
        assert_eq!(second.summary, "vCPUs 1 -> 2");
        assert_eq!(second.running.value()["memory_mib"], 300);
        // An empty summary or an unknown partition is refused, and changes nothing.
        assert!(db.commit(Tx::new("t", "bad", vec![mark("", 1)])).is_err());
        let other = Op::Change(ChangeOp::Mark {
            partition: Uuid::from_u128(5),
            running: JsonText::from(json!({})),
            summary: "x".into(),
        });
        assert!(matches!(
            db.commit(Tx::new("t", "bad", vec![other])),
            Err(LedgerError::NoSuchPartition { .. })
        ));
        assert_eq!(db.pending_change(u).unwrap(), Some(second));
        let clear = || Op::Change(ChangeOp::Clear { partition: u });
        db.commit(Tx::new("t", "start", vec![clear()])).unwrap();
        assert_eq!(db.pending_change(u).unwrap(), None);
        db.commit(Tx::new("t", "again", vec![clear()])).unwrap();
        // Deleting the partition deletes its row.
        db.commit(Tx::new("t", "set", vec![mark("x", 1)])).unwrap();
        let rec = db.partition_by_name("web").unwrap().unwrap();
        db.commit(Tx::new(
            "t",
            "delete",
            vec![Op::DeletePartition {
                uuid: u,
                expect: crate::PartitionExpect {
                    generation: Some(rec.generation),
                    ..Default::default()
                },
            }],
        ))
        .unwrap();
        assert_eq!(db.pending_change(u).unwrap(), None);
    }
}
