//! Day one with brood on a real VM: `brood vm exec -t` (a terminal through
//! the agent: its size followed, Ctrl-C reaching the guest's command, the
//! exit code returned), `brood vm console` attached to the serial shell
//! (Ctrl-] detaches), `brood vm cp` both ways (streamed, modes kept, a
//! failed copy leaving nothing), `--stdin` past the old 756 KiB cap, and
//! `brood vm ssh` saying plainly that the default image has no sshd. The
//! terminal commands run on a pseudo-terminal this test holds the master of.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, wait_until};

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run brood");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

nix::ioctl_write_ptr_bad!(tiocswinsz, nix::libc::TIOCSWINSZ, nix::libc::winsize);

fn winsize(rows: u16, cols: u16) -> nix::libc::winsize {
    nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A command running on a pseudo-terminal: what it prints is collected,
/// what the test writes is typed.
struct Pty {
    master: File,
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn spawn(cmd: &mut Command, rows: u16, cols: u16) -> Self {
        let pty = nix::pty::openpty(Some(&winsize(rows, cols)), None).unwrap();
        let slave = File::from(pty.slave);
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: between fork and exec; setsid(2) and ioctl(2) only. The
        // terminal becomes the command's controlling terminal, so a resize
        // sends it SIGWINCH as a real terminal would.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on a pty");
        let master = File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let mut answer = master.try_clone().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                // Answer a cursor position query (busybox's line editor
                // sends ESC[6n) as a terminal would.
                if buf[..n].windows(4).any(|w| w == b"\x1b[6n") {
                    let _ = answer.write_all(b"\x1b[1;1R");
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self { master, child, out }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn expect(&self, needle: &str) {
        let seen = wait_until(Duration::from_secs(60), || self.text().contains(needle));
        assert!(
            seen,
            "waited for {needle:?}; the terminal shows:\n{}",
            self.text()
        );
    }

    fn clear(&self) {
        self.out.lock().unwrap().clear();
    }

    fn type_in(&mut self, s: &[u8]) {
        self.master.write_all(s).unwrap();
        self.master.flush().unwrap();
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        unsafe { tiocswinsz(self.master.as_raw_fd(), &ws) }.unwrap();
    }

    fn wait(&mut self) -> i32 {
        let mut code = None;
        let done = wait_until(Duration::from_secs(60), || {
            code = self
                .child
                .try_wait()
                .unwrap()
                .map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        if !done {
            let _ = self.child.kill();
            panic!("the command did not end; it shows:\n{}", self.text());
        }
        code.unwrap()
    }
}

impl Drop for Pty {
    /// A test that failed half-way leaves no brood behind on its terminal.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_vm(b: &Broodd, name: &str) {
    let (code, out, err) = run(b.brood().args(["vm", "create", name, "--memory", "256"]));
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn exec_t_is_a_terminal_that_follows_its_size_passes_ctrl_c_and_returns_the_exit_code() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    start_vm(&b, "tty1");
    let mut t = Pty::spawn(b.brood().args(["vm", "exec", "-t", "tty1"]), 30, 100);
    t.type_in(b"stty size; tty; echo mark-$((6*7))\n");
    t.expect("mark-42");
    let text = t.text();
    assert!(text.contains("30 100"), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    // A resize here reaches the guest's terminal.
    t.clear();
    t.resize(40, 120);
    let mut resized = false;
    for _ in 0..20 {
        t.type_in(b"stty size\n");
        if wait_until(Duration::from_secs(3), || t.text().contains("40 120")) {
            resized = true;
            break;
        }
    }
    assert!(resized, "the guest never saw 40x120:\n{}", t.text());
    // Ctrl-C interrupts the guest's foreground command, not brood.
    t.clear();
    t.type_in(b"sleep 600; echo not-interrupted\n");
    std::thread::sleep(Duration::from_millis(500));
    t.type_in(b"\x03");
    t.type_in(b"echo after-$((2+3))\n");
    t.expect("after-5");
    // Typed text is echoed; the command's own output would start a line.
    assert!(!t.text().contains("\nnot-interrupted"), "{}", t.text());
    t.type_in(b"exit 3\n");
    assert_eq!(t.wait(), 3, "{}", t.text());
    // A command of its own, with its code.
    let mut t = Pty::spawn(
        b.brood()
            .args(["vm", "exec", "-t", "tty1", "test -t 1 && exit 9"]),
        24,
        80,
    );
    assert_eq!(t.wait(), 9, "{}", t.text());
}

#[test]
fn console_attaches_to_the_serial_shell_and_ctrl_bracket_detaches() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    start_vm(&b, "con1");
    let mut t = Pty::spawn(b.brood().args(["vm", "console", "con1"]), 24, 80);
    t.expect("detach with Ctrl-]");
    // The shell may still be starting: type until it answers.
    let mut answered = false;
    for _ in 0..30 {
        t.type_in(b"echo con$((1+2))sole\r");
        if wait_until(Duration::from_secs(2), || t.text().contains("con3sole")) {
            answered = true;
            break;
        }
    }
    assert!(answered, "the serial shell never answered:\n{}", t.text());
    t.type_in(b"\x1d");
    assert_eq!(t.wait(), 0, "{}", t.text());
    t.expect("detached");
    // Detaching left the VM running, and the console log has the session.
    let (code, out, err) = run(b.brood().args(["vm", "console", "con1"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("con3sole"), "{out}");
    // A stopped VM cannot be attached to, and brood says why.
    let (code, _, err) = run(b.brood().args(["vm", "stop", "con1"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(b.brood().args(["vm", "console", "con1", "--attach"]));
    assert_eq!(code, 125);
    assert!(err.contains("start it first"), "{err}");
}

#[test]
fn cp_streams_both_ways_keeps_modes_and_stdin_has_no_cap() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    start_vm(&b, "cp1");
    let dir = tempfile::tempdir().unwrap();
    // 5 MiB (several agent chunks) of varied bytes, mode 0751.
    let src = dir.path().join("blob");
    let data: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o751)).unwrap();
    let (code, out, err) = run(b.brood().args([
        "vm",
        "cp",
        src.to_str().unwrap(),
        "cp1:/tmp/blob",
        "-o",
        "json",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bytes"], 5 << 20);
    let (code, out, err) = b.exec("cp1", "stat -c '%a %s' /tmp/blob; ls /tmp");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("751 5242880"), "{out}");
    assert!(!out.contains("brood-"), "no scratch file is left: {out}");
    // Out again, into a directory: same bytes, same mode.
    let back = dir.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let (code, out, err) =
        run(b
            .brood()
            .args(["vm", "cp", "cp1:/tmp/blob", back.to_str().unwrap()]));
    assert_eq!(code, 0, "{out}{err}");
    let got = std::fs::read(back.join("blob")).unwrap();
    assert!(
        got == data,
        "the bytes came back changed ({} bytes)",
        got.len()
    );
    let mode = std::fs::metadata(back.join("blob"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o751);
    // To stdout.
    let (code, _, err) = b.exec("cp1", "echo hello-cp > /tmp/h");
    assert_eq!(code, 0, "{err}");
    let out = b
        .brood()
        .args(["vm", "cp", "cp1:/tmp/h", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-cp\n");
    // Errors say what was wrong and leave nothing behind.
    let (code, _, err) =
        run(b
            .brood()
            .args(["vm", "cp", "cp1:/nonexistent/x", back.to_str().unwrap()]));
    assert_eq!(code, 125);
    assert!(err.contains("/nonexistent/x"), "{err}");
    assert_eq!(
        std::fs::read_dir(&back).unwrap().count(),
        1,
        "nothing new locally"
    );
    let (code, _, err) =
        run(b
            .brood()
            .args(["vm", "cp", src.to_str().unwrap(), "cp1:/nonexistent/dir/f"]));
    assert_eq!(code, 125);
    assert!(err.contains("/nonexistent/dir/f"), "{err}");
    let (code, _, err) = run(b
        .brood()
        .args(["vm", "cp", src.to_str().unwrap(), "cp1:/tmp"]));
    assert_eq!(code, 125);
    assert!(err.contains("directory"), "{err}");
    let (code, _, err) = run(b.brood().args(["vm", "cp", "a", "b"]));
    assert_eq!(code, 125);
    assert!(err.contains("NAME:/path"), "{err}");
    // --stdin streams 3 MiB, four times the old cap, and returns the code.
    let mut child = b
        .brood()
        .args(["vm", "exec", "cp1", "wc -c; exit 4", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..48 {
            stdin.write_all(&chunk).unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3145728");
}

#[test]
fn ssh_says_plainly_that_the_default_image_has_no_sshd() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "1024"]);
    start_vm(&b, "ssh1");
    let (code, _, err) = run(b.brood().args(["vm", "ssh", "ssh1"]));
    assert_eq!(code, 125);
    assert!(err.contains("no sshd"), "{err}");
    assert!(err.contains("brood vm exec -t ssh1"), "{err}");
}

/// The lines of the README's "Day one" block, comments cut.
fn readme_day_one() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = readme
        .split("## Day one")
        .nth(1)
        .expect("a Day one section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    block
        .lines()
        .map(|l| l.split("   #").next().unwrap_or(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn every_day_one_readme_example_runs() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "day one\n").unwrap();
    std::fs::set_permissions(
        dir.path().join("notes.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let bin_dir = brood_e2e::brood_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |line: &str| {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(line)
            .current_dir(dir.path())
            .env("BROOD_DATA_DIR", &b.data)
            .env("PATH", &path)
            .env_remove("BROOD_HOST")
            .env_remove("BROOD_TOKEN");
        c
    };
    let lines = readme_day_one();
    assert!(lines.len() >= 10, "{lines:?}");
    for line in &lines {
        if line.contains("exec -t") {
            let mut t = Pty::spawn(&mut shell(line), 24, 80);
            t.type_in(b"echo in-the-$((1+1))-tty; exit\n");
            t.expect("in-the-2-tty");
            assert_eq!(t.wait(), 0, "{line}: {}", t.text());
        } else if line.contains("vm console") {
            let mut t = Pty::spawn(&mut shell(line), 24, 80);
            t.expect("detach with Ctrl-]");
            t.type_in(b"\x1d");
            assert_eq!(t.wait(), 0, "{line}: {}", t.text());
        } else if line.contains("vm ssh") {
            let (code, _, err) = run(&mut shell(line));
            assert_eq!(code, 125, "{line}");
            assert!(err.contains("no sshd"), "{line}: {err}");
        } else if line.contains("show wbe") {
            let (code, _, err) = run(&mut shell(line));
            assert_eq!(code, 125, "{line}");
            assert!(err.contains("did you mean \"web\""), "{line}: {err}");
        } else if line.starts_with("source <(") {
            // The completion it loads offers the VM's name.
            let (code, out, err) = run(&mut shell(&format!(
                "{line}; COMP_WORDS=(brood vm show w); COMP_CWORD=3; _brood_dynamic; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\""
            )));
            assert_eq!(code, 0, "{line}: {err}");
            assert!(out.lines().any(|l| l == "web"), "{line}: {out}");
        } else {
            let (code, out, err) = run(&mut shell(line));
            assert_eq!(code, 0, "{line}: {out}{err}");
            if line.contains("vm list") {
                assert!(out.contains("512 MiB"), "{line}: {out}");
            }
            if line.contains("wc -c") {
                assert_eq!(out.trim(), "5000000", "{line}");
            }
        }
    }
    let back = dir.path().join("back.txt");
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "day one\n");
    let mode = std::fs::metadata(&back).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the mode went in and came back");
}

#[test]
fn autostart_starts_a_stopped_vm_when_broodd_starts() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "1024"]);
    let (code, out, err) =
        run(b
            .brood()
            .args(["vm", "define", "auto1", "--memory", "256M", "--autostart"]));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(b
        .brood()
        .args(["vm", "define", "plain1", "--memory", "256M"]));
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = run(b.brood().args(["vm", "show", "auto1"]));
    assert!(out.contains("autostart"), "{out}");
    b.restart();
    let state = |name: &str| {
        let v = b.ok("GET", &format!("/v1/partitions/{name}"), None);
        v["run_state"].as_str().unwrap_or_default().to_string()
    };
    assert!(
        wait_until(Duration::from_secs(60), || state("auto1") == "running"),
        "auto1 is {}; broodd's log:\n{}",
        state("auto1"),
        b.log()
    );
    assert_eq!(state("plain1"), "stopped");
    let (code, out, err) = run(b.brood().args(["vm", "delete", "auto1", "--force"]));
    assert_eq!(code, 0, "{out}{err}");
}
