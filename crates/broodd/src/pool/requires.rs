//! Services a partition requires (`requires` in its configuration, `brood
//! vm create --requires dns,log`): checked against the known classes when
//! it is defined, and at every start one service of each class that does
//! not serve it yet is requested for it, as `POST /v1/services` with `for`
//! would. A `dns` service is given the guest's name and address (`NAME.
//! <domain>`), and becomes the guest's resolver where the guest reaches
//! it (its domain's address on a brood network they share, or its `ip`);
//! a `log` service receives the guest's syslog ([`forward_syslog`]).
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
    if let Err(e) = forward_syslog(host, rec).await {
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

/// The first ready service of `class` serving `rec` that it can reach, and
/// where.
async fn reachable(
    host: &Host,
    rec: &PartitionRecord,
    class: &str,
) -> HostResult<Option<(ServiceRecord, Ipv4Addr)>> {
    for s in host.ledger.services_of_guest(rec.uuid).await? {
        if s.class != class || s.state != ServiceState::Ready {
            continue;
        }
        if let Some(address) = reach(host, rec.uuid, &s).await? {
            return Ok(Some((s, address)));
        }
    }
    Ok(None)
}

/// The agent of the running partition `rec`.
async fn agent_of(host: &Host, rec: &PartitionRecord) -> HostResult<brood_engine::AgentClient> {
    let running = host.registry.running(rec.uuid).ok_or_else(|| {
        HostError::transition(format!(
            "{} stopped while its services were given",
            rec.name
        ))
    })?;
    crate::network::ready_agent(&running).await.cloned()
}

/// Points the guest's resolver at a `dns` service serving it that it can
/// reach, if there is one.
async fn point_resolver(host: &Arc<Host>, rec: &PartitionRecord) -> HostResult<()> {
    let Some((_, address)) = reachable(host, rec, "dns").await? else {
        return Ok(());
    };
    let agent = agent_of(host, rec).await?;
    crate::network::nat::give_resolver(&agent, address, "the partition requires dns").await?;
    info!(partition = %rec.name, resolver = %address, "resolver is the dns service");
    Ok(())
}

/// The guest's side of syslog forwarding, run by its agent with `$1` the
/// sink (`ADDRESS:PORT`, UDP). A systemd guest with rsyslog gets a drop-in
/// that forwards everything and a restart of rsyslog; a guest whose init is
/// brood's agent gets busybox's syslogd on `/dev/log`, forwarding and also
/// logging locally (`/var/log/messages`), in place of the one a previous
/// forward started. Exit 3 says the guest has neither.
const FORWARD_SYSLOG: &str = r#"set -e
if [ -d /run/systemd/system ] && command -v rsyslogd >/dev/null 2>&1; then
    mkdir -p /etc/rsyslog.d
    printf '# written by brood: the partition requires log\n*.* @%s\n' "$1" \
        > /etc/rsyslog.d/90-brood-log.conf
    systemctl restart rsyslog
elif busybox syslogd --help >/dev/null 2>&1; then
    if [ -f /run/brood-syslogd.pid ]; then
        kill "$(cat /run/brood-syslogd.pid)" 2>/dev/null || true
    fi
    mkdir -p /var/log
    setsid busybox syslogd -n -L -R "$1" </dev/null >/dev/null 2>&1 &
    echo $! > /run/brood-syslogd.pid
else
    echo "this guest has neither rsyslog under systemd nor busybox's syslogd: install rsyslog (or busybox) in its image" >&2
    exit 3
fi"#;

/// Forwards the guest's syslog to a `log` service serving it that it can
/// reach, if there is one: UDP to the service's `port` (514 unless set).
/// A guest that cannot forward fails the start, with the reason.
async fn forward_syslog(host: &Arc<Host>, rec: &PartitionRecord) -> HostResult<()> {
    let Some((service, address)) = reachable(host, rec, "log").await? else {
        return Ok(());
    };
    let port: u16 = service
        .settings
        .get("port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(514);
    let sink = format!("{address}:{port}");
    let agent = agent_of(host, rec).await?;
    let req = brood_proto::ExecRequest {
        command: brood_proto::Command::Argv(vec![
            "/bin/sh".into(),
            "-c".into(),
            FORWARD_SYSLOG.into(),
            "forward-syslog".into(),
            sink.clone(),
        ]),
        timeout_ms: Some(30_000),
        output_limit: 4096,
        ..brood_proto::ExecRequest::shell("")
    };
    let out = agent
        .exec(&req)
        .await
        .map_err(|e| HostError::engine("forward the guest's syslog", e))?;
    if out.status.code != Some(0) {
        return Err(HostError::conflict(format!(
            "{} requires log, and its syslog could not be forwarded to {} at {sink}: {}",
            rec.name,
            service.name,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    info!(partition = %rec.name, sink = %sink, service = %service.name, "syslog is forwarded to the log service");
    Ok(())
}
