//! `brood host ...`: the host broodd runs on (`GET /v1/host`), and, when
//! broodd is in a cluster (`--catalog`), the catalog's hosts, zones,
//! domains and placements (`/v1/cluster/...`).

use anyhow::Result;
use brood_api::HostInfo;
use brood_api::cluster::{
    ClusterCapacity, ClusterDomain, ClusterDomainList, ClusterDomainPolicy, ClusterHost,
    ClusterHostAddRequest, ClusterHostList, ClusterOps, ClusterOpsAddRequest, ClusterOpsAdded,
    ClusterOpsList, ClusterPlaceRequest, ClusterPlacement, ClusterPlacementList, ClusterZone,
    ClusterZoneAddRequest, ClusterZoneList,
};
use clap::{Args, Subcommand};

use crate::Output;
use crate::client::{Client, encode};
use crate::render::{Table, key_values, or_dash, print_json, resources};
use crate::units::{human_mib, parse_gib, parse_mib};

/// Commands on hosts.
#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Show this host (capacity, use, accelerator, directories), or NAME of the cluster.
    #[command(after_help = "Examples:
  brood host show
  brood host show -o json
  brood host show h2            # a host of the cluster's catalog
  brood --host http://10.0.0.5:7070 host show")]
    Show {
        /// A host of the cluster (default: the host broodd runs on).
        name: Option<String>,
    },
    /// List the cluster's hosts with their state, use and zones.
    #[command(after_help = "Examples:\n  brood host list\n  brood host list -o json")]
    List,
    /// Add a host to the cluster ahead of its broodd (pending until it registers).
    Add(AddArgs),
    /// Drain a host: no new partitions go there (--undo takes it back).
    #[command(after_help = "Examples:\n  brood host drain h2\n  brood host drain h2 --undo")]
    Drain {
        /// Host name.
        name: String,
        /// Undrain: the host takes partitions again.
        #[arg(long)]
        undo: bool,
    },
    /// Remove a host with no partitions placed on it.
    #[command(after_help = "Examples:\n  brood host remove h2")]
    Remove {
        /// Host name.
        name: String,
    },
    /// Zones of the cluster: `zone list`, `zone add KIND:NAME`.
    #[command(subcommand)]
    Zone(ZoneCmd),
    /// Domains of the cluster: `domain list`, `domain set NAME ...`.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Place a partition: the catalog picks its host by zones, domain and load.
    Place(PlaceArgs),
    /// List the cluster's placements.
    #[command(after_help = "Examples:\n  brood host placements\n  brood host placements -o json")]
    Placements,
    /// Operations services (`broodd ops`): `ops add NAME`, `ops list`, `ops remove NAME`.
    #[command(subcommand)]
    Ops(OpsCmd),
}

/// Commands on operations instances.
#[derive(Debug, Subcommand)]
pub enum OpsCmd {
    /// Authorize an operations instance: makes its token (shown once; the
    /// catalog keeps its SHA-256).
    #[command(after_help = "Examples:
  brood host ops add ops1 --token-file /etc/brood/ops1.token
  broodd ops --catalog postgres://brood@pg/brood --name ops1 --token-file /etc/brood/ops1.token")]
    Add {
        /// Its name: 1-63 of [a-z0-9._-].
        name: String,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
    },
    /// List the operations instances and the hosts each watches.
    #[command(after_help = "Examples:\n  brood host ops list\n  brood host ops list -o json")]
    List,
    /// Withdraw an instance's authorization (its leases go too).
    #[command(after_help = "Examples:\n  brood host ops remove ops1")]
    Remove {
        /// Its name.
        name: String,
    },
}

/// Arguments of `brood host add`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood host add h2 --address 10.0.0.12:7070 --zone storage:shared --zone network:front
  brood host add h3 --memory 64G --vcpus 32 --disk 2T

The host's broodd replaces address, capacity and zones when it registers
(broodd --catalog postgres://... --cluster-host h2 --zone ...).")]
pub struct AddArgs {
    /// Host name: 1-63 of [a-z0-9._-].
    name: String,
    /// Where its broodd listens, HOST:PORT.
    #[arg(long, default_value = "")]
    address: String,
    /// Memory (512M, 64G; a plain number is MiB).
    #[arg(long, value_parser = parse_mib, default_value = "0")]
    memory: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 0)]
    vcpus: u64,
    /// Disk (a plain number is GiB; 2T).
    #[arg(long, value_parser = parse_gib, default_value = "0")]
    disk: u64,
    /// A zone it provides, KIND:NAME (repeatable).
    #[arg(long = "zone", value_name = "KIND:NAME")]
    zones: Vec<String>,
}

