//! Pools of service domains (issue 10; not the identity pools of `pool`):
//! each service pool's members and their queue, the services members
//! became, and the guests each service serves.
//!
//! A member is a partition (it holds its memory, vCPUs and disk like any
//! other) owned by its pool: the `service_member` row names its pool, its
//! place in the queue (`seq`), its state and the agent's trigger point.
//! A request takes the lowest-`seq` member that is `ready` and of the
//! pool's current `generation` with [`ServicePoolOp::TakeMember`], whose
//! before-image is `ready`, in the same transaction that inserts the
//! service: two concurrent requests cannot take one member, the loser's
//! transaction fails its precondition and it tries the next. What a pool's
//! `spec` means (image, sizes, thresholds, policy) is broodd's business,
//! kept here as JSON.
//!
//! Change records in the audit row (`changes`), one per op:
//!
//! ```text
//! {"op":"service_pool","change":"create_pool","name":..,"after":{..}}
//! {"op":"service_pool","change":"take_member","partition":..,"before":{"state":"ready"},"after":{"state":"taken"}}
//! {"op":"service_pool","change":"insert_service","after":{..}}   and so on for each op
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{DbContext, LedgerError};
use crate::ledger::Ledger;
use crate::verify::Problem;

/// The schema of service pools (one migration, appended to `MIGRATIONS`).
pub(crate) const V_SERVICE_POOLS: &str = "
CREATE TABLE service_pool (
    name       TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64
                   AND name NOT GLOB '*[^a-z0-9_.-]*'),
    spec       TEXT NOT NULL CHECK (json_valid(spec)),
    generation INTEGER NOT NULL CHECK (generation >= 0),
    next_index INTEGER NOT NULL CHECK (next_index >= 0),
    created_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE service_member (
    partition  TEXT PRIMARY KEY,
    pool       TEXT NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq >= 0),
    state      TEXT NOT NULL CHECK (state IN ('booting', 'ready', 'taken')),
    point      INTEGER CHECK (point IS NULL OR point >= 0),
    generation INTEGER NOT NULL CHECK (generation >= 0),
    origin     TEXT NOT NULL CHECK (origin IN ('cold', 'clone', 'fallback')),
    created_at TEXT NOT NULL,
    UNIQUE (pool, seq)
) WITHOUT ROWID;
-- The queue: ready members of a pool in order.
CREATE INDEX service_member_queue ON service_member (pool, seq) WHERE state = 'ready';

CREATE TABLE service (
    uuid           TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    class          TEXT NOT NULL,
    pool           TEXT NOT NULL,
    member         TEXT NOT NULL UNIQUE,
    state          TEXT NOT NULL CHECK (state IN ('configuring', 'ready', 'failed')),
    config_path    TEXT NOT NULL,
    config_sha256  TEXT NOT NULL,
    domain_pairing INTEGER NOT NULL CHECK (domain_pairing >= 1),
    device_pairing INTEGER NOT NULL CHECK (device_pairing >= 0),
    settings       TEXT NOT NULL CHECK (json_valid(settings)),
    fallback       TEXT,
    created_at     TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE service_guest (
    service TEXT NOT NULL REFERENCES service (uuid),
    guest   TEXT NOT NULL,
    PRIMARY KEY (service, guest)
) WITHOUT ROWID;
CREATE INDEX service_guest_guest ON service_guest (guest);
";

/// Where a member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Booting (or being cloned) towards the trigger point.
    Booting,
    /// Paused at the trigger point, in the queue.
    Ready,
    /// Handed out: a service's domain.
    Taken,
}

/// How a member was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberOrigin {
    /// Booted from the pool's image.
    Cold,
    /// Forked from a member at the trigger point.
    Clone,
    /// Booted for one request because the pool was empty.
    Fallback,
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Its member was resumed with the configuration; the probe has not answered yet.
    Configuring,
    /// The probe answered.
    Ready,
    /// Its start or probe failed.
    Failed,
}

macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The snake_case name used in the database and JSON.
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok(<$t>::$v),)* other => Err(format!("unknown {} {other:?}", stringify!($t))) }
            }
        }
    };
}

text_enum!(MemberState { Booting => "booting", Ready => "ready", Taken => "taken" });
text_enum!(MemberOrigin { Cold => "cold", Clone => "clone", Fallback => "fallback" });
text_enum!(ServiceState { Configuring => "configuring", Ready => "ready", Failed => "failed" });

