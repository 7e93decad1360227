//! Networks: subnets in network zones, each zone served by a switch I/O
//! partition (`crate::io`). A NIC names a network as it would name a
//! bridge (`--nic NAME`); the ledger opens a channel for it when its
//! partition starts, with the address the ledger picks, and closes it when
//! the partition stops. Here: creating and deleting networks (and the
//! host's gateway tap), the engine backend of a NIC on a network, the
//! switch's configuration derived from the channels, and the guest's
//! address, given through its agent once it is up. NAT networks'
//! nftables table and published ports: `nat`.

pub mod nat;

use std::sync::Arc;
use std::time::Duration;

use brood_api as api;
use brood_engine::{NicBackend, VmSpec};
use brood_ledger::{NetOp, NetworkRecord, Op, Subnet, Tx, switch_name};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::host::{Hooks, Host, HostError, HostResult, Running};
pub use crate::io::switch::{members, tap_name};

/// Longest network name: its gateway tap is `bn-NAME`, and an interface
/// name has at most 15 characters.
pub const MAX_NAME: usize = 12;
/// The zone of a network created without one.
pub const DEFAULT_ZONE: &str = "default";
/// How long a guest's agent is waited for before its address is given.
const AGENT_READY: Duration = Duration::from_secs(180);

fn check_name(name: &str) -> HostResult<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(&c));
    if !ok {
        return Err(HostError::invalid(format!(
            "network name {name:?} must be 1-{MAX_NAME} characters of a-z, 0-9, '_', '.', '-'"
        )));
    }
    if name == "user" || name == crate::convert::USER_UNRESTRICTED {
        return Err(HostError::invalid(format!(
            "network name {name:?} is QEMU's user network: pick another name"
        )));
    }
    // In this network namespace (not sysfs, which may show another's).
    if nix::net::if_::if_nametoindex(name).is_ok() {
        return Err(HostError::invalid(format!(
            "network name {name:?} is a host interface (a NIC naming it would mean that bridge): pick another name"
        )));
    }
    Ok(())
}

async fn ip(args: &[&str]) -> HostResult<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| HostError::io("run ip (install iproute2)", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HostError::io(
            format!("ip {}", args.join(" ")),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        ))
    }
}

/// Creates the persistent gateway tap of a network, with the gateway address.
async fn add_gateway(net: &NetworkRecord, subnet: Subnet) -> HostResult<()> {
    let tap = tap_name(&net.name);
    let addr = format!("{}/{}", subnet.gateway(), subnet.prefix);
    ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).await?;
    let rest = async {
        ip(&["addr", "add", &addr, "dev", &tap]).await?;
        ip(&["link", "set", &tap, "up"]).await
    };
    if let Err(e) = rest.await {
        let _ = ip(&["link", "del", &tap]).await;
        return Err(e);
    }
    Ok(())
}

/// Creates a network (and its zone's switch, started at once).
pub async fn create(host: &Arc<Host>, req: api::NetworkCreateRequest) -> HostResult<api::Network> {
    check_name(&req.name)?;
    let subnet: Subnet = req.subnet.parse().map_err(HostError::invalid)?;
    let zone = req.zone.clone().unwrap_or_else(|| DEFAULT_ZONE.into());
    if req.nat {
        nat::check_new(host, subnet).await?;
    }
    host.ledger
        .commit(Tx::new(
            "api",
            format!("create network {} ({subnet}, zone {zone})", req.name),
            vec![Op::Net(NetOp::CreateNetwork {
                name: req.name.clone(),
                zone: zone.clone(),
                subnet: subnet.to_string(),
                // NAT routes through the host's gateway address.
                gateway: req.gateway || req.nat,
                nat: req.nat,
            })],
        ))
        .await?;
    let rec = host.ledger.network(&req.name).await?.ok_or_else(|| {
        HostError::corrupt(
            format!("network {}", req.name),
            "not found right after it was created",
        )
    })?;
    let undo = |e: HostError| async {
        let _ = host
            .ledger
            .commit(Tx::new(
                "broodd",
                format!("undo create network {}", req.name),
                vec![Op::Net(NetOp::DeleteNetwork {
                    name: req.name.clone(),
                })],
            ))
            .await;
        e
    };
    if rec.gateway
        && let Err(e) = add_gateway(&rec, subnet).await
    {
        return Err(undo(e).await);
    }
    if let Err(e) = crate::io::ensure(host, &switch_name(&zone)).await {
        if rec.gateway {
            let _ = ip(&["link", "del", &tap_name(&rec.name)]).await;
        }
        return Err(undo(e).await);
    }
    if rec.nat
        && let Err(e) = nat::sync(host).await
    {
        let _ = ip(&["link", "del", &tap_name(&rec.name)]).await;
        let e = undo(e).await;
        if let Err(again) = nat::sync(host).await {
            warn!(network = %rec.name, "remove its NAT rules again: {}", crate::host::chain(&again));
        }
        return Err(e);
    }
    info!(network = %rec.name, %subnet, zone = %zone, "network created");
    show(host, &req.name).await
}

