//! I/O partitions that die while broodd is down, against one real VM on a
//! network served by a switch partition and with a disk served by the
//! storage partition: broodd is stopped, both daemons are killed -9, and
//! the next broodd restarts them before it reattaches the VM; the guest
//! pings its gateway and reads what it wrote before, and `verify` is clean.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::process::Command;
use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, run, wait_until};
use serde_json::Value;

/// What the guest writes before broodd goes down: 8 MiB of a pattern.
const PATTERN: &str = "yes brood-io-restart | head -c 8388608";
const READ_BACK: &str = "echo 3 > /proc/sys/vm/drop_caches; head -c 8388608 /dev/vda | sha256sum";

/// A name no other test (or run) uses: taps are host-wide.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id() % 100_000)
}

fn sha256_of_shell(cmd: &str) -> String {
    let out = run(Command::new("sh").args(["-c", &format!("{cmd} | sha256sum")]));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn brood(b: &Broodd, args: &[&str]) -> std::process::Output {
    b.brood().args(args).output().expect("run brood")
}

fn io(b: &Broodd, name: &str) -> Value {
    b.ok("GET", &format!("/v1/io/{name}"), None)
}

fn pid_of(v: &Value) -> Option<i32> {
    v["pid"].as_u64().and_then(|p| i32::try_from(p).ok())
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Kills the daemons a failed test leaves behind (broodd leaves them
/// serving when it stops) and the gateway tap.
#[derive(Default)]
struct Leftovers {
    pids: Vec<i32>,
    taps: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::SIGKILL);
        }
        for t in &self.taps {
            let _ = Command::new("ip").args(["link", "del", t]).output();
        }
    }
}

#[test]
fn io_partitions_killed_while_broodd_is_down_are_restarted_before_the_vms() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let mut left = Leftovers::default();
    let net = unique("rs");
    left.taps.push(format!("bn-{net}"));
    let o = brood(
        &b,
        &[
            "network",
            "create",
            &net,
            "--subnet",
            "10.67.0.0/24",
            "--zone",
            "rs",
            "--gateway",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = brood(
        &b,
        &[
            "vm",
            "create",
            "r",
            "--memory",
            "256",
            "--nic",
            &net,
            "--disk",
            "data:1,via=io",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (switch, storage) = ("switch-rs", "storage-default");
    let old = [pid_of(&io(&b, switch)), pid_of(&io(&b, storage))].map(|p| p.unwrap());
    left.pids.extend(old);
    let got_address = wait_until(Duration::from_secs(120), || {
        b.exec("r", "ping -c 1 -W 2 10.67.0.1").0 == 0
    });
    assert!(got_address, "r never reached its gateway\n{}", b.log());
    let want = sha256_of_shell(PATTERN);
    let (code, out, _) = b.exec(
        "r",
        &format!("{PATTERN} | dd of=/dev/vda bs=64k conv=fsync 2>&1"),
    );
    assert_eq!(code, 0, "{out}");

    // broodd goes down; both I/O partitions die while it is away.
    b.stop();
    for pid in old {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || !old
        .iter()
        .any(|p| alive(*p))));
    b.restart();
    for (name, was) in [(switch, old[0]), (storage, old[1])] {
        let restarted = wait_until(Duration::from_secs(30), || {
            let s = io(&b, name);
            s["state"] == "running" && pid_of(&s).is_some_and(|p| p != was)
        });
        assert!(restarted, "{name} was not restarted: {}", io(&b, name));
        left.pids.extend(pid_of(&io(&b, name)));
    }
    // The guest is on both again: its network and its disk.
    let (code, out, _) = b.exec("r", "ping -c 2 -W 5 10.67.0.1");
    assert_eq!(code, 0, "no network after the restart: {out}\n{}", b.log());
    let (code, got, err) = b.exec("r", READ_BACK);
    assert_eq!(code, 0, "{err}");
    assert!(got.starts_with(&want), "the guest read {got}, wrote {want}");
    let (code, out, _) = b.exec(
        "r",
        "dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=100000 conv=fsync 2>&1",
    );
    assert_eq!(code, 0, "a write after the restart failed: {out}");
    b.verify_ok();
    let o = brood(&b, &["ledger", "verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    let o = brood(&b, &["vm", "stop", "r"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for name in [switch, storage] {
        let o = brood(&b, &["io", "stop", name]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    left.pids.clear();
    let o = brood(&b, &["network", "delete", &net]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    b.verify_ok();
}
