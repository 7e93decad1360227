//! Networks, I/O partitions and channels (schema `V_NETIO`).
//!
//! A network is a subnet in a network zone; every zone with a network is
//! served by one I/O partition of kind `switch`, created with the zone's
//! first network. A channel joins NIC `nic` of a partition to its network's
//! switch and carries the address the ledger gave it: the lowest free host
//! address of the subnet (after the gateway's, when the network has one).
//! Channels are opened in the transaction that starts the partition and
//! closed in the one that settles it, so a partition's resources and its
//! channels come and go together. What broodd does with them (the switch
//! process, the guest's address) is broodd's business.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Ledger;
use crate::channel::{Channels, End, close, ensure_io_partition};
use crate::error::{DbContext, LedgerError};

/// Longest network or zone name.
pub const NETWORK_NAME_MAX_CHARS: usize = 32;

/// An IPv4 subnet: a network address and a prefix of 8-30 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    /// The network address (host bits zero).
    pub base: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Subnet {
    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The host addresses, lowest first (neither the network nor the
    /// broadcast address).
    pub fn hosts(self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.base);
        let last = base | !self.mask();
        (base + 1..last).map(Ipv4Addr::from)
    }

    /// The gateway's address when the network has one: the first host.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// Whether `a` is in the subnet.
    pub fn contains(self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.base)
    }

    /// Whether two subnets share an address.
    pub fn overlaps(self, o: Subnet) -> bool {
        self.contains(o.base) || o.contains(self.base)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("subnet {s:?} is not ADDRESS/PREFIX (as 10.0.0.0/24)"))?;
        let base: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("subnet {s:?}: {a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("subnet {s:?}: the prefix must be 8-30, not {p:?}"))?;
        let net = Subnet { base, prefix };
        if u32::from(base) & !net.mask() != 0 {
            let fixed = Ipv4Addr::from(u32::from(base) & net.mask());
            return Err(format!(
                "subnet {s:?} has host bits set: did you mean {fixed}/{prefix}?"
            ));
        }
        Ok(net)
    }
}

/// A network as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Unique name, 1-32 characters of `[a-z0-9_.-]`.
    pub name: String,
    /// Its network zone (same rule); each zone has a switch of its own.
    pub zone: String,
    /// Its subnet, as `10.0.0.0/24`.
    pub subnet: String,
    /// The host has the first address on it.
    pub gateway: bool,
    /// The host forwards and masquerades its traffic to the uplink.
    pub nat: bool,
    /// When it was created (RFC 3339; set by the ledger).
    pub created_at: String,
}

/// What an I/O partition serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoKind {
    /// A userspace switch serving a network zone's networks.
    Switch,
    /// A storage server exporting disks.
    Storage,
}

impl IoKind {
    /// Its name in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            IoKind::Switch => "switch",
            IoKind::Storage => "storage",
        }
    }
}

impl FromStr for IoKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "switch" => Ok(IoKind::Switch),
            "storage" => Ok(IoKind::Storage),
            _ => Err(format!("unknown I/O partition kind {s:?}")),
        }
    }
}

/// The run state of an I/O partition's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoState {
    /// Not running, on purpose.
    Stopped,
    /// Being started (or restarted after a failure).
    Starting,
    /// Its process runs.
    Running,
    /// Its process ended on its own; the supervisor restarts it.
    Crashed,
}

impl IoState {
    /// Its name in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            IoState::Stopped => "stopped",
            IoState::Starting => "starting",
            IoState::Running => "running",
            IoState::Crashed => "crashed",
        }
    }
}

impl FromStr for IoState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stopped" => Ok(IoState::Stopped),
            "starting" => Ok(IoState::Starting),
            "running" => Ok(IoState::Running),
            "crashed" => Ok(IoState::Crashed),
            _ => Err(format!("unknown I/O partition state {s:?}")),
        }
    }
}

