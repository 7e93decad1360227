//! `brood vm define` and `brood vm create`: turns the configuration flags
//! (or a `DefineRequest` JSON file, or what `brood vm show -o json` printed)
//! into `POST /v1/partitions`. Validation of names and sizes is broodd's;
//! this module only parses the flags' syntax.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use brood_api::{DefineRequest, DiskConfig, NicConfig, Partition, PartitionConfig, RestartPolicy};
use clap::Args;
use tokio::io::AsyncReadExt;

use crate::Output;
use crate::client::Client;
use crate::render::{parse_wire, print_json};

/// The configuration's name when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "default";

/// Arguments of `brood vm define` and `brood vm create`.
#[derive(Debug, Args)]
pub struct DefineArgs {
    /// Partition name: 1-64 of [a-z0-9_.-], starting with a letter or digit
    /// (with --from-json, the file's name when not given).
    #[arg(required_unless_present = "from_json")]
    pub name: Option<String>,
    /// A whole DefineRequest as JSON, or what `brood vm show -o json`
    /// printed (its read-only fields are ignored); '-' reads stdin. NAME
    /// replaces its name. Cannot be combined with the configuration flags.
    #[arg(long, value_name = "FILE", conflicts_with = "config_flags")]
    pub from_json: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Configuration")]
    pub flags: ConfigFlags,
    /// Services the VM needs (its definition's `requires`), comma-separated
    /// classes, e.g. `--requires dns,log`: at every start broodd requests
    /// one of each class that does not serve it yet; deleting it releases them.
    #[arg(long, value_name = "CLASSES", value_delimiter = ',')]
    pub requires: Vec<String>,
    /// Answer at once with the job instead of waiting for it (`brood job wait ID`).
    #[arg(long)]
    pub no_wait: bool,
    /// In a cluster (`broodd --catalog`): let placement choose the host,
    /// by --require and --domain, and create the VM there, whichever
    /// host's broodd you ask; waits until that host has created it.
    #[arg(long, conflicts_with = "no_wait")]
    pub place: bool,
    /// With --place: a zone the VM requires, KIND:NAME[|NAME...] (repeatable).
    #[arg(long = "require", value_name = "ZONE", requires = "place")]
    pub require: Vec<String>,
    /// With --place: the VM's domain (`default` when not given).
    #[arg(long, value_name = "DOMAIN", requires = "place")]
    pub domain: Option<String>,
    #[command(flatten, next_help_heading = "Disk image")]
    pub disk: crate::boot_disk::DiskImageArgs,
}

/// The flags that describe one configuration.
#[derive(Debug, Default, Args)]
#[group(id = "config_flags", multiple = true)]
pub struct ConfigFlags {
    /// Guest memory: 512M, 2G, or a plain number of MiB [default: 256M].
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_mib)]
    pub memory: Option<u64>,
    /// Virtual CPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// A qcow2 disk broodd creates, NAME:SIZE (4G, 1T, or plain GiB); the
    /// first is /dev/vda (repeatable). `,via=io[:ZONE]`: served by the
    /// storage I/O partition of ZONE (`default`), which survives restarts;
    /// `,iops=N`, `,mbps=M`: caps on the guest's requests to it.
    #[arg(long = "disk", value_name = "NAME:SIZE[,via=io[:ZONE]][,iops=N][,mbps=M]", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// A NIC on a brood network (`brood network list`), a host bridge, or
    /// `user` for QEMU's user network; NETWORK[,mac=MAC][,mbps=M]
    /// (repeatable). `,mbps=M`: a cap in Mbit/s each way, enforced by the
    /// switch of a brood network.
    #[arg(long = "nic", value_name = "NETWORK[,mac=MAC][,mbps=M]", value_parser = parse_nic)]
    pub nics: Vec<NicConfig>,
    /// Forward a host port to the VM (its first NIC on a NAT network, see
    /// `brood network create --nat`), HOST:GUEST[/tcp|udp], tcp when not
    /// given; reachable on the host's addresses (127.0.0.1 too) and from
    /// other hosts while the VM runs (repeatable).
    #[arg(long = "publish", value_name = "HOST:GUEST[/tcp|udp]")]
    pub publish: Vec<brood_api::PublishedPort>,
    /// Relative CPU weight, 1-10000 (100 is the default share).
    #[arg(long, value_name = "N")]
    pub cpu_weight: Option<u32>,
    /// Most CPU time in percent of one CPU (150 = one and a half CPUs).
    #[arg(long, value_name = "PCT")]
    pub cpu_cap: Option<u32>,
    /// Most memory QEMU may use, guest memory included: 1G, or plain MiB.
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_mib)]
    pub memory_limit: Option<u64>,
    /// Scheduling priority of the partition's jobs; higher goes first [default: 0].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// What broodd does when QEMU ends by itself [default: never].
    #[arg(long, value_name = "never|on-failure|always", value_parser = parse_restart)]
    pub restart: Option<RestartPolicy>,
    /// Start it whenever broodd starts (when it is stopped or crashed then).
    #[arg(long)]
    pub autostart: bool,
    /// Extra kernel command-line arguments.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Guest image to boot (`brood image list`) [default: broodd's default
    /// image]; a Debian image's root disk becomes /dev/vda (an overlay).
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// PID 1 of a Debian image's guest: `agent` (brood's agent, the
    /// default: it boots in milliseconds and forks) or `systemd` (the
    /// image's own, built with --package systemd-sysv; brood's agent runs
    /// as its unit; such a guest is not forked).
    #[arg(long, value_name = "agent|systemd", value_parser = parse_init, requires = "image")]
    pub init: Option<brood_api::GuestInit>,
    /// Name of the configuration these flags describe [default: default].
    #[arg(long, value_name = "NAME")]
    pub config: Option<String>,
}

