//! The test harness shared by the integration tests: a recording
//! [`Machine`] double and [`Host`], which serves an agent over a
//! `UnixStream` pair and plays the host on it.
//!
//! The double records every machine-wide action instead of taking it, so
//! the tests never rename the machine running them, power it off, or touch
//! its interfaces, routes or RNG.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use brood_agent::fork::ForkSettings;
use brood_agent::net::NetError;
use brood_agent::serve::{OnEof, ServeConfig, ServeError, serve};
use brood_agent::system::{Machine, SystemError};
use brood_proto::{
    Decoded, ErrorKind, FrameDecoder, GuestMsg, HostMsg, Ipv4Config, PROTOCOL_VERSION, encode_frame,
};

/// A machine that records what it was asked to do, in order.
#[derive(Debug)]
pub struct FakeMachine {
    /// One line per call: `hostname NAME`, `mac IFACE MAC`,
    /// `ipv4 IFACE ADDR/PREFIX via GW`, `rng LEN`.
    pub calls: Mutex<Vec<String>>,
    pub power_offs: Mutex<u32>,
    /// How many ethernet interfaces (`eth0`..) exist.
    pub nics: usize,
}

impl Default for FakeMachine {
    fn default() -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
            power_offs: Mutex::new(0),
            nics: 1,
        }
    }
}

impl FakeMachine {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn nic(&self, iface: &str) -> Result<(), SystemError> {
        let exists = iface
            .strip_prefix("eth")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n < self.nics);
        if exists {
            Ok(())
        } else {
            Err(NetError::NoInterface {
                iface: iface.to_owned(),
            }
            .into())
        }
    }
}

pub fn mac_text(mac: &[u8; 6]) -> String {
    brood_agent::child::format_mac(mac)
}

impl Machine for FakeMachine {
    fn set_hostname(&self, hostname: &str) -> Result<(), SystemError> {
        self.record(format!("hostname {hostname}"));
        Ok(())
    }
    fn power_off(&self) -> Result<(), SystemError> {
        *self.power_offs.lock().unwrap() += 1;
        Ok(())
    }
    fn set_mac(&self, iface: &str, mac: [u8; 6]) -> Result<(), SystemError> {
        self.nic(iface)?;
        self.record(format!("mac {iface} {}", mac_text(&mac)));
        Ok(())
    }
    fn mac(&self, iface: &str) -> Result<[u8; 6], SystemError> {
        self.nic(iface)?;
        Ok([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])
    }
    fn set_ipv4(&self, iface: &str, config: &Ipv4Config) -> Result<(), SystemError> {
        self.nic(iface)?;
        let [a, b, c, d] = config.address;
        let via = config
            .gateway
            .map(|[a, b, c, d]| format!(" via {a}.{b}.{c}.{d}"))
            .unwrap_or_default();
        self.record(format!(
            "ipv4 {iface} {a}.{b}.{c}.{d}/{}{via}",
            config.prefix
        ));
        Ok(())
    }
    fn reseed_rng(&self, entropy: &[u8]) -> Result<(), SystemError> {
        self.record(format!("rng {}", entropy.len()));
        Ok(())
    }
    fn set_clock(&self, unix_ns: u64) -> Result<(), SystemError> {
        self.record(format!("clock {unix_ns}"));
        Ok(())
    }
    fn hostname(&self) -> Result<String, SystemError> {
        Ok("template".into())
    }
}

/// The host side of a served `UnixStream` pair.
pub struct Host {
    pub stream: UnixStream,
    decoder: FrameDecoder,
    /// Replies read while waiting for another id.
    pub stash: HashMap<u32, Vec<GuestMsg>>,
    pub unsolicited: Vec<GuestMsg>,
    pub machine: Arc<FakeMachine>,
    /// The agent's point socket.
    pub socket: PathBuf,
    /// Where fork reads services and writes the child's files.
    pub fork: ForkSettings,
    pub server: Option<JoinHandle<Result<(), ServeError>>>,
    pub dir: tempfile::TempDir,
}

impl Host {
    pub fn start() -> Self {
        Self::start_with(FakeMachine::default(), Duration::from_secs(60))
    }

    /// An agent with this machine double and service timeout; its fork
    /// paths are under [`Host::dir`].
    pub fn start_with(machine: FakeMachine, service_timeout: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let (host, guest) = UnixStream::pair().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let machine = Arc::new(machine);
        let fork = ForkSettings {
            independent_dir: dir.path().join("services/independent"),
            dependent_dir: dir.path().join("services/dependent"),
            machine_id_file: dir.path().join("etc/machine-id"),
            child_file: dir.path().join("etc/brood/child.json"),
            identity_file: dir.path().join("etc/brood/identity"),
            service_timeout,
        };
        let config = ServeConfig {
            point_socket: Some(socket.clone()),
            on_eof: OnEof::Stop,
            machine: machine.clone(),
            fork: fork.clone(),
        };
        let reader = guest.try_clone().unwrap();
        let server = std::thread::spawn(move || serve(reader, guest, config));
        let mut host = Host {
            stream: host,
            decoder: FrameDecoder::new(),
            stash: HashMap::new(),
            unsolicited: Vec::new(),
            machine,
            socket,
            fork,
            server: Some(server),
            dir,
        };
        match host.recv() {
            (0, GuestMsg::Ready(ready)) => {
                assert_eq!(ready.proto_version, PROTOCOL_VERSION);
                assert_eq!(ready.agent_version, brood_agent::VERSION);
            }
            other => panic!("expected Ready, got {other:?}"),
        }
        host
    }

    pub fn send(&mut self, id: u32, msg: &HostMsg) {
        self.send_raw(&encode_frame(id, msg).unwrap());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn recv(&mut self) -> (u32, GuestMsg) {
        let mut buf = [0u8; 65536];
        loop {
            match self.decoder.next_frame() {
                Some(Decoded::Frame(f)) => return (f.id, f.decode().unwrap()),
                Some(Decoded::Fault(fault)) => panic!("agent sent a bad frame: {fault}"),
                None => {}
            }
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "agent closed the channel");
            self.decoder.push(&buf[..n]);
        }
    }

    /// Every message for `id` up to and including the final one.
    pub fn replies(&mut self, id: u32) -> Vec<GuestMsg> {
        let mut got = self.stash.remove(&id).unwrap_or_default();
        while !got.last().is_some_and(GuestMsg::is_final) {
            let (rid, msg) = self.recv();
            if rid == id {
                got.push(msg);
            } else if rid == 0 {
                self.unsolicited.push(msg);
            } else {
                self.stash.entry(rid).or_default().push(msg);
            }
        }
        got
    }

    pub fn request(&mut self, id: u32, msg: &HostMsg) -> GuestMsg {
        self.send(id, msg);
        let mut replies = self.replies(id);
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies.pop().unwrap()
    }

    /// The next unsolicited (id 0) message.
    pub fn unsolicited(&mut self) -> GuestMsg {
        if !self.unsolicited.is_empty() {
            return self.unsolicited.remove(0);
        }
        loop {
            let (id, msg) = self.recv();
            if id == 0 {
                return msg;
            }
            self.stash.entry(id).or_default().push(msg);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(server) = self.server.take()
            && !std::thread::panicking()
        {
            server.join().unwrap().unwrap();
        }
    }
}

pub fn error_kind(msg: &GuestMsg) -> ErrorKind {
    match msg {
        GuestMsg::Error(e) => e.kind,
        other => panic!("expected an error, got {other:?}"),
    }
}
