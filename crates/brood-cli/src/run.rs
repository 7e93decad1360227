//! `brood run`: boot a VM from the default image (or a given kernel and
//! initrd), run one command in it through the agent, stream its output, power
//! the VM off and exit with the command's exit code. The VM lives exactly as
//! long as this process: Ctrl-C, SIGTERM or an error kill it and remove
//! everything it created.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use brood_engine::{
    AccelChoice, DiskFormat, DiskSpec, EngineError, ExitKind, Machine, NicBackend, NicSpec,
    QemuConfig, QemuEngine, Vm, VmSpec,
};
use brood_proto::{ExecRequest, Stream};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::render::{CommandResult, Ending};
use crate::{Output, paths};

/// Arguments of `brood run`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood run --exec 'cat /proc/version'
  brood run --image deb --exec 'cat /etc/debian_version; dpkg -l curl'
  brood run --memory 512 --vcpus 2 --disk ./data.img --exec 'mkfs.ext2 /dev/vda'
  brood run --kernel ./bzImage --initrd ./initrd.cpio --console
  brood run --exec 'uname -a' -o json

Exit status: the command's exit code (128+N when a signal N ended it, 124 when
--timeout killed it); 125 when brood itself failed.")]
pub struct RunArgs {
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    memory: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    vcpus: u32,
    /// A disk as PATH[,ro][,overlay][,format=raw|qcow2][,backing=allow]; the
    /// first is /dev/vda (repeatable). The format is raw unless given (never
    /// guessed from the file); a qcow2 image with a backing file is refused
    /// unless `backing=allow` says you trust it.
    #[arg(long = "disk", value_name = "PATH[,OPTS]")]
    disks: Vec<String>,
    /// A NIC: `bridge=BR` (a tap on Linux bridge BR), `user` (QEMU's user
    /// network, isolated: reaches neither the host nor the outside) or
    /// `user,restrict=off` (outbound NAT, and 10.0.2.2 reaches services on
    /// the host's loopback) (repeatable).
    #[arg(long = "nic", value_name = "bridge=BR|user[,restrict=off]")]
    nics: Vec<String>,
    /// Image to boot (DATA_DIR/images/NAME, see `brood image list`); a
    /// Debian image's root disk becomes /dev/vda through a temporary qcow2
    /// overlay, so the image itself is never written.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["kernel", "initrd"])]
    image: Option<String>,
    /// PID 1 of a Debian image's guest: `agent` (the default) or
    /// `systemd` (the image's own, with brood's agent as its unit; build
    /// the image with --package systemd-sysv).
    #[arg(
        long,
        value_name = "agent|systemd",
        default_value = "agent",
        requires = "image"
    )]
    init: brood_api::GuestInit,
    /// Kernel to boot instead of the default image's.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs to boot instead of the default image's.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel command-line arguments, after brood's defaults.
    #[arg(long, default_value = "", value_name = "ARGS")]
    append: String,
    /// Accelerator.
    #[arg(long, default_value = "auto", value_name = "auto|kvm|tcg")]
    accel: AccelChoice,
    /// Machine type.
    #[arg(long, default_value = "microvm", value_name = "microvm|q35")]
    machine: Machine,
    /// Copy the serial console to stdout (to stderr with -o json).
    #[arg(long)]
    console: bool,
    /// Shell command to run in the guest with /bin/sh -c. Without it, brood
    /// waits for the guest to power off by itself.
    #[arg(long, value_name = "SHELL COMMAND")]
    exec: Option<String>,
    /// Kill the command after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// How long to wait for the guest agent to come up.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    ready_timeout: u64,
    /// Print a JSON result instead of streaming output (same as -o json).
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    /// Whether JSON output was asked for with `--json`.
    pub fn json(&self) -> bool {
        self.json
    }
}

fn parse_disk(s: &str) -> Result<DiskSpec> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .context("--disk needs a path")?;
    let mut d = DiskSpec::new(path);
    for opt in parts {
        match opt {
            "ro" => d.read_only = true,
            "overlay" => d.overlay = true,
            "format=raw" => d.format = DiskFormat::Raw,
            "format=qcow2" => d.format = DiskFormat::Qcow2,
            "backing=allow" => d.allow_backing = true,
            "backing=deny" => d.allow_backing = false,
            other => {
                bail!(
                    "--disk {s}: unknown option {other:?} (use ro, overlay, format=raw|qcow2, backing=allow)"
                )
            }
        }
    }
    Ok(d)
}

