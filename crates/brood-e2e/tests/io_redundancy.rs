//! I/O partitions that die while broodd is down, against one real VM on a
//! network served by a switch partition and with a disk served by the
//! storage partition: broodd is stopped, both daemons are killed -9, and
//! the next broodd restarts them before it reattaches the VM; the guest
//! pings its gateway and reads what it wrote before, and `verify` is clean.
//! Its second NIC is capped (`--nic NET,mbps=3`): what it sends to the
//! host stays under the cap, what its uncapped NIC sends does not, and the
//! restarted switch keeps the cap. Both daemons run confined
//! (`no_new_privs`, only the capabilities they need), before and after the
//! restart. Then CPUs are dedicated to the storage partition (`brood io set
//! --cpus`), read back from every thread's `/proc/PID/task/TID/status`.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::process::Command;
use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, run, wait_until};
use serde_json::Value;

/// What the guest writes before broodd goes down: 8 MiB of a pattern.
const PATTERN: &str = "yes brood-io-restart | head -c 8388608";
const READ_BACK: &str = "echo 3 > /proc/sys/vm/drop_caches; head -c 8388608 /dev/vda | sha256sum";

/// The bandwidth cap of the guest's second NIC, Mbit/s (a TCG guest on a
/// busy host sends some 8 Mbit/s uncapped).
const CAP_MBPS: u32 = 3;
/// What the guest sends to measure a rate: 1.25 MiB, timed over the last
/// MiB (the first quarter MiB covers the bucket's burst and TCP's start).
const SEND_BYTES: usize = 5 << 18;
const UNTIMED_BYTES: usize = 1 << 18;

