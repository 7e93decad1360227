//! One task per live VM waits for it to end. An end nobody asked for (a
//! crash, or the guest powering itself off) is recorded by `settle`, which
//! gives the partition's active share back; then the features' hooks run
//! (the restart policy is one).

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use uuid::Uuid;

use super::Host;
use super::registry::Running;
use super::runstate::{Settle, exit_state};

/// A VM that ran this long before ending starts its restart backoff afresh.
const STABLE_RUN: Duration = Duration::from_secs(300);

/// Watches a live VM until it ends.
pub(super) fn spawn(host: Arc<Host>, uuid: Uuid, running: Arc<Running>) {
    tokio::spawn(async move {
        let exit = running.vm.wait_exit().await;
        if host.is_stopping() || running.exit_expected() {
            return;
        }
        let lock = host.registry.lock(uuid);
        let guard = lock.lock().await;
        // An operation that held the lock may have handled it meanwhile.
        if running.exit_expected() {
            return;
        }
        let Ok(rec) = host.reload(uuid).await else {
            return;
        };
        if !rec.run_state.is_active() || rec.pid != Some(running.vm.pid()) {
            return;
        }
        host.preserve_console(uuid, &running).await;
        host.registry.remove(uuid);
        let to = exit_state(&exit);
        let how = Settle {
            to,
            last_exit: Some(exit.to_string()),
            reset_restarts: running.since.elapsed() >= STABLE_RUN,
            lineage: None,
            return_pool_values: false,
        };
        match host.settle("supervisor", &rec, how).await {
            Ok(r) => info!(partition = %r.name, "VM ended: {exit}"),
            Err(e) => {
                warn!(partition = %rec.name, "recording the end of its VM failed: {}", super::chain(&e));
                return;
            }
        }
        drop(guard);
        for h in host.hooks() {
            h.on_exit(&host, uuid, to);
        }
    });
}
