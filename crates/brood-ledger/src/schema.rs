//! The SQLite schema, its versioned migrations (`PRAGMA user_version`) and
//! the connection settings of the write and read connections.
//!
//! Tables (version 2):
//!
//! ```text
//! capacity(kind PK, amount >= 0)                 host capacity per kind
//! partition(uuid PK, name UNIQUE, stage, run_state, active_config,
//!           configs JSON, demand_{memory_mib,vcpus,disk_gib,nics} >= 0,
//!           pid, pending_op, restart_count, last_exit,
//!           created_at, updated_at, generation,
//!           parent REFERENCES partition, fork JSON)          (v2: parent, fork)
//! holding(owner, kind, amount >= 0, PK (owner, kind),
//!         partition = NULLIF(owner, 'available') REFERENCES partition)
//! pool(name PK [a-z0-9_.-]{1,64}, kind, meta JSON, created_at)      (v2)
//! pool_item(pool REFERENCES pool, seq, value, holder REFERENCES partition,
//!           PK (pool, value), UNIQUE (pool, seq))                    (v2)
//! audit(id INTEGER PK AUTOINCREMENT, time, actor, reason, changes JSON)
//! service_pool(name PK, spec JSON, generation, next_index, created_at)
//!                                              (V_SERVICE_POOLS, issue 10)
//! service_member(partition PK, pool (a service_pool, unless taken), seq,
//!                state booting|ready|taken, point, generation, origin,
//!                created_at, UNIQUE (pool, seq))            (V_SERVICE_POOLS)
//! service(uuid PK, name UNIQUE, class, pool, member UNIQUE, state,
//!         config_path, config_sha256, domain_pairing, device_pairing,
//!         settings JSON, fallback, created_at)                (V_SERVICE_POOLS)
//! service_guest(service REFERENCES service, guest, PK both)   (V_SERVICE_POOLS)
//!         append-only: triggers abort UPDATE and DELETE
//! network(name PK, zone, subnet, gateway, nat, created_at)      (V_NETIO)
//! io_partition(name PK, kind, zone, run_state, pid, restart_count,
//!              last_exit, created_at, updated_at)                (V_NETIO)
//! channel(partition REFERENCES partition, nic, network REFERENCES network,
//!         io_partition REFERENCES io_partition, address,
//!         PK (partition, nic), UNIQUE (network, address))        (V_NETIO)
//! ```
//!
//! `V_NETIO` (I/O partitions): networks, the I/O partitions of kind `io`
//! that serve them (one switch per network zone) and the channels between
//! a guest's NIC and its switch. The foreign keys keep a partition with
//! open channels, a network with channels and an I/O partition with
//! clients from being deleted; `network.rs` checks first to say why.
//!
//! `available` always has one holding row per kind; a partition's row is
//! deleted when its amount reaches zero, so the foreign key keeps a
//! partition that holds anything from being deleted. The foreign keys of
//! `partition.parent` and `pool_item.holder` likewise keep a partition
//! with descendants, or holding a pool item, from being deleted; `store`
//! checks both first to give a clear error. Applying ops is `store`'s job.
//!
//! Version 2 only adds (columns that are NULL on existing rows, new
//! tables), so a version-1 file migrates in place and keeps every row.
//!
//! `V_TENANCY` (business units, US 8,924,964) adds:
//!
//! ```text
//! unit(uuid PK, name UNIQUE [a-z0-9_.-]{1,64}, contact, alloc_{memory_mib,vcpus,
//!      disk_gib,nics} >= 0, networks JSON, templates JSON, created_at)
//! unit_member(partition PK REFERENCES partition ON DELETE CASCADE,
//!             unit REFERENCES unit)            a unit's partitions
//! unit_request(id PK, unit REFERENCES unit, want_* >= 0, networks JSON,
//!              templates JSON, state pending|approved|partial|rejected,
//!              granted JSON, note, created_at, decided_at, decided_by)
//! app_user(name PK, role, unit REFERENCES unit, created_at)
//!          a unit role has a unit, admin and auditor have none
//! token(id PK 16 hex, user REFERENCES app_user ON DELETE CASCADE,
//!       hash 64 hex (sha256 of the secret), created_at, expires_at, revoked_at)
//! price(item PK, micros_per_hour >= 0)     memory per GiB, others per unit
//! refund(id PK, unit REFERENCES unit, micros > 0, reason, created_at)
//! infra(id PK = 1, doc JSON)               the administrator's hierarchy
//! ```
//!
//! and rebuilds `holding` so that an owner may also be `unit:<uuid>` (a
//! unit's unused allocation): its generated `partition` column is NULL for
//! units and a generated `unit` column references `unit`. Every row is
//! copied, so a version-2 file migrates in place.
//!
//! `V_CHANGE` (issue 16 item 9, changing a VM after it is defined) adds:
//!
//! ```text
//! pending_change(partition PK REFERENCES partition ON DELETE CASCADE,
//!                running JSON, summary, since)
//! ```
//!
//! the configuration a running partition's VM runs while its definition
//! already holds a change for the next start (`change.rs`).
//!
//! `V_STORAGE_IO` (storage I/O partitions, issue 11) adds:
//!
//! ```text
//! disk_channel(partition REFERENCES partition, disk >= 0,
//!              io_partition REFERENCES io_partition, export UNIQUE 32 hex,
//!              image, format raw|qcow2, transport nbd|vhost-user-blk,
//!              PK (partition, disk))
//! ```
//!
//! a guest's disk served by its storage zone's I/O partition; see
//! `storage_io.rs`.
//!
//! `V_JOBS` (jobs and workflows, issue 13) adds `job`, its append-only
//! `job_event` log and the versioned `workflow` definitions (see `job`);
//! new tables only, so an older file migrates in place.
//!
//! `V_ACTIONS` (actions bound to templates, issue 13) adds
//! `template_action`, a workflow bound to a template under an action name
//! (see `action`); a new table only.
//!
//! `V_IO_REDUNDANCY` (I/O partitions, issue 11) adds
//! `io_partition.cpus`, the host CPUs dedicated to its process, and
//! `channel.mbps`, a NIC's bandwidth cap (see `network`); columns NULL on
//! existing rows.
//!
//! `V_NAT` (NAT networks' published ports, issues 11 and 16) adds
//!
//! ```text
//! published_port(partition REFERENCES partition ON DELETE CASCADE,
//!                protocol tcp|udp, host_port 1-65535, guest_port 1-65535,
//!                PK (protocol, host_port))
//! ```
//!
//! a host port broodd forwards to a VM on a NAT network (see `publish`);
//! a new table only.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{DbContext, LedgerError};