/// Examples shown by `brood vm define --help`.
pub const DEFINE_EXAMPLES: &str = "Examples:
  brood vm define web --memory 512 --vcpus 2 --disk root:10 --nic br0
  brood vm define db --memory 4096 --cpu-cap 200 --restart on-failure
  brood vm define web --from-json web.json
  cat web.json | brood vm define web --from-json -
  brood vm show web -o json | brood vm define web2 --from-json -";

/// Examples shown by `brood vm create --help`.
pub const CREATE_EXAMPLES: &str = "Examples:
  brood vm create web --memory 512 --disk root:10 --nic user
  brood vm create deb --image deb --memory 512
  brood vm create job-1 --vcpus 4 --cmdline 'quiet' -o json

If the start fails, broodd removes the definition again.";

/// Parses `--init`.
fn parse_init(s: &str) -> Result<brood_api::GuestInit, String> {
    s.parse()
}

/// Parses `--disk NAME:SIZE[,via=io[:ZONE]]` (a plain size is GiB;
/// `via=io` serves it from the storage I/O partition of ZONE, `default`
/// unless named).
pub fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let (main, opts) = s.split_once(',').unwrap_or((s, ""));
    let (name, size) = main
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: use NAME:SIZE, e.g. root:10G (a plain number is GiB)"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: the disk needs a name before ':'"));
    }
    let size_gib = crate::units::parse_gib(size).map_err(|e| format!("--disk {s:?}: {e}"))?;
    let mut io_zone = None;
    let (mut iops, mut mbps) = (None, None);
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        let cap = |v: &str, what: &str| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("--disk {s:?}: {what}={v:?} must be a whole number above 0"))
        };
        match opt.split_once('=') {
            Some(("via", "io")) => io_zone = Some("default".to_string()),
            Some(("via", v)) if v.starts_with("io:") && v.len() > 3 => {
                io_zone = Some(v["io:".len()..].to_string());
            }
            Some(("iops", v)) => iops = Some(cap(v, "iops")?),
            Some(("mbps", v)) => mbps = Some(cap(v, "mbps")?),
            _ => {
                return Err(format!(
                    "--disk {s:?}: unknown option {opt:?}: use via=io or via=io:ZONE (served by a storage I/O partition), iops=N, mbps=M (caps)"
                ));
            }
        }
    }
    Ok(DiskConfig {
        name: name.to_string(),
        size_gib,
        io_zone,
        iops,
        mbps,
    })
}

/// Parses `--nic NETWORK[,mac=MAC][,mbps=M]` (`network=NAME` is NAME).
pub fn parse_nic(s: &str) -> Result<NicConfig, String> {
    let mut parts = s.split(',');
    let network = parts.next().unwrap_or_default();
    // `network=NAME` says explicitly what a bare NAME means: a brood network
    // (`brood network list`), or else a bridge.
    let network = network.strip_prefix("network=").unwrap_or(network);
    if network.is_empty() {
        return Err(format!("{s:?}: name a bridge or `user`"));
    }
    let (mut mac, mut mbps) = (None, None);
    for opt in parts {
        if let Some(m) = opt.strip_prefix("mbps=") {
            let n = m
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| format!("{s:?}: mbps={m:?} must be 1-100000 (Mbit/s)"))?;
            mbps = Some(n);
            continue;
        }
        match opt.strip_prefix("mac=") {
            Some(m) if !m.is_empty() => mac = Some(m.to_string()),
            _ => {
                return Err(format!(
                    "{s:?}: unknown option {opt:?} (use mac=MAC or mbps=M)"
                ));
            }
        }
    }
    Ok(NicConfig {
        network: network.to_string(),
        mac,
        mbps,
    })
}

fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    parse_wire(s, "never|on-failure|always")
}

/// The request the configuration flags describe.
pub fn request_from_flags(name: &str, flags: ConfigFlags, start: bool) -> DefineRequest {
    let mut config = PartitionConfig {
        disks: flags.disks,
        nics: flags.nics,
        ..PartitionConfig::default()
    };
    if let Some(m) = flags.memory {
        config.memory_mib = m;
    }
    if let Some(v) = flags.vcpus {
        config.vcpus = v;
    }
    if let Some(c) = flags.cmdline {
        config.cmdline = c;
    }
    config.image = flags.image;
    config.init = flags.init;
    let policy = &mut config.policy;
    policy.cpu_weight = flags.cpu_weight;
    policy.cpu_cap_pct = flags.cpu_cap;
    policy.memory_limit_mib = flags.memory_limit;
    policy.autostart = flags.autostart;
    if let Some(p) = flags.priority {
        policy.priority = p;
    }
    if let Some(r) = flags.restart {
        policy.restart = r;
    }
    let config_name = flags.config.unwrap_or_else(|| DEFAULT_CONFIG.to_string());
    DefineRequest {
        name: name.to_string(),
        configs: BTreeMap::from([(config_name.clone(), config)]),
        active_config: Some(config_name),
        start,
        publish: flags.publish,
    }
}

/// Reads a file, or stdin for `-`.
async fn read_input(file: &Path) -> Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        tokio::io::stdin()
            .read_to_string(&mut s)
            .await
            .context("read the DefineRequest from stdin")?;
        return Ok(s);
    }
    tokio::fs::read_to_string(file)
        .await
        .with_context(|| format!("read {}", file.display()))
}

/// Parses a `DefineRequest` read from `file`, or a shown `Partition` (its
/// read-only fields dropped); `name` (when given) and `start` replace its own.
fn parse_request(
    text: &str,
    file: &Path,
    name: Option<&str>,
    start: bool,
) -> Result<DefineRequest> {
    let what = || format!("parse {} as a DefineRequest", file.display());
    let mut value: serde_json::Value = serde_json::from_str(text).with_context(what)?;
    // What `vm show -o json` prints has a uuid, which a DefineRequest never
    // has: then every field a DefineRequest lacks is the partition's state
    // (uuid, run state, pid, disks, ...) and is dropped. A DefineRequest
    // file stays strict, so a misspelt field is an error.
    if let Some(obj) = value.as_object_mut()
        && obj.contains_key("uuid")
    {
        let keep = define_fields();
        obj.retain(|k, _| keep.iter().any(|f| f == k));
    }
    let mut req: DefineRequest = serde_json::from_value(value).with_context(what)?;
    if let Some(name) = name {
        req.name = name.to_string();
    }
    req.start = start;
    Ok(req)
}

/// The fields of a `DefineRequest`, as it is serialized.
fn define_fields() -> Vec<String> {
    let empty = DefineRequest {
        name: String::new(),
        configs: BTreeMap::new(),
        active_config: None,
        start: false,
        // One port, so that the field is serialized and kept.
        publish: vec![brood_api::PublishedPort {
            host_port: 1,
            guest_port: 1,
            protocol: brood_api::PortProtocol::Tcp,
        }],
    };
    serde_json::to_value(&empty)
        .ok()
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
        .unwrap_or_default()
}

/// Runs `vm define` (`start` false) or `vm create` (`start` true).
pub async fn run(args: DefineArgs, start: bool, client: &Client, out: Output) -> Result<i32> {
    let req = match (&args.from_json, &args.name) {
        (Some(file), name) => {
            parse_request(&read_input(file).await?, file, name.as_deref(), start)?
        }
        (None, Some(name)) => request_from_flags(name, args.flags, start),
        (None, None) => anyhow::bail!("name the partition (or give --from-json FILE)"),
    };
    let mut req = req;
    if !args.requires.is_empty() {
        for c in req.configs.values_mut() {
            c.requires.clone_from(&args.requires);
        }
    }
    if args.place {
        return crate::host::place_and_create(req, args.require, args.domain, client, out).await;
    }
    if let Some(boot) = crate::boot_disk::config(&args.disk)? {
        for c in req.configs.values_mut() {
            c.boot_disk = Some(boot.clone());
        }
        return with_disk_image(req, &args.disk, start, client, out).await;
    }
    if args.no_wait {
        let j: brood_api::Job = client.post("/v1/partitions?wait=false", &req).await?;
        return crate::job::queued(&j, out);
    }
    let p: Partition = client.post("/v1/partitions", &req).await?;
    match out {
        Output::Json => print_json(&p)?,
        Output::Text => {
            let verb = if start { "created" } else { "defined" };
            println!("{verb} {}", crate::partition::summary(&p));
        }
    }
    Ok(0)
}

