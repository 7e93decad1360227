//! Pools of identities: named sets of opaque values (MAC addresses, IPv4
//! addresses, indices) that partitions take and give back, one holder per
//! value. Forked children take their identity from pools.
//!
//! This module owns the pool types, the checks and writes of the pool ops
//! (called by `store::apply_op`, which owns the transaction) and the pool
//! queries. What a value means is broodd's business: the ledger only keeps
//! each value unique within its pool, hands out free values in insertion
//! order (`seq`), and records who holds what.
//!
//! Change records in the audit row, one per op:
//!
//! ```text
//! {"op":"create_pool","name":"macs",
//!  "after":{"kind":"identity","meta":{..},"created_at":"..","values":["..", ..]}}
//! {"op":"delete_pool","name":"macs","before":{<same as create's after>}}
//! {"op":"take_from_pool","pool":"macs","value":"..","seq":3,
//!  "before":{"holder":null},"after":{"holder":"<uuid>"}}
//! {"op":"return_to_pool","holder":"<uuid>","pool":"macs" | null,
//!  "items":[{"pool":"macs","value":"..","seq":3}, ..],
//!  "before":{"holder":"<uuid>"},"after":{"holder":null}}   (for each item)
//! ```

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};
use crate::resource::ParseNameError;

/// The longest pool name, in characters (of `[a-z0-9_.-]`).
pub const POOL_NAME_MAX_CHARS: usize = 64;
/// The longest pool value, in bytes of UTF-8.
pub const POOL_VALUE_MAX_BYTES: usize = 256;
/// The most values one pool holds.
pub const POOL_MAX_VALUES: usize = 65536;

/// What a pool's values are; a label for broodd, the ledger does not parse
/// the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// Opaque identities (MAC addresses, hostnames, indices).
    Identity,
    /// IPv4 addresses.
    Ipv4,
}

impl PoolKind {
    /// Every kind.
    pub const ALL: [PoolKind; 2] = [PoolKind::Identity, PoolKind::Ipv4];

    /// The snake_case name used in the database, JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Identity => "identity",
            PoolKind::Ipv4 => "ipv4",
        }
    }
}

impl fmt::Display for PoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PoolKind {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PoolKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ParseNameError {
                what: "pool kind",
                value: s.to_owned(),
            })
    }
}

/// A pool and how many of its values are free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// Unique name, 1-64 characters of `[a-z0-9_.-]`.
    pub name: String,
    /// What its values are.
    pub kind: PoolKind,
    /// broodd's details (a subnet, a MAC prefix), opaque to the ledger.
    pub meta: Value,
    /// How many values it has.
    pub size: u64,
    /// How many of them no partition holds.
    pub free: u64,
    /// RFC 3339 UTC; set by the ledger on create.
    pub created_at: String,
}

/// One value of a pool and its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolItem {
    /// The value.
    pub value: String,
    /// The partition that holds it, if any.
    pub holder: Option<Uuid>,
}

fn invalid(op: usize, what: String) -> LedgerError {
    LedgerError::InvalidOp { op, what }
}

fn json_err(what: &'static str) -> impl FnOnce(serde_json::Error) -> LedgerError {
    move |source| LedgerError::Json { what, source }
}

fn check_name(op: usize, name: &str) -> Result<(), LedgerError> {
    let ok_char = |c: char| matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-');
    if name.is_empty() || name.chars().count() > POOL_NAME_MAX_CHARS || !name.chars().all(ok_char) {
        return Err(invalid(
            op,
            format!("pool name {name:?} is not 1-{POOL_NAME_MAX_CHARS} characters of [a-z0-9_.-]"),
        ));
    }
    Ok(())
}