/// Commands on zones.
#[derive(Debug, Subcommand)]
pub enum ZoneCmd {
    /// List zones and the hosts providing them.
    #[command(after_help = "Examples:\n  brood host zone list\n  brood host zone list -o json")]
    List,
    /// Add a zone; a kind other than network, storage, console, firmware,
    /// monitor, power, processor or memory is administrator-defined.
    #[command(
        after_help = "Examples:\n  brood host zone add storage:shared\n  brood host zone add gpu:a100"
    )]
    Add {
        /// KIND:NAME.
        zone: String,
    },
}

/// Commands on domains.
#[derive(Debug, Subcommand)]
pub enum DomainCmd {
    /// List domains and their policies.
    #[command(after_help = "Examples:\n  brood host domain list\n  brood host domain list -o json")]
    List,
    /// Create a domain or replace its policy.
    Set(DomainArgs),
}

/// Arguments of `brood host domain set`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood host domain set db --importance mission-critical --preferred h1 --available h1,h2
  brood host domain set lab --importance development --limit-memory 8G")]
pub struct DomainArgs {
    /// Domain name.
    name: String,
    /// mission-critical, production, test or development.
    #[arg(long, default_value = "production")]
    importance: String,
    /// Hosts it may use (comma-separated; none: any host).
    #[arg(long, value_delimiter = ',')]
    available: Vec<String>,
    /// Hosts it prefers, in order (comma-separated).
    #[arg(long, value_delimiter = ',')]
    preferred: Vec<String>,
    /// Memory kept free for it on every host it may use.
    #[arg(long, value_parser = parse_mib, default_value = "0")]
    guarantee_memory: u64,
    /// vCPUs kept free for it on every host it may use.
    #[arg(long, default_value_t = 0)]
    guarantee_vcpus: u64,
    /// At most this much memory of one host (0: no limit).
    #[arg(long, value_parser = parse_mib, default_value = "0")]
    limit_memory: u64,
    /// At most this many vCPUs of one host (0: no limit).
    #[arg(long, default_value_t = 0)]
    limit_vcpus: u64,
}

/// Arguments of `brood host place`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood host place web --memory 512M --vcpus 1 --require storage:shared
  brood host place db --domain db --memory 4G --require 'processor:x86-v3|x86-v4' --require '?console:serial'

Requirements: KIND:NAME[|NAME...] (names ranked, first preferred), KIND:*
(any zone of the kind), ?KIND:... (optional). Placing the same name again
answers the same placement. Create the VM on the host it names.")]
pub struct PlaceArgs {
    /// Partition name (unique in the cluster).
    name: String,
    /// Its domain.
    #[arg(long, default_value = "default")]
    domain: String,
    /// Memory (a plain number is MiB).
    #[arg(long, value_parser = parse_mib)]
    memory: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u64,
    /// Disk (a plain number is GiB).
    #[arg(long, value_parser = parse_gib, default_value = "0")]
    disk: u64,
    /// A required zone (repeatable).
    #[arg(long = "require", value_name = "REQ")]
    requires: Vec<String>,
}

fn host_path(name: &str) -> String {
    format!("/v1/cluster/hosts/{}", encode(name))
}

fn emit<T: serde::Serialize>(out: Output, v: &T, text: impl FnOnce(&T) -> String) -> Result<i32> {
    match out {
        Output::Json => print_json(v)?,
        Output::Text => print!("{}", text(v)),
    }
    Ok(0)
}

