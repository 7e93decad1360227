//! The OpenAPI document is a contract: the checked-in `openapi/brood.json`
//! is valid OpenAPI 3.1 (checked by `openapi-spec-validator`), broodd serves
//! exactly it, and a Python client generated from it (by
//! `openapi-python-client`, at test time) drives a VM through its life
//! cycle over broodd's unix socket, failing on any status or body the
//! document does not declare. The Python tools come from the venv that
//! `scripts/setup` makes (`.venv`, or `$BROOD_VENV`).

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::path::{Path, PathBuf};
use std::process::Command;

use brood_e2e::{Broodd, TestEnv, http, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn document() -> PathBuf {
    repo().join("openapi/brood.json")
}

/// A program of the venv; fails (never skips) when `scripts/setup` has not made it.
fn venv(tool: &str) -> PathBuf {
    let root = std::env::var_os("BROOD_VENV").map_or_else(|| repo().join(".venv"), PathBuf::from);
    let bin = root.join("bin").join(tool);
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/setup, which makes the venv with the OpenAPI tools",
        bin.display()
    );
    bin
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn checked_in_document_is_valid_openapi_3_1() {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(document()).unwrap()).unwrap();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    let out = run(Command::new(venv("openapi-spec-validator")).arg(document()));
    assert!(
        out.status.success() && text(&out.stdout).contains("OK"),
        "openapi-spec-validator: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn a_client_generated_from_the_document_drives_a_vm() {
    let client_dir = tempfile::tempdir().unwrap();
    let bin_dir = venv("python").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(Command::new(venv("openapi-python-client"))
        .args(["generate", "--meta", "none", "--path"])
        .arg(document())
        .arg("--output-path")
        .arg(client_dir.path().join("brood_client"))
        .env("PATH", &path));
    assert!(
        out.status.success() && client_dir.path().join("brood_client/client.py").is_file(),
        "openapi-python-client: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let warnings = text(&out.stdout) + &text(&out.stderr);
    assert!(
        !warnings.contains("will not be generated"),
        "parts of the document could not be generated:\n{warnings}"
    );

    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    // What broodd serves is the checked-in document.
    let (status, served) = http(
        &b.socket(),
        "GET",
        "/v1/openapi.json",
        Some(&b.token()),
        None,
        None,
    );
    assert_eq!(status, 200);
    let served: serde_json::Value = serde_json::from_str(&served).unwrap();
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(document()).unwrap()).unwrap();
    assert!(
        served == file,
        "broodd serves a document other than openapi/brood.json"
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/drive_vm.py");
    let out = Command::new(venv("python"))
        .arg(&script)
        .arg(document())
        .arg(b.socket())
        .arg(b.token())
        .arg("py-client")
        .env("PYTHONPATH", client_dir.path())
        .env("PATH", &path)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.lines().last() == Some("done"),
        "the generated client failed:\n{stdout}{}\nbroodd's log:\n{}",
        text(&out.stderr),
        b.log()
    );
    for step in [
        "refusals: 401 400 404 413 415",
        "started pid",
        "exec: hello from Linux (exit 3)",
        "deleted",
        "with identity dom-a",
        "template deleted with its child",
        "responses matched the document",
    ] {
        assert!(stdout.contains(step), "no step {step:?} in:\n{stdout}");
    }
    b.verify_ok();
    drop(b);
    env.assert_clean();
}