fn check_values(op: usize, name: &str, values: &[String]) -> Result<(), LedgerError> {
    if values.is_empty() || values.len() > POOL_MAX_VALUES {
        return Err(invalid(
            op,
            format!(
                "pool {name:?} gets {} values, not 1-{POOL_MAX_VALUES}",
                values.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(values.len());
    for v in values {
        if v.is_empty() || v.len() > POOL_VALUE_MAX_BYTES {
            return Err(invalid(
                op,
                format!(
                    "value {v:?} of pool {name:?} is {} bytes, not 1-{POOL_VALUE_MAX_BYTES}",
                    v.len()
                ),
            ));
        }
        if !seen.insert(v.as_str()) {
            return Err(invalid(
                op,
                format!("value {v:?} appears twice in pool {name:?}"),
            ));
        }
    }
    Ok(())
}

/// Applies `Op::CreatePool` (op `i` of its Tx).
pub(crate) fn create(
    conn: &Connection,
    i: usize,
    (name, kind, meta): (&str, PoolKind, &Value),
    values: &[String],
    now: &str,
) -> Result<Value, LedgerError> {
    check_name(i, name)?;
    check_values(i, name, values)?;
    if exists(conn, name)? {
        return Err(LedgerError::PoolExists {
            name: name.to_owned(),
        });
    }
    let meta_text = serde_json::to_string(meta).map_err(json_err("pool meta"))?;
    conn.prepare_cached("INSERT INTO pool (name, kind, meta, created_at) VALUES (?1, ?2, ?3, ?4)")
        .ctx("prepare pool insert")?
        .execute(params![name, kind.as_str(), meta_text, now])
        .ctx("insert pool")?;
    let mut insert = conn
        .prepare_cached("INSERT INTO pool_item (pool, seq, value) VALUES (?1, ?2, ?3)")
        .ctx("prepare pool item insert")?;
    for (seq, value) in values.iter().enumerate() {
        insert
            .execute(params![name, seq, value])
            .ctx("insert pool item")?;
    }
    Ok(json!({
        "op": "create_pool",
        "name": name,
        "after": {"kind": kind, "meta": meta, "created_at": now, "values": values},
    }))
}

/// Applies `Op::DeletePool`.
pub(crate) fn delete(conn: &Connection, name: &str) -> Result<Value, LedgerError> {
    let info = pool(conn, name)?.ok_or_else(|| LedgerError::NoSuchPool {
        name: name.to_owned(),
    })?;
    let held = info.size.saturating_sub(info.free);
    if held > 0 {
        return Err(LedgerError::PoolInUse {
            name: name.to_owned(),
            held,
        });
    }
    let values: Vec<String> = items(conn, name)?.into_iter().map(|i| i.value).collect();
    conn.prepare_cached("DELETE FROM pool_item WHERE pool = ?1")
        .ctx("prepare pool item delete")?
        .execute([name])
        .ctx("delete pool items")?;
    conn.prepare_cached("DELETE FROM pool WHERE name = ?1")
        .ctx("prepare pool delete")?
        .execute([name])
        .ctx("delete pool")?;
    Ok(json!({
        "op": "delete_pool",
        "name": name,
        "before": {
            "kind": info.kind, "meta": info.meta, "created_at": info.created_at,
            "values": values,
        },
    }))
}

/// Applies `Op::TakeFromPool`; `holder` is known to exist.
pub(crate) fn take(
    conn: &Connection,
    pool: &str,
    holder: Uuid,
    value: Option<&str>,
) -> Result<Value, LedgerError> {
    if !exists(conn, pool)? {
        return Err(LedgerError::NoSuchPool {
            name: pool.to_owned(),
        });
    }
    let (value, seq): (String, u64) = match value {
        Some(v) => {
            let row: Option<(u64, Option<String>)> = conn
                .prepare_cached("SELECT seq, holder FROM pool_item WHERE pool = ?1 AND value = ?2")
                .ctx("prepare pool item lookup")?
                .query_row(params![pool, v], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .ctx("look up pool item")?;
            match row {
                None => {
                    return Err(LedgerError::NotInPool {
                        pool: pool.to_owned(),
                        value: v.to_owned(),
                    });
                }
                Some((_, Some(h))) => {
                    return Err(LedgerError::ValueTaken {
                        pool: pool.to_owned(),
                        value: v.to_owned(),
                        holder: parse_holder(pool, v, &h)?,
                    });
                }
                Some((seq, None)) => (v.to_owned(), seq),
            }
        }
        None => {
            let free: Option<(String, u64)> = conn
                .prepare_cached(
                    "SELECT value, seq FROM pool_item WHERE pool = ?1 AND holder IS NULL \
                     ORDER BY seq LIMIT 1",
                )
                .ctx("prepare free pool item query")?
                .query_row([pool], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .ctx("find free pool item")?;
            match free {
                Some(found) => found,
                None => {
                    let size = conn
                        .prepare_cached("SELECT count(*) FROM pool_item WHERE pool = ?1")
                        .ctx("prepare pool size query")?
                        .query_row([pool], |r| r.get(0))
                        .ctx("count pool items")?;
                    return Err(LedgerError::PoolExhausted {
                        pool: pool.to_owned(),
                        size,
                    });
                }
            }
        }
    };
    conn.prepare_cached(
        "UPDATE pool_item SET holder = ?3 WHERE pool = ?1 AND value = ?2 AND holder IS NULL",
    )
    .ctx("prepare pool item take")?
    .execute(params![pool, value, holder.to_string()])
    .ctx("take pool item")?;
    Ok(json!({
        "op": "take_from_pool",
        "pool": pool,
        "value": value,
        "seq": seq,
        "before": {"holder": null},
        "after": {"holder": holder},
    }))
}

/// Applies `Op::ReturnToPool`; `holder` is known to exist.
pub(crate) fn give_back(
    conn: &Connection,
    holder: Uuid,
    pool: Option<&str>,
) -> Result<Value, LedgerError> {
    if let Some(name) = pool
        && !exists(conn, name)?
    {
        return Err(LedgerError::NoSuchPool {
            name: name.to_owned(),
        });
    }
    // `?2 IS NULL` selects every pool; the holder index narrows the rows first.
    let items = conn
        .prepare_cached(
            "SELECT pool, value, seq FROM pool_item WHERE holder = ?1 \
             AND (?2 IS NULL OR pool = ?2) ORDER BY pool, seq",
        )
        .ctx("prepare held item query")?
        .query_map(params![holder.to_string(), pool], |r| {
            Ok(json!({
                "pool": r.get::<_, String>(0)?,
                "value": r.get::<_, String>(1)?,
                "seq": r.get::<_, u64>(2)?,
            }))
        })
        .ctx("query held items")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read held item")?;
    conn.prepare_cached(
        "UPDATE pool_item SET holder = NULL WHERE holder = ?1 AND (?2 IS NULL OR pool = ?2)",
    )
    .ctx("prepare pool item return")?
    .execute(params![holder.to_string(), pool])
    .ctx("return pool items")?;
    Ok(json!({
        "op": "return_to_pool",
        "holder": holder,
        "pool": pool,
        "items": items,
        "before": {"holder": holder},
        "after": {"holder": null},
    }))
}

fn parse_holder(pool: &str, value: &str, holder: &str) -> Result<Uuid, LedgerError> {
    Uuid::parse_str(holder).map_err(|e| LedgerError::BadRow {
        table: "pool_item",
        key: format!("{pool}/{value}"),
        what: format!("holder: {e}"),
    })
}

fn exists(conn: &Connection, name: &str) -> Result<bool, LedgerError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM pool WHERE name = ?1)")
        .ctx("prepare pool lookup")?
        .query_row([name], |r| r.get(0))
        .ctx("look up pool")
}

/// The columns `info_from_row` reads: a pool and its counts.
const INFO_SELECT: &str = "SELECT p.name, p.kind, p.meta, p.created_at, \
     count(i.value), count(i.holder) FROM pool p LEFT JOIN pool_item i ON i.pool = p.name";

type RawInfo = (String, String, String, String, u64, u64);

fn raw_info(r: &Row<'_>) -> rusqlite::Result<RawInfo> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn decode_info(
    (name, kind, meta, created_at, size, held): RawInfo,
) -> Result<PoolInfo, LedgerError> {
    let bad = |what: String| LedgerError::BadRow {
        table: "pool",
        key: name.clone(),
        what,
    };
    Ok(PoolInfo {
        kind: kind.parse().map_err(|e| bad(format!("{e}")))?,
        meta: serde_json::from_str(&meta).map_err(|e| bad(format!("meta: {e}")))?,
        free: size.saturating_sub(held),
        size,
        created_at,
        name,
    })
}

/// Every pool, by name.
pub(crate) fn pools(conn: &Connection) -> Result<Vec<PoolInfo>, LedgerError> {
    let sql = format!("{INFO_SELECT} GROUP BY p.name ORDER BY p.name");
    let raws = conn
        .prepare_cached(&sql)
        .ctx("prepare pool query")?
        .query_map([], raw_info)
        .ctx("query pools")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read pool row")?;
    raws.into_iter().map(decode_info).collect()
}

/// The pool with this name.
pub(crate) fn pool(conn: &Connection, name: &str) -> Result<Option<PoolInfo>, LedgerError> {
    let sql = format!("{INFO_SELECT} WHERE p.name = ?1 GROUP BY p.name");
    conn.prepare_cached(&sql)
        .ctx("prepare pool query")?
        .query_row([name], raw_info)
        .optional()
        .ctx("read pool row")?
        .map(decode_info)
        .transpose()
}

/// The values of pool `name` with their holders, in insertion order;
/// empty if there is no such pool (a pool always has values).
pub(crate) fn items(conn: &Connection, name: &str) -> Result<Vec<PoolItem>, LedgerError> {
    let rows = conn
        .prepare_cached("SELECT value, holder FROM pool_item WHERE pool = ?1 ORDER BY seq")
        .ctx("prepare pool item query")?
        .query_map([name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .ctx("query pool items")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read pool item")?;
    rows.into_iter()
        .map(|(value, holder)| {
            let holder = holder.map(|h| parse_holder(name, &value, &h)).transpose()?;
            Ok(PoolItem { value, holder })
        })
        .collect()
}

/// The (pool, value) pairs `holder` holds, by pool then insertion order.
pub(crate) fn held_by(
    conn: &Connection,
    holder: Uuid,
) -> Result<Vec<(String, String)>, LedgerError> {
    conn.prepare_cached("SELECT pool, value FROM pool_item WHERE holder = ?1 ORDER BY pool, seq")
        .ctx("prepare held item query")?
        .query_map([holder.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .ctx("query held items")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read held item")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["macs", "a", "ip-10.0.0.0_24", &"x".repeat(64)] {
            assert!(check_name(0, ok).is_ok(), "{ok}");
        }
        for bad in ["", "Macs", "a b", "a/b", "ünï", &"x".repeat(65)] {
            let e = check_name(3, bad).expect_err(bad);
            assert!(matches!(e, LedgerError::InvalidOp { op: 3, .. }), "{e}");
        }
    }

    #[test]
    fn values_are_non_empty_unique_and_bounded() {
        let v = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_values(0, "p", &v(&["a", "b"])).is_ok());
        for bad in [v(&[]), v(&["a", "a"]), v(&[""]), vec!["x".repeat(257)]] {
            assert!(check_values(0, "p", &bad).is_err(), "{bad:?}");
        }
        assert!(
            check_values(0, "p", &["é".repeat(128)]).is_ok(),
            "256 bytes"
        );
        let many: Vec<String> = (0..=POOL_MAX_VALUES).map(|i| i.to_string()).collect();
        assert!(check_values(0, "p", &many).is_err());
        assert!(check_values(0, "p", &many[..POOL_MAX_VALUES]).is_ok());
    }

    #[test]
    fn kind_names_round_trip() {
        for k in PoolKind::ALL {
            assert_eq!(k.as_str().parse::<PoolKind>(), Ok(k));
            assert_eq!(serde_json::to_value(k).ok(), Some(Value::from(k.as_str())));
        }
        assert!("mac".parse::<PoolKind>().is_err());
    }
}
