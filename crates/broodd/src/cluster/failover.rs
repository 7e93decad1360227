//! A host's part in host failure, on every heartbeat tick:
//!
//! 1. Fence ([`super::fence::sweep`]): local copies of partitions the
//!    catalog now places on another host are stopped and removed.
//! 2. Publish: the definition of each partition this host holds goes to the
//!    catalog (`partition_def.spec`): its configurations, the active one,
//!    and whether it runs. A partition is published as movable only when it
//!    needs nothing of this host's own: a plain partition without disks,
//!    started from the guest image every host has (`--image`). One with
//!    disks is published as not movable (its qcow2 files are in this
//!    host's data directory): an operations service leaves it where it is,
//!    waiting for the host to come back, and says so.
//! 3. Arrive: a placement an operations service moved here, or one
//!    `brood vm create --place` made here from another host (not held
//!    yet, with a definition), is defined and, if it ran (or was to
//!    start), started here, as a job
//!    of kind `partition.define.start` (or `partition.define`) by actor
//!    `failover`; the catalog adopts it by name at the next reconcile.
//!
//! The operations service that decides the moves is `ops.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use brood_api as api;
use brood_cluster::ClusterError;
use brood_ledger::PartitionRecord;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::Member;
use crate::host::config::configs_of;
use crate::host::{Host, Kind};
use crate::job::{self, Done, Submit};

/// Most bytes of a published definition taken from the catalog.
const MAX_SPEC_BYTES: usize = 256 * 1024;

/// What the loop remembers between ticks.
#[derive(Debug, Default)]
struct State {
    /// The last definition published per local partition.
    published: HashMap<uuid::Uuid, Value>,
    /// Names being defined here now.
    arriving: Arc<Mutex<HashSet<String>>>,
    /// Refusals already logged, by name.
    logged: HashSet<String>,
}

/// Runs the three steps on every heartbeat tick until broodd stops.
pub fn spawn(host: Arc<Host>, m: Arc<Member>) {
    tokio::spawn(async move {
        let mut st = State::default();
        let mut tick = tokio::time::interval(m.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !host.is_stopping() {
            tick.tick().await;
            if let Err(e) = once(&host, &m, &mut st).await {
                warn!("failover tick: {e} (tried again)");
            }
        }
    });
}

async fn once(host: &Arc<Host>, m: &Arc<Member>, st: &mut State) -> Result<(), ClusterError> {
    super::fence::sweep(host, m).await?;
    publish(host, m, st).await?;
    arrive(host, m, st).await
}

/// The definition published for a partition, or `None` for one that
/// cannot start on another host.
pub fn spec_of(rec: &PartitionRecord) -> Option<Value> {
    if Kind::of(rec) != Kind::Plain || !rec.stage.can_start() {
        return None;
    }
    let configs = configs_of(rec).ok()?;
    if configs.values().any(|c| !c.disks.is_empty()) {
        return None;
    }
    let req = api::DefineRequest {
        name: rec.name.clone(),
        configs,
        active_config: Some(rec.active_config.clone()),
        start: rec.run_state.is_active(),
        // A published port is a port of the old host: it does not move.
        publish: Vec::new(),
    };
    serde_json::to_value(req).ok()
}

async fn publish(host: &Host, m: &Member, st: &mut State) -> Result<(), ClusterError> {
    let parts = host
        .ledger
        .all_partitions()
        .await
        .map_err(|e| ClusterError::Invalid(format!("read the ledger's partitions: {e}")))?;
    let here: HashSet<uuid::Uuid> = parts.iter().map(|p| p.uuid).collect();
    st.published.retain(|u, _| here.contains(u));
    for rec in parts {
        if Kind::of(&rec) == Kind::Template {
            continue;
        }
        let spec = spec_of(&rec).unwrap_or(Value::Null);
        if st.published.get(&rec.uuid) == Some(&spec) {
            continue;
        }
        let value = (!spec.is_null()).then_some(&spec);
        // Not placed here yet (the reconcile has not run): next tick.
        if m.catalog.publish_spec(&m.cfg.name, rec.uuid, value).await? {
            st.published.insert(rec.uuid, spec);
        }
    }
    Ok(())
}

async fn arrive(host: &Arc<Host>, m: &Arc<Member>, st: &mut State) -> Result<(), ClusterError> {
    for (p, spec) in m.catalog.arriving(&m.cfg.name).await? {
        if st
            .arriving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&p.name)
        {
            continue;
        }
        let local = host
            .ledger
            .partition_by_name(&p.name)
            .await
            .map_err(|e| ClusterError::Invalid(format!("read the ledger: {e}")))?;
        if local.is_some() {
            // The reconcile adopts it by name.
            continue;
        }
        let req = match parse_spec(&p.name, &spec) {
            Ok(r) => r,
            Err(why) => {
                if st.logged.insert(p.name.clone()) {
                    warn!(partition = %p.name, "cannot start it here: {why}");
                }
                continue;
            }
        };
        info!(
            partition = %p.name,
            generation = p.generation,
            start = req.start,
            "placed here (by a failover, or created from another host): defining it from the catalog"
        );
        st.arriving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(p.name.clone());
        let (host, arriving, name) = (host.clone(), st.arriving.clone(), p.name.clone());
        let m = m.clone();
        // Never held and at its first generation: made by `vm create
        // --place` on some host, not moved here by a failover.
        let created = p.generation == 1 && p.local_id.is_none();
        tokio::spawn(async move {
            let r = define_here(&host, req).await;
            match r {
                // A definition this host refuses will not pass here later:
                // the placement is withdrawn, so it holds nothing (the
                // command that made it says so).
                Err(e)
                    if created
                        && matches!(
                            e.status,
                            axum::http::StatusCode::BAD_REQUEST | axum::http::StatusCode::NOT_FOUND
                        ) =>
                {
                    warn!(partition = %name, "cannot create it here, withdrawing its placement: {}", e.message);
                    if let Err(w) = m.catalog.withdraw_unheld(p.partition, p.generation).await {
                        warn!(partition = %name, "withdraw its placement: {w}");
                    }
                }
                Err(e) => {
                    warn!(partition = %name, "failover start failed (tried again): {}", e.message);
                }
                Ok(()) => {}
            }
            arriving
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&name);
        });
    }
    Ok(())
}

