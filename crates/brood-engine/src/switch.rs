//! The switch I/O partition: a userspace learning switch, one process per
//! network zone, serving every network of its zone. Each network is a
//! broadcast domain of its own inside the switch: a frame never leaves the
//! network it came from, and networks of another zone are in another
//! process.
//!
//! Ports are the unix stream sockets QEMU listens on for each `Switch` NIC
//! (`-netdev stream,server=on`): the switch connects to them. The wire
//! format is QEMU's (net/stream.c): each frame is preceded by its length
//! as a 4-byte big-endian number, with no virtio-net header. A network may
//! also have a tap on the host (its gateway address), opened by name: the
//! tap is persistent (broodd creates it), so it and its address outlive a
//! switch that dies.
//!
//! Why a switch of brood's own and not Open vSwitch or vde_switch: restart
//! without losing guests is the point, and here QEMU is the server of every
//! port. When the switch dies, QEMU notices the closed stream and listens
//! again; a restarted switch reads its configuration and connects to every
//! port at once. Nothing in the guest or in QEMU waits for a reconnect timer
//! and nothing has to be replayed to QEMU. OVS's userspace datapath
//! (vhost-user client ports) would do the same but weighs a database
//! server and a daemon per host; vde_switch is the client-server the wrong
//! way round for this (QEMU must reconnect to it) and is not packaged with
//! the stream protocol QEMU 10 speaks.
//!
//! A port may be capped (`caps`, Mbit/s): a token bucket per direction in
//! the switch itself, not `tc` on a tap, because a guest's NIC here is a
//! socket and no tap: the bucket paces the port's reader (from the guest)
//! and writer (to the guest).
//!
//! The configuration is a JSON file ([`SwitchConfig`]) broodd rewrites
//! (atomically); the switch reads it again every 200 ms and on SIGHUP. Everything read from a port
//! is guest input: a frame longer than [`MAX_FRAME`] closes the port.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::EngineError;

/// Longest frame accepted from a port: QEMU's largest packet without
/// offloads (`NET_BUFSIZE`, 4096 + 65536 bytes) fits.
pub const MAX_FRAME: usize = 69_632;
/// Frames queued for one port before the switch drops more (a slow guest
/// loses frames, as on a real switch, and slows no other).
const PORT_QUEUE: usize = 256;
/// How often ports that are down are tried again.
const RETRY: Duration = Duration::from_millis(200);

/// What one switch process serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// The networks of the zone.
    pub networks: Vec<SwitchNetwork>,
}

/// One network (a broadcast domain) of a switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchNetwork {
    /// Its name.
    pub name: String,
    /// The host's tap on it (its gateway), if any.
    #[serde(default)]
    pub tap: Option<String>,
    /// The port sockets of its guests' NICs.
    #[serde(default)]
    pub ports: Vec<PathBuf>,
    /// Bandwidth caps in Mbit/s, by port socket: each direction of a
    /// capped port is a token bucket of its own (see [`Bucket`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub caps: BTreeMap<PathBuf, u32>,
}

