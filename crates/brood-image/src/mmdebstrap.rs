//! Running the host tools of a Debian image build: `mmdebstrap` (the root
//! file system from Debian packages), `dpkg-query` on it, `mkfs.ext4` and
//! `qemu-img`. Also where the mirror comes from: the host's own apt sources,
//! so a host that can `apt-get update` can build images.
//!
//! mmdebstrap's failures are read from its stderr and turned into the
//! errors a user can act on (unknown package, unknown suite, unreachable
//! mirror, full disk); anything else is reported with its last lines.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ImageError;
use crate::manifest::PackageInfo;

/// The apt source files read for the mirror, in apt's order.
const SOURCES_LIST: &str = "/etc/apt/sources.list";
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
/// The most stderr lines kept for an error message.
const TAIL_LINES: usize = 12;
/// The longest stderr line kept (longer ones are cut).
const MAX_LINE: usize = 1024;

/// Whether `program` is on `PATH`.
pub(crate) fn have(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|d| d.join(program).is_file())
}

/// Fails with [`ImageError::ToolMissing`] unless every tool is installed.
pub(crate) fn check_tools() -> Result<(), ImageError> {
    for (program, package) in [
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
        ("dpkg-query", "dpkg"),
    ] {
        if !have(program) {
            return Err(ImageError::ToolMissing { program, package });
        }
    }
    Ok(())
}

/// The Debian mirror of the host's apt sources: the first `deb` source whose
/// URI's last path segment is `debian` (not `debian-security`).
pub(crate) fn host_mirror() -> Result<String, ImageError> {
    let mut files = vec![PathBuf::from(SOURCES_LIST)];
    if let Ok(entries) = std::fs::read_dir(SOURCES_DIR) {
        let mut more: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let deb822 = file.extension().is_some_and(|e| e == "sources");
        if let Some(m) = mirror_in(&text, deb822) {
            return Ok(m);
        }
    }
    Err(ImageError::NoMirror)
}

/// The mirror in one sources file (one-line or deb822 format).
pub(crate) fn mirror_in(text: &str, deb822: bool) -> Option<String> {
    let is_debian = |uri: &str| {
        (uri.starts_with("http://") || uri.starts_with("https://"))
            && uri.trim_end_matches('/').rsplit('/').next() == Some("debian")
    };
    if deb822 {
        for stanza in text.split("\n\n") {
            let mut types_deb = false;
            let mut uris = Vec::new();
            for line in stanza.lines() {
                if let Some(v) = line.strip_prefix("Types:") {
                    types_deb = v.split_whitespace().any(|t| t == "deb");
                } else if let Some(v) = line.strip_prefix("URIs:") {
                    uris.extend(v.split_whitespace().map(String::from));
                }
            }
            if types_deb && let Some(u) = uris.into_iter().find(|u| is_debian(u)) {
                return Some(u.trim_end_matches('/').to_string());
            }
        }
        return None;
    }
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb ") || l.starts_with("deb\t"))
        .find_map(|l| {
            l.split_whitespace()
                .skip(1)
                .find(|w| !w.starts_with('['))
                .filter(|u| is_debian(u))
                .map(|u| u.trim_end_matches('/').to_string())
        })
}

/// What [`bootstrap`] is asked to make.
#[derive(Debug)]
pub(crate) struct Bootstrap<'a> {
    pub suite: &'a str,
    pub mirror: &'a str,
    pub variant: &'a str,
    pub packages: &'a [String],
    pub target: &'a Path,
    /// SOURCE_DATE_EPOCH for reproducible timestamps.
    pub epoch: u64,
}

/// Runs mmdebstrap, passing each of its `I:` lines to `line`.
pub(crate) fn bootstrap(b: &Bootstrap<'_>, line: &mut dyn FnMut(&str)) -> Result<(), ImageError> {
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--mode=root")
        .arg(format!("--variant={}", b.variant))
        .arg("--format=directory")
        .arg("--aptopt=Acquire::Retries \"3\"");
    if !b.packages.is_empty() {
        cmd.arg(format!("--include={}", b.packages.join(",")));
    }
    cmd.arg(b.suite)
        .arg(b.target)
        .arg(b.mirror)
        .env("LC_ALL", "C")
        .env("SOURCE_DATE_EPOCH", b.epoch.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| ImageError::ToolSpawn {
        program: "mmdebstrap",
        source,
    })?;
    let mut tail = VecDeque::new();
    if let Some(stderr) = child.stderr.take() {
        read_lines(stderr, |l| {
            if l.starts_with("I: ") {
                line(l);
            }
            if tail.len() == 64 {
                tail.pop_front();
            }
            tail.push_back(l.to_string());
        });
    }
    let status = child.wait().map_err(|source| ImageError::ToolSpawn {
        program: "mmdebstrap",
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.into();
    Err(
        classify(&tail, b).unwrap_or_else(|| ImageError::ToolFailed {
            program: "mmdebstrap",
            status,
            detail: last_lines(&tail),
        }),
    )
}

/// Reads `r` line by line (each cut at [`MAX_LINE`] bytes), lossily decoded.
fn read_lines(r: impl Read, mut f: impl FnMut(&str)) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                buf.truncate(MAX_LINE);
                let text = String::from_utf8_lossy(&buf);
                f(text.trim_end());
            }
        }
    }
}

fn last_lines(tail: &[String]) -> String {
    let start = tail.len().saturating_sub(TAIL_LINES);
    tail.get(start..).unwrap_or_default().join(" | ")
}

