//! The catalog's schema, as versioned migrations applied in order under a
//! transaction-scoped advisory lock, so several broodds starting at once
//! against a new database apply each exactly once.
//!
//! - V1: zone types and zones; hosts (capacity, address, drain flag, last
//!   heartbeat, a row version) and the zones they provide; domains and
//!   their policy (with the `default` domain); partition definitions
//!   (name, domain, demand, required zones); placement (host, generation,
//!   whether the host's ledger holds it, its id there).
//! - V2 (used by `lease.rs`): operations instances with the SHA-256 of their
//!   token, host leases (holder, expiry), and the definition a host
//!   publishes for each partition it holds (`partition_def.spec`).
//! - V_MOVES: live migrations in progress, one row per partition moving
//!   (source, target, the generation the move bumped to, its state
//!   requested → ready → committed or refused, the definition the target
//!   reserves, the target's stream address), and on the placement the
//!   generation of the last move committed; see `move_.rs`.
//! - V_JOBS (used by `jobs.rs`): each host's jobs with their append-only event
//!   logs, and the cluster's versioned workflow definitions.

use tokio_postgres::Client;

use crate::error::ClusterError;

/// Advisory lock key taken while migrating ("brood" in ASCII).
const MIGRATE_LOCK: i64 = 0x62_726f_6f64;

const V1: &str = r"
CREATE TABLE zone_type (
    name text PRIMARY KEY,
    builtin boolean NOT NULL
);
INSERT INTO zone_type (name, builtin) VALUES
    ('network', true), ('storage', true), ('console', true), ('firmware', true),
    ('monitor', true), ('power', true), ('processor', true), ('memory', true);
