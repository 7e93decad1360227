#![allow(clippy::tests_outside_test_module)]
//! Issue 16's CLI bugs, the real `brood` binary against a real broodd (a
//! `TestApp` on the fake engine): what `vm show -o json` prints, `vm define
//! --from-json -` accepts; `-o json` errors are JSON on stderr; `vm exec -o
//! json` prints the shape `brood run -o json` prints.

use std::process::{Output, Stdio};

use brood_testkit::{Served, TestApp};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Runs `brood --host SOCKET --token T ARGS...` with `input` on stdin.
async fn brood_with(s: &Served, args: &[&str], input: &[u8]) -> Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_brood"))
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
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run brood");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).await.expect("write stdin");
    drop(stdin);
    child.wait_with_output().await.expect("brood ends")
}

async fn ok(s: &Served, args: &[&str], input: &[u8]) -> String {
    let o = brood_with(s, args, input).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "brood {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_vm_show_prints_vm_define_accepts() {
    let app = TestApp::new().await;
    let s = app.serve_unix().await;
    ok(
        &s,
        &[
            "vm",
            "create",
            "web",
            "--memory",
            "512",
            "--vcpus",
            "2",
            "--disk",
            "data:4",
            "--nic",
            "user",
            "--cpu-cap",
            "150",
            "--restart",
            "on-failure",
            "--cmdline",
            "quiet",
        ],
        b"",
    )
    .await;
    let shown = ok(&s, &["vm", "show", "web", "-o", "json"], b"").await;
    let web = parse(&shown);
    assert_eq!(web["run_state"], "running", "{web}");

    // `vm show -o json | brood vm define web2 --from-json -`
    ok(
        &s,
        &["vm", "define", "web2", "--from-json", "-"],
        shown.as_bytes(),
    )
    .await;
    let web2 = parse(&ok(&s, &["vm", "show", "web2", "-o", "json"], b"").await);
    assert_eq!(web2["configs"], web["configs"], "{web2}");
    assert_eq!(web2["active_config"], web["active_config"]);
    assert_eq!(web2["run_state"], "stopped", "define does not start it");
    assert_ne!(web2["uuid"], web["uuid"]);

    // Without a name the shown one is used.
    ok(&s, &["vm", "delete", "web", "--force"], b"").await;
    ok(&s, &["vm", "define", "--from-json", "-"], shown.as_bytes()).await;
    let again = parse(&ok(&s, &["vm", "show", "web", "-o", "json"], b"").await);
    assert_eq!(again["configs"], web["configs"]);

    // A DefineRequest of one's own stays strict about its fields.
    let o = brood_with(
        &s,
        &["vm", "define", "x", "--from-json", "-"],
        br#"{"name": "x", "configs": {"d": {}}, "bogus": 1}"#,
    )
    .await;
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bogus"));
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_errors_are_json_on_stderr() {
    let app = TestApp::new().await;
    let s = app.serve_unix().await;
    for args in [
        &["-o", "json", "vm", "start", "nosuch"][..],
        &["vm", "show", "nosuch", "-o", "json"][..],
    ] {
        let o = brood_with(&s, args, b"").await;
        assert_eq!(o.status.code(), Some(125), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        let v = parse(err.trim());
        assert_eq!(v["error"]["code"], "not_found", "{v}");
        assert_eq!(v["error"]["status"], 404, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("nosuch"),
            "{v}"
        );
    }
    // An error of brood's own, before any request, too.
    let o = brood_with(
        &s,
        &[
            "-o",
            "json",
            "vm",
            "define",
            "x",
            "--from-json",
            "/no/such/file",
        ],
        b"",
    )
    .await;
    assert_eq!(o.status.code(), Some(125));
    let v = parse(String::from_utf8_lossy(&o.stderr).trim());
    assert_eq!(v["error"]["code"], "brood", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/file"),
        "{v}"
    );
    // Text mode keeps its one readable line.
    let o = brood_with(&s, &["vm", "start", "nosuch"], b"").await;
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("brood: error: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_exec_json_has_the_shape_of_brood_run_json() {
    let app = TestApp::new().await;
    let s = app.serve_unix().await;
    app.running("web").await;
    let o = brood_with(&s, &["vm", "exec", "web", "echo hi", "-o", "json"], b"").await;
    let v = parse(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        o.status.code().map(i64::from),
        v["exit_code"].as_i64(),
        "{v}"
    );
    // The fields `brood run -o json` has for the command's result.
    for k in [
        "exit_code",
        "signal",
        "timed_out",
        "stdout",
        "stderr",
        "stdout_base64",
        "stderr_base64",
        "stdout_truncated",
        "stderr_truncated",
    ] {
        assert!(v.get(k).is_some(), "no {k}: {v}");
    }
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["stdout_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        v["stdout"].as_str().unwrap()
    );
}
