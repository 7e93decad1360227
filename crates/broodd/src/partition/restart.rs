//! The restart policy: after a VM ended on its own (and its end was
//! recorded), `on-failure` starts it again after a crash and `always` after
//! any end, with exponential backoff; manual partitions are left alone.

use std::sync::Arc;
use std::time::Duration;

use brood_api::RestartPolicy;
use brood_ledger::{PartitionPatch, RunState, Stage};
use tracing::{info, warn};
use uuid::Uuid;

use super::lifecycle;
use crate::host::config::active_config;
use crate::host::{Hooks, Host, chain};

/// Longest wait between automatic restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Applies each partition's restart policy.
#[derive(Debug, Default)]
pub struct Restarter;

impl Hooks for Restarter {
    fn on_exit(&self, host: &Arc<Host>, uuid: Uuid, ended_as: RunState) {
        tokio::spawn(restart_if_wanted(host.clone(), uuid, ended_as));
    }
}

async fn restart_if_wanted(host: Arc<Host>, uuid: Uuid, ended_as: RunState) {
    let Ok(rec) = host.reload(uuid).await else {
        return;
    };
    let Ok(config) = active_config(&rec) else {
        return;
    };
    let wanted = match config.policy.restart {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => ended_as == RunState::Crashed,
        RestartPolicy::Always => true,
    };
    // Manual partitions are left alone: an administrator holds them.
    if !wanted || rec.stage != Stage::Operating {
        return;
    }
    let delay = Duration::from_secs(1u64 << rec.restart_count.min(6)).min(MAX_BACKOFF);
    info!(partition = %rec.name, "restarting in {delay:?} ({:?} policy)", config.policy.restart);
    tokio::time::sleep(delay).await;
    if host.is_stopping() {
        return;
    }
    let Ok(now) = host.reload(uuid).await else {
        return;
    };
    // Someone started, stopped or changed it during the backoff.
    if now.run_state != ended_as || now.generation != rec.generation {
        return;
    }
    let count = PartitionPatch {
        restart_count: Some(now.restart_count.saturating_add(1)),
        ..Default::default()
    };
    if host
        .update(
            "supervisor",
            format!("restart {}", now.name),
            &now,
            count,
            Vec::new(),
        )
        .await
        .is_err()
    {
        return;
    }
    if let Err(e) = lifecycle::start(&host, "supervisor", uuid).await {
        warn!(partition = %now.name, "automatic restart failed: {}", chain(&e));
    }
}
