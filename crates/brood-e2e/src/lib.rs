//! Helpers for brood's end-to-end tests, which boot real VMs.
//!
//! Every test gets a [`TestEnv`]: its own run directory under /dev/shm (so
//! tests never share sockets or memory files and run in parallel), an engine
//! rooted there, and [`TestEnv::assert_clean`] to prove that nothing the test
//! started is left: no run directory entry, no QEMU process, no tap. The
//! guest image is the default one that `scripts/setup` builds; the tests do
//! not skip when it is missing, they fail and say how to build it.

#![allow(clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use brood_engine::{QemuConfig, QemuEngine, VmSpec};

pub mod cluster;

/// Kernel and initrd of the default guest image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs with brood-agent.
    pub initrd: PathBuf,
}

/// brood's data directory as the CLI resolves it for root.
pub fn data_dir() -> PathBuf {
    std::env::var_os("BROOD_DATA_DIR")
        .map_or_else(|| PathBuf::from("/var/lib/brood"), PathBuf::from)
}

/// The default image; panics with instructions when it has not been built.
pub fn image() -> Image {
    let dir = data_dir().join("images/default");
    let m = brood_image::read_manifest(&dir).unwrap_or_else(|e| {
        panic!(
            "no default guest image in {} ({e}); run scripts/setup first",
            dir.display()
        )
    });
    Image {
        kernel: m.outputs.kernel.path_in(&dir),
        initrd: m.outputs.initrd.path_in(&dir),
    }
}

/// The `brood` binary built next to this test binary (`target/<profile>/brood`).
pub fn brood_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BROOD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/brood
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("brood");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// One test's private corner of the host.
#[derive(Debug)]
pub struct TestEnv {
    dir: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// A fresh run root under /dev/shm.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brood-e2e-")
            .tempdir_in("/dev/shm")
            .expect("create a run dir in /dev/shm");
        Self { dir }
    }

    /// The run root VMs of this test live under.
    pub fn run_root(&self) -> &Path {
        self.dir.path()
    }

    /// A QEMU engine rooted in this test's run directory.
    pub fn engine(&self) -> QemuEngine {
        let mut cfg = QemuConfig::detect();
        cfg.run_root = self.run_root().join("vms");
        QemuEngine::new(cfg)
    }

    /// A spec for the default image.
    pub fn spec(&self, name: &str) -> VmSpec {
        let img = image();
        let mut s = VmSpec::new(name, img.kernel);
        s.initrd = Some(img.initrd);
        s
    }

    /// A `brood` command that runs its VMs under this test's run root.
    pub fn brood(&self) -> Command {
        let mut c = Command::new(brood_bin());
        c.env("BROOD_RUN_DIR", self.run_root().join("vms"));
        c
    }

    /// Pids of QEMU processes whose command line mentions this test's run
    /// root (a forked child's names its run directory in `-pidfile`).
    pub fn qemu_pids(&self) -> Vec<i32> {
        let needle = self.run_root().as_os_str().as_encoded_bytes().to_vec();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if cmd.windows(needle.len()).any(|w| w == needle.as_slice()) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Asserts that no QEMU of this test runs and no VM run directory is left.
    /// Waits briefly: a VM killed an instant ago may still be being reaped.
    pub fn assert_clean(&self) {
        let vms = self.run_root().join("vms");
        let templates = self.run_root().join("vms-templates");
        let ok = wait_until(Duration::from_secs(10), || {
            let left = std::fs::read_dir(&vms).map(|d| d.count()).unwrap_or(0)
                + std::fs::read_dir(&templates)
                    .map(|d| d.count())
                    .unwrap_or(0);
            left == 0 && self.qemu_pids().is_empty()
        });
        let entries: Vec<String> = std::fs::read_dir(&vms)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            ok,
            "left behind: run dirs {entries:?}, QEMU pids {:?}",
            self.qemu_pids()
        );
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Whatever a failing test left running dies with it.
        for pid in self.qemu_pids() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

/// Polls `cond` with a short backoff until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Names of network interfaces that are taps made by brood (`brtapN`).
pub fn brood_taps() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("brtap"))
                .collect()
        })
        .unwrap_or_default()
}

/// A Linux bridge that exists for the life of the value.
#[derive(Debug)]
pub struct Bridge {
    /// Its name.
    pub name: String,
}

