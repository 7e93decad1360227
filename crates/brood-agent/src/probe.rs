//! Readiness probes the agent runs itself, without a shell per attempt:
//! a DNS query answered ([`dns_ok`]) and syslog lines stored
//! ([`syslog_ok`]). What the service sends back is read bounded and
//! parsed without trusting it.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

/// The class parameter that makes the agent probe DNS itself: the name to
/// query on 127.0.0.1 at the `port` parameter (53 by default); a name
/// ending in `.bind` is asked as CHAOS TXT (`version.bind`), any other as
/// IN A. The probe passes on an answer with no error and at least one
/// record.
pub const PROBE_DNS_KEY: &str = "probe_dns";
/// The class parameter that makes the agent probe a syslog sink itself:
/// the transports to prove (`udp`, `tcp` or `udp,tcp`); each sends a line
/// to 127.0.0.1 at the `port` parameter (514 by default) and the probe
/// passes once every line is in the `file` parameter's file.
pub const PROBE_SYSLOG_KEY: &str = "probe_syslog";
/// Largest DNS answer read.
const MAX_DNS_ANSWER: usize = 512;
/// How much of the end of a sink's file is searched for the probe's lines.
const SYSLOG_TAIL: u64 = 64 * 1024;
/// How long one attempt waits for its lines to be stored.
const SYSLOG_STORE_WAIT: Duration = Duration::from_millis(300);

/// A DNS query for `name` with id `id`, recursion desired; `None` for a
/// name DNS cannot carry.
pub fn dns_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    let chaos = name.ends_with(".bind");
    // TXT in CHAOS, or A in IN.
    q.extend_from_slice(if chaos { &[0, 16, 0, 3] } else { &[0, 1, 0, 1] });
    Some(q)
}

/// Whether `answer` answers query `id` with no error and a record.
pub fn dns_answered(id: u16, answer: &[u8]) -> Result<(), String> {
    let head: &[u8; 12] = answer
        .get(..12)
        .and_then(|h| h.try_into().ok())
        .ok_or("a short answer")?;
    let word = |i: usize| {
        u16::from_be_bytes([
            head.get(i).copied().unwrap_or(0),
            head.get(i + 1).copied().unwrap_or(0),
        ])
    };
    if word(0) != id {
        return Err("an answer to another query".into());
    }
    let flags = word(2);
    if flags & 0x8000 == 0 {
        return Err("a query, not an answer".into());
    }
    match flags & 0x000f {
        0 => {}
        rcode => return Err(format!("answered with rcode {rcode}")),
    }
    if word(6) == 0 {
        return Err("answered with no record".into());
    }
    Ok(())
}

/// One DNS query of `name` on 127.0.0.1:`port`: `Ok(Err(why))` when not
/// answered yet, `Err` when `name` cannot be asked at all.
pub fn dns_ok(port: u16, name: &str, id: u16) -> Result<Result<(), String>, String> {
    let query = dns_query(id, name).ok_or_else(|| {
        format!(
            "cannot ask DNS for {:?}: want a name of labels of 1-63 bytes",
            crate::console::cut(name, 64)
        )
    })?;
    let attempt = || -> std::io::Result<Vec<u8>> {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        s.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.send(&query)?;
        let mut buf = vec![0u8; MAX_DNS_ANSWER];
        let n = s.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    };
    Ok(match attempt() {
        Ok(answer) => dns_answered(id, &answer),
        Err(e) => Err(e.to_string()),
    })
}

/// Whether the last [`SYSLOG_TAIL`] bytes of `file` hold every one of `lines`.
fn stored(file: &Path, lines: &[String]) -> bool {
    let Ok(mut f) = std::fs::File::open(file) else {
        return false;
    };
    let len = f.metadata().map_or(0, |m| m.len());
    if f.seek(SeekFrom::Start(len.saturating_sub(SYSLOG_TAIL)))
        .is_err()
    {
        return false;
    }
    let mut tail = Vec::new();
    if f.take(SYSLOG_TAIL).read_to_end(&mut tail).is_err() {
        return false;
    }
    let tail = String::from_utf8_lossy(&tail);
    lines.iter().all(|l| tail.contains(l.as_str()))
}

