//! What a hostile guest or a local user must not get, tried as they would:
//! a host file through a qcow2 header written into a raw disk, guest
//! memory and broodd's files read as `nobody`, a QEMU with privileges or
//! the host's root, and the host's loopback through `--nic user`.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, run};
use brood_proto::ExecRequest;
use serde_json::json;

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run brood");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A token no file on the host contains by chance.
fn token(tag: &str) -> String {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{tag}-{hex}")
}

/// Lets everyone traverse the test's run root, so that only brood's own
/// modes stand between `nobody` and the VMs' files (as under /dev/shm).
fn open_run_root(env: &TestEnv) {
    std::fs::set_permissions(env.run_root(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `grep -r -a -l needle dirs...` as user `nobody`: the files it could read
/// that contain `needle`.
fn grep_as_nobody(needle: &str, dirs: &[&Path]) -> String {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "grep",
            "-r",
            "-a",
            "-l",
            needle,
        ])
        .args(dirs)
        .output()
        .expect("run setpriv (util-linux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_qcow2_header_in_a_raw_disk_never_opens_a_host_file() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    // A root-only host file, and a "raw disk" whose first bytes are a qcow2
    // header naming it as backing file: what a guest can write into its disk.
    let secret = dir.path().join("host-secret");
    let content = token("HOSTFILE");
    std::fs::write(&secret, format!("{content}\n").repeat(64)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let disk = dir.path().join("guest.raw");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&disk)
        .arg("1M"));
    let probe = format!("head -c 3 /dev/vda; echo; grep -c {content} /dev/vda; true");

    // The default is raw: the guest sees the header bytes, never the file.
    let (code, out, err) = output(
        env.brood()
            .arg("run")
            .arg("--disk")
            .arg(&disk)
            .args(["--exec", probe.as_str()]),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "QFI\n0\n", "the guest read the host file: {out}");
    env.assert_clean();

    // Said to be qcow2, it is refused for its backing file.
    let mut arg = disk.as_os_str().to_owned();
    arg.push(",format=qcow2");
    let (code, _, err) = output(
        env.brood()
            .args(["run", "--exec", "true", "--disk"])
            .arg(&arg),
    );
    assert_eq!(code, 125);
    assert!(
        err.contains("backing file") && err.contains("backing=allow"),
        "{err}"
    );
    env.assert_clean();

    // Only when the user vouches for the chain does QEMU open it.
    arg.push(",backing=allow");
    let (code, out, err) = output(
        env.brood()
            .args(["run", "--exec", probe.as_str(), "--disk"])
            .arg(&arg),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n1\n") || out.contains("\n64\n"), "{out}");
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_runs_unprivileged_sandboxed_and_chrooted() {
    let env = TestEnv::new();
    let engine = env.engine();
    let a = engine.boot(&env.spec("conf-a")).await.unwrap();
    let b = engine.boot(&env.spec("conf-b")).await.unwrap();
    let mut uids = Vec::new();
    for vm in [&a, &b] {
        let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .unwrap_or_else(|| panic!("no {k} in {status}"))
                .split_whitespace()
                .skip(1)
                .map(String::from)
                .collect::<Vec<_>>()
        };
        let uid = field("Uid:");
        assert!(uid.iter().all(|u| u != "0"), "QEMU runs as root: {uid:?}");
        assert!(field("Gid:").iter().all(|g| g != "0"));
        assert_eq!(field("NoNewPrivs:"), ["1"]);
        assert_eq!(field("Seccomp:"), ["2"]);
        for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(cap), ["0000000000000000"], "{cap}");
        }
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", vm.pid())).unwrap();
        assert!(
            limits
                .lines()
                .any(|l| l.starts_with("Max core file size") && l.contains(" 0 ")),
            "{limits}"
        );
        // Its root is its run directory, not the host's /.
        let root = std::fs::metadata(format!("/proc/{}/root", vm.pid())).unwrap();
        let host = std::fs::metadata("/").unwrap();
        assert_ne!((root.dev(), root.ino()), (host.dev(), host.ino()));
        let run = std::fs::metadata(vm.run_dir()).unwrap();
        assert_eq!((root.dev(), root.ino()), (run.dev(), run.ino()));
        // Nor the host's network: it cannot connect to the host's loopback.
        let ns = |p: String| std::fs::read_link(p).unwrap();
        assert_ne!(
            ns(format!("/proc/{}/ns/net", vm.pid())),
            ns("/proc/self/ns/net".into())
        );
        uids.push(uid[0].clone());
        // And it still works: the guest answers.
        vm.wait_ready(Duration::from_secs(60)).await.unwrap();
        let out = vm
            .agent()
            .unwrap()
            .exec(&ExecRequest::shell("echo alive"))
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
    }
    assert_ne!(uids[0], uids[1], "two VMs share a uid");
    a.kill().await.unwrap();
    b.kill().await.unwrap();
    drop((a, b));
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_memory_and_logs_of_brood_run_are_private() {
    let env = TestEnv::new();
    open_run_root(&env);
    let vm = env.engine().boot(&env.spec("private")).await.unwrap();
    vm.wait_ready(Duration::from_secs(60)).await.unwrap();
    let secret = token("MEMSECRET");
    // Into guest RAM (a tmpfs file) and onto the console log.
    let cmd = format!("echo {secret} > /tmp/s; echo {secret} > /dev/console; sync");
    let out = vm
        .agent()
        .unwrap()
        .exec(&ExecRequest::shell(cmd))
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(0));
    let run = vm.run_dir().to_path_buf();
    // Root finds it: the test can fail.
    let root = Command::new("grep")
        .args(["-r", "-a", "-l", &secret])
        .arg(&run)
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&root.stdout);
    assert!(found.contains("/mem"), "{found}");
    assert_eq!(grep_as_nobody(&secret, &[&run]), "");
    for f in ["mem", "console.log", "qemu.log", "pid"] {
        let mode = std::fs::metadata(run.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} is {mode:o}");
    }
    let dir_mode = std::fs::metadata(&run).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o007, 0, "run dir is {dir_mode:o}");
    vm.kill().await.unwrap();
    drop(vm);
    env.assert_clean();
}

