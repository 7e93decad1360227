//! Queries against any connection, the writer's or a reader's: capacity,
//! holdings, partitions (keyset-paginated by name, or by parent) and the
//! audit log (keyset-paginated by id), plus decoding of stored rows. Pool
//! queries are `pool`'s.
//!
//! Callers that need several queries to agree run them inside one read
//! transaction (the async `Ledger` does so for every read). Writing is
//! `store`'s job.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};
use crate::partition::PartitionRecord;
use crate::resource::{Holding, Owner, ResourceKind, Resources};
use crate::tx::TxId;

/// One committed transaction as the audit log holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The transaction's id.
    pub id: TxId,
    /// When it committed, RFC 3339 UTC.
    pub time: String,
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// One element per op, with before- and after-images (see the crate docs).
    pub changes: serde_json::Value,
}

/// The columns of `partition`, in the order `RawPartition::from_row` reads them.
pub(crate) const PARTITION_COLUMNS: &str = "uuid, name, stage, run_state, active_config, \
     configs, demand_memory_mib, demand_vcpus, demand_disk_gib, demand_nics, pid, pending_op, \
     restart_count, last_exit, created_at, updated_at, generation, parent, fork";

/// A partition row with its text columns not yet parsed.
pub(crate) struct RawPartition {
    uuid: String,
    name: String,
    stage: String,
    run_state: String,
    active_config: String,
    configs: String,
    demand: Resources,
    pid: Option<u32>,
    pending_op: Option<String>,
    restart_count: u32,
    last_exit: Option<String>,
    created_at: String,
    updated_at: String,
    generation: u64,
    parent: Option<String>,
    fork: Option<String>,
}

impl RawPartition {
    /// Reads a row selected with `PARTITION_COLUMNS`.
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<RawPartition> {
        Ok(RawPartition {
            uuid: r.get(0)?,
            name: r.get(1)?,
            stage: r.get(2)?,
            run_state: r.get(3)?,
            active_config: r.get(4)?,
            configs: r.get(5)?,
            demand: Resources {
                memory_mib: r.get(6)?,
                vcpus: r.get(7)?,
                disk_gib: r.get(8)?,
                nics: r.get(9)?,
            },
            pid: r.get(10)?,
            pending_op: r.get(11)?,
            restart_count: r.get(12)?,
            last_exit: r.get(13)?,
            created_at: r.get(14)?,
            updated_at: r.get(15)?,
            generation: r.get(16)?,
            parent: r.get(17)?,
            fork: r.get(18)?,
        })
    }

    /// The row's uuid column as stored.
    pub(crate) fn key(&self) -> &str {
        &self.uuid
    }

    /// Parses the text columns.
    pub(crate) fn decode(self) -> Result<PartitionRecord, LedgerError> {
        let bad = |what: String| LedgerError::BadRow {
            table: "partition",
            key: self.uuid.clone(),
            what,
        };
        Ok(PartitionRecord {
            uuid: Uuid::parse_str(&self.uuid).map_err(|e| bad(format!("uuid: {e}")))?,
            stage: self.stage.parse().map_err(|e| bad(format!("{e}")))?,
            run_state: self.run_state.parse().map_err(|e| bad(format!("{e}")))?,
            configs: crate::JsonText::from_stored(self.configs),
            parent: self
                .parent
                .as_deref()
                .map(Uuid::parse_str)
                .transpose()
                .map_err(|e| bad(format!("parent: {e}")))?,
            lineage: self
                .fork
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| bad(format!("fork: {e}")))?,
            pending_op: self
                .pending_op
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| bad(format!("pending_op: {e}")))?,
            name: self.name,
            active_config: self.active_config,
            demand: self.demand,
            pid: self.pid,
            restart_count: self.restart_count,
            last_exit: self.last_exit,
            created_at: self.created_at,
            updated_at: self.updated_at,
            generation: self.generation,
        })
    }
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(crate) fn partitions_where(
    conn: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<PartitionRecord>, LedgerError> {
    let sql = format!("SELECT {PARTITION_COLUMNS} FROM partition {filter}");
    let mut stmt = conn.prepare_cached(&sql).ctx("prepare partition query")?;
    let raws = stmt
        .query_map(params, RawPartition::from_row)
        .ctx("query partitions")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read partition row")?;
    raws.into_iter().map(RawPartition::decode).collect()
}

/// The host's capacity; a kind with no row counts as zero.
pub(crate) fn capacity(conn: &Connection) -> Result<Resources, LedgerError> {
    let mut stmt = conn
        .prepare_cached("SELECT kind, amount FROM capacity")
        .ctx("prepare capacity query")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))
        .ctx("query capacity")?;
    let mut out = Resources::ZERO;
    for row in rows {
        let (kind, amount) = row.ctx("read capacity row")?;
        out.set(parse_kind("capacity", &kind)?, amount);
    }
    Ok(out)
}

fn parse_kind(table: &'static str, kind: &str) -> Result<ResourceKind, LedgerError> {
    kind.parse().map_err(|e| LedgerError::BadRow {
        table,
        key: kind.to_owned(),
        what: format!("{e}"),
    })
}

/// Every holding row as stored (owner, kind, amount), by owner then kind;
/// `verify` reads them unparsed to report rows that do not parse.
pub(crate) fn raw_holdings(conn: &Connection) -> Result<Vec<(String, String, u64)>, LedgerError> {
    let mut stmt = conn
        .prepare_cached("SELECT owner, kind, amount FROM holding ORDER BY owner, kind")
        .ctx("prepare holding query")?;
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u64>(2)?,
        ))
    })
    .ctx("query holdings")?
    .collect::<Result<Vec<_>, _>>()
    .ctx("read holding row")
}