/// Guest-to-host throughput in Mbit/s to `gateway` (the host's address on
/// a network): the guest pipes zeros into busybox nc, a listener here
/// counts them on the host's clock over the last MiB.
fn send_mbps(b: &Broodd, gateway: &str) -> f64 {
    use std::io::Read;
    let l = std::net::TcpListener::bind((gateway, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let rx = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut conn = loop {
            match l.accept() {
                Ok((c, _)) => break c,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("the guest never connected: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut got, mut first) = (0usize, None);
        while got < SEND_BYTES {
            let n = conn.read(&mut buf).expect("read from the guest");
            assert!(n > 0, "the guest stopped after {got} bytes");
            got += n;
            if first.is_none() && got >= UNTIMED_BYTES {
                first = Some((std::time::Instant::now(), got));
            }
        }
        let (t0, n0) = first.unwrap();
        let secs = t0.elapsed().as_secs_f64();
        ((got - n0) as f64 * 8.0 / 1e6) / secs
    });
    let (code, out, err) = b.exec(
        "r",
        &format!(
            "dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {gateway} {port}; true",
            SEND_BYTES >> 16
        ),
    );
    assert_eq!(code, 0, "{out}{err}");
    rx.join().unwrap()
}

/// The switch's capabilities: `CAP_DAC_OVERRIDE` (1) and `CAP_NET_ADMIN` (12).
const SWITCH_CAPS: u64 = (1 << 1) | (1 << 12);
/// The storage daemon's: `CAP_DAC_OVERRIDE`.
const STORAGE_CAPS: u64 = 1 << 1;

/// The process runs with `no_new_privs` and (when the test, and so
/// broodd, is root) with only capabilities `caps`, effective and bounding.
fn assert_confined(pid: i32, caps: u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    let hex = |k: &str| u64::from_str_radix(&field(k), 16).unwrap();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(hex("CapEff:"), caps, "{status}");
        assert_eq!(hex("CapBnd:"), caps, "{status}");
    } else {
        assert_eq!(hex("CapEff:"), 0, "{status}");
    }
}

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

/// What to look at when guest `vm` cannot reach a gateway: the guest's
/// links, addresses, routes and neighbours, the host's gateway taps, the
/// switch's configuration and log, and broodd's log.
fn network_report(b: &Broodd, vm: &str) -> String {
    let (_, guest, _) = b.exec(
        vm,
        "ip link; ip -4 addr; ip route; ip neigh; cat /sys/class/net/*/address",
    );
    let host = Command::new("sh")
        .args([
            "-c",
            "ip -d link show | grep -A3 ' bn-'; ip -4 addr | grep -A2 ' bn-'",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let io = b.data.join("io");
    let switch = std::fs::read_dir(&io)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("switch-"))
        .map(|e| {
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
            format!(
                "{}:\nswitch.json: {}\nswitch.log:\n{}",
                e.path().display(),
                read("switch.json"),
                read("switch.log")
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "the guest:\n{guest}\nthe host's taps:\n{host}\n{switch}\nbroodd:\n{}",
        b.log()
    )
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

/// The CPUs this test (and so broodd, its child) may use.
fn my_cpus() -> Vec<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    (0..nix::sched::CpuSet::count())
        .filter(|c| set.is_set(*c).unwrap_or(false))
        .collect()
}

/// `Cpus_allowed_list` of every thread of `pid`.
fn thread_cpu_lists(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        if let Some(l) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            out.push(l.trim().to_owned());
        }
    }
    out
}

/// `brood io set NAME --cpus 1`: every thread of the daemon runs on the
/// last CPU, and so does the next daemon after a restart; `--any-cpu`
/// gives it every CPU again. Out-of-range numbers are refused.
fn dedicated_cpus(b: &Broodd, name: &str) {
    let o = brood(b, &["io", "set", name, "--cpus", "0"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("at least one must stay"), "{err}");
    let cpus = my_cpus();
    let o = brood(b, &["io", "set", name, "--cpus", &cpus.len().to_string()]);
    assert!(!o.status.success(), "all the host's CPUs were given away");
    assert_eq!(io(b, name)["cpus"], Value::Null);
    if cpus.len() < 2 {
        // One CPU: nothing can be dedicated (refused above).
        return;
    }
    let last = cpus.last().unwrap().to_string();
    let o = brood(b, &["io", "set", name, "--cpus", "1", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cpus"], 1, "{v}");
    assert_eq!(v["cpu_list"].as_str(), Some(last.as_str()), "{v}");
    let pid = pid_of(&v).unwrap();
    let lists = thread_cpu_lists(pid);
    assert!(
        !lists.is_empty() && lists.iter().all(|l| *l == last),
        "{lists:?}"
    );
    let text = String::from_utf8_lossy(&brood(b, &["io", "show", name]).stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("cpu list") && l.trim_end().ends_with(&last)),
        "{text}"
    );
    // The next process is pinned too.
    let o = brood(b, &["io", "restart", name]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pinned = wait_until(Duration::from_secs(30), || {
        let s = io(b, name);
        pid_of(&s).is_some_and(|p| {
            p != pid && s["state"] == "running" && thread_cpu_lists(p).iter().all(|l| *l == last)
        })
    });
    assert!(
        pinned,
        "the restarted daemon is not on CPU {last}: {}",
        io(b, name)
    );
    let o = brood(b, &["io", "set", name, "--any-cpu", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cpus"], Value::Null, "{v}");
    let lists = thread_cpu_lists(pid_of(&v).unwrap());
    assert!(lists.iter().all(|l| *l != last), "{lists:?}");
}

#[test]
fn io_partitions_killed_while_broodd_is_down_are_restarted_before_the_vms() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let mut left = Leftovers::default();
    let net = unique("rs");
    left.taps.push(format!("bn-{net}"));
    let capped = unique("rq");
    left.taps.push(format!("bn-{capped}"));
    for (n, subnet) in [(&net, "10.67.0.0/24"), (&capped, "10.68.0.0/24")] {
        let o = brood(
            &b,
            &[
                "network",
                "create",
                n,
                "--subnet",
                subnet,
                "--zone",
                "rs",
                "--gateway",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // A cap on a NIC that no switch serves is refused.
    let o = brood(&b, &["vm", "define", "bad", "--nic", "user,mbps=10"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("brood network"), "{err}");
    let o = brood(
        &b,
        &["vm", "define", "bad", "--nic", &format!("{capped},mbps=0")],
    );
    assert!(!o.status.success());
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
            "--nic",
            &format!("{capped},mbps={CAP_MBPS}"),
            "--disk",
            "data:1,via=io",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (switch, storage) = ("switch-rs", "storage-default");
    let old = [pid_of(&io(&b, switch)), pid_of(&io(&b, storage))].map(|p| p.unwrap());
    left.pids.extend(old);
    assert_confined(old[0], SWITCH_CAPS);
    assert_confined(old[1], STORAGE_CAPS);
    let got_address = wait_until(Duration::from_secs(120), || {
        b.exec("r", "ping -c 1 -W 2 10.67.0.1").0 == 0
    });
    assert!(
        got_address,
        "r never reached its gateway\n{}",
        network_report(&b, "r")
    );
    let got_address = wait_until(Duration::from_secs(60), || {
        b.exec("r", "ping -c 1 -W 2 10.68.0.1").0 == 0
    });
    assert!(
        got_address,
        "r never reached its capped gateway\n{}",
        network_report(&b, "r")
    );
    let free = send_mbps(&b, "10.67.0.1");
    let slow = send_mbps(&b, "10.68.0.1");
    eprintln!("guest -> host: {free:.1} Mbit/s uncapped, {slow:.1} capped at {CAP_MBPS}");
    assert!(
        slow <= f64::from(CAP_MBPS) * 1.1,
        "{slow:.1} Mbit/s over a cap of {CAP_MBPS}"
    );
    assert!(
        free > slow * 1.3,
        "the cap is not what slowed it: {free:.1} against {slow:.1}"
    );
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
    assert_confined(pid_of(&io(&b, switch)).unwrap(), SWITCH_CAPS);
    assert_confined(pid_of(&io(&b, storage)).unwrap(), STORAGE_CAPS);
    // The guest is on both again: its network and its disk.
    let (code, out, _) = b.exec("r", "ping -c 2 -W 5 10.67.0.1");
    assert_eq!(
        code,
        0,
        "no network after the restart: {out}\n{}",
        network_report(&b, "r")
    );
    // The cap is the channel's: the new switch enforces it too.
    let slow = send_mbps(&b, "10.68.0.1");
    assert!(
        slow <= f64::from(CAP_MBPS) * 1.1,
        "{slow:.1} Mbit/s after the restart"
    );
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

    dedicated_cpus(&b, storage);
    let (code, got, _) = b.exec("r", READ_BACK);
    assert_eq!(code, 0);
    assert!(
        got.starts_with(&want),
        "on its dedicated CPU the guest read {got}"
    );
    left.pids.extend(pid_of(&io(&b, storage)));

    let o = brood(&b, &["vm", "stop", "r"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for name in [switch, storage] {
        let o = brood(&b, &["io", "stop", name]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    left.pids.clear();
    for n in [&net, &capped] {
        let o = brood(&b, &["network", "delete", n]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    b.verify_ok();
}
