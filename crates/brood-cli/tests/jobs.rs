#![allow(clippy::tests_outside_test_module)]
//! `brood job` and `brood workflow` against a real broodd on the fake
//! engine: `--no-wait` answers with a job, `job wait` exits by its outcome,
//! workflows are stored, versioned, run with `--set` and deleted, and the
//! README's examples (a workflow; an action bound to a template) run.

use std::process::Output;

use brood_testkit::{Served, TestApp};
use serde_json::Value;

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
        .env_remove("BROOD_UNIT")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run brood")
}

async fn json(s: &Served, args: &[&str]) -> Value {
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    let o = brood(s, &a).await;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "brood {args:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("brood {args:?}: {e}: {out}"))
}

#[tokio::test]
async fn no_wait_answers_with_a_job_that_job_wait_follows() {
    let app = TestApp::new().await;
    let s = app.serve_unix().await;
    let j = json(&s, &["vm", "create", "web", "--memory", "64", "--no-wait"]).await;
    assert_eq!(j["kind"], "partition.define.start");
    let id = j["id"].as_u64().expect("an id").to_string();
    let done = json(&s, &["job", "wait", &id]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let j = json(&s, &["vm", "stop", "web", "--no-wait"]).await;
    let id = j["id"].as_u64().expect("an id").to_string();
    json(&s, &["job", "wait", &id]).await;
    // Starting a running VM fails: `job wait` exits 1.
    json(&s, &["vm", "start", "web"]).await;
    let j = json(&s, &["vm", "start", "web", "--no-wait"]).await;
    let id = j["id"].as_u64().expect("an id").to_string();
    let o = brood(&s, &["job", "wait", &id]).await;
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("failed"));
    let l = json(&s, &["job", "list", "--target", "web"]).await;
    assert_eq!(l["items"].as_array().expect("items").len(), 4, "{l}");
    let shown = json(&s, &["job", "show", &id]).await;
    assert!(!shown["events"].as_array().expect("events").is_empty());
    let o = brood(&s, &["job", "cancel", &id]).await;
    assert_ne!(o.status.code(), Some(0), "an ended job is not cancelled");
    json(&s, &["vm", "delete", "web", "--force", "--no-wait"]).await;
}

#[tokio::test]
async fn workflows_are_stored_run_and_deleted() {
    let app = TestApp::new().await;
    app.running("t").await;
    let s = app.serve_unix().await;
    let file = app.dir().join("wf.yaml");
    std::fs::write(
        &file,
        "name: hello\ninputs:\n  who: {}\ntasks:\n  - id: say\n    step: exec\n    params: {vm: t, command: 'echo hi ${data.who}'}\n",
    )
    .expect("write");
    let f = file.to_str().expect("utf-8");
    let w = json(&s, &["workflow", "create", "--file", f]).await;
    assert_eq!(w["version"], 1);
    let w = json(&s, &["workflow", "create", "--file", f]).await;
    assert_eq!(w["version"], 2);
    let l = json(&s, &["workflow", "list"]).await;
    assert_eq!(l["items"][0]["name"], "hello");
    let out = json(&s, &["workflow", "run", "hello", "--set", "who=there"]).await;
    assert_eq!(out["outputs"]["say"]["stdout"], "hi there\n", "{out}");
    let o = brood(&s, &["workflow", "run", "hello"]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--set who=VALUE"), "says what to add: {err}");
    let j = json(
        &s,
        &["workflow", "run", "hello", "--set", "who=x", "--no-wait"],
    )
    .await;
    assert_eq!(j["kind"], "workflow.run");
    let shown = json(&s, &["workflow", "show", "hello", "--version", "1"]).await;
    assert_eq!(shown["version"], 1);
    json(
        &s,
        &["job", "wait", &j["id"].as_u64().expect("id").to_string()],
    )
    .await;
    let o = brood(&s, &["workflow", "delete", "hello"]).await;
    assert_eq!(o.status.code(), Some(0));
    let o = brood(&s, &["workflow", "show", "hello"]).await;
    assert_ne!(o.status.code(), Some(0));
}

/// The YAML block and the `brood` lines of the sh block after `marker`
/// in the README, the lines split into words with `file` for `name`.
fn readme_example(marker: &str, name: &str, file: &std::path::Path) -> (String, Vec<Vec<String>>) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let start = readme.find(marker).expect("the example's marker");
    let block = &readme[start..];
    let yaml = &block[block.find("```yaml").expect("a yaml block") + 7..];
    let yaml = &yaml[..yaml.find("```").expect("the block's end")];
    let sh = &block[block.find("```sh").expect("a sh block") + 5..];
    let sh = &sh[..sh.find("```").expect("the block's end")];
    let lines = sh
        .lines()
        .map(|l| l.split("  #").next().unwrap_or_default().trim())
        .filter(|l| l.starts_with("brood "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|w| {
                    if w == name {
                        file.to_string_lossy().into_owned()
                    } else {
                        w.to_owned()
                    }
                })
                .collect()
        })
        .collect();
    (yaml.to_owned(), lines)
}