/// How long a connection waits for a lock held by another connection.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Migrations in order; entry `i` takes `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    V1,
    V2,
    V_NETIO,
    V_SERVICE_POOLS,
    V_TENANCY,
    V_CHANGE,
    V_STORAGE_IO,
    V_JOBS,
    V_ACTIONS,
    V_IO_REDUNDANCY,
    V_NAT,
];

use crate::change::V_CHANGE;

use crate::action::V_ACTIONS;
use crate::job::V_JOBS;
use crate::network::V_IO_REDUNDANCY;
use crate::publish::V_NAT;
use crate::service_pool::V_SERVICE_POOLS;
use crate::storage_io::V_STORAGE_IO;

/// Version 1: capacity, partitions, holdings, the audit log.
pub(crate) const V1: &str = "
CREATE TABLE capacity (
    kind   TEXT PRIMARY KEY
           CHECK (kind IN ('memory_mib', 'vcpus', 'disk_gib', 'nics')),
    amount INTEGER NOT NULL CHECK (amount >= 0)
) WITHOUT ROWID;

CREATE TABLE partition (
    uuid              TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    stage             TEXT NOT NULL CHECK (stage IN ('construction', 'provisioning',
                          'operating', 'manual', 'disabled', 'decommissioned', 'template')),
    run_state         TEXT NOT NULL CHECK (run_state IN ('stopped', 'starting', 'running',
                          'paused', 'saved', 'crashed')),
    active_config     TEXT NOT NULL,
    configs           TEXT NOT NULL CHECK (json_valid(configs)),
    demand_memory_mib INTEGER NOT NULL CHECK (demand_memory_mib >= 0),
    demand_vcpus      INTEGER NOT NULL CHECK (demand_vcpus >= 0),
    demand_disk_gib   INTEGER NOT NULL CHECK (demand_disk_gib >= 0),
    demand_nics       INTEGER NOT NULL CHECK (demand_nics >= 0),
    pid               INTEGER CHECK (pid IS NULL OR pid > 0),
    pending_op        TEXT,
    restart_count     INTEGER NOT NULL CHECK (restart_count >= 0),
    last_exit         TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    generation        INTEGER NOT NULL CHECK (generation >= 1)
) WITHOUT ROWID;

