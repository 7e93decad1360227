//! broodd against real VMs: the partition life cycle through the API,
//! refused transitions, racing creates that never over-commit, crashes and
//! restart policies, bad requests, events, and kill -9 of broodd at many
//! moments with `verify` clean after every restart.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, http, wait_until};
use serde_json::{Value, json};

fn define(name: &str, memory: u64, start: bool) -> Value {
    json!({"name": name, "configs": {"default": {"memory_mib": memory}}, "start": start})
}

/// What broodd charges a VM for QEMU's own memory besides its guest's.
const QEMU_MIB: u64 = 128;

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

fn exec(b: &Broodd, name: &str, cmd: &str) -> (i64, String) {
    let (code, out, _) = b.exec(name, cmd);
    (code, out)
}

#[test]
fn partition_life_cycle_through_the_api() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let mut req = define("life", 256, false);
    req["configs"]["default"]["disks"] = json!([{"name": "data", "size_gib": 1}]);
    req["configs"]["big"] =
        json!({"memory_mib": 384, "vcpus": 2, "disks": [{"name": "data", "size_gib": 1}]});
    req["active_config"] = json!("default");
    let (s, p) = b.call("POST", "/v1/partitions", Some(&req));
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["stage"], "operating");
    assert_eq!(p["run_state"], "stopped");
    let disk = p["disks"][0]["path"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&disk).is_file());
    assert_eq!(holds(&b, "life")["disk_gib"], 1);
    assert_eq!(holds(&b, "life")["memory_mib"], 0);

    let p = b.ok("POST", "/v1/partitions/life/start", None);
    assert_eq!(p["run_state"], "running");
    assert!(p["pid"].as_u64().unwrap() > 0);
    assert_eq!(holds(&b, "life")["memory_mib"], 256 + QEMU_MIB);
    let (code, out) = exec(&b, "life", "cat /proc/version; ls /dev/vda; exit 3");
    assert_eq!(code, 3);
    assert!(out.contains("Debian") && out.contains("/dev/vda"), "{out}");

    assert_eq!(
        b.ok("POST", "/v1/partitions/life/pause", None)["run_state"],
        "paused"
    );
    assert_eq!(holds(&b, "life")["memory_mib"], 256 + QEMU_MIB);
    assert_eq!(
        b.ok("POST", "/v1/partitions/life/resume", None)["run_state"],
        "running"
    );
    // The next start uses another configuration; what it holds now does not change.
    assert_eq!(
        b.ok(
            "PUT",
            "/v1/partitions/life/config",
            Some(&json!({"config": "big"}))
        )["active_config"],
        "big"
    );
    assert_eq!(holds(&b, "life")["memory_mib"], 256 + QEMU_MIB);
    let p = b.ok(
        "POST",
        "/v1/partitions/life/stop",
        Some(&json!({"timeout_s": 20})),
    );
    assert_eq!(p["run_state"], "stopped");
    assert_eq!(p["pid"], Value::Null);
    assert_eq!(holds(&b, "life")["memory_mib"], 0);
    b.ok("POST", "/v1/partitions/life/start", None);
    assert_eq!(holds(&b, "life")["memory_mib"], 384 + QEMU_MIB);
    assert_eq!(holds(&b, "life")["vcpus"], 2);
    let (_, out) = exec(&b, "life", "nproc; echo kept > /tmp/kept");
    assert_eq!(out, "2\n");

    // Save: state to disk, memory back to available; restore: it carries on.
    let p = b.ok("POST", "/v1/partitions/life/save", None);
    assert_eq!(p["run_state"], "saved");
    assert_eq!(holds(&b, "life")["memory_mib"], 0);
    b.verify_ok();
    assert_eq!(
        b.ok("POST", "/v1/partitions/life/restore", None)["run_state"],
        "running"
    );
    assert_eq!(exec(&b, "life", "cat /tmp/kept").1, "kept\n");
    exec(&b, "life", "echo said-on-the-console > /dev/console");
    let console = b.ok("GET", "/v1/partitions/life/console", None);
    let text = console["text"].as_str().unwrap();
    // Earlier runs' output is kept, the current run's follows it.
    assert!(
        text.matches("brood-agent[1]: boot steps done").count() >= 2,
        "{console}"
    );
    assert!(text.contains("said-on-the-console"), "{console}");

    assert_eq!(
        b.ok("POST", "/v1/partitions/life/kill", None)["run_state"],
        "stopped"
    );
    b.verify_ok();
    let (s, _) = b.call("DELETE", "/v1/partitions/life", None);
    assert_eq!(s, 204);
    assert!(!std::path::Path::new(&disk).exists());
    let (s, _) = b.call("GET", "/v1/partitions/life", None);
    assert_eq!(s, 404);
    assert_eq!(
        holds(&b, "available")["disk_gib"],
        b.ok("GET", "/v1/ledger", None)["capacity"]["disk_gib"]
    );
    let log = b.ok("GET", "/v1/ledger/log?limit=1000", None);
    assert!(log["items"].as_array().unwrap().len() > 10);
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