/// A service pool as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePoolRecord {
    /// Its name.
    pub name: String,
    /// broodd's description of it (image, sizes, thresholds, policy).
    pub spec: Value,
    /// Bumped when its image or template changes: members of an older
    /// generation are never handed out.
    pub generation: u64,
    /// The index the next member's name gets.
    pub next_index: u64,
    /// When it was created.
    pub created_at: String,
}

/// A member as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Its partition.
    pub partition: Uuid,
    /// Its pool.
    pub pool: String,
    /// Its place in the queue.
    pub seq: u64,
    /// Its state.
    pub state: MemberState,
    /// The agent's trigger point, while ready.
    pub point: Option<u32>,
    /// The pool generation it was made in.
    pub generation: u64,
    /// How it was made.
    pub origin: MemberOrigin,
    /// When it was added.
    pub created_at: String,
}

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Its id.
    pub uuid: Uuid,
    /// Its name (its member partition's too).
    pub name: String,
    /// Its class.
    pub class: String,
    /// The pool its member came from.
    pub pool: String,
    /// Its member partition.
    pub member: Uuid,
    /// Its state.
    pub state: ServiceState,
    /// The configuration file broodd wrote before resuming the member.
    pub config_path: String,
    /// The sha256 of that file, hex.
    pub config_sha256: String,
    /// Most guests it serves.
    pub domain_pairing: u32,
    /// Most devices it manages.
    pub device_pairing: u32,
    /// The key-values it was given.
    pub settings: BTreeMap<String, String>,
    /// Why it came from a cold boot instead of the queue, if it did.
    pub fallback: Option<String>,
    /// When it was requested.
    pub created_at: String,
    /// The guests it serves (partition uuids).
    #[serde(default)]
    pub guests: Vec<Uuid>,
}

/// One change to service pools, inside [`crate::Op::ServicePool`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ServicePoolOp {
    /// Creates a pool (generation 0).
    CreatePool {
        /// Its name.
        name: String,
        /// broodd's description.
        spec: Value,
    },
    /// Replaces a pool's spec; with `new_generation` its members become outdated.
    SetPoolSpec {
        /// The pool.
        name: String,
        /// The new description.
        spec: Value,
        /// Bump the generation.
        new_generation: bool,
    },
    /// Deletes a pool none of whose members waits (services keep theirs).
    DeletePool {
        /// The pool.
        name: String,
    },
    /// Adds a booting member (the partition must exist) at the end of the
    /// queue, in the pool's current generation; the pool's `next_index`
    /// goes up by one.
    AddMember {
        /// Its partition.
        partition: Uuid,
        /// The pool.
        pool: String,
        /// How it is made.
        origin: MemberOrigin,
    },
    /// A booting member reached the trigger point and was paused.
    MemberReady {
        /// Its partition.
        partition: Uuid,
        /// The agent's point.
        point: u32,
    },
    /// Takes a ready member off the queue (before-image: `ready`).
    TakeMember {
        /// Its partition.
        partition: Uuid,
        /// The state it must be in (`ready`; `booting` for a fallback).
        expect: MemberState,
    },
    /// Removes a member's row (it failed, was torn down, or its service ended).
    RemoveMember {
        /// Its partition.
        partition: Uuid,
    },
    /// Records a service; its member must be taken and serve no other.
    InsertService(Box<ServiceRecord>),
    /// Changes a service's state.
    SetServiceState {
        /// The service.
        uuid: Uuid,
        /// The new state.
        state: ServiceState,
    },
    /// Associates a guest; refused beyond the service's `domain_pairing`.
    AddGuest {
        /// The service.
        service: Uuid,
        /// The guest partition.
        guest: Uuid,
    },
    /// Ends an association.
    RemoveGuest {
        /// The service.
        service: Uuid,
        /// The guest partition.
        guest: Uuid,
    },
    /// Deletes a service and its associations.
    DeleteService {
        /// The service.
        uuid: Uuid,
    },
}

fn not_found(what: &str, key: impl fmt::Display) -> LedgerError {
    LedgerError::Precondition {
        op: 0,
        what: format!("{what} {key}"),
        expected: "present".into(),
        actual: "absent".into(),
    }
}

