//! Applying transactions: each op checks its before-images, writes its
//! rows and returns its change record; a Tx appends one audit row; a batch
//! runs each Tx in a SAVEPOINT inside one SQLite transaction and commits
//! once (group commit: one fsync for the batch).
//!
//! Change records, one JSON object per op, in the audit row's `changes`:
//!
//! ```text
//! {"op":"move","kind":"vcpus","amount":1,
//!  "from":{"owner":"available","before":8,"after":7},
//!  "to":{"owner":"<uuid>","before":0,"after":1}}
//! {"op":"insert_partition","uuid":"<uuid>","after":{<whole record>}}
//! {"op":"update_partition","uuid":"<uuid>","before":{<changed fields>},"after":{<same fields>}}
//! {"op":"delete_partition","uuid":"<uuid>","before":{<whole record>}}
//! {"op":"set_capacity","before":{<resources>},"after":{<resources>},
//!  "available":{"before":{<resources>},"after":{<resources>}}}
//! ```
//!
//! The pool ops' records are described in `pool`, which applies them.
//! Queries live in `read`; the thread that calls this is `ledger`'s writer.

use rusqlite::{Connection, params};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};
use crate::lineage::Taken;
use crate::partition::{PartitionExpect, PartitionRecord};
use crate::pool;
use crate::read;
use crate::resource::{Owner, ResourceKind, Resources};
use crate::tx::{Committed, Op, Tx, TxId};

/// The largest amount SQLite's INTEGER holds.
const MAX_AMOUNT: u64 = i64::MAX as u64;

/// The current UTC time in RFC 3339.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

/// Applies `txs` in one SQLite transaction, each inside its own savepoint,
/// and commits once. A failing Tx rolls back to its savepoint and gets its
/// own error; the others are unaffected. When the final COMMIT fails, every
/// Tx of the batch gets that error and none applied.
pub(crate) fn commit_batch(conn: &Connection, txs: &[Tx]) -> Vec<Result<Committed, LedgerError>> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return batch_failed(txs.len(), "begin", e);
    }
    let mut results: Vec<Result<Committed, LedgerError>> = txs
        .iter()
        .map(|tx| {
            // An I/O error or SQLITE_FULL may have rolled back the whole
            // SQLite transaction; a SAVEPOINT now would start a new one that
            // its RELEASE would commit on its own.
            if conn.is_autocommit() {
                return Err(LedgerError::BatchAborted);
            }
            in_savepoint(conn, tx)
        })
        .collect();
    if conn.is_autocommit() {
        for r in &mut results {
            if r.is_ok() {
                *r = Err(LedgerError::BatchAborted);
            }
        }
        return results;
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        // COMMIT may fail and leave the transaction open (SQLITE_BUSY);
        // roll back so the next batch starts clean.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let shared = std::sync::Arc::new(e);
        for r in &mut results {
            if r.is_ok() {
                *r = Err(LedgerError::BatchFailed {
                    what: "commit",
                    source: shared.clone(),
                });
            }
        }
    }
    results
}

fn batch_failed(
    n: usize,
    what: &'static str,
    e: rusqlite::Error,
) -> Vec<Result<Committed, LedgerError>> {
    let shared = std::sync::Arc::new(e);
    (0..n)
        .map(|_| {
            Err(LedgerError::BatchFailed {
                what,
                source: shared.clone(),
            })
        })
        .collect()
}

fn in_savepoint(conn: &Connection, tx: &Tx) -> Result<Committed, LedgerError> {
    conn.execute_batch("SAVEPOINT tx").ctx("open savepoint")?;
    let result = apply_tx(conn, tx).and_then(|id| {
        conn.execute_batch("RELEASE tx")
            .ctx("release savepoint")
            .map(|()| id)
    });
    if result.is_err() {
        // If this fails too, the batch transaction is gone and
        // commit_batch sees that through is_autocommit.
        let _ = conn.execute_batch("ROLLBACK TO tx; RELEASE tx");
    }
    result
}