#[test]
fn illegal_transitions_are_refused_with_clear_errors() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    b.ok("POST", "/v1/partitions", Some(&define("t", 256, false)));
    let refuse = |method: &str, path: &str, body: Option<Value>, code: &str, says: &str| {
        let (s, v) = b.call(method, path, body.as_ref());
        assert_eq!(s, 409, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{v}"
        );
    };
    refuse(
        "POST",
        "/v1/partitions/t/pause",
        None,
        "invalid_transition",
        "only a running partition",
    );
    refuse(
        "POST",
        "/v1/partitions/t/resume",
        None,
        "invalid_transition",
        "only a paused partition",
    );
    refuse(
        "POST",
        "/v1/partitions/t/restore",
        None,
        "invalid_transition",
        "not saved",
    );
    refuse(
        "POST",
        "/v1/partitions/t/save",
        None,
        "invalid_transition",
        "cannot save",
    );
    refuse(
        "POST",
        "/v1/partitions/t/stop",
        None,
        "invalid_transition",
        "already stopped",
    );
    refuse(
        "PUT",
        "/v1/partitions/t/stage",
        Some(json!({"stage": "construction"})),
        "invalid_transition",
        "operating",
    );
    b.ok(
        "PUT",
        "/v1/partitions/t/stage",
        Some(&json!({"stage": "disabled"})),
    );
    refuse(
        "POST",
        "/v1/partitions/t/start",
        None,
        "invalid_transition",
        "disabled",
    );
    b.ok(
        "PUT",
        "/v1/partitions/t/stage",
        Some(&json!({"stage": "operating"})),
    );
    b.ok("POST", "/v1/partitions/t/start", None);
    refuse(
        "POST",
        "/v1/partitions/t/start",
        None,
        "invalid_transition",
        "running",
    );
    refuse(
        "PUT",
        "/v1/partitions/t/stage",
        Some(json!({"stage": "decommissioned"})),
        "invalid_transition",
        "stop it",
    );
    refuse(
        "DELETE",
        "/v1/partitions/t",
        None,
        "invalid_transition",
        "stop it first",
    );
    let (s, v) = b.call("POST", "/v1/partitions", Some(&define("t", 256, false)));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    // More memory than the host has.
    let (s, v) = b.call("POST", "/v1/partitions", Some(&define("huge", 4096, true)));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("capacity_exceeded")),
        "{v}"
    );
    assert_eq!(
        b.call("GET", "/v1/partitions/huge", None).0,
        404,
        "a failed create leaves no definition"
    );
    b.ok(
        "PUT",
        "/v1/partitions/t/stage",
        Some(&json!({"stage": "manual"})),
    );
    b.ok("DELETE", "/v1/partitions/t?force=true", None);
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

