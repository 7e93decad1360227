//! `verify`: checks the ledger's own invariants and lists what is wrong.
//!
//! Checked here: SQLite's `quick_check`; one capacity row per kind; per
//! kind, the holdings sum to the capacity; every holder other than
//! `available` is an existing partition; every partition holds exactly
//! `expected_holding()` (its disk unless decommissioned, its memory, vCPUs
//! and NICs while active; a template its memory and disk always); no
//! partition has a pid unless active; no template is active; every parent
//! exists; every pool item belongs to an existing pool and is held, if at
//! all, by an existing partition, and by one only; every row decodes.
//! Process-level checks (is that pid a QEMU of ours? is the template's
//! memory file there?) are broodd's.

use std::collections::{BTreeMap, HashMap};

use rusqlite::Connection;
use serde::Serialize;
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};
use crate::partition::PartitionRecord;
use crate::read::{self, RawPartition};
use crate::resource::{Owner, ResourceKind, Resources};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Stable identifier of the check: `integrity`, `capacity_missing`,
    /// `capacity_sum`, `bad_row`, `orphan_holding`, `holding_mismatch`,
    /// `pid_while_inactive`, `active_template`, `missing_parent`,
    /// `orphan_pool_item`, `pool_holder_missing`, `pool_value_held_twice`,
    /// `unit_allocation_mismatch`, `job_without_runner`.
    pub code: &'static str,
    /// What is wrong, naming rows and amounts.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(code: &'static str, message: String) -> Problem {
        Problem { code, message }
    }
}

/// Runs every check; an empty list means the ledger is consistent. Call it
/// inside one read transaction so all checks see the same snapshot.
pub(crate) fn verify(conn: &Connection) -> Result<Vec<Problem>, LedgerError> {
    let mut out = Vec::new();
    integrity(conn, &mut out)?;
    crate::job::verify(conn, &mut out)?;
    let capacity = capacity_rows(conn, &mut out)?;
    let holdings = holding_rows(conn, &mut out)?;
    let partitions = partition_rows(conn, &mut out)?;

    let mut sums: BTreeMap<ResourceKind, u64> = BTreeMap::new();
    let mut held: HashMap<Uuid, Resources> = HashMap::new();
    for &(owner, kind, amount) in &holdings {
        let sum = sums.entry(kind).or_default();
        *sum = sum.saturating_add(amount);
        if let Some(Owner::Partition(uuid)) = owner {
            if !partitions.contains_key(&uuid) {
                out.push(Problem::new(
                    "orphan_holding",
                    format!("{uuid} holds {amount} {kind} but is no partition"),
                ));
            }
            let r = held.entry(uuid).or_default();
            r.set(kind, r.get(kind).saturating_add(amount));
        }
    }
    for (kind, cap) in capacity.iter() {
        let sum = sums.get(&kind).copied().unwrap_or(0);
        if sum != cap {
            out.push(Problem::new(
                "capacity_sum",
                format!("holdings of {kind} sum to {sum}, capacity is {cap}"),
            ));
        }
    }
    for rec in partitions.values() {
        check_partition(
            rec,
            held.get(&rec.uuid).copied().unwrap_or_default(),
            &mut out,
        );
        if let Some(parent) = rec.parent
            && !partitions.contains_key(&parent)
        {
            out.push(Problem::new(
                "missing_parent",
                format!(
                    "partition {} ({}) names {parent} as parent, which is no partition",
                    rec.name, rec.uuid
                ),
            ));
        }
    }
    pool_items(conn, &mut out)?;
    crate::service_pool::verify(conn, &mut out)?;
    for (code, message) in crate::unit::verify(conn)? {
        out.push(Problem::new(code, message));
    }
    Ok(out)
}

/// Three columns of a check's row, as text.
type Row3 = (String, String, String);

/// A pool check: its query (three columns), its problem code, and the
/// message for one row.
type PoolCheck = (&'static str, &'static str, fn(&Row3) -> String);

