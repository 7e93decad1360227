//! Storage I/O partitions used by broodd, against a real VM: a disk
//! created with `via=io` is served by the supervised qemu-storage-daemon
//! of its storage zone (`storage-default`), a ledger channel while the VM
//! runs. The guest writes data of known sha256 while the daemon is killed
//! -9 mid-write; broodd restarts it, the write completes without an I/O
//! error and reads back the same. Stopping the partition with a client is
//! refused; kill -9 of broodd leaves the daemon serving, the next broodd
//! adopts it and `verify` is clean; once the VM stops, its channel is
//! closed, the image holds the data and `qemu-img check` is clean.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, run, wait_until};
use serde_json::{Value, json};

/// What the guest writes: 48 MiB of a pattern the host can make too.
const BYTES: u64 = 48 << 20;
const PATTERN: &str = "yes brood-storage-partition | head -c 50331648";
const IO: &str = "storage-default";

fn sha256_of_shell(cmd: &str) -> String {
    let out = run(Command::new("sh").args(["-c", &format!("{cmd} | sha256sum")]));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn io(b: &Broodd) -> Value {
    b.ok("GET", &format!("/v1/io/{IO}"), None)
}

fn brood(b: &Broodd, args: &[&str]) -> std::process::Output {
    b.brood().args(args).output().expect("run brood")
}

/// Kills a storage daemon a failed test leaves behind (broodd leaves it
/// serving when it stops).
struct Daemon(Option<u32>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

fn exec_in_thread(b: &Broodd, vm: &str, cmd: String) -> std::thread::JoinHandle<(u16, String)> {
    let (sock, token, path) = (b.socket(), b.token(), format!("/v1/partitions/{vm}/exec"));
    std::thread::spawn(move || {
        let body = json!({ "command": cmd }).to_string();
        brood_e2e::http(&sock, "POST", &path, Some(&token), Some(&body), None)
    })
}

fn stdout_of(text: &str) -> String {
    use base64::Engine as _;
    let r: Value = serde_json::from_str(text).unwrap();
    String::from_utf8_lossy(
        &base64::engine::general_purpose::STANDARD
            .decode(r["stdout_base64"].as_str().unwrap_or_default())
            .unwrap_or_default(),
    )
    .into_owned()
}

#[test]
fn a_disk_on_the_storage_partition_survives_its_kill_9_and_a_broodd_crash() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "2048"]);
    // A zone name that is not a name is refused before anything is made.
    let (s, v) = b.call(
        "POST",
        "/v1/partitions",
        Some(
            &json!({"name": "bad", "configs": {"default": {"memory_mib": 256,
            "disks": [{"name": "data", "size_gib": 1, "io_zone": "No Zone"}]}}}),
        ),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("storage zone"), "{v}");
    let o = brood(&b, &["vm", "define", "bad", "--disk", "data:1,via=nfs"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("via=io"));

    let o = brood(
        &b,
        &[
            "vm",
            "create",
            "s",
            "--memory",
            "256",
            "--disk",
            "data:1,via=io",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vm = b.ok("GET", "/v1/partitions/s", None);
    let image = PathBuf::from(vm["disks"][0]["path"].as_str().unwrap());
    let p = io(&b);
    let mut guard = Daemon(p["pid"].as_u64().and_then(|p| u32::try_from(p).ok()));
    assert_eq!(
        (p["serves"].as_str(), p["state"].as_str()),
        (Some("storage"), Some("running")),
        "{p}"
    );
    let clients = p["disk_clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{p}");
    assert_eq!(clients[0]["partition"], "s");
    assert_eq!(clients[0]["transport"], "nbd");
    let o = brood(&b, &["io", "show", IO]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("s ") && l.contains(" nbd ")),
        "{text}"
    );
    let (code, out, _) = b.exec("s", "cat /sys/block/vda/size");
    assert_eq!(code, 0);
    assert_eq!(out.trim(), (1u64 << 30 >> 9).to_string(), "{out}");

    // The guest writes while the daemon is killed -9 under it.
    let want = sha256_of_shell(PATTERN);
    let before = image.metadata().unwrap().len();
    let writer = exec_in_thread(
        &b,
        "s",
        format!("{PATTERN} | dd of=/dev/vda bs=64k conv=fsync 2>&1; echo rc=$?"),
    );
    assert!(
        wait_until(Duration::from_secs(120), || {
            image.metadata().map(|m| m.len()).unwrap_or(0) > before + (8 << 20)
                || writer.is_finished()
        }),
        "no data landed"
    );
    assert!(!writer.is_finished(), "the write ended before the kill");
    let pid = p["pid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = io(&b);
            s["state"] == "running" && s["pid"].as_u64().is_some_and(|p| p != pid)
        }),
        "the storage daemon was not restarted: {}",
        io(&b)
    );
    guard.0 = io(&b)["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
    assert!(io(&b)["restart_count"].as_u64().unwrap() >= 1);
    let (status, text) = writer.join().unwrap();
    assert_eq!(status, 200, "{text}");
    let out = stdout_of(&text);
    assert!(out.contains("rc=0"), "the guest saw an error: {out}");
    let read_back =
        format!("echo 3 > /proc/sys/vm/drop_caches; head -c {BYTES} /dev/vda | sha256sum");
    let (_, got, _) = b.exec("s", &read_back);
    assert!(got.starts_with(&want), "guest read {got}, wrote {want}");

    // Stopping it with a client is refused.
    let o = brood(&b, &["io", "stop", IO]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("clients"));
    assert_eq!(io(&b)["state"], "running");

    // kill -9 of broodd: the daemon keeps serving, the next broodd adopts it.
    let pid = io(&b)["pid"].as_u64().unwrap();
    b.kill9();
    b.restart();
    let s = io(&b);
    assert_eq!(
        s["pid"].as_u64(),
        Some(pid),
        "the daemon was not adopted: {s}"
    );
    assert_eq!(s["state"], "running");
    let (_, got, _) = b.exec("s", &read_back);
    assert!(
        got.starts_with(&want),
        "after the crash the guest read {got}"
    );
    // The adopted daemon's socket is the one the guest uses: restart it.
    let o = brood(&b, &["io", "restart", IO]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(wait_until(Duration::from_secs(30), || {
        let s = io(&b);
        s["state"] == "running" && s["pid"].as_u64().is_some_and(|p| p != pid)
    }));
    guard.0 = io(&b)["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
    let (code, got, _) = b.exec(
        "s",
        &format!(
            "{read_back}; dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=100000 conv=fsync 2>&1"
        ),
    );
    assert_eq!(code, 0, "{got}");
    assert!(
        got.starts_with(&want),
        "after a restart the guest read {got}"
    );
    b.verify_ok();
    let o = brood(&b, &["ledger", "verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // Stopped, the VM's channel is closed and the daemon drops its export.
    let o = brood(&b, &["vm", "stop", "s"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(io(&b)["disk_clients"].as_array().unwrap().len(), 0);
    let o = brood(&b, &["io", "stop", IO, "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["state"], "stopped");
    guard.0 = None;
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let raw = env.run_root().join("data.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&image)
        .arg(&raw));
    let on_disk = sha256_of_shell(&format!("head -c {BYTES} {}", raw.display()));
    let _ = std::fs::remove_file(&raw);
    assert_eq!(
        on_disk, want,
        "the image does not hold what the guest wrote"
    );
    b.verify_ok();
}

#[test]
fn a_forked_childs_disk_is_served_by_the_storage_partition() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let parent = json!({
        "name": "p",
        "configs": {"default": {"memory_mib": 256,
            "disks": [{"name": "data", "size_gib": 1, "io_zone": "default"}]}},
        "start": true
    });
    b.ok("POST", "/v1/partitions", Some(&parent));
    let mut guard = Daemon(io(&b)["pid"].as_u64().and_then(|p| u32::try_from(p).ok()));
    let small = "yes brood-template-disk | head -c 4194304";
    let want = sha256_of_shell(small);
    let (code, out, _) = b.exec(
        "p",
        &format!("{small} | dd of=/dev/vda bs=64k conv=fsync 2>&1"),
    );
    assert_eq!(code, 0, "{out}");
    b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": "p", "warm": 0})),
    );
    // The template's VM is gone, and so is its channel.
    assert!(
        io(&b)["disk_clients"].as_array().unwrap().is_empty(),
        "{}",
        io(&b)
    );
    let r = b.ok("POST", "/v1/templates/p/fork", Some(&json!({"count": 1})));
    let child = r["children"][0]["name"].as_str().unwrap().to_string();
    let p = io(&b);
    guard.0 = p["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
    let clients = p["disk_clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{p}");
    assert_eq!(clients[0]["partition"], child.as_str());
    assert_eq!(clients[0]["transport"], "nbd");
    // The child reads its template's data and writes its own through the
    // server, across a restart of the server.
    let read = "echo 3 > /proc/sys/vm/drop_caches; head -c 4194304 /dev/vda | sha256sum";
    let (_, got, _) = b.exec(&child, read);
    assert!(got.starts_with(&want), "the child read {got}, wants {want}");
    let o = brood(&b, &["io", "restart", IO]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, out, _) = b.exec(
        &child,
        "echo child > /tmp/x; dd if=/tmp/x of=/dev/vda bs=512 seek=20000 count=1 conv=fsync 2>&1; \
         echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 skip=20000 count=1 2>/dev/null | head -c 5",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("child"), "{out}");
    guard.0 = io(&b)["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
    b.ok("DELETE", "/v1/templates/p?cascade=true", None);
    assert!(io(&b)["disk_clients"].as_array().unwrap().is_empty());
    let o = brood(&b, &["io", "stop", IO]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    guard.0 = None;
    b.verify_ok();
}

/// Requests per second of `dd` writing `count` 4 KiB blocks with O_DIRECT
/// to `dev` in `vm`, over the host's clock around the command (the guest's
/// busybox dd reports no duration, and a TCG guest's clock drifts under
/// load); the agent's round trip only lowers the figure.
fn direct_write_iops(b: &Broodd, vm: &str, dev: &str, count: u32) -> f64 {
    let t0 = std::time::Instant::now();
    let (code, out, err) = b.exec(
        vm,
        &format!("dd if=/dev/zero of={dev} bs=4096 count={count} oflag=direct 2>&1"),
    );
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(code, 0, "dd: {out} {err}");
    f64::from(count) / secs
}

#[test]
fn a_disks_iops_cap_is_enforced_whatever_serves_it() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let o = brood(&b, &["vm", "define", "bad", "--disk", "d:1,iops=0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("above 0"));
    const CAP: u32 = 40;
    let cap = format!("capped:1,iops={CAP}");
    let served = format!("served:1,via=io,iops={CAP}");
    let o = brood(
        &b,
        &[
            "vm", "create", "q", "--memory", "256", "--disk", "free:1", "--disk", &cap, "--disk",
            &served,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut guard = Daemon(io(&b)["pid"].as_u64().and_then(|p| u32::try_from(p).ok()));
    // The first command waits for the agent; time none of that.
    let (code, _, _) = b.exec("q", "true");
    assert_eq!(code, 0);
    let free = direct_write_iops(&b, "q", "/dev/vda", 2000);
    let capped = direct_write_iops(&b, "q", "/dev/vdb", 6 * CAP);
    let served = direct_write_iops(&b, "q", "/dev/vdc", 6 * CAP);
    eprintln!("iops: uncapped {free:.1}, capped {capped:.1}, capped via io {served:.1}");
    // Wide margins: a cap's bucket lets a short burst through; what must
    // hold is the order.
    let most = f64::from(CAP) * 1.5;
    assert!(capped < most, "capped at {CAP}, measured {capped:.1} iops");
    assert!(
        served < most,
        "capped at {CAP} via io, measured {served:.1} iops"
    );
    assert!(
        free > capped * 2.0,
        "the uncapped disk ({free:.1} iops) is not faster than the capped one ({capped:.1})"
    );
    let o = brood(&b, &["vm", "stop", "q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = brood(&b, &["io", "stop", IO]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    guard.0 = None;
    b.verify_ok();
}
