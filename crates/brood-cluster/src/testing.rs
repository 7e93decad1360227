//! A throw-away PostgreSQL server for tests and benchmarks: a new cluster
//! made with Debian's `initdb` in a temporary directory, served by
//! `pg_ctl` on a free TCP port, stopped and deleted on drop. It runs as the
//! `postgres` user when the caller is root (PostgreSQL refuses root).
//! Blocking by design: tests call it outside their runtime's hot path.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running temporary PostgreSQL server.
#[derive(Debug)]
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    addr: String,
    port: u16,
    run_as: Option<String>,
    durable: bool,
}

impl TempPostgres {
    /// Makes and starts a cluster listening on 127.0.0.1.
    pub fn start() -> Result<TempPostgres, String> {
        TempPostgres::start_on("127.0.0.1")
    }

    /// Like [`TempPostgres::start`], but with `fsync` on, as a production
    /// server runs (for benchmarks; tests keep it off for speed).
    pub fn start_durable() -> Result<TempPostgres, String> {
        TempPostgres::make("127.0.0.1", true)
    }

    /// Makes and starts a cluster listening on `addr` (an address of this
    /// host's network namespace), any client trusted.
    pub fn start_on(addr: &str) -> Result<TempPostgres, String> {
        TempPostgres::make(addr, false)
    }

    fn make(addr: &str, durable: bool) -> Result<TempPostgres, String> {
        let bin = pg_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("brood-pg-")
            .tempdir()
            .map_err(|e| format!("make a temporary directory: {e}"))?;
        let run_as = if nix::unistd::geteuid().is_root() {
            Some("postgres".to_owned())
        } else {
            None
        };
        if let Some(user) = &run_as {
            let u = nix::unistd::User::from_name(user)
                .map_err(|e| format!("look up the {user} user: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "there is no {user} user: install PostgreSQL (apt-get install postgresql)"
                    )
                })?;
            std::os::unix::fs::chown(dir.path(), Some(u.uid.as_raw()), Some(u.gid.as_raw()))
                .map_err(|e| format!("give {} to {user}: {e}", dir.path().display()))?;
        }
        let port = free_port(addr)?;
        let pg = TempPostgres {
            dir,
            bin,
            addr: addr.to_owned(),
            port,
            run_as,
            durable,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-U",
                "brood",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let hba = pg.data().join("pg_hba.conf");
        let mut text =
            std::fs::read_to_string(&hba).map_err(|e| format!("read pg_hba.conf: {e}"))?;
        text.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, text).map_err(|e| format!("write pg_hba.conf: {e}"))?;
        pg.start_server()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The URL to connect to (database `postgres`, user `brood`).
    pub fn url(&self) -> String {
        format!("postgres://brood@{}:{}/postgres", self.addr, self.port)
    }

    /// Runs `sql` with `psql` and returns its rows, one per line, columns
    /// separated by `|` (`psql -At`).
    pub fn query(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([&self.url(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "psql -c {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Stops the server, keeps it away for `away`, and starts it again: a
    /// PostgreSQL restart in the middle of what a test is doing.
    pub fn restart(&self, away: std::time::Duration) -> Result<(), String> {
        self.stop_server()?;
        std::thread::sleep(away);
        self.start_server()
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_server(&self) -> Result<(), String> {
        let opts = format!(
            "-c listen_addresses={} -p {} -k {} -c fsync={} -c synchronous_commit=on",
            self.addr,
            self.port,
            self.dir.path().display(),
            if self.durable { "on" } else { "off" }
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-o",
                &opts,
                "-l",
                &self.dir.path().join("log").display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Stops the server (`fast`: open connections are cut).
    pub fn stop_server(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        )
    }

    fn run(&self, prog: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(prog);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // The cluster's directory is the working directory: the postgres
        // user may not be able to enter the caller's.
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| format!("run {}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{prog} {} failed ({}): {}{}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            ))
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

/// Debian's PostgreSQL binaries: `BROOD_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn pg_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BROOD_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|e| {
            format!(
                "{}: {e}: install PostgreSQL (apt-get install postgresql; scripts/setup does)",
                root.display()
            )
        })?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).ok_or_else(|| {
        format!(
            "no initdb under {}: install PostgreSQL (apt-get install postgresql)",
            root.display()
        )
    })
}

fn free_port(addr: &str) -> Result<u16, String> {
    let l = TcpListener::bind((addr, 0)).map_err(|e| format!("find a free port on {addr}: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("find a free port on {addr}: {e}"))
}