/// Deletes a network; refused while NICs use it.
pub async fn delete(host: &Arc<Host>, name: &str) -> HostResult<()> {
    let rec = find(host, name).await?;
    host.ledger
        .commit(Tx::new(
            "api",
            format!("delete network {name}"),
            vec![Op::Net(NetOp::DeleteNetwork { name: name.into() })],
        ))
        .await?;
    if rec.gateway {
        let _ = ip(&["link", "del", &tap_name(name)]).await;
    }
    if rec.nat
        && let Err(e) = nat::sync(host).await
    {
        warn!(network = %name, "remove its NAT rules: {}", crate::host::chain(&e));
    }
    let switch = switch_name(&rec.zone);
    if host.ledger.io_partition(&switch).await?.is_none() {
        crate::io::forget(host, &switch).await;
    }
    Ok(())
}

async fn find(host: &Host, name: &str) -> HostResult<NetworkRecord> {
    host.ledger.network(name).await?.ok_or_else(|| {
        HostError::NotFound(format!(
            "no network named {name:?}: `brood network list` shows the networks"
        ))
    })
}

/// The names of the brood networks (a NIC may name one instead of a bridge).
pub async fn names(host: &Host) -> HostResult<std::collections::BTreeSet<String>> {
    Ok(host
        .ledger
        .networks()
        .await?
        .into_iter()
        .map(|n| n.name)
        .collect())
}

fn render(rec: NetworkRecord, members: Vec<api::NetworkMember>) -> api::Network {
    let gateway = rec
        .gateway
        .then(|| {
            rec.subnet
                .parse::<Subnet>()
                .ok()
                .map(|s| s.gateway().to_string())
        })
        .flatten();
    api::Network {
        io_partition: switch_name(&rec.zone),
        gateway,
        members,
        name: rec.name,
        zone: rec.zone,
        subnet: rec.subnet,
        nat: rec.nat,
        created_at: rec.created_at,
    }
}

async fn members_of(host: &Host, network: &str) -> HostResult<Vec<api::NetworkMember>> {
    let on: Vec<(Uuid, u32)> = host
        .ledger
        .channels()
        .await?
        .into_iter()
        .filter(|c| c.network == network)
        .map(|c| (c.partition, c.nic))
        .collect();
    Ok(members(host)
        .await?
        .into_iter()
        .map(|(_, m)| m)
        .filter(|m| on.contains(&(m.uuid, m.nic)))
        .collect())
}

/// One network.
pub async fn show(host: &Host, name: &str) -> HostResult<api::Network> {
    let rec = find(host, name).await?;
    let members = members_of(host, name).await?;
    Ok(render(rec, members))
}

/// Every network.
pub async fn list(host: &Host) -> HostResult<api::NetworkList> {
    let mut items = Vec::new();
    for rec in host.ledger.networks().await? {
        let members = members_of(host, &rec.name).await?;
        items.push(render(rec, members));
    }
    Ok(api::NetworkList { items })
}