/// A token bucket: `rate` bytes a second, at most `burst` bytes ahead.
/// A frame always passes (a bucket may go into debt), and the caller waits
/// until the debt is paid: the port's reader stops reading its socket, so
/// the guest's queue fills and its TCP slows down, instead of frames being
/// dropped inside the switch.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A bucket for `mbps` Mbit/s with a burst of 10 ms of traffic (at
    /// least two of the largest frames).
    pub fn new(mbps: u32) -> Self {
        let rate = f64::from(mbps.max(1)) * 125_000.0;
        let burst = (rate / 100.0).max(2.0 * MAX_FRAME as f64);
        Self {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes `n` bytes at `now`; returns how long to wait before the next.
    pub fn take(&mut self, n: usize, now: Instant) -> Duration {
        let since = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + since * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Waits as long as the port's bucket (if capped) says after `n` bytes.
async fn pace(bucket: &mut Option<Bucket>, n: usize) {
    if let Some(b) = bucket {
        let wait = b.take(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl SwitchConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::host(format!("read {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| {
            EngineError::InvalidSpec(format!("switch configuration {}: {e}", path.display()))
        })
    }

    /// Writes it to `path` atomically (a temporary file renamed over it).
    pub fn store(&self, path: &Path) -> Result<(), EngineError> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| EngineError::InvalidSpec(format!("switch configuration: {e}")))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| EngineError::host(format!("write {}", path.display()), e))
    }
}

/// Identifies a port inside the switch.
type PortId = u64;

/// Where a port's frames go: its network and its outgoing queue.
#[derive(Debug)]
struct Port {
    key: String,
    network: String,
    tx: mpsc::Sender<Vec<u8>>,
}

/// The forwarding state: ports and learned MACs, per network.
#[derive(Debug, Default)]
struct Fabric {
    next: PortId,
    ports: HashMap<PortId, Port>,
    macs: HashMap<(String, [u8; 6]), PortId>,
    /// What is connected: port sockets and taps by name.
    up: HashSet<String>,
}

impl Fabric {
    fn add(&mut self, key: String, network: &str, tx: mpsc::Sender<Vec<u8>>) -> PortId {
        self.next += 1;
        self.ports.insert(
            self.next,
            Port {
                key: key.clone(),
                network: network.to_owned(),
                tx,
            },
        );
        self.up.insert(key);
        self.next
    }

    fn remove(&mut self, id: PortId, key: &str) {
        self.ports.remove(&id);
        self.macs.retain(|_, p| *p != id);
        self.up.remove(key);
    }

    /// Forwards a frame that came in on `from`.
    fn forward(&mut self, from: PortId, frame: &[u8]) {
        let Some(network) = self.ports.get(&from).map(|p| p.network.clone()) else {
            return;
        };
        let (Some(dst), Some(src)) = (mac_at(frame, 0), mac_at(frame, 6)) else {
            return;
        };
        if src[0] & 1 == 0 {
            self.macs.insert((network.clone(), src), from);
        }
        let known = (dst[0] & 1 == 0)
            .then(|| self.macs.get(&(network.clone(), dst)).copied())
            .flatten();
        match known {
            Some(to) if to == from => {}
            Some(to) => {
                if let Some(p) = self.ports.get(&to) {
                    let _ = p.tx.try_send(frame.to_vec());
                }
            }
            None => {
                for (id, p) in &self.ports {
                    if *id != from && p.network == network {
                        let _ = p.tx.try_send(frame.to_vec());
                    }
                }
            }
        }
    }
}

fn mac_at(frame: &[u8], at: usize) -> Option<[u8; 6]> {
    frame.get(at..at + 6)?.try_into().ok()
}

type Shared = Arc<Mutex<Fabric>>;

fn lock(f: &Shared) -> std::sync::MutexGuard<'_, Fabric> {
    // A panic while holding the lock cannot leave the maps half-changed in
    // a way that matters: keep switching.
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the switch on the configuration at `config` until the process is
/// killed: connects every port, re-reads the file on SIGHUP, and retries
/// ports that are down.
pub async fn run(config: &Path) -> Result<(), EngineError> {
    let fabric: Shared = Arc::default();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| EngineError::host("listen for SIGHUP", e))?;
    let mut cfg = SwitchConfig::load(config)?;
    loop {
        connect_missing(&fabric, &cfg);
        tokio::select! {
            _ = hup.recv() => {}
            () = tokio::time::sleep(RETRY) => {}
        }
        // Re-read at each round too: broodd rewrites the file (atomically)
        // and needs no signal, so no SIGHUP can reach a switch that has
        // not installed its handler yet (and die of it).
        match SwitchConfig::load(config) {
            Ok(c) if c != cfg => {
                drop_removed(&fabric, &c);
                cfg = c;
            }
            Ok(_) => {}
            Err(e) => eprintln!("brood-switch: keeping the old configuration: {e}"),
        }
    }
}

