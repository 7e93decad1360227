//! A by-hand probe of a booted guest: plays the host on the agent's
//! virtio-serial chardev socket and prints timings.
//!
//! ```text
//! host_probe [--fork] AGENT_SOCK [-- QEMU ARGV...]
//! ```
//!
//! With a QEMU command line it starts QEMU itself (in its own process group,
//! killed on exit whatever happens) and measures the wall time from spawn to
//! `Ready`. It then runs a few execs, a 5 MB output, a named-point round trip
//! and powers the guest off. `PROBE_EXEC="cmd"` runs one more shell command
//! first and prints its output. Not a test: the committed VM tests live elsewhere.
//!
//! `--fork` checks the fork steps on one VM without a real fork: it sends
//! `PrepareFork` and `CompleteFork` to the same guest, several times, and
//! shows with exec what changed (hostname, MACs, IPv4, default route,
//! machine-id, the child files, the dependent services' environment) and
//! how long each `CompleteFork` took. Boot the guest with a virtio-net NIC
//! on user networking (gateway 10.0.2.2) and an image with a dependent
//! service that writes `env` to /tmp/dependent.env.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use brood_proto::{
    ChildConfig, Command, Decoded, ExecRequest, ExecStatus, FORK_POINT, FrameDecoder, GuestMsg,
    HostMsg, Ipv4Config, ReadFileRequest, Stream, encode_frame,
};

/// Kills QEMU's whole process group when dropped.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let pgid = i32::try_from(self.0.id()).unwrap();
        // SAFETY: kill(2) with a negative pid signals that process group,
        // which QEMU leads (process_group(0) at spawn).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

struct Host {
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u32,
}

impl Host {
    fn send(&mut self, msg: &HostMsg) -> u32 {
        self.next_id += 1;
        self.stream
            .write_all(&encode_frame(self.next_id, msg).unwrap())
            .unwrap();
        self.next_id
    }

    fn recv(&mut self) -> (u32, GuestMsg) {
        let mut buf = [0u8; 65536];
        loop {
            match self.decoder.next_frame() {
                Some(Decoded::Frame(f)) => return (f.id, f.decode().unwrap()),
                Some(Decoded::Fault(fault)) => panic!("bad frame from the guest: {fault}"),
                None => {}
            }
            let n = self.stream.read(&mut buf).expect("read the agent socket");
            assert!(n > 0, "the guest closed the channel");
            self.decoder.push(&buf[..n]);
        }
    }

    /// Sends a request and returns its replies up to the final one; prints
    /// unsolicited messages that arrive meanwhile.
    fn call(&mut self, msg: &HostMsg) -> Vec<GuestMsg> {
        let id = self.send(msg);
        let mut replies = Vec::new();
        loop {
            let (rid, reply) = self.recv();
            if rid != id {
                println!("  (unsolicited id {rid}: {reply:?})");
                continue;
            }
            let last = reply.is_final();
            replies.push(reply);
            if last {
                return replies;
            }
        }
    }

    fn exec(&mut self, req: ExecRequest) -> (Vec<u8>, Vec<u8>, ExecStatus, usize) {
        let (mut out, mut err, mut chunks) = (Vec::new(), Vec::new(), 0);
        for reply in self.call(&HostMsg::Exec(req)) {
            match reply {
                GuestMsg::Output { stream, data } => {
                    chunks += 1;
                    match stream {
                        Stream::Stdout => out.extend_from_slice(&data),
                        Stream::Stderr => err.extend_from_slice(&data),
                    }
                }
                GuestMsg::Exited(status) => return (out, err, status, chunks),
                other => panic!("exec failed: {other:?}"),
            }
        }
        panic!("no Exited");
    }
}