fn parse_nic(s: &str) -> Result<NicSpec> {
    let backend = match s.strip_prefix("bridge=") {
        Some(br) if !br.is_empty() => NicBackend::Bridge(br.to_string()),
        _ if s == "user" || s == "user,restrict=on" => NicBackend::User,
        _ if s == "user,restrict=off" => NicBackend::UserUnrestricted,
        _ => bail!("--nic {s}: use bridge=BR, user or user,restrict=off"),
    };
    Ok(NicSpec { backend, mac: None })
}

/// What to boot: kernel, initrd and, for an image with one, its root disk.
type BootFiles = (PathBuf, Option<PathBuf>, Option<DiskSpec>);

/// Chooses kernel and initrd: the flags, else `--image NAME`, else the
/// default image (built when missing).
fn boot_files(args: &RunArgs, data_dir: &Path, out: Output) -> Result<BootFiles> {
    if let (Some(k), initrd) = (&args.kernel, &args.initrd) {
        return Ok((k.clone(), initrd.clone(), None));
    }
    if let Some(name) = &args.image {
        let (dir, m) = brood_image::open_image(&paths::images_dir(data_dir), name)
            .with_context(|| format!("boot image {name}"))?;
        let root = m.outputs.root_disk.as_ref().map(|r| DiskSpec {
            format: DiskFormat::Qcow2,
            overlay: true,
            ..DiskSpec::new(r.path_in(&dir))
        });
        return Ok((
            m.outputs.kernel.path_in(&dir),
            Some(m.outputs.initrd.path_in(&dir)),
            root,
        ));
    }
    let dir = paths::default_image_dir(data_dir);
    let manifest = match brood_image::read_manifest(&dir) {
        Ok(m) => m,
        Err(_) => {
            let agent = paths::agent_binary(None)?;
            crate::image::build_with_progress(&brood_image::BuildOptions::new(&dir, agent), out)?
        }
    };
    let kernel = manifest.outputs.kernel.path_in(&dir);
    let initrd = args
        .initrd
        .clone()
        .unwrap_or_else(|| manifest.outputs.initrd.path_in(&dir));
    Ok((kernel, Some(initrd), None))
}