impl Bridge {
    /// Creates and brings up a bridge with a name unique to this process.
    pub fn new(tag: &str) -> Self {
        let name = format!("brt{}{}", tag, std::process::id() % 100_000);
        let name: String = name.chars().take(15).collect();
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        run(Command::new("ip").args(["link", "add", &name, "type", "bridge"]));
        run(Command::new("ip").args(["link", "set", &name, "up"]));
        Self { name }
    }

    /// Names of the interfaces enslaved to it.
    pub fn ports(&self) -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.name))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// Runs a host command and panics with its output when it fails.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Builds an initramfs at `out` whose /init is the shell script `init`,
/// with busybox from the host: a guest without brood-agent.
pub fn busybox_initrd(out: &Path, init: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    for d in ["bin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", r.join("bin/sh")).expect("symlink");
    std::fs::write(r.join("init"), init).expect("write init");
    run(Command::new("chmod").arg("755").arg(r.join("init")));
    let cpio = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | sort | cpio -o -H newc --quiet > {}",
            r.display(),
            out.display()
        ))
        .output()
        .expect("run cpio");
    assert!(
        cpio.status.success(),
        "cpio: {}",
        String::from_utf8_lossy(&cpio.stderr)
    );
}

/// A broodd started for one test, on its own data directory, with the
/// default guest image and its VMs under the test's run root. Killed (not
/// stopped) when dropped; the test's `TestEnv` kills its VMs.
#[derive(Debug)]
pub struct Broodd {
    /// Its data directory.
    pub data: PathBuf,
    args: Vec<String>,
    run_root: PathBuf,
    image: PathBuf,
    envs: Vec<(String, String)>,
    child: Option<std::process::Child>,
}

impl Broodd {
    /// Starts broodd with extra arguments (capacity flags, say).
    pub fn start(env: &TestEnv, extra: &[&str]) -> Self {
        Self::start_with_image(env, &data_dir().join("images/default"), extra)
    }

    /// Starts broodd with its guests booting the image in `image`.
    pub fn start_with_image(env: &TestEnv, image: &Path, extra: &[&str]) -> Self {
        Self::launch(env, image, &[], extra)
    }

    /// Starts broodd with extra environment variables (until `set_envs`).
    pub fn start_with_env(env: &TestEnv, envs: &[(&str, &str)], extra: &[&str]) -> Self {
        Self::launch(env, &data_dir().join("images/default"), envs, extra)
    }

    fn launch(env: &TestEnv, image: &Path, envs: &[(&str, &str)], extra: &[&str]) -> Self {
        let data = env.run_root().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let mut b = Self {
            data,
            args: extra.iter().map(|s| s.to_string()).collect(),
            run_root: env.run_root().join("vms"),
            image: image.to_path_buf(),
            envs: Vec::new(),
            child: None,
        };
        b.set_envs(envs);
        b.spawn();
        b
    }