/// Applies every op of `tx` and appends its audit row. The caller owns the
/// transaction (or savepoint) and rolls it back on error.
pub(crate) fn apply_tx(conn: &Connection, tx: &Tx) -> Result<Committed, LedgerError> {
    let now = now_rfc3339();
    let changes = tx
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| apply_op(conn, i, op, (&now, &tx.actor)))
        .collect::<Result<Vec<_>, _>>()?;
    let taken = changes
        .iter()
        .filter(|c| c.get("op").and_then(Value::as_str) == Some("take_from_pool"))
        .filter_map(|c| {
            Some(Taken {
                pool: c.get("pool")?.as_str()?.to_owned(),
                value: c.get("value")?.as_str()?.to_owned(),
                holder: c.pointer("/after/holder")?.as_str()?.parse().ok()?,
            })
        })
        .collect();
    let changes = serde_json::to_string(&changes).map_err(|source| LedgerError::Json {
        what: "audit changes",
        source,
    })?;
    conn.prepare_cached("INSERT INTO audit (time, actor, reason, changes) VALUES (?1, ?2, ?3, ?4)")
        .ctx("prepare audit insert")?
        .execute(params![now, tx.actor, tx.reason, changes])
        .ctx("append audit row")?;
    let id = u64::try_from(conn.last_insert_rowid()).unwrap_or(0);
    Ok(Committed {
        id: TxId(id),
        taken,
    })
}

fn apply_op(
    conn: &Connection,
    i: usize,
    op: &Op,
    (now, actor): (&str, &str),
) -> Result<Value, LedgerError> {
    match op {
        Op::Move {
            kind,
            from,
            to,
            amount,
            expect_from,
            expect_to,
        } => apply_move(
            conn,
            i,
            *kind,
            (*from, *expect_from),
            (*to, *expect_to),
            *amount,
        ),
        Op::InsertPartition(rec) => insert_partition(conn, i, rec, now),
        Op::UpdatePartition { uuid, expect, set } => {
            let mut rec = load_partition(conn, *uuid)?;
            check_expect(i, &rec, expect)?;
            if let Some(name) = &set.name
                && *name != rec.name
                && read::partition_by_name(conn, name)?.is_some()
            {
                return Err(LedgerError::NameTaken { name: name.clone() });
            }
            let before = rec.clone();
            set.apply_to(&mut rec)
                .map_err(|refused| LedgerError::Transition {
                    uuid: *uuid,
                    refused,
                })?;
            rec.generation = rec.generation.saturating_add(1);
            rec.updated_at = now.to_owned();
            write_partition(conn, &rec, Write::Update)?;
            let (b, a) = diff(&before, &rec)?;
            Ok(json!({"op": "update_partition", "uuid": uuid, "before": b, "after": a}))
        }
        Op::DeletePartition { uuid, expect } => delete_partition(conn, i, *uuid, expect),
        Op::SetCapacity { capacity, expect } => set_capacity(conn, i, capacity, expect.as_ref()),
        Op::CreatePool {
            name,
            kind,
            meta,
            values,
        } => pool::create(conn, i, (name, *kind, meta), values, now),
        Op::DeletePool { name } => pool::delete(conn, name),
        Op::TakeFromPool {
            pool,
            holder,
            value,
        } => {
            require_partition(conn, *holder)?;
            pool::take(conn, pool, *holder, value.as_deref())
        }
        Op::ReturnToPool { holder, pool } => {
            require_partition(conn, *holder)?;
            pool::give_back(conn, *holder, pool.as_deref())
        }
        Op::Net(op) => crate::network::apply(conn, i, op, now),
        Op::ServicePool { change } => crate::service_pool::apply(conn, i, change, now),
        Op::Unit(op) => crate::unit::apply(conn, i, op, now, actor),
        Op::User(op) => crate::user::apply(conn, i, op, now),
        Op::Charge(op) => crate::charge::apply(conn, i, op, now),
        Op::Change(op) => crate::change::apply(conn, i, op, now),
        Op::Publish(op) => crate::publish::apply(conn, i, op),
    }
}

