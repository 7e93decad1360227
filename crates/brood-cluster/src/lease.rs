//! What operations services share through the catalog: their credentials
//! (a SHA-256 of each instance's token, never the token), the leases by
//! which each host is watched by exactly one of them, the partition
//! definitions a host's broodd publishes so another host can start them,
//! and the conditional move of a failed host's partition to another host.
//!
//! A lease is a row (host, holder, expiry) renewed by its holder on a short
//! interval; one that is not renewed expires and any authorized instance
//! may take it. Every write names the instance and its token's hash and is
//! refused unless both match a row of `ops_instance`, so an instance that
//! was removed (or never added) can neither take a lease nor move a
//! partition. Instances share the hosts: each takes up to its fair share
//! (hosts divided by the live instances, rounded up; an instance is live
//! until its last renewal's lease period ends, as its leases are) and gives back what it holds beyond it, so a new instance is handed
//! hosts and a dead one's hosts are taken over when its leases expire.
//!
//! The placement decision stays the pure [`crate::place::place`]; this file
//! only commits it for a failed host's partitions ([`Catalog::move_placement`]),
//! bumping the partition's generation so the failed host's broodd, if it
//! comes back, is fenced.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};

use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::catalog::{Catalog, Placement, capacity_at, i, not_found, placement_row, retry};
use crate::error::ClusterError;
use crate::model::{Capacity, check_name};

/// An operations instance's credential as it presents it to the catalog.
#[derive(Clone, PartialEq, Eq)]
pub struct OpsCredential {
    /// Its name.
    pub name: String,
    /// The SHA-256 of its token, hex.
    pub token_sha256: String,
}

impl std::fmt::Debug for OpsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsCredential")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An operations instance as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpsRecord {
    /// Its name.
    pub name: String,
    /// Milliseconds since it last renewed its leases (`None`: never ran).
    pub silent_ms: Option<u64>,
    /// The hosts it holds an unexpired lease on.
    pub hosts: Vec<String>,
}

/// A partition a failed host held, with what is needed to start it elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct Stranded {
    /// Its placement.
    pub placement: Placement,
    /// The zones it requires.
    pub requires: Vec<crate::model::Requirement>,
    /// The definition its host published (`None`: it cannot be started
    /// elsewhere, e.g. its disks are that host's own).
    pub spec: Option<serde_json::Value>,
}

