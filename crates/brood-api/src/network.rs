//! Networks and the I/O partitions that serve them, on the wire.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Body of `POST /v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreateRequest {
    /// Name: 1-15 characters of `[a-z0-9_.-]`, not the name of a host
    /// interface (a NIC names its network as it would name a bridge).
    #[schema(min_length = 1, max_length = 15, pattern = "^[a-z0-9_.-]+$")]
    pub name: String,
    /// IPv4 subnet, `ADDRESS/PREFIX` with a prefix of 8-30 (`10.0.0.0/24`).
    pub subnet: String,
    /// Network zone (default `default`); each zone is served by a switch
    /// process of its own and zones are isolated from each other.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 32, pattern = "^[a-z0-9_.-]+$")]
    pub zone: Option<String>,
    /// The host takes the subnet's first address on a tap of the network
    /// and guests route through it.
    #[serde(default)]
    pub gateway: bool,
    /// The host forwards and masquerades the subnet to its uplink (implies `gateway`).
    #[serde(default)]
    pub nat: bool,
}

/// A guest NIC on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkMember {
    /// The partition.
    pub partition: String,
    /// Its uuid.
    pub uuid: Uuid,
    /// The NIC's index in its configuration.
    pub nic: u32,
    /// Its address on the network.
    pub address: String,
}

/// A network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Network {
    /// Name.
    pub name: String,
    /// Network zone.
    pub zone: String,
    /// Subnet.
    pub subnet: String,
    /// The host's address on it, when it has a gateway.
    pub gateway: Option<String>,
    /// Whether the host NATs it to the uplink.
    pub nat: bool,
    /// The switch I/O partition serving it.
    pub io_partition: String,
    /// The NICs on it (open channels).
    pub members: Vec<NetworkMember>,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// Answer of `GET /v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkList {
    /// Every network, by name.
    pub items: Vec<Network>,
}

/// An I/O partition: a supervised process that owns a host device class
/// (a network zone's switch) and serves guests over channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IoPartition {
    /// Name (`switch-ZONE`).
    pub name: String,
    /// Always `io`: the partition kind.
    pub kind: String,
    /// What it serves: `switch` or `storage`.
    pub serves: String,
    /// The zone it serves.
    pub zone: String,
    /// `stopped`, `starting`, `running` or `crashed`.
    pub state: String,
    /// Its process, while it runs.
    pub pid: Option<u32>,
    /// Restarts after failures.
    pub restart_count: u32,
    /// How its process last ended.
    pub last_exit: Option<String>,
    /// Its clients: open channels of NICs (a switch).
    pub clients: Vec<NetworkMember>,
    /// Its clients: open channels of disks (a storage partition).
    #[serde(default)]
    pub disk_clients: Vec<DiskClient>,
    /// How many host CPUs are dedicated to its process (`None`: any CPU).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// The host CPUs its process may run on, as Linux lists them
    /// (`Cpus_allowed_list`, e.g. `1` or `0-3`), while it runs.
    #[serde(default)]
    pub cpu_list: Option<String>,
}

/// Body of `PATCH /v1/io/{name}`: what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IoPartitionPatch {
    /// Host CPUs to dedicate to its process, 1-1024 and fewer than the
    /// host's (the last ones broodd may use); `null` gives it every CPU again.
    #[schema(minimum = 1, maximum = 1024)]
    pub cpus: Option<u32>,
}

/// A disk served by a storage I/O partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskClient {
    /// The partition.
    pub partition: String,
    /// Its uuid.
    pub uuid: Uuid,
    /// The disk's index in the guest (0 is `vda`).
    pub disk: u32,
    /// The image the server opens.
    pub image: String,
    /// How the guest reaches it: `nbd` or `vhost-user-blk`.
    pub transport: String,
}

/// Answer of `GET /v1/io`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IoPartitionList {
    /// Every I/O partition, by name.
    pub items: Vec<IoPartition>,
}