CREATE TABLE holding (
    owner     TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('memory_mib', 'vcpus', 'disk_gib', 'nics')),
    amount    INTEGER NOT NULL CHECK (amount >= 0),
    partition TEXT GENERATED ALWAYS AS (NULLIF(owner, 'available')) VIRTUAL
              REFERENCES partition (uuid),
    PRIMARY KEY (owner, kind)
) WITHOUT ROWID;
CREATE INDEX holding_partition ON holding (partition);

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time    TEXT NOT NULL,
    actor   TEXT NOT NULL,
    reason  TEXT NOT NULL,
    changes TEXT NOT NULL CHECK (json_valid(changes))
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
";

/// Version 2: lineage and fork details on partitions; pools of identities.
///
/// `ADD COLUMN ... REFERENCES` is allowed with foreign keys on because the
/// new column defaults to NULL (<https://sqlite.org/lang_altertable.html>).
/// `partition.parent` never changes after insert and must name an existing
/// partition, so it cannot form a cycle.
const V2: &str = "
ALTER TABLE partition ADD COLUMN parent TEXT REFERENCES partition (uuid);
ALTER TABLE partition ADD COLUMN fork TEXT CHECK (fork IS NULL OR json_valid(fork));
CREATE INDEX partition_parent ON partition (parent) WHERE parent IS NOT NULL;

CREATE TABLE pool (
    name       TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64
                   AND name NOT GLOB '*[^a-z0-9_.-]*'),
    kind       TEXT NOT NULL CHECK (kind IN ('identity', 'ipv4')),
    meta       TEXT NOT NULL CHECK (json_valid(meta)),
    created_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE pool_item (
    pool   TEXT NOT NULL REFERENCES pool (name),
    seq    INTEGER NOT NULL CHECK (seq >= 0),
    value  TEXT NOT NULL CHECK (length(CAST(value AS BLOB)) BETWEEN 1 AND 256),
    holder TEXT REFERENCES partition (uuid),
    PRIMARY KEY (pool, value),
    UNIQUE (pool, seq)
) WITHOUT ROWID;
-- Finds what a partition holds, and serves the holder foreign key.
CREATE INDEX pool_item_holder ON pool_item (holder) WHERE holder IS NOT NULL;
-- The free value with the lowest seq, without walking the held ones.
CREATE INDEX pool_item_free ON pool_item (pool, seq) WHERE holder IS NULL;
";

