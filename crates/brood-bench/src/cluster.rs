//! `brood-bench cluster`: placement decisions per second over a catalog
//! snapshot of 1,000 hosts and 100,000 placed partitions (placement alone:
//! no PostgreSQL), against a plain least-loaded scan of the same hosts as
//! the peer (zones and room only: no domains, guarantees or ranking).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use brood_cluster::model::{Capacity, DomainPolicy, HostState, Importance, Requirement, Zone};
use brood_cluster::place::{HostView, Request, Resident, Snapshot, place};
use uuid::Uuid;

/// A deterministic generator (xorshift64*), so every run sees the same catalog.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn zone(s: &str) -> Zone {
    s.parse().expect("a valid zone")
}

fn snapshot(hosts: usize, partitions: usize, rng: &mut Rng) -> Snapshot {
    let mut domains = BTreeMap::new();
    let imps = [
        Importance::MissionCritical,
        Importance::Production,
        Importance::Test,
        Importance::Development,
    ];
    for (i, imp) in imps.iter().enumerate() {
        domains.insert(
            format!("d{i}"),
            DomainPolicy {
                importance: *imp,
                preferred: (0..5).map(|k| format!("h{}", k * 97 + i)).collect(),
                ..DomainPolicy::default()
            },
        );
    }
    let mut views: Vec<HostView> = (0..hosts)
        .map(|i| {
            let zones = vec![
                zone(&format!("storage:s{}", i % 10)),
                zone(&format!("network:n{}", i % 20)),
                zone(&format!("processor:p{}", i % 4)),
                zone(&format!("power:w{}", i % 2)),
            ];
            HostView::new(
                &format!("h{i}"),
                HostState::Active,
                Capacity {
                    memory_mib: 512 * 1024,
                    vcpus: 512,
                    disk_gib: 20_000,
                },
                zones,
                Vec::new(),
            )
        })
        .collect();
    for _ in 0..partitions {
        let h = usize::try_from(rng.below(hosts as u64)).unwrap_or(0);
        let d = rng.below(4);
        views[h].add(Resident {
            partition: Uuid::from_u64_pair(rng.next(), rng.next()),
            domain: format!("d{d}"),
            importance: imps[usize::try_from(d).unwrap_or(0)],
            demand: Capacity {
                memory_mib: 1024 + rng.below(4) * 1024,
                vcpus: 1 + rng.below(4),
                disk_gib: 10,
            },
        });
    }
    Snapshot {
        hosts: views,
        domains,
    }
}

fn request(rng: &mut Rng) -> Request {
    // Zones some host has together: those of host j (50 hosts match).
    let j = rng.below(1000);
    let mut requires = vec![
        Requirement::parse(&format!("storage:s{}", j % 10)).expect("req"),
        Requirement::parse(&format!("network:n{}", j % 20)).expect("req"),
    ];
    if rng.below(2) == 0 {
        requires.push(
            Requirement::parse(&format!("processor:p{}|p{}", j % 4, (j + 1) % 4)).expect("req"),
        );
    }
    Request {
        partition: Uuid::from_u64_pair(rng.next(), rng.next()),
        domain: format!("d{}", rng.below(4)),
        demand: Capacity {
            memory_mib: 2048,
            vcpus: 2,
            disk_gib: 10,
        },
        requires,
        avoid: None,
    }
}

/// The peer: a plain least-loaded scan, the host with every required zone,
/// room and the least memory used (no domains, guarantees, ranking or
/// displacement, no total order beyond the scan's).
fn least_loaded(s: &Snapshot, r: &Request) -> Option<usize> {
    s.hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            r.requires.iter().all(|q| {
                h.zones.iter().any(|z| {
                    z.kind.as_str() == q.kind && (q.zones.is_empty() || q.zones.contains(&z.name))
                })
            }) && r.demand.fits_in(h.capacity.minus(h.used()))
        })
        .min_by_key(|(_, h)| h.used().memory_mib)
        .map(|(i, _)| i)
}

