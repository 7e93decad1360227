//! `brood-bench io`: I/O partitions against today's way, in one run, two
//! VMs at a time, same guest image.
//!
//! - Disk: a guest's `/dev/vda` served by a storage I/O partition
//!   (qemu-storage-daemon over NBD, writethrough) against the VM opening
//!   its own qcow2: sequential write and read throughput (dd, 64 MiB) and
//!   the latency of a 4 KiB write with fsync.
//! - Network: HTTP transfer of a 32 MiB file between two guests (busybox
//!   httpd and wget) through the switch I/O partition (`brood-switch`)
//!   against a plain Linux bridge with taps.
//! - Restart stalls: after kill -9 and an immediate restart of the storage
//!   server, the time a 4 KiB synced write takes; after kill -9 of the
//!   switch and its restart, the time until a ping gets through again.
//!
//! Times are measured on the host around each guest command, so each
//! includes one agent round trip (the same on both sides).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use brood_engine::storage::{StorageExport, StorageServer, export_name};
use brood_engine::switch::{SwitchConfig, SwitchNetwork};
use brood_engine::{
    DiskFormat, DiskSpec, Engine, NbdExport, NicBackend, NicSpec, QemuConfig, QemuEngine, Vm,
    VmSpec,
};
use brood_proto::ExecRequest;

use crate::{median, ms};

const READY: Duration = Duration::from_secs(120);
const DISK_MIB: u64 = 64;
const FILE_MIB: u64 = 32;

struct Bench {
    engine: QemuEngine,
    kernel: PathBuf,
    initrd: PathBuf,
    dir: PathBuf,
}

impl Bench {
    fn spec(&self, name: &str) -> VmSpec {
        let mut s = VmSpec::new(name, &self.kernel);
        s.initrd = Some(self.initrd.clone());
        s
    }

    async fn boot(&self, spec: &VmSpec) -> Result<Vm> {
        let vm = self
            .engine
            .boot(spec)
            .await
            .with_context(|| format!("boot {}", spec.name))?;
        vm.wait_ready(READY).await.context("wait for the agent")?;
        Ok(vm)
    }
}