/// An I/O partition (a partition of kind `io`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoRecord {
    /// Unique name (`switch-ZONE`).
    pub name: String,
    /// What it serves.
    pub kind: IoKind,
    /// The zone it serves.
    pub zone: String,
    /// Its process's state.
    pub run_state: IoState,
    /// Its process, while it runs.
    pub pid: Option<u32>,
    /// How often it was restarted after failing.
    pub restart_count: u32,
    /// How its process last ended.
    pub last_exit: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// How many host CPUs are dedicated to its process (`None`: it runs on
    /// any CPU broodd may use).
    pub cpus: Option<u32>,
}

/// Most CPUs an I/O partition may be given.
pub const IO_CPUS_MAX: u32 = 1024;

/// `V_IO_REDUNDANCY` (issue 11, the second half): the CPUs dedicated to an
/// I/O partition, and a NIC channel's bandwidth cap. Columns that are NULL
/// on existing rows, so an older file migrates in place.
pub(crate) const V_IO_REDUNDANCY: &str = "
ALTER TABLE io_partition ADD COLUMN cpus INTEGER CHECK (cpus IS NULL OR cpus BETWEEN 1 AND 1024);
ALTER TABLE channel ADD COLUMN mbps INTEGER CHECK (mbps IS NULL OR mbps BETWEEN 1 AND 100000);
";

/// Highest bandwidth cap of a NIC's channel, in Mbit/s.
pub const NIC_MBPS_MAX: u32 = 100_000;

/// The name of the switch I/O partition of `zone`.
pub fn switch_name(zone: &str) -> String {
    format!("switch-{zone}")
}

/// A channel between a partition's NIC and an I/O partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The guest.
    pub partition: Uuid,
    /// The NIC's index in the guest's configuration.
    pub nic: u32,
    /// The network.
    pub network: String,
    /// The I/O partition serving it.
    pub io_partition: String,
    /// The guest's address on the network.
    pub address: Ipv4Addr,
    /// Its bandwidth cap in Mbit/s (each direction), enforced by the switch.
    pub mbps: Option<u32>,
}

/// A change to networks, I/O partitions or channels; carried by
/// [`crate::Op::Net`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetOp {
    /// Create a network (its subnet must not overlap another network of
    /// the zone) and, for the zone's first network, its switch (stopped).
    CreateNetwork {
        /// Name.
        name: String,
        /// Zone.
        zone: String,
        /// Subnet.
        subnet: String,
        /// Host has the gateway address.
        gateway: bool,
        /// Host NATs to the uplink.
        nat: bool,
    },
    /// Delete a network; refused while channels use it. The zone's switch
    /// goes with the zone's last network.
    DeleteNetwork {
        /// Name.
        name: String,
    },
    /// Open a channel for each NIC of `partition` whose network (by index,
    /// from its active configuration) is a ledger network; other NICs
    /// (bridges, user networks) are skipped, channels already open kept.
    OpenChannels {
        /// The guest.
        partition: Uuid,
        /// The network name of each NIC, in order.
        nics: Vec<String>,
        /// The bandwidth cap of each NIC in Mbit/s, in order (missing
        /// entries: none), 1-[`NIC_MBPS_MAX`].
        #[serde(default)]
        mbps: Vec<Option<u32>>,
    },
    /// Open a storage channel for each of `disks` not open yet, creating
    /// the zone's storage I/O partition (stopped) if it has none.
    OpenDiskChannels {
        /// The guest.
        partition: Uuid,
        /// Its disks served by storage I/O partitions.
        disks: Vec<crate::storage_io::DiskChannelSpec>,
    },
    /// Close every channel of `partition`, NICs' and disks' (none is not
    /// an error).
    CloseChannels {
        /// The guest.
        partition: Uuid,
    },
    /// Record an I/O partition's process state.
    SetIoState {
        /// The I/O partition.
        name: String,
        /// Its state.
        run_state: IoState,
        /// Its pid.
        pid: Option<u32>,
        /// A new restart count, if it changes.
        restart_count: Option<u32>,
        /// How it last ended, if that changes.
        last_exit: Option<String>,
    },
    /// Close every channel, NICs' and disks', of an I/O partition
    /// (`--force` stop).
    DetachIo {
        /// The I/O partition.
        name: String,
    },
    /// Dedicate `cpus` host CPUs to an I/O partition's process (`None`:
    /// none, it runs anywhere).
    SetIoCpus {
        /// The I/O partition.
        name: String,
        /// How many CPUs, 1-[`IO_CPUS_MAX`].
        cpus: Option<u32>,
    },
}

