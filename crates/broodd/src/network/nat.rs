//! NAT networks and published ports: broodd's own nftables table.
//!
//! A network created with `--nat` has a gateway tap (`bn-NAME`, see
//! `mod.rs`) and the host forwards and masquerades its subnet out of the
//! uplink (the default route's device, resolved at start, or `broodd
//! --uplink DEV`). A VM with a NIC on one may publish host ports
//! (`--publish HOST:GUEST[/tcp|udp]`, rows of the ledger's `published_port`),
//! which become DNATs to its address there while it runs.
//!
//! Everything lives in one table, `table ip brood` (`--nft-table` names
//! another, so that test daemons sharing a host keep apart); no other table
//! is read or written. The table is derived from the ledger alone
//! ([`Ruleset::from_ledger`], a pure function the unit tests pin) and
//! replaced as a whole in one `nft -f` transaction whenever what it would
//! contain changes: at start, on network create and delete, and after any
//! ledger commit (a VM starting or stopping opens or closes the channel
//! that carries its address). The last NAT network deleted removes the
//! table. The first NAT network sets `net.ipv4.ip_forward=1`, as libvirt
//! does, and it is left on.
//!
//! Guests' resolver: the gateway's address, DNAT'ed on udp and tcp port 53
//! to the host's resolver (the first non-loopback `nameserver` of the
//! host's `/etc/resolv.conf`, read again at every rebuild). A guest keeps
//! one address that stays right when the host's resolver changes (the next
//! rebuild follows it, no guest is told again), and the same rule serves
//! every NAT network. broodd writes `nameserver GATEWAY` to the guest's
//! `/etc/resolv.conf` through its agent, with the address it gives. A host
//! whose only resolver is on loopback (systemd-resolved's 127.0.0.53) gets
//! no DNS rule and a warning: a DNAT to loopback would need
//! `route_localnet` on every NAT network's tap for DNS too.
//!
//! Published ports answer on every local address of the host: from other
//! hosts (prerouting), from the host itself (an `output` chain DNAT), and on
//! 127.0.0.1, which needs `route_localnet=1` on the network's own tap (a
//! per-interface setting of broodd's interface, not a host-wide one) and a
//! masquerade of loopback sources out of it, as Docker does.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, PoisonError};

use brood_api as api;
use brood_ledger::{
    ChannelRecord, NetworkRecord, PortProtocol, PortSpec, PublishedPortRecord, Subnet,
};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::tap_name;
use crate::host::{Host, HostError, HostResult};

/// The table broodd owns unless `--nft-table` names another.
pub const DEFAULT_TABLE: &str = "brood";
/// The host's resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The host's IPv4 forwarding switch.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Longest `nft` or `ip` output read back.
const MAX_TOOL_OUTPUT: usize = 64 * 1024;

/// NAT settings from broodd's command line.
#[derive(Debug, Clone, Default)]
pub struct NatConfig {
    /// The uplink device; the default route's device when `None`.
    pub uplink: Option<String>,
    /// The nftables table (family `ip`); [`DEFAULT_TABLE`] when `None`.
    pub table: Option<String>,
    /// The host ports a business unit's users may publish;
    /// [`DEFAULT_UNIT_PORTS`] when `None`. Administrators publish any.
    pub unit_ports: Option<RangeInclusive<u16>>,
}

/// The host ports a business unit's users may publish unless broodd is
/// told otherwise (`--unit-ports`): the range Kubernetes gives NodePorts,
/// clear of well-known ports and of Linux's ephemeral ones (32768-60999).
pub const DEFAULT_UNIT_PORTS: RangeInclusive<u16> = 30000..=32767;