/// The pool checks, each one query over the held items or over the pools,
/// so verify stays cheap with large pools.
fn pool_items(conn: &Connection, out: &mut Vec<Problem>) -> Result<(), LedgerError> {
    let checks: [PoolCheck; 3] = [
        (
            "SELECT pool, value, holder FROM pool_item i WHERE holder IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM partition p WHERE p.uuid = i.holder)",
            "pool_holder_missing",
            |(pool, value, holder)| {
                format!(
                    "value {value:?} of pool {pool:?} is held by {holder:?}, which is no partition"
                )
            },
        ),
        (
            // The primary key (pool, value) rules this out; the check is
            // over held items only, so it costs little.
            "SELECT pool, value, count(*) FROM pool_item WHERE holder IS NOT NULL \
             GROUP BY pool, value HAVING count(*) > 1",
            "pool_value_held_twice",
            |(pool, value, n)| format!("value {value:?} of pool {pool:?} is held {n} times"),
        ),
        (
            "SELECT pool, count(*), '' FROM pool_item GROUP BY pool \
             HAVING pool NOT IN (SELECT name FROM pool)",
            "orphan_pool_item",
            |(pool, n, _)| format!("{n} values belong to pool {pool:?}, which does not exist"),
        ),
    ];
    for (sql, code, message) in checks {
        let mut stmt = conn.prepare(sql).ctx("prepare pool check")?;
        let rows = stmt
            .query_map([], |r| Ok((text(r, 0)?, text(r, 1)?, text(r, 2)?)))
            .ctx("run pool check")?
            .collect::<Result<Vec<_>, _>>()
            .ctx("read pool check")?;
        out.extend(rows.iter().map(|r| Problem::new(code, message(r))));
    }
    Ok(())
}

/// Column `i` as text, whatever its type (a hand-edited row may hold anything).
fn text(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Null => "null".to_owned(),
    })
}

fn check_partition(rec: &PartitionRecord, held: Resources, out: &mut Vec<Problem>) {
    let want = rec.expected_holding();
    for (kind, have) in held.iter() {
        let need = want.get(kind);
        if have != need {
            out.push(Problem::new(
                "holding_mismatch",
                format!(
                    "partition {} ({}) holds {have} {kind}, its stage {} and run state {} need {need}",
                    rec.name, rec.uuid, rec.stage, rec.run_state
                ),
            ));
        }
    }
    if rec.is_template() && rec.run_state.is_active() {
        out.push(Problem::new(
            "active_template",
            format!(
                "partition {} ({}) is a template but {}",
                rec.name, rec.uuid, rec.run_state
            ),
        ));
    }
    if let Some(pid) = rec.pid
        && !rec.run_state.is_active()
    {
        out.push(Problem::new(
            "pid_while_inactive",
            format!(
                "partition {} ({}) has pid {pid} but is {}",
                rec.name, rec.uuid, rec.run_state
            ),
        ));
    }
}

fn integrity(conn: &Connection, out: &mut Vec<Problem>) -> Result<(), LedgerError> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .ctx("prepare quick_check")?;
    let lines = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .ctx("run quick_check")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read quick_check")?;
    for line in lines.into_iter().filter(|l| l != "ok") {
        out.push(Problem::new("integrity", line));
    }
    Ok(())
}

fn capacity_rows(conn: &Connection, out: &mut Vec<Problem>) -> Result<Resources, LedgerError> {
    let mut stmt = conn
        .prepare("SELECT kind FROM capacity")
        .ctx("prepare capacity query")?;
    let kinds = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .ctx("query capacity")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read capacity row")?;
    for kind in ResourceKind::ALL {
        if !kinds.iter().any(|k| k == kind.as_str()) {
            out.push(Problem::new(
                "capacity_missing",
                format!("no capacity row for {kind}"),
            ));
        }
    }
    read::capacity(conn)
}

/// The holding rows; an owner that does not parse is reported and `None`,
/// but its amount still counts toward the sums.
fn holding_rows(
    conn: &Connection,
    out: &mut Vec<Problem>,
) -> Result<Vec<(Option<Owner>, ResourceKind, u64)>, LedgerError> {
    let rows = read::raw_holdings(conn)?;
    let mut good = Vec::with_capacity(rows.len());
    for (owner, kind, amount) in rows {
        match (owner.parse::<Owner>(), kind.parse::<ResourceKind>()) {
            (Ok(o), Ok(k)) => good.push((Some(o), k, amount)),
            (Err(_), Ok(k)) => {
                out.push(Problem::new(
                    "orphan_holding",
                    format!("{owner:?} holds {amount} {kind} but is no owner"),
                ));
                good.push((None, k, amount));
            }
            (_, Err(e)) => out.push(Problem::new("bad_row", format!("holding of {owner}: {e}"))),
        }
    }
    Ok(good)
}

fn partition_rows(
    conn: &Connection,
    out: &mut Vec<Problem>,
) -> Result<BTreeMap<Uuid, PartitionRecord>, LedgerError> {
    let sql = format!("SELECT {} FROM partition", read::PARTITION_COLUMNS);
    let mut stmt = conn.prepare(&sql).ctx("prepare partition query")?;
    let raws = stmt
        .query_map([], RawPartition::from_row)
        .ctx("query partitions")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read partition row")?;
    let mut map = BTreeMap::new();
    for raw in raws {
        let key = raw.key().to_owned();
        match raw.decode() {
            Ok(rec) => {
                map.insert(rec.uuid, rec);
            }
            Err(e) => out.push(Problem::new("bad_row", format!("partition {key}: {e}"))),
        }
    }
    Ok(map)
}
