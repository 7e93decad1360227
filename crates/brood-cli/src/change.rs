//! `brood vm set`, `brood vm disk attach|detach|resize` and `brood vm nic
//! attach|detach`: changing a partition after it is defined. broodd decides
//! what a running VM takes live and what waits for its next start; these
//! commands say which.

use anyhow::Result;
use brood_api::{
    Apply, AttachDiskRequest, AttachNicRequest, ChangeResult, ResizeDiskRequest,
    SetResourcesRequest,
};
use clap::{Args, Subcommand, ValueEnum};

use crate::Output;
use crate::client::{Client, encode};
use crate::job::Submit;
use crate::partition::partition_path;
use crate::render::print_json;
use crate::units::{parse_gib, parse_mib};

/// When a running VM takes a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ApplyArg {
    /// Live where the machine allows it, else at the next start (said so).
    #[default]
    Auto,
    /// Live, or refused where the machine cannot take it live.
    Now,
    /// At the next start only.
    NextStart,
}

impl From<ApplyArg> for Apply {
    fn from(a: ApplyArg) -> Apply {
        match a {
            ApplyArg::Auto => Apply::Auto,
            ApplyArg::Now => Apply::Now,
            ApplyArg::NextStart => Apply::NextStart,
        }
    }
}

impl ApplyArg {
    fn wire(self) -> &'static str {
        match self {
            ApplyArg::Auto => "auto",
            ApplyArg::Now => "now",
            ApplyArg::NextStart => "next-start",
        }
    }
}

/// Where to apply a change.
#[derive(Debug, Clone, Copy, Args)]
pub struct ApplyOpt {
    /// When a running VM takes the change: auto (live where its machine
    /// allows it, otherwise at the next start), now, or next-start.
    #[arg(long, value_enum, default_value_t = ApplyArg::Auto, value_name = "WHEN")]
    apply: ApplyArg,
    /// Answer at once with the job instead of waiting for it (`brood job wait ID`).
    #[arg(long)]
    no_wait: bool,
}

/// Sends a change request: waits for its job and reports what changed, or
/// with `--no-wait` prints the job.
async fn change<B: serde::Serialize>(
    client: &Client,
    req: Submit<'_, B>,
    apply: ApplyOpt,
    out: Output,
) -> Result<i32> {
    if apply.no_wait {
        return crate::job::submit(client, req, out).await;
    }
    let r: ChangeResult = req.send(client, false).await?;
    report(&r, out)
}

/// `brood vm set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Partition name or uuid.
    name: String,
    /// Guest memory: 512, 512M, 1G (a plain number is MiB).
    #[arg(long, value_parser = parse_mib, value_name = "SIZE")]
    memory: Option<u64>,
    /// Virtual CPUs, 1-255.
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// CPU cap in percent of one CPU (150 = one and a half CPUs), or `none`.
    #[arg(long, value_name = "PCT|none")]
    cpu_cap: Option<String>,
    /// Publish a host port (repeatable): HOST:GUEST[/tcp|udp], as `vm
    /// create --publish`; a running VM gets it at once.
    #[arg(long = "publish", value_name = "HOST:GUEST[/tcp|udp]")]
    publish: Vec<brood_api::PublishedPort>,
    /// Stop publishing a host port (repeatable): HOST[/tcp|udp], tcp when
    /// left out.
    #[arg(long = "unpublish", value_name = "HOST[/tcp|udp]")]
    unpublish: Vec<brood_api::HostPort>,
    #[command(flatten)]
    apply: ApplyOpt,
}