/// The NAT feature's state: its configuration, the uplink, the ruleset last
/// applied, and each partition's published ports (for rendering).
#[derive(Debug)]
pub struct Nat {
    table: String,
    uplink_flag: Option<String>,
    unit_ports: RangeInclusive<u16>,
    uplink: Mutex<Option<String>>,
    /// The script last applied (`None`: no table made by this broodd).
    applied: tokio::sync::Mutex<Option<String>>,
    published: Mutex<HashMap<Uuid, Vec<api::PublishedPort>>>,
}

impl Nat {
    /// The feature state for `config`.
    pub fn new(config: NatConfig) -> Self {
        Nat {
            table: config.table.unwrap_or_else(|| DEFAULT_TABLE.to_string()),
            uplink_flag: config.uplink,
            unit_ports: config.unit_ports.unwrap_or(DEFAULT_UNIT_PORTS),
            uplink: Mutex::new(None),
            applied: tokio::sync::Mutex::new(None),
            published: Mutex::new(HashMap::new()),
        }
    }

    /// The host ports a business unit's users may publish.
    pub fn unit_ports(&self) -> RangeInclusive<u16> {
        self.unit_ports.clone()
    }

    /// The ports partition `uuid` publishes.
    pub fn published(&self, uuid: Uuid) -> Vec<api::PublishedPort> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&uuid)
            .cloned()
            .unwrap_or_default()
    }

    /// Records the ports partition `uuid` was just given in the ledger
    /// (before the next rebuild reads them back).
    pub fn record(&self, uuid: Uuid, ports: &[api::PublishedPort]) {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uuid, ports.to_vec());
    }

    fn set_published(&self, rows: &[PublishedPortRecord]) {
        let mut map: HashMap<Uuid, Vec<api::PublishedPort>> = HashMap::new();
        for r in rows {
            map.entry(r.partition).or_default().push(port_out(r.port));
        }
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = map;
    }

    fn uplink(&self) -> Option<String> {
        self.uplink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn port_out(p: PortSpec) -> api::PublishedPort {
    api::PublishedPort {
        host_port: p.host_port,
        guest_port: p.guest_port,
        protocol: match p.protocol {
            PortProtocol::Tcp => api::PortProtocol::Tcp,
            PortProtocol::Udp => api::PortProtocol::Udp,
        },
    }
}

/// The ledger's form of a port from the API.
pub fn port_in(p: &api::PublishedPort) -> PortSpec {
    PortSpec {
        protocol: match p.protocol {
            api::PortProtocol::Tcp => PortProtocol::Tcp,
            api::PortProtocol::Udp => PortProtocol::Udp,
        },
        host_port: p.host_port,
        guest_port: p.guest_port,
    }
}

/// One NAT network in the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatNet {
    /// Its gateway tap.
    pub tap: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// The host's address on it.
    pub gateway: Ipv4Addr,
}

/// One published port that has a DNAT (its VM runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The VM's name (a comment in the rule).
    pub vm: String,
    /// The port.
    pub port: PortSpec,
    /// The VM's address on its first NIC on a NAT network.
    pub guest: Ipv4Addr,
}

/// What broodd's table holds, derived from a ledger snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The table's name (family `ip`).
    pub table: String,
    /// The uplink device.
    pub uplink: String,
    /// The host's resolver, DNAT'ed to from each gateway's port 53.
    pub resolver: Option<Ipv4Addr>,
    /// The NAT networks, by name.
    pub networks: Vec<NatNet>,
    /// The published ports that have a running VM, by protocol and port.
    pub forwards: Vec<Forward>,
}