/// Runs `cmd` in the guest; fails on a non-zero exit. Returns the time it took.
async fn sh(vm: &Vm, cmd: &str) -> Result<Duration> {
    let t = Instant::now();
    let out = vm.agent()?.exec(&ExecRequest::shell(cmd)).await?;
    let took = t.elapsed();
    if out.status.code != Some(0) {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn mib_s(mib: u64, d: Duration) -> f64 {
    mib as f64 / d.as_secs_f64()
}

fn qemu_img(args: &[&str], path: &Path, size: &str) -> Result<()> {
    let s = Command::new("qemu-img")
        .args(args)
        .arg(path)
        .arg(size)
        .status()?;
    if !s.success() {
        bail!("qemu-img {args:?} {} failed", path.display());
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Disk {
    write: Vec<f64>,
    read: Vec<f64>,
    sync_ms: Vec<f64>,
}

async fn disk_runs(vm: &Vm, runs: usize, d: &mut Disk) -> Result<()> {
    for _ in 0..runs {
        let w = sh(
            vm,
            &format!("dd if=/dev/zero of=/dev/vda bs=1M count={DISK_MIB} conv=fsync 2>/dev/null"),
        )
        .await?;
        d.write.push(mib_s(DISK_MIB, w));
        sh(vm, "echo 3 > /proc/sys/vm/drop_caches").await?;
        let r = sh(
            vm,
            &format!("dd if=/dev/vda of=/dev/null bs=1M count={DISK_MIB} 2>/dev/null"),
        )
        .await?;
        d.read.push(mib_s(DISK_MIB, r));
        let one = sh(
            vm,
            "dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=7 conv=fsync 2>/dev/null",
        )
        .await?;
        d.sync_ms.push(ms(one));
    }
    Ok(())
}

async fn disk(b: &Bench, runs: usize) -> Result<(Disk, Disk, Vec<f64>)> {
    let own_img = b.dir.join("own.qcow2");
    let served_img = b.dir.join("served.qcow2");
    for p in [&own_img, &served_img] {
        qemu_img(&["create", "-q", "-f", "qcow2"], p, "256M")?;
    }
    let mut server = StorageServer::create(&b.dir.join("nbd.sock"))?;
    let export = StorageExport {
        name: export_name()?,
        path: served_img.clone(),
        format: DiskFormat::Qcow2,
    };
    server.start(std::slice::from_ref(&export)).await?;
    let mut own_spec = b.spec("bench-own");
    own_spec.disks.push(DiskSpec::own_qcow2(&own_img));
    let mut served_spec = b.spec("bench-served");
    served_spec.disks.push(DiskSpec {
        nbd: Some(NbdExport {
            socket: server.socket().to_path_buf(),
            export: export.name.clone(),
        }),
        ..DiskSpec::own_qcow2(&served_img)
    });
    let own = b.boot(&own_spec).await?;
    let served = b.boot(&served_spec).await?;
    let (mut o, mut s) = (Disk::default(), Disk::default());
    // Alternate, so drift in host load hits both alike.
    for _ in 0..runs {
        disk_runs(&own, 1, &mut o).await?;
        disk_runs(&served, 1, &mut s).await?;
    }
    let mut stall = Vec::new();
    for _ in 0..runs {
        server.kill().await;
        server.start(std::slice::from_ref(&export)).await?;
        let t = sh(
            &served,
            "dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=9 conv=fsync 2>/dev/null",
        )
        .await?;
        stall.push(ms(t));
    }
    own.kill().await?;
    served.kill().await?;
    server.kill().await;
    Ok((o, s, stall))
}

const A_IP: &str = "10.200.0.1";
const B_IP: &str = "10.200.0.2";

async fn net_pair(b: &Bench, backend: NicBackend, tag: &str) -> Result<(Vm, Vm)> {
    let mut vms = Vec::new();
    for (name, ip) in [("a", A_IP), ("b", B_IP)] {
        let mut spec = b.spec(&format!("bench-{tag}-{name}"));
        spec.mem_mib = 256;
        spec.nics.push(NicSpec {
            backend: backend.clone(),
            mac: None,
        });
        let vm = b.boot(&spec).await?;
        sh(
            &vm,
            &format!("ip addr add {ip}/24 dev eth0; ip link set eth0 up"),
        )
        .await?;
        vms.push(vm);
    }
    let vb = vms.pop().context("two VMs")?;
    let va = vms.pop().context("two VMs")?;
    // The file is served from b's tmpfs.
    sh(
        &vb,
        &format!(
            "mkdir -p /tmp/www; head -c {} /dev/zero > /tmp/www/f; httpd -p 8080 -h /tmp/www",
            FILE_MIB << 20
        ),
    )
    .await?;
    wait_ping(&va).await?;
    Ok((va, vb))
}

async fn wait_ping(va: &Vm) -> Result<Duration> {
    let t = Instant::now();
    while sh(va, &format!("ping -c 1 -W 1 {B_IP} >/dev/null"))
        .await
        .is_err()
    {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("no ping from a to b in 60 s");
        }
    }
    Ok(t.elapsed())
}

async fn transfers(va: &Vm, runs: usize) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for _ in 0..runs {
        let t = sh(va, &format!("wget -q -O /dev/null http://{B_IP}:8080/f")).await?;
        v.push(mib_s(FILE_MIB, t));
    }
    Ok(v)
}

fn spawn_switch(cfg: &Path) -> Result<std::process::Child> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("brood-switch");
    Command::new(&bin)
        .arg("--config")
        .arg(cfg)
        .spawn()
        .with_context(|| format!("start {} (cargo build --bins)", bin.display()))
}

async fn net(b: &Bench, runs: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    // Through the switch partition.
    let cfg_path = b.dir.join("switch.json");
    let ports = ["a", "b"]
        .map(|n| brood_engine::switch_socket(&b.engine_run_dir(&format!("bench-sw-{n}")), 0));
    SwitchConfig {
        networks: vec![SwitchNetwork {
            name: "bench".into(),
            tap: None,
            ports: ports.to_vec(),
            caps: Default::default(),
        }],
    }
    .store(&cfg_path)?;
    let mut switch = spawn_switch(&cfg_path)?;
    let (sa, sb) = net_pair(b, NicBackend::Switch, "sw").await?;
    let sw = transfers(&sa, runs).await?;
    let mut stall = Vec::new();
    for _ in 0..runs {
        switch.kill()?;
        switch.wait()?;
        switch = spawn_switch(&cfg_path)?;
        stall.push(ms(wait_ping(&sa).await?));
    }
    sa.kill().await?;
    sb.kill().await?;
    switch.kill()?;
    switch.wait()?;

    // Through a Linux bridge.
    let br = format!("brbench{}", std::process::id() % 10_000);
    let ip = |args: &[&str]| Command::new("ip").args(args).status();
    if !ip(&["link", "add", &br, "type", "bridge"])?.success()
        || !ip(&["link", "set", &br, "up"])?.success()
    {
        bail!("make bridge {br}");
    }
    let result = async {
        let (ba, bb) = net_pair(b, NicBackend::Bridge(br.clone()), "br").await?;
        let bridged = transfers(&ba, runs).await?;
        ba.kill().await?;
        bb.kill().await?;
        Ok::<_, anyhow::Error>(bridged)
    }
    .await;
    let _ = ip(&["link", "del", &br]);
    Ok((sw, result?, stall))
}

impl Bench {
    fn engine_run_dir(&self, name: &str) -> PathBuf {
        self.engine.run_root().join(name)
    }
}

pub fn io(runs: usize, image: Option<PathBuf>) -> Result<()> {
    let dir = image.unwrap_or_else(|| PathBuf::from("/var/lib/brood/images/default"));
    let m =
        brood_image::read_manifest(&dir).context("read the default image; run scripts/setup")?;
    let tmp = tempfile::Builder::new()
        .prefix("brood-bench-io-")
        .tempdir_in("/dev/shm")?;
    let mut cfg = QemuConfig::detect();
    cfg.run_root = tmp.path().join("vms");
    let b = Bench {
        engine: QemuEngine::new(cfg),
        kernel: m.outputs.kernel.path_in(&dir),
        initrd: m.outputs.initrd.path_in(&dir),
        dir: tmp.path().to_path_buf(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ((own, served, disk_stall), (sw, br, net_stall)) = rt.block_on(async {
        let d = disk(&b, runs).await?;
        let n = net(&b, runs).await?;
        Ok::<_, anyhow::Error>((d, n))
    })?;
    let med = |v: &[f64]| median(v.to_vec());
    println!(
        "io benchmark: {runs} runs each, TCG, 256 MiB guests, default image; times include one agent round trip"
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "median", "I/O part.", "today", "ratio"
    );
    for (name, x, y) in [
        (
            "disk write 64 MiB, fsync (MiB/s)",
            med(&served.write),
            med(&own.write),
        ),
        (
            "disk read 64 MiB, cold (MiB/s)",
            med(&served.read),
            med(&own.read),
        ),
        (
            "disk 4 KiB write + fsync (ms)",
            med(&served.sync_ms),
            med(&own.sync_ms),
        ),
        ("net HTTP 32 MiB guest to guest (MiB/s)", med(&sw), med(&br)),
    ] {
        println!("{name:<44} {x:>12.1} {y:>12.1} {:>8.3}", x / y);
    }
    println!(
        "{:<44} {:>12.1}",
        "storage restart: next 4 KiB synced write (ms)",
        med(&disk_stall)
    );
    println!(
        "{:<44} {:>12.1}",
        "switch restart: until a ping passes (ms)",
        med(&net_stall)
    );
    println!(
        "(I/O part. = storage server over NBD / brood-switch; today = own qcow2 / Linux bridge + taps)"
    );
    Ok(())
}