/// Closes ports no longer configured (their tasks end when their queue does).
fn drop_removed(fabric: &Shared, cfg: &SwitchConfig) {
    let wanted: HashSet<String> = cfg
        .networks
        .iter()
        .flat_map(|n| {
            n.ports
                .iter()
                .map(|p| p.display().to_string())
                .chain(n.tap.iter().map(|t| format!("tap:{t}")))
        })
        .collect();
    let mut f = lock(fabric);
    let gone: Vec<PortId> = f
        .ports
        .iter()
        .filter(|(_, p)| !wanted.contains(&p.key))
        .map(|(id, _)| *id)
        .collect();
    for id in gone {
        f.ports.remove(&id);
        f.macs.retain(|_, p| *p != id);
    }
    f.up.retain(|k| wanted.contains(k));
}

fn connect_missing(fabric: &Shared, cfg: &SwitchConfig) {
    for net in &cfg.networks {
        for path in &net.ports {
            let key = path.display().to_string();
            if lock(fabric).up.contains(&key) {
                continue;
            }
            // Connecting to a listening unix socket completes at once or
            // fails at once; a port that is not there yet is tried again.
            let Ok(std) = std::os::unix::net::UnixStream::connect(path) else {
                continue;
            };
            if std.set_nonblocking(true).is_err() {
                continue;
            }
            let Ok(stream) = UnixStream::from_std(std) else {
                continue;
            };
            let (tx, rx) = mpsc::channel(PORT_QUEUE);
            let id = lock(fabric).add(key.clone(), &net.name, tx);
            let cap = net.caps.get(path).copied();
            tokio::spawn(serve_stream(fabric.clone(), id, key, stream, rx, cap));
        }
        if let Some(tap) = &net.tap {
            let key = format!("tap:{tap}");
            if lock(fabric).up.contains(&key) {
                continue;
            }
            match open_tap(tap) {
                Ok(fd) => {
                    let (tx, rx) = mpsc::channel(PORT_QUEUE);
                    let id = lock(fabric).add(key.clone(), &net.name, tx);
                    tokio::spawn(serve_tap(fabric.clone(), id, key, fd, rx));
                }
                Err(e) => eprintln!("brood-switch: tap {tap}: {e}"),
            }
        }
    }
}

async fn serve_stream(
    fabric: Shared,
    id: PortId,
    key: String,
    stream: UnixStream,
    mut rx: mpsc::Receiver<Vec<u8>>,
    cap_mbps: Option<u32>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (mut from_guest, mut to_guest) = (cap_mbps.map(Bucket::new), cap_mbps.map(Bucket::new));
    let reader = async {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let mut len = [0u8; 4];
            rd.read_exact(&mut len).await?;
            let n = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
            let Some(frame) = buf.get_mut(..n) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a {n}-byte frame is over {MAX_FRAME}"),
                ));
            };
            rd.read_exact(frame).await?;
            lock(&fabric).forward(id, frame);
            pace(&mut from_guest, n).await;
        }
    };
    let writer = async {
        while let Some(frame) = rx.recv().await {
            pace(&mut to_guest, frame.len()).await;
            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX).to_be_bytes();
            wr.write_all(&len).await?;
            wr.write_all(&frame).await?;
        }
        Ok::<(), io::Error>(())
    };
    let _ = tokio::select! { r = reader => r, r = writer => r };
    lock(&fabric).remove(id, &key);
}

