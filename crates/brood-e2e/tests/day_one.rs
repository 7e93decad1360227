//! Issue 16's "bugs in what exists", on real VMs: a forked child saved and
//! restored (plain and persistent) with the hints agreeing meanwhile, and
//! the console free of the PCI line a microvm guest used to print, and zsh
//! completing VM names as you type. (The
//! fork refusals and give-backs need no VM: `crates/broodd/tests/fork.rs`.)

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use brood_e2e::{Broodd, TestEnv};
use serde_json::{Value, json};

fn exec(b: &Broodd, name: &str, cmd: &str) -> String {
    let (code, out, err) = b.exec(name, cmd);
    assert_eq!(code, 0, "{name}: {cmd}: {err}");
    out
}

fn brood(b: &Broodd, args: &[&str]) -> std::process::Output {
    b.brood().args(args).output().expect("run brood")
}

fn template(b: &Broodd, name: &str, nics: Value) {
    b.ok(
        "POST",
        "/v1/partitions",
        Some(&json!({
            "name": name,
            "configs": {"default": {"memory_mib": 256, "disks": [{"name": "data", "size_gib": 1}], "nics": nics}},
            "start": true
        })),
    );
    exec(b, name, "echo template > /tmp/who");
    b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": name, "warm": 0})),
    );
}

#[test]
fn a_forked_child_saves_and_restores_plain_and_persistent() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "4096"]);
    template(&b, "tpl", json!([]));
    for (persistent, name) in [(false, "tpl-0"), (true, "tpl-1")] {
        let r = b.ok(
            "POST",
            "/v1/templates/tpl/fork",
            Some(&json!({"count": 1, "persistent": persistent})),
        );
        assert_eq!(r["children"][0]["name"], name, "{r}");
        assert_eq!(r["children"][0]["status"], "ready", "{r}");
        // Memory and disk both change after the fork.
        exec(
            &b,
            name,
            &format!("echo {name} > /tmp/who; printf {name} > /dev/vda; sync"),
        );

        let out = brood(&b, &["vm", "save", name]);
        assert!(out.status.success(), "save {name}: {out:?}");
        let p = b.ok("GET", &format!("/v1/partitions/{name}"), None);
        assert_eq!(p["run_state"], "saved", "{p}");

        // While it is saved, exec and start give the same advice.
        let exec_err = brood(&b, &["vm", "exec", name, "true"]);
        let start_err = brood(&b, &["vm", "start", name]);
        for (what, o) in [("exec", &exec_err), ("start", &start_err)] {
            let msg = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{what} {name} worked while saved");
            assert!(
                msg.contains("saved") && msg.contains("restore it"),
                "{what} {name}: {msg}"
            );
        }

        let out = brood(&b, &["vm", "restore", name]);
        assert!(
            out.status.success(),
            "restore {name}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            b.log()
        );
        assert_eq!(exec(&b, name, "cat /tmp/who").trim(), name);
        assert_eq!(exec(&b, name, "head -c 5 /dev/vda"), &name[..5]);
        assert_eq!(exec(&b, name, "hostname").trim(), name);
        let p = b.ok("GET", &format!("/v1/partitions/{name}"), None);
        assert_eq!(p["run_state"], "running", "{p}");
        // Held to a charge the ledger knows: never less than it uses.
        b.verify_ok();

        // And again: a restored child saves like any VM.
        let out = brood(&b, &["vm", "save", name]);
        assert!(out.status.success(), "second save {name}: {out:?}");
        let out = brood(&b, &["vm", "restore", name]);
        assert!(out.status.success(), "second restore {name}: {out:?}");
        assert_eq!(exec(&b, name, "cat /tmp/who").trim(), name);
    }
    // The template is untouched by its children's saves.
    let r = b.ok("POST", "/v1/templates/tpl/fork", Some(&json!({"count": 1})));
    assert_eq!(exec(&b, "tpl-2", "cat /tmp/who").trim(), "template", "{r}");
    b.verify_ok();
}

#[test]
fn a_boot_prints_no_pci_error_and_the_log_file_has_no_colour() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    b.ok(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "web", "configs": {"default": {"memory_mib": 256}}, "start": true})),
    );
    exec(&b, "web", "true");
    let out = brood(&b, &["vm", "console", "web"]);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(console.contains("brood-agent"), "{console}");
    assert!(!console.contains("PCI: Fatal"), "{console}");
    // broodd's log goes to a file here: plain text, no colour escapes.
    let log = b.log();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour escapes in {log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_says_what_qemu_said() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("not-a.state");
    // Not a migration stream: QEMU refuses it and exits.
    std::fs::write(&state, vec![0x5a; 4096]).unwrap();
    let err = env
        .engine()
        .restore(&env.spec("garbled"), &state)
        .await
        .expect_err("a garbage state restored");
    let msg = err.to_string();
    // QEMU's own words from its qemu.log, not "QMP connection closed".
    assert!(msg.contains("qemu-system"), "{msg}");
    assert!(msg.contains("migration") || msg.contains("magic"), "{msg}");
    env.assert_clean();
}