/// Applies one op inside the caller's transaction and returns its change record.
pub(crate) fn apply(
    conn: &Connection,
    i: usize,
    op: &ServicePoolOp,
    now: &str,
) -> Result<Value, LedgerError> {
    let change = serde_json::to_value(op).map_err(|source| LedgerError::Json {
        what: "a service pool change",
        source,
    })?;
    let mut record = json!({"op": "service_pool"});
    if let (Value::Object(r), Value::Object(c)) = (&mut record, change) {
        r.extend(c);
    }
    match op {
        ServicePoolOp::CreatePool { name, spec } => {
            let n = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO service_pool (name, spec, generation, next_index, created_at) \
                     VALUES (?1, ?2, 0, 0, ?3)",
                )
                .ctx("prepare service pool insert")?
                .execute(params![name, spec.to_string(), now])
                .ctx("insert service pool")?;
            if n == 0 {
                return Err(LedgerError::Precondition {
                    op: i,
                    what: format!("service pool {name:?}"),
                    expected: "absent".into(),
                    actual: "present".into(),
                });
            }
        }
        ServicePoolOp::SetPoolSpec {
            name,
            spec,
            new_generation,
        } => {
            let before = pool(conn, name)?.ok_or_else(|| not_found("service pool", name))?;
            conn.prepare_cached(
                "UPDATE service_pool SET spec = ?2, generation = generation + ?3 WHERE name = ?1",
            )
            .ctx("prepare service pool update")?
            .execute(params![name, spec.to_string(), i64::from(*new_generation)])
            .ctx("update service pool")?;
            record["before"] = json!({"spec": before.spec, "generation": before.generation});
        }
        ServicePoolOp::DeletePool { name } => {
            let members: i64 = conn
                .query_row(
                    "SELECT count(*) FROM service_member WHERE pool = ?1 AND state != 'taken'",
                    [name],
                    |r| r.get(0),
                )
                .ctx("count members")?;
            if members > 0 {
                return Err(LedgerError::Precondition {
                    op: i,
                    what: format!("waiting members of service pool {name:?}"),
                    expected: "0".into(),
                    actual: members.to_string(),
                });
            }
            let n = conn
                .execute("DELETE FROM service_pool WHERE name = ?1", [name])
                .ctx("delete service pool")?;
            if n == 0 {
                return Err(not_found("service pool", name));
            }
        }
        ServicePoolOp::AddMember {
            partition,
            pool: name,
            origin,
        } => {
            let p = pool(conn, name)?.ok_or_else(|| not_found("service pool", name))?;
            let seq: i64 = conn
                .query_row(
                    "SELECT coalesce(max(seq) + 1, 0) FROM service_member WHERE pool = ?1",
                    [name],
                    |r| r.get(0),
                )
                .ctx("next member seq")?;
            conn.prepare_cached(
                "INSERT INTO service_member (partition, pool, seq, state, point, generation, origin, created_at) \
                 VALUES (?1, ?2, ?3, 'booting', NULL, ?4, ?5, ?6)",
            )
            .ctx("prepare member insert")?
            .execute(params![
                partition.to_string(),
                name,
                seq,
                i64::try_from(p.generation).unwrap_or(i64::MAX),
                origin.as_str(),
                now
            ])
            .ctx("insert member")?;
            conn.execute(
                "UPDATE service_pool SET next_index = next_index + 1 WHERE name = ?1",
                [name],
            )
            .ctx("bump next_index")?;
            record["seq"] = json!(seq);
        }
        ServicePoolOp::MemberReady { partition, point } => {
            expect_member(conn, i, *partition, MemberState::Booting)?;
            conn.execute(
                "UPDATE service_member SET state = 'ready', point = ?2 WHERE partition = ?1",
                params![partition.to_string(), point],
            )
            .ctx("mark member ready")?;
            record["before"] = json!({"state": "booting"});
            record["after"] = json!({"state": "ready"});
        }
        ServicePoolOp::TakeMember { partition, expect } => {
            expect_member(conn, i, *partition, *expect)?;
            conn.execute(
                "UPDATE service_member SET state = 'taken' WHERE partition = ?1",
                [partition.to_string()],
            )
            .ctx("take member")?;
            record["before"] = json!({"state": expect});
            record["after"] = json!({"state": "taken"});
        }
        ServicePoolOp::RemoveMember { partition } => {
            let before = member(conn, *partition)?.ok_or_else(|| not_found("member", partition))?;
            conn.execute(
                "DELETE FROM service_member WHERE partition = ?1",
                [partition.to_string()],
            )
            .ctx("remove member")?;
            record["before"] = serde_json::to_value(before).unwrap_or(Value::Null);
        }
        ServicePoolOp::InsertService(s) => {
            expect_member(conn, i, s.member, MemberState::Taken)?;
            let settings =
                serde_json::to_string(&s.settings).map_err(|source| LedgerError::Json {
                    what: "service settings",
                    source,
                })?;
            conn.prepare_cached(
                "INSERT INTO service (uuid, name, class, pool, member, state, config_path, config_sha256, \
                 domain_pairing, device_pairing, settings, fallback, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .ctx("prepare service insert")?
            .execute(params![
                s.uuid.to_string(),
                s.name,
                s.class,
                s.pool,
                s.member.to_string(),
                s.state.as_str(),
                s.config_path,
                s.config_sha256,
                s.domain_pairing,
                s.device_pairing,
                settings,
                s.fallback,
                s.created_at
            ])
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    LedgerError::Precondition {
                        op: i,
                        what: format!("service name {:?} or member {}", s.name, s.member),
                        expected: "unused".into(),
                        actual: "in use".into(),
                    }
                }
                source => LedgerError::Db {
                    what: "insert service",
                    source,
                },
            })?;
            for g in &s.guests {
                add_guest(conn, i, s.uuid, *g)?;
            }
        }
        ServicePoolOp::SetServiceState { uuid, state } => {
            let n = conn
                .execute(
                    "UPDATE service SET state = ?2 WHERE uuid = ?1",
                    params![uuid.to_string(), state.as_str()],
                )
                .ctx("set service state")?;
            if n == 0 {
                return Err(not_found("service", uuid));
            }
        }
        ServicePoolOp::AddGuest { service, guest } => add_guest(conn, i, *service, *guest)?,
        ServicePoolOp::RemoveGuest { service, guest } => {
            conn.execute(
                "DELETE FROM service_guest WHERE service = ?1 AND guest = ?2",
                params![service.to_string(), guest.to_string()],
            )
            .ctx("remove guest")?;
        }
        ServicePoolOp::DeleteService { uuid } => {
            let before = service(conn, *uuid)?.ok_or_else(|| not_found("service", uuid))?;
            conn.execute(
                "DELETE FROM service_guest WHERE service = ?1",
                [uuid.to_string()],
            )
            .ctx("delete associations")?;
            conn.execute("DELETE FROM service WHERE uuid = ?1", [uuid.to_string()])
                .ctx("delete service")?;
            record["before"] = serde_json::to_value(before).unwrap_or(Value::Null);
        }
    }
    Ok(record)
}