async fn serve_tap(
    fabric: Shared,
    id: PortId,
    key: String,
    fd: OwnedFd,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    // SAFETY: `fd` is an open descriptor the AsyncFd owns until dropped.
    let Ok(afd) = (unsafe { AsyncFd::register(fd) }) else {
        lock(&fabric).remove(id, &key);
        return;
    };
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        tokio::select! {
            ready = afd.readable() => {
                let Ok(mut guard) = ready else { break };
                // SAFETY: reading into a buffer of `buf.len()` bytes we own
                // from a descriptor we own.
                let n = unsafe {
                    libc::read(afd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                match usize::try_from(n) {
                    Ok(n) => {
                        if let Some(frame) = buf.get(..n) {
                            lock(&fabric).forward(id, frame);
                        }
                    }
                    Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                    }
                    Err(_) => break,
                }
            }
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                // A tap takes a whole frame per write or none (dropped when full).
                // SAFETY: writing `frame.len()` bytes of a buffer we own.
                let _ = unsafe {
                    libc::write(afd.get_ref().as_raw_fd(), frame.as_ptr().cast(), frame.len())
                };
            }
        }
    }
    lock(&fabric).remove(id, &key);
}

/// Opens persistent tap `name` (made by broodd) as a port.
fn open_tap(name: &str) -> Result<OwnedFd, EngineError> {
    let fd = crate::net::open_tap(name, false)?;
    // SAFETY: plain fcntl on a descriptor we own.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if fl < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(EngineError::host(
            format!("make tap {name} non-blocking"),
            io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00, 1, 2, 3]);
        f
    }

    #[test]
    fn floods_then_learns_and_keeps_networks_apart() {
        let mut f = Fabric::default();
        let (ta, mut ra) = mpsc::channel(8);
        let (tb, mut rb) = mpsc::channel(8);
        let (tc, mut rc) = mpsc::channel(8);
        let a = f.add("a".into(), "n1", ta);
        let b = f.add("b".into(), "n1", tb);
        let _c = f.add("c".into(), "n2", tc);
        let (ma, mb) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        // Unknown destination: flooded within n1 only.
        f.forward(a, &frame(mb, ma));
        assert!(rb.try_recv().is_ok());
        assert!(
            rc.try_recv().is_err(),
            "a frame crossed into another network"
        );
        // b answers: a is known now, so only a gets it.
        f.forward(b, &frame(ma, mb));
        assert!(ra.try_recv().is_ok());
        assert!(rc.try_recv().is_err());
        // Broadcast stays in its network.
        f.forward(a, &frame([0xff; 6], ma));
        assert!(rb.try_recv().is_ok());
        assert!(rc.try_recv().is_err());
        // A runt frame is ignored.
        f.forward(a, &[1, 2, 3]);
        f.remove(b, "b");
        assert!(!f.macs.values().any(|p| *p == b));
    }

    #[test]
    fn a_bucket_paces_to_its_rate_after_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(8); // 1 MB/s, burst 139,264 bytes (two frames)
        assert_eq!(b.take(100_000, t0), Duration::ZERO);
        // 100 KB past the rest of the burst: about 61 ms of debt.
        let wait = b.take(100_000, t0);
        assert!((60..=62).contains(&wait.as_millis()), "{wait:?}");
        // After a second the bucket is full again, never fuller.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take(139_264, t1), Duration::ZERO);
        assert!(b.take(1, t1) > Duration::ZERO);
        // Over a long run the bytes sent match the rate.
        let (mut now, mut sent) = (t1, 0usize);
        while now < t1 + Duration::from_secs(10) {
            now += b.take(1500, now);
            sent += 1500;
        }
        let rate = sent as f64 / 10.0;
        assert!((0.99e6..1.03e6).contains(&rate), "{rate}");
    }

    #[test]
    fn config_round_trips_and_refuses_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("switch.json");
        let c = SwitchConfig {
            networks: vec![SwitchNetwork {
                name: "n".into(),
                tap: Some("bn0".into()),
                ports: vec!["/x/nic0.sock".into()],
                caps: [("/x/nic0.sock".into(), 20)].into(),
            }],
        };
        c.store(&p).unwrap();
        assert_eq!(SwitchConfig::load(&p).unwrap(), c);
        std::fs::write(&p, r#"{"networks":[],"x":1}"#).unwrap();
        assert!(SwitchConfig::load(&p).is_err());
    }
}