impl Ruleset {
    /// The ruleset of these ledger rows: every NAT network, and each
    /// published port whose VM has an open channel on a NAT network (the
    /// one of its lowest such NIC). `None` when there is no NAT network.
    pub fn from_ledger(
        table: &str,
        uplink: &str,
        resolver: Option<Ipv4Addr>,
        networks: &[NetworkRecord],
        channels: &[ChannelRecord],
        ports: &[PublishedPortRecord],
    ) -> Option<Ruleset> {
        let nat: BTreeMap<&str, NatNet> = networks
            .iter()
            .filter(|n| n.nat)
            .filter_map(|n| {
                let subnet: Subnet = n.subnet.parse().ok()?;
                Some((
                    n.name.as_str(),
                    NatNet {
                        tap: tap_name(&n.name),
                        subnet,
                        gateway: subnet.gateway(),
                    },
                ))
            })
            .collect();
        if nat.is_empty() {
            return None;
        }
        let forwards = ports
            .iter()
            .filter_map(|p| {
                let ch = channels
                    .iter()
                    .filter(|c| c.partition == p.partition && nat.contains_key(c.network.as_str()))
                    .min_by_key(|c| c.nic)?;
                Some(Forward {
                    vm: p.name.clone(),
                    port: p.port,
                    guest: ch.address,
                })
            })
            .collect();
        Some(Ruleset {
            table: table.to_string(),
            uplink: uplink.to_string(),
            resolver,
            networks: nat.into_values().collect(),
            forwards,
        })
    }

    /// The `nft -f` script that replaces the table as a whole: creating
    /// it first makes the delete succeed when it is missing, and nft runs
    /// the whole file as one transaction.
    pub fn script(&self) -> String {
        let t = &self.table;
        let mut s = format!("table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n");
        let up = &self.uplink;
        // Published ports and DNS, for packets arriving from outside or
        // from guests.
        s.push_str(
            "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n",
        );
        if let Some(r) = self.resolver {
            for n in &self.networks {
                for proto in ["udp", "tcp"] {
                    let _ = writeln!(
                        s,
                        "\t\tiifname \"{}\" ip daddr {} {proto} dport 53 dnat to {r}",
                        n.tap, n.gateway
                    );
                }
            }
        }
        let dnats = |s: &mut String| {
            for f in &self.forwards {
                let _ = writeln!(
                    s,
                    "\t\tfib daddr type local {} dport {} dnat to {}:{} comment \"{}\"",
                    f.port.protocol, f.port.host_port, f.guest, f.port.guest_port, f.vm
                );
            }
        };
        dnats(&mut s);
        s.push_str("\t}\n");
        // The host's own connections to its addresses (127.0.0.1 too).
        s.push_str("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n");
        dnats(&mut s);
        s.push_str("\t}\n");
        s.push_str("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
        for n in &self.networks {
            let _ = writeln!(s, "\t\toifname \"{up}\" ip saddr {} masquerade", n.subnet);
            // Published ports reached from 127.0.0.1 or from a guest of the
            // same network: the guest must answer through the host.
            let _ = writeln!(
                s,
                "\t\toifname \"{}\" ip saddr 127.0.0.0/8 masquerade",
                n.tap
            );
            let _ = writeln!(
                s,
                "\t\toifname \"{}\" ip saddr {} ct status dnat masquerade",
                n.tap, n.subnet
            );
        }
        s.push_str("\t}\n");
        // A NAT network's traffic goes out of the uplink and only replies
        // and published ports come in; nothing else is forwarded to or
        // from its tap (other brood networks, other host interfaces).
        s.push_str(
            "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n",
        );
        for n in &self.networks {
            let (tap, net) = (&n.tap, n.subnet);
            let _ = writeln!(
                s,
                "\t\tiifname \"{tap}\" ip saddr {net} oifname \"{up}\" accept"
            );
            // Answers to a published port, wherever its client is.
            let _ = writeln!(
                s,
                "\t\tiifname \"{tap}\" ip saddr {net} ct status dnat accept"
            );
            let _ = writeln!(
                s,
                "\t\toifname \"{tap}\" ip daddr {net} ct state established,related accept"
            );
            let _ = writeln!(
                s,
                "\t\toifname \"{tap}\" ip daddr {net} ct status dnat accept"
            );
        }
        for n in &self.networks {
            let _ = writeln!(s, "\t\tiifname \"{}\" drop", n.tap);
            let _ = writeln!(s, "\t\toifname \"{}\" drop", n.tap);
        }
        s.push_str("\t}\n}\n");
        s
    }
}

/// The first IPv4 `nameserver` of a resolv.conf that is not on loopback.
pub fn resolver_of(resolv_conf: &str) -> Option<Ipv4Addr> {
    resolv_conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next()?.parse::<Ipv4Addr>().ok())
            .flatten()
            .filter(|a| !a.is_loopback())
    })
}

