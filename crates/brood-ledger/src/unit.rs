//! Business units (US 8,924,964): a unit is a holder in the ledger. An
//! approved allocation moves capacity from `available` to `unit:<uuid>` in
//! the transaction that records the decision; the unit's partitions then
//! reserve from, and release to, that holding instead of `available`.
//!
//! The routing is the ledger's own: `route` rewrites a move between
//! `available` and a member partition into a move between the unit and the
//! partition, so every reservation broodd makes (define, start, fork, the
//! memory true-up) is checked against the unit's holding by the same
//! `Insufficient` precondition that guards `available`, inside the same
//! SQLite transaction. 1,000 concurrent creates cannot overshoot it.
//!
//! A partition joins a unit with `UnitOp::Join` (put it right after its
//! `InsertPartition`, before its reservations); a partition inserted with a
//! parent that is a member (a fork child) joins its parent's unit.
//!
//! Change records:
//!
//! ```text
//! {"op":"unit_register","unit":"<uuid>","after":{<UnitRecord>}}
//! {"op":"unit_request","id":N,"unit":"<uuid>","after":{<UnitRequest>}}
//! {"op":"unit_decide","id":N,"unit":"<uuid>","state":"approved|partial|rejected",
//!  "allocation":{"before":{<resources>},"after":{<resources>}},
//!  "moves":[<move records between available and the unit>]}
//! {"op":"unit_join","unit":"<uuid>","partition":"<uuid>"}
//! ```

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};
use crate::partition::PartitionRecord;
use crate::read;
use crate::resource::{Owner, ResourceKind, Resources};

/// Longest unit contact, in bytes.
pub const UNIT_CONTACT_MAX_BYTES: usize = 256;
/// Largest infrastructure document, in bytes of JSON.
pub const INFRA_MAX_BYTES: usize = 256 * 1024;
/// Most networks or templates one request may name.
pub const UNIT_MAX_NAMES: usize = 64;

/// A registered business unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// Its id; its holding is `unit:<uuid>`.
    pub uuid: Uuid,
    /// Unique name, 1-64 characters of `[a-z0-9_.-]`.
    pub name: String,
    /// Who to call.
    pub contact: String,
    /// What it was granted (its holding plus what its partitions hold).
    pub allocation: Resources,
    /// Networks it may attach to.
    pub networks: Vec<String>,
    /// Templates it may create VMs from.
    pub templates: Vec<String>,
    /// When it registered, RFC 3339.
    pub created_at: String,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for an administrator.
    Pending,
    /// Granted as asked.
    Approved,
    /// Granted in part.
    Partial,
    /// Refused.
    Rejected,
}