    /// The environment variables the next (re)start gets.
    pub fn set_envs(&mut self, envs: &[(&str, &str)]) {
        self.envs = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Where its VMs' run directories are.
    pub fn run_root(&self) -> &Path {
        &self.run_root
    }

    fn spawn(&mut self) {
        let bin = brood_bin().with_file_name("broodd");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.join("broodd.log"))
            .expect("log file");
        let child = Command::new(&bin)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--run-dir")
            .arg(&self.run_root)
            .arg("--image")
            .arg(&self.image)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.child = Some(child);
        let sock = self.socket();
        // Up means this broodd answers a request (401 without a token), not
        // only that something accepts on the socket's path.
        let mut exited = None;
        let up = wait_until(Duration::from_secs(60), || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                exited = Some(status);
                return true;
            }
            http(&sock, "GET", "/v1/partitions", None, None, None).0 != 0
        });
        assert!(
            up && exited.is_none(),
            "broodd did not come up ({}); its log:\n{}",
            exited.map_or("no answer in 60 s".to_string(), |s| format!(
                "it exited: {s}"
            )),
            self.log()
        );
    }

    /// Whether its process is still running (false once it exited or was killed).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.data.join("broodd.sock")
    }

    /// Its token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("token"))
            .expect("token")
            .trim()
            .to_string()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("broodd.log")).unwrap_or_default()
    }

    /// Kills it with SIGKILL (its VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again after `kill9`.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// One request: returns status and body as JSON (Null for an empty body).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) = http(
            &self.socket(),
            method,
            path,
            Some(&self.token()),
            body.as_deref(),
            None,
        );
        let json = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        };
        (status, json)
    }

    /// A request that must succeed (2xx).
    pub fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let (s, v) = self.call(method, path, body);
        assert!((200..300).contains(&s), "{method} {path} -> {s}: {v}");
        v
    }

    /// Runs a shell command in partition `name`: exit code, stdout, stderr.
    pub fn exec(&self, name: &str, cmd: &str) -> (i64, String, String) {
        use base64::Engine as _;
        let r = self.ok(
            "POST",
            &format!("/v1/partitions/{name}/exec"),
            Some(&serde_json::json!({"command": cmd})),
        );
        let decode = |k: &str| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(r[k].as_str().unwrap_or_default())
                .unwrap_or_default();
            String::from_utf8_lossy(&b).into_owned()
        };
        (
            r["exit_code"].as_i64().unwrap_or(-1),
            decode("stdout_base64"),
            decode("stderr_base64"),
        )
    }

    /// Asserts that `GET /v1/ledger/verify` finds every invariant holding.
    pub fn verify_ok(&self) {
        let v = self.ok("GET", "/v1/ledger/verify", None);
        if v["ok"] != true {
            // What broodd logged about the VMs verify names, to tell a race from a leak.
            let log = self.log();
            let mut lines: Vec<&str> = Vec::new();
            for p in v["problems"].as_array().into_iter().flatten() {
                let msg = p["message"].as_str().unwrap_or_default();
                for word in msg.split([' ', ',']) {
                    if word.len() >= 8 {
                        lines.extend(log.lines().filter(|l| l.contains(word)));
                    }
                }
            }
            lines.dedup();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "verify: {v}\nbroodd's log about them:\n{}\nbroodd's last lines:\n{}",
                lines.join("\n"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// A `brood` command pointed at this daemon.
    pub fn brood(&self) -> Command {
        let mut c = Command::new(brood_bin());
        c.env("BROOD_DATA_DIR", &self.data)
            .env_remove("BROOD_HOST")
            .env_remove("BROOD_TOKEN");
        c
    }
}

impl Broodd {
    /// Stops it with SIGTERM, as an administrator would, and waits; its VMs
    /// keep running, and VMs that already ended are cleaned up on the way out.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap_or(0));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            let exited = wait_until(Duration::from_secs(10), || {
                c.try_wait().ok().flatten().is_some()
            });
            if !exited {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Broodd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.1 client over a unix socket, for tests: one request per
/// connection. `content_type` overrides `application/json`. Status 0 means
/// the daemon could not be reached or closed the connection without a reply.
pub fn http(
    sock: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    content_type: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(300))).ok();
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: broodd\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            content_type.unwrap_or("application/json"),
            body.len()
        ));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    // A server may answer (413) before reading a large body.
    let _ = s.write_all(body.as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The Debian service image (`brood image build --service`) in
/// [`data_dir`], built at most once per test binary run (the build itself
/// is skipped when the image is up to date with its inputs). Returns its
/// directory.
pub fn service_image() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            run(Command::new(brood_bin())
                .env("BROOD_DATA_DIR", data_dir())
                .args(["image", "build", "--service"]));
            data_dir().join("images/service")
        })
        .clone()
}

/// The text of the first fenced block of language `lang` (```sh,
/// ```yaml) after `marker` in README.md.
pub fn readme_fenced(marker: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let after = readme
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("README.md has no {marker:?}"));
    after
        .split(&format!("```{lang}\n"))
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap_or_else(|| panic!("no ```{lang} block after {marker:?} in README.md"))
        .to_string()
}

/// The command lines of the first ```sh block after `marker` in README.md,
/// without their `   # comments` and blank lines.
pub fn readme_sh_lines(marker: &str) -> Vec<String> {
    readme_fenced(marker, "sh")
        .lines()
        .map(|l| l.split("   #").next().unwrap_or(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

impl Broodd {
    /// Runs a README line with `sh -c` in `cwd` (the current directory when
    /// `None`), this build's `brood` first on `PATH` and pointed at this
    /// daemon; panics with its output (and the daemon's log) when it fails.
    pub fn sh(&self, line: &str, cwd: Option<&Path>) -> std::process::Output {
        let bin = brood_bin();
        let path = format!(
            "{}:{}",
            bin.parent().expect("target dir").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(line)
            .env("PATH", &path)
            .env("BROOD_DATA_DIR", &self.data)
            .env_remove("BROOD_HOST")
            .env_remove("BROOD_TOKEN");
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let o = cmd.output().expect("run sh");
        assert!(
            o.status.success(),
            "README line failed: {line}\n{}\n{}\nbroodd's log:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        o
    }
}