fn conflict(what: String) -> LedgerError {
    LedgerError::NetworkConflict { what }
}

pub(crate) fn check_name(op: usize, what: &str, name: &str) -> Result<(), LedgerError> {
    let ok = !name.is_empty()
        && name.chars().count() <= NETWORK_NAME_MAX_CHARS
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(LedgerError::InvalidOp {
            op,
            what: format!("{what} {name:?} must be 1-32 characters of a-z, 0-9, '_', '.', '-'"),
        })
    }
}

/// Applies one [`NetOp`] (op `i` of its Tx) and returns its audit entry.
pub(crate) fn apply(
    conn: &Connection,
    i: usize,
    op: &NetOp,
    now: &str,
) -> Result<Value, LedgerError> {
    match op {
        NetOp::CreateNetwork {
            name,
            zone,
            subnet,
            gateway,
            nat,
        } => {
            check_name(i, "network name", name)?;
            check_name(i, "zone", zone)?;
            let net: Subnet = subnet
                .parse()
                .map_err(|what| LedgerError::InvalidOp { op: i, what })?;
            if network(conn, name)?.is_some() {
                return Err(conflict(format!("network {name:?} already exists")));
            }
            // A NAT network is routed by the host, so its subnet must not
            // overlap any network's, whatever the zone.
            for other in networks(conn)?
                .into_iter()
                .filter(|n| n.zone == *zone || *nat || n.nat)
            {
                if other
                    .subnet
                    .parse::<Subnet>()
                    .is_ok_and(|o| o.overlaps(net))
                {
                    return Err(conflict(format!(
                        "subnet {net} overlaps {} of network {:?} in zone {:?}{}: pick another subnet",
                        other.subnet,
                        other.name,
                        other.zone,
                        if *nat || other.nat {
                            " (a NAT network's subnet is routed by the host and overlaps no other)"
                        } else {
                            ""
                        }
                    )));
                }
            }
            conn.prepare_cached(
                "INSERT INTO network (name, zone, subnet, gateway, nat, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .ctx("prepare network insert")?
            .execute(params![name, zone, net.to_string(), gateway, nat, now])
            .ctx("insert network")?;
            let switch = switch_name(zone);
            let made = ensure_io_partition(conn, &switch, IoKind::Switch, zone, now)?;
            Ok(json!({"op": "create_network", "after": {
                "name": name, "zone": zone, "subnet": net.to_string(),
                "gateway": gateway, "nat": nat,
                "io_partition": switch, "io_partition_created": made,
            }}))
        }
        NetOp::DeleteNetwork { name } => {
            let before = network(conn, name)?
                .ok_or_else(|| LedgerError::NoSuchNetwork { name: name.clone() })?;
            let users = channels(conn)?
                .into_iter()
                .filter(|c| c.network == *name)
                .count();
            if users > 0 {
                return Err(conflict(format!(
                    "network {name:?} has {users} channels open: stop the VMs on it first"
                )));
            }
            conn.prepare_cached("DELETE FROM network WHERE name = ?1")
                .ctx("prepare network delete")?
                .execute([name])
                .ctx("delete network")?;
            let zone_left = networks(conn)?.iter().any(|n| n.zone == before.zone);
            let mut switch_gone = false;
            if !zone_left {
                switch_gone = conn
                    .prepare_cached("DELETE FROM io_partition WHERE kind = 'switch' AND zone = ?1")
                    .ctx("prepare io partition delete")?
                    .execute([&before.zone])
                    .ctx("delete io partition")?
                    > 0;
            }
            Ok(json!({"op": "delete_network", "before": before, "switch_deleted": switch_gone}))
        }
        NetOp::OpenChannels {
            partition,
            nics,
            mbps,
        } => open_channels(conn, i, *partition, nics, mbps),
        NetOp::OpenDiskChannels { partition, disks } => {
            crate::storage_io::open_disk_channels(conn, i, *partition, disks, now)
        }
        NetOp::CloseChannels { partition } => {
            let before: Vec<ChannelRecord> = channels(conn)?
                .into_iter()
                .filter(|c| c.partition == *partition)
                .collect();
            close(conn, Channels::Nic, End::Guest, &partition.to_string())?;
            let disks = crate::storage_io::close_for_partition(conn, *partition)?;
            Ok(
                json!({"op": "close_channels", "partition": partition, "before": before,
                "disks_before": disks}),
            )
        }
        NetOp::SetIoState {
            name,
            run_state,
            pid,
            restart_count,
            last_exit,
        } => {
            let before = io_partition(conn, name)?
                .ok_or_else(|| LedgerError::NoSuchNetwork { name: name.clone() })?;
            let mut after = before.clone();
            after.run_state = *run_state;
            after.pid = *pid;
            if let Some(n) = restart_count {
                after.restart_count = *n;
            }
            if last_exit.is_some() {
                after.last_exit.clone_from(last_exit);
            }
            after.updated_at = now.to_owned();
            conn.prepare_cached(
                "UPDATE io_partition SET run_state = ?2, pid = ?3, restart_count = ?4,
                     last_exit = ?5, updated_at = ?6 WHERE name = ?1",
            )
            .ctx("prepare io partition update")?
            .execute(params![
                name,
                after.run_state.as_str(),
                after.pid,
                after.restart_count,
                after.last_exit,
                now
            ])
            .ctx("update io partition")?;
            Ok(json!({"op": "set_io_state", "name": name,
                "before": {"run_state": before.run_state, "pid": before.pid,
                           "restart_count": before.restart_count},
                "after": {"run_state": after.run_state, "pid": after.pid,
                          "restart_count": after.restart_count}}))
        }
        NetOp::DetachIo { name } => {
            let before: Vec<ChannelRecord> = channels(conn)?
                .into_iter()
                .filter(|c| c.io_partition == *name)
                .collect();
            close(conn, Channels::Nic, End::Io, name)?;
            let disks = crate::storage_io::close_for_io(conn, name)?;
            Ok(json!({"op": "detach_io", "name": name, "before": before, "disks_before": disks}))
        }
        NetOp::SetIoCpus { name, cpus } => {
            if cpus.is_some_and(|n| !(1..=IO_CPUS_MAX).contains(&n)) {
                return Err(LedgerError::InvalidOp {
                    op: i,
                    what: format!("an I/O partition's CPUs must be 1-{IO_CPUS_MAX}"),
                });
            }
            let before = io_partition(conn, name)?
                .ok_or_else(|| LedgerError::NoSuchNetwork { name: name.clone() })?;
            conn.prepare_cached(
                "UPDATE io_partition SET cpus = ?2, updated_at = ?3 WHERE name = ?1",
            )
            .ctx("prepare io partition cpus")?
            .execute(params![name, cpus, now])
            .ctx("set io partition cpus")?;
            Ok(json!({"op": "set_io_cpus", "name": name,
                "before": {"cpus": before.cpus}, "after": {"cpus": cpus}}))
        }
    }
}

fn open_channels(
    conn: &Connection,
    op: usize,
    partition: Uuid,
    nics: &[String],
    caps: &[Option<u32>],
) -> Result<Value, LedgerError> {
    if caps
        .iter()
        .flatten()
        .any(|m| !(1..=NIC_MBPS_MAX).contains(m))
    {
        return Err(LedgerError::InvalidOp {
            op,
            what: format!("a NIC's mbps must be 1-{NIC_MBPS_MAX}"),
        });
    }
    let all = networks(conn)?;
    let open = channels(conn)?;
    let mut opened = Vec::new();
    for (nic, name) in nics.iter().enumerate() {
        let Some(net) = all.iter().find(|n| n.name == *name) else {
            continue;
        };
        let nic = u32::try_from(nic).unwrap_or(u32::MAX);
        if open
            .iter()
            .any(|c| c.partition == partition && c.nic == nic)
        {
            continue;
        }
        let subnet: Subnet = net.subnet.parse().map_err(|what| LedgerError::BadRow {
            table: "network",
            key: net.name.clone(),
            what,
        })?;
        let taken: BTreeSet<Ipv4Addr> = open
            .iter()
            .chain(&opened)
            .filter(|c| c.network == net.name)
            .map(|c| c.address)
            .collect();
        let address = subnet
            .hosts()
            .filter(|a| !(net.gateway && *a == subnet.gateway()))
            .find(|a| !taken.contains(a))
            .ok_or_else(|| {
                conflict(format!(
                    "network {:?} ({subnet}) has no free address: every one is in use",
                    net.name
                ))
            })?;
        let ch = ChannelRecord {
            partition,
            nic,
            network: net.name.clone(),
            io_partition: switch_name(&net.zone),
            address,
            mbps: caps
                .get(usize::try_from(nic).unwrap_or(usize::MAX))
                .copied()
                .flatten(),
        };
        conn.prepare_cached(
            "INSERT INTO channel (partition, nic, network, io_partition, address, mbps)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .ctx("prepare channel insert")?
        .execute(params![
            partition.to_string(),
            nic,
            ch.network,
            ch.io_partition,
            address.to_string(),
            ch.mbps
        ])
        .ctx("open channel")?;
        opened.push(ch);
    }
    Ok(json!({"op": "open_channels", "partition": partition, "after": opened}))
}

fn network_row(r: &Row<'_>) -> rusqlite::Result<NetworkRecord> {
    Ok(NetworkRecord {
        name: r.get(0)?,
        zone: r.get(1)?,
        subnet: r.get(2)?,
        gateway: r.get(3)?,
        nat: r.get(4)?,
        created_at: r.get(5)?,
    })
}

const NETWORK_COLS: &str = "SELECT name, zone, subnet, gateway, nat, created_at FROM network";

pub(crate) fn networks(conn: &Connection) -> Result<Vec<NetworkRecord>, LedgerError> {
    let mut st = conn
        .prepare_cached(&format!("{NETWORK_COLS} ORDER BY name"))
        .ctx("prepare networks")?;
    let rows = st.query_map([], network_row).ctx("read networks")?;
    rows.collect::<Result<_, _>>().ctx("read networks")
}

pub(crate) fn network(conn: &Connection, name: &str) -> Result<Option<NetworkRecord>, LedgerError> {
    conn.prepare_cached(&format!("{NETWORK_COLS} WHERE name = ?1"))
        .ctx("prepare network")?
        .query_row([name], network_row)
        .optional()
        .ctx("read network")
}

type RawIo = (
    String,
    String,
    String,
    String,
    Option<u32>,
    u32,
    Option<String>,
    String,
    String,
    Option<u32>,
);

fn decode_io(r: RawIo) -> Result<IoRecord, LedgerError> {
    let bad = |what: String| LedgerError::BadRow {
        table: "io_partition",
        key: r.0.clone(),
        what,
    };
    Ok(IoRecord {
        kind: r.1.parse().map_err(bad)?,
        run_state: r.3.parse().map_err(bad)?,
        zone: r.2.clone(),
        pid: r.4,
        restart_count: r.5,
        last_exit: r.6.clone(),
        created_at: r.7.clone(),
        updated_at: r.8.clone(),
        cpus: r.9,
        name: r.0,
    })
}

const IO_COLS: &str = "SELECT name, kind, zone, run_state, pid, restart_count, last_exit,
    created_at, updated_at, cpus FROM io_partition";

fn io_row(r: &Row<'_>) -> rusqlite::Result<RawIo> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

pub(crate) fn io_partitions(conn: &Connection) -> Result<Vec<IoRecord>, LedgerError> {
    let mut st = conn
        .prepare_cached(&format!("{IO_COLS} ORDER BY name"))
        .ctx("prepare io partitions")?;
    let rows = st
        .query_map([], io_row)
        .ctx("read io partitions")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read io partitions")?;
    rows.into_iter().map(decode_io).collect()
}

pub(crate) fn io_partition(conn: &Connection, name: &str) -> Result<Option<IoRecord>, LedgerError> {
    conn.prepare_cached(&format!("{IO_COLS} WHERE name = ?1"))
        .ctx("prepare io partition")?
        .query_row([name], io_row)
        .optional()
        .ctx("read io partition")?
        .map(decode_io)
        .transpose()
}

pub(crate) fn channels(conn: &Connection) -> Result<Vec<ChannelRecord>, LedgerError> {
    let mut st = conn
        .prepare_cached(
            "SELECT partition, nic, network, io_partition, address, mbps FROM channel
             ORDER BY partition, nic",
        )
        .ctx("prepare channels")?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<u32>>(5)?,
            ))
        })
        .ctx("read channels")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("read channels")?;
    rows.into_iter()
        .map(|(p, nic, network, io_partition, a, mbps)| {
            let bad = |what: String| LedgerError::BadRow {
                table: "channel",
                key: format!("{p}/{nic}"),
                what,
            };
            Ok(ChannelRecord {
                partition: p.parse().map_err(|e: uuid::Error| bad(e.to_string()))?,
                nic,
                network,
                io_partition,
                address: a
                    .parse()
                    .map_err(|e: std::net::AddrParseError| bad(e.to_string()))?,
                mbps,
            })
        })
        .collect()
}

