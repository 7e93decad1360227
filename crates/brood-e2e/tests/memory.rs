//! Memory charges on real VMs (issue 8, item 5): every VM runs in a memory
//! cgroup no larger than its ledger charge, a forked child's charge is
//! trued up from what it really dirties, and a child held at its limit by
//! a full host is OOM-killed and recorded as crashed without taking the
//! host down. At most two VMs run at once (the template's parent, then one
//! child; templates keep no warm children here).

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, wait_until};
use serde_json::{Value, json};

/// What broodd charges a VM for QEMU's own memory besides its guest's.
const QEMU_MIB: u64 = 128;

/// A field of `/proc/PID/smaps_rollup` in MiB (rounded down).
fn rollup_mib(pid: u64, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// The memory limit of `pid`'s brood cgroup in MiB (v1 or v2).
fn cgroup_limit_mib(pid: u64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if !path.starts_with("/brood/") {
            continue;
        }
        let file = if ctrls.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if ctrls.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        let bytes: u64 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
        return Some(bytes >> 20);
    }
    None
}

fn partition(b: &Broodd, name: &str) -> Value {
    b.ok("GET", &format!("/v1/partitions/{name}"), None)
}

/// What partition `name` holds in the ledger.
fn holds(b: &Broodd, name: &str) -> Value {
    let l = b.ok("GET", "/v1/ledger", None);
    l["owners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["owner"] == name)
        .map(|o| o["holds"].clone())
        .unwrap_or(Value::Null)
}

/// Makes template `tpl` (256 MiB, no warm children) from a fresh partition.
fn template(b: &Broodd, tpl: &str) {
    let def = json!({"name": tpl, "configs": {"default": {"memory_mib": 256}}, "start": true});
    b.ok("POST", "/v1/partitions", Some(&def));
    let pid = partition(b, tpl)["pid"].as_u64().unwrap();
    // A plain partition's cgroup is its charge: guest memory plus QEMU's own.
    assert_eq!(holds(b, tpl)["memory_mib"], 256 + QEMU_MIB);
    assert_eq!(cgroup_limit_mib(pid), Some(256 + QEMU_MIB));
    b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": tpl, "warm": 0})),
    );
}

/// A guest command that dirties `mib` MiB of guest memory in 10 MiB steps
/// (files on a tmpfs in the guest), then counts the files.
fn dirty(mib: u32) -> String {
    let steps = mib / 10;
    format!(
        "mkdir -p /dev/shm && mount -t tmpfs -o size=200m tmpfs /dev/shm 2>/dev/null; \
         i=0; while [ $i -lt {steps} ]; do \
         dd if=/dev/zero of=/dev/shm/x$i bs=1M count=10 2>/dev/null || exit 1; \
         i=$((i+1)); sleep 0.2; done; ls /dev/shm | wc -l"
    )
}