#[test]
fn broodd_data_and_its_vms_are_private() {
    let env = TestEnv::new();
    open_run_root(&env);
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    let req = json!({"name": "p", "configs": {"default": {"memory_mib": 256,
        "disks": [{"name": "data", "size_gib": 1}]}}, "start": true});
    b.ok("POST", "/v1/partitions", Some(&req));
    let secret = token("DATASECRET");
    let (code, _, err) = b.exec(
        "p",
        &format!("echo {secret} > /tmp/s; echo {secret} | dd of=/dev/vda conv=fsync 2>/dev/null"),
    );
    assert_eq!(code, 0, "{err}");
    let vms = env.run_root().join("vms");
    let found = Command::new("grep")
        .args(["-r", "-a", "-l", &secret])
        .arg(&vms)
        .arg(&b.data)
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&found.stdout);
    assert!(
        found.contains("/mem") && found.contains(&*b.data.to_string_lossy()),
        "{found}"
    );
    assert_eq!(grep_as_nobody(&secret, &[&vms, &b.data]), "");
    // The token and ledger too: nobody reads anything of broodd's.
    let ledger = grep_as_nobody("", &[&b.data]);
    assert_eq!(ledger, "", "nobody can read {ledger}");
    let data_mode = std::fs::metadata(&b.data).unwrap().permissions().mode();
    assert_eq!(data_mode & 0o077, 0, "data dir is {data_mode:o}");
    for entry in std::fs::read_dir(&b.data).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mode = entry.metadata().unwrap().permissions().mode();
        if name.starts_with("ledger.db") {
            assert_eq!(mode & 0o077, 0, "{name} is {mode:o}");
        }
    }
    drop(b);
}

#[test]
fn user_networking_does_not_reach_the_host_loopback() {
    let env = TestEnv::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = c.write_all(b"HOST-LOOPBACK-ANSWERED\n");
        }
    });
    let probe = format!(
        "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && \
         ip route add default via 10.0.2.2 && timeout 10 nc 10.0.2.2 {port} </dev/null; true"
    );
    let (code, out, err) = output(env.brood().args(["run", "--nic", "user", "--exec", &probe]));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("HOST-LOOPBACK-ANSWERED"), "{out}");
    env.assert_clean();
    // The explicit opt-in restores QEMU's default, loopback included.
    let (code, out, err) =
        output(
            env.brood()
                .args(["run", "--nic", "user,restrict=off", "--exec", &probe]),
        );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("HOST-LOOPBACK-ANSWERED"), "{out}{err}");
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_is_private_and_its_children_read_it_in_its_group() {
    let env = TestEnv::new();
    open_run_root(&env);
    let engine = env.engine();
    let parent = engine.boot(&env.spec("tparent")).await.unwrap();
    parent.wait_ready(Duration::from_secs(60)).await.unwrap();
    let secret = token("TPLSECRET");
    let agent = parent.agent().unwrap();
    agent
        .exec(&ExecRequest::shell(format!("echo {secret} > /tmp/s")))
        .await
        .unwrap();
    let (seq, _) = agent.prepare_fork(Duration::from_secs(30)).await.unwrap();
    let tpl_dir = env.run_root().join("tpl");
    let tpl = engine.save_template(&parent, &tpl_dir).await.unwrap();
    drop(parent);

    assert_eq!(grep_as_nobody(&secret, &[&tpl_dir]), "");
    let dir_mode = std::fs::metadata(&tpl_dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o077, 0, "template dir is {dir_mode:o}");
    let mem = std::fs::metadata(tpl.mem_path()).unwrap();
    assert_eq!((mem.uid(), mem.mode() & 0o777), (0, 0o440));
    assert_ne!(mem.gid(), 0);
    let state = std::fs::metadata(tpl.state_path()).unwrap();
    assert_eq!(state.mode() & 0o077, 0);

    let spec = tpl.child_spec("tchild", Vec::new()).unwrap();
    let inc = engine.prepare_child(&tpl, &spec).await.unwrap();
    let child = engine.start_child(&tpl, inc).await.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).unwrap();
    let ids = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    assert_eq!(ids("Gid:"), mem.gid(), "{status}");
    assert_ne!(ids("Uid:"), 0);
    let config = brood_proto::ChildConfig {
        index: 0,
        hostname: "tchild".into(),
        macs: vec![],
        ipv4: None,
        identity: None,
        entropy: vec![7; 64],
        machine_id: format!("{:032x}", 1),
        values: vec![],
        time_unix_ns: 0,
    };
    let report = child
        .agent()
        .unwrap()
        .complete_fork(seq, config, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(report.failed, None, "{report:?}");
    let out = child
        .agent()
        .unwrap()
        .exec(&ExecRequest::shell("cat /tmp/s"))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{secret}\n"));
    child.kill().await.unwrap();
    drop(child);
}