/// Deletes a partition that holds nothing and that no partition descends
/// from. The foreign keys on `holding`, `pool_item` and `partition.parent`
/// would refuse it anyway; checking first names the reason.
fn delete_partition(
    conn: &Connection,
    i: usize,
    uuid: Uuid,
    expect: &PartitionExpect,
) -> Result<Value, LedgerError> {
    let rec = load_partition(conn, uuid)?;
    check_expect(i, &rec, expect)?;
    let held = read::held_by(conn, Owner::Partition(uuid))?;
    if !held.is_zero() {
        return Err(LedgerError::StillHolds { uuid, held });
    }
    let items = pool::held_by(conn, uuid)?;
    if !items.is_empty() {
        return Err(LedgerError::StillHoldsPoolItems { uuid, items });
    }
    let count = read::child_count(conn, uuid)?;
    if count > 0 {
        return Err(LedgerError::HasDescendants { uuid, count });
    }
    // A template's actions go with it, in this transaction: no binding
    // outlives its template.
    let actions = crate::action::remove_all(conn, uuid)?;
    conn.prepare_cached("DELETE FROM partition WHERE uuid = ?1")
        .ctx("prepare partition delete")?
        .execute([uuid.to_string()])
        .ctx("delete partition")?;
    let mut out = json!({"op": "delete_partition", "uuid": uuid, "before": to_json(&rec)?});
    if !actions.is_empty() {
        out["actions_deleted"] = json!(actions);
    }
    Ok(out)
}

fn apply_move(
    conn: &Connection,
    i: usize,
    kind: ResourceKind,
    (from, expect_from): (Owner, Option<u64>),
    (to, expect_to): (Owner, Option<u64>),
    amount: u64,
) -> Result<Value, LedgerError> {
    if from == to {
        return Err(LedgerError::InvalidOp {
            op: i,
            what: format!("moves {kind} from {from} to itself"),
        });
    }
    if amount > MAX_AMOUNT {
        return Err(LedgerError::InvalidOp {
            op: i,
            what: format!("amount {amount} is larger than {MAX_AMOUNT}"),
        });
    }
    // A member partition reserves from, and releases to, its unit.
    let (from, to) = crate::unit::route(conn, from, to)?;
    move_amount_checked(conn, i, kind, (from, expect_from), (to, expect_to), amount)
}

/// Moves `amount` of `kind` between two owners as they are (no routing
/// through a unit), with no before-images: `unit`'s decisions use it.
pub(crate) fn move_amount(
    conn: &Connection,
    i: usize,
    kind: ResourceKind,
    from: Owner,
    to: Owner,
    amount: u64,
) -> Result<Value, LedgerError> {
    move_amount_checked(conn, i, kind, (from, None), (to, None), amount)
}

fn move_amount_checked(
    conn: &Connection,
    i: usize,
    kind: ResourceKind,
    (from, expect_from): (Owner, Option<u64>),
    (to, expect_to): (Owner, Option<u64>),
    amount: u64,
) -> Result<Value, LedgerError> {
    for uuid in [from.partition(), to.partition()].into_iter().flatten() {
        if !partition_exists(conn, uuid)? {
            return Err(LedgerError::NoSuchPartition { uuid });
        }
    }
    for uuid in [from.unit(), to.unit()].into_iter().flatten() {
        if !crate::unit::exists(conn, uuid)? {
            return Err(LedgerError::InvalidOp {
                op: i,
                what: format!("moves {kind} of unit {uuid}, which does not exist"),
            });
        }
    }
    let have_from = read::amount_held(conn, from, kind)?;
    let have_to = read::amount_held(conn, to, kind)?;
    for (owner, expect, have) in [(from, expect_from, have_from), (to, expect_to, have_to)] {
        if let Some(expected) = expect
            && expected != have
        {
            return Err(LedgerError::Precondition {
                op: i,
                what: format!("{kind} held by {owner}"),
                expected: expected.to_string(),
                actual: have.to_string(),
            });
        }
    }
    let Some(left) = have_from.checked_sub(amount) else {
        return Err(LedgerError::Insufficient {
            kind,
            owner: from,
            have: have_from,
            want: amount,
        });
    };
    let Some(after_to) = have_to.checked_add(amount).filter(|v| *v <= MAX_AMOUNT) else {
        return Err(LedgerError::Overflow { kind, owner: to });
    };
    write_amount(conn, from, kind, left)?;
    write_amount(conn, to, kind, after_to)?;
    Ok(json!({
        "op": "move",
        "kind": kind,
        "amount": amount,
        "from": {"owner": from, "before": have_from, "after": left},
        "to": {"owner": to, "before": have_to, "after": after_to},
    }))
}

