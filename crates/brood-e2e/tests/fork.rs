//! Fork through broodd on real VMs: templates, children with their own
//! identities, shared memory, disk isolation, identity pools, restarts,
//! template trees, persistent and non-persistent children, the guest's own
//! fork point, and failing services.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use brood_e2e::{Bridge, Broodd, TestEnv, run, wait_until};
use serde_json::{Value, json};

fn exec(b: &Broodd, name: &str, cmd: &str) -> String {
    let (code, out, err) = b.exec(name, cmd);
    assert_eq!(code, 0, "{name}: {cmd}: {err}");
    out
}

fn pid(b: &Broodd, name: &str) -> u32 {
    u32::try_from(
        b.ok("GET", &format!("/v1/partitions/{name}"), None)["pid"]
            .as_u64()
            .unwrap(),
    )
    .unwrap()
}

fn status_kib(pid: u32, field: &str, file: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads `len` bytes at offset 0 of a qcow2 image (through its backing chain).
fn qcow2_head(path: &str, len: usize) -> String {
    let out = run(std::process::Command::new("qemu-io").args([
        "-r",
        "-f",
        "qcow2",
        "-c",
        &format!("read -v 0 {len}"),
        path,
    ]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fork(b: &Broodd, tpl: &str, body: &Value) -> Vec<Value> {
    let r = b.ok("POST", &format!("/v1/templates/{tpl}/fork"), Some(body));
    r["children"].as_array().unwrap().clone()
}

#[test]
fn eight_children_each_with_its_own_identity() {
    let env = TestEnv::new();
    let br = Bridge::new("f");
    let mut b = Broodd::start(&env, &["--memory-mib", "6144", "--vcpu-overcommit", "16"]);
    let parent = json!({
        "name": "web",
        "configs": {"default": {"memory_mib": 256, "disks": [{"name": "data", "size_gib": 1}], "nics": [{"network": br.name}]}},
        "start": true
    });
    b.ok("POST", "/v1/partitions", Some(&parent));
    exec(
        &b,
        "web",
        "echo from-the-template > /tmp/marker; printf template > /dev/vda; sync",
    );
    let parent_rss = status_kib(pid(&b, "web"), "VmRSS:", "status");
    let disk = b.ok("GET", "/v1/partitions/web", None)["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let values: Vec<String> = (0..10).map(|i| format!("domain-{i:02}")).collect();
    b.ok(
        "POST",
        "/v1/identity-pools",
        Some(&json!({"name": "doms", "kind": "identity", "values": values})),
    );
    b.ok("POST", "/v1/identity-pools", Some(&json!({"name": "net", "kind": "ipv4", "range": "10.88.0.10-10.88.0.30", "prefix": 24, "gateway": "10.88.0.1"})));
    let t = b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": "web", "warm": 2})),
    );
    assert!(t["state_bytes"].as_u64().unwrap() < 1 << 20, "{t}");
    assert_eq!(b.ok("GET", "/v1/partitions/web", None)["stage"], "template");

    let children = fork(
        &b,
        "web",
        &json!({"count": 8, "identity_pool": "doms", "ip_pool": "net", "values": {"role": "web"}}),
    );
    assert_eq!(children.len(), 8);
    let mut seen: [HashSet<String>; 6] = Default::default();
    for c in &children {
        assert_eq!(c["status"], "ready", "{c}");
        let name = c["name"].as_str().unwrap();
        let out = exec(
            &b,
            name,
            "hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | awk '{print $4}'; \
             cat /etc/machine-id; cat /etc/brood/identity; echo; head -c 1048576 /dev/urandom | md5sum; cat /tmp/marker",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        assert_eq!(lines[0], name);
        assert_eq!(lines[1], c["mac"].as_str().unwrap());
        assert_eq!(lines[2], c["ipv4"].as_str().unwrap());
        assert_eq!(lines[4], c["identity"].as_str().unwrap());
        assert_eq!(lines[6], "from-the-template");
        for (set, v) in seen.iter_mut().zip(&lines[..6]) {
            assert!(set.insert(v.to_string()), "{v} appears in two children");
        }
    }
    // Disks: each child writes its own overlay; nobody else sees it.
    for c in &children {
        let name = c["name"].as_str().unwrap();
        exec(&b, name, &format!("printf {name} > /dev/vda; sync"));
    }
    for c in &children {
        let name = c["name"].as_str().unwrap();
        let head = exec(&b, name, &format!("head -c {} /dev/vda", name.len()));
        assert_eq!(head, name);
    }
    assert!(
        qcow2_head(&disk, 8).contains("template"),
        "the template's disk changed: {}",
        qcow2_head(&disk, 8)
    );
    // The template's pages are shared.
    let pss: u64 = children
        .iter()
        .map(|c| status_kib(pid(&b, c["name"].as_str().unwrap()), "Pss:", "smaps_rollup"))
        .sum();
    eprintln!("parent RSS {parent_rss} KiB, 8 children's PSS {pss} KiB");
    assert!(
        pss * 2 < 8 * parent_rss,
        "children PSS {pss} KiB is not well under 8 x {parent_rss} KiB"
    );
    b.verify_ok();

    // Killing one child leaves the others running.
    let victim = pid(&b, "web-3");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(victim).unwrap()),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || b.ok(
        "GET",
        "/v1/partitions/web-3",
        None
    )["run_state"]
        == "crashed"));
    for c in children.iter().filter(|c| c["name"] != "web-3") {
        assert_eq!(
            exec(&b, c["name"].as_str().unwrap(), "echo alive"),
            "alive\n"
        );
    }

    // An exhausted pool: a clear error and no half-made child.
    let before = b.ok("GET", "/v1/partitions?limit=1000", None)["items"]
        .as_array()
        .unwrap()
        .len();
    let (s, e) = b.call(
        "POST",
        "/v1/templates/web/fork",
        Some(&json!({"count": 3, "identity_pool": "doms"})),
    );
    assert_eq!(s, 409, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("doms"),
        "{e}"
    );
    assert_eq!(
        b.ok("GET", "/v1/partitions?limit=1000", None)["items"]
            .as_array()
            .unwrap()
            .len(),
        before
    );
    assert_eq!(b.ok("GET", "/v1/identity-pools/doms", None)["free"], 2);
    b.verify_ok();

    // kill -9 of broodd keeps templates, children and pool assignments.
    let holders = b.ok("GET", "/v1/identity-pools/doms", None)["items"].clone();
    b.kill9();
    b.restart();
    assert_eq!(
        b.ok("GET", "/v1/identity-pools/doms", None)["items"],
        holders
    );
    assert_eq!(
        b.ok("GET", "/v1/templates/web", None)["children"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    assert_eq!(exec(&b, "web-5", "hostname"), "web-5\n");
    b.verify_ok();
    let more = fork(&b, "web", &json!({"count": 1, "identity_pool": "doms"}));
    assert_eq!(more[0]["status"], "ready");
    assert_eq!(
        exec(&b, more[0]["name"].as_str().unwrap(), "cat /tmp/marker"),
        "from-the-template\n"
    );

    // A template with children is not deleted without cascade.
    let (s, e) = b.call("DELETE", "/v1/templates/web", None);
    assert_eq!(s, 409, "{e}");
    b.ok("DELETE", "/v1/templates/web?cascade=true", None);
    assert_eq!(b.ok("GET", "/v1/identity-pools/doms", None)["free"], 10);
    assert!(
        b.ok("GET", "/v1/partitions", None)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    b.verify_ok();
    b.ok("DELETE", "/v1/identity-pools/doms", None);
    b.ok("DELETE", "/v1/identity-pools/net", None);
    drop(b);
    env.assert_clean();
}

#[test]
fn templates_form_a_tree_and_children_persist_or_refork() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "4096"]);
    let parent = json!({"name": "base", "configs": {"default": {"memory_mib": 256, "disks": [{"name": "d", "size_gib": 1}]}}, "start": true});
    b.ok("POST", "/v1/partitions", Some(&parent));
    b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": "base", "warm": 1})),
    );
    let p = &fork(&b, "base", &json!({"count": 1, "persistent": true}))[0];
    let n = &fork(&b, "base", &json!({"count": 1}))[0];
    let (p, n) = (
        p["name"].as_str().unwrap().to_string(),
        n["name"].as_str().unwrap().to_string(),
    );
    for c in [&p, &n] {
        exec(
            &b,
            c,
            "printf kept > /dev/vda; sync; echo in-memory > /tmp/state",
        );
        b.ok(
            "POST",
            &format!("/v1/partitions/{c}/stop"),
            Some(&json!({"timeout_s": 20})),
        );
        assert_eq!(
            b.ok("POST", &format!("/v1/partitions/{c}/start"), None)["run_state"],
            "running"
        );
    }
    // Every start forks afresh: memory is the template's again ...
    assert_eq!(
        exec(&b, &p, "cat /tmp/state 2>/dev/null || echo none"),
        "none\n"
    );
    // ... the persistent child keeps its overlay, the other does not.
    assert_eq!(exec(&b, &p, "head -c 4 /dev/vda"), "kept");
    assert_ne!(exec(&b, &n, "head -c 4 /dev/vda"), "kept");
    assert_eq!(exec(&b, &p, "hostname"), format!("{p}\n"));

    // A child becomes a template in turn; its children see its state.
    exec(&b, &p, "echo from-the-child > /tmp/layer");
    b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": p, "name": "layer2", "warm": 1})),
    );
    let t2 = b.ok("GET", "/v1/templates/layer2", None);
    assert_eq!(t2["parent"], "base");
    let g = &fork(&b, "layer2", &json!({"count": 2}))[0];
    let g = g["name"].as_str().unwrap();
    // Without waiting: the answer names the recorded children, still pending.
    let quick = fork(&b, "layer2", &json!({"count": 1, "wait": false}));
    assert_eq!(quick.len(), 1);
    assert_eq!(quick[0]["status"], "pending");
    let q = quick[0]["name"].as_str().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(30), || {
        b.ok("GET", &format!("/v1/partitions/{q}"), None)["fork"]["status"] == "ready"
    }));
    assert_eq!(
        exec(&b, g, "cat /tmp/layer; head -c 4 /dev/vda"),
        "from-the-child\nkept"
    );
    let (s, e) = b.call("DELETE", "/v1/templates/base", None);
    assert_eq!(s, 409);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("layer2"),
        "{e}"
    );
    b.verify_ok();
    b.ok("DELETE", "/v1/templates/base?cascade=true", None);
    assert!(
        b.ok("GET", "/v1/templates", None)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

fn service_image(env: &TestEnv) -> std::path::PathBuf {
    let dir = env.run_root().join("img");
    std::fs::create_dir_all(&dir).unwrap();
    let indep = dir.join("10-warm");
    std::fs::write(&indep, "#!/bin/sh\necho independent > /tmp/indep-ran\n").unwrap();
    let dep = dir.join("20-role");
    std::fs::write(
        &dep,
        "#!/bin/sh\necho \"$BROOD_HOSTNAME $BROOD_VALUE_ROLE\" > /tmp/dep-ran\n\
         if [ \"$BROOD_VALUE_FAIL\" = 1 ]; then echo boom-from-service; exit 3; fi\n\
         if [ \"$BROOD_VALUE_HANG\" = 1 ]; then sleep 600; fi\n",
    )
    .unwrap();
    for f in [&indep, &dep] {
        run(std::process::Command::new("chmod").arg("755").arg(f));
    }
    let out = dir.join("out");
    run(brood_e2e::TestEnv::brood(env)
        .args(["image", "build", "--out"])
        .arg(&out)
        .arg("--independent-service")
        .arg(&indep)
        .arg("--dependent-service")
        .arg(&dep));
    out
}

#[test]
fn the_guest_asks_to_be_forked_and_services_run_in_two_groups() {
    let env = TestEnv::new();
    let image = service_image(&env);
    let b = Broodd::start_with_image(&env, Path::new(&image), &["--memory-mib", "2048"]);
    b.ok(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "svc", "configs": {"default": {}}, "start": true})),
    );
    exec(&b, "svc", "brood-agent fork-point > /tmp/child.json 2>&1 &");
    assert!(wait_until(Duration::from_secs(60), || b.ok(
        "GET",
        "/v1/partitions/svc",
        None
    )["stage"]
        == "template"));
    let c = &fork(&b, "svc", &json!({"count": 1, "values": {"role": "db"}}))[0];
    assert_eq!(c["status"], "ready", "{c}");
    let name = c["name"].as_str().unwrap();
    assert_eq!(exec(&b, name, "cat /tmp/indep-ran"), "independent\n");
    assert_eq!(exec(&b, name, "cat /tmp/dep-ran"), format!("{name} db\n"));
    assert!(
        exec(&b, name, "sleep 0.5; cat /tmp/child.json")
            .contains(&format!("\"hostname\":\"{name}\""))
    );
    let bad = &fork(&b, "svc", &json!({"count": 1, "values": {"fail": "1"}}))[0];
    assert_eq!(bad["status"], "failed", "{bad}");
    let err = bad["error"].as_str().unwrap();
    assert!(
        err.contains("20-role") && err.contains("boom-from-service"),
        "{err}"
    );
    let shown = b.ok(
        "GET",
        &format!("/v1/partitions/{}", bad["name"].as_str().unwrap()),
        None,
    );
    assert_eq!(shown["fork"]["status"], "failed");
    // A failed child is stopped and holds nothing: exec says so at once.
    assert_eq!(shown["run_state"], "stopped", "{shown}");
    b.verify_ok();

    // A child whose identity step hangs does not hold its partition: kill
    // acts at once, not after the identity step's deadline.
    let hung = &fork(
        &b,
        "svc",
        &json!({"count": 1, "values": {"hang": "1"}, "wait": false}),
    )[0];
    let hung = hung["name"].as_str().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(60), || b.ok(
        "GET",
        &format!("/v1/partitions/{hung}"),
        None
    )["run_state"]
        == "running"));
    let (sock, token, path) = (b.socket(), b.token(), format!("/v1/partitions/{hung}/kill"));
    let kill =
        std::thread::spawn(move || brood_e2e::http(&sock, "POST", &path, Some(&token), None, None));
    // A hang guard, far below the identity step's 120 s deadline.
    assert!(
        wait_until(Duration::from_secs(30), || kill.is_finished()),
        "kill waited behind the hung identity step"
    );
    let (status, body) = kill.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let killed = b.ok("GET", &format!("/v1/partitions/{hung}"), None);
    assert_eq!(killed["run_state"], "stopped", "{killed}");
    assert!(wait_until(Duration::from_secs(30), || {
        b.ok("GET", "/v1/ledger/verify", None)["ok"] == true
    }));
    b.ok("DELETE", "/v1/templates/svc?cascade=true", None);
    drop(b);
    env.assert_clean();
}
