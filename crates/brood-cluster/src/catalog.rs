//! The cluster catalog in PostgreSQL: hosts and their zones, domains,
//! partition definitions and their placement.
//!
//! Every operation is idempotent or guarded by a conditional write, and is
//! retried on transient failures (a broken connection, PostgreSQL
//! restarting, a serialization race) until a deadline, so a restart of
//! PostgreSQL costs a pause, not an update. Placement commits with
//! [`Catalog::commit_placement`]: in one transaction it locks the host's
//! row, re-checks its capacity against every placement on it, and writes
//! the placement only if its generation is still the one the decision was
//! made from; [`Catalog::place`] retries the whole decision on contention.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::Json;
use tokio_postgres::{NoTls, Row};
use tracing::debug;
use uuid::Uuid;

use crate::error::ClusterError;
use crate::migrate;
use crate::model::{
    Capacity, DomainPolicy, HostState, Importance, Liveness, Requirement, Zone, check_name,
};
use crate::place::{self, HostView, Request, Resident, Snapshot};

/// How many times [`Catalog::place`] decides again after losing a race.
const PLACE_ATTEMPTS: usize = 8;

/// A host as it registers or is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Its name.
    pub name: String,
    /// Where its broodd listens (`host:port`), for the others.
    pub address: String,
    /// What it has.
    pub capacity: Capacity,
    /// The zones it provides.
    pub zones: Vec<Zone>,
}

/// A host as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Its name.
    pub name: String,
    /// Where its broodd listens.
    pub address: String,
    /// Its state.
    pub state: HostState,
    /// What it has.
    pub capacity: Capacity,
    /// What the partitions placed on it hold.
    pub used: Capacity,
    /// How many partitions are placed on it.
    pub partitions: u64,
    /// The zones it provides (`kind:name`).
    pub zones: Vec<String>,
    /// Milliseconds since its last heartbeat (`None`: never).
    pub silent_ms: Option<u64>,
    /// broodd's version there.
    pub broodd_version: String,
}

/// A partition definition to place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDef {
    /// Its id in the catalog.
    pub id: Uuid,
    /// Its name (unique in the cluster).
    pub name: String,
    /// Its domain.
    pub domain: String,
    /// What it needs.
    pub demand: Capacity,
    /// The zones it requires.
    pub requires: Vec<Requirement>,
}

/// Where a partition is placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The partition (catalog id).
    pub partition: Uuid,
    /// Its name.
    pub name: String,
    /// Its domain.
    pub domain: String,
    /// Its host (`None`: not placed).
    pub host: Option<String>,
    /// Bumped by every placement change.
    pub generation: u64,
    /// Whether the host's ledger holds it.
    pub held: bool,
    /// Its id in the host's ledger.
    pub local_id: Option<Uuid>,
    /// What it needs.
    pub demand: Capacity,
    /// Partitions to move away to make room (a displacement); usually empty.
    #[serde(default)]
    pub evict: Vec<Uuid>,
}

/// A partition the host's own ledger holds, as the host reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPartition {
    /// Its id in the host's ledger.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// What it holds.
    pub demand: Capacity,
}

/// What [`Catalog::sync_host`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Partitions the catalog did not know, now placed here.
    pub added: Vec<String>,
    /// Pending placements here (new, or moved here) the host's ledger now holds.
    pub adopted: Vec<String>,
    /// Placements here whose partition the host no longer has, removed.
    pub released: Vec<String>,
    /// Local partitions the catalog places elsewhere (moved away: fenced).
    pub elsewhere: Vec<(String, Option<String>)>,
    /// Local partitions whose name another host's partition has.
    pub name_taken: Vec<String>,
}

/// The catalog: a pool of PostgreSQL connections and a retry deadline.
#[derive(Clone)]
pub struct Catalog {
    pool: Pool,
    pub(crate) retry_for: Duration,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("retry_for", &self.retry_for)
            .finish_non_exhaustive()
    }
}