/// Stores `owner`'s amount of `kind`; a partition's row goes away at zero.
fn write_amount(
    conn: &Connection,
    owner: Owner,
    kind: ResourceKind,
    amount: u64,
) -> Result<(), LedgerError> {
    if amount == 0 && owner != Owner::Available {
        conn.prepare_cached("DELETE FROM holding WHERE owner = ?1 AND kind = ?2")
            .ctx("prepare holding delete")?
            .execute(params![owner.to_string(), kind.as_str()])
            .ctx("delete holding")?;
    } else {
        conn.prepare_cached(
            "INSERT INTO holding (owner, kind, amount) VALUES (?1, ?2, ?3)
             ON CONFLICT (owner, kind) DO UPDATE SET amount = excluded.amount",
        )
        .ctx("prepare holding upsert")?
        .execute(params![owner.to_string(), kind.as_str(), amount])
        .ctx("write holding")?;
    }
    Ok(())
}

fn partition_exists(conn: &Connection, uuid: Uuid) -> Result<bool, LedgerError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM partition WHERE uuid = ?1)")
        .ctx("prepare partition lookup")?
        .query_row([uuid.to_string()], |r| r.get(0))
        .ctx("look up partition")
}

fn require_partition(conn: &Connection, uuid: Uuid) -> Result<(), LedgerError> {
    if partition_exists(conn, uuid)? {
        Ok(())
    } else {
        Err(LedgerError::NoSuchPartition { uuid })
    }
}

fn load_partition(conn: &Connection, uuid: Uuid) -> Result<PartitionRecord, LedgerError> {
    read::partition_by_uuid(conn, uuid)?.ok_or(LedgerError::NoSuchPartition { uuid })
}

fn check_expect(i: usize, rec: &PartitionRecord, e: &PartitionExpect) -> Result<(), LedgerError> {
    let mismatch = |field: &str, expected: String, actual: String| LedgerError::Precondition {
        op: i,
        what: format!("{field} of partition {}", rec.uuid),
        expected,
        actual,
    };
    if let Some(want) = e.run_state
        && want != rec.run_state
    {
        return Err(mismatch(
            "run_state",
            want.to_string(),
            rec.run_state.to_string(),
        ));
    }
    if let Some(want) = e.stage
        && want != rec.stage
    {
        return Err(mismatch("stage", want.to_string(), rec.stage.to_string()));
    }
    if let Some(want) = e.generation
        && want != rec.generation
    {
        return Err(mismatch(
            "generation",
            want.to_string(),
            rec.generation.to_string(),
        ));
    }
    Ok(())
}

fn insert_partition(
    conn: &Connection,
    i: usize,
    rec: &PartitionRecord,
    now: &str,
) -> Result<Value, LedgerError> {
    if rec.is_template() && rec.run_state.is_active() {
        return Err(LedgerError::InvalidOp {
            op: i,
            what: format!(
                "inserts template {:?} with run state {}: a template never runs",
                rec.name, rec.run_state
            ),
        });
    }
    if let Some(parent) = rec.parent {
        require_partition(conn, parent)?;
    }
    if partition_exists(conn, rec.uuid)? {
        return Err(LedgerError::UuidTaken { uuid: rec.uuid });
    }
    if read::partition_by_name(conn, &rec.name)?.is_some() {
        return Err(LedgerError::NameTaken {
            name: rec.name.clone(),
        });
    }
    let mut rec = rec.clone();
    now.clone_into(&mut rec.created_at);
    now.clone_into(&mut rec.updated_at);
    rec.generation = 1;
    write_partition(conn, &rec, Write::Insert)?;
    crate::unit::inherit(conn, &rec)?;
    Ok(json!({"op": "insert_partition", "uuid": rec.uuid, "after": to_json(&rec)?}))
}

/// Whether `write_partition` adds a row or replaces one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Insert,
    Update,
}

