#![allow(clippy::tests_outside_test_module)]
//! Host failure, fencing and operations services on three hosts (issue 15):
//! each a broodd in its own network namespace, one PostgreSQL on the
//! bridge, two operations services (`broodd ops`) sharing the hosts by
//! leases. One VM at a time (it moves):
//!
//! 1. kill -9 of a host's broodd alone: its operations service restarts it
//!    (the restart command) and the VM it reattaches still answers;
//! 2. kill -9 of the broodd and the VM's QEMU process group, the restart
//!    failing: the VM is re-placed on another host by its zones (the
//!    generation bumped) and answers exec there;
//! 3. the old host's broodd comes back: it removes its stale copy and
//!    refuses to define or start it again (fenced, 409 / 404);
//! 4. one operations service is killed: the other takes its hosts (the
//!    leases move) and a second host failure is still handled;
//! 5. the host running the VM is cut off the network (broodd and QEMU
//!    alive): it pauses the VM before it may be called failed, the VM
//!    runs on the last host while the cut-off copy is paused, and the
//!    link back, the cut-off host removes its copy.
//!
//! `brood ledger verify` is clean on every host after each step.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use brood_cluster::testing::TempPostgres;
use brood_e2e::cluster::{Host, Net, TWO_VMS, placement, stderr, tail, verify_all};
use brood_e2e::{brood_bin, data_dir, wait_until};
use serde_json::Value;

/// Generous deadlines: a VM boots in seconds under TCG on a loaded machine.
const T: Duration = Duration::from_secs(90);