#[test]
fn a_child_that_dirties_memory_is_charged_what_it_uses() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "4096"]);
    template(&b, "mbase");
    let r = b.ok(
        "POST",
        "/v1/templates/mbase/fork",
        Some(&json!({"count": 1, "charge_mib": 48})),
    );
    let child = r["children"][0]["name"].as_str().unwrap().to_string();
    let view = partition(&b, &child);
    let pid = view["pid"].as_u64().unwrap();
    // Claimed, the child is charged at least what it already uses (and no
    // less than a cgroup's smallest limit), its cgroup limit that charge.
    let first = view["fork"]["charge_mib"].as_u64().unwrap();
    assert!(first >= 64, "{view}");
    assert_eq!(holds(&b, &child)["memory_mib"], first);
    assert_eq!(cgroup_limit_mib(pid), Some(first));

    let (code, out, err) = b.exec(&child, &dirty(150));
    assert_eq!(code, 0, "the child could not dirty 150 MiB: {out} {err}");
    assert_eq!(out.trim(), "15", "{out}");
    // The ledger holds at least what the child's QEMU really uses.
    let caught_up = wait_until(Duration::from_secs(30), || {
        let held = holds(&b, &child)["memory_mib"].as_u64().unwrap_or(0);
        held >= rollup_mib(pid, "Anonymous:")
    });
    let held = holds(&b, &child)["memory_mib"].as_u64().unwrap();
    let used = rollup_mib(pid, "Anonymous:");
    assert!(
        caught_up,
        "charge {held} MiB, QEMU uses {used} MiB of its own"
    );
    assert!(
        used >= 150,
        "the dirtied pages are the child's own: {used} MiB"
    );
    assert!(held >= first + 100, "charge {held} MiB after dirtying 150");
    assert!(
        held <= 256 + QEMU_MIB,
        "never past the template's whole charge: {held}"
    );
    assert_eq!(cgroup_limit_mib(pid), Some(held));
    let shown = partition(&b, &child)["fork"]["charge_mib"]
        .as_u64()
        .unwrap();
    assert_eq!(shown, held);
    // Each true-up is in the audit log.
    let log = b.brood().args(["ledger", "log"]).output().unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains(&format!("true up {child}'s memory charge")),
        "{log}"
    );
    let verify = b.brood().args(["ledger", "verify"]).output().unwrap();
    assert!(verify.status.success(), "{verify:?}");
    b.verify_ok();

    // Started again, it forks afresh and keeps its trued-up charge, which
    // its new cgroup holds it to.
    b.ok("POST", &format!("/v1/partitions/{child}/kill"), None);
    assert_eq!(holds(&b, &child)["memory_mib"], 0);
    let again = b.ok("POST", &format!("/v1/partitions/{child}/start"), None);
    let pid = again["pid"].as_u64().unwrap();
    assert_eq!(holds(&b, &child)["memory_mib"], held);
    assert_eq!(cgroup_limit_mib(pid), Some(held));
    b.verify_ok();

    // A child made a template is re-hosted into a VM charged (and held to)
    // its whole memory; its own child is trued up like any other.
    b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": child, "name": "mlayer2", "warm": 0})),
    );
    let r = b.ok(
        "POST",
        "/v1/templates/mlayer2/fork",
        Some(&json!({"count": 1, "charge_mib": 48})),
    );
    let grandchild = r["children"][0]["name"].as_str().unwrap().to_string();
    let (code, _, err) = b.exec(&grandchild, "true");
    assert_eq!(code, 0, "{err}");
    let gpid = partition(&b, &grandchild)["pid"].as_u64().unwrap();
    let gheld = holds(&b, &grandchild)["memory_mib"].as_u64().unwrap();
    assert_eq!(cgroup_limit_mib(gpid), Some(gheld));
    b.verify_ok();

    b.ok("DELETE", "/v1/templates/mbase?cascade=true", None);
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

#[test]
fn a_child_held_at_its_limit_is_killed_not_the_host() {
    let env = TestEnv::new();
    // The template holds 384 MiB; the child can be charged at most 160 MiB
    // more, not the 150 MiB it dirties on top of what QEMU itself uses.
    let b = Broodd::start(&env, &["--memory-mib", "544"]);
    template(&b, "hbase");
    let r = b.ok(
        "POST",
        "/v1/templates/hbase/fork",
        Some(&json!({"count": 1, "charge_mib": 48})),
    );
    let child = r["children"][0]["name"].as_str().unwrap().to_string();
    let pid = partition(&b, &child)["pid"].as_u64().unwrap();
    // The exec fails one way or another: the VM is killed under it.
    let (status, body) = b.call(
        "POST",
        &format!("/v1/partitions/{child}/exec"),
        Some(&json!({"command": dirty(150)})),
    );
    assert!(
        status != 200 || body["exit_code"] != 0,
        "the child dirtied more than the host could charge: {body}"
    );
    let crashed = wait_until(Duration::from_secs(30), || {
        partition(&b, &child)["run_state"] == "crashed"
    });
    let view = partition(&b, &child);
    assert!(crashed, "{view}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "its QEMU is gone"
    );
    // The host is fine: nothing is held past capacity, the ledger verifies.
    assert_eq!(holds(&b, &child)["memory_mib"], 0, "{view}");
    assert_eq!(holds(&b, "available")["memory_mib"], 544 - (256 + QEMU_MIB));
    b.verify_ok();
    b.ok("GET", "/v1/host", None);
    b.ok("DELETE", "/v1/templates/hbase?cascade=true", None);
    drop(b);
    env.assert_clean();
}