CREATE TABLE zone (
    kind text NOT NULL REFERENCES zone_type (name),
    name text NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE host (
    name text PRIMARY KEY,
    address text NOT NULL DEFAULT '',
    memory_mib bigint NOT NULL DEFAULT 0 CHECK (memory_mib >= 0),
    vcpus bigint NOT NULL DEFAULT 0 CHECK (vcpus >= 0),
    disk_gib bigint NOT NULL DEFAULT 0 CHECK (disk_gib >= 0),
    draining boolean NOT NULL DEFAULT false,
    last_heartbeat timestamptz,
    broodd_version text NOT NULL DEFAULT '',
    version bigint NOT NULL DEFAULT 1,
    added_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE host_zone (
    host text NOT NULL REFERENCES host (name) ON DELETE CASCADE,
    kind text NOT NULL,
    name text NOT NULL,
    PRIMARY KEY (host, kind, name),
    FOREIGN KEY (kind, name) REFERENCES zone (kind, name)
);
CREATE TABLE domain (
    name text PRIMARY KEY,
    policy jsonb NOT NULL,
    version bigint NOT NULL DEFAULT 1
);
INSERT INTO domain (name, policy) VALUES ('default', '{}');
CREATE TABLE partition_def (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    domain text NOT NULL REFERENCES domain (name),
    memory_mib bigint NOT NULL CHECK (memory_mib >= 0),
    vcpus bigint NOT NULL CHECK (vcpus >= 0),
    disk_gib bigint NOT NULL CHECK (disk_gib >= 0),
    requires jsonb NOT NULL DEFAULT '[]',
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE placement (
    partition uuid PRIMARY KEY REFERENCES partition_def (id) ON DELETE CASCADE,
    host text REFERENCES host (name),
    generation bigint NOT NULL CHECK (generation > 0),
    held boolean NOT NULL DEFAULT false,
    local_id uuid UNIQUE,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX placement_host ON placement (host);
";

const V_MOVES: &str = r"
CREATE TABLE migration (
    partition uuid PRIMARY KEY REFERENCES partition_def (id) ON DELETE CASCADE,
    source text NOT NULL,
    target text NOT NULL,
    generation bigint NOT NULL CHECK (generation > 0),
    state text NOT NULL CHECK (state IN ('requested', 'ready', 'committed', 'refused')),
    local_id uuid NOT NULL,
    definition jsonb NOT NULL,
    address text,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX migration_target ON migration (target);
CREATE INDEX migration_source ON migration (source);
ALTER TABLE placement ADD COLUMN moved_generation bigint;
";

/// V2: operations instances and their credentials, host leases, the
/// definition a host's broodd publishes for each partition it holds, and
/// the local ids of the copies a failover left on failed hosts.
const V_LEASES: &str = r"
ALTER TABLE partition_def ADD COLUMN spec jsonb;
ALTER TABLE placement ADD COLUMN left_behind uuid[] NOT NULL DEFAULT '{}';
CREATE TABLE ops_instance (
    name text PRIMARY KEY,
    token_sha256 text NOT NULL CHECK (length(token_sha256) = 64),
    added_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz,
    alive_until timestamptz
);
CREATE TABLE host_lease (
    host text PRIMARY KEY REFERENCES host (name) ON DELETE CASCADE,
    holder text NOT NULL REFERENCES ops_instance (name) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX host_lease_holder ON host_lease (holder);
";

/// The `V_JOBS` migration.
const V_JOBS: &str = r"
CREATE TABLE job (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host        text NOT NULL,
    request     uuid NOT NULL UNIQUE,
    unit        uuid,
    actor       text NOT NULL,
    kind        text NOT NULL CHECK (length(kind) BETWEEN 1 AND 64),
    target      text NOT NULL,
    queue       text NOT NULL CHECK (queue IN ('high', 'normal')),
    priority    bigint NOT NULL,
    adds_vm     boolean NOT NULL,
    state       text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed',
                    'cancelled', 'refused')),
    params      jsonb NOT NULL,
    progress    text NOT NULL DEFAULT '',
    result      jsonb,
    error       text,
    runner      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    CHECK ((state IN ('queued', 'running')) = (finished_at IS NULL))
);
CREATE INDEX job_host_state ON job (host, state, queue);
CREATE INDEX job_host_id ON job (host, id);
CREATE TABLE job_event (
    job     bigint NOT NULL REFERENCES job (id),
    seq     bigint NOT NULL CHECK (seq >= 0),
    time    timestamptz NOT NULL DEFAULT now(),
    kind    text NOT NULL,
    body    jsonb NOT NULL,
    request uuid UNIQUE,
    PRIMARY KEY (job, seq)
);
CREATE FUNCTION job_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'job_event is append-only';
END $$;
CREATE TRIGGER job_event_append_only BEFORE UPDATE OR DELETE ON job_event
    FOR EACH ROW EXECUTE FUNCTION job_event_append_only();
CREATE TABLE workflow (
    name       text NOT NULL CHECK (name ~ '^[a-z0-9_.-]{1,64}$'),
    version    bigint NOT NULL CHECK (version >= 1),
    definition jsonb NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    request    uuid NOT NULL UNIQUE,
    PRIMARY KEY (name, version)
);
";

/// Every migration, in order: (version, what it adds, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "hosts, zones, domains, partition definitions, placement",
        V1,
    ),
    (
        2,
        "operations instances, host leases, published definitions",
        V_LEASES,
    ),
    (3, "live migrations in progress", V_MOVES),
    (4, "jobs, their logs and workflow definitions", V_JOBS),
];

/// The schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Applies the migrations the catalog lacks; returns its version.
pub(crate) async fn migrate(c: &mut Client) -> Result<i32, ClusterError> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS catalog_migration (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM catalog_migration",
            &[],
        )
        .await?;
    let have: i32 = row.get(0);
    let latest = latest_version();
    if have > latest {
        return Err(ClusterError::Conflict(format!(
            "the catalog's schema is version {have}, newer than this broodd knows ({latest}): upgrade broodd"
        )));
    }
    for (v, name, sql) in MIGRATIONS {
        if *v <= have {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO catalog_migration (version, name) VALUES ($1, $2)",
            &[v, name],
        )
        .await?;
        tracing::info!(version = v, "catalog migrated: {name}");
    }
    tx.commit().await?;
    Ok(latest)
}
