//! `--autostart`: when broodd starts (after reconciling with the VMs still
//! running), it starts every stopped or crashed partition whose active
//! configuration asks for it, as libvirt does for autostart domains. A
//! start that fails is logged and leaves the partition as it was.

use std::sync::Arc;

use brood_ledger::RunState;
use tracing::{info, warn};

use crate::host::{Host, chain};

/// Starts the autostart partitions in the background.
pub fn spawn(host: &Arc<Host>) {
    let host = host.clone();
    tokio::spawn(async move {
        let recs = match host.ledger.partitions(None, 100_000).await {
            Ok(r) => r,
            Err(e) => {
                warn!("autostart: list the partitions: {}", chain(&e));
                return;
            }
        };
        for rec in recs {
            if !matches!(rec.run_state, RunState::Stopped | RunState::Crashed) {
                continue;
            }
            let wants = crate::host::config::active_config(&rec)
                .map(|c| c.policy.autostart)
                .unwrap_or(false);
            if !wants {
                continue;
            }
            match super::lifecycle::start(&host, "autostart", rec.uuid).await {
                Ok(_) => info!(vm = %rec.name, "autostart: started"),
                Err(e) => warn!(vm = %rec.name, "autostart: start failed: {}", chain(&e)),
            }
        }
    });
}