/// Makes the NICs of `spec` that have a channel (a NIC on a network)
/// switch ports, and makes sure their switches run (one stopped on purpose
/// is started again: its VMs come after it). The partition is `starting`,
/// so its channels are open.
pub async fn use_channels(host: &Arc<Host>, uuid: Uuid, spec: &mut VmSpec) -> HostResult<()> {
    for c in host.ledger.channels().await? {
        if c.partition != uuid {
            continue;
        }
        crate::io::ensure(host, &c.io_partition).await?;
        let i = usize::try_from(c.nic).unwrap_or(usize::MAX);
        if let Some(n) = spec.nics.get_mut(i) {
            n.backend = NicBackend::Switch;
        }
    }
    Ok(())
}

/// The op that opens the channels of a guest's NICs on brood networks
/// (with their bandwidth caps), in the transaction that starts it.
pub fn open_op(partition: Uuid, nics: &[api::NicConfig]) -> Op {
    Op::Net(brood_ledger::NetOp::OpenChannels {
        partition,
        nics: nics.iter().map(|n| n.network.clone()).collect(),
        mbps: nics.iter().map(|n| n.mbps).collect(),
    })
}

/// The agent of running VM `vm`, once it is ready (at most `AGENT_READY`).
pub async fn ready_agent(vm: &Running) -> HostResult<&brood_engine::AgentClient> {
    let agent = vm
        .vm
        .agent()
        .map_err(|e| HostError::engine("reach the guest agent", e))?;
    agent
        .wait_ready(AGENT_READY)
        .await
        .map_err(|e| HostError::engine("wait for the guest agent", e))?;
    Ok(agent)
}

/// The channels (brood network NICs) of partition `uuid`, by NIC.
pub async fn channels_of(host: &Host, uuid: Uuid) -> HostResult<Vec<brood_ledger::ChannelRecord>> {
    let mut c: Vec<_> = host
        .ledger
        .channels()
        .await?
        .into_iter()
        .filter(|c| c.partition == uuid)
        .collect();
    c.sort_by_key(|c| c.nic);
    Ok(c)
}

/// Gives a guest the addresses of its channels through its agent.
async fn give_addresses(host: Arc<Host>, uuid: Uuid, vm: Arc<Running>) -> HostResult<()> {
    let channels = channels_of(&host, uuid).await?;
    if channels.is_empty() {
        return Ok(());
    }
    let agent = ready_agent(&vm).await?;
    for c in channels {
        let net = find(&host, &c.network).await?;
        let subnet: Subnet = net
            .subnet
            .parse()
            .map_err(|e: String| HostError::corrupt(format!("network {}", net.name), e))?;
        let config = brood_proto::Ipv4Config {
            address: c.address.octets(),
            prefix: subnet.prefix,
            gateway: net.gateway.then(|| subnet.gateway().octets()),
        };
        agent.set_ipv4(c.nic, config).await.map_err(|e| {
            HostError::engine(format!("give NIC {} address {}", c.nic, c.address), e)
        })?;
        if net.nat {
            nat::give_resolver(
                agent,
                subnet.gateway(),
                "the NAT network's gateway forwards DNS",
            )
            .await?;
        }
        debug!(vm = %uuid, nic = c.nic, address = %c.address, "address given");
    }
    Ok(())
}

fn nudge_all(host: &Host) {
    let io = host.feature::<crate::io::IoPartitions>();
    io.nudge_all();
}

/// Keeps switches and guests' addresses in step with VMs starting and ending.
#[derive(Debug, Default)]
pub struct NetworkHooks;

impl Hooks for NetworkHooks {
    fn on_running(&self, host: &Arc<Host>, uuid: Uuid, vm: &Arc<Running>) {
        nudge_all(host);
        let (host, vm) = (host.clone(), vm.clone());
        tokio::spawn(async move {
            if let Err(e) = give_addresses(host, uuid, vm).await {
                warn!(vm = %uuid, "give the guest its network addresses: {}", crate::host::chain(&e));
            }
        });
    }

    fn on_exit(&self, host: &Arc<Host>, _uuid: Uuid, _ended_as: brood_ledger::RunState) {
        nudge_all(host);
    }
}