/// Runs a `brood host` command; returns the exit code.
pub async fn run(cmd: HostCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        HostCmd::Show { name: None } => {
            let info: HostInfo = client.get("/v1/host").await?;
            emit(out, &info, show)
        }
        HostCmd::Show { name: Some(n) } => {
            let h: ClusterHost = client.get(&host_path(&n)).await?;
            emit(out, &h, cluster_host)
        }
        HostCmd::List => {
            let l: ClusterHostList = client.get("/v1/cluster/hosts").await?;
            emit(out, &l, |l| host_table(&l.hosts))
        }
        HostCmd::Add(a) => {
            let req = ClusterHostAddRequest {
                name: a.name,
                address: a.address,
                capacity: ClusterCapacity {
                    memory_mib: a.memory,
                    vcpus: a.vcpus,
                    disk_gib: a.disk,
                },
                zones: a.zones,
            };
            let h: ClusterHost = client.post("/v1/cluster/hosts", &req).await?;
            emit(out, &h, |h| {
                format!("added host {} ({})\n", h.name, h.state)
            })
        }
        HostCmd::Drain { name, undo } => {
            let verb = if undo { "undrain" } else { "drain" };
            let path = format!("{}/{verb}", host_path(&name));
            let h: ClusterHost = client.post(&path, &serde_json::json!({})).await?;
            emit(out, &h, |h| format!("host {} is {}\n", h.name, h.state))
        }
        HostCmd::Remove { name } => {
            client.delete(&host_path(&name)).await?;
            match out {
                Output::Json => print_json(&serde_json::json!({"removed": name}))?,
                Output::Text => println!("removed host {name}"),
            }
            Ok(0)
        }
        HostCmd::Zone(ZoneCmd::List) => {
            let l: ClusterZoneList = client.get("/v1/cluster/zones").await?;
            emit(out, &l, |l| zone_table(&l.zones))
        }
        HostCmd::Zone(ZoneCmd::Add { zone }) => {
            let z: ClusterZone = client
                .post("/v1/cluster/zones", &ClusterZoneAddRequest { zone })
                .await?;
            emit(out, &z, |z| format!("zone {} added\n", z.zone))
        }
        HostCmd::Domain(DomainCmd::List) => {
            let l: ClusterDomainList = client.get("/v1/cluster/domains").await?;
            emit(out, &l, |l| domain_table(&l.domains))
        }
        HostCmd::Domain(DomainCmd::Set(a)) => {
            let req = ClusterDomain {
                name: a.name,
                policy: ClusterDomainPolicy {
                    importance: Some(a.importance),
                    available: a.available,
                    preferred: a.preferred,
                    guarantee: ClusterCapacity {
                        memory_mib: a.guarantee_memory,
                        vcpus: a.guarantee_vcpus,
                        disk_gib: 0,
                    },
                    limit: ClusterCapacity {
                        memory_mib: a.limit_memory,
                        vcpus: a.limit_vcpus,
                        disk_gib: 0,
                    },
                },
            };
            let d: ClusterDomain = client.post("/v1/cluster/domains", &req).await?;
            emit(out, &d, |d| format!("domain {} set\n", d.name))
        }
        HostCmd::Place(a) => {
            let req = ClusterPlaceRequest {
                name: a.name,
                domain: Some(a.domain),
                demand: ClusterCapacity {
                    memory_mib: a.memory,
                    vcpus: a.vcpus,
                    disk_gib: a.disk,
                },
                requires: a.requires,
                definition: None,
            };
            let p: ClusterPlacement = client.post("/v1/cluster/placements", &req).await?;
            emit(out, &p, |p| {
                let mut s = format!(
                    "{} placed on {} (generation {})\n",
                    p.name,
                    or_dash(p.host.as_deref()),
                    p.generation
                );
                if !p.evict.is_empty() {
                    s.push_str(&format!(
                        "to make room, move away first: {}\n",
                        p.evict
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                s
            })
        }
        HostCmd::Placements => {
            let l: ClusterPlacementList = client.get("/v1/cluster/placements").await?;
            emit(out, &l, |l| placement_table(&l.placements))
        }
        HostCmd::Ops(cmd) => ops(cmd, client, out).await,
    }
}

/// How long `vm create --place` waits for the chosen host to create it.
const CREATE_WITHIN: std::time::Duration = std::time::Duration::from_secs(300);

/// `brood vm create NAME --place`: placement chooses the host, which
/// defines (and starts) the VM from the definition published with the
/// placement; waits until that host holds it.
pub async fn place_and_create(
    req: brood_api::DefineRequest,
    requires: Vec<String>,
    domain: Option<String>,
    client: &Client,
    out: Output,
) -> Result<i32> {
    use std::io::IsTerminal;
    let name = req.name.clone();
    let body = ClusterPlaceRequest {
        name: name.clone(),
        domain,
        demand: ClusterCapacity::default(),
        requires,
        definition: Some(req),
    };
    let p: ClusterPlacement = client.post("/v1/cluster/placements", &body).await?;
    let at = or_dash(p.host.as_deref()).to_owned();
    let talk = out == Output::Text && std::io::stderr().is_terminal();
    if talk {
        eprintln!(
            "{name} placed on {at} (generation {}); waiting for {at} to create it",
            p.generation
        );
    }
    let deadline = std::time::Instant::now() + CREATE_WITHIN;
    loop {
        let l: ClusterPlacementList = client.get("/v1/cluster/placements").await?;
        match l.placements.into_iter().find(|q| q.name == name) {
            Some(q) if q.held => {
                return emit(out, &q, |q| {
                    format!(
                        "created {} on {} (generation {})\n",
                        q.name,
                        or_dash(q.host.as_deref()),
                        q.generation
                    )
                });
            }
            Some(_) => {}
            None => anyhow::bail!(
                "{at} could not create {name} and withdrew its placement: its broodd's log says \
                 why (a network or bridge it does not have, say); nothing is left of it"
            ),
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{name} is placed on {at}, but {at} has not created it within {}s: its broodd's \
                 log says why (`brood host show {at}`); `brood host placements` shows it pending",
                CREATE_WITHIN.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn ops(cmd: OpsCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        OpsCmd::Add { name, token_file } => {
            if let Some(f) = &token_file
                && f.exists()
            {
                anyhow::bail!(
                    "{} exists: give a new file for the token (it is written once)",
                    f.display()
                );
            }
            let a: ClusterOpsAdded = client
                .post("/v1/cluster/ops", &ClusterOpsAddRequest { name })
                .await?;
            let Some(f) = token_file else {
                return emit(out, &a, |a| {
                    format!(
                        "operations instance {} added; its token:\n{}\n",
                        a.name, a.token
                    )
                });
            };
            write_private(&f, &format!("{}\n", a.token))?;
            let shown = serde_json::json!({"name": a.name, "token_file": f.display().to_string()});
            emit(out, &shown, |_| {
                format!(
                    "operations instance {} added; its token is in {}\n",
                    a.name,
                    f.display()
                )
            })
        }
        OpsCmd::List => {
            let l: ClusterOpsList = client.get("/v1/cluster/ops").await?;
            emit(out, &l, |l| ops_table(&l.ops))
        }
        OpsCmd::Remove { name } => {
            client
                .delete(&format!("/v1/cluster/ops/{}", encode(&name)))
                .await?;
            match out {
                Output::Json => print_json(&serde_json::json!({"removed": name}))?,
                Output::Text => println!("removed operations instance {name}"),
            }
            Ok(0)
        }
    }
}

/// Writes a secret to a new file only its owner may read.
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
    Ok(())
}

/// The table of `brood host ops list`.
pub fn ops_table(ops: &[ClusterOps]) -> String {
    let mut t = Table::new(&["NAME", "SILENT", "HOSTS"]);
    for o in ops {
        t.row(vec![
            o.name.clone(),
            o.silent_ms
                .map_or_else(|| "never ran".to_owned(), |ms| format!("{ms} ms")),
            if o.hosts.is_empty() {
                "-".to_owned()
            } else {
                o.hosts.join(",")
            },
        ]);
    }
    t.render()
}

fn capacity(c: &ClusterCapacity) -> String {
    format!(
        "{}, {} vCPUs, {} GiB disk",
        human_mib(c.memory_mib),
        c.vcpus,
        c.disk_gib
    )
}

/// The table of `brood host list`.
pub fn host_table(hosts: &[ClusterHost]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "MEMORY",
        "VCPUS",
        "PARTITIONS",
        "ZONES",
        "OPS",
    ])
    .right(&[4]);
    for h in hosts {
        t.row(vec![
            h.name.clone(),
            h.state.clone(),
            format!(
                "{}/{}",
                human_mib(h.used.memory_mib),
                human_mib(h.capacity.memory_mib)
            ),
            format!("{}/{}", h.used.vcpus, h.capacity.vcpus),
            h.partitions.to_string(),
            if h.zones.is_empty() {
                "-".to_owned()
            } else {
                h.zones.join(",")
            },
            or_dash(h.ops.as_deref()),
        ]);
    }
    t.render()
}

/// The key/value listing of `brood host show NAME`.
pub fn cluster_host(h: &ClusterHost) -> String {
    key_values(&[
        ("name", h.name.clone()),
        ("state", h.state.clone()),
        (
            "address",
            or_dash((!h.address.is_empty()).then_some(&h.address)),
        ),
        ("capacity", capacity(&h.capacity)),
        ("used", capacity(&h.used)),
        ("partitions", h.partitions.to_string()),
        (
            "zones",
            or_dash((!h.zones.is_empty()).then(|| h.zones.join(", "))),
        ),
        (
            "heartbeat",
            h.silent_ms
                .map_or("never".to_owned(), |ms| format!("{ms} ms ago")),
        ),
        (
            "version",
            or_dash((!h.broodd_version.is_empty()).then_some(&h.broodd_version)),
        ),
    ])
}

fn zone_table(zones: &[ClusterZone]) -> String {
    let mut t = Table::new(&["ZONE", "HOSTS"]);
    for z in zones {
        t.row(vec![
            z.zone.clone(),
            if z.hosts.is_empty() {
                "-".to_owned()
            } else {
                z.hosts.join(",")
            },
        ]);
    }
    t.render()
}

fn domain_table(domains: &[ClusterDomain]) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "any".to_owned()
        } else {
            v.join(",")
        }
    };
    let mut t = Table::new(&["NAME", "IMPORTANCE", "AVAILABLE", "PREFERRED"]);
    for d in domains {
        t.row(vec![
            d.name.clone(),
            or_dash(d.policy.importance.as_deref()),
            list(&d.policy.available),
            if d.policy.preferred.is_empty() {
                "-".to_owned()
            } else {
                d.policy.preferred.join(",")
            },
        ]);
    }
    t.render()
}

