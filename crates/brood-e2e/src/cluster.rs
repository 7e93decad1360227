//! The three-host fixture of the cluster tests (issue 15): a bridge and
//! network namespaces, and one broodd per namespace with its own data and
//! run directories, all removed on drop even when a test fails.

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::{TestEnv, brood_bin, data_dir, run, wait_until};

/// Each test here that boots VMs runs two at once; this keeps it at two
/// for the file (the machine has 2 cores), not a fixed path or order.
pub static TWO_VMS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The namespaces, veths and bridge of one test; deleted on drop, even
/// when the test fails.
#[derive(Debug)]
pub struct Net {
    pub bridge: String,
    pub namespaces: Vec<String>,
    /// The bridge's address (PostgreSQL listens there).
    pub gateway: String,
}

impl Net {
    /// A bridge and `hosts` namespaces, each with a veth on the bridge.
    pub fn new(hosts: usize) -> Net {
        // Unique per Net, not per process: tests of one binary make one
        // after another, and the kernel tears a deleted namespace's veths
        // down asynchronously, so a name reused at once may still exist.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = (std::process::id()
            .wrapping_mul(7)
            .wrapping_add(n.wrapping_mul(131)))
            % 10_000;
        let subnet = 100 + (tag % 100);
        let bridge = format!("bcl{tag}");
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        let mut net = Net {
            bridge: bridge.clone(),
            namespaces: Vec::new(),
            gateway: format!("10.{subnet}.77.1"),
        };
        run(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]));
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            &bridge,
        ]));
        run(Command::new("ip").args(["link", "set", &bridge, "up"]));
        for i in 0..hosts {
            let ns = format!("bcl{tag}h{}", i + 1);
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            run(Command::new("ip").args(["netns", "add", &ns]));
            net.namespaces.push(ns.clone());
            let (outer, inner) = (format!("bcl{tag}v{}", i + 1), "eth0".to_owned());
            let _ = Command::new("ip").args(["link", "del", &outer]).output();
            run(Command::new("ip").args([
                "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ]));
            run(Command::new("ip").args(["link", "set", &outer, "master", &bridge, "up"]));
            let addr = format!("10.{subnet}.77.{}/24", i + 2);
            for args in [
                vec!["addr", "add", &addr, "dev", "eth0"],
                vec!["link", "set", "eth0", "up"],
                vec!["link", "set", "lo", "up"],
            ] {
                run(Command::new("ip")
                    .args(["netns", "exec", &ns, "ip"])
                    .args(args));
            }
        }
        net
    }
}

impl Net {
    /// Cuts host `i`'s (from 0) link to the bridge, or mends it: its
    /// broodd keeps running but reaches neither PostgreSQL nor the others.
    /// Puts every host's link in a bridge `name` of its own namespace (its
    /// address moves there), so a VM with `--nic NAME` is on the hosts'
    /// shared segment on whichever host it runs. Call before the hosts
    /// start; returns the hosts' prefix (`10.N.77`).
    pub fn bridge_hosts(&self, name: &str) -> String {
        let prefix = self.gateway.trim_end_matches(".1").to_owned();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let addr = format!("{prefix}.{}/24", i + 2);
            for args in [
                vec!["link", "add", name, "type", "bridge"],
                vec!["addr", "del", &addr, "dev", "eth0"],
                vec!["link", "set", "eth0", "master", name],
                vec!["addr", "add", &addr, "dev", name],
                vec!["link", "set", name, "up"],
            ] {
                run(Command::new("ip")
                    .args(["netns", "exec", ns, "ip"])
                    .args(args));
            }
        }
        prefix
    }

    pub fn link(&self, i: usize, up: bool) {
        let veth = format!("{}v{}", self.bridge, i + 1);
        run(Command::new("ip").args(["link", "set", &veth, if up { "up" } else { "down" }]));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// One host: a broodd in its namespace, killed on drop (its VMs die with
/// its `TestEnv`).
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub env: TestEnv,
    pub data: PathBuf,
    pub args: Vec<String>,
    pub ns: String,
    pub child: Option<Child>,
}

impl Host {
    pub fn start(ns: &str, name: &str, catalog: &str, zones: &[&str]) -> Host {
        let env = TestEnv::new();
        let data = env.run_root().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mut args: Vec<String> = [
            "--memory-mib",
            "2048",
            "--disk-gib",
            "20",
            "--catalog",
            catalog,
            "--cluster-host",
            name,
            "--heartbeat-interval",
            "300ms",
            "--suspect-after",
            "1500ms",
            "--failed-after",
            "3s",
            "--catalog-retry",
            "60s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for z in zones {
            args.push("--zone".into());
            args.push((*z).into());
        }
        let mut h = Host {
            name: name.into(),
            env,
            data,
            args,
            ns: ns.into(),
            child: None,
        };
        h.spawn();
        h
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.join("broodd.log"))
            .unwrap();
        // nsenter, not `ip netns exec`: that one mounts a new /sys without
        // the cgroup tree VMs are confined in. Both exec broodd, so the
        // child's pid is broodd's.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(brood_bin().with_file_name("broodd"))
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--run-dir")
            .arg(self.env.run_root().join("vms"))
            .arg("--image")
            .arg(data_dir().join("images/default"))
            .args(&self.args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let sock = self.data.join("broodd.sock");
        let up = wait_until(Duration::from_secs(60), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        assert!(
            up,
            "{}'s broodd did not come up:\n{}",
            self.name,
            self.log()
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("broodd.log")).unwrap_or_default()
    }

    pub fn brood(&self, args: &[&str]) -> Output {
        Command::new(brood_bin())
            .env("BROOD_DATA_DIR", &self.data)
            .env("BROOD_RUN_DIR", self.env.run_root().join("vms"))
            .env_remove("BROOD_HOST")
            .env_remove("BROOD_TOKEN")
            .args(args)
            .output()
            .unwrap()
    }

    /// `brood ARGS -o json`, which must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.brood(&a);
        assert!(
            out.status.success(),
            "{}: brood {args:?}: {}{}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log())
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn verify_ok(&self) {
        let out = self.brood(&["ledger", "verify"]);
        assert!(
            out.status.success(),
            "{}: ledger verify: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().rev().take(20).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

pub fn states(h: &Host) -> Vec<(String, String)> {
    let v = h.json(&["host", "list"]);
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_owned(),
                h["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn placement(h: &Host, name: &str) -> Value {
    let v = h.json(&["host", "placements"]);
    v["placements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn verify_all(hosts: &[&Host]) {
    for h in hosts {
        h.verify_ok();
    }
}