/// One `broodd ops` process, killed on drop.
struct Ops {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Ops {
    fn start(name: &str, url: &str, token: &Path, restart: &Path, dir: &Path) -> Ops {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(brood_bin().with_file_name("broodd"))
            .args(["ops", "--catalog", url, "--name", name, "--token-file"])
            .arg(token)
            .arg("--restart-command")
            .arg(format!("sh {}", restart.display()))
            .args([
                "--restart-timeout",
                "20s",
                "--replace-after",
                "3s",
                "--lease-ttl",
                "2s",
                "--interval",
                "300ms",
                "--suspect-after",
                "1500ms",
                "--failed-after",
                "3s",
            ])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Ops {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// broodds the restart command started (not children of the test): killed
/// on drop by the pid each wrote.
struct Restarted(Vec<PathBuf>);

impl Drop for Restarted {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The restart command's script: starts `$BROOD_HOST`'s broodd again in
/// its namespace, exactly as the fixture does, if the test allows it (a
/// file `<host>.restart-ok`); fails otherwise (the host "stays down").
fn restart_script(dir: &Path, hosts: &[&Host]) -> PathBuf {
    let broodd = brood_bin().with_file_name("broodd");
    let mut s = String::from("set -e\ncase \"$BROOD_HOST\" in\n");
    for h in hosts {
        let args: Vec<String> = h.args.iter().map(|a| format!("'{a}'")).collect();
        s.push_str(&format!(
            "{name})\n  [ -e '{ok}' ] || {{ echo \"$BROOD_HOST stays down\" >&2; exit 1; }}\n  \
             setsid nsenter --net=/run/netns/{ns} -- '{broodd}' --data-dir '{data}' --run-dir '{run}' \
             --image '{image}' {args} >> '{data}/broodd.log' 2>&1 < /dev/null &\n  echo $! > '{pid}'\n  ;;\n",
            name = h.name,
            ok = dir.join(format!("{}.restart-ok", h.name)).display(),
            ns = h.ns,
            broodd = broodd.display(),
            data = h.data.display(),
            run = h.env.run_root().join("vms").display(),
            image = data_dir().join("images/default").display(),
            args = args.join(" "),
            pid = dir.join(format!("{}.pid", h.name)).display(),
        ));
    }
    s.push_str("*) echo \"no such host $BROOD_HOST\" >&2; exit 1 ;;\nesac\n");
    let path = dir.join("restart.sh");
    std::fs::write(&path, s).unwrap();
    path
}

fn hosts_json(h: &Host) -> Vec<Value> {
    h.json(&["host", "list"])["hosts"]
        .as_array()
        .unwrap()
        .clone()
}

/// Which ops instance watches each host (`None`: no lease).
fn watchers(h: &Host) -> Vec<(String, Option<String>)> {
    hosts_json(h)
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_owned(),
                x["ops"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn state_of(h: &Host, name: &str) -> String {
    hosts_json(h)
        .iter()
        .find(|x| x["name"] == name)
        .map(|x| x["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

fn exec_ok(h: &Host, vm: &str) -> bool {
    let out = h.brood(&["vm", "exec", vm, "echo alive"]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("alive")
}

/// The QEMU pid of a VM (its process group: QEMU runs in its own).
fn qemu_pid(h: &Host, vm: &str) -> i32 {
    let p = h.json(&["vm", "show", vm]);
    i32::try_from(p["pid"].as_i64().expect("a running VM has a pid")).unwrap()
}

fn kill_group(pid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills a host's broodd: the test's child, or the one the restart
/// command started.
fn kill_broodd(h: &mut Host, pid_file: &Path) {
    h.kill9();
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = std::fs::remove_file(pid_file);
    }
}

fn host_of(h: &Host, vm: &str) -> (Option<String>, u64, bool) {
    let p = placement(h, vm);
    (
        p["host"].as_str().map(str::to_owned),
        p["generation"].as_u64().unwrap_or(0),
        p["held"] == true,
    )
}

#[test]
fn a_failed_host_is_restarted_or_its_vm_moves_the_old_host_is_fenced_and_ops_take_over() {
    let _two = TWO_VMS.blocking_lock();
    let net = Net::new(3);
    let pg = TempPostgres::start_on(&net.gateway).expect("start PostgreSQL");
    let url = pg.url();
    let mut h1 = Host::start(&net.namespaces[0], "h1", &url, &["storage:shared"]);
    let mut h2 = Host::start(&net.namespaces[1], "h2", &url, &["storage:shared"]);
    let mut h3 = Host::start(&net.namespaces[2], "h3", &url, &["storage:shared"]);
    let dir = tempfile::tempdir().unwrap();
    let script = restart_script(dir.path(), &[&h1, &h2, &h3]);
    let pid_file = |n: &str| dir.path().join(format!("{n}.pid"));
    let _restarted = Restarted(["h1", "h2", "h3"].iter().map(|n| pid_file(n)).collect());

    // Two authorized instances; an unknown token is refused at start.
    let tok = |n: &str| dir.path().join(format!("{n}.token"));
    for n in ["ops1", "ops2"] {
        let out = h1.brood(&["host", "ops", "add", n, "--token-file"]);
        assert!(!out.status.success(), "--token-file needs a path");
        let path = tok(n).display().to_string();
        let out = h1.brood(&["host", "ops", "add", n, "--token-file", &path]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    std::fs::write(dir.path().join("bad.token"), "not-the-token\n").unwrap();
    let bad = Command::new(brood_bin().with_file_name("broodd"))
        .args(["ops", "--catalog", &url, "--name", "ops1", "--token-file"])
        .arg(dir.path().join("bad.token"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("not authorized"), "{}", stderr(&bad));
    let mut ops1 = Ops::start("ops1", &url, &tok("ops1"), &script, dir.path());
    let mut ops2 = Ops::start("ops2", &url, &tok("ops2"), &script, dir.path());
    // Every host watched by exactly one, and both instances share them.
    let shared = || {
        let w = watchers(&h2);
        w.len() == 3
            && w.iter().all(|(_, o)| o.is_some())
            && ["ops1", "ops2"]
                .iter()
                .all(|n| w.iter().any(|(_, o)| o.as_deref() == Some(*n)))
    };
    assert!(
        wait_until(T, shared),
        "{:?}\n{}\n{}",
        watchers(&h2),
        ops1.log(),
        ops2.log()
    );
    let listed = h2.json(&["host", "ops", "list"]);
    assert_eq!(listed["ops"].as_array().unwrap().len(), 2, "{listed}");

    // The VM, on h1: its definition is published to the catalog.
    h1.json(&["vm", "create", "web", "--memory", "256", "--vcpus", "1"]);
    assert!(wait_until(T, || exec_ok(&h1, "web")), "{}", tail(&h1.log()));
    assert!(wait_until(T, || host_of(&h2, "web") == (Some("h1".into()), 1, true)));
    verify_all(&[&h1, &h2, &h3]);

    // (a) broodd alone dies; the restart command brings it back, and it
    // reattaches the VM that kept running.
    std::fs::write(dir.path().join("h1.restart-ok"), "").unwrap();
    let pid = qemu_pid(&h1, "web");
    h1.kill9();
    assert!(
        wait_until(T, || std::fs::metadata(pid_file("h1")).is_ok()),
        "the restart command ran:\n{}\n{}",
        ops1.log(),
        ops2.log()
    );
    assert!(
        wait_until(T, || state_of(&h2, "h1") == "active" && exec_ok(&h1, "web")),
        "{}",
        tail(&h1.log())
    );
    assert_eq!(qemu_pid(&h1, "web"), pid, "the same QEMU, reattached");
    assert_eq!(host_of(&h2, "web").0.as_deref(), Some("h1"));
    verify_all(&[&h1, &h2, &h3]);

    // (b) broodd and the VM die, and the host stays down: the VM is
    // re-placed on another host, its generation bumped, and runs there.
    std::fs::remove_file(dir.path().join("h1.restart-ok")).unwrap();
    kill_broodd(&mut h1, &pid_file("h1"));
    kill_group(pid);
    let moved = || {
        let (host, generation, held) = host_of(&h2, "web");
        matches!(host.as_deref(), Some("h2" | "h3")) && generation == 2 && held
    };
    assert!(
        wait_until(T, moved),
        "{:?}\n{}\n{}",
        host_of(&h2, "web"),
        ops1.log(),
        ops2.log()
    );
    let (now_on, _, _) = host_of(&h2, "web");
    let now_on = now_on.unwrap();
    {
        let target = if now_on == "h2" { &h2 } else { &h3 };
        assert!(
            wait_until(T, || exec_ok(target, "web")),
            "{}",
            tail(&target.log())
        );
    }
    verify_all(&[&h2, &h3]);

    // The old host comes back: its copy is fenced (stopped and removed),
    // and it neither starts nor defines the VM again.
    h1.spawn();
    assert!(wait_until(T, || state_of(&h2, "h1") == "active"));
    assert!(wait_until(T, || {
        let out = h1.brood(&["vm", "show", "web"]);
        !out.status.success()
    }));
    assert!(h1.log().contains("fenced"), "{}", tail(&h1.log()));
    let start = h1.brood(&["vm", "start", "web"]);
    assert!(!start.status.success());
    let again = h1.brood(&["vm", "create", "web", "--memory", "256", "--vcpus", "1"]);
    assert!(!again.status.success());
    let why = stderr(&again);
    assert!(
        why.contains("fenced") && why.contains(&now_on),
        "a define of the moved VM's name on the old host: {why}"
    );
    // Still one copy, where it moved.
    assert_eq!(host_of(&h1, "web").0.as_deref(), Some(now_on.as_str()));
    verify_all(&[&h1, &h2, &h3]);

    // One operations service dies: the other takes every host.
    let victim = watchers(&h2)
        .into_iter()
        .find(|(h, _)| *h == now_on)
        .and_then(|(_, o)| o)
        .unwrap();
    let (dead, alive) = if victim == "ops1" {
        ops1.kill9();
        ("ops1", &ops2)
    } else {
        ops2.kill9();
        ("ops2", &ops1)
    };
    assert!(
        wait_until(T, || watchers(&h1)
            .iter()
            .all(|(_, o)| o.as_deref() == Some(alive.name.as_str()))),
        "{dead} died: {:?}\n{}",
        watchers(&h1),
        alive.log()
    );

    // And a failure after that is still handled: the host now running the
    // VM dies with it, and the VM moves again.
    {
        let target = if now_on == "h2" { &mut h2 } else { &mut h3 };
        let pid = qemu_pid(target, "web");
        kill_broodd(target, &pid_file(&now_on));
        kill_group(pid);
    }
    let observer = if now_on == "h2" { &h3 } else { &h2 };
    let moved_again = || {
        let (host, generation, held) = host_of(observer, "web");
        host.is_some_and(|h| h != now_on) && generation == 3 && held
    };
    assert!(
        wait_until(T, moved_again),
        "{:?}\n{}",
        host_of(observer, "web"),
        alive.log()
    );
    let last = host_of(observer, "web").0.unwrap();
    let last_host = [&h1, &h2, &h3]
        .into_iter()
        .find(|h| h.name == last)
        .unwrap();
    assert!(
        wait_until(T, || exec_ok(last_host, "web")),
        "{}",
        tail(&last_host.log())
    );
    let live: Vec<&Host> = [&h1, &h2, &h3]
        .into_iter()
        .filter(|h| h.name != now_on)
        .collect();
    verify_all(&live);

    // (e) A network partition, not a crash: the host running the VM loses
    // its link, its broodd and QEMU live on. Before the operations service
    // may call it failed, it fences itself (pauses the VM); the VM is
    // re-placed on the last live host and runs there while the cut-off
    // copy is still paused, so it never runs twice. The link back, the
    // cut-off host removes its copy.
    let cut = [&h1, &h2, &h3].iter().position(|h| h.name == last).unwrap();
    let other = live.iter().find(|h| h.name != last).unwrap();
    let run_state = |h: &Host| h.json(&["vm", "show", "web"])["run_state"].clone();
    net.link(cut, false);
    assert!(
        wait_until(T, || run_state(last_host) == "paused"),
        "{} fenced itself: {}\n{}",
        last,
        run_state(last_host),
        tail(&last_host.log())
    );
    let moved_on = || {
        let (host, generation, held) = host_of(other, "web");
        host.as_deref() == Some(other.name.as_str()) && generation == 4 && held
    };
    assert!(
        wait_until(T, moved_on),
        "{:?}\n{}",
        host_of(other, "web"),
        alive.log()
    );
    assert!(
        wait_until(T, || exec_ok(other, "web")),
        "{}",
        tail(&other.log())
    );
    assert_eq!(
        run_state(last_host),
        "paused",
        "the cut-off copy stays paused while the new one runs"
    );
    net.link(cut, true);
    assert!(
        wait_until(T, || !last_host
            .brood(&["vm", "show", "web"])
            .status
            .success()),
        "the cut-off host removed its copy:\n{}",
        tail(&last_host.log())
    );
    assert!(exec_ok(other, "web"));
    verify_all(&live);
    let out = other.brood(&["vm", "delete", "web", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop((h1, h2, h3));
    drop(pg);
    drop(net);
}
