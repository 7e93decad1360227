#![allow(clippy::tests_outside_test_module)]
//! The README's business-unit example, run line by line by the real
//! `brood` binary against a `TestApp`, then a unit user's token from it:
//! a VM beyond the allocation is refused with exit 125 and a message that
//! says what to do, and the other unit's VMs are not there for it.

use std::process::Output;

use brood_testkit::{Served, TestApp};
use serde_json::Value;

async fn brood(s: &Served, token: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_brood"))
        .arg("--data-dir")
        .arg(&s.data)
        .arg("--host")
        .arg(&s.socket)
        .arg("--token")
        .arg(token)
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `brood` lines of the README's tenancy example, without comments.
fn readme_example() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let start = readme
        .find("<!-- tenancy-example")
        .expect("the example's marker");
    let block = &readme[start..];
    let body = &block[block.find("```sh").expect("a sh block") + 5..];
    let body = &body[..body.find("```").expect("the block's end")];
    body.lines()
        .map(|l| l.split("  #").next().unwrap_or_default().trim())
        .filter(|l| l.starts_with("brood "))
        .map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn the_readme_example_and_a_unit_user_at_its_limit() {
    let app = TestApp::builder()
        .capacity(brood_testkit::Resources {
            memory_mib: 32768,
            vcpus: 32,
            disk_gib: 200,
            nics: 16,
        })
        .build()
        .await;
    let s = app.serve_unix().await;
    let lines = readme_example();
    assert!(lines.len() >= 10, "{lines:?}");
    let mut alice = None;
    for args in &lines {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = brood(&s, &s.token, &a).await;
        assert_eq!(
            o.status.code(),
            Some(0),
            "brood {a:?}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        if a.first() == Some(&"token") && a.get(1) == Some(&"create") {
            alice = Some(text(&o.stdout).trim().to_owned());
        }
        if a.contains(&"csv") {
            let csv = text(&o.stdout);
            assert!(
                csv.starts_with("unit,model,item,quantity_hours,amount\n"),
                "{csv}"
            );
            assert!(csv.contains("eng,reservation,vcpu,"), "{csv}");
        }
    }
    let alice = alice.expect("the example makes a token");
    let o = brood(&s, &s.token, &["-o", "json", "unit", "show", "eng"]).await;
    let u: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(u["allocated"]["vcpus"], 4, "{u}");
    assert_eq!(u["used"]["vcpus"], 2, "{u}");
    // alice works inside eng without --unit; 2 more vCPUs fit, a third VM does not.
    let o = brood(
        &s,
        &alice,
        &["vm", "create", "api", "--memory", "256", "--vcpus", "2"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = brood(
        &s,
        &alice,
        &["vm", "create", "big", "--memory", "256", "--vcpus", "1"],
    )
    .await;
    assert_eq!(o.status.code(), Some(125));
    let err = text(&o.stderr);
    assert!(
        err.contains("unit's allocation") && err.contains("brood unit request"),
        "{err}"
    );
    // Another unit's VM does not exist for alice.
    for args in [
        ["unit", "register", "ops", "--contact", "x"].as_slice(),
        &["unit", "request", "ops", "--vcpus", "1", "--memory", "1024"],
    ] {
        let o = brood(&s, &s.token, args).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    }
    let o = brood(&s, &s.token, &["unit", "approve", "2"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = brood(
        &s,
        &s.token,
        &["--unit", "ops", "vm", "create", "secret", "--memory", "256"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = brood(&s, &alice, &["vm", "show", "secret"]).await;
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains("no partition named"),
        "{}",
        text(&o.stderr)
    );
    let o = brood(&s, &alice, &["vm", "list"]).await;
    assert!(!text(&o.stdout).contains("secret"), "{}", text(&o.stdout));
    let o = brood(&s, &alice, &["ledger", "show"]).await;
    assert_eq!(
        o.status.code(),
        Some(125),
        "a unit user does not read the ledger"
    );
    let o = brood(&s, &s.token, &["-o", "csv", "vm", "list"]).await;
    assert_eq!(o.status.code(), Some(125), "csv is for chargeback only");
    app.assert_verified().await;
}
