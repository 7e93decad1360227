#![allow(clippy::tests_outside_test_module)]
//! Runs the real `brood` binary against a real broodd (a `TestApp` on the
//! fake engine, served on a unix socket): the commands' table and `-o json`
//! output and the exit codes of refused operations, checked against what
//! broodd's API says afterwards.

use std::process::Output;

use brood_testkit::{Identity, Served, TestApp};
use serde_json::Value;

/// Runs `brood --host SOCKET --token T ARGS...`.
async fn brood(s: &Served, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_brood"))
        .arg("--data-dir")
        .arg(&s.data)
        .arg("--host")
        .arg(&s.socket)
        .arg("--token")
        .arg(&s.token)
        .args(args)
        .env_remove("BROOD_HOST")
        .env_remove("BROOD_TOKEN")
        .env_remove("BROOD_DATA_DIR")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run brood")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs brood and requires exit 0; returns stdout.
async fn ok(s: &Served, args: &[&str]) -> String {
    let o = brood(s, args).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "brood {args:?}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs brood with `-o json` and parses stdout.
async fn json(s: &Served, args: &[&str]) -> Value {
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    let out = ok(s, &a).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("brood {args:?}: {e}: {out}"))
}

/// Runs brood, requires it to be refused with exit 125 and `code` in its message.
async fn refused(s: &Served, args: &[&str], code: &str) -> String {
    let o = brood(s, args).await;
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(125),
        "brood {args:?}: {}{err}",
        stdout(&o)
    );
    assert!(err.starts_with("brood: error: "), "{err}");
    assert!(err.contains(code), "brood {args:?}: wanted {code}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

/// The identity-pool command and the warm-children flag.
async fn names(_s: &Served) -> (&'static str, &'static str) {
    ("identity-pool", "--warm")
}

#[tokio::test]
async fn vm_commands_change_what_broodd_holds() {
    let app = TestApp::new().await;
    let s = app.serve_unix().await;
    let out = ok(
        &s,
        &["vm", "create", "web", "--memory", "512", "--vcpus", "2"],
    )
    .await;
    assert!(out.contains("web"), "{out}");
    assert_eq!(app.run_state("web").await, "running");
    // Its guest memory and QEMU's own (host::config::QEMU_OVERHEAD_MIB).
    assert_eq!(app.holdings().await["web"]["memory_mib"], 512 + 128);
    ok(&s, &["vm", "define", "idle"]).await;

    let table = ok(&s, &["vm", "list"]).await;
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for col in ["NAME", "STAGE", "STATE", "VCPUS", "MEMORY", "PID"] {
        assert!(header.contains(col), "{table}");
    }
    let web = table
        .lines()
        .find(|l| l.starts_with("web "))
        .expect("a web row");
    let pid = app.vm("web").await.pid().to_string();
    for cell in ["operating", "running", "2", "512 MiB", pid.as_str()] {
        assert!(web.contains(cell), "{cell} in {web:?}");
    }
    let idle = table
        .lines()
        .find(|l| l.starts_with("idle "))
        .expect("an idle row");
    assert!(
        idle.contains("stopped") && idle.trim_end().ends_with('-'),
        "{idle:?}"
    );

    let list = json(&s, &["vm", "list"]).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let show = json(&s, &["vm", "show", "web"]).await;
    assert_eq!(show["run_state"], "running");
    assert_eq!(show["uuid"].as_str().unwrap(), app.uuid_of("web").await);
    let text = ok(&s, &["vm", "show", "web"]).await;
    assert!(text.contains("state") && text.contains("running"), "{text}");

    // exec prints the output and exits with the command's code.
    let o = brood(&s, &["vm", "exec", "web", "echo hello"]).await;
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "hello\n"));
    let o = brood(&s, &["vm", "exec", "web", "exit 7"]).await;
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));

    // Refusals: exit 125, one line naming the code, nothing changed.
    refused(&s, &["vm", "start", "web"], "invalid_transition").await;
    refused(&s, &["vm", "pause", "idle"], "invalid_transition").await;
    refused(&s, &["vm", "delete", "web"], "invalid_transition").await;
    refused(&s, &["vm", "show", "nope"], "not_found").await;
    refused(&s, &["vm", "create", "web"], "conflict").await;
    refused(
        &s,
        &["vm", "create", "huge", "--memory", "4096"],
        "capacity_exceeded",
    )
    .await;
    assert_eq!(app.run_state("web").await, "running");
    assert!(
        !app.holdings().await.contains_key("huge"),
        "a refused create leaves nothing"
    );

    ok(&s, &["vm", "pause", "web"]).await;
    assert_eq!(app.run_state("web").await, "paused");
    ok(&s, &["vm", "resume", "web"]).await;
    ok(&s, &["vm", "save", "web"]).await;
    assert_eq!(app.run_state("web").await, "saved");
    assert_eq!(app.holdings().await["web"]["memory_mib"], 0);
    ok(&s, &["vm", "restore", "web"]).await;
    assert_eq!(app.run_state("web").await, "running");
    let stopped = json(&s, &["vm", "stop", "web"]).await;
    assert_eq!(stopped["run_state"], "stopped");
    assert_eq!(app.holdings().await["web"]["memory_mib"], 0);
    let out = ok(&s, &["vm", "delete", "web"]).await;
    assert_eq!(out, "deleted web\n");
    refused(&s, &["vm", "show", "web"], "not_found").await;

    assert_eq!(ok(&s, &["ledger", "verify"]).await, "ok\n");
    let v = json(&s, &["ledger", "verify"]).await;
    assert_eq!(v["ok"], true);
    app.assert_verified().await;
}

