//! The agent proper on a real guest: find the virtio-serial port named
//! [`brood_proto::AGENT_PORT_NAME`], open it and serve on it.
//!
//! There is no udev in the guest. The kernel lists ports under
//! `/sys/class/virtio-ports/<vportNpM>/name` and devtmpfs creates
//! `/dev/<vportNpM>`, so the directory name is the device name. The port may
//! appear some time after the agent starts (modules are still probing) and
//! its `name` is empty until the host's PORT_NAME control message arrives,
//! so the agent polls with a bounded backoff.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brood_proto::AGENT_PORT_NAME;

use crate::fork::ForkSettings;
use crate::point::POINT_SOCKET;
use crate::serve::{OnEof, ServeConfig, ServeError, serve};
use crate::system::LinuxMachine;

/// Where the kernel lists virtio-serial ports.
pub const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// Where devtmpfs creates their device nodes.
pub const DEV_DIR: &str = "/dev";
/// How long to wait for the port before giving up (init then respawns the agent).
pub const PORT_WAIT: Duration = Duration::from_secs(30);
const BACKOFF_FIRST: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Errors of finding, opening and serving on the port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// No port with the name appeared in time.
    #[error("no virtio-serial port named {name:?} appeared within {waited:?}")]
    NotFound {
        /// The port name.
        name: String,
        /// How long the agent waited.
        waited: Duration,
    },
    /// The port's device could not be opened.
    #[error("open {path}")]
    Open {
        /// The device.
        path: PathBuf,
        /// What open reported.
        #[source]
        source: io::Error,
    },
    /// The serving loop ended.
    #[error("serve on {path}")]
    Serve {
        /// The device.
        path: PathBuf,
        /// Why serving ended.
        #[source]
        source: ServeError,
    },
}

/// The device path of the port called `name`, if `ports_dir` lists it.
pub fn find_port(ports_dir: &Path, dev_dir: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(ports_dir).ok()?;
    entries.flatten().find_map(|entry| {
        let label = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (label.trim_end_matches('\n') == name).then(|| dev_dir.join(entry.file_name()))
    })
}

/// Waits up to `timeout` for the port called `name` and opens it read/write.
pub fn open_port(
    ports_dir: &Path,
    dev_dir: &Path,
    name: &str,
    timeout: Duration,
) -> Result<(File, PathBuf), PortError> {
    let start = Instant::now();
    let mut backoff = BACKOFF_FIRST;
    loop {
        if let Some(path) = find_port(ports_dir, dev_dir, name) {
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => return Ok((file, path)),
                // The node may lag behind sysfs; a dying agent may still hold
                // the port (virtio_console allows one opener: EBUSY).
                Err(err)
                    if err.kind() == io::ErrorKind::NotFound
                        || err.raw_os_error() == Some(libc::EBUSY) =>
                {
                    if start.elapsed() >= timeout {
                        return Err(PortError::Open { path, source: err });
                    }
                }
                Err(source) => return Err(PortError::Open { path, source }),
            }
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(PortError::NotFound {
                name: name.to_owned(),
                waited,
            });
        }
        std::thread::sleep(backoff.min(timeout - waited));
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Finds the agent port, serves on it, and returns only when serving fails.
/// Keeps a shell on the serial console meanwhile ([`crate::pty`]).
pub fn run() -> Result<(), PortError> {
    crate::pty::spawn_console_shell();
    let (file, path) = open_port(
        Path::new(PORTS_DIR),
        Path::new(DEV_DIR),
        AGENT_PORT_NAME,
        PORT_WAIT,
    )?;
    let reader = file.try_clone().map_err(|source| PortError::Open {
        path: path.clone(),
        source,
    })?;
    log!(
        "serving on {} at {} ms of uptime",
        path.display(),
        crate::system::uptime_ms()
    );
    // A pool member goes to its trigger point once the agent serves.
    crate::trigger::spawn(Path::new(POINT_SOCKET));
    let config = ServeConfig {
        point_socket: Some(PathBuf::from(POINT_SOCKET)),
        on_eof: OnEof::WaitForHost,
        machine: Arc::new(LinuxMachine::new()),
        fork: ForkSettings::default(),
    };
    serve(reader, file, config).map_err(|source| PortError::Serve { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (sys, dev) = (dir.path().join("sys"), dir.path().join("dev"));
        std::fs::create_dir_all(sys.join("vport0p0")).unwrap();
        std::fs::create_dir_all(sys.join("vport0p1")).unwrap();
        std::fs::create_dir_all(sys.join("vport0p2")).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(sys.join("vport0p0/name"), "").unwrap();
        std::fs::write(sys.join("vport0p1/name"), "other\n").unwrap();
        std::fs::write(sys.join("vport0p2/name"), format!("{AGENT_PORT_NAME}\n")).unwrap();
        assert_eq!(
            find_port(&sys, &dev, AGENT_PORT_NAME),
            Some(dev.join("vport0p2"))
        );
        assert_eq!(find_port(&sys, &dev, "missing"), None);
        assert_eq!(find_port(&dir.path().join("none"), &dev, "x"), None);

        std::fs::write(dev.join("vport0p2"), "").unwrap();
        let (_, path) = open_port(&sys, &dev, AGENT_PORT_NAME, Duration::from_secs(1)).unwrap();
        assert_eq!(path, dev.join("vport0p2"));
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_millis(50);
        let err = open_port(dir.path(), dir.path(), "x", timeout).unwrap_err();
        // It waited out its timeout, then named the port it looked for.
        match err {
            PortError::NotFound { name, waited } => {
                assert_eq!(name, "x");
                assert!(waited >= timeout, "gave up after {waited:?}");
            }
            other => panic!("expected NotFound, got {other}"),
        }
    }

    #[test]
    fn waits_for_a_port_that_appears_late() {
        let dir = tempfile::tempdir().unwrap();
        let (sys, dev) = (dir.path().join("sys"), dir.path().join("dev"));
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let (sys2, dev2) = (sys.clone(), dev.clone());
        let maker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::create_dir_all(sys2.join("vport1p1")).unwrap();
            // The name arrives after the port directory, the node last.
            std::fs::write(sys2.join("vport1p1/name"), "").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(sys2.join("vport1p1/name"), AGENT_PORT_NAME).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(dev2.join("vport1p1"), "").unwrap();
        });
        let (_, path) = open_port(&sys, &dev, AGENT_PORT_NAME, Duration::from_secs(5)).unwrap();
        maker.join().unwrap();
        assert_eq!(path, dev.join("vport1p1"));
    }
}
