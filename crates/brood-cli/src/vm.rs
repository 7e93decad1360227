//! `brood vm ...`: the partition commands of broodd's API. `define` and
//! `create` are in `define`, `exec` in `exec`; this module has the rest and
//! the text rendering of partitions.

use std::time::Duration;

use anyhow::Result;
use brood_api::{
    ConsoleLog, ForkChild, Partition, PartitionList, SetConfigRequest, SetStageRequest, Stage,
    StopRequest,
};
use clap::{Args, Subcommand};

use crate::Output;
use crate::client::{Client, REQUEST_TIMEOUT, encode};
use crate::define::{CREATE_EXAMPLES, DEFINE_EXAMPLES, DefineArgs};
use crate::exec::ExecArgs;
use crate::job::Submit;
use crate::partition::{partition_path, summary};
use crate::render::{Table, key_values, mib, or_dash, parse_wire, print_json, wire_name};

/// Commands on partitions (VMs) managed by broodd.
#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Define a partition without starting it.
    #[command(after_help = DEFINE_EXAMPLES)]
    Define(DefineArgs),
    /// Define a partition and start it.
    #[command(after_help = CREATE_EXAMPLES)]
    Create(DefineArgs),
    /// List partitions.
    #[command(after_help = "Examples:
  brood vm list
  brood vm list --limit 10
  brood vm list -o json")]
    List {
        /// Show at most N partitions.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show one partition: configuration, disks, state.
    #[command(after_help = "Examples:
  brood vm show web
  brood vm show 5f0c...-uuid -o json")]
    Show(Target),
    /// Live-migrate a running VM to another host of the cluster.
    #[command(after_help = crate::migrate::EXAMPLES)]
    Migrate(crate::migrate::MigrateArgs),
    /// Start a stopped, saved or crashed partition.
    #[command(after_help = "Examples:\n  brood vm start web\n  brood vm start web --no-wait")]
    Start(ActTarget),
    /// Ask the guest to power off; kill it after --timeout.
    #[command(after_help = "Examples:
  brood vm stop web
  brood vm stop web --timeout 5")]
    Stop {
        /// Partition name or uuid.
        name: String,
        /// Seconds to wait for the guest to power off before killing it [default: 30].
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Answer at once with the job instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Kill a partition's QEMU at once.
    #[command(after_help = "Examples:\n  brood vm kill web")]
    Kill(ActTarget),
    /// Stop a partition's vCPUs; its memory stays held.
    #[command(after_help = "Examples:\n  brood vm pause web")]
    Pause(ActTarget),
    /// Run a paused partition's vCPUs again.
    #[command(after_help = "Examples:\n  brood vm resume web")]
    Resume(ActTarget),
    /// Save a partition's state to disk and return its memory and vCPUs.
    #[command(after_help = "Examples:\n  brood vm save web")]
    Save(ActTarget),
    /// Run a saved partition again from its saved state.
    #[command(after_help = "Examples:\n  brood vm restore web")]
    Restore(ActTarget),
    /// Named snapshots of a partition's disks and memory.
    #[command(subcommand)]
    Snapshot(crate::snapshot::SnapshotCmd),
    /// Delete a partition and its disks.
    #[command(after_help = "Examples:
  brood vm delete web
  brood vm delete web --force   # kill it first if it runs")]
    Delete {
        /// Partition name or uuid.
        name: String,
        /// Delete it even while it runs or is paused.
        #[arg(long)]
        force: bool,
        /// Answer at once with the job instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print the tail of a partition's console log.
    #[command(after_help = "Examples:
  brood vm console web
  brood vm console web --bytes 4096
  brood vm console web --follow
  brood vm console web --attach     # type into it; Ctrl-] detaches

With --follow the console is printed as it grows, until the VM ends or Ctrl-C.
On a terminal (and with --attach anywhere) brood attaches: what you type goes
to the guest's serial console (the default guest keeps a shell there), until
Ctrl-] detaches or the VM ends.")]
    Console {
        /// Partition name or uuid.
        name: String,
        /// Attach: type into the serial console (the default on a terminal
        /// when neither --bytes nor --follow is given).
        #[arg(long, short = 'a', conflicts_with_all = ["bytes", "follow"])]
        attach: bool,
        /// How many bytes of the log's end to print [default: broodd's].
        #[arg(long, value_name = "N")]
        bytes: Option<u64>,
        /// Keep printing the console as the guest writes it.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Run a shell command in a running partition.
    Exec(ExecArgs),
    /// Copy a file into or out of a running partition (NAME:/path).
    Cp(crate::cp::CpArgs),
    /// Log in with ssh to a running partition whose image has sshd.
    #[command(after_help = "Examples:
  brood vm ssh web
  brood vm ssh web --user admin -- -L 8080:localhost:80

brood finds the guest's IPv4 address through its agent and runs ssh to it.
The default guest image has no sshd: use `brood vm exec -t NAME` there.")]
    Ssh {
        /// Partition name or uuid.
        name: String,
        /// The user to log in as.
        #[arg(long, short = 'u', default_value = "root")]
        user: String,
        /// More arguments for ssh (after --).
        #[arg(last = true)]
        ssh_args: Vec<String>,
    },
    /// Change memory, vCPUs or CPU cap (live where the machine allows it).
    #[command(after_help = crate::change::SET_EXAMPLES)]
    Set(crate::change::SetArgs),
    /// Attach, detach or grow a partition's disks.
    #[command(subcommand)]
    Disk(crate::change::DiskCmd),
    /// Attach or detach a partition's NICs.
    #[command(subcommand)]
    Nic(crate::change::NicCmd),
    /// Choose the configuration used at the next start.
    #[command(
        after_help = "Examples:\n  brood vm config web big\n  brood vm config web big --no-wait"
    )]
    Config {
        /// Partition name or uuid.
        name: String,
        /// The configuration's name.
        config: String,
        #[command(flatten)]
        wait: crate::job::NoWait,
    },
    /// Move a partition to another life-cycle stage.
    #[command(after_help = "Examples:
  brood vm stage web manual
  brood vm stage web decommissioned")]
    Stage {
        /// Partition name or uuid.
        name: String,
        /// The new stage: construction, provisioning, operating, manual,
        /// disabled, decommissioned or template.
        #[arg(value_parser = parse_stage)]
        stage: Stage,
        #[command(flatten)]
        wait: crate::job::NoWait,
    },
}