/// Every holding row, by owner then kind.
pub(crate) fn holdings(conn: &Connection) -> Result<Vec<Holding>, LedgerError> {
    raw_holdings(conn)?
        .into_iter()
        .map(|(owner, kind, amount)| {
            Ok(Holding {
                owner: owner.parse().map_err(|e| LedgerError::BadRow {
                    table: "holding",
                    key: owner.clone(),
                    what: format!("{e}"),
                })?,
                kind: parse_kind("holding", &kind)?,
                amount,
            })
        })
        .collect()
}

/// The amount of `kind` that `owner` holds (zero without a row).
pub(crate) fn amount_held(
    conn: &Connection,
    owner: Owner,
    kind: ResourceKind,
) -> Result<u64, LedgerError> {
    conn.prepare_cached("SELECT amount FROM holding WHERE owner = ?1 AND kind = ?2")
        .ctx("prepare holding lookup")?
        .query_row(params![owner.to_string(), kind.as_str()], |r| r.get(0))
        .optional()
        .ctx("read holding")
        .map(Option::unwrap_or_default)
}

/// Everything `owner` holds.
pub(crate) fn held_by(conn: &Connection, owner: Owner) -> Result<Resources, LedgerError> {
    let mut stmt = conn
        .prepare_cached("SELECT kind, amount FROM holding WHERE owner = ?1")
        .ctx("prepare holding query")?;
    let rows = stmt
        .query_map([owner.to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
        })
        .ctx("query holdings")?;
    let mut out = Resources::ZERO;
    for row in rows {
        let (kind, amount) = row.ctx("read holding row")?;
        out.set(parse_kind("holding", &kind)?, amount);
    }
    Ok(out)
}

/// The partition with this uuid.
pub(crate) fn partition_by_uuid(
    conn: &Connection,
    uuid: Uuid,
) -> Result<Option<PartitionRecord>, LedgerError> {
    Ok(partitions_where(conn, "WHERE uuid = ?1", [uuid.to_string()])?.pop())
}

/// The partition with this name.
pub(crate) fn partition_by_name(
    conn: &Connection,
    name: &str,
) -> Result<Option<PartitionRecord>, LedgerError> {
    Ok(partitions_where(conn, "WHERE name = ?1", [name])?.pop())
}

/// Up to `limit` partitions whose names sort after `after_name`, by name.
pub(crate) fn partitions(
    conn: &Connection,
    after_name: Option<&str>,
    limit: usize,
) -> Result<Vec<PartitionRecord>, LedgerError> {
    match after_name {
        Some(after) => partitions_where(
            conn,
            "WHERE name > ?1 ORDER BY name LIMIT ?2",
            params![after, sql_limit(limit)],
        ),
        None => partitions_where(conn, "ORDER BY name LIMIT ?1", [sql_limit(limit)]),
    }
}

/// The partitions whose parent is `uuid`, by name.
pub(crate) fn children_of(
    conn: &Connection,
    uuid: Uuid,
) -> Result<Vec<PartitionRecord>, LedgerError> {
    partitions_where(conn, "WHERE parent = ?1 ORDER BY name", [uuid.to_string()])
}

/// How many partitions have `uuid` as their parent.
pub(crate) fn child_count(conn: &Connection, uuid: Uuid) -> Result<u64, LedgerError> {
    conn.prepare_cached("SELECT count(*) FROM partition WHERE parent = ?1")
        .ctx("prepare child count")?
        .query_row([uuid.to_string()], |r| r.get(0))
        .ctx("count children")
}

/// Every partition, by name.
pub(crate) fn all_partitions(conn: &Connection) -> Result<Vec<PartitionRecord>, LedgerError> {
    partitions_where(conn, "ORDER BY name", [])
}

fn audit_rows(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<AuditEntry>, LedgerError> {
    let mut stmt = conn.prepare_cached(sql).ctx("prepare audit query")?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .ctx("query audit log")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read audit row")?;
    rows.into_iter()
        .map(|(id, time, actor, reason, changes)| {
            Ok(AuditEntry {
                id: TxId(id),
                time,
                actor,
                reason,
                changes: serde_json::from_str(&changes).map_err(|e| LedgerError::BadRow {
                    table: "audit",
                    key: id.to_string(),
                    what: format!("changes: {e}"),
                })?,
            })
        })
        .collect()
}

/// Up to `limit` audit entries with ids above `after_id`, oldest first.
pub(crate) fn log(
    conn: &Connection,
    after_id: Option<u64>,
    limit: usize,
) -> Result<Vec<AuditEntry>, LedgerError> {
    let after = i64::try_from(after_id.unwrap_or(0)).unwrap_or(i64::MAX);
    audit_rows(
        conn,
        "SELECT id, time, actor, reason, changes FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2",
        params![after, sql_limit(limit)],
    )
}

/// Up to `limit` audit entries with ids below `before_id`, newest first.
pub(crate) fn log_newest(
    conn: &Connection,
    before_id: Option<u64>,
    limit: usize,
) -> Result<Vec<AuditEntry>, LedgerError> {
    let before = before_id.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    audit_rows(
        conn,
        "SELECT id, time, actor, reason, changes FROM audit WHERE id < ?1 \
         ORDER BY id DESC LIMIT ?2",
        params![before, sql_limit(limit)],
    )
}

/// The id of the newest audit entry.
pub(crate) fn last_tx_id(conn: &Connection) -> Result<Option<TxId>, LedgerError> {
    conn.query_row("SELECT max(id) FROM audit", [], |r| {
        r.get::<_, Option<u64>>(0)
    })
    .ctx("read last audit id")
    .map(|id| id.map(TxId))
}
