//! Defining a partition: one transaction records it with its disk space
//! reserved and `provision` pending; its disks are created; then it is
//! operating. With `start`, the partition stays marked `create` until its
//! VM runs, so a failed start (or a crash of broodd before it completes)
//! removes it again, as the API promises.

use std::sync::Arc;

use brood_api as api;
use brood_ledger::{
    JsonText, Op, PartitionPatch, PartitionRecord, PendingOp, Resources, RunState, Stage, Tx,
};
use tracing::warn;
use uuid::Uuid;

use super::lifecycle;
use crate::convert;
use crate::host::config::{all_disks, configs_of, demand};
use crate::host::{Host, HostError, HostResult, chain, disk};
use crate::wire;

/// Defines a partition, and starts it with `req.start`.
pub async fn define(
    host: &Arc<Host>,
    actor: &str,
    unit: Option<Uuid>,
    req: api::DefineRequest,
) -> HostResult<PartitionRecord> {
    let networks = crate::network::names(host).await?;
    let active = convert::validate_define_on(&req, &networks)?;
    crate::host::image::check(&host.paths, &req.configs)?;
    if req.start && crate::host::boot_disk::of(&req.configs).is_some() {
        return Err(HostError::invalid(
            "a partition with a boot_disk starts once its disk image is imported: define it without start,              PUT its image to /v1/partitions/NAME/boot-disk, then start it (`brood vm create --disk-image` does all three)",
        ));
    }
    crate::pool::requires::check(host, req.configs.values()).await?;
    let disks = all_disks(&req.configs)?;
    let config = req.configs.get(&active).cloned().unwrap_or_default();
    crate::network::nat::check_publish(host, &config, &req.publish).await?;
    let uuid = Uuid::new_v4();
    let now = wire::now();
    let rec = PartitionRecord {
        uuid,
        name: req.name.clone(),
        stage: Stage::Provisioning,
        run_state: RunState::Stopped,
        active_config: active,
        configs: JsonText::from_serialize(&req.configs)
            .map_err(|e| HostError::corrupt("encode the configurations", e))?,
        // Its image's root disk (the overlay it will have) is a disk too.
        demand: crate::host::root::with_root(
            &host.paths,
            uuid,
            &req.configs,
            demand(&config, &disks),
        )?,
        pid: None,
        pending_op: Some(PendingOp::Provision),
        restart_count: 0,
        last_exit: None,
        created_at: now.clone(),
        updated_at: now,
        generation: 0,
        parent: None,
        lineage: None,
    };
    let disk_share = Resources {
        disk_gib: rec.demand.disk_gib,
        ..Resources::default()
    };
    let mut ops = vec![Op::InsertPartition(rec.clone())];
    // A unit's VM reserves from the unit's allocation (the ledger routes it).
    ops.extend(unit.map(|unit| {
        Op::Unit(brood_ledger::UnitOp::Join {
            partition: uuid,
            unit,
        })
    }));
    ops.extend(Op::reserve(uuid, &disk_share));
    if !req.publish.is_empty() {
        ops.push(Op::Publish(brood_ledger::PublishOp::Set {
            partition: uuid,
            ports: req
                .publish
                .iter()
                .map(crate::network::nat::port_in)
                .collect(),
        }));
    }
    host.ledger
        .commit(Tx {
            actor: actor.into(),
            reason: format!("define {}", req.name),
            ops,
        })
        .await?;
    if !req.publish.is_empty() {
        host.feature::<crate::network::nat::Nat>()
            .record(uuid, &req.publish);
    }
    let then = req.start.then_some(PendingOp::Create);
    {
        let lock = host.registry.lock(uuid);
        let _g = lock.lock().await;
        if let Err(e) = provision(host, actor, uuid, then).await {
            undo(host, actor, uuid, "provisioning failed").await;
            return Err(e);
        }
    }
    if !req.start {
        return host.reload(uuid).await;
    }
    match lifecycle::start(host, actor, uuid).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let lock = host.registry.lock(uuid);
            let _g = lock.lock().await;
            undo(host, actor, uuid, "its start after define failed").await;
            Err(e)
        }
    }
}

/// Removes a partition whose definition did not complete. The caller holds its lock.
async fn undo(host: &Host, actor: &str, uuid: Uuid, why: &str) {
    if let Err(e) = host.remove(actor, uuid, why).await {
        warn!(partition = %uuid, "removing it after {why}: {}", chain(&e));
    }
}

/// Creates a provisioning partition's missing disks and makes it
/// operating, leaving `then` pending. The caller holds its lock.
pub async fn provision(
    host: &Host,
    actor: &str,
    uuid: Uuid,
    then: Option<PendingOp>,
) -> HostResult<PartitionRecord> {
    let rec = host.reload(uuid).await?;
    let disks = all_disks(&configs_of(&rec)?)?;
    let dir = host.paths.disk_dir(uuid);
    if !disks.is_empty() {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
    }
    for (name, size) in &disks {
        let path = host.paths.disk(uuid, name);
        if !path.exists() {
            disk::create(&path, *size).await?;
        }
    }
    crate::host::image::provision_root(&host.paths, uuid, &configs_of(&rec)?).await?;
    let patch = PartitionPatch {
        stage: Some(Stage::Operating),
        pending_op: Some(then),
        ..Default::default()
    };
    host.update(
        actor,
        format!("provisioned {}", rec.name),
        &rec,
        patch,
        Vec::new(),
    )
    .await
}