fn add_guest(
    conn: &Connection,
    i: usize,
    service_id: Uuid,
    guest: Uuid,
) -> Result<(), LedgerError> {
    let s = service(conn, service_id)?.ok_or_else(|| not_found("service", service_id))?;
    if s.guests.contains(&guest) {
        return Ok(());
    }
    if s.guests.len() >= usize::try_from(s.domain_pairing).unwrap_or(usize::MAX) {
        return Err(LedgerError::Precondition {
            op: i,
            what: format!("guests of service {} (domain_pairing)", s.name),
            expected: format!("fewer than {}", s.domain_pairing),
            actual: s.guests.len().to_string(),
        });
    }
    conn.execute(
        "INSERT INTO service_guest (service, guest) VALUES (?1, ?2)",
        params![service_id.to_string(), guest.to_string()],
    )
    .ctx("add guest")?;
    Ok(())
}

fn expect_member(
    conn: &Connection,
    i: usize,
    partition: Uuid,
    want: MemberState,
) -> Result<(), LedgerError> {
    let m = member(conn, partition)?.ok_or_else(|| LedgerError::Precondition {
        op: i,
        what: format!("state of member {partition}"),
        expected: want.to_string(),
        actual: "absent".into(),
    })?;
    if m.state != want {
        return Err(LedgerError::Precondition {
            op: i,
            what: format!("state of member {partition}"),
            expected: want.to_string(),
            actual: m.state.to_string(),
        });
    }
    Ok(())
}

fn bad(table: &'static str, key: &str, what: impl fmt::Display) -> LedgerError {
    LedgerError::BadRow {
        table,
        key: key.to_owned(),
        what: what.to_string(),
    }
}

fn uuid_col(table: &'static str, key: &str, s: &str) -> Result<Uuid, LedgerError> {
    Uuid::parse_str(s).map_err(|e| bad(table, key, e))
}