/// I/O partitions: networks, the I/O partitions (kind `io`: switches,
/// storage servers) and the channels between guests and them.
const V_NETIO: &str = "
CREATE TABLE network (
    name       TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 32
                   AND name NOT GLOB '*[^a-z0-9_.-]*'),
    zone       TEXT NOT NULL CHECK (length(zone) BETWEEN 1 AND 32
                   AND zone NOT GLOB '*[^a-z0-9_.-]*'),
    subnet     TEXT NOT NULL,
    gateway    INTEGER NOT NULL CHECK (gateway IN (0, 1)),
    nat        INTEGER NOT NULL CHECK (nat IN (0, 1)),
    created_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE io_partition (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('switch', 'storage')),
    zone          TEXT NOT NULL,
    run_state     TEXT NOT NULL CHECK (run_state IN ('stopped', 'starting', 'running',
                      'crashed')),
    pid           INTEGER CHECK (pid IS NULL OR pid > 0),
    restart_count INTEGER NOT NULL CHECK (restart_count >= 0),
    last_exit     TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    UNIQUE (kind, zone)
) WITHOUT ROWID;

CREATE TABLE channel (
    partition    TEXT NOT NULL REFERENCES partition (uuid),
    nic          INTEGER NOT NULL CHECK (nic >= 0),
    network      TEXT NOT NULL REFERENCES network (name),
    io_partition TEXT NOT NULL REFERENCES io_partition (name),
    address      TEXT NOT NULL,
    PRIMARY KEY (partition, nic),
    UNIQUE (network, address)
) WITHOUT ROWID;
CREATE INDEX channel_io ON channel (io_partition);
";

/// Business units, their allocations as holdings, users and tokens,
/// prices and refunds, the infrastructure document (see the module docs).
///
/// SQLite cannot change a generated column in place, so `holding` is
/// rebuilt (<https://sqlite.org/lang_altertable.html#otheralter>); nothing
/// references it, so dropping the old table is safe with foreign keys on.
const V_TENANCY: &str = "
CREATE TABLE unit (
    uuid             TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64
                         AND name NOT GLOB '*[^a-z0-9_.-]*'),
    contact          TEXT NOT NULL CHECK (length(contact) BETWEEN 1 AND 256),
    alloc_memory_mib INTEGER NOT NULL DEFAULT 0 CHECK (alloc_memory_mib >= 0),
    alloc_vcpus      INTEGER NOT NULL DEFAULT 0 CHECK (alloc_vcpus >= 0),
    alloc_disk_gib   INTEGER NOT NULL DEFAULT 0 CHECK (alloc_disk_gib >= 0),
    alloc_nics       INTEGER NOT NULL DEFAULT 0 CHECK (alloc_nics >= 0),
    networks         TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(networks)),
    templates        TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(templates)),
    created_at       TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE unit_member (
    partition TEXT PRIMARY KEY REFERENCES partition (uuid) ON DELETE CASCADE,
    unit      TEXT NOT NULL REFERENCES unit (uuid)
) WITHOUT ROWID;
CREATE INDEX unit_member_unit ON unit_member (unit, partition);

CREATE TABLE unit_request (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    unit            TEXT NOT NULL REFERENCES unit (uuid),
    want_memory_mib INTEGER NOT NULL CHECK (want_memory_mib >= 0),
    want_vcpus      INTEGER NOT NULL CHECK (want_vcpus >= 0),
    want_disk_gib   INTEGER NOT NULL CHECK (want_disk_gib >= 0),
    want_nics       INTEGER NOT NULL CHECK (want_nics >= 0),
    networks        TEXT NOT NULL CHECK (json_valid(networks)),
    templates       TEXT NOT NULL CHECK (json_valid(templates)),
    state           TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'partial', 'rejected')),
    granted         TEXT CHECK (granted IS NULL OR json_valid(granted)),
    note            TEXT,
    created_at      TEXT NOT NULL,
    decided_at      TEXT,
    decided_by      TEXT
);
CREATE INDEX unit_request_unit ON unit_request (unit, id);