#[test]
fn fifty_racing_creates_never_overcommit() {
    let env = TestEnv::new();
    // Room for exactly three 256 MiB VMs (each charged QEMU's own memory too).
    let b = Broodd::start(&env, &["--memory-mib", "1200"]);
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let b = &b;
                s.spawn(move || {
                    b.call(
                        "POST",
                        "/v1/partitions",
                        Some(&define(&format!("race{i:02}"), 256, true)),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|(s, _)| *s == 201).count();
    let full = results
        .iter()
        .filter(|(s, v)| *s == 409 && v["error"]["code"] == "capacity_exceeded")
        .count();
    assert_eq!(ok, 3, "{results:?}");
    assert_eq!(full, 47, "{results:?}");
    let l = b.ok("GET", "/v1/ledger", None);
    assert_eq!(
        l["owners"][0]["holds"]["memory_mib"],
        1200 - 3 * (256 + QEMU_MIB)
    );
    let listed = b.ok("GET", "/v1/partitions?limit=2", None);
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    let rest = b.ok(
        "GET",
        &format!("/v1/partitions?after={}", listed["next"].as_str().unwrap()),
        None,
    );
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    b.verify_ok();
    for (s, v) in &results {
        if *s == 201 {
            b.ok(
                "DELETE",
                &format!("/v1/partitions/{}?force=true", v["name"].as_str().unwrap()),
                None,
            );
        }
    }
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

#[test]
fn a_qemu_killed_from_outside_is_crashed_and_restarted_by_policy() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    b.ok("POST", "/v1/partitions", Some(&define("victim", 256, true)));
    let mut req = define("phoenix", 256, true);
    req["configs"]["default"]["policy"] =
        json!({"restart": "on_failure", "cpu_weight": 50, "memory_limit_mib": 512});
    let p = b.ok("POST", "/v1/partitions", Some(&req));
    let phoenix_pid = p["pid"].as_i64().unwrap();
    let victim_pid = b.ok("GET", "/v1/partitions/victim", None)["pid"]
        .as_i64()
        .unwrap();
    let kill = |pid: i64| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
    };
    kill(victim_pid);
    // How fast is measured outside the tests (about 30 ms here); this only
    // bounds the wait.
    assert!(wait_until(Duration::from_secs(30), || {
        b.ok("GET", "/v1/partitions/victim", None)["run_state"] == "crashed"
    }));
    assert_eq!(holds(&b, "victim")["memory_mib"], 0);
    b.verify_ok();

    kill(phoenix_pid);
    assert!(wait_until(Duration::from_secs(30), || {
        let p = b.ok("GET", "/v1/partitions/phoenix", None);
        p["run_state"] == "running" && p["pid"].as_i64() != Some(phoenix_pid)
    }));
    let p = b.ok("GET", "/v1/partitions/phoenix", None);
    assert_eq!(p["restart_count"], 1, "{p}");
    assert_eq!(exec(&b, "phoenix", "echo back").1, "back\n");
    b.verify_ok();
    b.ok("DELETE", "/v1/partitions/phoenix?force=true", None);
    b.ok("DELETE", "/v1/partitions/victim", None);
    drop(b);
    env.assert_clean();
}

/// The cgroup directories of partition `uuid`'s VMs (`brood/<uuid>-<nonce>`,
/// in each hierarchy this host has).
fn groups_of(uuid: &str) -> Vec<std::path::PathBuf> {
    [
        "/sys/fs/cgroup/brood",
        "/sys/fs/cgroup/memory/brood",
        "/sys/fs/cgroup/cpu/brood",
    ]
    .iter()
    .filter_map(|d| std::fs::read_dir(d).ok())
    .flat_map(|d| d.flatten())
    .map(|e| e.path())
    .filter(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{uuid}-")))
    })
    .collect()
}

