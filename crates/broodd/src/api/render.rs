//! Partitions as the API shows them, rendered to JSON once per generation
//! and kept: every change to a record raises its generation, so a stale
//! rendering is never served, and list and show reuse the bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use brood_api as api;
use brood_ledger::{Lineage, PartitionRecord};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use crate::fork::identity::child_out;
use crate::host::config::configs_of;
use crate::host::{Host, Paths};
use crate::wire;

/// Most renderings kept before the cache starts afresh.
const MAX_CACHED: usize = 100_000;

#[derive(Debug)]
struct Rendered {
    generation: u64,
    parent: Option<String>,
    json: Arc<[u8]>,
}

/// Renderings of partitions by uuid (a feature's shared state).
#[derive(Debug, Default)]
pub struct RenderCache {
    by_uuid: Mutex<HashMap<Uuid, Rendered>>,
}

/// A partition's API JSON, rendered once per generation.
pub fn render(host: &Host, rec: PartitionRecord, parent: Option<String>) -> ApiResult<Arc<[u8]>> {
    let (uuid, generation) = (rec.uuid, rec.generation);
    let c = host.feature::<RenderCache>();
    if let Some(r) = c
        .by_uuid
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&uuid)
        && r.generation == generation
        && r.parent == parent
    {
        return Ok(r.json.clone());
    }
    let p = partition_out(rec, &host.paths, parent.clone())?;
    let json: Arc<[u8]> = serde_json::to_vec(&p)
        .map_err(|e| ApiError::internal("encode a partition", &e))?
        .into();
    let mut m = c.by_uuid.lock().unwrap_or_else(PoisonError::into_inner);
    if m.len() > MAX_CACHED {
        m.clear();
    }
    m.insert(
        uuid,
        Rendered {
            generation,
            parent,
            json: json.clone(),
        },
    );
    Ok(json)
}

/// A record as the API shows it (taken by value: its strings move over);
/// `parent` is the name of the template it was forked from.
pub fn partition_out(
    rec: PartitionRecord,
    paths: &Paths,
    parent: Option<String>,
) -> ApiResult<api::Partition> {
    let configs = configs_of(&rec)?;
    let fork = match &rec.lineage {
        Some(Lineage::Child(c)) => Some(child_out(&rec, c)),
        _ => None,
    };
    let active = configs.get(&rec.active_config);
    let disks = active
        .map(|c| {
            c.disks
                .iter()
                .map(|d| api::DiskInfo {
                    name: d.name.clone(),
                    path: paths.disk(rec.uuid, &d.name).display().to_string(),
                    size_gib: d.size_gib,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(api::Partition {
        name: rec.name,
        uuid: rec.uuid,
        stage: wire::stage_out(rec.stage),
        run_state: wire::run_state_out(rec.run_state),
        active_config: rec.active_config,
        configs,
        pid: rec.pid,
        disks,
        last_exit: rec.last_exit,
        restart_count: rec.restart_count,
        pending_op: rec.pending_op.map(|p| p.as_str().to_string()),
        parent,
        fork,
        created_at: rec.created_at,
        updated_at: rec.updated_at,
    })
}
