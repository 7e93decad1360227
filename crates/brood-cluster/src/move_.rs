//! Live migrations in the catalog: the rendezvous of a source and a target
//! host and the one conditional write that decides which copy of a
//! partition runs.
//!
//! ```text
//!  source broodd                 catalog `migration` row            target broodd
//!  begin_move: generation+1 ───▶ requested (definition) ──watch──▶ reserve in its ledger,
//!                                                                   QEMU -incoming, listen
//!  wait ◀─────────────────────── ready (address) ◀──── move_ready
//!  pre-copy to address ────────────────────────────────────────────▶ stream loaded (paused)
//!                                committed, host := target ◀──────── move_commit, then cont
//!  kill its QEMU, release ledger,
//!  move_finish: row deleted
//!                  (or: refused ◀ move_refuse; abort: row deleted by either side)
//! ```
//!
//! The decision is [`Catalog::move_commit`] against [`Catalog::move_abort`]:
//! both are conditional on the row's generation and state in one
//! transaction, so exactly one wins. The target resumes its guest only
//! after its commit won; the source resumes (or keeps running) only when
//! the commit never happened. Every later step (the source releasing, the
//! row's removal) is idempotent and redone by whichever broodd restarts.

use serde::{Deserialize, Serialize};
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::catalog::{Catalog, Placement, capacity_at, i, not_found, read_placement, retry, u};
use crate::error::ClusterError;
use crate::model::{HostState, Liveness};
use crate::place::{self, Request};

/// Where a move stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveState {
    /// The source asked; the target has not answered yet.
    Requested,
    /// The target waits for the stream at the row's address.
    Ready,
    /// The target holds the whole state and won: it runs the partition.
    Committed,
    /// The target could not take it (the row's reason says why).
    Refused,
}

impl MoveState {
    /// Its name in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveState::Requested => "requested",
            MoveState::Ready => "ready",
            MoveState::Committed => "committed",
            MoveState::Refused => "refused",
        }
    }

    fn parse(s: &str) -> Result<MoveState, ClusterError> {
        Ok(match s {
            "requested" => MoveState::Requested,
            "ready" => MoveState::Ready,
            "committed" => MoveState::Committed,
            "refused" => MoveState::Refused,
            other => {
                return Err(ClusterError::Invalid(format!(
                    "the catalog holds a migration in an unknown state {other:?}"
                )));
            }
        })
    }
}

/// A live migration in progress, as the catalog records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// The partition (catalog id).
    pub partition: Uuid,
    /// Its name.
    pub name: String,
    /// The host it leaves.
    pub source: String,
    /// The host it goes to.
    pub target: String,
    /// The placement generation this move bumped to.
    pub generation: u64,
    /// Where it stands.
    pub state: MoveState,
    /// Its id in the source's ledger (the target keeps it).
    pub local_id: Uuid,
    /// What the target reserves and starts (the source's record, opaque here).
    pub definition: serde_json::Value,
    /// The target's stream address, once ready.
    pub address: Option<String>,
    /// Why the target refused.
    pub reason: Option<String>,
}

/// How a move ended, as [`Catalog::move_abort`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveEnd {
    /// The abort won (or the move was already gone without a commit): the
    /// partition stays on its source. Carries the target's refusal, if any.
    Aborted(Option<String>),
    /// The target committed first: the partition is the target's now.
    Committed,
}

const MOVE_COLUMNS: &str = "m.partition, d.name, m.source, m.target, m.generation, m.state,
     m.local_id, m.definition, m.address, m.reason";

fn move_row(r: &tokio_postgres::Row) -> Result<Move, ClusterError> {
    let def: Json<serde_json::Value> = r.get(7);
    Ok(Move {
        partition: r.get(0),
        name: r.get(1),
        source: r.get(2),
        target: r.get(3),
        generation: u(r.get(4))?,
        state: MoveState::parse(r.get(5))?,
        local_id: r.get(6),
        definition: def.0,
        address: r.get(8),
        reason: r.get(9),
    })
}