fn u64_col(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const POOL_COLS: &str = "name, spec, generation, next_index, created_at";

fn pool_row(r: &Row<'_>) -> rusqlite::Result<(String, String, i64, i64, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn pool_from(raw: (String, String, i64, i64, String)) -> Result<ServicePoolRecord, LedgerError> {
    let spec = serde_json::from_str(&raw.1).map_err(|e| bad("service_pool", &raw.0, e))?;
    Ok(ServicePoolRecord {
        name: raw.0,
        spec,
        generation: u64_col(raw.2),
        next_index: u64_col(raw.3),
        created_at: raw.4,
    })
}

fn pool(conn: &Connection, name: &str) -> Result<Option<ServicePoolRecord>, LedgerError> {
    conn.query_row(
        &format!("SELECT {POOL_COLS} FROM service_pool WHERE name = ?1"),
        [name],
        pool_row,
    )
    .optional()
    .ctx("read service pool")?
    .map(pool_from)
    .transpose()
}

fn pools(conn: &Connection) -> Result<Vec<ServicePoolRecord>, LedgerError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {POOL_COLS} FROM service_pool ORDER BY name"
        ))
        .ctx("prepare service pools")?;
    let rows = stmt
        .query_map([], pool_row)
        .ctx("read service pools")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read service pools")?;
    rows.into_iter().map(pool_from).collect()
}

const MEMBER_COLS: &str = "partition, pool, seq, state, point, generation, origin, created_at";

type RawMember = (
    String,
    String,
    i64,
    String,
    Option<i64>,
    i64,
    String,
    String,
);

fn member_row(r: &Row<'_>) -> rusqlite::Result<RawMember> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn member_from(raw: RawMember) -> Result<MemberRecord, LedgerError> {
    let key = raw.0.clone();
    Ok(MemberRecord {
        partition: uuid_col("service_member", &key, &raw.0)?,
        pool: raw.1,
        seq: u64_col(raw.2),
        state: raw.3.parse().map_err(|e| bad("service_member", &key, e))?,
        point: raw.4.and_then(|p| u32::try_from(p).ok()),
        generation: u64_col(raw.5),
        origin: raw.6.parse().map_err(|e| bad("service_member", &key, e))?,
        created_at: raw.7,
    })
}

fn member(conn: &Connection, partition: Uuid) -> Result<Option<MemberRecord>, LedgerError> {
    conn.query_row(
        &format!("SELECT {MEMBER_COLS} FROM service_member WHERE partition = ?1"),
        [partition.to_string()],
        member_row,
    )
    .optional()
    .ctx("read member")?
    .map(member_from)
    .transpose()
}

fn members(conn: &Connection, pool: Option<&str>) -> Result<Vec<MemberRecord>, LedgerError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {MEMBER_COLS} FROM service_member WHERE ?1 IS NULL OR pool = ?1 ORDER BY pool, seq"
        ))
        .ctx("prepare members")?;
    let rows = stmt
        .query_map([pool], member_row)
        .ctx("read members")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read members")?;
    rows.into_iter().map(member_from).collect()
}

const SERVICE_COLS: &str = "uuid, name, class, pool, member, state, config_path, config_sha256, \
     domain_pairing, device_pairing, settings, fallback, created_at";

fn service_row(conn: &Connection, r: &Row<'_>) -> Result<ServiceRecord, LedgerError> {
    let id: String = r.get(0).ctx("read service")?;
    let get = |n: usize| -> Result<String, LedgerError> { r.get(n).ctx("read service") };
    let uuid = uuid_col("service", &id, &id)?;
    let settings: String = get(10)?;
    let mut stmt = conn
        .prepare_cached("SELECT guest FROM service_guest WHERE service = ?1 ORDER BY guest")
        .ctx("prepare guests")?;
    let guests = stmt
        .query_map([&id], |r| r.get::<_, String>(0))
        .ctx("read guests")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read guests")?
        .iter()
        .map(|g| uuid_col("service_guest", &id, g))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServiceRecord {
        uuid,
        name: get(1)?,
        class: get(2)?,
        pool: get(3)?,
        member: uuid_col("service", &id, &get(4)?)?,
        state: get(5)?.parse().map_err(|e| bad("service", &id, e))?,
        config_path: get(6)?,
        config_sha256: get(7)?,
        domain_pairing: r.get(8).ctx("read service")?,
        device_pairing: r.get(9).ctx("read service")?,
        settings: serde_json::from_str(&settings).map_err(|e| bad("service", &id, e))?,
        fallback: r.get(11).ctx("read service")?,
        created_at: get(12)?,
        guests,
    })
}

