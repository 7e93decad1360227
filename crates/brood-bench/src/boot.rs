//! `brood-bench boot`: `brood run --exec true` against the naive way, a
//! hand-written QEMU command line booting the same kernel and initramfs, a
//! client that waits for the agent's socket to appear, reads its Ready, runs
//! `true` and powers the guest off. Runs alternate between the two so that
//! drift in host load hits both alike.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use brood_proto::{Decoded, ExecRequest, FrameDecoder, GuestMsg, HostMsg, encode_frame};

use crate::{median, ms};

/// One measured boot.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    pub ready_ms: f64,
    pub total_ms: f64,
    pub rss_mib: f64,
}

pub fn boot(runs: usize, brood: &Path, image: Option<PathBuf>) -> Result<()> {
    let dir = image.unwrap_or_else(|| PathBuf::from("/var/lib/brood/images/default"));
    let m =
        brood_image::read_manifest(&dir).context("read the default image; run scripts/setup")?;
    let kernel = m.outputs.kernel.path_in(&dir);
    let initrd = m.outputs.initrd.path_in(&dir);
    let (mut b, mut r) = (Vec::new(), Vec::new());
    for i in 0..runs {
        b.push(run_brood(brood, &[]).with_context(|| format!("brood run #{i}"))?);
        r.push(run_raw(&kernel, &initrd, None).with_context(|| format!("raw QEMU run #{i}"))?);
        eprintln!(
            "run {:>2}: brood ready {:>6.0} ms total {:>6.0} ms | raw ready {:>6.0} ms total {:>6.0} ms",
            i + 1,
            b[i].ready_ms,
            b[i].total_ms,
            r[i].ready_ms,
            r[i].total_ms
        );
    }
    let med = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    println!("boot benchmark: {runs} boots each, TCG, 256 MiB, 1 vCPU, default image");
    println!(
        "{:<34} {:>10} {:>10} {:>8}",
        "median", "brood", "raw QEMU", "ratio"
    );
    for (name, f) in [
        (
            "start -> agent ready (ms)",
            (|s: &Sample| s.ready_ms) as fn(&Sample) -> f64,
        ),
        ("start -> exec true -> exit (ms)", |s| s.total_ms),
        ("QEMU RSS at ready (MiB)", |s| s.rss_mib),
    ] {
        let (x, y) = (med(&b, f), med(&r, f));
        println!("{name:<34} {x:>10.1} {y:>10.1} {:>8.3}", x / y);
    }
    Ok(())
}

/// `brood run ARGS --json --exec true`.
pub(crate) fn run_brood(brood: &Path, args: &[&str]) -> Result<Sample> {
    let t0 = Instant::now();
    let out = Command::new(brood)
        .arg("run")
        .args(args)
        .args(["--json", "--exec", "true"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", brood.display()))?;
    let total_ms = ms(t0.elapsed());
    if !out.status.success() {
        bail!("brood run failed: {}", out.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parse brood's JSON")?;
    let ready_ms = v["timings_ms"]["agent_ready"]
        .as_f64()
        .context("no agent_ready timing")?;
    let rss_kib = v["vm"]["qemu_rss_kib"].as_f64().unwrap_or(f64::NAN);
    Ok(Sample {
        ready_ms,
        total_ms,
        rss_mib: rss_kib / 1024.0,
    })
}

pub(crate) fn tsc_khz() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    format!("{:.0}", mhz * 1000.0)
}

/// Kills the raw QEMU's process group when dropped.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

/// Raw QEMU booting `kernel` and `initrd` (and `root`, a qcow2 root disk,
/// through an overlay made before the clock starts) to the agent's Ready.
pub(crate) fn run_raw(kernel: &Path, initrd: &Path, root: Option<&Path>) -> Result<Sample> {
    use std::os::unix::process::CommandExt;
    let dir = tempfile_dir()?;
    let sock = dir.join("agent.sock");
    let mut disk_args: Vec<String> = Vec::new();
    if let Some(root) = root {
        let overlay = dir.join("root.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(root)
            .arg(&overlay)
            .status()
            .context("run qemu-img")?;
        if !st.success() {
            bail!("qemu-img create an overlay of {}: {st}", root.display());
        }
        disk_args = vec![
            "-drive".into(),
            format!("file={},format=qcow2,if=none,id=vda", overlay.display()),
            "-device".into(),
            "virtio-blk-device,drive=vda".into(),
        ];
    }
    let t0 = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args(&disk_args)
        .args([
            "-machine",
            "microvm,acpi=on,rtc=on,memory-backend=mem",
            "-accel",
            "tcg,tb-size=64",
            "-cpu",
            "qemu64,+arat",
        ])
        .args([
            "-m",
            "256M",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-bios", "/usr/share/qemu/qboot.rom"])
        .arg("-object")
        .arg(format!(
            "memory-backend-file,id=mem,size=256M,mem-path={},share=on",
            dir.join("mem").display()
        ))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 quiet tsc_early_khz={}", tsc_khz()),
        ])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .args([
            "-device",
            "virtio-serial-device,id=vser0,max_ports=2",
            "-chardev",
        ])
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            sock.display()
        ))
        .args([
            "-device",
            "virtserialport,bus=vser0.0,chardev=agent,name=org.brood.agent.0",
        ])
        .args([
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .context("start qemu-system-x86_64")?;
    let pid = child.id();
    let mut reaper = Reaper(child);
    // The naive client: poll for the socket, then read frames.
    let mut stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e).context("connect to the agent socket"),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut dec = FrameDecoder::new();
    wait_for(&mut stream, &mut dec, |id, m| {
        id == 0 && matches!(m, GuestMsg::Ready(_))
    })?;
    let ready_ms = ms(t0.elapsed());
    let rss_mib = rss_kib(pid) / 1024.0;
    stream.write_all(&encode_frame(
        1,
        &HostMsg::Exec(ExecRequest::shell("true")),
    )?)?;
    wait_for(&mut stream, &mut dec, |id, m| {
        id == 1 && matches!(m, GuestMsg::Exited(_))
    })?;
    stream.write_all(&encode_frame(2, &HostMsg::PowerOff)?)?;
    let status = reaper.0.wait()?;
    let total_ms = ms(t0.elapsed());
    if !status.success() {
        bail!("raw QEMU exited with {status}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Sample {
        ready_ms,
        total_ms,
        rss_mib,
    })
}

fn wait_for(
    s: &mut UnixStream,
    dec: &mut FrameDecoder,
    want: impl Fn(u32, &GuestMsg) -> bool,
) -> Result<()> {
    let mut buf = [0u8; 65536];
    loop {
        while let Some(d) = dec.next_frame() {
            if let Decoded::Frame(f) = d
                && want(f.id, &f.decode::<GuestMsg>()?)
            {
                return Ok(());
            }
        }
        let n = s.read(&mut buf).context("read from the agent")?;
        if n == 0 {
            bail!("agent socket closed");
        }
        dec.push(&buf[..n]);
    }
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/dev/shm/brood-bench-raw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