fn placement_table(ps: &[ClusterPlacement]) -> String {
    let mut t = Table::new(&["NAME", "HOST", "GEN", "HELD", "DOMAIN", "MEMORY"]).right(&[2]);
    for p in ps {
        t.row(vec![
            p.name.clone(),
            or_dash(p.host.as_deref()),
            p.generation.to_string(),
            if p.held { "yes" } else { "no" }.to_owned(),
            p.domain.clone(),
            human_mib(p.demand.memory_mib),
        ]);
    }
    t.render()
}

/// The key/value listing of `brood host show`.
pub fn show(h: &HostInfo) -> String {
    key_values(&[
        ("hostname", h.hostname.clone()),
        ("version", h.version.clone()),
        ("accel", h.accel.clone()),
        (
            "partitions",
            format!("{} ({} active)", h.partitions, h.active),
        ),
        ("capacity", resources(&h.capacity)),
        ("used", resources(&h.used)),
        ("available", resources(&h.available)),
        (
            "overcommit",
            format!("{} vCPUs per host CPU", h.vcpu_overcommit),
        ),
        ("data dir", h.data_dir.clone()),
        ("run dir", h.run_dir.clone()),
        ("job store", h.job_store.clone()),
        (
            "engine",
            format!(
                "{} ({}{}{}{})",
                h.engine.name,
                h.engine.accel,
                if h.engine.save_restore {
                    ", save/restore"
                } else {
                    ""
                },
                if h.engine.fork { ", fork" } else { "" },
                if h.engine.attach {
                    ", survives broodd restarts"
                } else {
                    ""
                },
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use brood_api::Resources;

    use super::*;

    #[test]
    fn show_lists_the_host() {
        let r = Resources {
            memory_mib: 1024,
            vcpus: 4,
            disk_gib: 20,
            nics: 8,
        };
        let h = HostInfo {
            hostname: "box".into(),
            version: "0.1.0".into(),
            accel: "kvm".into(),
            capacity: r,
            used: Resources::default(),
            available: r,
            vcpu_overcommit: 2.0,
            partitions: 3,
            active: 1,
            data_dir: "/var/lib/brood".into(),
            run_dir: "/run/brood".into(),
            job_store: "sqlite".into(),
            engine: brood_api::EngineInfo {
                name: "qemu".into(),
                accel: "kvm".into(),
                kvm: true,
                save_restore: true,
                fork: true,
                rehost: true,
                attach: true,
                max_vcpus: 64,
            },
        };
        let s = show(&h);
        assert!(s.starts_with("hostname    box\n"), "{s}");
        assert!(s.contains("partitions  3 (1 active)\n"), "{s}");
        assert!(
            s.contains("used        0 MiB, 0 vCPUs, 0 GiB disk, 0 NICs\n"),
            "{s}"
        );
        assert!(s.contains("overcommit  2 vCPUs per host CPU\n"), "{s}");
    }
}
