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
    change: Option<api::PendingChange>,
    publish: Vec<api::PublishedPort>,
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
    let change = host.feature::<crate::partition::change::Changes>().of(uuid);
    let publish = host.feature::<crate::network::nat::Nat>().published(uuid);
    if let Some(r) = c
        .by_uuid
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&uuid)
        && r.generation == generation
        && r.parent == parent
        && r.change == change
        && r.publish == publish
    {
        return Ok(r.json.clone());
    }
    let mut p = partition_out(rec, &host.paths, parent.clone())?;
    p.pending_change = change.clone();
    p.publish = publish.clone();
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
            change,
            publish,
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
    let mut disks: Vec<api::DiskInfo> = active
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
    // The image's root disk, as charged (`host::root`), listed first: it is /dev/vda.
    if let Ok(root @ 1..) = crate::host::root::root_gib(paths, rec.uuid, &configs) {
        disks.insert(
            0,
            api::DiskInfo {
                name: "image.root".into(),
                path: paths.image_root(rec.uuid).display().to_string(),
                size_gib: root,
            },
        );
    }
    let nics = nics_out(&rec, active);
    Ok(api::Partition {
        name: rec.name,
        uuid: rec.uuid,
        stage: wire::stage_out(rec.stage),
        run_state: wire::run_state_out(rec.run_state),
        active_config: rec.active_config,
        configs,
        pid: rec.pid,
        disks,
        nics,
        pending_change: None,
        last_exit: rec.last_exit,
        restart_count: rec.restart_count,
        pending_op: rec.pending_op.map(|p| p.as_str().to_string()),
        parent,
        fork,
        created_at: rec.created_at,
        updated_at: rec.updated_at,
        publish: Vec::new(),
    })
}

/// The NICs of the active configuration with their real MACs (configured,
/// or derived from the uuid as the engine gets them) and, for a forked
/// child, the address its identity gave its first NIC.
fn nics_out(rec: &PartitionRecord, active: Option<&api::PartitionConfig>) -> Vec<api::NicInfo> {
    let child_ip = match &rec.lineage {
        Some(Lineage::Child(c)) => c.ipv4.clone(),
        _ => None,
    };
    active
        .map(|c| {
            c.nics
                .iter()
                .enumerate()
                .map(|(i, n)| api::NicInfo {
                    network: n.network.clone(),
                    mac: n
                        .mac
                        .as_deref()
                        .and_then(|m| m.parse::<brood_engine::MacAddr>().ok())
                        .unwrap_or_else(|| crate::host::config::stable_mac(rec.uuid, i))
                        .to_string(),
                    address: if i == 0 { child_ip.clone() } else { None },
                })
                .collect()
        })
        .unwrap_or_default()
}