/// Turns mmdebstrap's last stderr lines into the error they mean.
pub(crate) fn classify(tail: &[String], b: &Bootstrap<'_>) -> Option<ImageError> {
    let mirror = b.mirror.to_string();
    for l in tail {
        if let Some(rest) = l.split("Unable to locate package ").nth(1) {
            return Some(ImageError::UnknownPackage {
                package: rest.split_whitespace().next().unwrap_or("").to_string(),
                suite: b.suite.to_string(),
                mirror,
            });
        }
        if l.contains("has no installation candidate") {
            let package = l.split('\'').nth(1).unwrap_or("").to_string();
            return Some(ImageError::UnknownPackage {
                package,
                suite: b.suite.to_string(),
                mirror,
            });
        }
        if l.contains("does not have a Release file") {
            return Some(ImageError::UnknownSuite {
                suite: b.suite.to_string(),
                mirror,
            });
        }
        if l.contains("No space left on device") {
            // target is <images>/.build-NAME-*/rootfs: name the images
            // directory, which outlives the build directory.
            let images = b.target.parent().and_then(Path::parent);
            return Some(ImageError::DiskFull {
                dir: images.unwrap_or(b.target).to_path_buf(),
            });
        }
    }
    const NET: [&str; 6] = [
        "Could not resolve",
        "Temporary failure resolving",
        "Could not connect",
        "Connection refused",
        "Connection timed out",
        "Failed to fetch",
    ];
    tail.iter()
        .find(|l| NET.iter().any(|n| l.contains(n)))
        .map(|l| ImageError::MirrorUnreachable {
            mirror,
            detail: l.trim_start_matches("E: ").trim().to_string(),
        })
}

/// Every installed package in the root file system at `root`, sorted.
pub(crate) fn installed_packages(root: &Path) -> Result<Vec<PackageInfo>, ImageError> {
    let admindir = root.join("var/lib/dpkg");
    let out = run(
        "dpkg-query",
        Command::new("dpkg-query")
            .arg(format!("--admindir={}", admindir.display()))
            .args(["-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"]),
    )?;
    let mut packages = parse_installed(&out);
    packages.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(packages)
}

fn parse_installed(out: &str) -> Vec<PackageInfo> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let status = f.next()?;
            let package = f.next()?.trim();
            let version = f.next()?.trim();
            (status.starts_with("ii") && !package.is_empty()).then(|| PackageInfo {
                package: package.to_string(),
                version: version.to_string(),
            })
        })
        .collect()
}

/// Runs a tool to completion; its stdout on success, its stderr in the error.
pub(crate) fn run(program: &'static str, cmd: &mut Command) -> Result<String, ImageError> {
    let out = cmd
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::ToolSpawn { program, source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<String> = stderr.lines().map(String::from).collect();
        return Err(ImageError::ToolFailed {
            program,
            status: out.status,
            detail: last_lines(&lines),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b<'a>(target: &'a Path) -> Bootstrap<'a> {
        Bootstrap {
            suite: "bookworm",
            mirror: "http://m/debian",
            variant: "minbase",
            packages: &[],
            target,
            epoch: 0,
        }
    }

    #[test]
    fn mirror_from_both_source_formats() {
        let one = "# c\ndeb [signed-by=/k] http://deb.debian.org/debian/ bookworm main\n";
        assert_eq!(
            mirror_in(one, false).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            mirror_in(
                "deb http://security.debian.org/debian-security x main\n",
                false
            ),
            None
        );
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: s\n\n\
                      Types: deb deb-src\nURIs: https://mirror.example/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_in(deb822, true).as_deref(),
            Some("https://mirror.example/debian")
        );
        assert_eq!(
            mirror_in("Types: deb-src\nURIs: http://x/debian\n", true),
            None
        );
    }

    #[test]
    fn mmdebstrap_errors_are_named() {
        let t = Path::new("/i/.build-x/rootfs");
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = classify(
            &lines(&[
                "Building dependency tree...",
                "E: Unable to locate package nope",
            ]),
            &b(t),
        );
        assert!(
            matches!(&e, Some(ImageError::UnknownPackage { package, .. }) if package == "nope"),
            "{e:?}"
        );
        let e = classify(
            &lines(&["E: Package 'vim' has no installation candidate"]),
            &b(t),
        );
        assert!(
            matches!(&e, Some(ImageError::UnknownPackage { package, .. }) if package == "vim"),
            "{e:?}"
        );
        let e = classify(
            &lines(&[
                "E: The repository 'http://m/debian nosuch Release' does not have a Release file.",
            ]),
            &b(t),
        );
        assert!(matches!(e, Some(ImageError::UnknownSuite { .. })), "{e:?}");
        let e = classify(
            &lines(&["E: Failed to fetch http://x/InRelease  Could not resolve 'x'"]),
            &b(t),
        );
        assert!(
            matches!(&e, Some(ImageError::MirrorUnreachable { detail, .. }) if detail.contains("Could not resolve")),
            "{e:?}"
        );
        let e = classify(
            &lines(&["tar: write error: No space left on device"]),
            &b(t),
        );
        assert!(matches!(e, Some(ImageError::DiskFull { .. })), "{e:?}");
        assert!(classify(&lines(&["E: something else"]), &b(t)).is_none());
    }

    #[test]
    fn installed_packages_parse() {
        let p = parse_installed("ii \tcurl\t7.88\nrc \told\t1\nii \tdash\t0.5\ngarbage\n");
        let names: Vec<_> = p.iter().map(|p| p.package.as_str()).collect();
        assert_eq!(names, ["curl", "dash"]);
    }
}