/// Inserts or updates (by uuid) every column of `rec`, except that an
/// update leaves `parent` alone.
fn write_partition(
    conn: &Connection,
    rec: &PartitionRecord,
    how: Write,
) -> Result<(), LedgerError> {
    let sql = if how == Write::Insert {
        format!(
            "INSERT INTO partition ({}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
             ?18, ?19)",
            read::PARTITION_COLUMNS
        )
    } else {
        "UPDATE partition SET name = ?2, stage = ?3, run_state = ?4, active_config = ?5, \
         configs = ?6, demand_memory_mib = ?7, demand_vcpus = ?8, demand_disk_gib = ?9, \
         demand_nics = ?10, pid = ?11, pending_op = ?12, restart_count = ?13, last_exit = ?14, \
         created_at = ?15, updated_at = ?16, generation = ?17, fork = ?19 WHERE uuid = ?1"
            .to_owned()
    };
    let configs = rec.configs.as_str();
    let fork = rec
        .lineage
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|source| LedgerError::Json {
            what: "partition fork details",
            source,
        })?;
    let d = rec.demand;
    for (kind, v) in d.iter() {
        if v > MAX_AMOUNT {
            return Err(LedgerError::Overflow {
                kind,
                owner: Owner::Partition(rec.uuid),
            });
        }
    }
    conn.prepare_cached(&sql)
        .ctx("prepare partition write")?
        .execute(params![
            rec.uuid.to_string(),
            rec.name,
            rec.stage.as_str(),
            rec.run_state.as_str(),
            rec.active_config,
            configs,
            d.memory_mib,
            d.vcpus,
            d.disk_gib,
            d.nics,
            rec.pid,
            rec.pending_op.map(|p| p.as_str()),
            rec.restart_count,
            rec.last_exit,
            rec.created_at,
            rec.updated_at,
            rec.generation,
            rec.parent.map(|p| p.to_string()),
            fork,
        ])
        .ctx("write partition")?;
    Ok(())
}

fn set_capacity(
    conn: &Connection,
    i: usize,
    capacity: &Resources,
    expect: Option<&Resources>,
) -> Result<Value, LedgerError> {
    let before = read::capacity(conn)?;
    if let Some(want) = expect
        && *want != before
    {
        return Err(LedgerError::Precondition {
            op: i,
            what: "capacity".into(),
            expected: want.to_string(),
            actual: before.to_string(),
        });
    }
    let avail_before = read::held_by(conn, Owner::Available)?;
    let mut avail_after = Resources::ZERO;
    for (kind, cap) in capacity.iter() {
        if cap > MAX_AMOUNT {
            return Err(LedgerError::Overflow {
                kind,
                owner: Owner::Available,
            });
        }
        let in_use: u64 = conn
            .prepare_cached(
                "SELECT coalesce(sum(amount), 0) FROM holding WHERE kind = ?1 AND owner <> ?2",
            )
            .ctx("prepare in-use query")?
            .query_row(params![kind.as_str(), Owner::AVAILABLE], |r| r.get(0))
            .ctx("sum holdings")?;
        let Some(free) = cap.checked_sub(in_use) else {
            return Err(LedgerError::CapacityInUse {
                kind,
                capacity: cap,
                in_use,
            });
        };
        avail_after.set(kind, free);
        conn.prepare_cached(
            "INSERT INTO capacity (kind, amount) VALUES (?1, ?2)
             ON CONFLICT (kind) DO UPDATE SET amount = excluded.amount",
        )
        .ctx("prepare capacity upsert")?
        .execute(params![kind.as_str(), cap])
        .ctx("write capacity")?;
        write_amount(conn, Owner::Available, kind, free)?;
    }
    Ok(json!({
        "op": "set_capacity",
        "before": before,
        "after": capacity,
        "available": {"before": avail_before, "after": avail_after},
    }))
}

fn to_json(rec: &PartitionRecord) -> Result<Value, LedgerError> {
    serde_json::to_value(rec).map_err(|source| LedgerError::Json {
        what: "partition record",
        source,
    })
}

/// Field name to value, for the changed fields of an update.
type Fields = Map<String, Value>;

/// The fields that differ between two records: (old values, new values).
fn diff(
    before: &PartitionRecord,
    after: &PartitionRecord,
) -> Result<(Fields, Fields), LedgerError> {
    let (Value::Object(b), Value::Object(a)) = (to_json(before)?, to_json(after)?) else {
        return Ok((Map::new(), Map::new()));
    };
    let mut old = Map::new();
    let mut new = Map::new();
    for (key, value) in a {
        let prev = b.get(&key).cloned().unwrap_or(Value::Null);
        if prev != value {
            old.insert(key.clone(), prev);
            new.insert(key, value);
        }
    }
    Ok((old, new))
}
