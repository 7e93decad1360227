//! `brood network ...`: networks (subnets in network zones) that VMs join
//! with `--nic NAME`, each served by its zone's switch I/O partition.
//! Addresses are handed out by broodd's ledger and given by the guest agent.

use anyhow::Result;
use brood_api::{Network, NetworkCreateRequest, NetworkList};
use clap::{Args, Subcommand};

use crate::Output;
use crate::client::{Client, encode};
use crate::job::Submit;
use crate::render::{Table, key_values, or_dash, print_json};

/// Commands on networks.
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network (its zone's switch starts with the zone's first).
    Create(CreateArgs),
    /// List networks.
    #[command(after_help = "Examples:\n  brood network list\n  brood network list -o json")]
    List,
    /// Show a network and the NICs on it with their addresses.
    #[command(after_help = "Examples:\n  brood network show lan\n  brood network show lan -o json")]
    Show {
        /// Network name.
        name: String,
    },
    /// Delete a network; refused while running VMs have NICs on it.
    #[command(after_help = "Examples:\n  brood network delete lan")]
    Delete {
        /// Network name.
        name: String,
        #[command(flatten)]
        wait: crate::job::NoWait,
    },
}

/// Arguments of `brood network create`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood network create lan --subnet 10.10.0.0/24
  brood network create dmz --subnet 10.20.0.0/24 --zone edge --gateway
  brood network create out --subnet 10.30.0.0/24 --nat
  brood vm create www --nic out --publish 8080:80   # host port 8080 -> www's port 80
  brood vm create web --nic lan     # web gets 10.10.0.1, shown by `brood network show lan`

Networks of different zones are served by different switch processes and
never see each other's frames.")]
pub struct CreateArgs {
    /// Network name: 1-12 of [a-z0-9_.-], not a host interface's name.
    name: String,
    /// IPv4 subnet, ADDRESS/PREFIX with a prefix of 8-30.
    #[arg(long, value_name = "CIDR")]
    subnet: String,
    /// Network zone [default: default].
    #[arg(long, value_name = "ZONE")]
    zone: Option<String>,
    /// The host takes the subnet's first address (on tap bn-NAME) and guests route through it.
    #[arg(long)]
    gateway: bool,
    /// NAT the subnet to the host's uplink (implies --gateway): guests get
    /// a default route and DNS through the gateway, and VMs on it may
    /// `--publish` host ports. Needs nftables on the host.
    #[arg(long)]
    nat: bool,
    #[command(flatten)]
    wait: crate::job::NoWait,
}

fn path(name: &str) -> String {
    format!("/v1/networks/{}", encode(name))
}

/// Runs a `brood network` command; returns the exit code.
pub async fn run(cmd: NetworkCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        NetworkCmd::Create(a) => {
            let req = NetworkCreateRequest {
                name: a.name,
                subnet: a.subnet,
                zone: a.zone,
                gateway: a.gateway || a.nat,
                nat: a.nat,
            };
            if a.wait.no_wait {
                return crate::job::submit(client, Submit::Post("/v1/networks", &req), out).await;
            }
            let n: Network = client.post("/v1/networks", &req).await?;
            match out {
                Output::Json => print_json(&n)?,
                Output::Text => println!(
                    "created network {} ({}, zone {}, served by {})",
                    n.name, n.subnet, n.zone, n.io_partition
                ),
            }
        }
        NetworkCmd::List => {
            let l: NetworkList = client.get("/v1/networks").await?;
            match out {
                Output::Json => print_json(&l)?,
                Output::Text => print!("{}", list_table(&l.items)),
            }
        }
        NetworkCmd::Show { name } => {
            let n: Network = client.get(&path(&name)).await?;
            match out {
                Output::Json => print_json(&n)?,
                Output::Text => print!("{}", show(&n)),
            }
        }
        NetworkCmd::Delete { name, wait } => {
            if wait.no_wait {
                return crate::job::submit::<()>(client, Submit::Delete(&path(&name)), out).await;
            }
            client.delete(&path(&name)).await?;
            if out == Output::Text {
                println!("deleted network {name}");
            }
        }
    }
    Ok(0)
}

