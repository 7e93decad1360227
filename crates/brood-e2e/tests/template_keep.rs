//! Issue 16 item 10 on real VMs: `brood template create NAME --from VM
//! --keep` makes a template of a running VM that goes on running. The
//! source keeps its hostname and its files, written before and after; a
//! child of the template sees what was written before only, in memory and
//! on disk; the template outlives its source; the ledger verifies clean
//! throughout. The README's block runs line by line, checked as it goes.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use brood_e2e::{Broodd, TestEnv};
use serde_json::{Value, json};

fn exec(b: &Broodd, name: &str, cmd: &str) -> String {
    let (code, out, err) = b.exec(name, cmd);
    assert_eq!(code, 0, "{name}: {cmd}: {err}\n{}", b.log());
    out.trim().to_string()
}

fn children(b: &Broodd, tpl: &str) -> Vec<String> {
    b.ok("GET", &format!("/v1/templates/{tpl}"), None)["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_template_of_a_running_vm_leaves_it_running_and_outlives_it() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048", "--disk-gib", "20"]);
    let lines = brood_e2e::readme_sh_lines("A template of a VM that keeps running");
    assert_eq!(lines.len(), 8, "{lines:?}");
    let mut hostname = String::new();
    let mut forks = 0;
    for line in &lines {
        if line.starts_with("brood template create") {
            hostname = exec(&b, "api", "hostname");
            assert!(!hostname.is_empty());
        }
        let o = b.sh(line, None);
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        if line.starts_with("brood template create") {
            assert!(
                stdout.contains("api runs on (paused ") && stdout.contains(" ms)"),
                "{stdout}"
            );
            let t = b.ok("GET", "/v1/templates/api-tpl", None);
            assert_eq!(t["memory_mib"], 256, "{t}");
            // The source runs on, as itself.
            let p = b.ok("GET", "/v1/partitions/api", None);
            assert_eq!(p["run_state"], "running", "{p}");
            assert_eq!(p["stage"], "operating", "{p}");
            b.verify_ok();
        }
        if line.starts_with("brood vm exec api 'hostname") {
            let mut l = stdout.lines();
            assert_eq!(l.next(), Some(hostname.as_str()), "{stdout}");
            assert_eq!(l.next(), Some("before"), "{stdout}");
            exec(&b, "api", "printf after! > /dev/vda; sync");
            assert_eq!(exec(&b, "api", "head -c 6 /dev/vda"), "after!");
        }
        if line.starts_with("brood fork api-tpl") {
            forks += 1;
            let kids = children(&b, "api-tpl");
            assert_eq!(kids.len(), forks, "{kids:?}");
            let kid = kids.last().unwrap();
            assert_eq!(exec(&b, kid, "cat /tmp/note"), "before");
            assert_eq!(
                exec(&b, kid, "test -e /tmp/later && echo yes || echo no"),
                "no"
            );
            assert_eq!(exec(&b, kid, "head -c 6 /dev/vda"), "before");
            let kid_host = exec(&b, kid, "hostname");
            assert_ne!(kid_host, hostname, "a child takes its own identity");
            if forks == 1 {
                // The source still has both files and its later disk write.
                assert_eq!(exec(&b, "api", "cat /tmp/note /tmp/later"), "before\nafter");
                assert_eq!(exec(&b, "api", "head -c 6 /dev/vda"), "after!");
                assert_eq!(exec(&b, "api", "hostname"), hostname);
            }
            b.verify_ok();
        }
        if line.starts_with("brood vm delete") {
            let (s, _) = b.call("GET", "/v1/partitions/api", None);
            assert_eq!(s, 404);
            b.verify_ok();
        }
    }
    assert_eq!(forks, 2);
    let (s, _) = b.call("GET", "/v1/templates/api-tpl", None);
    assert_eq!(s, 404);
    b.verify_ok();
}

#[test]
fn keep_refuses_what_it_cannot_do_and_leaves_nothing() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    let def = json!({"name": "k", "configs": {"default": {"memory_mib": 128}}, "start": true});
    b.ok("POST", "/v1/partitions", Some(&def));
    let refuse = |body: Value, status: u16, says: &str| {
        let (s, e) = b.call("POST", "/v1/templates", Some(&body));
        assert_eq!(s, status, "{body}: {e}");
        assert!(e.to_string().contains(says), "{body}: {e}");
    };
    refuse(json!({"vm": "k", "keep": true}), 400, "give the template");
    refuse(
        json!({"vm": "k", "keep": true, "name": "k"}),
        400,
        "another name",
    );
    refuse(
        json!({"vm": "k", "keep": true, "name": "k2", "persist": true}),
        400,
        "cannot be combined",
    );
    // The CLI says what --from means.
    let o = b
        .brood()
        .args([
            "template", "create", "t", "--from", "k", "--keep", "--name", "x",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("drop --name"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A template with --keep of a VM with no disks; then the VM still runs.
    let t = b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": "k", "keep": true, "name": "k-tpl", "warm": 0})),
    );
    assert!(t["downtime_ms"].as_u64().is_some(), "{t}");
    // The name is taken now.
    refuse(
        json!({"vm": "k", "keep": true, "name": "k-tpl"}),
        409,
        "taken",
    );
    assert_eq!(exec(&b, "k", "echo alive"), "alive");
    let child = b.ok(
        "POST",
        "/v1/templates/k-tpl/fork",
        Some(&json!({"count": 1})),
    )["children"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // A forked child cannot be kept: its memory is its template's.
    refuse(
        json!({"vm": child, "keep": true, "name": "c-tpl"}),
        409,
        "forked child",
    );
    b.verify_ok();
    b.ok("DELETE", "/v1/templates/k-tpl?cascade=true", None);
    b.ok("DELETE", "/v1/partitions/k?force=true", None);
    b.verify_ok();
}
