#![allow(clippy::tests_outside_test_module)]
//! A cluster of three hosts on one machine (issue 15): each a broodd in its
//! own network namespace with its own data and run directories, joined by
//! a bridge to a PostgreSQL the test starts on the bridge's address.
//! Placement by zone and domain on real VMs, a VM whose required zone no
//! host provides refused with the reason, heartbeats making a killed host
//! suspect then failed, PostgreSQL restarted in the middle of a placement
//! with nothing lost, and `brood ledger verify` clean on every host after
//! each step. At most two VMs run at once.

use std::process::Command;
use std::time::Duration;

use brood_cluster::testing::TempPostgres;
use brood_e2e::cluster::{Host, Net, TWO_VMS, placement, states, stderr, tail, verify_all};
use brood_e2e::{TestEnv, brood_bin, wait_until};
use serde_json::Value;

#[test]
fn three_hosts_place_by_zone_and_domain_survive_a_postgres_restart_and_see_a_host_fail() {
    let _two = TWO_VMS.blocking_lock();
    let net = Net::new(3);
    let pg = TempPostgres::start_on(&net.gateway).expect("start PostgreSQL");
    let url = pg.url();
    let h1 = Host::start(
        &net.namespaces[0],
        "h1",
        &url,
        &["storage:shared", "network:front"],
    );
    let h2 = Host::start(
        &net.namespaces[1],
        "h2",
        &url,
        &["storage:shared", "processor:x86-v3"],
    );
    let mut h3 = Host::start(&net.namespaces[2], "h3", &url, &["storage:local3"]);
    let all = |s: &str| {
        vec![
            ("h1".to_owned(), s.to_owned()),
            ("h2".to_owned(), s.to_owned()),
            ("h3".to_owned(), s.to_owned()),
        ]
    };
    assert!(
        wait_until(Duration::from_secs(30), || states(&h1) == all("active")),
        "{:?}",
        states(&h1)
    );
    // Every host sees the same catalog.
    assert_eq!(states(&h3), all("active"));
    let info = h2.json(&["host", "show", "h2"]);
    assert_eq!(
        info["zones"],
        serde_json::json!(["processor:x86-v3", "storage:shared"])
    );
    assert_eq!(info["capacity"]["memory_mib"], 2048);
    // The local host is still what `brood host show` shows.
    let local = h2.json(&["host", "show"]);
    assert!(local["hostname"].is_string(), "{local}");

    // By zone: only h1 has network:front.
    let p = h3.json(&[
        "host",
        "place",
        "web",
        "--memory",
        "256M",
        "--require",
        "network:front",
    ]);
    assert_eq!(p["host"], "h1", "{p}");
    // By domain: db may only use h2.
    h1.json(&[
        "host",
        "domain",
        "set",
        "db",
        "--importance",
        "mission-critical",
        "--available",
        "h2",
    ]);
    let p = h1.json(&[
        "host", "place", "dbvm", "--domain", "db", "--memory", "256M",
    ]);
    assert_eq!(p["host"], "h2", "{p}");
    // One matching processor zone suffices; none listed means any host.
    let p = h1.json(&[
        "host",
        "place",
        "calc",
        "--memory",
        "128M",
        "--require",
        "processor:x86-v4",
        "--require",
        "processor:x86-v3",
    ]);
    assert_eq!(p["host"], "h2", "{p}");
    // Refused with the reason: no host provides storage:nowhere.
    let out = h1.brood(&[
        "host",
        "place",
        "lost",
        "--memory",
        "128M",
        "--require",
        "storage:nowhere",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("storage:nowhere"), "{}", stderr(&out));
    assert!(
        placement(&h1, "lost").is_null(),
        "a refused placement leaves nothing"
    );
    let out = h1.brood(&["host", "show", "nope"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));

    // The VMs, created where they were placed, are adopted by the catalog.
    for (h, name) in [(&h1, "web"), (&h2, "dbvm")] {
        h.json(&["vm", "create", name, "--memory", "256", "--vcpus", "1"]);
    }
    assert!(wait_until(Duration::from_secs(30), || {
        placement(&h1, "web")["held"] == true && placement(&h1, "dbvm")["held"] == true
    }));
    verify_all(&[&h1, &h2, &h3]);

    // Jobs live in the catalog: each host's broodd lists its own, and the
    // rows are PostgreSQL's.
    assert_eq!(h1.json(&["host", "show"])["job_store"], "postgresql");
    let targets = |h: &Host| -> Vec<(String, String)> {
        h.json(&["job", "list"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["target"].as_str().unwrap().to_owned(),
                    j["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(targets(&h1), [("web".into(), "succeeded".into())]);
    assert_eq!(targets(&h2), [("dbvm".into(), "succeeded".into())]);
    let rows = pg
        .query("SELECT host, kind, target, state FROM job ORDER BY id")
        .unwrap();
    assert_eq!(
        rows,
        "h1|partition.define.start|web|succeeded\nh2|partition.define.start|dbvm|succeeded\n"
    );

    // PostgreSQL restarts in the middle of a placement: the placement waits
    // for it, commits once, and the heartbeats come back. It stays away
    // long enough for h1 and h2 to fence themselves (no catalog for
    // --failed-after less a heartbeat): they pause their VMs, and resume
    // them once the catalog answers and still places them there.
    let run_state = |h: &Host, vm: &str| h.json(&["vm", "show", vm])["run_state"].clone();
    pg.stop_server().unwrap();
    let placing = {
        let data = h3.data.clone();
        std::thread::spawn(move || {
            Command::new(brood_bin())
                .env("BROOD_DATA_DIR", &data)
                .args(["host", "place", "late", "--memory", "128M", "-o", "json"])
                .output()
                .unwrap()
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || {
            run_state(&h1, "web") == "paused" && run_state(&h2, "dbvm") == "paused"
        }),
        "self-fenced: web {}, dbvm {}\n{}",
        run_state(&h1, "web"),
        run_state(&h2, "dbvm"),
        tail(&h1.log())
    );
    assert!(
        !placing.is_finished(),
        "the placement waits for the catalog"
    );
    pg.start_server().unwrap();
    let out = placing.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let late: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(late["generation"], 1);
    assert!(
        wait_until(Duration::from_secs(30), || {
            run_state(&h1, "web") == "running" && run_state(&h2, "dbvm") == "running"
        }),
        "resumed once the catalog answered: web {}, dbvm {}\n{}",
        run_state(&h1, "web"),
        run_state(&h2, "dbvm"),
        tail(&h1.log())
    );
    assert!(
        h1.log().contains("self-fence ended: resumed"),
        "{}",
        tail(&h1.log())
    );
    assert!(
        wait_until(Duration::from_secs(30), || states(&h2) == all("active")),
        "{:?}",
        states(&h2)
    );
    let names: Vec<String> = h2.json(&["host", "placements"])["placements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["calc", "dbvm", "late", "web"]);
    verify_all(&[&h1, &h2, &h3]);

    // A drained host takes nothing new.
    h1.json(&["host", "drain", "h1"]);
    let p = h2.json(&[
        "host",
        "place",
        "more",
        "--memory",
        "128M",
        "--require",
        "storage:shared",
    ]);
    assert_eq!(p["host"], "h2", "{p}");
    h1.json(&["host", "drain", "h1", "--undo"]);

    // A workflow stored through one host runs on another (definitions are
    // the cluster's); kill -9 of h3's broodd while it runs: the next
    // broodd finds the job in the catalog and fails it, and the others see
    // h3 suspect, then failed.
    let wf = h1.data.join("nap.yaml");
    std::fs::write(
        &wf,
        "name: nap\ntasks:\n  - id: nap\n    step: host_script\n    params: {script: 'sleep 60'}\n",
    )
    .unwrap();
    h1.json(&["workflow", "create", "--file", wf.to_str().unwrap()]);
    let job = h3.json(&["workflow", "run", "nap", "--no-wait"]);
    let id = job["id"].as_u64().unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || {
            pg.query(&format!(
                "SELECT count(*) FROM job_event WHERE job = {id} AND kind = 'task' \
                 AND body->>'event' = 'started'"
            ))
            .is_ok_and(|n| n.trim() == "1")
        }),
        "the workflow began its task"
    );
    h3.kill9();
    assert!(wait_until(Duration::from_secs(30), || {
        states(&h1).contains(&("h3".to_owned(), "suspect".to_owned()))
    }));
    assert!(wait_until(Duration::from_secs(30), || {
        states(&h1).contains(&("h3".to_owned(), "failed".to_owned()))
    }));
    // A failed host gets no placements.
    let p = h1.json(&["host", "place", "after", "--memory", "128M"]);
    assert_ne!(p["host"], "h3", "{p}");
    // Back: it registers again and is active.
    h3.spawn();
    assert!(
        wait_until(Duration::from_secs(30), || states(&h1) == all("active")),
        "{:?}",
        states(&h1)
    );
    // `job wait` exits non-zero for a failed job; its JSON is the job.
    let out = h3.brood(&["job", "wait", &id.to_string(), "-o", "json"]);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(
        pg.query(&format!("SELECT host, state FROM job WHERE id = {id}"))
            .unwrap(),
        "h3|failed\n"
    );
    assert!(
        h1.json(&["job", "list"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["id"] != id),
        "h1 does not list h3's job"
    );
    // A host with placements is not removed; one without is.
    let out = h1.brood(&["host", "remove", "h1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("drain it"), "{}", stderr(&out));
    verify_all(&[&h1, &h2, &h3]);

    for (h, name) in [(&h1, "web"), (&h2, "dbvm")] {
        let out = h.brood(&["vm", "delete", name, "--force"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(wait_until(Duration::from_secs(30), || {
        placement(&h1, "web").is_null() && placement(&h1, "dbvm").is_null()
    }));
    verify_all(&[&h1, &h2, &h3]);

    // One command on any host: h3 asks, placement chooses h1 (the only
    // host with network:front), and h1 creates and starts the VM.
    let p = h3.json(&[
        "vm",
        "create",
        "far",
        "--memory",
        "256",
        "--vcpus",
        "1",
        "--place",
        "--require",
        "network:front",
    ]);
    assert_eq!(
        (p["host"].clone(), p["held"].clone()),
        ("h1".into(), true.into()),
        "{p}"
    );
    assert_eq!(h1.json(&["vm", "show", "far"])["run_state"], "running");
    let out = h1.brood(&["vm", "exec", "far", "echo here"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "here\n",
        "{}",
        stderr(&out)
    );
    assert!(
        !h3.brood(&["vm", "show", "far"]).status.success(),
        "not on h3"
    );
    // Refused before anything is placed: a zone nobody has, a bad
    // definition; and the same name again.
    let out = h3.brood(&[
        "vm",
        "create",
        "lost2",
        "--place",
        "--require",
        "storage:nowhere",
    ]);
    assert!(stderr(&out).contains("storage:nowhere"), "{}", stderr(&out));
    let out = h3.brood(&["vm", "create", "bad", "--vcpus", "0", "--place"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("vcpus"), "{}", stderr(&out));
    // A definition only the chosen host can refuse (a bridge it does not
    // have): it withdraws the placement, and the command says so.
    let out = h3.brood(&[
        "vm",
        "create",
        "nobr",
        "--place",
        "--require",
        "network:front",
        "--nic",
        "nosuchbr0",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("withdrew"), "{}", stderr(&out));
    for n in ["lost2", "bad", "nobr"] {
        assert!(placement(&h1, n).is_null(), "{n} left a placement");
    }
    let out = h2.brood(&["vm", "create", "far", "--place"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pick another name"),
        "{}",
        stderr(&out)
    );
    let out = h1.brood(&["vm", "delete", "far", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(wait_until(Duration::from_secs(30), || placement(
        &h1, "far"
    )
    .is_null()));
    verify_all(&[&h1, &h2, &h3]);
    drop((h1, h2, h3));
    drop(pg);
    drop(net);
}

#[test]
fn a_single_host_needs_no_catalog_and_says_so() {
    let env = TestEnv::new();
    let b = brood_e2e::Broodd::start(&env, &["--memory-mib", "1024"]);
    let out = b.brood().args(["host", "list"]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--catalog"), "{err}");
    let out = b.brood().args(["host", "show"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    b.verify_ok();
}

/// The shell lines of README.md's "A cluster of hosts" section.
fn readme_lines() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let start = text.find("\n## A cluster of hosts\n").expect("the section");
    let rest = &text[start + 1..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    let mut lines = Vec::new();
    let mut in_sh = false;
    for l in section.lines() {
        match (in_sh, l.trim()) {
            (false, "```sh") => in_sh = true,
            (true, "```") => in_sh = false,
            (true, l) if !l.is_empty() => lines.push(l.to_owned()),
            _ => {}
        }
    }
    lines
}

#[test]
fn the_readme_cluster_examples_run() {
    let lines = readme_lines();
    assert!(lines.len() >= 8, "{lines:?}");
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let env = TestEnv::new();
    // The first line starts broodd: the test's own, with the line's flags.
    let first = lines[0].strip_suffix('&').expect("broodd ... &").trim();
    let flags: Vec<String> = first
        .split_whitespace()
        .skip(1)
        .map(|w| w.replace("\"$CATALOG\"", &pg.url()))
        .collect();
    assert!(first.starts_with("broodd "), "{first}");
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--memory-mib", "2048"]);
    let b = brood_e2e::Broodd::start(&env, &extra);
    let bin = brood_bin();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for line in &lines[1..] {
        let out = Command::new("sh")
            .args(["-c", line])
            .env("PATH", &path)
            .env("BROOD_DATA_DIR", &b.data)
            .env("CATALOG", pg.url())
            .env_remove("BROOD_HOST")
            .env_remove("BROOD_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README line {line:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out),
            tail(&b.log())
        );
    }
    b.verify_ok();
}

async fn guest_sh(vm: &brood_engine::Vm, cmd: &str) -> String {
    let out = vm
        .agent()
        .unwrap()
        .exec(&brood_proto::ExecRequest::shell(cmd))
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(0), "{cmd}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_live_migrates_a_vm_over_tcp_and_a_failed_one_runs_on() {
    let _two = TWO_VMS.lock().await;
    let env = TestEnv::new();
    let engine = env.engine();
    let t = Duration::from_secs(120);
    let src = engine.boot(&env.spec("migsrc")).await.unwrap();
    src.wait_ready(Duration::from_secs(60)).await.unwrap();
    guest_sh(&src, "echo before > /tmp/mark").await;

    // Nobody listening: the migration fails and the source runs on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let e = engine
        .migrate_out(&src, nowhere, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&nowhere.to_string()), "{e}");
    assert_eq!(guest_sh(&src, "cat /tmp/mark").await, "before\n");

    // A real one: the target waits with its memory reserved, the source
    // pre-copies over TCP, the target resumes with the guest's memory.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut inc = engine.prepare_incoming(&env.spec("migdst")).await.unwrap();
    let (accepted, sent) = tokio::join!(
        engine.accept_incoming(&mut inc, &listener, t),
        engine.migrate_out(&src, addr, t)
    );
    accepted.unwrap();
    let stats = sent.unwrap();
    let dst = engine.finish_incoming(inc, t).await.unwrap();
    src.kill().await.unwrap();
    drop(src);
    assert_eq!(guest_sh(&dst, "cat /tmp/mark").await, "before\n");
    assert!(
        stats.total_ms > 0 && stats.downtime_ms <= stats.total_ms,
        "{stats:?}"
    );
    println!("live migration: {stats:?}");
    dst.kill().await.unwrap();
    drop(dst);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_live_migrates_a_forked_child_whole() {
    let _two = TWO_VMS.lock().await;
    let env = TestEnv::new();
    let engine = env.engine();
    let t = Duration::from_secs(120);
    let parent = engine.boot(&env.spec("migparent")).await.unwrap();
    parent.wait_ready(Duration::from_secs(60)).await.unwrap();
    guest_sh(&parent, "echo from-the-template > /tmp/inherited").await;
    let (seq, _) = parent
        .agent()
        .unwrap()
        .prepare_fork(Duration::from_secs(30))
        .await
        .unwrap();
    let tpl = engine
        .save_template(&parent, &env.run_root().join("tpl"))
        .await
        .unwrap();
    drop(parent);
    let spec = tpl.child_spec("migchild", Vec::new()).unwrap();
    let inc = engine.prepare_child(&tpl, &spec).await.unwrap();
    let child = engine.start_child(&tpl, inc).await.unwrap();
    let config = brood_proto::ChildConfig {
        index: 0,
        hostname: "child-0".into(),
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
    guest_sh(&child, "echo private > /tmp/mine").await;

    // The child's pages are partly the template's (mapped private) and
    // partly its own; x-ignore-shared is off for the stream, so both travel
    // and the target has plain memory of its own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let target_spec = tpl.child_spec("migchild2", Vec::new()).unwrap();
    let mut inc = engine.prepare_incoming(&target_spec).await.unwrap();
    let (accepted, sent) = tokio::join!(
        engine.accept_incoming(&mut inc, &listener, t),
        engine.migrate_out(&child, addr, t)
    );
    accepted.unwrap();
    sent.unwrap();
    let moved = engine.finish_incoming(inc, t).await.unwrap();
    child.kill().await.unwrap();
    drop(child);
    assert_eq!(
        guest_sh(&moved, "cat /tmp/inherited").await,
        "from-the-template\n"
    );
    assert_eq!(guest_sh(&moved, "cat /tmp/mine").await, "private\n");
    assert_eq!(guest_sh(&moved, "hostname").await, "child-0\n");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", moved.pid())).unwrap();
    let tpl_mem = tpl.mem_path();
    assert!(
        !maps.contains(&*tpl_mem.to_string_lossy()),
        "the migrated child still maps {}",
        tpl_mem.display()
    );
    moved.kill().await.unwrap();
    drop(moved);
    drop(tpl);
    env.assert_clean();
}
