//! Runs every shell example of README.md's "What works today" section, in
//! order, against a real broodd and real VMs: each line of each ```sh
//! block goes to `sh -c` with `brood` and `broodd` from this build on
//! `PATH`, and must succeed. A README example that stops working fails
//! this test.
//!
//! Nothing is skipped. What the test does differently, line by line, is
//! listed in [`ADAPTED`] with the reason (the test's own data directory
//! instead of /var/lib/brood, a bridge of its own as `br0`, files the
//! examples expect the user to have, commands that run until Ctrl-C); a
//! listed line the README no longer has fails the test too, so the list
//! cannot go stale.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brood_e2e::{Bridge, Broodd, TestEnv, busybox_initrd, image, run};

/// How the test runs a README line that cannot run as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// Starting broodd: the test's own broodd (its data and run
    /// directories, not /var/lib/brood, which other tests and the host use).
    OwnDaemon,
    /// Runs until Ctrl-C: started, given a moment, then sent SIGINT.
    UntilCtrlC,
    /// `br0` is a bridge of the test's own with 10.0.0.1/24 on it (this
    /// machine has no br0, and tests never touch the host's bridges).
    OwnBridge,
    /// `./bzImage` and `./initrd.cpio` are the user's own kernel and
    /// initramfs: the default image's kernel and a busybox initramfs
    /// without the agent that prints a line and powers off.
    OwnKernel,
}

/// The README lines (by their start) the test adapts, and how.
const ADAPTED: &[(&str, How)] = &[
    ("broodd --data-dir /var/lib/brood &", How::OwnDaemon),
    ("brood vm console web --follow", How::UntilCtrlC),
    ("brood host show; brood events", How::UntilCtrlC),
    ("brood run --nic bridge=br0", How::OwnBridge),
    (
        "brood run --kernel ./bzImage --initrd ./initrd.cpio",
        How::OwnKernel,
    ),
];

/// The section whose examples are run, up to the next `## ` heading.
const SECTION: &str = "## What works today";

/// Every line of the ```sh blocks of the section, comments and blank lines dropped.
fn examples(readme: &str) -> Vec<String> {
    let start = readme.find(SECTION).expect("README has the section");
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut lines = Vec::new();
    let mut in_sh = false;
    for l in section.lines() {
        let t = l.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        if in_sh {
            let code = strip_comment(t).trim().to_string();
            if !code.is_empty() {
                lines.push(code);
            }
        }
    }
    lines
}

/// A shell line without its trailing `# comment` (a `#` inside quotes stays).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// What the test needs to run the lines.
struct Ctx {
    env: TestEnv,
    work: PathBuf,
    path: String,
    daemon: Option<Broodd>,
    bridge: Option<Bridge>,
}

impl Ctx {
    /// `sh -c line` in the work directory, pointed at the test's broodd
    /// (`brood run` uses the default image in the default data directory).
    fn sh(&self, line: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(line)
            .current_dir(&self.work)
            .env("PATH", &self.path)
            .env("BROOD_RUN_DIR", self.env.run_root().join("vms"))
            .env_remove("BROOD_HOST")
            .env_remove("BROOD_TOKEN");
        let runs_vm_itself = line.starts_with("brood run");
        match (&self.daemon, runs_vm_itself) {
            (Some(d), false) => c.env("BROOD_DATA_DIR", &d.data),
            _ => c.env("BROOD_DATA_DIR", brood_e2e::data_dir()),
        };
        c
    }

    fn log(&self) -> String {
        self.daemon.as_ref().map(Broodd::log).unwrap_or_default()
    }
}

/// Runs a line to its end; it must succeed.
fn run_line(ctx: &Ctx, line: &str) {
    let out = ctx.sh(line).output().expect("run sh");
    assert!(
        out.status.success(),
        "README line failed ({}): {line}\nstdout: {}\nstderr: {}\nbroodd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        ctx.log()
    );
}

/// Runs a line that goes on until Ctrl-C: it must still run after a
/// moment, and end cleanly on SIGINT.
fn run_until_ctrl_c(ctx: &Ctx, line: &str) {
    // `exec` for the last command, so SIGINT reaches brood itself; the
    // ones before it (`brood host show;`) run to their end first.
    let (before, last) = match line.rsplit_once("; ") {
        Some((b, l)) => (Some(b), l),
        None => (None, line),
    };
    if let Some(b) = before {
        run_line(ctx, b);
    }
    let mut child = ctx
        .sh(&format!("exec {last}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sh");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "{last} ended before Ctrl-C: {:?}",
        child.wait_with_output()
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).expect("send SIGINT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "{last} ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        matches!(out.status.code(), Some(0 | 130)),
        "{last} on Ctrl-C: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn own_kernel(work: &Path) {
    std::fs::copy(image().kernel, work.join("bzImage")).expect("copy the kernel");
    busybox_initrd(
        &work.join("initrd.cpio"),
        "#!/bin/sh\n/bin/busybox echo hello-from-my-initrd\n/bin/busybox poweroff -f\n",
    );
}

#[test]
fn every_shell_example_of_what_works_today_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    let lines = examples(&readme);
    assert!(lines.len() > 20, "too few examples found: {lines:?}");
    for (start, _) in ADAPTED {
        assert!(
            lines.iter().any(|l| l.starts_with(start)),
            "ADAPTED names {start:?}, which the README no longer has"
        );
    }
    let env = TestEnv::new();
    let work = env.run_root().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let bin = brood_e2e::brood_bin();
    let bin_dir = bin.parent().expect("target dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ctx = Ctx {
        env,
        work,
        path,
        daemon: None,
        bridge: None,
    };
    for line in &lines {
        let how = ADAPTED
            .iter()
            .find(|(start, _)| line.starts_with(start))
            .map(|(_, h)| *h);
        eprintln!("README: {line}  [{how:?}]");
        match how {
            None => run_line(&ctx, line),
            Some(How::OwnDaemon) => {
                ctx.daemon = Some(Broodd::start(
                    &ctx.env,
                    &["--memory-mib", "6144", "--vcpu-overcommit", "8"],
                ));
            }
            Some(How::UntilCtrlC) => run_until_ctrl_c(&ctx, line),
            Some(How::OwnBridge) => {
                let br = Bridge::new("rd");
                run(Command::new("ip").args(["addr", "add", "10.0.0.1/24", "dev", &br.name]));
                run_line(
                    &ctx,
                    &line.replace("bridge=br0", &format!("bridge={}", br.name)),
                );
                ctx.bridge = Some(br);
            }
            Some(How::OwnKernel) => {
                own_kernel(&ctx.work);
                run_line(&ctx, line);
            }
        }
    }
    if let Some(d) = &ctx.daemon {
        d.verify_ok();
    }
    drop(ctx.daemon.take());
    drop(ctx.bridge.take());
    ctx.env.assert_clean();
}

#[cfg(test)]
mod parsing {
    use super::*;

    #[test]
    fn comments_go_quotes_stay() {
        assert_eq!(
            strip_comment("brood vm list   # all of them"),
            "brood vm list   "
        );
        assert_eq!(
            strip_comment("brood vm exec web 'echo #1'"),
            "brood vm exec web 'echo #1'"
        );
        assert_eq!(strip_comment("a#b"), "a#b");
        let md = "x\n## What works today\n\n  ```sh\n  a   # c\n\n  b\n  ```\n  ```text\n  no\n  ```\n## Next\n```sh\nnot me\n```\n";
        assert_eq!(examples(md), ["a", "b"]);
    }
}