/// The README's actions example: its YAML block as `mkweb.yaml`, then
/// each `brood` line of its sh block, in order.
#[tokio::test]
async fn the_readme_actions_example_runs() {
    let app = TestApp::new().await;
    let s = app.serve_unix().await;
    let file = app.dir().join("mkweb.yaml");
    let (yaml, lines) = readme_example("<!-- actions-example", "mkweb.yaml", &file);
    std::fs::write(&file, yaml).expect("write mkweb.yaml");
    assert!(lines.len() >= 7, "{lines:?}");
    for args in &lines {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = brood(&s, &a).await;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(
            o.status.code(),
            Some(0),
            "brood {a:?}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if a.starts_with(&["workflow", "actions"]) {
            assert!(
                out.contains("create-web-server") && out.contains("mkweb"),
                "{out}"
            );
        }
        if a.starts_with(&["workflow", "run-action"]) {
            assert!(out.contains("hello from web-0"), "{out}");
        }
    }
    let l = json(&s, &["workflow", "actions", "--template", "web"]).await;
    assert_eq!(l["items"], serde_json::json!([]), "unbound: {l}");
    // The same, seen from the template.
    json(
        &s,
        &[
            "workflow",
            "bind",
            "mkweb",
            "--template",
            "web",
            "--action",
            "again",
        ],
    )
    .await;
    let l = json(&s, &["template", "action", "list", "web"]).await;
    assert_eq!(l["items"][0]["action"], "again", "{l}");
    let out = json(
        &s,
        &[
            "template",
            "action",
            "run",
            "web",
            "again",
            "--set",
            "greeting=hey",
        ],
    )
    .await;
    assert!(
        out["outputs"]["hello"]["stdout"]
            .as_str()
            .unwrap_or_default()
            .starts_with("hey from web-"),
        "{out}"
    );
    // A bad action name is refused with what to do.
    let o = brood(
        &s,
        &[
            "workflow",
            "bind",
            "mkweb",
            "--template",
            "web",
            "--action",
            "Web Server",
        ],
    )
    .await;
    assert_ne!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("a-z, 0-9"),
        "{o:?}"
    );
}

/// The README's jobs example: its YAML block as `web.yaml`, then each
/// `brood` line of its sh block, in order.
#[tokio::test]
async fn the_readme_example_runs() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let start = readme
        .find("<!-- jobs-example")
        .expect("the example's marker");
    let block = &readme[start..];
    let yaml = &block[block.find("```yaml").expect("a yaml block") + 7..];
    let yaml = &yaml[..yaml.find("```").expect("the block's end")];
    let sh = &block[block.find("```sh").expect("a sh block") + 5..];
    let sh = &sh[..sh.find("```").expect("the block's end")];
    let app = TestApp::new().await;
    let s = app.serve_unix().await;
    let file = app.dir().join("web.yaml");
    std::fs::write(&file, yaml).expect("write web.yaml");
    let lines: Vec<Vec<String>> = sh
        .lines()
        .map(|l| l.split("  #").next().unwrap_or_default().trim())
        .filter(|l| l.starts_with("brood "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|w| {
                    if w == "web.yaml" {
                        file.to_string_lossy().into_owned()
                    } else {
                        w.to_owned()
                    }
                })
                .collect()
        })
        .collect();
    assert!(lines.len() >= 8, "{lines:?}");
    for args in &lines {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = brood(&s, &a).await;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(
            o.status.code(),
            Some(0),
            "brood {a:?}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if a.starts_with(&["workflow", "run"]) {
            assert!(out.contains("hello from web-1"), "{out}");
            assert!(!out.contains("s3cret"), "{out}");
        }
        if a.starts_with(&["job", "show"]) {
            assert!(!out.contains("s3cret"), "{out}");
            assert!(out.contains("***"), "{out}");
        }
    }
}

/// Submits `args` (which end in `--no-wait`), checks that the answer is a
/// job of `kind`, and waits for it; returns what `job wait` printed.
async fn queued(s: &Served, args: &[&str], kind: &str) -> Value {
    let j = json(s, args).await;
    assert_eq!(j["kind"], kind, "{args:?}: {j}");
    let id = j["id"].as_u64().expect("an id").to_string();
    json(s, &["job", "wait", &id]).await
}

#[tokio::test]
async fn every_job_command_takes_no_wait() {
    let app = TestApp::new().await;
    app.running("t").await;
    let s = app.serve_unix().await;
    json(&s, &["vm", "define", "web", "--memory", "64"]).await;
    let done = queued(
        &s,
        &["vm", "stage", "web", "manual", "--no-wait"],
        "partition.stage",
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let p = json(&s, &["vm", "show", "web"]).await;
    assert_eq!(p["stage"], "manual", "{p}");
    let done = queued(
        &s,
        &["vm", "snapshot", "create", "web", "first", "--no-wait"],
        "partition.snapshot.create",
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let l = json(&s, &["vm", "snapshot", "list", "web"]).await;
    assert_eq!(l["items"][0]["name"], "first", "{l}");
    let done = queued(
        &s,
        &["vm", "snapshot", "delete", "web", "first", "--no-wait"],
        "partition.snapshot.delete",
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let done = queued(
        &s,
        &["vm", "disk", "attach", "web", "logs", "1", "--no-wait"],
        "partition.disk.attach",
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let done = queued(
        &s,
        &["vm", "set", "web", "--memory", "96", "--no-wait"],
        "partition.resources",
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let done = queued(
        &s,
        &["vm", "disk", "detach", "web", "logs", "--no-wait"],
        "partition.disk.detach",
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let p = json(&s, &["vm", "show", "web"]).await;
    assert_eq!(p["configs"]["default"]["memory_mib"], 96, "{p}");
    assert!(
        p["disks"]
            .as_array()
            .is_none_or(|d| d.iter().all(|d| d["name"] != "logs")),
        "{p}"
    );
    // A job that fails: `job wait` says so, the command itself answered 0.
    let j = json(&s, &["vm", "config", "web", "no-such-config", "--no-wait"]).await;
    let id = j["id"].as_u64().expect("an id").to_string();
    let o = brood(&s, &["job", "wait", &id]).await;
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let done = queued(
        &s,
        &["template", "create", "t", "--warm", "0", "--no-wait"],
        "template.create",
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let t = json(&s, &["template", "show", "t"]).await;
    assert_eq!(t["name"], "t", "{t}");
}