/// A QEMU that ends while no broodd runs leaves its cgroups (nobody saw it
/// exit to remove them): the next broodd's reconcile removes them, and
/// leaves the groups of VMs still running.
#[test]
fn groups_of_vms_that_ended_while_broodd_was_down_are_removed() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "1024"]);
    let gone = b.ok("POST", "/v1/partitions", Some(&define("gone", 256, true)));
    let kept = b.ok("POST", "/v1/partitions", Some(&define("kept", 256, true)));
    let (gone_uuid, kept_uuid) = (
        gone["uuid"].as_str().unwrap().to_string(),
        kept["uuid"].as_str().unwrap().to_string(),
    );
    assert!(!groups_of(&gone_uuid).is_empty(), "the VM has no cgroup");
    b.kill9();
    let pid = i32::try_from(gone["pid"].as_i64().unwrap()).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
    }));
    assert!(
        !groups_of(&gone_uuid).is_empty(),
        "nothing was left to remove"
    );
    b.restart();
    assert_eq!(
        b.ok("GET", "/v1/partitions/gone", None)["run_state"],
        "crashed"
    );
    assert_eq!(groups_of(&gone_uuid), Vec::<std::path::PathBuf>::new());
    assert!(
        !groups_of(&kept_uuid).is_empty(),
        "a running VM lost its group"
    );
    assert_eq!(exec(&b, "kept", "echo up").1, "up\n");
    b.ok("DELETE", "/v1/partitions/kept?force=true", None);
    b.ok("DELETE", "/v1/partitions/gone?force=true", None);
    b.verify_ok();
    drop(b);
    env.assert_clean();
    assert_eq!(groups_of(&kept_uuid), Vec::<std::path::PathBuf>::new());
}