async fn tool(program: &str, args: &[&str], stdin: Option<&str>) -> HostResult<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && program == "nft" => {
            return Err(HostError::invalid(
                "a NAT network needs nftables, and `nft` is not installed on this host: \
                 `apt-get install nftables`, then try again",
            ));
        }
        Err(e) => return Err(HostError::io(format!("run {program}"), e)),
    };
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| HostError::io(format!("write {program}'s input"), e))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| HostError::io(format!("run {program}"), e))?;
    let cut = |b: &[u8]| {
        let b = b.get(..b.len().min(MAX_TOOL_OUTPUT)).unwrap_or_default();
        String::from_utf8_lossy(b).trim().to_string()
    };
    if out.status.success() {
        Ok(cut(&out.stdout))
    } else {
        Err(HostError::io(
            format!("{program} {}: {}", args.join(" "), cut(&out.stderr)),
            std::io::Error::other(format!("{program} ended with {}", out.status)),
        ))
    }
}

/// The default route's device, from `ip -j route show default`.
pub fn default_route_dev(ip_json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(ip_json).ok()?;
    v.as_array()?
        .iter()
        .find_map(|r| r.get("dev")?.as_str().map(str::to_string))
}

/// The IPv4 subnets of a device, from `ip -j -4 addr show dev DEV`.
pub fn device_subnets(ip_json: &str) -> Vec<Subnet> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(ip_json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link
            .get("addr_info")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            let local = a.get("local").and_then(|l| l.as_str());
            let prefix = a.get("prefixlen").and_then(serde_json::Value::as_u64);
            if let (Some(local), Some(prefix)) = (local, prefix)
                && let Ok(addr) = local.parse::<Ipv4Addr>()
                && let Ok(prefix) = u8::try_from(prefix)
                && (8..=32).contains(&prefix)
            {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                let base = Ipv4Addr::from(u32::from(addr) & mask);
                out.push(Subnet {
                    base,
                    prefix: prefix.min(30),
                });
            }
        }
    }
    out
}

async fn resolve_uplink(nat: &Nat) -> Option<String> {
    if let Some(u) = &nat.uplink_flag {
        return Some(u.clone());
    }
    match tool("ip", &["-j", "route", "show", "default"], None).await {
        Ok(json) => default_route_dev(&json),
        Err(e) => {
            warn!("find the uplink: {}", crate::host::chain(&e));
            None
        }
    }
}

/// Checks that a NAT network can be made with `subnet`: nft is there, the
/// host has an uplink, and the subnet does not overlap the uplink's.
pub async fn check_new(host: &Host, subnet: Subnet) -> HostResult<()> {
    let nat = host.feature::<Nat>();
    tool("nft", &["--version"], None).await?;
    let uplink = nat.uplink().ok_or_else(|| {
        HostError::invalid(
            "a NAT network needs an uplink, and this host has no default route: \
             start broodd with --uplink DEV",
        )
    })?;
    let json = tool("ip", &["-j", "-4", "addr", "show", "dev", &uplink], None).await?;
    if let Some(s) = device_subnets(&json)
        .into_iter()
        .find(|s| s.overlaps(subnet))
    {
        return Err(HostError::conflict(format!(
            "subnet {subnet} overlaps {s} of the uplink {uplink}: pick a subnet the host does not reach through its uplink"
        )));
    }
    Ok(())
}