/// Runs `brood run`; returns the process exit code.
pub async fn run(args: RunArgs, data_dir: &Path, out: Output, started: Instant) -> Result<i32> {
    let (kernel, initrd, root_disk) = boot_files(&args, data_dir, out)?;
    let mut spec = VmSpec::new(format!("run-{}", std::process::id()), kernel);
    spec.initrd = initrd;
    spec.vcpus = args.vcpus;
    spec.mem_mib = args.memory;
    spec.cmdline = format!("{} {}", args.init.kernel_args(), args.append)
        .trim()
        .to_string();
    spec.accel = args.accel;
    spec.machine = args.machine;
    spec.disks = root_disk
        .into_iter()
        .map(Ok)
        .chain(args.disks.iter().map(|d| parse_disk(d)))
        .collect::<Result<_>>()?;
    spec.nics = args
        .nics
        .iter()
        .map(|n| parse_nic(n))
        .collect::<Result<_>>()?;

    let engine = QemuEngine::new(QemuConfig::detect());
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let vm = tokio::select! {
        vm = engine.boot(&spec) => vm.context("boot the VM")?,
        _ = sigint.recv() => return Ok(130),
        _ = sigterm.recv() => return Ok(143),
    };
    let booted_ms = ms(started.elapsed());
    if args.console {
        copy_console(&vm, out);
    }
    let work = session(&vm, &args, out, started, booted_ms);
    let code = tokio::select! {
        r = work => r,
        _ = sigint.recv() => { let _ = vm.kill().await; Ok(130) }
        _ = sigterm.recv() => { let _ = vm.kill().await; Ok(143) }
    };
    if code.is_err() {
        let _ = vm.kill().await;
    }
    // Let the console copier print what the guest said last.
    if args.console {
        let _ = tokio::time::timeout(Duration::from_secs(1), vm.console().finished()).await;
    }
    code
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn copy_console(vm: &Vm, out: Output) {
    let mut rx = vm.console().subscribe();
    tokio::spawn(async move {
        while let Ok(chunk) = rx.recv().await {
            let _ = match out {
                Output::Text => std::io::stdout().write_all(&chunk),
                Output::Json => std::io::stderr().write_all(&chunk),
            };
        }
    });
}

/// What `brood run -o json` prints: the command's result in the shape
/// `brood vm exec -o json` prints it too, the VM and the timings.
#[derive(Debug, serde::Serialize)]
struct RunReport {
    #[serde(flatten)]
    result: CommandResult,
    vm: VmReport,
    timings_ms: Timings,
}

#[derive(Debug, serde::Serialize)]
struct VmReport {
    name: String,
    pid: u32,
    accel: &'static str,
    guest_uptime_at_ready_ms: Option<u64>,
    qemu_rss_kib: Option<u64>,
}

#[derive(Debug, serde::Serialize)]
struct Timings {
    /// From brood's start until QEMU answered on QMP.
    qemu_started: u64,
    /// From brood's start until the agent said ready.
    agent_ready: Option<u64>,
    /// Running the command.
    exec: Option<u64>,
    /// From brood's start until the VM was gone.
    total: u64,
}

async fn session(
    vm: &Vm,
    args: &RunArgs,
    out: Output,
    started: Instant,
    booted_ms: u64,
) -> Result<i32> {
    let Some(cmd) = &args.exec else {
        let exit = vm.wait_exit().await;
        if exit.kind == ExitKind::Crashed {
            bail!("the VM {exit}");
        }
        if out == Output::Json {
            println!(
                "{}",
                serde_json::json!({ "exit": exit, "total_ms": ms(started.elapsed()) })
            );
        }
        return Ok(0);
    };
    let ready = match vm.wait_ready(Duration::from_secs(args.ready_timeout)).await {
        Ok(r) => r,
        Err(e @ EngineError::Timeout { .. }) => {
            return Err(anyhow::Error::new(e).context(
                "the guest agent did not come up (a custom --initrd without brood-agent needs --console and no --exec)",
            ));
        }
        Err(e) => return Err(anyhow::Error::new(e).context("boot the VM")),
    };
    let ready_ms = ms(started.elapsed());
    let rss_kib = vm.rss_kib();
    let mut req = ExecRequest::shell(cmd.clone());
    req.timeout_ms = args.timeout.map(|s| s.saturating_mul(1000));
    let agent = vm.agent()?;
    let t_exec = Instant::now();
    let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
    let status = agent
        .exec_with(&req, |stream, data| match (out, stream) {
            (Output::Text, Stream::Stdout) => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(data).and_then(|()| o.flush());
            }
            (Output::Text, Stream::Stderr) => {
                let _ = std::io::stderr().write_all(data);
            }
            (Output::Json, Stream::Stdout) => out_buf.extend_from_slice(data),
            (Output::Json, Stream::Stderr) => err_buf.extend_from_slice(data),
        })
        .await
        .context("run the command in the guest")?;
    let exec_ms = ms(t_exec.elapsed());
    let code = match (status.timed_out, status.code, status.signal) {
        (true, _, _) => 124,
        (false, Some(c), _) => c,
        (false, None, Some(s)) => 128 + s,
        (false, None, None) => 125,
    };
    if status.timed_out && out == Output::Text {
        eprintln!(
            "brood: the command was killed after {}s",
            args.timeout.unwrap_or(0)
        );
    }
    vm.shutdown(Duration::from_secs(10))
        .await
        .context("power the VM off")?;
    if out == Output::Json {
        let end = Ending {
            exit_code: code,
            signal: status.signal,
            timed_out: status.timed_out,
            stdout_truncated: status.stdout_truncated,
            stderr_truncated: status.stderr_truncated,
        };
        let report = RunReport {
            result: CommandResult::new(end, &out_buf, &err_buf),
            vm: VmReport {
                name: vm.name().to_string(),
                pid: vm.pid(),
                accel: vm.accel().name(),
                guest_uptime_at_ready_ms: Some(ready.uptime_ms),
                qemu_rss_kib: rss_kib,
            },
            timings_ms: Timings {
                qemu_started: booted_ms,
                agent_ready: Some(ready_ms),
                exec: Some(exec_ms),
                total: ms(started.elapsed()),
            },
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options() {
        let d = parse_disk("/a.img,ro,format=qcow2").unwrap();
        assert!(d.read_only && !d.overlay && !d.allow_backing);
        assert_eq!(d.format, DiskFormat::Qcow2);
        // Never guessed: raw unless told.
        assert_eq!(parse_disk("/a.img").unwrap().format, DiskFormat::Raw);
        assert!(
            parse_disk("/a.img,format=qcow2,backing=allow")
                .unwrap()
                .allow_backing
        );
        assert!(
            parse_disk("/a,bogus")
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
        assert!(parse_disk("").is_err());
    }

    #[test]
    fn nic_options() {
        assert_eq!(parse_nic("user").unwrap().backend, NicBackend::User);
        assert_eq!(
            parse_nic("user,restrict=off").unwrap().backend,
            NicBackend::UserUnrestricted
        );
        assert!(parse_nic("user,restrict=maybe").is_err());
        assert_eq!(
            parse_nic("bridge=br0").unwrap().backend,
            NicBackend::Bridge("br0".into())
        );
        assert!(parse_nic("bridge=").is_err());
        assert!(parse_nic("tap").is_err());
    }
}
