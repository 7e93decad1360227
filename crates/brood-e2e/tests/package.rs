//! The Debian package: `scripts/package` builds it from the binaries the
//! tests use, and this checks what a user who installs it gets: the
//! binaries at their paths and runnable, broodd's systemd unit valid for
//! this systemd, manual pages for every command, shell completions, and
//! maintainer scripts that parse. (Installing it for real needs a host
//! whose systemd is PID 1; this machine's is not.)

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_debian_package_installs_a_service_with_man_pages_and_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let deb = run(Command::new(repo().join("scripts/package"))
        .args(["--debug", "--no-build", "--out"])
        .arg(&out));
    let deb = PathBuf::from(deb.trim());
    assert!(deb.starts_with(&out), "{}", deb.display());

    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for want in [
        "Package: brood",
        "Architecture: amd64",
        "qemu-system-x86 (>= 1:8.2)",
        "linux-image-cloud-amd64",
        "postinst",
    ] {
        assert!(info.contains(want), "{want} not in:\n{info}");
    }

    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for line in contents.lines() {
        assert!(line.contains("root/root"), "not owned by root: {line}");
    }

    // The binaries run from where the package puts them.
    let version = run(Command::new(root.join("usr/bin/brood")).arg("--version"));
    assert!(version.starts_with("brood "), "{version}");
    let version = run(Command::new(root.join("usr/sbin/broodd")).arg("--version"));
    assert!(version.starts_with("broodd "), "{version}");
    let ldd = run(Command::new("ldd").arg(root.join("usr/lib/brood/brood-agent")));
    assert!(ldd.contains("statically linked"), "{ldd}");

    // The unit is valid for this systemd (unknown keys and bad values are
    // warnings, so stderr must stay empty too) and names the packaged broodd.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/broodd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/sbin/broodd "), "{unit}");
    assert!(unit.contains("KillMode=process"), "{unit}");
    assert!(unit.contains("WantedBy=multi-user.target"), "{unit}");
    let local = tmp.path().join("broodd.service");
    let broodd = root.join("usr/sbin/broodd");
    std::fs::write(
        &local,
        unit.replace("/usr/sbin/broodd", broodd.to_str().unwrap()),
    )
    .unwrap();
    let v = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&local)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success() && err.trim().is_empty(), "{err}");

    // A manual page per command, rendered by man, and broodd's in section 8.
    let man1 = root.join("usr/share/man/man1");
    for page in [
        "brood.1.gz",
        "brood-vm-create.1.gz",
        "brood-fork.1.gz",
        "brood-template-create.1.gz",
    ] {
        assert!(man1.join(page).is_file(), "{page} missing");
    }
    let page = run(Command::new("man")
        .arg("-l")
        .arg(man1.join("brood-vm-create.1.gz"))
        .env("MANWIDTH", "100"));
    assert!(page.contains("--memory"), "{page}");
    let page = run(Command::new("man")
        .arg("-l")
        .arg(root.join("usr/share/man/man8/broodd.8.gz")));
    assert!(page.contains("--data-dir"), "{page}");

    // Completions for three shells; bash's parses and completes `brood vm`.
    let bash = root.join("usr/share/bash-completion/completions/brood");
    run(Command::new("bash").arg("-n").arg(&bash));
    assert!(
        root.join("usr/share/zsh/vendor-completions/_brood")
            .is_file()
    );
    assert!(
        root.join("usr/share/fish/vendor_completions.d/brood.fish")
            .is_file()
    );
    let words = run(Command::new("bash").arg("-c").arg(format!(
        "source {}; COMP_WORDS=(brood vm cr); COMP_CWORD=2; COMP_LINE='brood vm cr'; COMP_POINT=11; _brood brood cr vm; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        bash.display()
    )));
    assert!(words.lines().any(|w| w == "create"), "{words}");

    // The maintainer scripts parse.
    for s in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh")
            .arg("-n")
            .arg(repo().join("packaging/debian").join(s)));
    }
}