#[tokio::test]
async fn templates_forks_and_pools_through_the_cli() {
    let app = TestApp::new().await;
    let s = app.serve_unix().await;
    let (pool, warm) = names(&s).await;
    ok(&s, &["vm", "create", "web", "--nic", "user"]).await;
    ok(
        &s,
        &[
            pool,
            "create",
            "doms",
            "--identity",
            "dom-a",
            "--identity",
            "dom-b",
        ],
    )
    .await;
    ok(
        &s,
        &[
            pool,
            "create",
            "net",
            "--ipv4",
            "10.0.0.10-10.0.0.20",
            "--gateway",
            "10.0.0.1",
        ],
    )
    .await;
    let t = json(&s, &["template", "create", "web", warm, "0"]).await;
    assert_eq!(
        (t["name"].clone(), t["warm"].clone()),
        ("web".into(), 0.into())
    );
    let list = ok(&s, &["template", "list"]).await;
    assert!(list.lines().any(|l| l.starts_with("web")), "{list}");

    let out = ok(
        &s,
        &[
            "fork",
            "web",
            "-n",
            "1",
            "--identity-pool",
            "doms",
            "--ip-pool",
            "net",
        ],
    )
    .await;
    assert_eq!(out, "web-0\n");
    let kids = json(
        &s,
        &["fork", "web", "--identity-pool", "doms", "--set", "role=db"],
    )
    .await;
    let kids = kids.as_array().expect("the children");
    assert_eq!(kids.len(), 1);
    assert_eq!(kids[0]["name"], "web-1");
    assert_eq!(kids[0]["status"], "ready");
    assert_eq!(
        app.vm("web-1").await.child_config().unwrap().values,
        vec![("role".to_string(), "db".to_string())]
    );
    let o = brood(&s, &["vm", "exec", "web-0", "hostname"]).await;
    assert_eq!(stdout(&o), "web-0\n");

    let doms = json(&s, &[pool, "show", "doms"]).await;
    assert_eq!(doms["free"], 0);
    let shown = ok(&s, &[pool, "show", "doms"]).await;
    assert!(
        shown.contains("web-0") && shown.contains("web-1"),
        "{shown}"
    );
    // An exhausted pool: refused, and no child made.
    refused(
        &s,
        &["fork", "web", "--identity-pool", "doms"],
        "capacity_exceeded",
    )
    .await;
    let names: Vec<String> = json(&s, &["vm", "list"]).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["web", "web-0", "web-1"]);

    // A child whose identity step fails: printed, exit 1.
    app.fake().set_identity(Identity::Fail("boom".into()));
    let o = brood(&s, &["fork", "web"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("child web-2 failed") && stderr(&o).contains("boom"));
    app.fake().set_identity(Identity::Apply);

    refused(&s, &[pool, "delete", "doms"], "conflict").await;
    refused(&s, &["template", "delete", "web"], "invalid_transition").await;
    ok(&s, &["template", "delete", "web", "--cascade"]).await;
    ok(&s, &[pool, "delete", "doms"]).await;
    let h = app.holdings().await;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(ok(&s, &["ledger", "verify"]).await, "ok\n");
}

#[tokio::test]
async fn a_broken_ledger_makes_verify_exit_1() {
    let app = TestApp::new().await;
    let s = app.serve_unix().await;
    ok(&s, &["vm", "create", "a"]).await;
    // A VM the ledger does not know is a problem verify reports.
    let mut spec = brood_engine::VmSpec::new("stray", app.paths().kernel());
    spec.initrd = Some(app.paths().initrd());
    let _stray = brood_engine::Engine::boot(app.fake(), &spec).await.unwrap();
    let o = brood(&s, &["ledger", "verify"]).await;
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("orphan_qemu"), "{}", stdout(&o));
    let host = json(&s, &["host", "show"]).await;
    assert_eq!(host["accel"], "tcg");
    assert_eq!(host["capacity"]["memory_mib"], 2048);
}
