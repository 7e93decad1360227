//! Issue 16 item 9 on real VMs: changing a VM after it is defined. A
//! running microvm takes its CPU cap and a disk's growth live; memory,
//! vCPUs, disks and NICs wait for its next start, marked in `vm list`,
//! with the ledger's disk reservation moving in the same transaction; a
//! save and restore meanwhile keeps the devices it runs; `--apply now`
//! refuses what cannot be live and leaves everything as it was. And the
//! README's "Changing a VM" block, line by line.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::process::Output;

use brood_e2e::{Broodd, TestEnv};
use serde_json::Value;

fn brood(b: &Broodd, args: &[&str]) -> Output {
    b.brood().args(args).output().expect("run brood")
}

fn ok(b: &Broodd, args: &[&str]) -> String {
    let o = brood(b, args);
    assert!(
        o.status.success(),
        "brood {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        b.log()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn exec(b: &Broodd, name: &str, cmd: &str) -> String {
    let (code, out, err) = b.exec(name, cmd);
    assert_eq!(code, 0, "{name}: {cmd}: {err}");
    out.trim().to_string()
}

fn holds(b: &Broodd, owner: &str) -> Value {
    let l = b.ok("GET", "/v1/ledger", None);
    l["owners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["owner"] == owner)
        .map(|o| o["holds"].clone())
        .unwrap_or(Value::Null)
}

/// The guest's MemTotal in KiB.
fn mem_total_kib(b: &Broodd, name: &str) -> u64 {
    exec(b, name, "grep MemTotal /proc/meminfo")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a MemTotal line")
}

/// The CFS quota (µs per 100 ms period) of a partition's QEMU cgroup:
/// `cpu.max` on cgroup v2, `cpu.cfs_quota_us` on v1.
fn cpu_quota(b: &Broodd, name: &str) -> String {
    let p = b.ok("GET", &format!("/v1/partitions/{name}"), None);
    let pid = p["pid"].as_u64().expect("a pid");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for l in cg.lines() {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        if !path.starts_with("/brood/") {
            continue;
        }
        if ctrls.is_empty() {
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.max")).unwrap();
            return max.split_whitespace().next().unwrap().to_string();
        }
        if ctrls.split(',').any(|c| c == "cpu") {
            let q =
                std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrls}{path}/cpu.cfs_quota_us"))
                    .unwrap();
            return q.trim().to_string();
        }
    }
    panic!("{name} has no brood cpu cgroup: {cg}");
}

#[test]
fn a_running_microvm_changes_live_what_it_can_and_the_rest_at_its_next_start() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "4096", "--disk-gib", "20"]);
    ok(
        &b,
        &["vm", "create", "w", "--memory", "256M", "--disk", "data:1G"],
    );
    let small = mem_total_kib(&b, "w");
    assert_eq!(holds(&b, "w")["disk_gib"], 1);

    // Live: the CPU cap is the cgroup's, a disk grows under the guest.
    let out = ok(&b, &["vm", "set", "w", "--cpu-cap", "50"]);
    assert!(out.contains("a CPU cap changed now"), "{out}");
    assert_eq!(cpu_quota(&b, "w"), "50000");
    let out = ok(&b, &["vm", "disk", "resize", "w", "data", "2G"]);
    assert!(out.contains("changed now"), "{out}");
    // vda is the data disk of the default image; 2 GiB in 512-byte sectors.
    assert_eq!(exec(&b, "w", "cat /sys/block/vda/size"), "4194304");
    assert_eq!(holds(&b, "w")["disk_gib"], 2);
    let p = b.ok("GET", "/v1/partitions/w", None);
    assert!(p.get("pending_change").is_none(), "nothing waits: {p}");

    // `--apply now` refuses what microvm cannot hotplug; nothing changes.
    let o = brood(
        &b,
        &["vm", "set", "w", "--memory", "384M", "--apply", "now"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot hotplug memory") && err.contains("--apply next-start"),
        "{err}"
    );
    let p = b.ok("GET", "/v1/partitions/w", None);
    assert_eq!(p["configs"]["default"]["memory_mib"], 256, "{p}");

    // Memory, a disk and a NIC wait for the next start, and say so.
    let out = ok(&b, &["vm", "set", "w", "--memory", "384M"]);
    assert!(
        out.contains("memory: the microvm machine cannot hotplug memory"),
        "{out}"
    );
    assert!(out.contains("pending until its next start"), "{out}");
    ok(&b, &["vm", "disk", "attach", "w", "logs", "1G"]);
    ok(&b, &["vm", "nic", "attach", "w", "user"]);
    // The disk's space is reserved with the change; memory stays what runs.
    let h = holds(&b, "w");
    assert_eq!(h["disk_gib"], 3, "{h}");
    assert_eq!(h["memory_mib"], 256 + 128, "{h}");
    let list = ok(&b, &["vm", "list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("w*"))
        .expect("w marked");
    assert!(line.contains("256 MiB"), "what runs now: {list}");
    let j: Value = serde_json::from_str(&ok(&b, &["vm", "list", "-o", "json"])).unwrap();
    let w = &j["items"][0];
    assert_eq!(w["pending_change"]["running"]["memory_mib"], 256, "{w}");
    assert_eq!(
        w["pending_change"]["running"]["disks"],
        serde_json::json!(["data"])
    );
    assert_eq!(w["configs"]["default"]["memory_mib"], 384, "{w}");
    let summary = w["pending_change"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("memory 256 MiB -> 384 MiB")
            && summary.contains("disk logs (1 GiB) attached")
            && summary.contains("on user attached"),
        "{summary}"
    );
    let mac = w["nics"][0]["mac"].as_str().unwrap().to_string();
    assert!(mac.starts_with("52:54:00:"), "a real MAC, not auto: {w}");

    // A save and restore comes back with what it ran.
    ok(&b, &["vm", "save", "w"]);
    ok(&b, &["vm", "restore", "w"]);
    assert_eq!(mem_total_kib(&b, "w"), small);
    assert_eq!(exec(&b, "w", "ls /sys/block | grep -c vd"), "1");
    let p = b.ok("GET", "/v1/partitions/w", None);
    assert!(p["pending_change"].is_object(), "still waiting: {p}");

    // A disk detached while it runs goes at the next start.
    ok(&b, &["vm", "disk", "detach", "w", "logs"]);
    let disk_dir = p["disks"][0]["path"]
        .as_str()
        .and_then(|d| std::path::Path::new(d).parent().map(|p| p.to_path_buf()))
        .unwrap();
    assert!(disk_dir.join("logs.qcow2").exists());

    // The next start applies the change.
    ok(&b, &["vm", "stop", "w"]);
    ok(&b, &["vm", "start", "w"]);
    let p = b.ok("GET", "/v1/partitions/w", None);
    assert!(p.get("pending_change").is_none(), "applied: {p}");
    assert!(mem_total_kib(&b, "w") > small + 100 * 1024);
    assert_eq!(exec(&b, "w", "ls /sys/block | grep -c vd"), "1");
    assert!(
        !disk_dir.join("logs.qcow2").exists(),
        "the detached disk is gone"
    );
    let macs = exec(&b, "w", "cat /sys/class/net/eth0/address");
    assert_eq!(macs, mac, "the guest has the MAC vm list showed");
    let h = holds(&b, "w");
    assert_eq!(h["disk_gib"], 2, "{h}");
    assert_eq!(h["memory_mib"], 384 + 128, "{h}");
    assert_eq!(h["nics"], 1, "{h}");
    assert_eq!(cpu_quota(&b, "w"), "50000");
    b.verify_ok();
    ok(&b, &["vm", "delete", "--force", "w"]);
}

#[test]
fn a_stopped_vm_takes_its_change_at_once_and_refusals_change_nothing() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048", "--disk-gib", "3"]);
    ok(
        &b,
        &["vm", "define", "s", "--memory", "256M", "--disk", "data:1G"],
    );
    let out = ok(&b, &["vm", "set", "s", "--vcpus", "2", "--memory", "320M"]);
    assert!(out.contains("takes effect when it starts"), "{out}");
    ok(&b, &["vm", "disk", "attach", "s", "more", "1G"]);
    assert_eq!(holds(&b, "s")["disk_gib"], 2);
    // Past the host's disk: refused, nothing made.
    let o = brood(&b, &["vm", "disk", "attach", "s", "huge", "2G"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("disk"), "{err}");
    assert_eq!(holds(&b, "s")["disk_gib"], 2);
    // Past the host's memory: refused.
    let o = brood(&b, &["vm", "set", "s", "--memory", "8G"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("more than the host's capacity"),
        "{o:?}"
    );
    // A disk does not shrink.
    let o = brood(&b, &["vm", "disk", "resize", "s", "data", "1G"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("only grows"),
        "{o:?}"
    );
    ok(&b, &["vm", "disk", "resize", "s", "data", "2G"]);
    ok(&b, &["vm", "disk", "detach", "s", "more"]);
    assert_eq!(holds(&b, "s")["disk_gib"], 2);
    ok(&b, &["vm", "start", "s"]);
    assert_eq!(exec(&b, "s", "nproc"), "2");
    assert_eq!(exec(&b, "s", "cat /sys/block/vda/size"), "4194304");
    assert_eq!(exec(&b, "s", "ls /sys/block | grep -c vd"), "1");
    b.verify_ok();
    ok(&b, &["vm", "delete", "--force", "s"]);
}

#[test]
fn every_line_of_the_readme_change_block_runs() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let lines = brood_e2e::readme_sh_lines("### Changing a VM after it is defined");
    assert!(lines.len() >= 8, "{lines:?}");
    for line in &lines {
        let o = b.sh(line, None);
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        if line.starts_with("brood vm list") {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with("app*") && l.contains("256 MiB")),
                "{stdout}"
            );
        }
        if line.starts_with("brood vm show") {
            assert!(stdout.contains("vcpus      2"), "{stdout}");
            assert!(stdout.contains("memory     512 MiB"), "{stdout}");
            assert!(stdout.contains("logs 1 GiB"), "{stdout}");
            assert!(stdout.contains("eth0 user (mac 52:54:00:"), "{stdout}");
            assert!(!stdout.contains("auto"), "{stdout}");
        }
    }
    assert_eq!(exec(&b, "app", "cat /sys/block/vda/size"), "4194304");
    b.verify_ok();
    ok(&b, &["vm", "delete", "--force", "app"]);
}