fn connect(path: &str, deadline: Instant) -> UnixStream {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => panic!("connect {path}: {err}"),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let fork_mode = args.first().is_some_and(|a| a == "--fork");
    if fork_mode {
        args.remove(0);
    }
    let sock = args
        .first()
        .expect("usage: host_probe [--fork] AGENT_SOCK [-- QEMU ARGV...]");
    let qemu_argv = args.iter().position(|a| a == "--").map(|i| &args[i + 1..]);
    let spawned = Instant::now();
    let mut qemu = qemu_argv.map(|argv| {
        let (prog, rest) = argv.split_first().expect("empty QEMU command");
        Qemu(
            Process::new(prog)
                .args(rest)
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn QEMU"),
        )
    });
    let stream = connect(sock, spawned + Duration::from_secs(10));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let connected = spawned.elapsed();
    let mut host = Host {
        stream,
        decoder: FrameDecoder::new(),
        next_id: 0,
    };

    let (id, ready) = host.recv();
    let wall_ready = spawned.elapsed();
    let GuestMsg::Ready(ready) = ready else {
        panic!("expected Ready, got id {id} {ready:?}")
    };
    println!(
        "Ready: agent {} proto {}; guest uptime {} ms; wall time spawn->connect {}, spawn->Ready {}",
        ready.agent_version,
        ready.proto_version,
        ready.uptime_ms,
        ms(connected),
        ms(wall_ready)
    );

    // PROBE_EXEC="shell command": run it first and print its output (dmesg, timings).
    if let Ok(cmd) = std::env::var("PROBE_EXEC") {
        let (out, err, st, _) = host.exec(ExecRequest::shell(cmd.clone()));
        println!(
            "--- {cmd} ({:?})\n{}{}---",
            st.code,
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
    }

    if fork_mode {
        fork_probe(&mut host);
        power_off(&mut host, qemu.as_mut());
        return;
    }

    let t = Instant::now();
    let (out, _, st, _) = host.exec(ExecRequest {
        command: Command::Argv(vec!["cat".into(), "/proc/version".into()]),
        ..ExecRequest::shell("")
    });
    println!(
        "exec cat /proc/version ({}): code {:?}: {}",
        ms(t.elapsed()),
        st.code,
        String::from_utf8_lossy(&out).trim()
    );
    let t = Instant::now();
    let (_, _, st, _) = host.exec(ExecRequest::shell("exit 7"));
    println!("exec `exit 7` ({}): code {:?}", ms(t.elapsed()), st.code);
    assert_eq!(st.code, Some(7));

    let t = Instant::now();
    let (out, _, st, chunks) = host.exec(ExecRequest::shell("head -c 5000000 /dev/zero"));
    let took = t.elapsed();
    println!(
        "exec 5 MB stdout ({}): {} bytes in {chunks} chunks, stdout_len {}, {:.1} MB/s",
        ms(took),
        out.len(),
        st.stdout_len,
        5.0 / took.as_secs_f64()
    );
    assert_eq!(out.len(), 5_000_000);

    let t = Instant::now();
    let (_, _, st, _) = host.exec(ExecRequest::shell(
        "brood-agent announce fork --timeout 60 > /tmp/answer 2>&1 &",
    ));
    println!(
        "exec announce in background ({}): code {:?}",
        ms(t.elapsed()),
        st.code
    );
    let point = loop {
        match host.recv() {
            (0, GuestMsg::Point(p)) => break p,
            other => println!("  (while waiting for the point: {other:?})"),
        }
    };
    println!(
        "Point {{ seq: {}, name: {:?} }} after {}",
        point.seq,
        point.name,
        ms(t.elapsed())
    );
    let t = Instant::now();
    let answered = host.call(&HostMsg::AnswerPoint {
        seq: point.seq,
        message: b"you are child 1".to_vec(),
    });
    println!("AnswerPoint -> {:?} ({})", answered, ms(t.elapsed()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let reply = host.call(&HostMsg::ReadFile(ReadFileRequest {
            path: "/tmp/answer".into(),
            offset: 0,
            max_len: 4096,
        }));
        if let [GuestMsg::FileData(fd)] = reply.as_slice()
            && fd.data.as_slice() == b"you are child 1"
        {
            break String::from_utf8_lossy(&fd.data).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "answer never reached the file: {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    println!(
        "/tmp/answer holds {text:?} {} after the answer",
        ms(t.elapsed())
    );

    let t = Instant::now();
    let wrong = host.call(&HostMsg::AnswerPoint {
        seq: point.seq,
        message: vec![],
    });
    println!("second AnswerPoint -> {wrong:?} ({})", ms(t.elapsed()));

    let info = host.call(&HostMsg::Info);
    println!("Info -> {info:?}");
    let renamed = host.call(&HostMsg::SetHostname {
        hostname: "child-1".into(),
    });
    let (out, _, _, _) = host.exec(ExecRequest::shell(
        "hostname; cat /etc/hostname; ls /dev/vport*",
    ));
    println!(
        "SetHostname -> {renamed:?}; guest says {:?}",
        String::from_utf8_lossy(&out)
    );

    let t = Instant::now();
    let (out, _, st, _) = host.exec(ExecRequest::shell("sleep 100 & echo started"));
    println!(
        "exec `sleep 100 & echo started` ({}): code {:?}, {:?}",
        ms(t.elapsed()),
        st.code,
        String::from_utf8_lossy(&out)
    );

    // virtio_console: read() returns 0 while the host is away; the agent
    // must wait for the host to come back rather than give up.
    host.stream.shutdown(std::net::Shutdown::Both).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    host.stream = connect(sock, Instant::now() + Duration::from_secs(5));
    host.stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    host.decoder = FrameDecoder::new();
    let t = Instant::now();
    let info = host.call(&HostMsg::Info);
    println!(
        "after reconnecting: Info -> ok={} ({})",
        matches!(info.as_slice(), [GuestMsg::Info(_)]),
        ms(t.elapsed())
    );

    // Kill the agent: init respawns it a second later and it sends Ready again.
    let t = Instant::now();
    host.send(&HostMsg::Exec(ExecRequest::shell("kill -9 $PPID")));
    let ready = loop {
        match host.recv() {
            (0, GuestMsg::Ready(r)) => break r,
            other => println!("  (while the agent restarts: {other:?})"),
        }
    };
    println!(
        "agent respawned: Ready at uptime {} ms, {} after the kill",
        ready.uptime_ms,
        ms(t.elapsed())
    );
    let (out, _, _, _) = host.exec(ExecRequest::shell(
        "ps -o pid,ppid,stat,args | grep -v ' ps '",
    ));
    println!("guest processes:\n{}", String::from_utf8_lossy(&out));

    power_off(&mut host, qemu.as_mut());
}

fn power_off(host: &mut Host, qemu: Option<&mut Qemu>) {
    let t = Instant::now();
    let off = host.call(&HostMsg::PowerOff);
    println!("PowerOff -> {off:?} ({})", ms(t.elapsed()));
    if let Some(q) = qemu {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = q.0.try_wait().unwrap() {
                println!("QEMU exited ({status}) {} after PowerOff", ms(t.elapsed()));
                break;
            }
            if Instant::now() > deadline {
                println!("QEMU still running 20 s after PowerOff; killing it");
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Bytes from the host's /dev/urandom.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

fn child_config(index: u8) -> ChildConfig {
    ChildConfig {
        index: u32::from(index),
        hostname: format!("child-{index}"),
        macs: vec![[0x52, 0x54, 0x00, 0x12, 0x34, index]],
        ipv4: Some(Ipv4Config {
            address: [10, 0, 2, 100 + index],
            prefix: 24,
            gateway: Some([10, 0, 2, 2]),
        }),
        identity: Some(format!("dom-{index}")),
        entropy: random_bytes(64),
        machine_id: random_bytes(16)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        values: vec![
            ("class".into(), "dns".into()),
            ("zone.name".into(), "example.org".into()),
        ],
        time_unix_ns: 0,
    }
}

fn shell(host: &mut Host, cmd: &str) -> String {
    let (out, err, _, _) = host.exec(ExecRequest::shell(cmd));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    )
}

const STATE: &str = "echo \"hostname: $(hostname) / $(cat /etc/hostname)\"; \
    echo \"eth0: $(cat /sys/class/net/eth0/address) $(cat /sys/class/net/eth0/operstate)\"; \
    ip -4 addr show dev eth0 | grep inet; ip route; \
    echo \"machine-id: $(cat /etc/machine-id)\"; \
    echo \"child.json: $(cat /etc/brood/child.json 2>&1)\"; \
    echo \"identity: $(cat /etc/brood/identity 2>&1)\"";

fn prepare(host: &mut Host) -> u32 {
    let t = Instant::now();
    let reply = host.call(&HostMsg::PrepareFork);
    let took = t.elapsed();
    match reply.as_slice() {
        [GuestMsg::AtForkPoint { seq, services }] => {
            println!("PrepareFork -> AtForkPoint {{ seq: {seq} }} ({})", ms(took));
            for s in services {
                println!(
                    "  independent {}: code {:?}, {} ms, output {:?}",
                    s.name, s.code, s.duration_ms, s.output
                );
            }
            *seq
        }
        other => panic!("PrepareFork failed: {other:?}"),
    }
}

/// Sends CompleteFork; returns the wall time to ForkDone.
fn complete(host: &mut Host, seq: u32, config: ChildConfig, verbose: bool) -> Duration {
    let t = Instant::now();
    let reply = host.call(&HostMsg::CompleteFork { seq, config });
    let took = t.elapsed();
    let [GuestMsg::ForkDone(report)] = reply.as_slice() else {
        panic!("CompleteFork failed: {reply:?}")
    };
    assert_eq!(report.failed, None, "{report:?}");
    if verbose {
        println!(
            "CompleteFork {seq} -> ForkDone in {} (uptime {} ms)",
            ms(took),
            report.uptime_ms
        );
        for s in &report.services {
            println!(
                "  dependent {}: code {:?}, {} ms, output {:?}",
                s.name, s.code, s.duration_ms, s.output
            );
        }
    }
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fork_probe(host: &mut Host) {
    println!("--- before\n{}---", shell(host, STATE));

    let seq = prepare(host);
    let again = prepare(host);
    println!("second PrepareFork: seq {again} (independent services not rerun)");
    println!(
        "independent.log: {:?}",
        shell(host, "cat /tmp/independent.log")
    );

    complete(host, seq, child_config(7), true);
    println!("--- after child 7\n{}---", shell(host, STATE));
    println!("dependent.env:\n{}", shell(host, "cat /tmp/dependent.env"));
    println!(
        "ping gateway: {}",
        shell(
            host,
            "ping -c 1 -W 2 10.0.2.2 >/dev/null 2>&1 && echo ok || echo failed"
        )
    );
    let wrong = host.call(&HostMsg::CompleteFork {
        seq,
        config: child_config(8),
    });
    println!("second CompleteFork at {seq} -> {wrong:?}");
    complete(host, again, child_config(8), true);

    // The local caller: `brood-agent fork-point` in the guest.
    let t = Instant::now();
    shell(
        host,
        "(brood-agent fork-point --timeout 60 > /tmp/fp.json 2>&1; echo $? > /tmp/fp.rc) >/dev/null 2>&1 &",
    );
    let point = loop {
        match host.recv() {
            (0, GuestMsg::Point(p)) if p.name == FORK_POINT => break p,
            other => println!("  (while waiting for the fork point: {other:?})"),
        }
    };
    println!(
        "fork-point announced as seq {} after {}",
        point.seq,
        ms(t.elapsed())
    );
    complete(host, point.seq, child_config(9), true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rc = shell(host, "cat /tmp/fp.rc 2>/dev/null");
        if !rc.is_empty() {
            println!(
                "fork-point exited {} with {}",
                rc.trim(),
                shell(host, "cat /tmp/fp.json")
            );
            break;
        }
        assert!(Instant::now() < deadline, "fork-point never exited");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Timing: CompleteFork -> ForkDone, with the dependent service, then without.
    let mut with = Vec::new();
    for i in 0..7u8 {
        let seq = prepare_quiet(host);
        with.push(complete(host, seq, child_config(20 + i), false));
    }
    shell(host, "rm /etc/brood/services/dependent/*");
    let mut without = Vec::new();
    for i in 0..7u8 {
        let seq = prepare_quiet(host);
        without.push(complete(host, seq, child_config(40 + i), false));
    }
    println!(
        "CompleteFork -> ForkDone, 7 runs each: with the dependent service median {} {:?}; \
         identity only median {} {:?}",
        ms(median(with.clone())),
        with.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        ms(median(without.clone())),
        without.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    println!("--- at the end\n{}---", shell(host, STATE));
}

fn prepare_quiet(host: &mut Host) -> u32 {
    match host.call(&HostMsg::PrepareFork).as_slice() {
        [GuestMsg::AtForkPoint { seq, .. }] => *seq,
        other => panic!("PrepareFork failed: {other:?}"),
    }
}