/// The names of the NAT networks.
async fn nat_networks(host: &Host) -> HostResult<Vec<String>> {
    Ok(host
        .ledger
        .networks()
        .await?
        .into_iter()
        .filter(|n| n.nat)
        .map(|n| n.name)
        .collect())
}

/// Refuses ports the host itself listens on (publishing them would take
/// them from the host), and a VM without a NIC on a NAT network.
pub async fn check_publish(
    host: &Host,
    config: &api::PartitionConfig,
    ports: &[api::PublishedPort],
) -> HostResult<()> {
    if ports.is_empty() {
        return Ok(());
    }
    let nat_nets = nat_networks(host).await?;
    if !config.nics.iter().any(|n| nat_nets.contains(&n.network)) {
        return Err(HostError::invalid(format!(
            "--publish needs a NIC on a NAT network, and this VM has none{}: add `--nic NET` of a network made with `brood network create NET --subnet CIDR --nat`",
            if nat_nets.is_empty() {
                " (there is no NAT network yet)".to_string()
            } else {
                format!(" (NAT networks: {})", nat_nets.join(", "))
            }
        )));
    }
    for p in ports {
        let (files, state) = match p.protocol {
            // LISTEN in /proc/net/tcp; an unconnected bound socket in udp.
            api::PortProtocol::Tcp => (["/proc/net/tcp", "/proc/net/tcp6"], "0A"),
            api::PortProtocol::Udp => (["/proc/net/udp", "/proc/net/udp6"], "07"),
        };
        for f in files {
            let text = tokio::fs::read_to_string(f).await.unwrap_or_default();
            if listens(&text, p.host_port, state) {
                return Err(HostError::conflict(format!(
                    "host port {}/{} is in use on the host itself (a process listens on it): publish another host port",
                    p.host_port, p.protocol
                )));
            }
        }
    }
    Ok(())
}

/// The ports partition `uuid` publishes, from the ledger.
async fn ports_of(host: &Host, uuid: Uuid) -> HostResult<Vec<api::PublishedPort>> {
    Ok(host
        .ledger
        .published_ports()
        .await?
        .into_iter()
        .filter(|r| r.partition == uuid)
        .map(|r| port_out(r.port))
        .collect())
}

/// Refuses a change that leaves partition `uuid`, which publishes host
/// ports, without a NIC of `config` on a NAT network: its ports would
/// lead nowhere (say which to unpublish first).
pub async fn check_keeps_nat(
    host: &Host,
    uuid: Uuid,
    name: &str,
    config: &api::PartitionConfig,
) -> HostResult<()> {
    let ports = ports_of(host, uuid).await?;
    if ports.is_empty() {
        return Ok(());
    }
    let nat_nets = nat_networks(host).await?;
    if config.nics.iter().any(|n| nat_nets.contains(&n.network)) {
        return Ok(());
    }
    let all: Vec<String> = ports.iter().map(ToString::to_string).collect();
    let hosts: Vec<String> = ports
        .iter()
        .map(|p| format!("{}/{}", p.host_port, p.protocol))
        .collect();
    Err(HostError::conflict(format!(
        "{name} publishes {} and would have no NIC on a NAT network left to forward them to: \
         unpublish them first (`brood vm set {name} --unpublish {}`)",
        all.join(", "),
        hosts.join(" --unpublish ")
    )))
}