#[test]
fn bad_requests_get_4xx_json_never_5xx() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    b.ok("POST", "/v1/partitions", Some(&define("x", 256, false)));
    let sock = b.socket();
    let token = b.token();
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(2 << 20));
    // method, path, token, body, content type, expected status
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<String>,
        Option<&'a str>,
        u16,
    );
    let cases: Vec<Case> = vec![
        ("GET", "/v1/partitions", None, None, None, 401),
        ("GET", "/v1/partitions", Some("wrong"), None, None, 401),
        (
            "POST",
            "/v1/partitions",
            Some(&token),
            Some(r#"{"name":"y","configs":{},"bogus":1}"#.into()),
            None,
            400,
        ),
        (
            "POST",
            "/v1/partitions",
            Some(&token),
            Some(r#"{"name":5,"configs":{}}"#.into()),
            None,
            400,
        ),
        (
            "POST",
            "/v1/partitions",
            Some(&token),
            Some(r#"{"name":"y","configs":{"a":{"vcpus":"two"}}}"#.into()),
            None,
            400,
        ),
        (
            "POST",
            "/v1/partitions",
            Some(&token),
            Some(r#"{"name":"Bad Name","configs":{"a":{}}}"#.into()),
            None,
            400,
        ),
        (
            "POST",
            "/v1/partitions",
            Some(&token),
            Some("{not json".into()),
            None,
            400,
        ),
        (
            "POST",
            "/v1/partitions",
            Some(&token),
            Some(r#"{"name":"y"}"#.into()),
            Some("text/plain"),
            415,
        ),
        ("POST", "/v1/partitions", Some(&token), Some(big), None, 413),
        ("GET", "/v1/partitions/nope", Some(&token), None, None, 404),
        (
            "GET",
            "/v1/partitions/6f1c2a48-0b9e-4d2b-9a43-5a1f0e7c1b2d",
            Some(&token),
            None,
            None,
            404,
        ),
        (
            "POST",
            "/v1/partitions/nope/start",
            Some(&token),
            None,
            None,
            404,
        ),
        (
            "GET",
            "/v1/partitions?limit=0",
            Some(&token),
            None,
            None,
            400,
        ),
        (
            "GET",
            "/v1/partitions?limit=abc",
            Some(&token),
            None,
            None,
            400,
        ),
        (
            "GET",
            "/v1/partitions?bogus=1",
            Some(&token),
            None,
            None,
            400,
        ),
        ("GET", "/v1/nothing-here", Some(&token), None, None, 404),
        ("PATCH", "/v1/partitions", Some(&token), None, None, 405),
        (
            "PUT",
            "/v1/partitions/x/stage",
            Some(&token),
            Some(r#"{"stage":"flying"}"#.into()),
            None,
            400,
        ),
        (
            "PUT",
            "/v1/partitions/x/config",
            Some(&token),
            Some(r#"{"config":"nope"}"#.into()),
            None,
            400,
        ),
        (
            "POST",
            "/v1/partitions/x/exec",
            Some(&token),
            Some(r#"{"command":"true"}"#.into()),
            None,
            409,
        ),
        (
            "POST",
            "/v1/partitions/x/exec",
            Some(&token),
            Some(r#"{"stdin_base64":"!!"}"#.into()),
            None,
            400,
        ),
        (
            "POST",
            "/v1/partitions/x/stop",
            Some(&token),
            Some(r#"{"timeout_s":-1}"#.into()),
            None,
            400,
        ),
    ];
    for (method, path, tok, body, ctype, want) in cases {
        let (status, text) = http(&sock, method, path, tok, body.as_deref(), ctype);
        assert_eq!(
            status,
            want,
            "{method} {path}: {}",
            text.chars().take(300).collect::<String>()
        );
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{v}"
        );
    }
    let doc = b.ok("GET", "/v1/openapi.json", None);
    for p in [
        "/v1/partitions",
        "/v1/partitions/{name}/exec",
        "/v1/ledger/verify",
        "/v1/events",
    ] {
        assert!(doc["paths"][p].is_object(), "openapi lacks {p}");
    }
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

#[test]
fn events_stream_state_changes() {
    use std::io::{BufRead, BufReader, Write};
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    let mut s = std::os::unix::net::UnixStream::connect(b.socket()).unwrap();
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {}\r\n\r\n",
        b.token()
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let reader = BufReader::new(s.try_clone().unwrap());
    // Let the stream subscribe before the change.
    std::thread::sleep(Duration::from_millis(300));
    b.ok("POST", "/v1/partitions", Some(&define("ev", 256, false)));
    let mut seen = Vec::new();
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(data) = line.strip_prefix("data:") {
            let v: Value = serde_json::from_str(data.trim()).unwrap();
            seen.push(v.clone());
            if v["kind"]["name"] == "ev" && v["kind"]["stage"] == "operating" {
                break;
            }
        }
    }
    assert!(
        seen.iter().any(|v| v["kind"]["type"] == "partition"),
        "{seen:?}"
    );
    drop(b);
    env.assert_clean();
}

#[test]
fn kill_9_of_broodd_at_twenty_moments_loses_nothing() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "768"]);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..20 {
        let sock = b.socket();
        let token = b.token();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = {
            let stop = stop.clone();
            let seed = next();
            std::thread::spawn(move || {
                let mut i = seed;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let name = format!("k{}", (i >> 33) % 3);
                    let body = define(&name, 256, false).to_string();
                    let (m, p, body): (&str, String, Option<String>) = match (i >> 40) % 5 {
                        0 => ("POST", "/v1/partitions".into(), Some(body)),
                        1 => ("POST", format!("/v1/partitions/{name}/start"), None),
                        2 => (
                            "POST",
                            format!("/v1/partitions/{name}/stop"),
                            Some(r#"{"timeout_s":5}"#.into()),
                        ),
                        3 => ("DELETE", format!("/v1/partitions/{name}?force=true"), None),
                        _ => ("POST", format!("/v1/partitions/{name}/kill"), None),
                    };
                    if std::os::unix::net::UnixStream::connect(&sock).is_err() {
                        return;
                    }
                    let (status, _) = http(&sock, m, &p, Some(&token), body.as_deref(), None);
                    if status == 0 || status >= 500 && status != 502 {
                        // 0: broodd died mid-request, which is the point.
                        if status >= 500 {
                            panic!("round {round}: {m} {p} -> {status}");
                        }
                        return;
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200 + next() % 2500));
        b.kill9();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        worker.join().expect("worker");
        b.restart();
        let (status, v) = b.call("GET", "/v1/ledger/verify", None);
        let alive = b.alive();
        assert_eq!(
            status,
            200,
            "round {round}: verify -> {status}: {v} (broodd alive: {alive})\n{}",
            b.log()
        );
        assert_eq!(v["ok"], true, "round {round}: {v}\n{}", b.log());
    }
    // Clean up whatever the last round left.
    let list = b.ok("GET", "/v1/partitions", None);
    for p in list["items"].as_array().unwrap() {
        b.ok(
            "DELETE",
            &format!("/v1/partitions/{}?force=true", p["name"].as_str().unwrap()),
            None,
        );
    }
    b.verify_ok();
    drop(b);
    env.assert_clean();
}