CREATE TABLE app_user (
    name       TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64
                   AND name NOT GLOB '*[^a-z0-9_.-]*'),
    role       TEXT NOT NULL CHECK (role IN ('admin', 'unit-admin', 'unit-user', 'auditor')),
    unit       TEXT REFERENCES unit (uuid),
    created_at TEXT NOT NULL,
    CHECK ((role IN ('unit-admin', 'unit-user')) = (unit IS NOT NULL))
) WITHOUT ROWID;

CREATE TABLE token (
    id         TEXT PRIMARY KEY CHECK (length(id) = 16 AND id NOT GLOB '*[^0-9a-f]*'),
    user       TEXT NOT NULL REFERENCES app_user (name) ON DELETE CASCADE,
    hash       TEXT NOT NULL CHECK (length(hash) = 64 AND hash NOT GLOB '*[^0-9a-f]*'),
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
) WITHOUT ROWID;
CREATE INDEX token_user ON token (user);

CREATE TABLE price (
    item            TEXT PRIMARY KEY CHECK (length(item) BETWEEN 1 AND 80),
    micros_per_hour INTEGER NOT NULL CHECK (micros_per_hour >= 0)
) WITHOUT ROWID;

CREATE TABLE refund (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    unit       TEXT NOT NULL REFERENCES unit (uuid),
    micros     INTEGER NOT NULL CHECK (micros > 0),
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE infra (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    doc TEXT NOT NULL CHECK (json_valid(doc))
);

CREATE TABLE holding_new (
    owner     TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('memory_mib', 'vcpus', 'disk_gib', 'nics')),
    amount    INTEGER NOT NULL CHECK (amount >= 0),
    partition TEXT GENERATED ALWAYS AS (CASE WHEN owner = 'available' OR owner GLOB 'unit:*'
                  THEN NULL ELSE owner END) VIRTUAL REFERENCES partition (uuid),
    unit      TEXT GENERATED ALWAYS AS (CASE WHEN owner GLOB 'unit:*'
                  THEN substr(owner, 6) END) VIRTUAL REFERENCES unit (uuid),
    PRIMARY KEY (owner, kind)
) WITHOUT ROWID;
INSERT INTO holding_new (owner, kind, amount) SELECT owner, kind, amount FROM holding;
DROP TABLE holding;
ALTER TABLE holding_new RENAME TO holding;
CREATE INDEX holding_partition ON holding (partition);
CREATE INDEX holding_unit ON holding (unit);
";