impl Ledger {
    /// Every network, by name.
    pub async fn networks(&self) -> Result<Vec<NetworkRecord>, LedgerError> {
        self.read(networks).await
    }

    /// The network with this name.
    pub async fn network(&self, name: &str) -> Result<Option<NetworkRecord>, LedgerError> {
        let name = name.to_owned();
        self.read(move |c| network(c, &name)).await
    }

    /// Every I/O partition, by name.
    pub async fn io_partitions(&self) -> Result<Vec<IoRecord>, LedgerError> {
        self.read(io_partitions).await
    }

    /// The I/O partition with this name.
    pub async fn io_partition(&self, name: &str) -> Result<Option<IoRecord>, LedgerError> {
        let name = name.to_owned();
        self.read(move |c| io_partition(c, &name)).await
    }

    /// Every open channel, by partition and NIC.
    pub async fn channels(&self) -> Result<Vec<ChannelRecord>, LedgerError> {
        self.read(channels).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_strictly() {
        let s: Subnet = "10.1.0.0/24".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(s.hosts().count(), 254);
        assert_eq!(s.hosts().last(), Some(Ipv4Addr::new(10, 1, 0, 254)));
        assert!(s.overlaps("10.1.0.128/25".parse().unwrap()));
        assert!(!s.overlaps("10.2.0.0/24".parse().unwrap()));
        for bad in [
            "10.1.0.0",
            "10.1.0.1/24",
            "10.1.0.0/31",
            "10.1.0.0/7",
            "x/24",
            "10.1.0.0/x",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad} accepted");
        }
        let err = "10.1.0.5/24".parse::<Subnet>().unwrap_err();
        assert!(err.contains("10.1.0.0/24"), "{err}");
    }

    #[test]
    fn kinds_and_states_round_trip() {
        for k in [IoKind::Switch, IoKind::Storage] {
            assert_eq!(k.as_str().parse::<IoKind>(), Ok(k));
        }
        for s in [
            IoState::Stopped,
            IoState::Starting,
            IoState::Running,
            IoState::Crashed,
        ] {
            assert_eq!(s.as_str().parse::<IoState>(), Ok(s));
        }
    }
}