/// The ports partition `uuid` publishes now, and after `unpublish` then `publish`
/// (`brood vm set --unpublish/--publish`), checked as define checks them
/// (the ledger's commit refuses a port another VM holds, naming it): a host
/// port it does not publish cannot be unpublished, a host port given twice
/// is refused, and a new host port needs a NIC of `config` on a NAT network
/// and no host process on it. A port it publishes already is forwarded to
/// the new guest port.
pub async fn ports_after(
    host: &Host,
    uuid: Uuid,
    config: &api::PartitionConfig,
    publish: &[api::PublishedPort],
    unpublish: &[api::HostPort],
) -> HostResult<(Vec<api::PublishedPort>, Vec<api::PublishedPort>)> {
    let mut ports = ports_of(host, uuid).await?;
    let before = ports.clone();
    for u in unpublish {
        let n = ports.len();
        ports.retain(|p| (p.host_port, p.protocol) != (u.host_port, u.protocol));
        if ports.len() == n {
            return Err(HostError::NotFound(format!(
                "host port {u} is not published by this VM ({}): nothing to unpublish",
                if before.is_empty() {
                    "it publishes none".to_string()
                } else {
                    let all: Vec<String> = before.iter().map(ToString::to_string).collect();
                    format!("it publishes {}", all.join(", "))
                }
            )));
        }
    }
    let mut fresh = Vec::new();
    for (i, p) in publish.iter().enumerate() {
        if p.host_port == 0 || p.guest_port == 0 {
            return Err(HostError::invalid(format!(
                "published port {p}: ports are 1-65535"
            )));
        }
        if publish[..i]
            .iter()
            .any(|q| (q.host_port, q.protocol) == (p.host_port, p.protocol))
        {
            return Err(HostError::invalid(format!(
                "host port {}/{} is given twice: publish it once",
                p.host_port, p.protocol
            )));
        }
        // A host port the VM keeps needs no new check: its DNAT holds it.
        if !before
            .iter()
            .any(|q| (q.host_port, q.protocol) == (p.host_port, p.protocol))
        {
            fresh.push(*p);
        }
        ports.retain(|q| (q.host_port, q.protocol) != (p.host_port, p.protocol));
        ports.push(*p);
    }
    check_publish(host, config, &fresh).await?;
    ports.sort_by_key(|p| (p.protocol, p.host_port));
    Ok((before, ports))
}

/// Whether a `/proc/net/{tcp,udp}[6]` table has a socket on local `port`
/// in state `state` (hex, as the kernel writes it).
pub fn listens(table: &str, port: u16, state: &str) -> bool {
    let want = format!("{port:04X}");
    table.lines().skip(1).any(|l| {
        let mut w = l.split_whitespace();
        let local = w.nth(1);
        let st = w.nth(1);
        local
            .and_then(|a| a.rsplit_once(':'))
            .is_some_and(|(_, p)| p.eq_ignore_ascii_case(&want))
            && st == Some(state)
    })
}

/// Brings broodd's table in line with the ledger; returns once `nft` has
/// applied it (or why not). Nothing is run when nothing changed.
pub async fn sync(host: &Host) -> HostResult<()> {
    let nat = host.feature::<Nat>();
    let mut applied = nat.applied.lock().await;
    let networks = host.ledger.networks().await?;
    let ports = host.ledger.published_ports().await?;
    nat.set_published(&ports);
    if !networks.iter().any(|n| n.nat) {
        if applied.is_some() {
            tool("nft", &["delete", "table", "ip", &nat.table], None).await?;
            info!(table = %nat.table, "the last NAT network is gone: nftables table removed");
            *applied = None;
        }
        return Ok(());
    }
    let Some(uplink) = nat.uplink() else {
        return Err(HostError::invalid(
            "NAT networks need an uplink, and this host has no default route: start broodd with --uplink DEV",
        ));
    };
    let channels = host.ledger.channels().await?;
    let resolv = tokio::fs::read_to_string(RESOLV_CONF)
        .await
        .unwrap_or_default();
    let resolver = resolver_of(&resolv);
    let Some(rules) =
        Ruleset::from_ledger(&nat.table, &uplink, resolver, &networks, &channels, &ports)
    else {
        return Ok(());
    };
    for n in &rules.networks {
        // 127.0.0.1 reaching a published port is routed out of this tap.
        let f = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", n.tap);
        if let Err(e) = tokio::fs::write(&f, "1").await {
            debug!("set {f}: {e}");
        }
    }
    let script = rules.script();
    if applied.as_deref() == Some(script.as_str()) {
        return Ok(());
    }
    if resolver.is_none() && applied.is_none() {
        warn!(
            "the host's {RESOLV_CONF} names no IPv4 resolver off loopback: guests on NAT networks get no DNS"
        );
    }
    tool("nft", &["-f", "-"], Some(&script)).await?;
    let forwarding = tokio::fs::read_to_string(IP_FORWARD)
        .await
        .unwrap_or_default();
    if forwarding.trim() != "1" {
        tokio::fs::write(IP_FORWARD, "1")
            .await
            .map_err(|e| HostError::io(format!("turn IPv4 forwarding on ({IP_FORWARD})"), e))?;
        info!("IPv4 forwarding turned on for NAT networks (net.ipv4.ip_forward=1; left on)");
    }
    debug!(table = %nat.table, forwards = rules.forwards.len(), "nftables table applied");
    *applied = Some(script);
    Ok(())
}