/// Lines of a child's pipe, read on a thread of their own.
fn lines_of(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(r).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (at most 60 s) for a line containing `want`; returns every line seen.
fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, want: &str) -> Vec<String> {
    wait_for(rx, want, |l| l.contains(want))
}

/// Waits (at most 60 s) for a line `hit` accepts (`what` names it in the
/// failure); returns every line seen.
fn wait_for(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
    hit: impl Fn(&String) -> bool,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let found = hit(&l);
                seen.push(l);
                if found {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {what:?}; saw {seen:?}");
}

#[test]
fn brood_events_reconnects_when_broodd_restarts() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let mut events = b
        .brood()
        .arg("events")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start brood events");
    let out = lines_of(events.stdout.take().unwrap());
    let err = lines_of(events.stderr.take().unwrap());
    // Until the stream is open, a define may come before it: define again.
    let mut n = 0;
    let first = loop {
        n += 1;
        let name = format!("before-{n}");
        b.ok(
            "POST",
            "/v1/partitions",
            Some(&json!({"name": name, "configs": {"default": {}}})),
        );
        if let Ok(l) = out.recv_timeout(std::time::Duration::from_secs(2)) {
            break l;
        }
        assert!(n < 30, "brood events printed nothing");
    };
    assert!(first.contains("before-"), "{first}");
    b.restart();
    let said = wait_for_line(&err, "reconnected");
    assert!(
        said.iter().any(|l| l.contains("event stream ended")),
        "{said:?}"
    );
    b.ok(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "after", "configs": {"default": {}}})),
    );
    let mut seen = wait_for_line(&out, "after:");
    // Ledger commits are events too, with who made them. The define's
    // ledger commit may be printed after its job's first event ("queued").
    let ledger = |l: &String| l.contains("ledger tx") && l.contains("by admin");
    if !seen.iter().any(ledger) {
        seen.extend(wait_for(&out, "a ledger tx by admin", ledger));
    }
    assert!(seen.iter().any(ledger), "{seen:?}");
    assert!(events.try_wait().unwrap().is_none(), "brood events ended");
    let _ = events.kill();
    let _ = events.wait();
}

/// Drives an interactive zsh on a pseudo-terminal (zsh's own `zpty`):
/// loads brood's completion from `fpath_dir`, types `line` and TAB twice,
/// and prints what the terminal showed once `want` appears (or after 20 s).
const ZSH_DRIVER: &str = r#"
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z "fpath=($1 \$fpath); autoload -U compinit; compinit -u -D; PS1='READY> '"
zpty -r z out '*READY> *'
zpty -w -n z "$2"$'\t\t'
local all=""
for i in {1..200}; do
  if zpty -r -t z chunk; then all+=$chunk; fi
  [[ $all == *$3* ]] && break
  sleep 0.1
done
print -r -- "$all"
zpty -d z
"#;

#[test]
fn zsh_completes_vm_names_as_you_type() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    for name in ["web", "webby", "db"] {
        let out = brood(&b, &["vm", "define", name, "--memory", "64M"]);
        assert!(out.status.success(), "{out:?}");
    }
    let fpath = tempfile::tempdir().unwrap();
    let script = brood(&b, &["completions", "zsh"]);
    assert!(script.status.success());
    std::fs::write(fpath.path().join("_brood"), &script.stdout).unwrap();
    let bin_dir = brood_e2e::brood_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let data = b.socket().parent().unwrap().to_path_buf();
    let complete = |line: &str, want: &str| {
        let out = std::process::Command::new("zsh")
            .args(["-f", "-c", ZSH_DRIVER, "zsh"])
            .arg(fpath.path())
            .args([line, want])
            .env("PATH", &path)
            .env("BROOD_DATA_DIR", &data)
            .env_remove("BROOD_HOST")
            .env_remove("BROOD_TOKEN")
            .output()
            .expect("run zsh (apt-get install zsh)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // "we" is the start of two VMs: zsh completes to their common part
    // and lists both, and not db.
    let shown = complete("brood vm show we", "webby");
    assert!(shown.contains("webby"), "{shown:?}");
    assert!(shown.contains("brood vm show web"), "{shown:?}");
    assert!(!shown.contains("db"), "{shown:?}");
    // A unique start completes in full, for every command taking a VM.
    let shown = complete("brood vm set d", "brood vm set db");
    assert!(shown.contains("brood vm set db"), "{shown:?}");
}