/// The partition a command acts on.
#[derive(Debug, Args)]
pub struct Target {
    /// Partition name or uuid.
    name: String,
}

/// A partition an action (a job) acts on.
#[derive(Debug, Args)]
pub struct ActTarget {
    /// Partition name or uuid.
    name: String,
    /// Answer at once with the job instead of waiting for it (`brood job wait ID`).
    #[arg(long)]
    no_wait: bool,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    parse_wire(
        s,
        "construction|provisioning|operating|manual|disabled|decommissioned|template",
    )
}

/// Runs a `brood vm` command; returns the exit code.
pub async fn run(cmd: VmCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        VmCmd::Define(args) => crate::define::run(args, false, client, out).await,
        VmCmd::Create(args) => crate::define::run(args, true, client, out).await,
        VmCmd::Exec(args) => crate::exec::run(args, client, out).await,
        VmCmd::Cp(args) => crate::cp::run(args, client, out).await,
        VmCmd::Ssh {
            name,
            user,
            ssh_args,
        } => crate::console::ssh(client, &name, &user, &ssh_args).await,
        VmCmd::List { limit } => list(client, limit, out).await,
        VmCmd::Show(t) => {
            let mut p: Partition = crate::migrate::show_here_or_where(client, &t.name).await?;
            if !p.nics.is_empty() {
                fill_addresses(&mut p, &crate::network::all_or_none(client).await?);
            }
            match out {
                Output::Json => print_json(&p)?,
                Output::Text => {
                    print!("{}", show(&p));
                    print!("{}", crate::network::addresses(client, &p.name).await?);
                }
            }
            Ok(0)
        }
        VmCmd::Migrate(args) => crate::migrate::run(args, client, out).await,
        VmCmd::Start(t) => action(client, &t, "start", out).await,
        VmCmd::Kill(t) => action(client, &t, "kill", out).await,
        VmCmd::Pause(t) => action(client, &t, "pause", out).await,
        VmCmd::Resume(t) => action(client, &t, "resume", out).await,
        VmCmd::Save(t) => action(client, &t, "save", out).await,
        VmCmd::Restore(t) => action(client, &t, "restore", out).await,
        VmCmd::Snapshot(cmd) => crate::snapshot::run(cmd, client, out).await,
        VmCmd::Set(args) => crate::change::set(args, client, out).await,
        VmCmd::Disk(cmd) => crate::change::disk(cmd, client, out).await,
        VmCmd::Nic(cmd) => crate::change::nic(cmd, client, out).await,
        VmCmd::Stop {
            name,
            timeout,
            no_wait,
        } => {
            let path = format!("{}/stop", partition_path(&name));
            if no_wait {
                let j: brood_api::Job = client
                    .post(
                        &format!("{path}?wait=false"),
                        &StopRequest { timeout_s: timeout },
                    )
                    .await?;
                return crate::job::queued(&j, out);
            }
            // broodd waits up to the guest's timeout (30 s by default) before it kills QEMU.
            let wait = Duration::from_secs(timeout.unwrap_or(30)) + REQUEST_TIMEOUT;
            let p = client
                .post_within(&path, &StopRequest { timeout_s: timeout }, Some(wait))
                .await?;
            done(&p, out)
        }
        VmCmd::Delete {
            name,
            force,
            no_wait,
        } => {
            let path = format!("{}?force={force}", partition_path(&name));
            if no_wait {
                let j: brood_api::Job = client.delete_json(&format!("{path}&wait=false")).await?;
                return crate::job::queued(&j, out);
            }
            client.delete(&path).await?;
            if out == Output::Text {
                println!("deleted {name}");
            }
            Ok(0)
        }
        VmCmd::Console {
            name,
            attach,
            bytes,
            follow,
        } => {
            use std::io::IsTerminal;
            let on_terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
            if attach || (on_terminal && bytes.is_none() && !follow && out == Output::Text) {
                return crate::console::console(client, &name).await;
            }
            let mut path = format!("{}/console", partition_path(&name));
            if let Some(n) = bytes {
                path.push_str(&format!("?bytes={n}"));
            }
            if follow {
                let sep = if bytes.is_some() { '&' } else { '?' };
                return follow_console(client, &format!("{path}{sep}follow=true")).await;
            }
            let log: ConsoleLog = client.get(&path).await?;
            match out {
                Output::Json => print_json(&log)?,
                Output::Text => {
                    if log.truncated {
                        eprintln!("brood: older console output is not shown");
                    }
                    print!("{}", log.text);
                }
            }
            Ok(0)
        }
        VmCmd::Config { name, config, wait } => {
            let path = format!("{}/config", partition_path(&name));
            let req = SetConfigRequest { config };
            if wait.no_wait {
                return crate::job::submit(client, Submit::Put(&path, &req), out).await;
            }
            let p = client.put(&path, &req).await?;
            done(&p, out)
        }
        VmCmd::Stage { name, stage, wait } => {
            let path = format!("{}/stage", partition_path(&name));
            let req = SetStageRequest { stage };
            if wait.no_wait {
                return crate::job::submit(client, Submit::Put(&path, &req), out).await;
            }
            let p = client.put(&path, &req).await?;
            done(&p, out)
        }
    }
}

