//! How a forked child starts again after it stopped: a fresh fork from its
//! template with the same identity (new entropy); its overlay is kept if it
//! is persistent and made anew otherwise. It is charged what it was forked
//! with, not its template's whole memory.

use std::sync::Arc;

use async_trait::async_trait;
use brood_engine::BoxedVm;
use brood_ledger::{ChildStatus, Lineage, PartitionRecord, Resources};

use crate::host::{Host, HostError, HostResult, Launcher, Running};
use crate::template::{Templates, Warm, prepare};

/// Resumes a warm child as partition `rec`'s VM: its charge is trued up
/// to what it already uses and its cgroup limit lowered to that charge
/// (a warm child waits with its template's whole charge as its limit), it
/// outlives broodd from now on, and its NICs join their networks.
pub async fn resume(host: &Host, rec: &PartitionRecord, warm: Warm) -> HostResult<BoxedVm> {
    let mut vm = warm.vm;
    if let Err(e) = crate::memory::fit(host, rec, vm.as_ref(), true).await {
        let _ = vm.kill().await;
        return Err(e);
    }
    vm.set_kill_on_drop(false);
    let started = async {
        host.engine.join_networks(vm.as_ref())?;
        vm.resume().await
    }
    .await;
    if let Err(e) = started {
        let _ = vm.kill().await;
        return Err(HostError::engine("start the child", e));
    }
    Ok(vm)
}

/// Starts forked children again.
#[derive(Debug, Default)]
pub struct ChildLauncher;

fn child_of(rec: &PartitionRecord) -> HostResult<&brood_ledger::ChildLineage> {
    rec.lineage
        .as_ref()
        .and_then(Lineage::as_child)
        .ok_or_else(|| {
            HostError::corrupt(
                format!("child {}", rec.name),
                "its fork details are missing from the ledger",
            )
        })
}

#[async_trait]
impl Launcher for ChildLauncher {
    fn demand(&self, rec: &PartitionRecord) -> HostResult<Resources> {
        Ok(rec.demand)
    }

    async fn launch(&self, host: &Arc<Host>, rec: &PartitionRecord) -> HostResult<BoxedVm> {
        let child = child_of(rec)?;
        if child.status == ChildStatus::Failed {
            return Err(HostError::transition(format!(
                "{} failed its identity step ({}) and gave its identity back: delete it and fork again",
                rec.name,
                child.error.as_deref().unwrap_or("no reason recorded")
            )));
        }
        let parent = rec.parent.ok_or_else(|| {
            HostError::corrupt(format!("child {}", rec.name), "it names no template")
        })?;
        let rt = host.feature::<Templates>().get(parent).ok_or_else(|| {
            HostError::transition(format!(
                "the template of {} is gone; the child cannot start again",
                rec.name
            ))
        })?;
        let warm = prepare(host, &rt, rec.uuid, !child.persistent).await?;
        resume(host, rec, warm).await
    }

    async fn after_start(
        &self,
        host: &Arc<Host>,
        rec: PartitionRecord,
        vm: Arc<Running>,
    ) -> HostResult<PartitionRecord> {
        let child = child_of(&rec)?.clone();
        let parent = rec.parent.ok_or_else(|| {
            HostError::corrupt(format!("child {}", rec.name), "it names no template")
        })?;
        let rt = host.feature::<Templates>().get(parent).ok_or_else(|| {
            HostError::transition(format!("the template of {} is gone", rec.name))
        })?;
        let uuid = rec.uuid;
        let out = super::apply_identity(host, "api", &rt, rec, &vm, child, None).await?;
        if out.status == brood_api::ChildStatus::Failed {
            return Err(HostError::Guest(format!(
                "{} started but its identity step failed, so it was stopped again: {}",
                out.name,
                out.error.unwrap_or_default()
            )));
        }
        host.reload(uuid).await
    }
}