/// A published definition, checked: bounded, of the partition's own name.
fn parse_spec(name: &str, spec: &Value) -> Result<api::DefineRequest, String> {
    let text = spec.to_string();
    if text.len() > MAX_SPEC_BYTES {
        return Err(format!(
            "its definition in the catalog is {} bytes, more than {MAX_SPEC_BYTES}",
            text.len()
        ));
    }
    let req: api::DefineRequest = serde_json::from_value(spec.clone())
        .map_err(|e| format!("its definition in the catalog does not parse: {e}"))?;
    if req.name != name {
        return Err(format!(
            "its definition in the catalog names {:?}, not {name:?}",
            req.name
        ));
    }
    Ok(req)
}

async fn define_here(
    host: &Arc<Host>,
    req: api::DefineRequest,
) -> crate::api::error::ApiResult<()> {
    let s = Submit {
        kind: if req.start {
            "partition.define.start"
        } else {
            "partition.define"
        }
        .into(),
        target: req.name.clone(),
        unit: None,
        priority: req
            .configs
            .values()
            .next()
            .map_or(0, |c| i64::from(c.policy.priority)),
        params: json!({"partition": req.name, "start": req.start, "failover": true}),
    };
    job::on_host(host, "failover", s, true, move |d, actor| async move {
        crate::partition::define::define(&d, &actor, None, req).await?;
        Ok(Done::empty())
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_from_the_catalog_is_bounded_and_of_its_own_name() {
        let ok = json!({"name": "web", "configs": {"default": {"vcpus": 1, "memory_mib": 256}}, "start": true});
        let r = parse_spec("web", &ok).unwrap();
        assert!(r.start);
        assert!(parse_spec("db", &ok).unwrap_err().contains("names"));
        assert!(parse_spec("web", &json!({"name": 3})).is_err());
        let huge = json!({"name": "web", "configs": {}, "x": "a".repeat(MAX_SPEC_BYTES)});
        assert!(parse_spec("web", &huge).unwrap_err().contains("bytes"));
    }
}