fn service(conn: &Connection, uuid: Uuid) -> Result<Option<ServiceRecord>, LedgerError> {
    services_where(conn, "uuid = ?1", &uuid.to_string()).map(|mut v| v.pop())
}

fn services_where(
    conn: &Connection,
    cond: &str,
    arg: &str,
) -> Result<Vec<ServiceRecord>, LedgerError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {SERVICE_COLS} FROM service WHERE {cond} ORDER BY name"
        ))
        .ctx("prepare services")?;
    let mut rows = stmt.query([arg]).ctx("read services")?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().ctx("read services")? {
        out.push(service_row(conn, r)?);
    }
    Ok(out)
}

/// The service-pool checks of `verify`.
pub(crate) fn verify(conn: &Connection, out: &mut Vec<Problem>) -> Result<(), LedgerError> {
    let checks: [(&str, &'static str, &str); 6] = [
        (
            "SELECT partition FROM service_member m WHERE state != 'taken' \
             AND NOT EXISTS (SELECT 1 FROM service_pool p WHERE p.name = m.pool)",
            "member_pool_missing",
            "is a waiting member of a pool that does not exist",
        ),
        (
            "SELECT partition FROM service_member m \
             WHERE NOT EXISTS (SELECT 1 FROM partition p WHERE p.uuid = m.partition)",
            "member_partition_missing",
            "is a pool member but no partition",
        ),
        (
            "SELECT partition FROM service_member m WHERE state = 'taken' \
             AND NOT EXISTS (SELECT 1 FROM service s WHERE s.member = m.partition)",
            "taken_member_unused",
            "is a taken member that no service uses",
        ),
        (
            "SELECT name FROM service s WHERE NOT EXISTS (SELECT 1 FROM service_member m \
             WHERE m.partition = s.member AND m.state = 'taken')",
            "service_member_missing",
            "is a service whose member is not a taken member",
        ),
        (
            "SELECT name FROM service s WHERE \
             (SELECT count(*) FROM service_guest g WHERE g.service = s.uuid) > s.domain_pairing",
            "pairing_exceeded",
            "serves more guests than its domain_pairing",
        ),
        (
            "SELECT partition FROM service_member m WHERE state = 'ready' AND point IS NULL",
            "ready_member_without_point",
            "is a ready member with no trigger point",
        ),
    ];
    for (sql, code, what) in checks {
        let mut stmt = conn.prepare(sql).ctx("prepare service pool check")?;
        let keys = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .ctx("run service pool check")?
            .collect::<Result<Vec<_>, _>>()
            .ctx("run service pool check")?;
        for key in keys {
            out.push(Problem {
                code,
                message: format!("{key} {what}"),
            });
        }
    }
    Ok(())
}

impl Ledger {
    /// Every service pool, by name.
    pub async fn service_pools(&self) -> Result<Vec<ServicePoolRecord>, LedgerError> {
        self.read(pools).await
    }

    /// One service pool.
    pub async fn service_pool(&self, name: &str) -> Result<Option<ServicePoolRecord>, LedgerError> {
        let name = name.to_owned();
        self.read(move |c| pool(c, &name)).await
    }

    /// Members of one pool (or all with `None`), by pool then queue order.
    pub async fn pool_members(&self, pool: Option<&str>) -> Result<Vec<MemberRecord>, LedgerError> {
        let pool = pool.map(str::to_owned);
        self.read(move |c| members(c, pool.as_deref())).await
    }

    /// One member.
    pub async fn pool_member(&self, partition: Uuid) -> Result<Option<MemberRecord>, LedgerError> {
        self.read(move |c| member(c, partition)).await
    }

    /// Every service, by name.
    pub async fn services(&self) -> Result<Vec<ServiceRecord>, LedgerError> {
        self.read(|c| services_where(c, "1 = 1 OR ?1 = ''", ""))
            .await
    }

    /// A service by name or uuid.
    pub async fn service(&self, key: &str) -> Result<Option<ServiceRecord>, LedgerError> {
        let key = key.to_owned();
        self.read(move |c| services_where(c, "name = ?1 OR uuid = ?1", &key).map(|mut v| v.pop()))
            .await
    }

    /// The services a guest is associated with.
    pub async fn services_of_guest(&self, guest: Uuid) -> Result<Vec<ServiceRecord>, LedgerError> {
        self.read(move |c| {
            services_where(
                c,
                "uuid IN (SELECT service FROM service_guest WHERE guest = ?1)",
                &guest.to_string(),
            )
        })
        .await
    }
}