impl Catalog {
    /// Starts moving partition `name` off `source`: picks the target (`to`,
    /// or placement's choice among the other hosts), then in one
    /// transaction checks the placement is still `source`'s and held, that
    /// the target takes partitions and has room, bumps the generation and
    /// records the move as requested with `definition` for the target.
    pub async fn begin_move(
        &self,
        name: &str,
        source: &str,
        to: Option<&str>,
        local_id: Uuid,
        definition: &serde_json::Value,
        live: Liveness,
    ) -> Result<Move, ClusterError> {
        let current = self.placement_named(name).await?;
        if current.host.as_deref() != Some(source) {
            return Err(ClusterError::Conflict(format!(
                "the catalog places {name:?} on {}, not on this host ({source})",
                current.host.as_deref().unwrap_or("no host")
            )));
        }
        let target = match to {
            Some(t) if t == source => {
                return Err(ClusterError::Invalid(format!(
                    "{name:?} already runs on {source}: name another host with --to"
                )));
            }
            Some(t) => t.to_owned(),
            None => {
                let snap = self.snapshot(live).await?;
                let req = Request {
                    partition: current.partition,
                    domain: current.domain.clone(),
                    demand: current.demand,
                    requires: self.requirements(current.partition).await?,
                    avoid: Some(source.to_owned()),
                };
                place::place(&snap, &req)
                    .map_err(|r| ClusterError::Refused(r.reason))?
                    .host
            }
        };
        let h = self.host(&target, live).await?;
        if h.state != HostState::Active {
            return Err(ClusterError::Conflict(format!(
                "host {target:?} is {}: it takes no partitions now",
                h.state.as_str()
            )));
        }
        let def = Json(definition);
        retry!(self, "begin a move", |c| async {
            let tx = c.transaction().await?;
            let Some(hr) = tx
                .query_opt(
                    "SELECT memory_mib, vcpus, disk_gib, draining FROM host WHERE name = $1 FOR UPDATE",
                    &[&target],
                )
                .await?
            else {
                return Err(not_found("host", &target));
            };
            if hr.get::<_, bool>(3) {
                return Err(ClusterError::Conflict(format!(
                    "host {target:?} is draining"
                )));
            }
            let cap = capacity_at(&hr, 0)?;
            let used = tx
                .query_one(
                    "SELECT coalesce(sum(d.memory_mib), 0)::bigint, coalesce(sum(d.vcpus), 0)::bigint,
                            coalesce(sum(d.disk_gib), 0)::bigint
                     FROM partition_def d
                     WHERE d.id IN (SELECT partition FROM placement WHERE host = $1
                                    UNION SELECT partition FROM migration WHERE target = $1)",
                    &[&target],
                )
                .await?;
            let used = capacity_at(&used, 0)?;
            if !used.plus(current.demand).fits_in(cap) {
                return Err(ClusterError::Refused(format!(
                    "host {target:?} does not have {} free",
                    current.demand
                )));
            }
            let bumped = tx
                .execute(
                    "UPDATE placement SET generation = generation + 1, updated_at = now()
                     WHERE partition = $1 AND host = $2 AND generation = $3
                       AND NOT EXISTS (SELECT 1 FROM migration WHERE partition = $1)",
                    &[&current.partition, &source, &i(current.generation)?],
                )
                .await?;
            if bumped == 0 {
                return Err(ClusterError::Conflict(format!(
                    "{name:?} is already moving, or its placement changed meanwhile: try again"
                )));
            }
            let generation = current.generation + 1;
            tx.execute(
                "INSERT INTO migration (partition, source, target, generation, state, local_id, definition)
                 VALUES ($1, $2, $3, $4, 'requested', $5, $6)",
                &[
                    &current.partition,
                    &source,
                    &target,
                    &i(generation)?,
                    &local_id,
                    &def,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(Move {
                partition: current.partition,
                name: name.to_owned(),
                source: source.to_owned(),
                target: target.clone(),
                generation,
                state: MoveState::Requested,
                local_id,
                definition: definition.clone(),
                address: None,
                reason: None,
            })
        })
    }

    /// The placement of partition `name`.
    pub async fn placement_named(&self, name: &str) -> Result<Placement, ClusterError> {
        let id = retry!(self, "find a partition", |c| async {
            c.query_opt("SELECT id FROM partition_def WHERE name = $1", &[&name])
                .await
                .map_err(ClusterError::from)
        })?
        .map(|r| r.get::<_, Uuid>(0))
        .ok_or_else(|| not_found("partition", name))?;
        retry!(self, "read placement", |c| async {
            read_placement(&c, id).await
        })?
        .ok_or_else(|| not_found("placement", name))
    }

    async fn requirements(
        &self,
        partition: Uuid,
    ) -> Result<Vec<crate::model::Requirement>, ClusterError> {
        let row = retry!(self, "read requirements", |c| async {
            c.query_one(
                "SELECT requires FROM partition_def WHERE id = $1",
                &[&partition],
            )
            .await
            .map_err(ClusterError::from)
        })?;
        let Json(reqs): Json<Vec<crate::model::Requirement>> = row.get(0);
        Ok(reqs)
    }

    /// The move of `partition`, if one is in progress.
    pub async fn move_of(&self, partition: Uuid) -> Result<Option<Move>, ClusterError> {
        retry!(self, "read a move", |c| async {
            let r = c
                .query_opt(
                    &format!(
                        "SELECT {MOVE_COLUMNS} FROM migration m JOIN partition_def d ON d.id = m.partition
                         WHERE m.partition = $1"
                    ),
                    &[&partition],
                )
                .await?;
            r.as_ref().map(move_row).transpose()
        })
    }

    /// Every move `host` takes part in (as source or target).
    pub async fn moves_of_host(&self, host: &str) -> Result<Vec<Move>, ClusterError> {
        retry!(self, "list moves", |c| async {
            let rows = c
                .query(
                    &format!(
                        "SELECT {MOVE_COLUMNS} FROM migration m JOIN partition_def d ON d.id = m.partition
                         WHERE m.source = $1 OR m.target = $1 ORDER BY m.created_at"
                    ),
                    &[&host],
                )
                .await?;
            rows.iter().map(move_row).collect()
        })
    }

    /// The target is ready: it waits for the stream at `address`.
    /// `Conflict` if the move was aborted meanwhile.
    pub async fn move_ready(
        &self,
        partition: Uuid,
        generation: u64,
        address: &str,
    ) -> Result<(), ClusterError> {
        self.move_set(
            partition,
            generation,
            "state = 'ready', address = $3",
            "state = 'requested'",
            address,
        )
        .await
    }

    /// The target cannot take the partition, for `reason`.
    pub async fn move_refuse(
        &self,
        partition: Uuid,
        generation: u64,
        reason: &str,
    ) -> Result<(), ClusterError> {
        self.move_set(
            partition,
            generation,
            "state = 'refused', reason = $3",
            "state IN ('requested', 'ready')",
            reason,
        )
        .await
    }

    async fn move_set(
        &self,
        partition: Uuid,
        generation: u64,
        set: &str,
        when: &str,
        value: &str,
    ) -> Result<(), ClusterError> {
        let sql = format!(
            "UPDATE migration SET {set}, updated_at = now()
             WHERE partition = $1 AND generation = $2 AND {when}"
        );
        let n = retry!(self, "update a move", |c| async {
            c.execute(&sql, &[&partition, &i(generation)?, &value])
                .await
                .map_err(ClusterError::from)
        })?;
        if n == 0 {
            return Err(ClusterError::Conflict(format!(
                "the move of {partition} (generation {generation}) was aborted"
            )));
        }
        Ok(())
    }

    /// The target holds the whole state: in one transaction the move
    /// becomes committed and the placement the target's (held, with
    /// `local_id`), only if the move is still ready at `generation`.
    /// `Conflict` when it lost to an abort: the target must not run it.
    pub async fn move_commit(
        &self,
        partition: Uuid,
        generation: u64,
        target: &str,
        local_id: Uuid,
    ) -> Result<(), ClusterError> {
        retry!(self, "commit a move", |c| async {
            let tx = c.transaction().await?;
            let won = tx
                .execute(
                    "UPDATE migration SET state = 'committed', updated_at = now()
                     WHERE partition = $1 AND generation = $2 AND target = $3 AND state IN ('ready', 'committed')",
                    &[&partition, &i(generation)?, &target],
                )
                .await?;
            if won == 0 {
                return Err(ClusterError::Conflict(format!(
                    "the move of {partition} to {target} was aborted before it could commit"
                )));
            }
            tx.execute(
                "UPDATE placement SET host = $3, held = true, local_id = $4, moved_generation = $2,
                     updated_at = now()
                 WHERE partition = $1 AND generation = $2",
                &[&partition, &i(generation)?, &target, &local_id],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Aborts the move of `partition` at `generation` unless the target
    /// committed it first; either way says which won. An abort that finds
    /// no row (a retry after a lost reply, or an abort by the other side)
    /// reads the placement to tell.
    pub async fn move_abort(
        &self,
        partition: Uuid,
        generation: u64,
    ) -> Result<MoveEnd, ClusterError> {
        retry!(self, "abort a move", |c| async {
            let tx = c.transaction().await?;
            let deleted = tx
                .query_opt(
                    "DELETE FROM migration WHERE partition = $1 AND generation = $2 AND state <> 'committed'
                     RETURNING reason",
                    &[&partition, &i(generation)?],
                )
                .await?;
            let end = match deleted {
                Some(r) => MoveEnd::Aborted(r.get(0)),
                None => {
                    let committed = tx
                        .query_opt(
                            "SELECT 1 FROM migration WHERE partition = $1 AND generation = $2",
                            &[&partition, &i(generation)?],
                        )
                        .await?
                        .is_some();
                    // Gone: committed and finished already (the commit
                    // noted its generation on the placement), or aborted.
                    let finished = tx
                        .query_opt(
                            "SELECT 1 FROM placement WHERE partition = $1 AND moved_generation = $2",
                            &[&partition, &i(generation)?],
                        )
                        .await?
                        .is_some();
                    if committed || finished {
                        MoveEnd::Committed
                    } else {
                        MoveEnd::Aborted(None)
                    }
                }
            };
            tx.commit().await?;
            Ok(end)
        })
    }

    /// The source has released the partition: the committed move is done.
    pub async fn move_finish(&self, partition: Uuid, generation: u64) -> Result<(), ClusterError> {
        retry!(self, "finish a move", |c| async {
            c.execute(
                "DELETE FROM migration WHERE partition = $1 AND generation = $2 AND state = 'committed'",
                &[&partition, &i(generation)?],
            )
            .await
            .map_err(ClusterError::from)
        })?;
        Ok(())
    }
}

/// The first TCP server (host, port) a catalog URL names; `None` when it
/// names only unix sockets or does not parse.
pub fn catalog_server(url: &str) -> Option<(String, u16)> {
    let cfg: tokio_postgres::Config = url.parse().ok()?;
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    cfg.get_hosts().iter().find_map(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => Some((name.clone(), port)),
        _ => None,
    })
}
