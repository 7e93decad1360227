//! A guest that asks to be forked (`brood-agent fork-point`) announces a
//! point on its agent channel; the partition then becomes a template named
//! after itself, with the default number of warm children.

use std::sync::Arc;
use std::time::Duration;

use brood_engine::EngineError;
use brood_ledger::RunState;
use tracing::{info, warn};
use uuid::Uuid;

use super::DEFAULT_WARM;
use super::freeze::{Shape, freeze};
use crate::host::{Hooks, Host, Running, chain};

/// Watches each running VM's agent for a fork point.
#[derive(Debug, Default)]
pub struct ForkPoints;

impl Hooks for ForkPoints {
    fn on_running(&self, host: &Arc<Host>, uuid: Uuid, vm: &Arc<Running>) {
        // A service-pool member's points are its pool's (its trigger point).
        if crate::pool::claims_points(host, uuid) {
            return;
        }
        let Ok(agent) = vm.vm.agent().cloned() else {
            return;
        };
        let (host, running) = (host.clone(), vm.clone());
        tokio::spawn(async move {
            // A clone of a service pool's template: its points are its pool's.
            if crate::pool::clone::is_pool_clone(&host, uuid).await {
                return;
            }
            loop {
                let point = tokio::select! {
                    _ = running.vm.wait_exit() => return,
                    p = agent.next_point(Duration::from_secs(3600)) => p,
                };
                match point {
                    Ok(p) if p.name == brood_proto::FORK_POINT => {
                        let lock = host.registry.lock(uuid);
                        let _g = lock.lock().await;
                        let Ok(rec) = host.reload(uuid).await else {
                            return;
                        };
                        if rec.run_state != RunState::Running || rec.pid != Some(running.vm.pid()) {
                            return;
                        }
                        let name = rec.name.clone();
                        match freeze(
                            &host,
                            "agent",
                            rec,
                            running.clone(),
                            p.seq,
                            Shape {
                                warm: DEFAULT_WARM,
                                ..Shape::default()
                            },
                        )
                        .await
                        {
                            Ok(_) => {
                                info!(partition = %name, "became a template at the guest's request")
                            }
                            Err(e) => {
                                warn!(partition = %name, "the guest asked to be a template; that failed: {}", chain(&e))
                            }
                        }
                        return;
                    }
                    Ok(p) => {
                        info!(partition = %uuid, point = ?p.name, "the guest announced a point nobody waits for");
                    }
                    Err(EngineError::Timeout { .. }) => {}
                    Err(_) => return,
                }
            }
        });
    }
}