/// At broodd start: resolves the uplink, applies the table the ledger
/// describes, and follows the ledger's commits from then on.
pub async fn start(host: &Arc<Host>) -> HostResult<()> {
    let nat = host.feature::<Nat>();
    let uplink = resolve_uplink(&nat).await;
    *nat.uplink.lock().unwrap_or_else(PoisonError::into_inner) = uplink;
    let mut notes = host.ledger.subscribe();
    if let Err(e) = sync(host).await {
        // A host that lost nft keeps its VMs; the NAT networks say why.
        warn!(
            "apply the NAT networks' nftables table: {}",
            crate::host::chain(&e)
        );
    }
    // Weak: the host owns the ledger whose notes end this task.
    let weak = Arc::downgrade(host);
    tokio::spawn(async move {
        loop {
            match notes.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
            // One rebuild for a burst of commits.
            while notes.try_recv().is_ok() {}
            let Some(host) = weak.upgrade() else {
                return;
            };
            if host.is_stopping() {
                return;
            }
            if let Err(e) = sync(&host).await {
                warn!(
                    "update the NAT networks' nftables table: {}",
                    crate::host::chain(&e)
                );
            }
        }
    });
    Ok(())
}

/// Writes the guest's resolver, `nameserver` (`why` says who it is in a
/// comment), through its agent.
pub async fn give_resolver(
    agent: &brood_engine::AgentClient,
    nameserver: Ipv4Addr,
    why: &str,
) -> HostResult<()> {
    let text = format!("# written by brood: {why}\nnameserver {nameserver}\n");
    agent
        .write_file("/etc/resolv.conf", text.as_bytes(), 0o644)
        .await
        .map_err(|e| HostError::engine("write the guest's /etc/resolv.conf", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, subnet: &str, nat: bool) -> NetworkRecord {
        NetworkRecord {
            name: name.into(),
            zone: "default".into(),
            subnet: subnet.into(),
            gateway: true,
            nat,
            created_at: String::new(),
        }
    }

    fn channel(partition: u128, nic: u32, network: &str, address: [u8; 4]) -> ChannelRecord {
        ChannelRecord {
            partition: Uuid::from_u128(partition),
            nic,
            network: network.into(),
            io_partition: "switch-default".into(),
            address: address.into(),
            mbps: None,
        }
    }

    fn port(
        partition: u128,
        name: &str,
        protocol: PortProtocol,
        host: u16,
        guest: u16,
    ) -> PublishedPortRecord {
        PublishedPortRecord {
            partition: Uuid::from_u128(partition),
            name: name.into(),
            port: PortSpec {
                protocol,
                host_port: host,
                guest_port: guest,
            },
        }
    }

    #[test]
    fn the_ruleset_follows_the_ledger() {
        let networks = [
            net("out", "10.70.0.0/24", true),
            net("plain", "10.71.0.0/24", false),
        ];
        let channels = [
            // web: NIC 0 on the plain network, NIC 1 on the NAT one.
            channel(1, 0, "plain", [10, 71, 0, 2]),
            channel(1, 1, "out", [10, 70, 0, 2]),
        ];
        let ports = [
            port(1, "web", PortProtocol::Tcp, 8080, 80),
            port(1, "web", PortProtocol::Udp, 5353, 53),
            // A stopped VM: no channel, no DNAT.
            port(2, "idle", PortProtocol::Tcp, 9090, 90),
        ];
        let r = Ruleset::from_ledger(
            "brood",
            "eth0",
            Some(Ipv4Addr::new(10, 255, 255, 53)),
            &networks,
            &channels,
            &ports,
        )
        .unwrap();
        assert_eq!(r.networks.len(), 1);
        assert_eq!(r.forwards.len(), 2);
        let want = "\
table ip brood {}
delete table ip brood
table ip brood {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname \"bn-out\" ip daddr 10.70.0.1 udp dport 53 dnat to 10.255.255.53
\t\tiifname \"bn-out\" ip daddr 10.70.0.1 tcp dport 53 dnat to 10.255.255.53
\t\tfib daddr type local tcp dport 8080 dnat to 10.70.0.2:80 comment \"web\"
\t\tfib daddr type local udp dport 5353 dnat to 10.70.0.2:53 comment \"web\"
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tfib daddr type local tcp dport 8080 dnat to 10.70.0.2:80 comment \"web\"
\t\tfib daddr type local udp dport 5353 dnat to 10.70.0.2:53 comment \"web\"
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname \"eth0\" ip saddr 10.70.0.0/24 masquerade
\t\toifname \"bn-out\" ip saddr 127.0.0.0/8 masquerade
\t\toifname \"bn-out\" ip saddr 10.70.0.0/24 ct status dnat masquerade
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"bn-out\" ip saddr 10.70.0.0/24 oifname \"eth0\" accept
\t\tiifname \"bn-out\" ip saddr 10.70.0.0/24 ct status dnat accept
\t\toifname \"bn-out\" ip daddr 10.70.0.0/24 ct state established,related accept
\t\toifname \"bn-out\" ip daddr 10.70.0.0/24 ct status dnat accept
\t\tiifname \"bn-out\" drop
\t\toifname \"bn-out\" drop
\t}
}
";
        assert_eq!(r.script(), want);
        // No resolver: no DNS rules; no NAT network: no table at all.
        let quiet = Ruleset::from_ledger("t", "eth0", None, &networks, &[], &ports).unwrap();
        assert!(quiet.forwards.is_empty());
        assert!(!quiet.script().contains("dport 53"));
        assert!(
            quiet
                .script()
                .starts_with("table ip t {}\ndelete table ip t\n")
        );
        assert_eq!(
            Ruleset::from_ledger("brood", "eth0", None, &networks[1..], &channels, &ports),
            None
        );
    }

    #[test]
    fn host_facts_parse() {
        assert_eq!(
            resolver_of(
                "# x\nsearch lan\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.255.255.53\n"
            ),
            Some(Ipv4Addr::new(10, 255, 255, 53))
        );
        assert_eq!(resolver_of("nameserver 127.0.0.53\n"), None);
        assert_eq!(resolver_of(""), None);
        let route = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]}]"#;
        assert_eq!(default_route_dev(route).as_deref(), Some("eth0"));
        assert_eq!(default_route_dev("[]"), None);
        assert_eq!(default_route_dev("not json"), None);
        let addr = r#"[{"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24}]}]"#;
        let s = device_subnets(addr);
        assert_eq!(s, vec!["192.0.2.0/24".parse::<Subnet>().unwrap()]);
        assert!(device_subnets("{").is_empty());
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        assert!(listens(tcp, 22, "0A"));
        // 8080 is only a connection's local end, not a listener.
        assert!(!listens(tcp, 8080, "0A"));
        assert!(!listens(tcp, 80, "0A"));
    }
}