impl RequestState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Partial => "partial",
            RequestState::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Option<RequestState> {
        [
            RequestState::Pending,
            RequestState::Approved,
            RequestState::Partial,
            RequestState::Rejected,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A unit's request for an allocation, or for a change of it: `want` is
/// the whole allocation it asks to have afterwards (more or less than now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRequest {
    /// Its number.
    pub id: u64,
    /// The unit.
    pub unit: Uuid,
    /// The allocation asked for.
    pub want: Resources,
    /// Networks asked for.
    pub networks: Vec<String>,
    /// Templates asked for.
    pub templates: Vec<String>,
    /// Where it stands.
    pub state: RequestState,
    /// What was granted, once decided (not for a rejection).
    pub granted: Option<Resources>,
    /// The administrator's note.
    pub note: Option<String>,
    /// When it was made.
    pub created_at: String,
    /// When it was decided.
    pub decided_at: Option<String>,
    /// Who decided it.
    pub decided_by: Option<String>,
}

/// A unit op (`Op::Unit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "unit_op", rename_all = "snake_case")]
pub enum UnitOp {
    /// Registers a unit with nothing allocated. `NameTaken` if the name is in use.
    Register {
        /// New id.
        uuid: Uuid,
        /// Unique name.
        name: String,
        /// Who to call.
        contact: String,
    },
    /// Files a request; its number is in the change record (`id`).
    Request {
        /// The unit.
        unit: Uuid,
        /// The whole allocation wanted afterwards.
        want: Resources,
        /// Networks wanted.
        networks: Vec<String>,
        /// Templates wanted.
        templates: Vec<String>,
    },
    /// Decides a pending request (`Precondition` if it is not pending). An
    /// approval grants `want`; a partial one `grant`, each kind of which
    /// lies between the current allocation and `want`. The difference moves
    /// between `available` and the unit in this op: `Insufficient` from
    /// `available` when the host lacks it, from the unit when a shrink
    /// would take what its partitions hold.
    Decide {
        /// The request.
        id: u64,
        /// Approved, Partial or Rejected.
        state: RequestState,
        /// What a partial approval grants.
        grant: Option<Resources>,
        /// Why, for the unit.
        note: Option<String>,
    },
    /// Replaces the administrator's infrastructure document (a JSON
    /// object of at most `INFRA_MAX_BYTES`; broodd checks its shape).
    SetInfra {
        /// The document.
        doc: Value,
    },
    /// Makes a partition a member: its reservations come from the unit.
    /// It must hold nothing yet; a membership inherited from its parent is
    /// replaced.
    Join {
        /// The partition (inserted earlier, holding nothing yet).
        partition: Uuid,
        /// The unit.
        unit: Uuid,
    },
}

fn invalid(op: usize, what: impl Into<String>) -> LedgerError {
    LedgerError::InvalidOp {
        op,
        what: what.into(),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

fn check_names(op: usize, what: &str, names: &[String]) -> Result<(), LedgerError> {
    if names.len() > UNIT_MAX_NAMES {
        return Err(invalid(
            op,
            format!("{} {what}s named, at most {UNIT_MAX_NAMES}", names.len()),
        ));
    }
    if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
        return Err(invalid(
            op,
            format!("{what} name {bad:?} is not 1-64 characters of [a-z0-9_.-]"),
        ));
    }
    Ok(())
}

fn to_json_text<T: Serialize>(what: &'static str, v: &T) -> Result<String, LedgerError> {
    serde_json::to_string(v).map_err(|source| LedgerError::Json { what, source })
}

/// Applies a unit op; the store calls this for `Op::Unit`.
pub(crate) fn apply(
    conn: &Connection,
    i: usize,
    op: &UnitOp,
    now: &str,
    actor: &str,
) -> Result<Value, LedgerError> {
    match op {
        UnitOp::Register {
            uuid,
            name,
            contact,
        } => {
            if !valid_name(name) {
                return Err(invalid(
                    i,
                    format!("unit name {name:?} is not 1-64 characters of [a-z0-9_.-]"),
                ));
            }
            if contact.is_empty() || contact.len() > UNIT_CONTACT_MAX_BYTES {
                return Err(invalid(
                    i,
                    format!("a contact is 1-{UNIT_CONTACT_MAX_BYTES} bytes"),
                ));
            }
            if by_name(conn, name)?.is_some() {
                return Err(LedgerError::NameTaken { name: name.clone() });
            }
            conn.prepare_cached(
                "INSERT INTO unit (uuid, name, contact, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .ctx("prepare unit insert")?
            .execute(params![uuid.to_string(), name, contact, now])
            .ctx("insert unit")?;
            let rec = require(conn, *uuid)?;
            Ok(json!({"op": "unit_register", "unit": uuid, "after": rec}))
        }
        UnitOp::Request {
            unit,
            want,
            networks,
            templates,
        } => {
            require(conn, *unit)?;
            check_names(i, "network", networks)?;
            check_names(i, "template", templates)?;
            conn.prepare_cached(
                "INSERT INTO unit_request (unit, want_memory_mib, want_vcpus, want_disk_gib, \
                 want_nics, networks, templates, state, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
            )
            .ctx("prepare request insert")?
            .execute(params![
                unit.to_string(),
                want.memory_mib,
                want.vcpus,
                want.disk_gib,
                want.nics,
                to_json_text("networks", networks)?,
                to_json_text("templates", templates)?,
                now
            ])
            .ctx("insert request")?;
            let id = u64::try_from(conn.last_insert_rowid()).unwrap_or(0);
            let after = request(conn, id)?;
            Ok(json!({"op": "unit_request", "id": id, "unit": unit, "after": after}))
        }
        UnitOp::Decide {
            id,
            state,
            grant,
            note,
        } => decide(
            conn,
            i,
            (*id, *state, *grant),
            note.as_deref(),
            (now, actor),
        ),
        UnitOp::SetInfra { doc } => {
            let text = to_json_text("infrastructure", doc)?;
            if !doc.is_object() || text.len() > INFRA_MAX_BYTES {
                return Err(invalid(
                    i,
                    format!(
                        "the infrastructure is a JSON object of at most {INFRA_MAX_BYTES} bytes"
                    ),
                ));
            }
            let before: Option<String> = conn
                .query_row("SELECT doc FROM infra WHERE id = 1", [], |r| r.get(0))
                .optional()
                .ctx("read infrastructure")?;
            conn.prepare_cached(
                "INSERT INTO infra (id, doc) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            )
            .ctx("prepare infrastructure write")?
            .execute([&text])
            .ctx("write infrastructure")?;
            let before: Value = before
                .and_then(|b| serde_json::from_str(&b).ok())
                .unwrap_or(Value::Null);
            Ok(json!({"op": "set_infra", "before": before, "after": doc}))
        }
        UnitOp::Join { partition, unit } => {
            require(conn, *unit)?;
            if read::partition_by_uuid(conn, *partition)?.is_none() {
                return Err(LedgerError::NoSuchPartition { uuid: *partition });
            }
            if !read::held_by(conn, Owner::Partition(*partition))?.is_zero() {
                return Err(invalid(
                    i,
                    format!("partition {partition} holds resources already: join before reserving"),
                ));
            }
            insert_member(conn, *partition, *unit)?;
            Ok(json!({"op": "unit_join", "unit": unit, "partition": partition}))
        }
    }
}

/// Makes `partition` a member of `unit` (replacing a membership it
/// inherited from its parent: it holds nothing yet).
fn insert_member(conn: &Connection, partition: Uuid, unit: Uuid) -> Result<(), LedgerError> {
    conn.prepare_cached(
        "INSERT INTO unit_member (partition, unit) VALUES (?1, ?2) \
         ON CONFLICT (partition) DO UPDATE SET unit = excluded.unit",
    )
    .ctx("prepare member insert")?
    .execute(params![partition.to_string(), unit.to_string()])
    .ctx("insert unit member")?;
    Ok(())
}

fn decide(
    conn: &Connection,
    i: usize,
    (id, state, grant): (u64, RequestState, Option<Resources>),
    note: Option<&str>,
    (now, actor): (&str, &str),
) -> Result<Value, LedgerError> {
    let req = request(conn, id)?.ok_or_else(|| invalid(i, format!("no request {id}")))?;
    if req.state != RequestState::Pending {
        return Err(LedgerError::Precondition {
            op: i,
            what: format!("state of request {id}"),
            expected: RequestState::Pending.as_str().into(),
            actual: req.state.as_str().into(),
        });
    }
    let unit = require(conn, req.unit)?;
    let before = unit.allocation;
    let target = match state {
        RequestState::Pending => return Err(invalid(i, "a decision cannot be `pending`")),
        RequestState::Rejected => None,
        RequestState::Approved => Some(req.want),
        RequestState::Partial => {
            let g = grant.ok_or_else(|| invalid(i, "a partial approval names what it grants"))?;
            for (kind, v) in g.iter() {
                let (a, b) = (before.get(kind), req.want.get(kind));
                if v < a.min(b) || v > a.max(b) {
                    return Err(invalid(
                        i,
                        format!(
                            "grants {v} {kind}: a partial grant lies between the allocation \
                             ({a}) and the request ({b})"
                        ),
                    ));
                }
            }
            Some(g)
        }
    };
    let mut moves = Vec::new();
    if let Some(target) = target {
        let owner = Owner::Unit(req.unit);
        for kind in ResourceKind::ALL {
            let (have, want) = (before.get(kind), target.get(kind));
            let (from, to, amount) = if want > have {
                (Owner::Available, owner, want - have)
            } else {
                (owner, Owner::Available, have - want)
            };
            if amount > 0 {
                moves.push(crate::store::move_amount(conn, i, kind, from, to, amount)?);
            }
        }
        let networks = to_json_text("networks", &req.networks)?;
        let templates = to_json_text("templates", &req.templates)?;
        conn.prepare_cached(
            "UPDATE unit SET alloc_memory_mib = ?2, alloc_vcpus = ?3, alloc_disk_gib = ?4, \
             alloc_nics = ?5, networks = ?6, templates = ?7 WHERE uuid = ?1",
        )
        .ctx("prepare allocation update")?
        .execute(params![
            req.unit.to_string(),
            target.memory_mib,
            target.vcpus,
            target.disk_gib,
            target.nics,
            networks,
            templates
        ])
        .ctx("update allocation")?;
    }
    let granted = target.map(|t| to_json_text("granted", &t)).transpose()?;
    conn.prepare_cached(
        "UPDATE unit_request SET state = ?2, granted = ?3, note = ?4, decided_at = ?5, \
         decided_by = ?6 WHERE id = ?1",
    )
    .ctx("prepare request update")?
    .execute(params![id, state.as_str(), granted, note, now, actor])
    .ctx("decide request")?;
    Ok(json!({
        "op": "unit_decide",
        "id": id,
        "unit": req.unit,
        "state": state,
        "allocation": {"before": before, "after": target.unwrap_or(before)},
        "moves": moves,
    }))
}

/// Rewrites a move between `available` and a member partition into one
/// between the partition's unit and the partition.
pub(crate) fn route(
    conn: &Connection,
    from: Owner,
    to: Owner,
) -> Result<(Owner, Owner), LedgerError> {
    Ok(match (from, to) {
        (Owner::Available, Owner::Partition(p)) => match unit_of(conn, p)? {
            Some(u) => (Owner::Unit(u), to),
            None => (from, to),
        },
        (Owner::Partition(p), Owner::Available) => match unit_of(conn, p)? {
            Some(u) => (from, Owner::Unit(u)),
            None => (from, to),
        },
        _ => (from, to),
    })
}

/// A partition inserted with a parent that is a member joins the same unit.
pub(crate) fn inherit(conn: &Connection, rec: &PartitionRecord) -> Result<(), LedgerError> {
    if let Some(parent) = rec.parent
        && let Some(u) = unit_of(conn, parent)?
    {
        insert_member(conn, rec.uuid, u)?;
    }
    Ok(())
}

/// The unit a partition is a member of.
pub(crate) fn unit_of(conn: &Connection, partition: Uuid) -> Result<Option<Uuid>, LedgerError> {
    let s: Option<String> = conn
        .prepare_cached("SELECT unit FROM unit_member WHERE partition = ?1")
        .ctx("prepare membership lookup")?
        .query_row([partition.to_string()], |r| r.get(0))
        .optional()
        .ctx("look up membership")?;
    s.map(|s| parse_uuid("unit_member", &s)).transpose()
}

fn parse_uuid(table: &'static str, s: &str) -> Result<Uuid, LedgerError> {
    Uuid::parse_str(s).map_err(|e| LedgerError::BadRow {
        table,
        key: s.to_owned(),
        what: format!("uuid: {e}"),
    })
}

fn names(table: &'static str, key: &str, s: &str) -> Result<Vec<String>, LedgerError> {
    serde_json::from_str(s).map_err(|e| LedgerError::BadRow {
        table,
        key: key.to_owned(),
        what: format!("names: {e}"),
    })
}

const UNIT_COLUMNS: &str = "uuid, name, contact, alloc_memory_mib, alloc_vcpus, alloc_disk_gib, \
     alloc_nics, networks, templates, created_at";

type RawUnit = (String, String, String, [u64; 4], String, String, String);

fn raw_unit(r: &Row<'_>) -> rusqlite::Result<RawUnit> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn decode_unit(raw: RawUnit) -> Result<UnitRecord, LedgerError> {
    let (uuid, name, contact, a, networks, templates, created_at) = raw;
    Ok(UnitRecord {
        uuid: parse_uuid("unit", &uuid)?,
        networks: names("unit", &uuid, &networks)?,
        templates: names("unit", &uuid, &templates)?,
        name,
        contact,
        allocation: Resources {
            memory_mib: a[0],
            vcpus: a[1],
            disk_gib: a[2],
            nics: a[3],
        },
        created_at,
    })
}

fn units_where<P: rusqlite::Params>(
    conn: &Connection,
    clause: &str,
    p: P,
) -> Result<Vec<UnitRecord>, LedgerError> {
    let sql = format!("SELECT {UNIT_COLUMNS} FROM unit {clause}");
    let raws = conn
        .prepare_cached(&sql)
        .ctx("prepare unit query")?
        .query_map(p, raw_unit)
        .ctx("query units")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read units")?;
    raws.into_iter().map(decode_unit).collect()
}

/// The unit with this name.
pub(crate) fn by_name(conn: &Connection, name: &str) -> Result<Option<UnitRecord>, LedgerError> {
    Ok(units_where(conn, "WHERE name = ?1", [name])?.pop())
}

/// The unit with this uuid.
pub(crate) fn by_uuid(conn: &Connection, uuid: Uuid) -> Result<Option<UnitRecord>, LedgerError> {
    Ok(units_where(conn, "WHERE uuid = ?1", [uuid.to_string()])?.pop())
}

fn require(conn: &Connection, uuid: Uuid) -> Result<UnitRecord, LedgerError> {
    by_uuid(conn, uuid)?.ok_or_else(|| LedgerError::InvalidOp {
        op: 0,
        what: format!("no unit {uuid}"),
    })
}

/// Whether the unit exists (for moves that name it).
pub(crate) fn exists(conn: &Connection, uuid: Uuid) -> Result<bool, LedgerError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM unit WHERE uuid = ?1)")
        .ctx("prepare unit lookup")?
        .query_row([uuid.to_string()], |r| r.get(0))
        .ctx("look up unit")
}

/// Every unit, by name.
pub(crate) fn all(conn: &Connection) -> Result<Vec<UnitRecord>, LedgerError> {
    units_where(conn, "ORDER BY name", [])
}

const REQUEST_COLUMNS: &str = "id, unit, want_memory_mib, want_vcpus, want_disk_gib, want_nics, \
     networks, templates, state, granted, note, created_at, decided_at, decided_by";

type RawRequest = (
    u64,
    String,
    [u64; 4],
    [String; 3],
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

fn raw_request(r: &Row<'_>) -> rusqlite::Result<RawRequest> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
        [r.get(6)?, r.get(7)?, r.get(8)?],
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    ))
}

fn decode_request(raw: RawRequest) -> Result<UnitRequest, LedgerError> {
    let (id, unit, w, [networks, templates, state], granted, note, created_at, decided_at, by) =
        raw;
    let key = id.to_string();
    let bad = |what: String| LedgerError::BadRow {
        table: "unit_request",
        key: key.clone(),
        what,
    };
    Ok(UnitRequest {
        id,
        unit: parse_uuid("unit_request", &unit)?,
        want: Resources {
            memory_mib: w[0],
            vcpus: w[1],
            disk_gib: w[2],
            nics: w[3],
        },
        networks: names("unit_request", &key, &networks)?,
        templates: names("unit_request", &key, &templates)?,
        state: RequestState::parse(&state).ok_or_else(|| bad(format!("state {state:?}")))?,
        granted: granted
            .map(|g| serde_json::from_str(&g).map_err(|e| bad(format!("granted: {e}"))))
            .transpose()?,
        note,
        created_at,
        decided_at,
        decided_by: by,
    })
}

/// The request with this number.
pub(crate) fn request(conn: &Connection, id: u64) -> Result<Option<UnitRequest>, LedgerError> {
    Ok(requests_where(conn, "WHERE id = ?1", [id])?.pop())
}

fn requests_where<P: rusqlite::Params>(
    conn: &Connection,
    clause: &str,
    p: P,
) -> Result<Vec<UnitRequest>, LedgerError> {
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM unit_request {clause}");
    let raws = conn
        .prepare_cached(&sql)
        .ctx("prepare request query")?
        .query_map(p, raw_request)
        .ctx("query requests")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read requests")?;
    raws.into_iter().map(decode_request).collect()
}

/// Requests, oldest first: of one unit or all, pending only or all.
pub(crate) fn requests(
    conn: &Connection,
    unit: Option<Uuid>,
    pending_only: bool,
) -> Result<Vec<UnitRequest>, LedgerError> {
    let state = if pending_only { "pending" } else { "%" };
    match unit {
        Some(u) => requests_where(
            conn,
            "WHERE unit = ?1 AND state LIKE ?2 ORDER BY id",
            params![u.to_string(), state],
        ),
        None => requests_where(conn, "WHERE state LIKE ?1 ORDER BY id", [state]),
    }
}

/// What a unit's partitions hold now, summed.
pub(crate) fn used(conn: &Connection, unit: Uuid) -> Result<Resources, LedgerError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT h.kind, sum(h.amount) FROM holding h JOIN unit_member m \
             ON h.owner = m.partition WHERE m.unit = ?1 GROUP BY h.kind",
        )
        .ctx("prepare usage query")?;
    let rows = stmt
        .query_map([unit.to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
        })
        .ctx("query usage")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read usage")?;
    let mut out = Resources::ZERO;
    for (kind, amount) in rows {
        if let Ok(k) = kind.parse::<ResourceKind>() {
            out.set(k, amount);
        }
    }
    Ok(out)
}