/// Runs the benchmark and prints decisions per second, medians of `rounds`.
pub fn cluster(hosts: usize, partitions: usize, decisions: usize, rounds: usize) -> Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t = Instant::now();
    let snap = snapshot(hosts, partitions, &mut rng);
    println!(
        "catalog snapshot: {hosts} hosts, {partitions} partitions, built in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let reqs: Vec<Request> = (0..decisions).map(|_| request(&mut rng)).collect();
    let (mut brood, mut peer) = (Vec::new(), Vec::new());
    let mut placed = 0usize;
    for _ in 0..rounds {
        let t = Instant::now();
        for r in &reqs {
            if place(&snap, r).is_ok() {
                placed += 1;
            }
        }
        brood.push(reqs.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut found = 0usize;
        for r in &reqs {
            if least_loaded(&snap, r).is_some() {
                found += 1;
            }
        }
        std::hint::black_box(found);
        peer.push(reqs.len() as f64 / t.elapsed().as_secs_f64());
    }
    let (b, p) = (crate::median(brood), crate::median(peer));
    println!("placed {placed} of {} requests", reqs.len() * rounds);
    println!("| | decisions/s (median of {rounds} rounds of {decisions}) |");
    println!("|---|---|");
    println!("| brood place (scored, domains, guarantees) | {b:.0} |");
    println!("| least-loaded scan (peer) | {p:.0} |");
    println!("| ratio brood / peer | {:.2} |", b / p);
    Ok(())
}

/// Live migration of a 256 MiB VM, idle and busy (a guest loop dirtying
/// 16 MiB of random bytes at a time), through brood's engine (`QemuEngine::migrate_out`:
/// confined QEMUs, brood-opened TCP stream) against QEMU's own migration
/// driven by hand (`-incoming tcp:`, QMP `migrate`) with the same kernel
/// and initramfs over the same loopback link. Reports median total time
/// and downtime as each source QEMU's `query-migrate` reports them.
///
/// Beside them, `brood vm migrate` between two broodds of a cluster (a
/// PostgreSQL catalog on loopback, both broodds on this host with their
/// own data and run directories): the same VM moved back and forth, its
/// total time and downtime as broodd reports them (the source QEMU's),
/// and the wall time of the whole command (catalog rendezvous, target
/// QEMU start, stream, commit, release).
pub fn migrate(
    runs: usize,
    image: &std::path::Path,
    brood: &std::path::Path,
    broodd: &std::path::Path,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut pair = broodds::Pair::start(brood, broodd, image)?;
    let mut rows = Vec::new();
    for busy in [false, true] {
        let (mut bt, mut bd, mut rt_, mut rd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut ct, mut cd, mut cw) = (Vec::new(), Vec::new(), Vec::new());
        if busy {
            pair.dirty()?;
        }
        for i in 0..runs {
            let (t, d) = rt.block_on(brood_migration(image, busy, i))?;
            bt.push(t);
            bd.push(d);
            let (t2, d2) = raw::migration(image, busy)?;
            rt_.push(t2);
            rd.push(d2);
            let (t3, d3, w3) = pair.migrate()?;
            ct.push(t3);
            cd.push(d3);
            cw.push(w3);
            eprintln!(
                "{} run {}: engine {t:.0}/{d:.0} ms | raw {t2:.0}/{d2:.0} ms | two broodds {t3:.0}/{d3:.0} ms, wall {w3:.0} ms (total/downtime)",
                if busy { "busy" } else { "idle" },
                i + 1,
            );
        }
        rows.push((
            busy,
            [
                crate::median(bt),
                crate::median(bd),
                crate::median(rt_),
                crate::median(rd),
                crate::median(ct),
                crate::median(cd),
                crate::median(cw),
            ],
        ));
    }
    println!(
        "| 256 MiB VM, median of {runs} | engine total | engine downtime | QEMU by hand total | QEMU by hand downtime | two broodds total | two broodds downtime | two broodds wall | ratio total (broodds / by hand) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (busy, [bt, bd, rt_, rd, ct, cd, cw]) in rows {
        println!(
            "| {} | {bt:.0} ms | {bd:.0} ms | {rt_:.0} ms | {rd:.0} ms | {ct:.0} ms | {cd:.0} ms | {cw:.0} ms | {:.2} |",
            if busy { "busy" } else { "idle" },
            ct / rt_
        );
    }
    Ok(())
}

mod broodds {
    //! Two broodds of one cluster on this host, and a VM moved between them.

    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use brood_cluster::testing::TempPostgres;
    use serde_json::Value;

    struct Daemon {
        data: PathBuf,
        run: PathBuf,
        child: Child,
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The catalog, both broodds and where the VM is.
    pub struct Pair {
        brood: PathBuf,
        hosts: Vec<Daemon>,
        at: usize,
        _root: tempfile::TempDir,
        _pg: TempPostgres,
    }

    const VM: &str = "benchmig";

    impl Pair {
        pub fn start(brood: &Path, broodd: &Path, image: &Path) -> Result<Pair> {
            let pg = TempPostgres::start_on("127.0.0.1")
                .map_err(|e| anyhow::anyhow!("start PostgreSQL: {e}"))?;
            let root = tempfile::Builder::new()
                .prefix("brood-bench-pair-")
                .tempdir_in("/dev/shm")?;
            let mut hosts = Vec::new();
            for name in ["b1", "b2"] {
                let data = root.path().join(name).join("data");
                let run = root.path().join(name).join("vms");
                std::fs::create_dir_all(&data)?;
                let log = std::fs::File::create(data.join("broodd.log"))?;
                let child = Command::new(broodd)
                    .arg("--data-dir")
                    .arg(&data)
                    .arg("--run-dir")
                    .arg(&run)
                    .arg("--image")
                    .arg(image)
                    .args(["--memory-mib", "2048", "--disk-gib", "20"])
                    .args(["--catalog", &pg.url(), "--cluster-host", name])
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("start {}", broodd.display()))?;
                let d = Daemon { data, run, child };
                let t0 = Instant::now();
                while std::os::unix::net::UnixStream::connect(d.data.join("broodd.sock")).is_err() {
                    if t0.elapsed() > Duration::from_secs(60) {
                        bail!("broodd {name} did not come up");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                hosts.push(d);
            }
            let pair = Pair {
                brood: brood.to_path_buf(),
                hosts,
                at: 0,
                _root: root,
                _pg: pg,
            };
            pair.brood(0, &["vm", "create", VM, "--memory", "256", "--vcpus", "1"])?;
            // The catalog adopts it with the next reconcile.
            let t0 = Instant::now();
            loop {
                let v = pair.brood(0, &["host", "placements", "-o", "json"])?;
                let held = v["placements"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|p| p["name"] == VM && p["held"] == true));
                if held {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    bail!("the catalog did not adopt {VM}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(pair)
        }

        fn brood(&self, host: usize, args: &[&str]) -> Result<Value> {
            let d = &self.hosts[host];
            let out = Command::new(&self.brood)
                .env("BROOD_DATA_DIR", &d.data)
                .env("BROOD_RUN_DIR", &d.run)
                .env_remove("BROOD_HOST")
                .env_remove("BROOD_TOKEN")
                .args(args)
                .output()?;
            if !out.status.success() {
                bail!(
                    "brood {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
        }

        /// Starts the guest loop that dirties memory.
        pub fn dirty(&self) -> Result<()> {
            self.brood(self.at, &["vm", "exec", VM, super::DIRTY])?;
            Ok(())
        }

        /// Moves the VM to the other broodd: (total, downtime, wall) in ms.
        #[allow(clippy::cast_precision_loss)]
        pub fn migrate(&mut self) -> Result<(f64, f64, f64)> {
            let to = if self.at == 0 { "b2" } else { "b1" };
            let t0 = Instant::now();
            let v = self.brood(self.at, &["vm", "migrate", VM, "--to", to, "-o", "json"])?;
            let wall = t0.elapsed().as_secs_f64() * 1000.0;
            self.at = 1 - self.at;
            let f = |k: &str| v[k].as_u64().unwrap_or(0) as f64;
            Ok((f("total_ms"), f("downtime_ms"), wall))
        }
    }
}

const DIRTY: &str = "nohup sh -c 'while :; do dd if=/dev/urandom of=/dev/shm/dirty bs=1M count=16 2>/dev/null; done' >/dev/null 2>&1 &";

async fn brood_migration(image: &std::path::Path, busy: bool, i: usize) -> Result<(f64, f64)> {
    use brood_engine::{QemuConfig, QemuEngine, VmSpec};
    let root = tempfile::Builder::new()
        .prefix("brood-bench-mig-")
        .tempdir_in("/dev/shm")?;
    let mut cfg = QemuConfig::detect();
    cfg.run_root = root.path().to_path_buf();
    let engine = QemuEngine::new(cfg);
    let mut spec = VmSpec::new(format!("src{i}"), image.join("vmlinuz"));
    spec.initrd = Some(image.join("initrd.img"));
    spec.mem_mib = 256;
    let src = engine.boot(&spec).await?;
    src.wait_ready(Duration::from_secs(60)).await?;
    if busy {
        src.agent()?
            .exec(&brood_proto::ExecRequest::shell(DIRTY))
            .await?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut target = spec.clone();
    target.name = format!("dst{i}");
    let mut inc = engine.prepare_incoming(&target).await?;
    let t = Duration::from_secs(300);
    let (a, s) = tokio::join!(
        engine.accept_incoming(&mut inc, &listener, t),
        engine.migrate_out(&src, addr, t)
    );
    a?;
    let stats = s?;
    let dst = engine.finish_incoming(inc, t).await?;
    src.kill().await?;
    dst.kill().await?;
    #[allow(clippy::cast_precision_loss)]
    Ok((stats.total_ms as f64, stats.downtime_ms as f64))
}

mod raw {
    //! QEMU's own migration by hand: two unconfined QEMUs with a hand-written
    //! command line, QMP over a unix socket, one JSON line at a time.

    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use brood_proto::{Decoded, ExecRequest, FrameDecoder, GuestMsg, HostMsg, encode_frame};
    use serde_json::{Value, json};

    struct Kill(Child);

    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn qemu(dir: &Path, image: &Path, incoming: Option<u16>) -> Result<Kill> {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-machine", "microvm,acpi=on,rtc=on,memory-backend=mem"])
            .args(["-accel", "tcg,tb-size=64", "-cpu", "qemu64,+arat"])
            .args(["-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config"])
            .args([
                "-display",
                "none",
                "-no-reboot",
                "-bios",
                "/usr/share/qemu/qboot.rom",
            ])
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=mem,size=256M,mem-path={},share=on",
                dir.join("mem").display()
            ))
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initrd.img"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet tsc_early_khz={}",
                crate::boot::tsc_khz()
            ))
            .args(["-serial", "null"])
            .args([
                "-device",
                "virtio-serial-device,id=vser0,max_ports=2",
                "-chardev",
            ])
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                dir.join("agent.sock").display()
            ))
            .args([
                "-device",
                "virtserialport,bus=vser0.0,chardev=agent,name=org.brood.agent.0",
            ])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp.sock").display()
            ));
        if let Some(port) = incoming {
            c.args(["-incoming", &format!("tcp:127.0.0.1:{port}")]);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start qemu-system-x86_64")?;
        Ok(Kill(child))
    }

    fn connect(p: &Path) -> Result<UnixStream> {
        let t0 = Instant::now();
        loop {
            match UnixStream::connect(p) {
                Ok(s) => return Ok(s),
                Err(_) if t0.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e).with_context(|| format!("connect {}", p.display())),
            }
        }
    }

    struct Qmp(BufReader<UnixStream>);

    impl Qmp {
        fn open(p: &Path) -> Result<Qmp> {
            let s = connect(p)?;
            let mut q = Qmp(BufReader::new(s));
            q.line()?; // greeting
            q.call("qmp_capabilities", json!({}))?;
            Ok(q)
        }

        fn line(&mut self) -> Result<Value> {
            let mut l = String::new();
            self.0.read_line(&mut l)?;
            Ok(serde_json::from_str(&l)?)
        }

        fn call(&mut self, cmd: &str, args: Value) -> Result<Value> {
            let msg = json!({"execute": cmd, "arguments": args});
            writeln!(self.0.get_mut(), "{msg}")?;
            loop {
                let v = self.line()?;
                if let Some(r) = v.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = v.get("error") {
                    bail!("{cmd}: {e}");
                }
            }
        }
    }

    fn agent_exec(dir: &Path, cmd: Option<&str>) -> Result<()> {
        let mut s = connect(&dir.join("agent.sock"))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut dec = FrameDecoder::new();
        let mut buf = [0u8; 4096];
        let mut want_ready = true;
        if let Some(c) = cmd {
            s.write_all(&encode_frame(1, &HostMsg::Exec(ExecRequest::shell(c)))?)?;
        }
        loop {
            let n = std::io::Read::read(&mut s, &mut buf)?;
            if n == 0 {
                bail!("the agent closed its socket");
            }
            dec.push(&buf[..n]);
            while let Some(d) = dec.next_frame() {
                if let Decoded::Frame(f) = d {
                    match f.decode::<GuestMsg>()? {
                        GuestMsg::Ready(_) if f.id == 0 => want_ready = false,
                        GuestMsg::Exited(_) if f.id == 1 => return Ok(()),
                        _ => {}
                    }
                    if !want_ready && cmd.is_none() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One migration by hand: (total ms, downtime ms).
    pub fn migration(image: &Path, busy: bool) -> Result<(f64, f64)> {
        let src_dir = tempfile::Builder::new()
            .prefix("raw-mig-src-")
            .tempdir_in("/dev/shm")?;
        let dst_dir = tempfile::Builder::new()
            .prefix("raw-mig-dst-")
            .tempdir_in("/dev/shm")?;
        let _src = qemu(src_dir.path(), image, None)?;
        agent_exec(src_dir.path(), None)?;
        if busy {
            agent_exec(src_dir.path(), Some(super::DIRTY))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let _dst = qemu(dst_dir.path(), image, Some(port))?;
        let mut dq = Qmp::open(&dst_dir.path().join("qmp.sock"))?;
        let mut sq = Qmp::open(&src_dir.path().join("qmp.sock"))?;
        sq.call("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}))?;
        let t0 = Instant::now();
        loop {
            let r = sq.call("query-migrate", json!({}))?;
            match r["status"].as_str() {
                Some("completed") => {
                    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
                    let _ = dq.call("cont", json!({}));
                    return Ok((f("total-time"), f("downtime")));
                }
                Some("failed" | "cancelled") => bail!("raw migration failed: {r}"),
                _ if t0.elapsed() > Duration::from_secs(300) => {
                    bail!("raw migration took over 5 min")
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Time from a host failure (kill -9 of its broodd and its VM's QEMU
/// process group) to its VM answering exec on another host: two broodds
/// on one catalog (a temporary PostgreSQL) and one operations service
/// (`broodd ops`, no restart command, re-placement at once), heartbeats
/// every 300 ms and a host failed after 3 s of silence. Reports the median
/// of each phase: failure seen, partition moved (generation bumped), VM
/// answering on the new host.
pub fn failover(
    runs: usize,
    image: &std::path::Path,
    brood: &std::path::Path,
    broodd: &std::path::Path,
) -> Result<()> {
    failover::run(runs, image, brood, broodd)
}

mod failover {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use brood_cluster::testing::TempPostgres;
    use serde_json::Value;

    struct Broodd {
        name: String,
        data: PathBuf,
        run: PathBuf,
        child: Option<Child>,
    }

    impl Broodd {
        fn spawn(&mut self, bin: &Path, image: &Path, url: &str) -> Result<()> {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.data.join("broodd.log"))?;
            let child = Command::new(bin)
                .arg("--data-dir")
                .arg(&self.data)
                .arg("--run-dir")
                .arg(&self.run)
                .arg("--image")
                .arg(image)
                .args(["--memory-mib", "2048", "--disk-gib", "20", "--catalog", url])
                .args(["--cluster-host", &self.name])
                .args(["--heartbeat-interval", "300ms", "--suspect-after", "1500ms"])
                .args(["--failed-after", "3s"])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("start broodd")?;
            self.child = Some(child);
            let sock = self.data.join("broodd.sock");
            if !wait(Duration::from_secs(60), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            }) {
                bail!("{}'s broodd did not come up", self.name);
            }
            Ok(())
        }

        fn kill9(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    impl Drop for Broodd {
        fn drop(&mut self) {
            self.kill9();
        }
    }

    struct Killed(Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn cli(brood: &Path, h: &Broodd, args: &[&str]) -> Result<Output> {
        Command::new(brood)
            .env("BROOD_DATA_DIR", &h.data)
            .env_remove("BROOD_HOST")
            .env_remove("BROOD_TOKEN")
            .args(args)
            .output()
            .context("run brood")
    }

    fn json(brood: &Path, h: &Broodd, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = cli(brood, h, &a)?;
        if !out.status.success() {
            bail!(
                "brood {args:?} on {}: {}",
                h.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn placement(brood: &Path, h: &Broodd, vm: &str) -> (Option<String>, u64, bool) {
        let v = json(brood, h, &["host", "placements"]).unwrap_or(Value::Null);
        let p = v["placements"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == vm).cloned())
            .unwrap_or(Value::Null);
        (
            p["host"].as_str().map(str::to_owned),
            p["generation"].as_u64().unwrap_or(0),
            p["held"] == true,
        )
    }

    fn state(brood: &Path, h: &Broodd, of: &str) -> String {
        json(brood, h, &["host", "list"])
            .ok()
            .and_then(|v| {
                v["hosts"].as_array().and_then(|a| {
                    a.iter()
                        .find(|x| x["name"] == of)
                        .and_then(|x| x["state"].as_str().map(str::to_owned))
                })
            })
            .unwrap_or_default()
    }

    fn exec_ok(brood: &Path, h: &Broodd, vm: &str) -> bool {
        cli(brood, h, &["vm", "exec", vm, "echo alive"]).is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("alive")
        })
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    pub fn run(runs: usize, image: &Path, brood: &Path, broodd: &Path) -> Result<()> {
        let pg = TempPostgres::start().map_err(anyhow::Error::msg)?;
        let url = pg.url();
        let dir = tempfile::tempdir()?;
        let mut hosts: Vec<Broodd> = ["h1", "h2"]
            .iter()
            .map(|n| Broodd {
                name: (*n).into(),
                data: dir.path().join(n).join("data"),
                run: dir.path().join(n).join("run"),
                child: None,
            })
            .collect();
        for h in &mut hosts {
            std::fs::create_dir_all(&h.data)?;
            h.spawn(broodd, image, &url)?;
        }
        let token = dir.path().join("ops1.token");
        let token_arg = token.display().to_string();
        json(
            brood,
            &hosts[0],
            &["host", "ops", "add", "ops1", "--token-file", &token_arg],
        )?;
        let log = std::fs::File::create(dir.path().join("ops1.log"))?;
        let _ops = Killed(
            Command::new(broodd)
                .args([
                    "ops",
                    "--catalog",
                    &url,
                    "--name",
                    "ops1",
                    "--token-file",
                    &token_arg,
                ])
                .args([
                    "--replace-after",
                    "0s",
                    "--lease-ttl",
                    "2s",
                    "--interval",
                    "100ms",
                ])
                .args(["--suspect-after", "1500ms", "--failed-after", "3s"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("start broodd ops")?,
        );
        let watched = || {
            json(brood, &hosts[0], &["host", "list"]).is_ok_and(|v| {
                v["hosts"]
                    .as_array()
                    .is_some_and(|a| a.len() == 2 && a.iter().all(|h| h["ops"] == "ops1"))
            })
        };
        if !wait(Duration::from_secs(60), watched) {
            bail!("the operations service did not take the hosts");
        }
        let t = Duration::from_secs(120);
        let (mut seen, mut moved, mut running) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let (src, dst) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
            let vm = format!("web{i}");
            json(
                brood,
                &hosts[src],
                &["vm", "create", &vm, "--memory", "256", "--vcpus", "1"],
            )?;
            if !wait(t, || {
                exec_ok(brood, &hosts[src], &vm) && placement(brood, &hosts[src], &vm).2
            }) {
                bail!("{vm} did not come up on {}", hosts[src].name);
            }
            let pid = json(brood, &hosts[src], &["vm", "show", &vm])?["pid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .context("the VM's pid")?;
            let (src_name, dst_name) = (hosts[src].name.clone(), hosts[dst].name.clone());
            let t0 = Instant::now();
            hosts[src].kill9();
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let obs = &hosts[dst];
            if !wait(t, || state(brood, obs, &src_name) == "failed") {
                bail!("{src_name} was not seen failed");
            }
            seen.push(ms(t0.elapsed()));
            if !wait(t, || {
                let (h, g, _) = placement(brood, obs, &vm);
                h.as_deref() == Some(dst_name.as_str()) && g >= 2
            }) {
                bail!("{vm} was not moved to {dst_name}");
            }
            moved.push(ms(t0.elapsed()));
            if !wait(t, || exec_ok(brood, obs, &vm)) {
                bail!("{vm} did not answer on {dst_name}");
            }
            running.push(ms(t0.elapsed()));
            println!(
                "run {i}: {src_name} -> {dst_name}: failed seen {:.0} ms, moved {:.0} ms, running {:.0} ms",
                seen[i], moved[i], running[i]
            );
            // The old host comes back (it fences its copy); the VM goes.
            hosts[src].spawn(broodd, image, &url)?;
            let out = cli(brood, &hosts[dst], &["vm", "delete", &vm, "--force"])?;
            if !out.status.success() {
                bail!("delete {vm}: {}", String::from_utf8_lossy(&out.stderr));
            }
            if !wait(t, || state(brood, &hosts[dst], &src_name) == "active") {
                bail!("{src_name} did not come back");
            }
        }
        println!("| kill -9 of a host's broodd and QEMU, median of {runs} | ms |");
        println!("|---|---|");
        println!(
            "| failure seen (host `failed`) | {:.0} |",
            crate::median(seen)
        );
        println!(
            "| partition moved (generation bumped) | {:.0} |",
            crate::median(moved)
        );
        println!(
            "| VM answering exec on the other host | {:.0} |",
            crate::median(running)
        );
        drop(hosts);
        drop(pg);
        Ok(())
    }
}