fn ms(d: Duration) -> Result<i64, ClusterError> {
    i(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unauthorized(name: &str) -> ClusterError {
    ClusterError::Conflict(format!(
        "operations instance {name:?} is not authorized: its name and token must match one `brood host ops list` shows (`brood host ops add {name}` makes its token)"
    ))
}

/// Refuses unless the credential matches an instance row (locked for share).
async fn authorize<C: GenericClient>(c: &C, cred: &OpsCredential) -> Result<(), ClusterError> {
    let ok = c
        .query_opt(
            "SELECT 1 FROM ops_instance WHERE name = $1 AND token_sha256 = $2 FOR SHARE",
            &[&cred.name, &cred.token_sha256],
        )
        .await?
        .is_some();
    if ok {
        Ok(())
    } else {
        Err(unauthorized(&cred.name))
    }
}

impl Catalog {
    /// Authorizes a new operations instance by the hash of its token.
    pub async fn add_ops(&self, name: &str, token_sha256: &str) -> Result<(), ClusterError> {
        check_name("operations instance", name)?;
        if token_sha256.len() != 64 || !token_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClusterError::Invalid(
                "an operations token's hash is 64 hex digits (SHA-256)".into(),
            ));
        }
        retry!(self, "add ops instance", |c| async {
            let n = c
                .execute(
                    "INSERT INTO ops_instance (name, token_sha256) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &token_sha256],
                )
                .await?;
            if n == 0 {
                // A retry of our own insert finds its row: same hash, done.
                let same = c
                    .query_opt(
                        "SELECT 1 FROM ops_instance WHERE name = $1 AND token_sha256 = $2",
                        &[&name, &token_sha256],
                    )
                    .await?
                    .is_some();
                if !same {
                    return Err(ClusterError::Conflict(format!(
                        "operations instance {name:?} exists: remove it first (`brood host ops remove {name}`) to give it a new token"
                    )));
                }
            }
            Ok(())
        })
    }

    /// Withdraws an instance's authorization; its leases go with it.
    pub async fn remove_ops(&self, name: &str) -> Result<(), ClusterError> {
        retry!(self, "remove ops instance", |c| async {
            let n = c
                .execute("DELETE FROM ops_instance WHERE name = $1", &[&name])
                .await?;
            if n == 0 {
                return Err(not_found("operations instance", name));
            }
            Ok(())
        })
    }

    /// Every operations instance and the hosts it holds.
    pub async fn ops_instances(&self) -> Result<Vec<OpsRecord>, ClusterError> {
        retry!(self, "list ops instances", |c| async {
            let rows = c
                .query(
                    "SELECT o.name, (extract(epoch FROM (now() - o.last_seen)) * 1000)::bigint,
                            coalesce((SELECT array_agg(l.host ORDER BY l.host) FROM host_lease l
                                      WHERE l.holder = o.name AND l.expires_at > now()), '{}')
                     FROM ops_instance o ORDER BY o.name",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| OpsRecord {
                    name: r.get(0),
                    silent_ms: r
                        .get::<_, Option<i64>>(1)
                        .map(|s| u64::try_from(s).unwrap_or(0)),
                    hosts: r.get(2),
                })
                .collect())
        })
    }

    /// Which instance watches each host (unexpired leases only).
    pub async fn watchers(&self) -> Result<BTreeMap<String, String>, ClusterError> {
        retry!(self, "list leases", |c| async {
            let rows = c
                .query(
                    "SELECT host, holder FROM host_lease WHERE expires_at > now()",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Renews the instance's leases for `ttl`, gives back what it holds
    /// beyond its fair share and takes unleased or expired hosts up to it.
    /// Returns the hosts it holds now, by name.
    pub async fn take_leases(
        &self,
        cred: &OpsCredential,
        ttl: Duration,
    ) -> Result<Vec<String>, ClusterError> {
        let ttl_ms = ms(ttl)?;
        retry!(self, "take leases", |c| async {
            let tx = c.transaction().await?;
            let seen = tx
                .execute(
                    "UPDATE ops_instance SET last_seen = now(),
                         alive_until = now() + $3::bigint * interval '1 millisecond'
                     WHERE name = $1 AND token_sha256 = $2",
                    &[&cred.name, &cred.token_sha256, &ttl_ms],
                )
                .await?;
            if seen == 0 {
                return Err(unauthorized(&cred.name));
            }
            let live: i64 = tx
                .query_one(
                    "SELECT count(*) FROM ops_instance WHERE alive_until > now()",
                    &[],
                )
                .await?
                .get(0);
            let hosts: i64 = tx.query_one("SELECT count(*) FROM host", &[]).await?.get(0);
            let share = if live <= 0 {
                hosts
            } else {
                (hosts + live - 1) / live
            };
            let mut mine: Vec<String> = tx
                .query(
                    "UPDATE host_lease SET expires_at = now() + $2::bigint * interval '1 millisecond'
                     WHERE holder = $1 AND expires_at > now() RETURNING host",
                    &[&cred.name, &ttl_ms],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            mine.sort();
            let held = i64::try_from(mine.len()).unwrap_or(i64::MAX);
            if held > share {
                let extra = usize::try_from(held - share).unwrap_or(0);
                let give: Vec<String> = mine.split_off(mine.len().saturating_sub(extra));
                tx.execute(
                    "DELETE FROM host_lease WHERE holder = $1 AND host = ANY($2)",
                    &[&cred.name, &give],
                )
                .await?;
            } else if held < share {
                let taken = tx
                    .query(
                        "INSERT INTO host_lease (host, holder, expires_at)
                         SELECT h.name, $1, now() + $2::bigint * interval '1 millisecond' FROM host h
                         WHERE NOT EXISTS (SELECT 1 FROM host_lease l
                                           WHERE l.host = h.name AND l.expires_at > now())
                         ORDER BY h.name LIMIT $3
                         ON CONFLICT (host) DO UPDATE
                             SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at,
                                 taken_at = now()
                             WHERE host_lease.expires_at <= now()
                         RETURNING host",
                        &[&cred.name, &ttl_ms, &(share - held)],
                    )
                    .await?;
                mine.extend(taken.iter().map(|r| r.get::<_, String>(0)));
                mine.sort();
            }
            tx.commit().await?;
            Ok(mine)
        })
    }

    /// Gives back every lease of the instance (a clean stop: the others
    /// take its hosts at once instead of after the expiry).
    pub async fn drop_leases(&self, cred: &OpsCredential) -> Result<(), ClusterError> {
        retry!(self, "drop leases", |c| async {
            let tx = c.transaction().await?;
            authorize(&tx, cred).await?;
            tx.execute("DELETE FROM host_lease WHERE holder = $1", &[&cred.name])
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Publishes the definition of a partition `host` holds (its id in
    /// the host's ledger), so another host can start it. `false` when the
    /// catalog does not place it there (yet, or any more).
    pub async fn publish_spec(
        &self,
        host: &str,
        local_id: Uuid,
        spec: Option<&serde_json::Value>,
    ) -> Result<bool, ClusterError> {
        let spec = spec.map(Json);
        retry!(self, "publish a definition", |c| async {
            let n = c
                .execute(
                    "UPDATE partition_def d SET spec = $3 FROM placement p
                     WHERE p.partition = d.id AND p.host = $1 AND p.local_id = $2",
                    &[&host, &local_id, &spec],
                )
                .await?;
            Ok(n > 0)
        })
    }

    /// Publishes the definition of a partition placed but not held yet, so
    /// that its host defines it there (`arriving`); a definition already
    /// published is kept.
    pub async fn define_at(
        &self,
        partition: Uuid,
        spec: &serde_json::Value,
    ) -> Result<(), ClusterError> {
        let spec = Json(spec);
        retry!(self, "publish a definition to create", |c| async {
            c.execute(
                "UPDATE partition_def d SET spec = $2 FROM placement p
                 WHERE p.partition = d.id AND d.id = $1 AND NOT p.held AND d.spec IS NULL",
                &[&partition, &spec],
            )
            .await?;
            Ok(())
        })
    }

    /// Withdraws a placement its host could not create (a definition that
    /// host refuses): removes the partition's definition and placement if
    /// it is still unheld at `generation`. True if it was removed.
    pub async fn withdraw_unheld(
        &self,
        partition: Uuid,
        generation: u64,
    ) -> Result<bool, ClusterError> {
        let generation = i(generation)?;
        retry!(self, "withdraw a placement", |c| async {
            let n = c
                .execute(
                    "DELETE FROM partition_def d USING placement p
                     WHERE p.partition = d.id AND d.id = $1 AND NOT p.held AND p.generation = $2",
                    &[&partition, &generation],
                )
                .await?;
            Ok(n > 0)
        })
    }

    /// The placement of a host's local partition: by its id in the host's
    /// ledger (held, or left behind by a failover: then `true`), else by
    /// its name (`None`: the catalog does not know it).
    pub async fn placement_of(
        &self,
        local_id: Uuid,
        name: &str,
    ) -> Result<Option<(Placement, bool)>, ClusterError> {
        retry!(self, "read a placement", |c| async {
            let r = c
                .query_opt(
                    "SELECT d.id, d.name, d.domain, p.host, p.generation, p.held, p.local_id,
                            d.memory_mib, d.vcpus, d.disk_gib, $1 = ANY(p.left_behind)
                     FROM partition_def d JOIN placement p ON p.partition = d.id
                     WHERE p.local_id = $1 OR $1 = ANY(p.left_behind) OR d.name = $2
                     ORDER BY (p.local_id = $1 OR $1 = ANY(p.left_behind)) DESC NULLS LAST
                     LIMIT 1",
                    &[&local_id, &name],
                )
                .await?;
            r.as_ref()
                .map(|r| Ok((placement_row(r)?, r.get::<_, bool>(10))))
                .transpose()
        })
    }

    /// Every local id a failover left behind on some host.
    pub async fn left_behind(&self) -> Result<std::collections::HashSet<Uuid>, ClusterError> {
        retry!(self, "list left-behind copies", |c| async {
            let rows = c
                .query("SELECT unnest(left_behind) FROM placement", &[])
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// Placements moved to `host` that it does not hold yet, with the
    /// definition to start each from.
    pub async fn arriving(
        &self,
        host: &str,
    ) -> Result<Vec<(Placement, serde_json::Value)>, ClusterError> {
        retry!(self, "list arriving placements", |c| async {
            let rows = c
                .query(
                    "SELECT d.id, d.name, d.domain, p.host, p.generation, p.held, p.local_id,
                            d.memory_mib, d.vcpus, d.disk_gib, d.spec
                     FROM partition_def d JOIN placement p ON p.partition = d.id
                     WHERE p.host = $1 AND NOT p.held AND d.spec IS NOT NULL
                     ORDER BY d.name",
                    &[&host],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let Json(spec): Json<serde_json::Value> = r.get(10);
                    Ok((placement_row(r)?, spec))
                })
                .collect()
        })
    }

    /// Every partition placed on `host`, with its requirements and its
    /// published definition.
    pub async fn stranded_on(&self, host: &str) -> Result<Vec<Stranded>, ClusterError> {
        retry!(self, "list a host's partitions", |c| async {
            let rows = c
                .query(
                    "SELECT d.id, d.name, d.domain, p.host, p.generation, p.held, p.local_id,
                            d.memory_mib, d.vcpus, d.disk_gib, d.requires, d.spec
                     FROM partition_def d JOIN placement p ON p.partition = d.id
                     WHERE p.host = $1 ORDER BY d.name",
                    &[&host],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let Json(requires) = r.get(10);
                    let spec: Option<Json<serde_json::Value>> = r.get(11);
                    Ok(Stranded {
                        placement: placement_row(r)?,
                        requires,
                        spec: spec.map(|Json(s)| s),
                    })
                })
                .collect()
        })
    }

    /// Moves a partition off the failed host `from` to `to`, the
    /// conditional write of a failover: in one transaction it checks the
    /// instance's credential and its unexpired lease on `from`, locks
    /// `to`'s row and re-checks its room, and moves the placement only if
    /// it is still on `from` at generation `expected`, bumping the
    /// generation (the fence against `from`'s broodd) and leaving it
    /// unheld until `to`'s broodd starts it. `Conflict` when any check fails.
    pub async fn move_placement(
        &self,
        cred: &OpsCredential,
        partition: Uuid,
        from: &str,
        to: &str,
        expected: u64,
    ) -> Result<Placement, ClusterError> {
        retry!(self, "move a placement", |c| async {
            let tx = c.transaction().await?;
            authorize(&tx, cred).await?;
            let leased = tx
                .query_opt(
                    "SELECT 1 FROM host_lease WHERE host = $1 AND holder = $2
                     AND expires_at > now() FOR UPDATE",
                    &[&from, &cred.name],
                )
                .await?
                .is_some();
            if !leased {
                return Err(ClusterError::Conflict(format!(
                    "{} no longer holds the lease on host {from:?}: another instance watches it",
                    cred.name
                )));
            }
            let Some(h) = tx
                .query_opt(
                    "SELECT memory_mib, vcpus, disk_gib, draining FROM host WHERE name = $1 FOR UPDATE",
                    &[&to],
                )
                .await?
            else {
                return Err(ClusterError::Conflict(format!("host {to:?} is gone")));
            };
            if h.get::<_, bool>(3) {
                return Err(ClusterError::Conflict(format!("host {to:?} is draining")));
            }
            let cap = capacity_at(&h, 0)?;
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
                    &[&to, &partition],
                )
                .await?;
            let used: Capacity = capacity_at(&used, 0)?;
            if !used.plus(demand).fits_in(cap) {
                return Err(ClusterError::Conflict(format!(
                    "host {to:?} no longer has {demand} free"
                )));
            }
            let n = tx
                .execute(
                    "UPDATE placement SET host = $2, generation = generation + 1, held = false,
                         left_behind = CASE WHEN local_id IS NULL THEN left_behind
                                            ELSE array_append(left_behind, local_id) END,
                         local_id = NULL, updated_at = now()
                     WHERE partition = $1 AND host = $3 AND generation = $4",
                    &[&partition, &to, &from, &i(expected)?],
                )
                .await?;
            if n == 0 {
                return Err(ClusterError::Conflict(format!(
                    "the placement of {partition} changed (no longer on {from:?} at generation {expected})"
                )));
            }
            let r = tx
                .query_one(
                    "SELECT d.id, d.name, d.domain, p.host, p.generation, p.held, p.local_id,
                            d.memory_mib, d.vcpus, d.disk_gib
                     FROM partition_def d JOIN placement p ON p.partition = d.id WHERE d.id = $1",
                    &[&partition],
                )
                .await?;
            let p = placement_row(&r)?;
            tx.commit().await?;
            Ok(p)
        })
    }
}
