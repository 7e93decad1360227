//! The engine against real VMs: boot the default image, use every agent
//! operation, pause, save and restore, crash from outside, disks, networks,
//! and prove that each VM leaves nothing behind.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::time::Duration;

use brood_e2e::{Bridge, TestEnv, brood_taps, run, wait_until};
use brood_engine::{DiskSpec, ExitKind, Machine, NicBackend, NicSpec, VmStatus};
use brood_proto::{Command, ErrorKind, ExecRequest};

const READY: Duration = Duration::from_secs(60);

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest::shell(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_exec_files_points_and_clean_shutdown() {
    let env = TestEnv::new();
    let engine = env.engine();
    let vm = engine.boot(&env.spec("basic")).await.unwrap();
    let ready = vm.wait_ready(READY).await.unwrap();
    assert_eq!(ready.proto_version, brood_proto::PROTOCOL_VERSION);
    let agent = vm.agent().unwrap();

    // Exit codes, stdout, stderr.
    let out = agent
        .exec(&sh("echo out; echo err >&2; exit 7"))
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(7));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let version = agent.exec(&sh("cat /proc/version")).await.unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("Debian"),
        "{version:?}"
    );

    // Argv without a shell, environment and stdin.
    let mut req = ExecRequest::shell("");
    req.command = Command::Argv(vec!["sh".into(), "-c".into(), "echo $FOO; cat".into()]);
    req.env = vec![("FOO".into(), "bar".into())];
    req.stdin = b"from stdin".to_vec();
    let out = agent.exec(&req).await.unwrap();
    assert_eq!(out.stdout, b"bar\nfrom stdin");

    // A multi-megabyte output arrives whole; a limit truncates it and says so.
    let big = agent
        .exec(&sh("head -c 5000000 /dev/zero | tr '\\0' a"))
        .await
        .unwrap();
    assert_eq!(big.stdout.len(), 5_000_000);
    assert!(big.stdout.iter().all(|&b| b == b'a'));
    assert!(!big.status.stdout_truncated);
    let mut capped = sh("head -c 300000 /dev/zero");
    capped.output_limit = 1000;
    let out = agent.exec(&capped).await.unwrap();
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.status.stdout_truncated);
    assert_eq!(out.status.stdout_len, 300_000);

    // Timeouts kill the command.
    let mut slow = sh("sleep 30");
    slow.timeout_ms = Some(300);
    let out = agent.exec(&slow).await.unwrap();
    assert!(out.status.timed_out, "{:?}", out.status);

    // Files and hostname.
    agent
        .write_file("/tmp/hello", b"hi there", 0o600)
        .await
        .unwrap();
    assert_eq!(
        agent.read_file("/tmp/hello", 1 << 20).await.unwrap(),
        b"hi there"
    );
    let out = agent.exec(&sh("stat -c %a /tmp/hello")).await.unwrap();
    assert_eq!(out.stdout, b"600\n");
    let err = agent.read_file("/nonexistent", 100).await.unwrap_err();
    assert!(
        matches!(err, brood_engine::EngineError::Agent(ref e) if e.kind == ErrorKind::NotFound),
        "{err}"
    );
    agent.set_hostname("guest-one").await.unwrap();
    let info = agent.info().await.unwrap();
    assert_eq!(info.hostname, "guest-one");
    assert!(info.mem_total_kib > 100_000);

    // A named point: a guest process blocks until the host answers.
    let bg = agent
        .exec(&sh("brood-agent announce fork > /tmp/answer 2>&1 &"))
        .await
        .unwrap();
    assert_eq!(bg.status.code, Some(0));
    let point = agent.next_point(Duration::from_secs(20)).await.unwrap();
    assert_eq!(point.name, "fork");
    agent
        .answer_point(point.seq, b"you are child 3")
        .await
        .unwrap();
    assert!(agent.answer_point(point.seq, b"again").await.is_err());
    let mut answer = Vec::new();
    for _ in 0..200 {
        answer = agent
            .read_file("/tmp/answer", 1024)
            .await
            .unwrap_or_default();
        if !answer.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer, b"you are child 3");

    // Pause and resume.
    vm.pause().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), VmStatus::Paused);
    vm.resume().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), VmStatus::Running);

    // Graceful shutdown through the agent.
    let run_dir = vm.run_dir().to_path_buf();
    let exit = vm.shutdown(Duration::from_secs(20)).await.unwrap();
    assert_eq!(exit.kind, ExitKind::Poweroff, "{exit:?}");
    assert!(vm.pause().await.is_err());
    drop(vm);
    assert!(!run_dir.exists());
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_and_restore_full_state() {
    let env = TestEnv::new();
    let engine = env.engine();
    let spec = env.spec("saver");
    let vm = engine.boot(&spec).await.unwrap();
    vm.wait_ready(READY).await.unwrap();
    let agent = vm.agent().unwrap();
    agent
        .write_file("/tmp/state", b"remember me", 0o644)
        .await
        .unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("vm.state");
    vm.save(&state).await.unwrap();
    assert_eq!(vm.status().await.unwrap(), VmStatus::Paused);
    assert!(std::fs::metadata(&state).unwrap().len() > 1 << 20);
    vm.kill().await.unwrap();
    drop(vm);

    let restored = engine.restore(&spec, &state).await.unwrap();
    let agent = restored.agent().unwrap();
    assert_eq!(
        agent.read_file("/tmp/state", 100).await.unwrap(),
        b"remember me"
    );
    let out = agent.exec(&sh("echo alive")).await.unwrap();
    assert_eq!(out.stdout, b"alive\n");
    restored.kill().await.unwrap();
    drop(restored);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_killed_from_outside_is_crashed() {
    let env = TestEnv::new();
    let vm = env.engine().boot(&env.spec("victim")).await.unwrap();
    vm.wait_ready(READY).await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(vm.pid()).unwrap()),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.wait_exit())
        .await
        .unwrap();
    assert_eq!(exit.kind, ExitKind::Crashed);
    assert_eq!(exit.signal, Some(9));
    let err = vm.agent().unwrap().exec(&sh("true")).await.unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
    drop(vm);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_raw_qcow2_readonly_and_overlay() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("data.raw");
    std::fs::write(&raw, vec![0u8; 8 << 20]).unwrap();
    let base = dir.path().join("base.qcow2");
    run(std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("8M"));
    let ro = dir.path().join("ro.raw");
    std::fs::write(&ro, b"read-only contents").unwrap();
    let ro_size = 1 << 20;
    let f = std::fs::OpenOptions::new().write(true).open(&ro).unwrap();
    f.set_len(ro_size).unwrap();

    let mut spec = env.spec("disks");
    spec.disks.push(DiskSpec::new(&raw));
    let mut over = DiskSpec::new(&base);
    over.format = brood_engine::DiskFormat::Qcow2;
    over.overlay = true;
    spec.disks.push(over);
    let mut r = DiskSpec::new(&ro);
    r.read_only = true;
    spec.disks.push(r);
    let vm = env.engine().boot(&spec).await.unwrap();
    vm.wait_ready(READY).await.unwrap();
    let agent = vm.agent().unwrap();
    let out = agent
        .exec(&sh(
            "ls /dev/vda /dev/vdb /dev/vdc && echo -n written-by-guest | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null \
             && echo -n overlay | dd of=/dev/vdb conv=fsync 2>/dev/null && head -c 18 /dev/vdc; \
             echo x | dd of=/dev/vdc 2>/dev/null; echo \" ro=$?\"",
        ))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/vda") && text.contains("/dev/vdc"),
        "{text}"
    );
    assert!(text.contains("read-only contents ro=1"), "{text}");
    vm.shutdown(Duration::from_secs(20)).await.unwrap();
    drop(vm);
    let data = std::fs::read(&raw).unwrap();
    assert_eq!(&data[512..528], b"written-by-guest");
    // The overlay took the write; the base did not.
    let check = run(std::process::Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&base));
    assert!(check.status.success());
    let map = run(std::process::Command::new("qemu-img")
        .args(["map", "--output=json"])
        .arg(&base));
    assert!(!String::from_utf8_lossy(&map.stdout).contains("\"data\": true"));
    assert_eq!(std::fs::read(&ro).unwrap()[..18], *b"read-only contents");
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vms_on_a_bridge_ping_each_other() {
    let env = TestEnv::new();
    let bridge = Bridge::new("p");
    let engine = env.engine();
    let mut vms = Vec::new();
    for (i, name) in ["ping-a", "ping-b"].iter().enumerate() {
        let mut spec = env.spec(name);
        spec.nics.push(NicSpec {
            backend: NicBackend::Bridge(bridge.name.clone()),
            mac: None,
        });
        let vm = engine.boot(&spec).await.unwrap();
        vm.wait_ready(READY).await.unwrap();
        let cmd = format!(
            "ip addr add 10.77.0.{}/24 dev eth0 && ip link set eth0 up",
            i + 1
        );
        let out = vm.agent().unwrap().exec(&sh(&cmd)).await.unwrap();
        assert_eq!(
            out.status.code,
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        vms.push(vm);
    }
    let taps: Vec<String> = vms.iter().flat_map(|v| v.taps()).collect();
    assert_eq!(taps.len(), 2);
    let mut ports = bridge.ports();
    ports.sort();
    let mut expected = taps.clone();
    expected.sort();
    assert_eq!(ports, expected);
    let out = vms[0]
        .agent()
        .unwrap()
        .exec(&sh("ping -c 2 -W 5 10.77.0.2"))
        .await
        .unwrap();
    assert_eq!(
        out.status.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for vm in &vms {
        vm.shutdown(Duration::from_secs(20)).await.unwrap();
    }
    drop(vms);
    assert!(wait_until(Duration::from_secs(5), || taps
        .iter()
        .all(|t| !brood_taps().contains(t))));
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q35_fallback_boots_the_same_image() {
    let env = TestEnv::new();
    let mut spec = env.spec("q35");
    spec.machine = Machine::Q35;
    let vm = env.engine().boot(&spec).await.unwrap();
    vm.wait_ready(READY).await.unwrap();
    let out = vm
        .agent()
        .unwrap()
        .exec(&sh("ls /sys/bus/pci/devices | wc -l"))
        .await
        .unwrap();
    let n: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(n > 0);
    vm.kill().await.unwrap();
    drop(vm);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_boots_leave_nothing_behind() {
    let env = TestEnv::new();
    let engine = env.engine();
    // Memory that does not fit.
    let mut spec = env.spec("huge");
    spec.mem_mib = 64 << 20;
    let err = engine.boot(&spec).await.unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
    // A bridge that does not exist.
    let mut spec = env.spec("nobridge");
    spec.nics.push(NicSpec {
        backend: NicBackend::Bridge("nosuchbr0".into()),
        mac: None,
    });
    let err = engine.boot(&spec).await.unwrap_err().to_string();
    assert!(err.contains("nosuchbr0"), "{err}");
    // A disk QEMU cannot open as qcow2.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.qcow2");
    std::fs::write(&bad, b"QFI\xfbgarbage").unwrap();
    let mut spec = env.spec("baddisk");
    spec.disks.push(DiskSpec {
        format: brood_engine::DiskFormat::Qcow2,
        ..DiskSpec::new(&bad)
    });
    let err = engine.boot(&spec).await.unwrap_err().to_string();
    assert!(err.contains("not a usable qcow2 image"), "{err}");
    env.assert_clean();
}

#[test]
fn a_vm_outlives_its_runtime_and_is_attached_again_within_its_cgroup() {
    let env = TestEnv::new();
    let engine = env.engine();
    let mut spec = env.spec("survivor");
    spec.die_with_parent = false;
    spec.limits = brood_engine::Limits {
        cpu_weight: Some(50),
        cpu_cap_pct: None,
        memory_limit_mib: Some(600),
    };
    // The first runtime plays a daemon that dies: its tasks and sockets go,
    // the VM (not killed on drop) stays.
    let pid = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let vm = engine.boot(&spec).await.unwrap();
        vm.wait_ready(READY).await.unwrap();
        vm.agent()
            .unwrap()
            .write_file("/tmp/mark", b"still here", 0o644)
            .await
            .unwrap();
        vm.pid()
    });
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let leaf = cgroups
        .lines()
        .find_map(|l| {
            l.split(':')
                .nth(2)
                .filter(|p| p.starts_with("/brood/survivor-"))
        })
        .unwrap_or_else(|| panic!("QEMU is not in a brood cgroup: {cgroups}"))
        .to_string();
    let limit =
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{leaf}/memory.limit_in_bytes"))
            .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup{leaf}/memory.max")))
            .unwrap();
    assert_eq!(limit.trim(), (600u64 << 20).to_string());

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let vm = engine.attach(&spec).await.unwrap();
        assert_eq!(vm.pid(), pid);
        vm.wait_ready(Duration::from_secs(30)).await.unwrap();
        let agent = vm.agent().unwrap();
        assert_eq!(
            agent.read_file("/tmp/mark", 100).await.unwrap(),
            b"still here"
        );
        let exit = vm.kill().await.unwrap();
        assert_eq!(exit.kind, ExitKind::Killed);
    });
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/memory{leaf}")).exists());
    env.assert_clean();
}
