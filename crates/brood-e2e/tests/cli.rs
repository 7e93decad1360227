//! `brood run` as a user runs it: output, exit codes, JSON, a custom kernel
//! and initramfs on the console, every bad input, and signals; after each,
//! nothing is left behind.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::process::{Command, Stdio};
use std::time::Duration;

use brood_e2e::{TestEnv, busybox_initrd, image, wait_until};

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run brood");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_prints_output_and_exits_with_the_command_code() {
    let env = TestEnv::new();
    let (code, out, err) = output(env.brood().args(["run", "--exec", "cat /proc/version"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Linux version") && out.contains("Debian"),
        "{out}"
    );
    env.assert_clean();

    let (code, out, _) =
        output(
            env.brood()
                .args(["run", "--exec", "echo seven; echo oops >&2; exit 7"]),
        );
    assert_eq!(code, 7);
    assert_eq!(out, "seven\n");
    env.assert_clean();
}

#[test]
fn run_json_reports_result_and_timings() {
    let env = TestEnv::new();
    let (code, out, err) = output(env.brood().args([
        "run",
        "--json",
        "--memory",
        "192",
        "--vcpus",
        "2",
        "--exec",
        "nproc; exit 3",
    ]));
    assert_eq!(code, 3, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["stdout"], "2\n");
    assert_eq!(v["vm"]["accel"], "tcg");
    assert!(v["timings_ms"]["agent_ready"].as_u64().unwrap() > 0);
    env.assert_clean();
}

#[test]
fn custom_kernel_and_initrd_boot_with_console() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    busybox_initrd(
        &initrd,
        "#!/bin/sh\n/bin/busybox echo custom-init-says-hello\n/bin/busybox poweroff -f\n",
    );
    let img = image();
    let (code, out, err) = output(
        env.brood()
            .args(["run", "--console", "--kernel"])
            .arg(&img.kernel)
            .arg("--initrd")
            .arg(&initrd),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("custom-init-says-hello"), "{out}");
    env.assert_clean();
}

#[test]
fn bad_input_gets_one_line_errors_and_leaves_nothing() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let check = |args: &[&str], expect: &str| {
        let (code, _, err) = output(env.brood().args(args));
        assert_ne!(code, 0, "{args:?} should fail");
        assert_eq!(code, 125, "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err:?}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        env.assert_clean();
    };
    check(
        &["run", "--kernel", "/nonexistent/vmlinuz", "--exec", "true"],
        "/nonexistent/vmlinuz",
    );
    check(
        &["run", "--memory", "100000000", "--exec", "true"],
        "does not fit",
    );
    check(&["run", "--vcpus", "0", "--exec", "true"], "vcpus 0");
    check(
        &["run", "--disk", "/nonexistent.img", "--exec", "true"],
        "/nonexistent.img",
    );

    let garbage = dir.path().join("garbage.img");
    std::fs::write(&garbage, vec![0x42u8; 4096]).unwrap();
    let g = garbage.to_str().unwrap();
    check(
        &["run", "--initrd", g, "--exec", "true"],
        "not a cpio archive",
    );

    // Valid gzip magic, corrupt body: the kernel cannot unpack it and
    // panics; QEMU exits and brood says so.
    let corrupt = dir.path().join("corrupt.img");
    let mut bytes = vec![0x1f, 0x8b, 0x08, 0x00];
    bytes.extend(std::iter::repeat_n(0x5au8, 8192));
    std::fs::write(&corrupt, bytes).unwrap();
    check(
        &[
            "run",
            "--initrd",
            corrupt.to_str().unwrap(),
            "--ready-timeout",
            "60",
            "--exec",
            "true",
        ],
        "QEMU exited",
    );

    // An initramfs without the agent never says ready.
    let silent = dir.path().join("silent.cpio");
    busybox_initrd(&silent, "#!/bin/sh\nexec /bin/busybox sleep 1000\n");
    let k = img.kernel.to_str().unwrap();
    check(
        &[
            "run",
            "--kernel",
            k,
            "--initrd",
            silent.to_str().unwrap(),
            "--ready-timeout",
            "5",
            "--exec",
            "true",
        ],
        "guest agent",
    );
}

#[test]
fn sigterm_and_sigint_kill_the_vm_and_clean_up() {
    let env = TestEnv::new();
    for (sig, code) in [
        (nix::sys::signal::SIGTERM, 143),
        (nix::sys::signal::SIGINT, 130),
    ] {
        let mut child = env
            .brood()
            .args(["run", "--exec", "echo started; sleep 600"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the command runs in the guest.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 8];
        std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
        assert_eq!(&first, b"started\n");
        assert_eq!(env.qemu_pids().len(), 1);
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code));
        assert!(wait_until(Duration::from_secs(5), || env
            .qemu_pids()
            .is_empty()));
        env.assert_clean();
    }
}