/// The transport protocol of a published port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A host port forwarded to a port of a VM with a NIC on a NAT network
/// (`--publish HOST:GUEST[/tcp|udp]`, like Docker's `-p`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    /// The host's port, 1-65535; one VM per host port and protocol.
    #[schema(minimum = 1, maximum = 65535)]
    pub host_port: u16,
    /// The guest's port, 1-65535.
    #[schema(minimum = 1, maximum = 65535)]
    pub guest_port: u16,
    /// `tcp` (the default) or `udp`.
    #[serde(default = "tcp")]
    pub protocol: PortProtocol,
}

fn tcp() -> PortProtocol {
    PortProtocol::Tcp
}

impl std::fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        })
    }
}

impl std::fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.guest_port, self.protocol
        )
    }
}

impl std::str::FromStr for PublishedPort {
    type Err = String;
    /// Parses `HOST:GUEST[/tcp|udp]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("--publish {s:?}: use HOST:GUEST[/tcp|udp] (as 8080:80)");
        let (ports, protocol) = match s.split_once('/') {
            None => (s, PortProtocol::Tcp),
            Some((p, "tcp")) => (p, PortProtocol::Tcp),
            Some((p, "udp")) => (p, PortProtocol::Udp),
            Some((_, other)) => {
                return Err(format!(
                    "--publish {s:?}: protocol {other:?} is neither tcp nor udp"
                ));
            }
        };
        let (host, guest) = ports.split_once(':').ok_or_else(usage)?;
        let port = |what: &str, p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("--publish {s:?}: the {what} port {p:?} is not 1-65535"))
        };
        Ok(PublishedPort {
            host_port: port("host", host)?,
            guest_port: port("guest", guest)?,
            protocol,
        })
    }
}

/// A published port named by its host side (`--unpublish HOST[/tcp|udp]`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct HostPort {
    /// The host's port, 1-65535.
    #[schema(minimum = 1, maximum = 65535)]
    pub host_port: u16,
    /// `tcp` (the default) or `udp`.
    #[serde(default = "tcp")]
    pub protocol: PortProtocol,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host_port, self.protocol)
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;
    /// Parses `HOST[/tcp|udp]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, protocol) = match s.split_once('/') {
            None => (s, PortProtocol::Tcp),
            Some((p, "tcp")) => (p, PortProtocol::Tcp),
            Some((p, "udp")) => (p, PortProtocol::Udp),
            Some((_, other)) => {
                return Err(format!(
                    "--unpublish {s:?}: protocol {other:?} is neither tcp nor udp"
                ));
            }
        };
        let host_port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            format!("--unpublish {s:?}: use HOST[/tcp|udp], a host port 1-65535 (as 8080)")
        })?;
        Ok(HostPort {
            host_port,
            protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ports_parse() {
        let p: PublishedPort = "8080:80".parse().unwrap();
        assert_eq!(
            (p.host_port, p.guest_port, p.protocol),
            (8080, 80, PortProtocol::Tcp)
        );
        let u: PublishedPort = "5353:53/udp".parse().unwrap();
        assert_eq!(u.protocol, PortProtocol::Udp);
        assert_eq!(u.to_string(), "5353:53/udp");
        assert_eq!(
            "1:2/tcp".parse::<PublishedPort>().unwrap().to_string(),
            "1:2/tcp"
        );
        for bad in [
            "80",
            "0:80",
            "80:0",
            "x:80",
            "80:70000",
            "80:80/sctp",
            ":80",
            "80:",
        ] {
            assert!(bad.parse::<PublishedPort>().is_err(), "{bad} accepted");
        }
        assert!(
            "80:80/sctp"
                .parse::<PublishedPort>()
                .unwrap_err()
                .contains("sctp")
        );
    }

    #[test]
    fn host_ports_parse() {
        let p: HostPort = "2222".parse().unwrap();
        assert_eq!((p.host_port, p.protocol), (2222, PortProtocol::Tcp));
        let u: HostPort = "5353/udp".parse().unwrap();
        assert_eq!(u.to_string(), "5353/udp");
        for bad in ["0", "x", "70000", "80/sctp", "80:80", ""] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad} accepted");
        }
    }
}