/// `POST /v1/partitions/{name}/{verb}` with an empty object.
async fn action(client: &Client, t: &ActTarget, verb: &str, out: Output) -> Result<i32> {
    let path = format!("{}/{verb}", partition_path(&t.name));
    if t.no_wait {
        let j: brood_api::Job = client
            .post(&format!("{path}?wait=false"), &serde_json::json!({}))
            .await?;
        return crate::job::queued(&j, out);
    }
    let p: Partition = client.post(&path, &serde_json::json!({})).await?;
    done(&p, out)
}

fn done(p: &Partition, out: Output) -> Result<i32> {
    match out {
        Output::Json => print_json(p)?,
        Output::Text => println!("{}", summary(p)),
    }
    Ok(0)
}

/// Pages through `GET /v1/partitions` until `next` is absent or `limit` is reached.
async fn list(client: &Client, limit: Option<usize>, out: Output) -> Result<i32> {
    let page = limit.map_or(brood_api::DEFAULT_PAGE, |l| l.clamp(1, brood_api::MAX_PAGE));
    let mut all = PartitionList {
        items: Vec::new(),
        next: None,
    };
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/partitions?limit={page}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode(a)));
        }
        let got: PartitionList = client.get(&path).await?;
        all.items.extend(got.items);
        all.next = got.next;
        if let Some(l) = limit.filter(|l| all.items.len() >= *l) {
            if all.items.len() > l {
                all.items.truncate(l);
                all.next = all.items.last().map(|p| p.name.clone());
            }
            break;
        }
        match &all.next {
            // A page that does not advance would loop for ever.
            Some(n) if after.as_ref() != Some(n) => after = Some(n.clone()),
            _ => break,
        }
    }
    if all.items.iter().any(|p| !p.nics.is_empty()) {
        let networks = crate::network::all_or_none(client).await?;
        for p in &mut all.items {
            fill_addresses(p, &networks);
        }
    }
    match out {
        Output::Json => print_json(&all)?,
        Output::Text => print!("{}", list_table(&all.items)),
    }
    Ok(0)
}