/// Retries `$body` (an expression using the connection `$c`) on transient
/// errors with backoff until the catalog's deadline.
macro_rules! retry {
    ($self:expr, $what:expr, |$c:ident| $body:expr) => {{
        let start = std::time::Instant::now();
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            let r: Result<_, $crate::error::ClusterError> = async {
                #[allow(unused_mut)]
                let mut $c = $self.client().await?;
                $body.await
            }
            .await;
            match r {
                Err(e) if e.is_transient() => {
                    if start.elapsed() >= $self.retry_for {
                        break Err($crate::error::ClusterError::Unavailable {
                            after: $self.retry_for,
                            last: e.to_string(),
                        });
                    }
                    tracing::debug!("catalog: {} failed ({e}); retrying", $what);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
                other => break other,
            }
        }
    }};
}

pub(crate) use retry;

impl Catalog {
    /// Connects to `url` (`postgres://user@host:port/db` or key=value) and
    /// brings the schema up to date. Transient failures are retried for
    /// `retry_for` on every operation.
    pub async fn connect(url: &str, retry_for: Duration) -> Result<Catalog, ClusterError> {
        let cfg = tokio_postgres::Config::from_str(url).map_err(|e| {
            ClusterError::Url(format!(
                "{e}: give postgres://USER@HOST:PORT/DATABASE (or host=/run/postgresql dbname=brood)"
            ))
        })?;
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                // Verified: a connection that survived a PostgreSQL restart
                // only in our pool is tested before it is handed out.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(8)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| ClusterError::Url(e.to_string()))?;
        let cat = Catalog { pool, retry_for };
        retry!(cat, "migrate", |c| async { migrate::migrate(&mut c).await })?;
        Ok(cat)
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, ClusterError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => ClusterError::Db(e),
            other => ClusterError::Pool(other.to_string()),
        })
    }

    /// The schema version applied.
    pub async fn schema_version(&self) -> Result<i32, ClusterError> {
        retry!(self, "schema version", |c| async {
            let r = c
                .query_one("SELECT max(version) FROM catalog_migration", &[])
                .await?;
            Ok(r.get::<_, Option<i32>>(0).unwrap_or(0))
        })
    }

    /// Adds a host ahead of its broodd (refused if it exists).
    pub async fn add_host(&self, spec: &HostSpec) -> Result<(), ClusterError> {
        check_name("host", &spec.name)?;
        retry!(self, "add host", |c| async {
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO host (name, address, memory_mib, vcpus, disk_gib)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                    &[
                        &spec.name,
                        &spec.address,
                        &i(spec.capacity.memory_mib)?,
                        &i(spec.capacity.vcpus)?,
                        &i(spec.capacity.disk_gib)?,
                    ],
                )
                .await?;
            if n == 0 {
                return Err(ClusterError::Conflict(format!(
                    "host {:?} is already in the catalog: `brood host show {}`",
                    spec.name, spec.name
                )));
            }
            set_zones(&tx, &spec.name, &spec.zones).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// A host's broodd registers: its address, capacity and zones replace
    /// what the catalog had, and it counts as a heartbeat. Idempotent.
    pub async fn register_host(&self, spec: &HostSpec, version: &str) -> Result<(), ClusterError> {
        check_name("host", &spec.name)?;
        retry!(self, "register host", |c| async {
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO host (name, address, memory_mib, vcpus, disk_gib, last_heartbeat, broodd_version)
                 VALUES ($1, $2, $3, $4, $5, now(), $6)
                 ON CONFLICT (name) DO UPDATE SET address = $2, memory_mib = $3, vcpus = $4,
                     disk_gib = $5, last_heartbeat = now(), broodd_version = $6,
                     version = host.version + 1",
                &[
                    &spec.name,
                    &spec.address,
                    &i(spec.capacity.memory_mib)?,
                    &i(spec.capacity.vcpus)?,
                    &i(spec.capacity.disk_gib)?,
                    &version,
                ],
            )
            .await?;
            set_zones(&tx, &spec.name, &spec.zones).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records a heartbeat of `host`.
    pub async fn heartbeat(&self, host: &str) -> Result<(), ClusterError> {
        retry!(self, "heartbeat", |c| async {
            let n = c
                .execute(
                    "UPDATE host SET last_heartbeat = now() WHERE name = $1",
                    &[&host],
                )
                .await?;
            if n == 0 {
                return Err(not_found("host", host));
            }
            Ok(())
        })
    }

    /// Every host, by name.
    pub async fn hosts(&self, live: Liveness) -> Result<Vec<HostRecord>, ClusterError> {
        retry!(self, "list hosts", |c| async {
            read_hosts(&c, live, None).await
        })
    }

    /// One host.
    pub async fn host(&self, name: &str, live: Liveness) -> Result<HostRecord, ClusterError> {
        retry!(self, "show host", |c| async {
            read_hosts(&c, live, Some(name))
                .await?
                .pop()
                .ok_or_else(|| not_found("host", name))
        })
    }

    /// Drains a host (no new partitions go there) or undrains it.
    pub async fn set_draining(&self, name: &str, draining: bool) -> Result<(), ClusterError> {
        retry!(self, "drain host", |c| async {
            let n = c
                .execute(
                    "UPDATE host SET draining = $2, version = version + 1 WHERE name = $1",
                    &[&name, &draining],
                )
                .await?;
            if n == 0 {
                return Err(not_found("host", name));
            }
            Ok(())
        })
    }

    /// Removes a host; refused while partitions are placed on it.
    pub async fn remove_host(&self, name: &str) -> Result<(), ClusterError> {
        retry!(self, "remove host", |c| async {
            let tx = c.transaction().await?;
            let row = tx
                .query_opt("SELECT name FROM host WHERE name = $1 FOR UPDATE", &[&name])
                .await?;
            if row.is_none() {
                return Err(not_found("host", name));
            }
            let held: i64 = tx
                .query_one("SELECT count(*) FROM placement WHERE host = $1", &[&name])
                .await?
                .get(0);
            if held > 0 {
                return Err(ClusterError::Conflict(format!(
                    "host {name:?} still has {held} partition(s) placed on it: drain it (brood host drain {name}) and move or delete them first"
                )));
            }
            tx.execute("DELETE FROM host WHERE name = $1", &[&name])
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Adds a zone (and its kind, if administrator-defined). Idempotent.
    pub async fn add_zone(&self, zone: &Zone) -> Result<(), ClusterError> {
        retry!(self, "add zone", |c| async {
            c.execute(
                "INSERT INTO zone_type (name, builtin) VALUES ($1, false) ON CONFLICT DO NOTHING",
                &[&zone.kind.as_str()],
            )
            .await?;
            c.execute(
                "INSERT INTO zone (kind, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&zone.kind.as_str(), &zone.name],
            )
            .await?;
            Ok(())
        })
    }

    /// Every zone, with the hosts providing it.
    pub async fn zones(&self) -> Result<Vec<(Zone, Vec<String>)>, ClusterError> {
        retry!(self, "list zones", |c| async {
            let rows = c
                .query(
                    "SELECT z.kind, z.name, coalesce(array_agg(hz.host ORDER BY hz.host)
                         FILTER (WHERE hz.host IS NOT NULL), '{}')
                     FROM zone z LEFT JOIN host_zone hz ON hz.kind = z.kind AND hz.name = z.name
                     GROUP BY z.kind, z.name ORDER BY z.kind, z.name",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let kind: String = r.get(0);
                    let name: String = r.get(1);
                    Ok((Zone::new(kind.parse()?, &name)?, r.get(2)))
                })
                .collect()
        })
    }

    /// Creates or replaces a domain's policy.
    pub async fn put_domain(&self, name: &str, policy: &DomainPolicy) -> Result<(), ClusterError> {
        check_name("domain", name)?;
        retry!(self, "put domain", |c| async {
            c.execute(
                "INSERT INTO domain (name, policy) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET policy = $2, version = domain.version + 1",
                &[&name, &Json(policy)],
            )
            .await?;
            Ok(())
        })
    }

    /// Every domain.
    pub async fn domains(&self) -> Result<BTreeMap<String, DomainPolicy>, ClusterError> {
        retry!(self, "list domains", |c| async { read_domains(&c).await })
    }

    /// Everything placement decides from.
    pub async fn snapshot(&self, live: Liveness) -> Result<Snapshot, ClusterError> {
        retry!(self, "snapshot", |c| async {
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let s = read_snapshot(&tx, live).await?;
            tx.commit().await?;
            Ok(s)
        })
    }

    /// Every placement (on `host` only, if given).
    pub async fn placements(&self, host: Option<&str>) -> Result<Vec<Placement>, ClusterError> {
        retry!(self, "list placements", |c| async {
            let rows = c
                .query(
                    "SELECT d.id, d.name, d.domain, p.host, p.generation, p.held, p.local_id,
                            d.memory_mib, d.vcpus, d.disk_gib
                     FROM partition_def d JOIN placement p ON p.partition = d.id
                     WHERE $1::text IS NULL OR p.host = $1 ORDER BY d.name",
                    &[&host],
                )
                .await?;
            rows.iter().map(placement_row).collect()
        })
    }

    /// Defines a partition (if its name is new) and places it: decides from
    /// a snapshot, commits conditionally, decides again on contention.
    /// Placing a partition already placed returns its placement.
    pub async fn place(
        &self,
        def: &PartitionDef,
        live: Liveness,
    ) -> Result<Placement, ClusterError> {
        check_name("partition", &def.name)?;
        for r in &def.requires {
            r.zone_kind()?;
        }
        let def = retry!(self, "define partition", |c| async {
            define(&c, def).await
        })?;
        // Hosts whose heartbeats stopped may only have been cut off from
        // the catalog (PostgreSQL restarting silences every host at once):
        // a refusal while some host is suspect or failed is decided again
        // until that host is back or could have been (the failure window
        // and one suspect window more).
        let silent_until = Instant::now()
            + Duration::from_millis((live.failed_after_ms + live.suspect_after_ms).min(60_000));
        let mut attempt = 0;
        while attempt < PLACE_ATTEMPTS {
            let current = retry!(self, "read placement", |c| async {
                read_placement(&c, def.id).await
            })?;
            if let Some(p) = current.as_ref().filter(|p| p.host.is_some()) {
                return Ok(p.clone());
            }
            let snap = self.snapshot(live).await?;
            let req = Request {
                partition: def.id,
                domain: def.domain.clone(),
                demand: def.demand,
                requires: def.requires.clone(),
                avoid: None,
            };
            let decision = match place::place(&snap, &req) {
                Ok(d) => d,
                Err(_)
                    if Instant::now() < silent_until
                        && snap
                            .hosts
                            .iter()
                            .any(|h| matches!(h.state, HostState::Suspect | HostState::Failed)) =>
                {
                    let pause = Duration::from_millis((live.suspect_after_ms / 4).clamp(50, 1000));
                    debug!(
                        "placement of {} refused with hosts silent: deciding again in {pause:?}",
                        def.name
                    );
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Err(refusal) => {
                    // A refused partition leaves no definition behind.
                    retry!(self, "forget a refused definition", |c| async {
                        c.execute(
                            "DELETE FROM partition_def d WHERE d.id = $1
                             AND NOT EXISTS (SELECT 1 FROM placement p WHERE p.partition = d.id)",
                            &[&def.id],
                        )
                        .await
                        .map_err(ClusterError::from)
                    })?;
                    return Err(ClusterError::Refused(refusal.reason));
                }
            };
            let expected = current.as_ref().map_or(0, |p| p.generation);
            match self
                .commit_placement(def.id, &decision.host, expected)
                .await
            {
                Ok(mut p) => {
                    p.evict = decision.evict;
                    return Ok(p);
                }
                Err(ClusterError::Conflict(why)) => {
                    debug!(attempt, "placement of {} lost a race: {why}", def.name);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClusterError::Conflict(format!(
            "placement of {:?} lost {PLACE_ATTEMPTS} races in a row: try again",
            def.name
        )))
    }

    /// The conditional write of a placement: in one transaction, locks the
    /// host's row, re-checks that it takes partitions and has room for this
    /// one beside every other placed there, and writes the placement only
    /// if its generation is still `expected` (0: not placed yet), bumping
    /// it. `Conflict` when either check fails: decide again.
    pub async fn commit_placement(
        &self,
        partition: Uuid,
        host: &str,
        expected: u64,
    ) -> Result<Placement, ClusterError> {
        retry!(self, "commit placement", |c| async {
            let tx = c.transaction().await?;
            let Some(h) = tx
                .query_opt(
                    "SELECT memory_mib, vcpus, disk_gib, draining FROM host WHERE name = $1 FOR UPDATE",
                    &[&host],
                )
                .await?
            else {
                return Err(ClusterError::Conflict(format!("host {host:?} is gone")));
            };
            if h.get::<_, bool>(3) {
                return Err(ClusterError::Conflict(format!("host {host:?} is draining")));
            }
            let cap = Capacity {
                memory_mib: u(h.get(0))?,
                vcpus: u(h.get(1))?,
                disk_gib: u(h.get(2))?,
            };
            let def = tx
                .query_opt(
                    "SELECT memory_mib, vcpus, disk_gib FROM partition_def WHERE id = $1",
                    &[&partition],
                )
                .await?
                .ok_or_else(|| not_found("partition", &partition.to_string()))?;
            let demand = capacity_at(&def, 0)?;
            let used = tx
                .query_one(
                    "SELECT coalesce(sum(d.memory_mib), 0)::bigint, coalesce(sum(d.vcpus), 0)::bigint,
                            coalesce(sum(d.disk_gib), 0)::bigint
                     FROM placement p JOIN partition_def d ON d.id = p.partition
                     WHERE p.host = $1 AND p.partition <> $2",
                    &[&host, &partition],
                )
                .await?;
            let used = capacity_at(&used, 0)?;
            if !used.plus(demand).fits_in(cap) {
                return Err(ClusterError::Conflict(format!(
                    "host {host:?} no longer has {demand} free"
                )));
            }
            let written = if expected == 0 {
                tx.execute(
                    "INSERT INTO placement (partition, host, generation) VALUES ($1, $2, 1)
                     ON CONFLICT (partition) DO NOTHING",
                    &[&partition, &host],
                )
                .await?
            } else {
                tx.execute(
                    "UPDATE placement SET host = $2, generation = generation + 1, held = false,
                         updated_at = now()
                     WHERE partition = $1 AND generation = $3",
                    &[&partition, &host, &i(expected)?],
                )
                .await?
            };
            if written == 0 {
                // Someone else moved it, or an earlier try of ours committed
                // before its reply was lost: the caller decides again and
                // finds the placement as it is.
                return Err(ClusterError::Conflict(format!(
                    "the placement of {partition} changed (generation is no longer {expected})"
                )));
            }
            let p = read_placement(&tx, partition)
                .await?
                .ok_or_else(|| not_found("placement", &partition.to_string()))?;
            tx.commit().await?;
            Ok(p)
        })
    }

    /// Removes a partition definition (and its placement).
    pub async fn forget_partition(&self, name: &str) -> Result<(), ClusterError> {
        retry!(self, "forget partition", |c| async {
            let n = c
                .execute("DELETE FROM partition_def WHERE name = $1", &[&name])
                .await?;
            if n == 0 {
                return Err(not_found("partition", name));
            }
            Ok(())
        })
    }

    /// Reconciles the catalog with what `host`'s own ledger holds: local
    /// partitions the catalog does not know are defined and placed here;
    /// pending placements here are adopted by name; placements here whose
    /// partition is gone from the host are removed; local partitions the
    /// catalog places elsewhere are reported (fenced), never taken back.
    pub async fn sync_host(
        &self,
        host: &str,
        locals: &[LocalPartition],
    ) -> Result<SyncReport, ClusterError> {
        retry!(self, "sync host", |c| async {
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::Serializable)
                .start()
                .await?;
            let report = sync(&tx, host, locals).await?;
            tx.commit().await?;
            Ok(report)
        })
    }
}

async fn sync<C: GenericClient>(
    tx: &C,
    host: &str,
    locals: &[LocalPartition],
) -> Result<SyncReport, ClusterError> {
    let mut report = SyncReport::default();
    // Definitions without a placement (generation 0) are listed too: a
    // local partition of that name adopts them.
    let rows = tx
        .query(
            "SELECT d.id, d.name, d.domain, p.host, coalesce(p.generation, 0),
                    coalesce(p.held, false), p.local_id, d.memory_mib, d.vcpus, d.disk_gib
             FROM partition_def d LEFT JOIN placement p ON p.partition = d.id",
            &[],
        )
        .await?;
    let all: Vec<Placement> = rows.iter().map(placement_row).collect::<Result<_, _>>()?;
    let by_local: HashMap<Uuid, &Placement> = all
        .iter()
        .filter_map(|p| p.local_id.map(|l| (l, p)))
        .collect();
    let by_name: HashMap<&str, &Placement> = all.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut seen = HashSet::new();
    for l in locals {
        seen.insert(l.id);
        if let Some(p) = by_local.get(&l.id) {
            if p.host.as_deref() == Some(host) {
                tx.execute(
                    "UPDATE partition_def SET memory_mib = $2, vcpus = $3, disk_gib = $4
                     WHERE id = $1 AND (memory_mib, vcpus, disk_gib) <> ($2, $3, $4)",
                    &[
                        &p.partition,
                        &i(l.demand.memory_mib)?,
                        &i(l.demand.vcpus)?,
                        &i(l.demand.disk_gib)?,
                    ],
                )
                .await?;
            } else {
                report.elsewhere.push((l.name.clone(), p.host.clone()));
            }
            continue;
        }
        if let Some(p) = by_name.get(l.name.as_str()) {
            if p.generation == 0 {
                tx.execute(
                    "INSERT INTO placement (partition, host, generation, held, local_id)
                     VALUES ($1, $2, 1, true, $3)",
                    &[&p.partition, &host, &l.id],
                )
                .await?;
                report.adopted.push(l.name.clone());
            } else if p.host.as_deref() == Some(host) && !p.held {
                tx.execute(
                    "UPDATE placement SET held = true, local_id = $2, updated_at = now()
                     WHERE partition = $1",
                    &[&p.partition, &l.id],
                )
                .await?;
                report.adopted.push(l.name.clone());
            } else {
                report.name_taken.push(l.name.clone());
            }
            continue;
        }
        tx.execute(
            "INSERT INTO partition_def (id, name, domain, memory_mib, vcpus, disk_gib)
             VALUES ($1, $2, 'default', $3, $4, $5)",
            &[
                &l.id,
                &l.name,
                &i(l.demand.memory_mib)?,
                &i(l.demand.vcpus)?,
                &i(l.demand.disk_gib)?,
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO placement (partition, host, generation, held, local_id)
             VALUES ($1, $2, 1, true, $1)",
            &[&l.id, &host],
        )
        .await?;
        report.added.push(l.name.clone());
    }
    for p in &all {
        let here = p.host.as_deref() == Some(host);
        if here && p.held && p.local_id.is_some_and(|l| !seen.contains(&l)) {
            tx.execute("DELETE FROM partition_def WHERE id = $1", &[&p.partition])
                .await?;
            report.released.push(p.name.clone());
        }
    }
    Ok(report)
}

async fn set_zones<C: GenericClient>(
    tx: &C,
    host: &str,
    zones: &[Zone],
) -> Result<(), ClusterError> {
    tx.execute("DELETE FROM host_zone WHERE host = $1", &[&host])
        .await?;
    for z in zones {
        tx.execute(
            "INSERT INTO zone_type (name, builtin) VALUES ($1, false) ON CONFLICT DO NOTHING",
            &[&z.kind.as_str()],
        )
        .await?;
        tx.execute(
            "INSERT INTO zone (kind, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&z.kind.as_str(), &z.name],
        )
        .await?;
        tx.execute(
            "INSERT INTO host_zone (host, kind, name) VALUES ($1, $2, $3)",
            &[&host, &z.kind.as_str(), &z.name],
        )
        .await?;
    }
    Ok(())
}

async fn define<C: GenericClient>(c: &C, def: &PartitionDef) -> Result<PartitionDef, ClusterError> {
    let domain_known = c
        .query_opt("SELECT 1 FROM domain WHERE name = $1", &[&def.domain])
        .await?
        .is_some();
    if !domain_known {
        return Err(ClusterError::Refused(format!(
            "domain {:?} does not exist: create it (brood host domain add) or name another",
            def.domain
        )));
    }
    c.execute(
        "INSERT INTO partition_def (id, name, domain, memory_mib, vcpus, disk_gib, requires)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        &[
            &def.id,
            &def.name,
            &def.domain,
            &i(def.demand.memory_mib)?,
            &i(def.demand.vcpus)?,
            &i(def.demand.disk_gib)?,
            &Json(&def.requires),
        ],
    )
    .await?;
    let r = c
        .query_one(
            "SELECT id, name, domain, memory_mib, vcpus, disk_gib, requires
             FROM partition_def WHERE name = $1",
            &[&def.name],
        )
        .await?;
    let Json(requires): Json<Vec<Requirement>> = r.get(6);
    let stored = PartitionDef {
        id: r.get(0),
        name: r.get(1),
        domain: r.get(2),
        demand: capacity_at(&r, 3)?,
        requires,
    };
    if stored.domain != def.domain || stored.demand != def.demand || stored.requires != def.requires
    {
        return Err(ClusterError::Conflict(format!(
            "a partition named {:?} is already defined differently in the catalog: pick another name",
            def.name
        )));
    }
    Ok(stored)
}

pub(crate) async fn read_placement<C: GenericClient>(
    c: &C,
    id: Uuid,
) -> Result<Option<Placement>, ClusterError> {
    let r = c
        .query_opt(
            "SELECT d.id, d.name, d.domain, p.host, p.generation, p.held, p.local_id,
                    d.memory_mib, d.vcpus, d.disk_gib
             FROM partition_def d JOIN placement p ON p.partition = d.id WHERE d.id = $1",
            &[&id],
        )
        .await?;
    r.as_ref().map(placement_row).transpose()
}

pub(crate) fn placement_row(r: &Row) -> Result<Placement, ClusterError> {
    Ok(Placement {
        partition: r.get(0),
        name: r.get(1),
        domain: r.get(2),
        host: r.get(3),
        generation: u(r.get(4))?,
        held: r.get(5),
        local_id: r.get(6),
        demand: capacity_at(r, 7)?,
        evict: Vec::new(),
    })
}

async fn read_domains<C: GenericClient>(
    c: &C,
) -> Result<BTreeMap<String, DomainPolicy>, ClusterError> {
    let rows = c
        .query("SELECT name, policy FROM domain ORDER BY name", &[])
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let Json(p): Json<DomainPolicy> = r.get(1);
            (r.get(0), p)
        })
        .collect())
}

async fn read_hosts<C: GenericClient>(
    c: &C,
    live: Liveness,
    only: Option<&str>,
) -> Result<Vec<HostRecord>, ClusterError> {
    let rows = c
        .query(
            "SELECT h.name, h.address, h.memory_mib, h.vcpus, h.disk_gib, h.draining,
                    (extract(epoch FROM (now() - h.last_heartbeat)) * 1000)::bigint,
                    h.broodd_version,
                    coalesce((SELECT array_agg(hz.kind || ':' || hz.name ORDER BY hz.kind, hz.name)
                              FROM host_zone hz WHERE hz.host = h.name), '{}'),
                    coalesce(u.m, 0)::bigint, coalesce(u.v, 0)::bigint, coalesce(u.d, 0)::bigint,
                    coalesce(u.n, 0)::bigint
             FROM host h LEFT JOIN (
                 SELECT p.host, sum(d.memory_mib) m, sum(d.vcpus) v, sum(d.disk_gib) d, count(*) n
                 FROM placement p JOIN partition_def d ON d.id = p.partition GROUP BY p.host
             ) u ON u.host = h.name
             WHERE $1::text IS NULL OR h.name = $1
             ORDER BY h.name",
            &[&only],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let silent: Option<i64> = r.get(6);
            let silent_ms = silent.map(|s| u64::try_from(s).unwrap_or(0));
            Ok(HostRecord {
                name: r.get(0),
                address: r.get(1),
                capacity: capacity_at(r, 2)?,
                state: live.state(r.get(5), silent_ms),
                silent_ms,
                broodd_version: r.get(7),
                zones: r.get(8),
                used: capacity_at(r, 9)?,
                partitions: u(r.get(12))?,
            })
        })
        .collect()
}

pub(crate) async fn read_snapshot<C: GenericClient>(
    c: &C,
    live: Liveness,
) -> Result<Snapshot, ClusterError> {
    let domains = read_domains(c).await?;
    let hosts = read_hosts(c, live, None).await?;
    let rows = c
        .query(
            "SELECT p.host, d.id, d.domain, d.memory_mib, d.vcpus, d.disk_gib
             FROM placement p JOIN partition_def d ON d.id = p.partition WHERE p.host IS NOT NULL",
            &[],
        )
        .await?;
    let mut residents: HashMap<String, Vec<Resident>> = HashMap::new();
    for r in &rows {
        let domain: String = r.get(2);
        let importance = domains
            .get(&domain)
            .map_or(Importance::default(), |d| d.importance);
        residents.entry(r.get(0)).or_default().push(Resident {
            partition: r.get(1),
            domain,
            importance,
            demand: capacity_at(r, 3)?,
        });
    }
    let hosts = hosts
        .into_iter()
        .map(|h| {
            let zones = h
                .zones
                .iter()
                .filter_map(|z| z.parse::<Zone>().ok())
                .collect();
            let res = residents.remove(&h.name).unwrap_or_default();
            HostView::new(&h.name, h.state, h.capacity, zones, res)
        })
        .collect();
    Ok(Snapshot { hosts, domains })
}

pub(crate) fn capacity_at(r: &Row, at: usize) -> Result<Capacity, ClusterError> {
    Ok(Capacity {
        memory_mib: u(r.get(at))?,
        vcpus: u(r.get(at + 1))?,
        disk_gib: u(r.get(at + 2))?,
    })
}

pub(crate) fn i(v: u64) -> Result<i64, ClusterError> {
    i64::try_from(v).map_err(|_| ClusterError::Invalid(format!("{v} is too large for the catalog")))
}

pub(crate) fn u(v: i64) -> Result<u64, ClusterError> {
    u64::try_from(v)
        .map_err(|_| ClusterError::Invalid(format!("the catalog holds a negative amount ({v})")))
}

pub(crate) fn not_found(what: &'static str, name: &str) -> ClusterError {
    ClusterError::NotFound {
        what,
        name: name.to_owned(),
    }
}

/// Parses a zone list as broodd's `--zone` flags give it (sorted, once each).
pub fn parse_zones(list: &[String]) -> Result<Vec<Zone>, ClusterError> {
    let mut out: Vec<Zone> = list.iter().map(|z| z.parse()).collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}