/// `brood vm disk ...`.
#[derive(Debug, Subcommand)]
pub enum DiskCmd {
    /// Attach a new empty disk (a running microvm gets it at its next start).
    #[command(after_help = "Examples:
  brood vm disk attach web logs 2G
  brood vm disk attach web scratch 1 --apply next-start")]
    Attach {
        /// Partition name or uuid.
        name: String,
        /// The disk's name: 1-32 characters of a-z, 0-9, '_', '-'.
        disk: String,
        /// Its size: 4, 4G, 1T (a plain number is GiB).
        #[arg(value_parser = parse_gib)]
        size: u64,
        #[command(flatten)]
        apply: ApplyOpt,
    },
    /// Detach a disk and delete its file (of a running VM: at its next start).
    #[command(after_help = "Examples:\n  brood vm disk detach web logs")]
    Detach {
        /// Partition name or uuid.
        name: String,
        /// The disk's name.
        disk: String,
        #[command(flatten)]
        apply: ApplyOpt,
    },
    /// Replace a stopped VM's boot disk with a disk image (a VM created
    /// with `--disk-image`); the file is imported, never written.
    #[command(after_help = "Examples:
  brood vm disk import deb12 debian-12-genericcloud-amd64.qcow2
  brood vm disk import box disk.raw --format raw")]
    Import {
        /// Partition name or uuid.
        name: String,
        /// The disk image.
        file: std::path::PathBuf,
        /// Its format, given, never probed.
        #[arg(long, value_name = "qcow2|raw", default_value = "qcow2", value_parser = crate::boot_disk::parse_format)]
        format: brood_api::ImageFormat,
    },
    /// Grow a disk (live on a running VM: the guest sees the new size at once).
    #[command(after_help = "Examples:
  brood vm disk resize web data 8G
  brood vm exec web 'cat /sys/block/vdb/size'   # 512-byte sectors")]
    Resize {
        /// Partition name or uuid.
        name: String,
        /// The disk's name.
        disk: String,
        /// Its new size, larger than today's: 8, 8G (a plain number is GiB).
        #[arg(value_parser = parse_gib)]
        size: u64,
        #[command(flatten)]
        apply: ApplyOpt,
    },
}

/// `brood vm nic ...`.
#[derive(Debug, Subcommand)]
pub enum NicCmd {
    /// Attach a NIC (a running microvm gets it at its next start).
    #[command(after_help = "Examples:
  brood vm nic attach web br0
  brood vm nic attach web user --mac 52:54:00:12:34:56")]
    Attach {
        /// Partition name or uuid.
        name: String,
        /// A network (`brood network list`), a host bridge, `user` or
        /// `user-unrestricted`.
        network: String,
        /// Its MAC address; chosen (and kept) by broodd when left out.
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        apply: ApplyOpt,
    },
    /// Detach a NIC, named by its MAC or index (0 is eth0; `brood vm show`).
    #[command(after_help = "Examples:
  brood vm nic detach web 52:54:00:12:34:56
  brood vm nic detach web 1")]
    Detach {
        /// Partition name or uuid.
        name: String,
        /// The NIC's MAC address or index.
        nic: String,
        #[command(flatten)]
        apply: ApplyOpt,
    },
}

/// Examples of `brood vm set`.
pub const SET_EXAMPLES: &str = "Examples:
  brood vm set web --memory 1G --vcpus 2       # a stopped VM: its new definition
  brood vm set web --cpu-cap 50                # a running one: live (a cgroup limit)
  brood vm set web --memory 1G                 # a running microvm: at its next start, marked * in `vm list`
  brood vm set web --memory 1G --apply now     # refused: microvm cannot hotplug memory
  brood vm set web --publish 8080:80 --publish 5353:53/udp --unpublish 2222
                                               # ports: at once, running or not