/// Up to `limit` of a unit's partitions whose names sort after `after`.
pub(crate) fn partitions(
    conn: &Connection,
    unit: Uuid,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<PartitionRecord>, LedgerError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    read::partitions_where(
        conn,
        "WHERE uuid IN (SELECT partition FROM unit_member WHERE unit = ?1) AND name > ?2 \
         ORDER BY name LIMIT ?3",
        params![unit.to_string(), after.unwrap_or(""), limit],
    )
}

/// Checks of `verify`: each unit's allocation is its holding plus what its
/// partitions hold; every unit holder is a unit.
pub(crate) fn verify(conn: &Connection) -> Result<Vec<(&'static str, String)>, LedgerError> {
    let mut out = Vec::new();
    for u in all(conn)? {
        let free = read::held_by(conn, Owner::Unit(u.uuid))?;
        let used = used(conn, u.uuid)?;
        let total = free + used;
        if total != u.allocation {
            out.push((
                "unit_allocation_mismatch",
                format!(
                    "unit {} is allocated {} but holds {free} and its partitions {used}",
                    u.name, u.allocation
                ),
            ));
        }
    }
    let orphans: Vec<String> = conn
        .prepare(
            "SELECT DISTINCT owner FROM holding WHERE owner GLOB 'unit:*' \
                  AND substr(owner, 6) NOT IN (SELECT uuid FROM unit)",
        )
        .ctx("prepare unit orphan query")?
        .query_map([], |r| r.get(0))
        .ctx("query unit orphans")?
        .collect::<Result<_, _>>()
        .ctx("read unit orphans")?;
    for o in orphans {
        out.push((
            "orphan_holding",
            format!("{o} holds resources but is no unit"),
        ));
    }
    Ok(out)
}
