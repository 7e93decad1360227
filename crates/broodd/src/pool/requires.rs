//! Services a partition requires (`requires` in its configuration, `brood
//! vm create --requires dns,log`): checked against the known classes when
//! it is defined, and at every start one service of each class that does
//! not serve it yet is requested for it, as `POST /v1/services` with `for`
//! would. A `dns` service is given the guest's name and address (`NAME.
//! <domain>`), and becomes the guest's resolver where the guest reaches
//! it (its domain's address on a brood network they share, or its `ip`).
//! If a request fails, the services this start requested are released and
//! the start fails (the caller stops the VM again). Once the partition is
//! deleted, a service that served only it is released by its pool's
//! `unused` policy (`teardown`, the default: `refill.rs`).

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;

use brood_api as api;
use brood_ledger::{PartitionRecord, ServiceRecord, ServiceState};
use tracing::{info, warn};

use super::{class, request};
use crate::host::{Host, HostError, HostResult, chain};

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
        let mut req = api::service::ServiceRequest {
            class: class.clone(),
            guests: vec![rec.name.clone()],
            ..api::service::ServiceRequest::default()
        };
        // A DNS domain knows its guest by name: NAME.<domain> is its
        // address on its first brood network.
        if class == "dns"
            && let Some(c) = crate::network::channels_of(host, rec.uuid).await?.first()
        {
            req.set
                .insert("hosts".into(), format!("{}={}", rec.name, c.address));
        }
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

/// Where the guest `guest` reaches service `s`: its domain's address on a
/// brood network the guest is on too, else its `ip` setting.
async fn reach(host: &Host, guest: uuid::Uuid, s: &ServiceRecord) -> HostResult<Option<Ipv4Addr>> {
    let mine: Vec<String> = crate::network::channels_of(host, guest)
        .await?
        .into_iter()
        .map(|c| c.network)
        .collect();
    let shared = crate::network::channels_of(host, s.member)
        .await?
        .into_iter()
        .find(|c| mine.contains(&c.network));
    Ok(shared.map(|c| c.address).or_else(|| {
        s.settings
            .get("ip")
            .and_then(|ip| ip.split('/').next()?.parse().ok())
    }))
}

/// Points the guest's resolver at a `dns` service serving it that it can
/// reach, if there is one.
async fn point_resolver(host: &Arc<Host>, rec: &PartitionRecord) -> HostResult<()> {
    let mut address = None;
    for s in host.ledger.services_of_guest(rec.uuid).await? {
        if s.class != "dns" || s.state != ServiceState::Ready {
            continue;
        }
        address = reach(host, rec.uuid, &s).await?;
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
    let agent = crate::network::ready_agent(&running).await?;
    crate::network::nat::give_resolver(agent, address, "the partition requires dns").await?;
    info!(partition = %rec.name, resolver = %address, "resolver is the dns service");
    Ok(())
}