The microvm machine cannot hotplug memory, vCPUs, disks or NICs: on a running
VM they change at its next start (a restore of its saved state keeps what it
ran). A disk grows live and the CPU cap changes live, and so do published
ports (a running VM's DNATs are rebuilt before the answer).";

fn parse_cap(s: &str) -> Result<(Option<u32>, bool)> {
    if s == "none" {
        return Ok((None, true));
    }
    let pct: u32 = s.trim_end_matches('%').parse().map_err(|_| {
        anyhow::anyhow!("--cpu-cap {s:?}: give a percent of one CPU (50, 150) or `none`")
    })?;
    Ok((Some(pct), false))
}

/// Runs `brood vm set`.
pub async fn set(args: SetArgs, client: &Client, out: Output) -> Result<i32> {
    let (cpu_cap_pct, no_cpu_cap) = match &args.cpu_cap {
        Some(s) => parse_cap(s)?,
        None => (None, false),
    };
    if args.memory.is_none()
        && args.vcpus.is_none()
        && args.cpu_cap.is_none()
        && args.publish.is_empty()
        && args.unpublish.is_empty()
    {
        anyhow::bail!(
            "nothing to change: give --memory, --vcpus, --cpu-cap, --publish or --unpublish (see --help)"
        );
    }
    let req = SetResourcesRequest {
        memory_mib: args.memory,
        vcpus: args.vcpus,
        cpu_cap_pct,
        no_cpu_cap,
        publish: args.publish,
        unpublish: args.unpublish,
        apply: args.apply.apply.into(),
    };
    let path = format!("{}/resources", partition_path(&args.name));
    change(client, Submit::Patch(&path, &req), args.apply, out).await
}

/// Runs `brood vm disk ...`.
pub async fn disk(cmd: DiskCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        DiskCmd::Attach {
            name,
            disk,
            size,
            apply,
        } => {
            let req = AttachDiskRequest {
                name: disk,
                size_gib: size,
                apply: apply.apply.into(),
            };
            let path = format!("{}/disks", partition_path(&name));
            change(client, Submit::Post(&path, &req), apply, out).await
        }
        DiskCmd::Import { name, file, format } => {
            let done = crate::boot_disk::upload(client, &name, &file, format).await?;
            match out {
                Output::Json => crate::render::print_json(&done)?,
                Output::Text => println!(
                    "imported {} as {}'s boot disk ({} GiB)",
                    file.display(),
                    done.name,
                    done.size_gib
                ),
            }
            Ok(0)
        }
        DiskCmd::Detach { name, disk, apply } => {
            let path = format!(
                "{}/disks/{}?apply={}",
                partition_path(&name),
                encode(&disk),
                apply.apply.wire()
            );
            change::<()>(client, Submit::Delete(&path), apply, out).await
        }
        DiskCmd::Resize {
            name,
            disk,
            size,
            apply,
        } => {
            let req = ResizeDiskRequest {
                size_gib: size,
                apply: apply.apply.into(),
            };
            let path = format!("{}/disks/{}", partition_path(&name), encode(&disk));
            change(client, Submit::Put(&path, &req), apply, out).await
        }
    }
}

/// Runs `brood vm nic ...`.
pub async fn nic(cmd: NicCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        NicCmd::Attach {
            name,
            network,
            mac,
            apply,
        } => {
            let req = AttachNicRequest {
                network,
                mac,
                apply: apply.apply.into(),
            };
            let path = format!("{}/nics", partition_path(&name));
            change(client, Submit::Post(&path, &req), apply, out).await
        }
        NicCmd::Detach { name, nic, apply } => {
            let path = format!(
                "{}/nics/{}?apply={}",
                partition_path(&name),
                encode(&nic),
                apply.apply.wire()
            );
            change::<()>(client, Submit::Delete(&path), apply, out).await
        }
    }
}

/// What a change did, in words.
pub fn describe(r: &ChangeResult) -> String {
    let name = &r.partition.name;
    let mut out = String::new();
    if r.applied_now.is_empty() && r.next_start.is_empty() {
        out.push_str(&format!(
            "{name}: changed (it takes effect when it starts)\n"
        ));
    }
    for a in &r.applied_now {
        out.push_str(&format!("{name}: {a} changed now\n"));
    }
    for n in &r.next_start {
        out.push_str(&format!("{name}: {n}\n"));
    }
    if let Some(p) = &r.partition.pending_change {
        out.push_str(&format!(
            "{name}: pending until its next start: {} (`brood vm stop {name}` then `brood vm start {name}`)\n",
            p.summary
        ));
    }
    out
}

fn report(r: &ChangeResult, out: Output) -> Result<i32> {
    match out {
        Output::Json => print_json(r)?,
        Output::Text => print!("{}", describe(r)),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: SetArgs,
    }

    #[test]
    fn publish_flags_parse_repeated() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "set",
            "web",
            "--publish",
            "8080:80",
            "--publish",
            "5353:53/udp",
            "--unpublish",
            "2222",
            "--unpublish",
            "53/udp",
        ])
        .unwrap();
        let p: Vec<String> = cli.args.publish.iter().map(ToString::to_string).collect();
        assert_eq!(p, ["8080:80/tcp", "5353:53/udp"]);
        let u: Vec<String> = cli.args.unpublish.iter().map(ToString::to_string).collect();
        assert_eq!(u, ["2222/tcp", "53/udp"]);
        assert!(Cli::try_parse_from(["set", "web", "--unpublish", "80:80"]).is_err());
    }

    #[test]
    fn cpu_caps_parse_with_or_without_percent() {
        assert_eq!(parse_cap("50").unwrap(), (Some(50), false));
        assert_eq!(parse_cap("150%").unwrap(), (Some(150), false));
        assert_eq!(parse_cap("none").unwrap(), (None, true));
        assert!(
            parse_cap("half")
                .unwrap_err()
                .to_string()
                .contains("percent")
        );
    }
}
