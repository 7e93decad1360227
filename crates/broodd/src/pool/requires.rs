//! Services a partition requires (`requires` in its configuration, `brood
//! vm create --requires dns,log`): checked against the known classes when
//! it is defined, and at every start one service of each class that does
//! not serve it yet is requested for it, as `POST /v1/services` with `for`
//! would. A `dns` service with an address becomes the guest's resolver.
//! If a request fails, the services this start requested are released and
//! the start fails (the caller stops the VM again). Deleting the partition
//! releases every service that served only it (`lifecycle::delete`).

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use brood_api as api;
use brood_ledger::{PartitionRecord, ServiceState};
use tracing::{info, warn};

use super::{class, request};
use crate::host::{Host, HostError, HostResult, chain};

/// How long a start waits for the guest's agent before it points the
/// guest's resolver at its DNS service.
const AGENT_READY: Duration = Duration::from_secs(120);

/// Refuses a class no recipe defines, naming the known ones.
pub async fn check<'a>(
    host: &Host,
    configs: impl Iterator<Item = &'a api::PartitionConfig>,
) -> HostResult<()> {
    let known = class::names(host).await;
    for c in configs {
        if let Some(bad) = c.requires.iter().find(|r| !known.contains(r)) {
            return Err(HostError::invalid(format!(
                "requires {bad:?}: no class {bad:?}; known classes are {} (`brood service classes`)",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// [`ensure`], boxed: a request may define and start a pool member, which
/// starts through `lifecycle::start`, which calls this (a cycle of futures
/// only a box with a declared `Send` breaks).
pub fn ensure_boxed<'a>(
    host: &'a Arc<Host>,
    rec: &'a PartitionRecord,
) -> Pin<Box<dyn Future<Output = HostResult<Vec<String>>> + Send + 'a>> {
    Box::pin(ensure(host, rec))
}

/// Gives the running partition `rec` the services its active configuration
/// requires; returns the names of those requested now.
pub async fn ensure(host: &Arc<Host>, rec: &PartitionRecord) -> HostResult<Vec<String>> {
    let config = crate::host::config::active_config(rec)?;
    if config.requires.is_empty() {
        return Ok(Vec::new());
    }
    let serving = host.ledger.services_of_guest(rec.uuid).await?;
    let mut made: Vec<String> = Vec::new();
    for class in &config.requires {
        let has = serving
            .iter()
            .any(|s| &s.class == class && s.state != ServiceState::Failed);
        if has {
            continue;
        }
        let req = api::service::ServiceRequest {
            class: class.clone(),
            guests: vec![rec.name.clone()],
            ..api::service::ServiceRequest::default()
        };
        match request::request(host, req).await {
            Ok(s) => {
                info!(partition = %rec.name, class = %class, service = %s.name, "required service associated");
                made.push(s.name);
            }
            Err(e) => {
                release_all(host, &made).await;
                return Err(HostError::conflict(format!(
                    "{} requires {class}, and no {class} service could be had: {}; \
                     the services this start asked for are released",
                    rec.name,
                    chain(&e)
                )));
            }
        }
    }
    if let Err(e) = point_resolver(host, rec).await {
        release_all(host, &made).await;
        return Err(e);
    }
    Ok(made)
}

/// Releases services `names` (failures are logged: the pool's recovery
/// finishes them).
async fn release_all(host: &Arc<Host>, names: &[String]) {
    for n in names {
        if let Err(e) = request::release(host, n).await {
            warn!(service = %n, "release it after a failed start: {}", chain(&e));
        }
    }
}

/// Points the guest's resolver at the first address of a `dns` service
/// serving it, if there is one.
async fn point_resolver(host: &Arc<Host>, rec: &PartitionRecord) -> HostResult<()> {
    let mut address = None;
    for s in host.ledger.services_of_guest(rec.uuid).await? {
        if s.class != "dns" || s.state != ServiceState::Ready {
            continue;
        }
        let view = request::view(host, &s).await?;
        address = view
            .addresses
            .iter()
            .find_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok());
        if address.is_some() {
            break;
        }
    }
    let Some(address) = address else {
        return Ok(());
    };
    let running = host.registry.running(rec.uuid).ok_or_else(|| {
        HostError::transition(format!(
            "{} stopped while its services were given",
            rec.name
        ))
    })?;
    let agent = running
        .vm
        .agent()
        .map_err(|e| HostError::engine("reach the guest agent", e))?;
    agent
        .wait_ready(AGENT_READY)
        .await
        .map_err(|e| HostError::engine("wait for the guest agent", e))?;
    let text = format!("# written by brood: the partition requires dns\nnameserver {address}\n");
    agent
        .write_file("/etc/resolv.conf", text.as_bytes(), 0o644)
        .await
        .map_err(|e| HostError::engine("point the guest's resolver at its dns service", e))?;
    info!(partition = %rec.name, resolver = %address, "resolver is the dns service");
    Ok(())
}