/// The `address` lines `brood vm show` adds for a VM's NICs on networks
/// (`eth1 10.0.0.2/24 on lan`), empty when it has none.
pub async fn addresses(client: &Client, vm: &str) -> Result<String> {
    match client.get::<NetworkList>("/v1/networks").await {
        Ok(l) => Ok(address_lines(&l.items, vm)),
        // A broodd from before networks has none to show.
        Err(crate::client::ClientError::Api { status: 404, .. }) => Ok(String::new()),
        Err(e) => Err(e.into()),
    }
}

/// Every network, or none from a broodd from before networks.
pub async fn all_or_none(client: &Client) -> Result<Vec<Network>> {
    match client.get::<NetworkList>("/v1/networks").await {
        Ok(l) => Ok(l.items),
        Err(crate::client::ClientError::Api { status: 404, .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn address_lines(networks: &[Network], vm: &str) -> String {
    let mut found: Vec<(u32, String)> = Vec::new();
    for n in networks {
        let prefix = n.subnet.split_once('/').map_or("", |(_, p)| p);
        for m in n.members.iter().filter(|m| m.partition == vm) {
            found.push((
                m.nic,
                format!("eth{} {}/{prefix} on {}", m.nic, m.address, n.name),
            ));
        }
    }
    found.sort();
    let kv: Vec<(&str, String)> = found
        .into_iter()
        .enumerate()
        .map(|(i, (_, line))| (if i == 0 { "addresses" } else { "" }, line))
        .collect();
    if kv.is_empty() {
        String::new()
    } else {
        key_values(&kv)
    }
}

/// The table of `brood network list`.
pub fn list_table(items: &[Network]) -> String {
    let mut t = Table::new(&["NAME", "ZONE", "SUBNET", "GATEWAY", "NICS", "SWITCH"]).right(&[4]);
    for n in items {
        t.row(vec![
            n.name.clone(),
            n.zone.clone(),
            n.subnet.clone(),
            or_dash(n.gateway.as_deref()),
            n.members.len().to_string(),
            n.io_partition.clone(),
        ]);
    }
    t.render()
}

/// `brood network show`: key/values, a blank line, the NICs on it.
pub fn show(n: &Network) -> String {
    let kv = [
        ("name", n.name.clone()),
        ("zone", n.zone.clone()),
        ("subnet", n.subnet.clone()),
        ("gateway", or_dash(n.gateway.as_deref())),
        ("nat", n.nat.to_string()),
        ("switch", n.io_partition.clone()),
        ("created", n.created_at.clone()),
    ];
    let mut t = Table::new(&["VM", "NIC", "ADDRESS"]).right(&[1]);
    for m in &n.members {
        t.row(vec![
            m.partition.clone(),
            m.nic.to_string(),
            m.address.clone(),
        ]);
    }
    format!("{}\n{}", key_values(&kv), t.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use brood_api::NetworkMember;

    #[test]
    fn tables_show_members_and_addresses() {
        let n = Network {
            name: "lan".into(),
            zone: "default".into(),
            subnet: "10.10.0.0/24".into(),
            gateway: None,
            nat: false,
            io_partition: "switch-default".into(),
            members: vec![NetworkMember {
                partition: "web".into(),
                uuid: uuid::Uuid::nil(),
                nic: 0,
                address: "10.10.0.1".into(),
            }],
            created_at: "t".into(),
        };
        let l = list_table(std::slice::from_ref(&n));
        assert!(l.contains("lan") && l.contains("switch-default"), "{l}");
        let s = show(&n);
        assert!(s.contains("10.10.0.1") && s.contains("web"), "{s}");
        let a = address_lines(std::slice::from_ref(&n), "web");
        assert!(a.contains("eth0 10.10.0.1/24 on lan"), "{a}");
        assert_eq!(address_lines(&[n], "other"), "");
    }
}