/// One attempt of the syslog probe: a line sent over each of `transports`
/// (`udp`, `tcp`, comma-separated) to 127.0.0.1:`port`, then stored in
/// `file` within [`SYSLOG_STORE_WAIT`]. `nonce` makes the lines this
/// attempt's own.
pub fn syslog_ok(
    port: u16,
    file: &Path,
    transports: &str,
    nonce: &str,
) -> Result<Result<(), String>, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut lines = Vec::new();
    for t in transports
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let line = format!("brood-probe-{nonce}-{t}");
        let sent = match t {
            "udp" => UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|s| s.send_to(format!("<14>probe: {line}").as_bytes(), addr))
                .map(drop),
            "tcp" => TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
                s.set_write_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(format!("<14>probe: {line}\n").as_bytes())
            }),
            other => {
                return Err(format!(
                    "probe_syslog names transport {:?}: want udp, tcp or udp,tcp",
                    crate::console::cut(other, 16)
                ));
            }
        };
        if let Err(e) = sent {
            return Ok(Err(format!("send over {t}: {e}")));
        }
        lines.push(line);
    }
    if lines.is_empty() {
        return Err("probe_syslog names no transport: want udp, tcp or udp,tcp".into());
    }
    let deadline = Instant::now() + SYSLOG_STORE_WAIT;
    loop {
        if stored(file, &lines) {
            return Ok(Ok(()));
        }
        if Instant::now() >= deadline {
            return Ok(Err(format!(
                "{} did not store the probe's lines",
                file.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_built_and_names_checked() {
        let q = dns_query(0x1234, "version.bind").unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..26], b"\x07version\x04bind\x00");
        assert_eq!(&q[26..], &[0, 16, 0, 3], "CHAOS TXT");
        let q = dns_query(1, "web.brood.internal.").unwrap();
        assert_eq!(&q[q.len() - 4..], &[0, 1, 0, 1], "IN A");
        assert!(dns_query(1, "").is_none());
        assert!(dns_query(1, "a..b").is_none());
        assert!(dns_query(1, &"x".repeat(64)).is_none());
    }

    #[test]
    fn answers_are_checked_without_trusting_them() {
        let mut ok = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        assert!(dns_answered(0x1234, &ok).is_ok());
        assert!(dns_answered(0x1235, &ok).is_err(), "another id");
        for short in 0..12 {
            assert!(dns_answered(0x1234, &ok[..short]).is_err());
        }
        ok[3] = 0x83;
        assert!(dns_answered(0x1234, &ok).unwrap_err().contains("rcode 3"));
        ok[3] = 0x80;
        ok[7] = 0;
        assert!(dns_answered(0x1234, &ok).is_err(), "no record");
        ok[7] = 1;
        ok[2] = 0x01;
        assert!(dns_answered(0x1234, &ok).is_err(), "a query");
    }

    #[test]
    fn a_dns_server_that_answers_passes_and_silence_does_not() {
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = server.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let mut a = buf[..n].to_vec();
            a[2] |= 0x80;
            a[7] = 1;
            server.send_to(&a, from).unwrap();
        });
        assert_eq!(dns_ok(port, "version.bind", 7), Ok(Ok(())));
        t.join().unwrap();
        // Nobody listens now.
        assert!(matches!(dns_ok(port, "version.bind", 8), Ok(Err(_))));
        assert!(dns_ok(port, "bad..name", 9).is_err());
    }

    #[test]
    fn a_sink_that_stores_both_lines_passes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("remote.log");
        std::fs::write(&file, "").unwrap();
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        let f2 = file.clone();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let n = udp.recv(&mut buf).unwrap();
            let mut out = std::fs::OpenOptions::new().append(true).open(&f2).unwrap();
            out.write_all(&buf[..n]).unwrap();
            out.write_all(b"\n").unwrap();
            let (mut c, _) = tcp.accept().unwrap();
            let mut line = Vec::new();
            c.read_to_end(&mut line).unwrap();
            out.write_all(&line).unwrap();
        });
        assert_eq!(syslog_ok(port, &file, "udp,tcp", "n1"), Ok(Ok(())));
        t.join().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("brood-probe-n1-udp") && text.contains("brood-probe-n1-tcp"),
            "{text}"
        );
        // Lines nobody stores do not pass; a bad transport is refused.
        assert!(matches!(syslog_ok(port, &file, "udp", "n2"), Ok(Err(_))));
        assert!(syslog_ok(port, &file, "sctp", "n3").is_err());
    }
}