/// Defines a partition that boots `--disk-image`, imports the image, and
/// with `start` starts it; a failed import or start deletes the
/// definition again, so nothing is left half-made.
async fn with_disk_image(
    mut req: DefineRequest,
    disk: &crate::boot_disk::DiskImageArgs,
    start: bool,
    client: &Client,
    out: Output,
) -> Result<i32> {
    let Some(file) = &disk.disk_image else {
        anyhow::bail!("no --disk-image");
    };
    req.start = false;
    let p: Partition = client.post("/v1/partitions", &req).await?;
    let name = p.name.clone();
    let undo = |e: anyhow::Error| async move {
        let path = format!("/v1/partitions/{}", crate::client::encode(&name));
        if let Err(d) = client.delete(&path).await {
            eprintln!("warning: could not delete {name} after the failure: {d}");
        }
        Err(e)
    };
    let imported = match crate::boot_disk::upload(client, &p.name, file, disk.disk_format).await {
        Ok(i) => i,
        Err(e) => return undo(e).await,
    };
    let p = if start {
        let path = format!("/v1/partitions/{}/start", crate::client::encode(&p.name));
        match client
            .post::<_, Partition>(&path, &serde_json::json!({}))
            .await
        {
            Ok(p) => p,
            Err(e) => return undo(e.into()).await,
        }
    } else {
        p
    };
    match out {
        Output::Json => print_json(&p)?,
        Output::Text => {
            let verb = if start { "created" } else { "defined" };
            println!(
                "{verb} {} (boot disk: {} GiB imported from {})",
                crate::partition::summary(&p),
                imported.size_gib,
                file.display()
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn disk_flags() {
        assert_eq!(
            parse_disk("root:10").unwrap(),
            DiskConfig {
                name: "root".into(),
                size_gib: 10,
                io_zone: None,
                iops: None,
                mbps: None,
            }
        );
        for bad in ["root", ":10", "root:", "root:ten", "root:-1", "root:1.5"] {
            assert!(parse_disk(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_disk("root").unwrap_err().contains("NAME:SIZE"));
        assert_eq!(parse_disk("data:4G").unwrap().size_gib, 4);
        assert_eq!(
            parse_disk("data:4G,via=io").unwrap().io_zone.as_deref(),
            Some("default")
        );
        assert_eq!(
            parse_disk("data:4,via=io:fast").unwrap().io_zone.as_deref(),
            Some("fast")
        );
        for bad in ["data:4,via=nfs", "data:4,via=io:", "data:4,rate=3"] {
            assert!(parse_disk(bad).unwrap_err().contains("via=io"), "{bad}");
        }
        let d = parse_disk("data:4,iops=50,mbps=8,via=io").unwrap();
        assert_eq!((d.iops, d.mbps), (Some(50), Some(8)));
        assert!(parse_disk("data:4,iops=0").unwrap_err().contains("above 0"));
    }

    #[test]
    fn nic_flags() {
        assert_eq!(
            parse_nic("br0").unwrap(),
            NicConfig {
                network: "br0".into(),
                mac: None,
                mbps: None,
            }
        );
        assert_eq!(
            parse_nic("user,mac=52:54:00:00:00:01")
                .unwrap()
                .mac
                .as_deref(),
            Some("52:54:00:00:00:01")
        );
        assert_eq!(parse_nic("lan,mbps=20").unwrap().mbps, Some(20));
        for bad in [
            "",
            ",mac=x",
            "br0,mac=",
            "br0,vlan=3",
            "lan,mbps=0",
            "lan,mbps=x",
            "lan,mbps=100001",
        ] {
            assert!(parse_nic(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn request_defaults_come_from_the_api() {
        let req = request_from_flags("web", ConfigFlags::default(), false);
        assert_eq!(req.name, "web");
        assert!(!req.start);
        assert_eq!(req.active_config.as_deref(), Some(DEFAULT_CONFIG));
        assert_eq!(req.configs[DEFAULT_CONFIG], PartitionConfig::default());
    }

    #[test]
    fn request_carries_every_flag() {
        let flags = ConfigFlags {
            memory: Some(512),
            vcpus: Some(2),
            disks: vec![parse_disk("root:10").unwrap()],
            nics: vec![parse_nic("user").unwrap()],
            publish: vec!["8080:80".parse().unwrap()],
            cpu_weight: Some(200),
            cpu_cap: Some(150),
            memory_limit: Some(1024),
            priority: Some(-3),
            restart: Some(RestartPolicy::Always),
            autostart: true,
            cmdline: Some("quiet".into()),
            image: Some("deb".into()),
            init: Some(brood_api::GuestInit::Systemd),
            config: Some("big".into()),
        };
        let req = request_from_flags("db", flags, true);
        assert!(req.start);
        assert_eq!(req.publish[0].to_string(), "8080:80/tcp");
        assert_eq!(req.active_config.as_deref(), Some("big"));
        let c = &req.configs["big"];
        assert_eq!((c.memory_mib, c.vcpus), (512, 2));
        assert_eq!(c.disks.len(), 1);
        assert_eq!(c.nics[0].network, "user");
        assert_eq!(c.cmdline, "quiet");
        assert_eq!(c.image.as_deref(), Some("deb"));
        assert_eq!(c.init, Some(brood_api::GuestInit::Systemd));
        assert!(
            parse_init("openrc")
                .unwrap_err()
                .contains("agent or systemd")
        );
        assert_eq!(c.policy.cpu_weight, Some(200));
        assert_eq!(c.policy.cpu_cap_pct, Some(150));
        assert_eq!(c.policy.memory_limit_mib, Some(1024));
        assert_eq!(c.policy.priority, -3);
        assert_eq!(c.policy.restart, RestartPolicy::Always);
        assert!(c.policy.autostart);
    }

    #[test]
    fn file_request_takes_the_command_line_name() {
        let file = Path::new("req.json");
        let text = r#"{"name":"other","configs":{"a":{"memory_mib":128}},"start":true}"#;
        let req = parse_request(text, file, Some("web"), false).unwrap();
        assert_eq!(req.name, "web");
        assert!(!req.start);
        assert_eq!(req.configs["a"].memory_mib, 128);
        assert_eq!(
            parse_request(text, file, None, false).unwrap().name,
            "other"
        );
        let e = parse_request(
            r#"{"name":"x","configs":{},"bogus":1}"#,
            file,
            Some("web"),
            false,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
    }

    #[test]
    fn what_show_prints_define_accepts() {
        let mut configs = BTreeMap::new();
        let mut c = PartitionConfig {
            memory_mib: 512,
            ..PartitionConfig::default()
        };
        c.disks.push(parse_disk("data:4").unwrap());
        c.nics.push(parse_nic("user").unwrap());
        configs.insert("default".to_string(), c);
        // As `brood vm show web -o json` prints it (fields of later
        // versions included: they are state, not definition).
        let shown = json!({
            "name": "web", "uuid": "00000000-0000-4000-8000-000000000001",
            "stage": "operating", "run_state": "running", "active_config": "default",
            "configs": configs, "pid": 7,
            "disks": [{"name": "data", "path": "/d/data.qcow2", "size_gib": 4}],
            "last_exit": "signal 9", "restart_count": 1, "pending_op": null,
            "parent": "tpl", "fork": null, "created_at": "t", "updated_at": "t",
            "addresses": ["10.0.0.2"],
            "publish": [{"host_port": 8080, "guest_port": 80, "protocol": "tcp"}]
        });
        let text = serde_json::to_string_pretty(&shown).unwrap();
        let req = parse_request(&text, Path::new("-"), None, false).unwrap();
        assert_eq!(req.name, "web");
        assert_eq!(req.configs, configs);
        assert_eq!(req.active_config.as_deref(), Some("default"));
        // Published ports are definition: kept.
        assert_eq!(req.publish.len(), 1);
        assert_eq!(req.publish[0].to_string(), "8080:80/tcp");
        assert_eq!(
            parse_request(&text, Path::new("-"), Some("web2"), true)
                .unwrap()
                .name,
            "web2"
        );
        // A DefineRequest's own configurations stay strict.
        let bad = text.replace("\"memory_mib\"", "\"memory_mb\"");
        assert!(parse_request(&bad, Path::new("-"), None, false).is_err());
    }
}