/// Gives each NIC of `p` on a network the address its channel has there
/// (the ledger's), when broodd has not named one already.
pub fn fill_addresses(p: &mut Partition, networks: &[brood_api::Network]) {
    for n in networks {
        for m in n.members.iter().filter(|m| m.uuid == p.uuid) {
            let nic = usize::try_from(m.nic).ok().and_then(|i| p.nics.get_mut(i));
            if let Some(nic) = nic
                && nic.address.is_none()
            {
                nic.address = Some(m.address.clone());
            }
        }
    }
}

/// What the VM runs now: its pending change's `running`, else the active
/// configuration (vCPUs, memory in MiB).
fn running_now(p: &Partition) -> Option<(u32, u64)> {
    match &p.pending_change {
        Some(c) if p.pid.is_some() => Some((c.running.vcpus, c.running.memory_mib)),
        _ => p
            .configs
            .get(&p.active_config)
            .map(|c| (c.vcpus, c.memory_mib)),
    }
}

/// The table of `brood vm list`: what each VM runs now, a `*` after the
/// name of one whose definition holds a change for its next start, and
/// the first address of each (or its first NIC's MAC).
pub fn list_table(items: &[Partition]) -> String {
    let mut t = Table::new(&[
        "NAME", "STAGE", "STATE", "VCPUS", "MEMORY", "PID", "ADDRESS",
    ])
    .right(&[3, 4]);
    let mut pending = false;
    for p in items {
        let now = running_now(p);
        let name = match &p.pending_change {
            Some(_) => {
                pending = true;
                format!("{}*", p.name)
            }
            None => p.name.clone(),
        };
        let address = p
            .nics
            .iter()
            .find_map(|n| n.address.clone())
            .or_else(|| p.nics.first().map(|n| n.mac.clone()))
            .map(|a| match p.publish.as_slice() {
                [] => a,
                ports => format!("{a} ({})", ports_text(ports)),
            });
        t.row(vec![
            name,
            wire_name(&p.stage),
            wire_name(&p.run_state),
            or_dash(now.map(|c| c.0)),
            now.map_or_else(|| "-".to_string(), |c| mib(c.1)),
            or_dash(p.pid),
            or_dash(address),
        ]);
    }
    let mut text = t.render();
    if pending {
        text.push_str("* changed: the change waits for the next start (`brood vm show NAME`)\n");
    }
    text
}