/// The newest schema version this build knows.
pub fn latest_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Opens the write connection: creates the file if needed, turns on WAL,
/// `synchronous=FULL` (a COMMIT is on disk when it returns, in WAL mode
/// too) and foreign keys, then migrates the schema.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, LedgerError> {
    let open_err = |source| LedgerError::Open {
        path: path.to_owned(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::NoWal {
            path: path.to_owned(),
            mode,
        });
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(open_err)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens a read-only connection to a database the writer has set up.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, LedgerError> {
    let open_err = |source| LedgerError::Open {
        path: path.to_owned(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    Ok(conn)
}

/// Runs the migrations the file has not had, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    let found: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .ctx("read schema version")?;
    let known = latest_version();
    if found > known {
        return Err(LedgerError::SchemaTooNew { found, known });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let step = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Another process may have migrated between our read and our lock.
            let now: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if now < version {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", version)?;
            }
            tx.commit()
        };
        step(conn).map_err(|source| LedgerError::Migrate { version, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_new_file_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.db");
        let conn = open_writer(&path).expect("open");
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, latest_version());
        drop(conn);
        let conn = open_writer(&path).expect("reopen");
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN
                 ('capacity', 'partition', 'holding', 'audit', 'pool', 'pool_item')",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(tables, 6);
    }

    #[test]
    fn pool_rows_are_checked_by_the_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open_writer(&dir.path().join("l.db")).expect("open");
        for name in ["Caps", "", "a b", "a/b"] {
            let e = conn.execute(
                "INSERT INTO pool (name, kind, meta, created_at) VALUES (?1, 'identity', '{}', 'x')",
                [name],
            );
            assert!(e.is_err(), "pool name {name:?} accepted");
        }
        conn.execute_batch(
            "INSERT INTO pool (name, kind, meta, created_at) VALUES ('ok.1_-', 'ipv4', '{}', 'x')",
        )
        .expect("good name");
        for sql in [
            "INSERT INTO pool (name, kind, meta, created_at) VALUES ('p', 'mac', '{}', 'x')",
            "INSERT INTO pool_item (pool, seq, value) VALUES ('ok.1_-', 0, '')",
            "INSERT INTO pool_item (pool, seq, value) VALUES ('nope', 0, 'v')",
            "INSERT INTO pool_item (pool, seq, value, holder) VALUES ('ok.1_-', 0, 'v', 'ghost')",
        ] {
            assert!(conn.execute_batch(sql).is_err(), "{sql}");
        }
    }

    #[test]
    fn free_value_lookup_uses_the_partial_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open_writer(&dir.path().join("l.db")).expect("open");
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT value, seq FROM pool_item \
                 WHERE pool = 'p' AND holder IS NULL ORDER BY seq LIMIT 1",
                [],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(plan.contains("pool_item_free"), "{plan}");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.db");
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99).expect("set");
        drop(conn);
        let e = open_writer(&path).expect_err("too new");
        assert!(
            matches!(e, LedgerError::SchemaTooNew { found: 99, .. }),
            "{e}"
        );
    }

    #[test]
    fn holding_owner_must_be_a_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open_writer(&dir.path().join("l.db")).expect("open");
        conn.execute(
            "INSERT INTO holding (owner, kind, amount) VALUES ('available', 'vcpus', 1)",
            [],
        )
        .expect("available needs no partition");
        let e = conn.execute(
            "INSERT INTO holding (owner, kind, amount) VALUES (?1, 'vcpus', 1)",
            [uuid::Uuid::nil().to_string()],
        );
        assert!(e.is_err(), "orphan holding accepted");
        let e = conn.execute(
            "UPDATE holding SET amount = -1 WHERE owner = 'available'",
            [],
        );
        assert!(e.is_err(), "negative amount accepted");
    }

    #[test]
    fn a_unit_holding_must_name_a_unit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open_writer(&dir.path().join("l.db")).expect("open");
        let u = uuid::Uuid::from_u128(9).to_string();
        let e = conn.execute(
            "INSERT INTO holding (owner, kind, amount) VALUES (?1, 'vcpus', 1)",
            [format!("unit:{u}")],
        );
        assert!(e.is_err(), "holding of a unit that does not exist accepted");
        conn.execute(
            "INSERT INTO unit (uuid, name, contact, created_at) VALUES (?1, 'eng', 'x', 't')",
            [&u],
        )
        .expect("unit");
        conn.execute(
            "INSERT INTO holding (owner, kind, amount) VALUES (?1, 'vcpus', 1)",
            [format!("unit:{u}")],
        )
        .expect("a unit holds");
        let e = conn.execute(
            "INSERT INTO app_user (name, role, created_at) VALUES ('bob', 'unit-user', 't')",
            [],
        );
        assert!(e.is_err(), "a unit user without a unit accepted");
    }

    #[test]
    fn a_version_2_file_keeps_its_holdings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.db");
        let mut conn = Connection::open(&path).expect("open");
        conn.execute_batch(&format!("{V1}{V2}PRAGMA user_version = 2;"))
            .expect("v2");
        conn.execute(
            "INSERT INTO holding (owner, kind, amount) VALUES ('available', 'vcpus', 7)",
            [],
        )
        .expect("row");
        migrate(&mut conn).expect("migrate");
        let n: i64 = conn
            .query_row(
                "SELECT amount FROM holding WHERE owner = 'available'",
                [],
                |r| r.get(0),
            )
            .expect("kept");
        assert_eq!(n, 7);
    }
}