/// Published ports as `8080:80/tcp, 5353:53/udp`.
fn ports_text(ports: &[brood_api::PublishedPort]) -> String {
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key/value listing of `brood vm show`.
pub fn show(p: &Partition) -> String {
    let mut kv: Vec<(&str, String)> = vec![
        ("name", p.name.clone()),
        ("uuid", p.uuid.to_string()),
        ("stage", wire_name(&p.stage)),
        ("state", wire_name(&p.run_state)),
        ("pid", or_dash(p.pid)),
    ];
    if let Some(parent) = &p.parent {
        kv.push(("parent", format!("{parent} (template)")));
    }
    if let Some(f) = &p.fork {
        push_fork(&mut kv, f);
    }
    let names: Vec<&str> = p.configs.keys().map(String::as_str).collect();
    kv.push((
        "config",
        format!("{} (of: {})", p.active_config, names.join(", ")),
    ));
    if let Some(c) = p.configs.get(&p.active_config) {
        kv.push(("vcpus", c.vcpus.to_string()));
        kv.push(("memory", mib(c.memory_mib)));
        for (i, n) in p.nics.iter().enumerate() {
            let addr = n
                .address
                .as_deref()
                .map(|a| format!(", {a}"))
                .unwrap_or_default();
            kv.push((
                if i == 0 { "nics" } else { "" },
                format!("eth{i} {} (mac {}{addr})", n.network, n.mac),
            ));
        }
        if !p.publish.is_empty() {
            kv.push((
                "published",
                format!(
                    "{} (host:guest; forwarded while it runs)",
                    ports_text(&p.publish)
                ),
            ));
        }
        let pol = &c.policy;
        kv.push((
            "policy",
            format!(
                "cpu weight {}, cpu cap {}, memory limit {}, priority {}, restart {}{}",
                or_dash(pol.cpu_weight),
                pol.cpu_cap_pct
                    .map_or_else(|| "-".into(), |p| format!("{p}%")),
                pol.memory_limit_mib.map_or_else(|| "-".into(), mib),
                pol.priority,
                wire_name(&pol.restart).replace('_', "-"),
                if pol.autostart { ", autostart" } else { "" },
            ),
        ));
        if !c.cmdline.is_empty() {
            kv.push(("cmdline", c.cmdline.clone()));
        }
        if let Some(image) = &c.image {
            kv.push(("image", image.clone()));
        }
        if !c.zones.is_empty() {
            kv.push(("zones", c.zones.join(", ")));
        }
    }
    for (i, d) in p.disks.iter().enumerate() {
        kv.push((
            if i == 0 { "disks" } else { "" },
            format!("{} {} GiB {}", d.name, d.size_gib, d.path),
        ));
    }
    kv.push(("last exit", or_dash(p.last_exit.as_deref())));
    kv.push(("restarts", p.restart_count.to_string()));
    if let Some(op) = &p.pending_op {
        kv.push(("pending", op.clone()));
    }
    if let Some(c) = &p.pending_change {
        kv.push(("changed", format!("{} (at the next start)", c.summary)));
        kv.push((
            "",
            format!(
                "runs now: {} vCPUs, {}, disks {}, NICs {}",
                c.running.vcpus,
                mib(c.running.memory_mib),
                if c.running.disks.is_empty() {
                    "-".to_string()
                } else {
                    c.running.disks.join(", ")
                },
                if c.running.nics.is_empty() {
                    "-".to_string()
                } else {
                    c.running.nics.join(", ")
                },
            ),
        ));
    }
    kv.push(("created", p.created_at.clone()));
    kv.push(("updated", p.updated_at.clone()));
    key_values(&kv)
}

/// The `fork` lines of a child: index, status and error, then its network
/// and identity.
fn push_fork(kv: &mut Vec<(&str, String)>, f: &ForkChild) {
    let persistent = if f.persistent {
        "persistent overlay"
    } else {
        "forked afresh at each start"
    };
    kv.push((
        "fork",
        format!("child {}, {}, {persistent}", f.index, wire_name(&f.status)),
    ));
    if let Some(e) = &f.error {
        kv.push(("", format!("error: {e}")));
    }
    kv.push((
        "",
        format!(
            "mac {}, ipv4 {}, identity {}",
            or_dash(f.mac.as_deref()),
            or_dash(f.ipv4.as_deref()),
            or_dash(f.identity.as_deref())
        ),
    ));
}

/// Prints a console as broodd streams it, until the VM ends or Ctrl-C.
async fn follow_console(client: &Client, path: &str) -> Result<i32> {
    use http_body_util::BodyExt;
    use std::io::Write;
    let mut body = client.stream(path).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = &mut ctrl_c => return Ok(0),
        };
        let Some(frame) = frame else {
            // broodd ends the stream when the VM ends.
            return Ok(0);
        };
        let frame = frame.map_err(|source| crate::client::ClientError::Body {
            what: format!("GET {path}"),
            source,
        })?;
        let Ok(bytes) = frame.into_data() else {
            continue;
        };
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(&bytes).and_then(|()| stdout.flush()) {
            Ok(()) => {}
            // `brood vm console -f | head` closed its end: that is the end.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            Err(e) => return Err(anyhow::Error::new(e).context("write the console")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use brood_api::{DiskInfo, PartitionConfig, RunState};

    use super::*;

    fn partition(name: &str, pid: Option<u32>) -> Partition {
        let config = PartitionConfig {
            vcpus: 2,
            memory_mib: 512,
            ..PartitionConfig::default()
        };
        Partition {
            name: name.into(),
            uuid: uuid::Uuid::from_u128(1),
            stage: Stage::Operating,
            run_state: if pid.is_some() {
                RunState::Running
            } else {
                RunState::Stopped
            },
            active_config: "default".into(),
            configs: BTreeMap::from([("default".to_string(), config)]),
            pid,
            disks: vec![DiskInfo {
                name: "root".into(),
                path: "/data/disks/web-root.qcow2".into(),
                size_gib: 10,
            }],
            nics: Vec::new(),
            pending_change: None,
            last_exit: None,
            restart_count: 0,
            pending_op: None,
            parent: None,
            fork: None,
            created_at: "2025-01-01T00:00:00Z".into(),
            updated_at: "2025-01-01T00:00:01Z".into(),
            publish: Vec::new(),
        }
    }

    #[test]
    fn list_renders_a_table() {
        let items = [partition("web", Some(4242)), partition("db-primary", None)];
        assert_eq!(
            list_table(&items),
            "NAME        STAGE      STATE    VCPUS   MEMORY  PID   ADDRESS\n\
             web         operating  running      2  512 MiB  4242  -\n\
             db-primary  operating  stopped      2  512 MiB  -     -\n"
        );
    }

    #[test]
    fn show_lists_disks_with_paths() {
        let s = show(&partition("web", Some(7)));
        assert!(s.contains("state      running\n"), "{s}");
        assert!(
            s.contains("disks      root 10 GiB /data/disks/web-root.qcow2\n"),
            "{s}"
        );
        assert!(s.contains("restart never"), "{s}");
        assert_eq!(
            summary(&partition("web", Some(7))),
            "web: operating, running (pid 7), config default"
        );
    }

    #[test]
    fn show_names_the_template_and_the_fork() {
        let s = show(&partition("web", Some(7)));
        assert!(!s.contains("parent") && !s.contains("fork"), "{s}");

        let mut child = partition("base-3", Some(8));
        child.parent = Some("base".into());
        child.fork = Some(ForkChild {
            name: "base-3".into(),
            uuid: uuid::Uuid::from_u128(3),
            index: 3,
            status: brood_api::ChildStatus::Failed,
            error: Some("service 20-join: exit 1".into()),
            mac: Some("52:54:00:00:00:03".into()),
            ipv4: Some("10.0.0.12/24".into()),
            identity: None,
            persistent: true,
            running_ms: Some(38.0),
            ready_ms: None,
            charge_mib: None,
        });
        let s = show(&child);
        let expected = [
            "pid        8",
            "parent     base (template)",
            "fork       child 3, failed, persistent overlay",
            "           error: service 20-join: exit 1",
            "           mac 52:54:00:00:00:03, ipv4 10.0.0.12/24, identity -",
            "config     default (of: default)",
        ];
        assert!(s.contains(&(expected.join("\n") + "\n")), "{s}");

        let fork = child.fork.as_mut().unwrap();
        fork.error = None;
        fork.persistent = false;
        let s = show(&child);
        let expected = [
            "fork       child 3, failed, forked afresh at each start",
            "           mac 52:54:00:00:00:03, ipv4 10.0.0.12/24, identity -",
        ];
        assert!(s.contains(&(expected.join("\n") + "\n")), "{s}");
    }

    #[test]
    fn stages_parse() {
        assert_eq!(parse_stage("manual"), Ok(Stage::Manual));
        assert!(parse_stage("frozen").unwrap_err().contains("operating"));
    }
}
