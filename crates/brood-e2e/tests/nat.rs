//! NAT networks and published ports on real VMs (one VM per test, two
//! tests, so at most two at once): the README's "NAT and published ports"
//! example, run line by line with names of the test's own; a guest on a
//! `--nat` network resolves deb.debian.org through the gateway's DNS DNAT
//! and fetches from it over HTTP through the masquerade; a published port
//! answers from the host (127.0.0.1 and the uplink's address, the `output`
//! chain) and from another network namespace (prerouting and forward); the
//! same host port twice is refused with the holder's name, and a port the
//! host listens on is refused; `vm set --publish` adds a port to the
//! running VM (answering at once) and `--unpublish` removes it (the
//! connection refused), with the same refusals and nothing changed by one;
//! broodd restarted after its table was
//! flushed puts the rules back; deleting the VM removes its DNAT; deleting
//! the last NAT network removes the table. And `apt-get install` in a
//! Debian guest on a NAT network.
//!
//! Each broodd here owns a table of its own (`--nft-table`), so the two
//! tests (and a broodd of another test binary) never rebuild each other's
//! rules; a guard deletes it, the namespace, and the gateway taps even when
//! a test fails, and puts `net.ipv4.ip_forward` back to what it was once
//! the last test that needed it is done.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, brood_bin, wait_until};
use serde_json::Value;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Tests holding the forwarding guard, and the value before the first.
static FORWARD: Mutex<(usize, Option<String>)> = Mutex::new((0, None));

/// Everything host-wide a test makes, undone on drop: `ip_forward` (when
/// the last holder goes), the nft table, taps, a network namespace.
struct HostState {
    table: String,
    taps: Vec<String>,
    netns: Option<String>,
}

impl HostState {
    fn new(table: &str) -> Self {
        let mut f = FORWARD.lock().unwrap_or_else(|e| e.into_inner());
        if f.0 == 0 {
            f.1 = std::fs::read_to_string(IP_FORWARD).ok();
        }
        f.0 += 1;
        HostState {
            table: table.to_string(),
            taps: Vec::new(),
            netns: None,
        }
    }
}

impl Drop for HostState {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .output();
        for t in &self.taps {
            let _ = Command::new("ip").args(["link", "del", t]).output();
        }
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{ns}h")])
                .output();
        }
        let mut f = FORWARD.lock().unwrap_or_else(|e| e.into_inner());
        f.0 -= 1;
        if f.0 == 0
            && let Some(v) = f.1.take()
        {
            let _ = std::fs::write(IP_FORWARD, v.trim());
        }
    }
}

/// A number for this process's host-wide names.
fn tag() -> u32 {
    std::process::id() % 100_000
}

/// A /24 no other test uses (172.16.0.0/12 is not this host's), and its
/// first address.
fn subnet(k: u32) -> (String, String) {
    let net = prefix(k);
    (format!("{net}.0/24"), format!("{net}.1"))
}

/// The first three octets of [`subnet`]`(k)`.
fn prefix(k: u32) -> String {
    let p = std::process::id();
    let (a, b) = (16 + p % 16, (p / 16 + k) % 256);
    format!("172.{a}.{b}")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn brood(b: &Broodd, args: &[&str]) -> Output {
    b.brood().args(args).output().expect("run brood")
}

fn brood_ok(b: &Broodd, args: &[&str]) -> String {
    let o = brood(b, args);
    assert!(o.status.success(), "brood {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `nft list table ip TABLE`, or `None` when there is no such table.
fn table(name: &str) -> Option<String> {
    let o = Command::new("nft")
        .args(["list", "table", "ip", name])
        .output()
        .expect("run nft");
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn wait_table(name: &str, what: &str, cond: impl Fn(Option<&str>) -> bool, b: &Broodd) {
    let ok = wait_until(Duration::from_secs(60), || cond(table(name).as_deref()));
    assert!(
        ok,
        "table {name}: {what}; it is:\n{:?}\nbroodd's log:\n{}",
        table(name),
        b.log()
    );
}

/// An HTTP GET over TCP; the whole answer (empty when it fails).
fn http_get(addr: (Ipv4Addr, u16), host: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The uplink (the default route's device), its IPv4 address and prefix.
fn uplink() -> (String, Ipv4Addr, u32) {
    let o = Command::new("ip")
        .args(["-j", "route", "show", "default"])
        .output()
        .expect("ip route");
    let routes: Value = serde_json::from_slice(&o.stdout).expect("ip -j route");
    let dev = routes[0]["dev"]
        .as_str()
        .expect("a default route")
        .to_string();
    let o = Command::new("ip")
        .args(["-j", "-4", "addr", "show", "dev", &dev])
        .output()
        .expect("ip addr");
    let addrs: Value = serde_json::from_slice(&o.stdout).expect("ip -j addr");
    let local = addrs[0]["addr_info"][0]["local"]
        .as_str()
        .expect("an uplink address")
        .parse()
        .expect("IPv4");
    let len = addrs[0]["addr_info"][0]["prefixlen"]
        .as_u64()
        .and_then(|l| u32::try_from(l).ok())
        .expect("a prefix length");
    (dev, local, len)
}

/// The address a VM's NIC has on `network` (its channel's).
fn member_address(b: &Broodd, network: &str, vm: &str) -> String {
    let n = b.ok("GET", &format!("/v1/networks/{network}"), None);
    n["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["partition"] == vm)
        .unwrap_or_else(|| panic!("{vm} is not on {network}: {n}"))["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The lines of the README's "NAT and published ports" example.
fn readme_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let start = readme
        .find("### NAT and published ports")
        .expect("README has the NAT subsection");
    let rest = &readme[start..];
    let block = rest.find("```sh\n").expect("an sh block") + "```sh\n".len();
    let end = rest[block..].find("```").expect("the block ends") + block;
    rest[block..end]
        .lines()
        .map(|l| l.split("  #").next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Runs a README line with the test's names, through `sh -c` with this
/// build's `brood` first on PATH.
fn sh(b: &Broodd, line: &str, names: &[(&str, &str)]) -> Output {
    let mut l = line.to_string();
    for (from, to) in names {
        l = l.replace(from, to);
    }
    let bin = brood_bin();
    let path = format!(
        "{}:{}",
        bin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .arg("-c")
        .arg(&l)
        .env("PATH", path)
        .env("BROOD_DATA_DIR", &b.data)
        .env_remove("BROOD_HOST")
        .env_remove("BROOD_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("sh -c {l}: {e}"))
}

#[test]
fn a_nat_network_reaches_out_publishes_ports_and_cleans_up() {
    let n = tag();
    let table_name = format!("brood_nat{n}");
    let mut guard = HostState::new(&table_name);
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "2048", "--nft-table", &table_name]);
    let (net, vm) = (format!("nat{n}"), format!("www{n}"));
    guard.taps.push(format!("bn-{net}"));
    let (cidr, gateway) = subnet(0);
    let port = free_port();
    let port_s = port.to_string();
    let names: [(&str, &str); 5] = [
        ("10.30.0.0/24", &cidr),
        ("8080", &port_s),
        ("ip brood", &format!("ip {table_name}")),
        (" out", &format!(" {net}")),
        ("www", &vm),
    ];
    let lines = readme_lines();
    assert_eq!(lines.len(), 7, "the README example changed: {lines:?}");

    // Bad input first: a subnet of the uplink's, and one overlapping
    // another NAT network's in another zone; neither leaves anything.
    let (dev, uplink_addr, len) = uplink();
    let len = len.clamp(8, 30);
    let mask = u32::MAX << (32 - len);
    let theirs = format!("{}/{len}", Ipv4Addr::from(u32::from(uplink_addr) & mask));
    let o = brood(
        &b,
        &["network", "create", "badup", "--subnet", &theirs, "--nat"],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("uplink") && text(&o).contains(&dev),
        "{}",
        text(&o)
    );

    // The README: the NAT network, the VM publishing a port, a web server.
    for line in &lines[..3] {
        let o = sh(&b, line, &names);
        assert!(o.status.success(), "{line}: {}\n{}", text(&o), b.log());
    }
    assert_eq!(
        std::fs::read_to_string(IP_FORWARD).unwrap().trim(),
        "1",
        "the first NAT network turns forwarding on"
    );
    let o = brood(
        &b,
        &[
            "network",
            "create",
            "badov",
            "--subnet",
            &cidr,
            "--zone",
            "elsewhere",
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("overlaps"), "{}", text(&o));
    assert_eq!(b.call("GET", "/v1/networks/badov", None).0, 404);

    let p = b.ok("GET", &format!("/v1/partitions/{vm}"), None);
    assert_eq!(p["publish"][0]["host_port"], port, "{p}");
    let address = member_address(&b, &net, &vm);
    wait_table(
        &table_name,
        "the DNAT of the published port",
        |t| t.is_some_and(|t| t.contains(&format!("dport {port} dnat to {address}:80"))),
        &b,
    );
    let t = table(&table_name).unwrap();
    assert!(
        t.contains(&format!("oifname \"{dev}\" ip saddr {cidr} masquerade")),
        "{t}"
    );
    assert!(
        t.contains(&format!("ip daddr {gateway} udp dport 53 dnat to")),
        "{t}"
    );

    // The README's curl: the published port from the host, on 127.0.0.1.
    let got = wait_until(Duration::from_secs(60), || {
        let o = sh(&b, &lines[3], &names);
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hello")
    });
    assert!(got, "{}: {}", lines[3], text(&sh(&b, &lines[3], &names)));
    // ... and on the uplink's address.
    let page = http_get((uplink_addr, port), "x", "/");
    assert!(page.contains("hello"), "{uplink_addr}:{port}: {page:?}");
    // vm show and list show the port; the README's nft line runs.
    for line in &lines[4..6] {
        let o = sh(&b, line, &names);
        assert!(o.status.success(), "{line}: {}", text(&o));
        assert!(text(&o).contains(&port_s), "{line}: {}", text(&o));
    }
    let list = brood_ok(&b, &["vm", "list"]);
    assert!(list.contains(&format!("({port}:80/tcp)")), "{list}");

    // From another host: a network namespace on a veth of its own.
    let ns = format!("bnat{n}");
    guard.netns = Some(ns.clone());
    let (_, peer_host) = subnet(1);
    let peer_ns = format!("{}.2", prefix(1));
    let ip = |args: &[&str]| brood_e2e::run(Command::new("ip").args(args));
    ip(&["netns", "add", &ns]);
    ip(&[
        "link",
        "add",
        &format!("{ns}h"),
        "type",
        "veth",
        "peer",
        "name",
        &format!("{ns}n"),
    ]);
    ip(&["link", "set", &format!("{ns}n"), "netns", &ns]);
    ip(&[
        "addr",
        "add",
        &format!("{peer_host}/24"),
        "dev",
        &format!("{ns}h"),
    ]);
    ip(&["link", "set", &format!("{ns}h"), "up"]);
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns]).args(args);
        brood_e2e::run(&mut c)
    };
    in_ns(&[
        "ip",
        "addr",
        "add",
        &format!("{peer_ns}/24"),
        "dev",
        &format!("{ns}n"),
    ]);
    in_ns(&["ip", "link", "set", &format!("{ns}n"), "up"]);
    in_ns(&["ip", "link", "set", "lo", "up"]);
    let o = Command::new("ip")
        .args(["netns", "exec", &ns, "curl", "-s", "-m", "10"])
        .arg(format!("http://{peer_host}:{port}/"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("hello"),
        "from another host: {}",
        text(&o)
    );

    // Out of the host: DNS through the gateway, HTTP through the masquerade.
    // The A record (busybox's nslookup asks for AAAA too, which this
    // host's resolver may not have); asked again until it answers.
    let lookup = || {
        let (_, out, _) = b.exec(&vm, "nslookup -type=a deb.debian.org");
        out.split("deb.debian.org")
            .skip(1)
            .flat_map(str::lines)
            .filter_map(|l| l.trim().strip_prefix("Address:"))
            .find_map(|a| a.trim().parse::<Ipv4Addr>().ok())
    };
    let mut mirror = None;
    wait_until(Duration::from_secs(60), || {
        mirror = lookup();
        mirror.is_some()
    });
    let (_, out, err) = b.exec(&vm, "cat /etc/resolv.conf; nslookup -type=a deb.debian.org");
    assert!(out.contains(&format!("nameserver {gateway}")), "{out}");
    let mirror = mirror.unwrap_or_else(|| panic!("no IPv4 address for deb.debian.org: {out}{err}"));
    let (code, page, err) = b.exec(
        &vm,
        &format!("wget -q -O - --header 'Host: deb.debian.org' http://{mirror}/debian/dists/bookworm/Release | head -c 400"),
    );
    assert!(code == 0 && page.contains("Origin: Debian"), "{page}{err}");

    // The same host port twice: refused with the holder's name, nothing made.
    let o = brood(
        &b,
        &[
            "vm",
            "create",
            "dup",
            "--nic",
            &net,
            "--publish",
            &format!("{port}:81"),
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&vm) && text(&o).contains(&port_s),
        "{}",
        text(&o)
    );
    assert_eq!(b.call("GET", "/v1/partitions/dup", None).0, 404);
    // A port the host itself listens on.
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let o = brood(
        &b,
        &[
            "vm",
            "create",
            "dup",
            "--nic",
            &net,
            "--publish",
            &format!("{taken_port}:80"),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("in use on the host"), "{}", text(&o));
    drop(taken);
    // No NIC on a NAT network.
    let o = brood(&b, &["vm", "create", "dup", "--publish", "1:1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("NAT network"), "{}", text(&o));

    // `vm set --publish` on the running VM: the DNAT is there when it answers.
    let port2 = free_port();
    let port2_s = port2.to_string();
    let out = brood_ok(
        &b,
        &[
            "vm",
            "set",
            &vm,
            "--publish",
            &format!("{port2}:80"),
            "-o",
            "json",
        ],
    );
    let r: Value = serde_json::from_str(&out).expect("vm set -o json");
    assert_eq!(r["applied_now"][0], "published ports", "{r}");
    assert_eq!(
        r["partition"]["publish"].as_array().unwrap().len(),
        2,
        "{r}"
    );
    let t = table(&table_name).unwrap();
    assert!(
        t.contains(&format!("dport {port2} dnat to {address}:80")),
        "{t}"
    );
    let page = http_get((Ipv4Addr::LOCALHOST, port2), "x", "/");
    assert!(
        page.contains("hello"),
        "through the port vm set added: {page:?}"
    );
    // Refusals change nothing: the port another VM holds (named), a port
    // the host listens on, a VM without a NIC on a NAT network, a port
    // that is not published, an invalid one.
    brood_ok(&b, &["vm", "define", "dup", "--nic", &net]);
    brood_ok(&b, &["vm", "define", "nonat"]);
    let before =
        |name: &str| b.ok("GET", &format!("/v1/partitions/{name}"), None)["publish"].clone();
    let (www_before, dup_before) = (before(&vm), before("dup"));
    let o = brood(
        &b,
        &["vm", "set", "dup", "--publish", &format!("{port2}:81")],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&vm) && text(&o).contains(&port2_s),
        "{}",
        text(&o)
    );
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let o = brood(
        &b,
        &[
            "vm",
            "set",
            "dup",
            "--publish",
            "7:7",
            "--publish",
            &format!("{taken_port}:80"),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("in use on the host"), "{}", text(&o));
    drop(taken);
    let o = brood(&b, &["vm", "set", "nonat", "--publish", "7:7"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("NAT network"), "{}", text(&o));
    let o = brood(
        &b,
        &["vm", "set", &vm, "--unpublish", "7", "--publish", "9:9"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("not published"), "{}", text(&o));
    let o = brood(&b, &["vm", "set", &vm, "--publish", "80"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("HOST:GUEST"), "{}", text(&o));
    let (code, e) = b.call(
        "PATCH",
        &format!("/v1/partitions/{vm}/resources"),
        Some(&serde_json::json!({"publish": [{"host_port": 0, "guest_port": 80}]})),
    );
    assert_eq!(code, 400, "{e}");
    let (code, e) = b.call(
        "PATCH",
        &format!("/v1/partitions/{vm}/resources"),
        Some(&serde_json::json!({"unpublish": [{"host_port": 7, "protocol": "udp"}]})),
    );
    assert_eq!(code, 404, "{e}");
    assert_eq!(before(&vm), www_before);
    assert_eq!(before("dup"), dup_before);
    // A stopped VM takes a port as its definition (over udp: the tcp
    // one is the running VM's).
    brood_ok(
        &b,
        &["vm", "set", "dup", "--publish", &format!("{port2}:53/udp")],
    );
    let shown = brood_ok(&b, &["vm", "show", "dup"]);
    assert!(shown.contains(&format!("{port2}:53/udp")), "{shown}");
    // Its only NAT NIC stays while it publishes: the message says what to unpublish.
    let o = brood(&b, &["vm", "nic", "detach", "dup", "0"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!("--unpublish {port2}/udp")),
        "{}",
        text(&o)
    );
    assert_eq!(
        b.ok("GET", "/v1/partitions/dup", None)["nics"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    for name in ["dup", "nonat"] {
        brood_ok(&b, &["vm", "delete", name, "--force"]);
    }
    // `--unpublish`: the DNAT goes at once, and the host refuses the connection.
    brood_ok(&b, &["vm", "set", &vm, "--unpublish", &port2_s]);
    let t = table(&table_name).unwrap();
    assert!(!t.contains(&format!("dport {port2} ")), "{t}");
    let refused =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port2).into(), Duration::from_secs(5));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{port2} after --unpublish: {refused:?}"
    );
    let page = http_get((Ipv4Addr::LOCALHOST, port), "x", "/");
    assert!(
        page.contains("hello"),
        "the first port after --unpublish: {page:?}"
    );
    b.verify_ok();

    // broodd restarted after the table was flushed: the rules come back.
    brood_e2e::run(Command::new("nft").args(["delete", "table", "ip", &table_name]));
    b.restart();
    wait_table(
        &table_name,
        "the DNAT again after a restart",
        |t| t.is_some_and(|t| t.contains(&format!("dport {port} dnat to {address}:80"))),
        &b,
    );
    let page = http_get((Ipv4Addr::LOCALHOST, port), "x", "/");
    assert!(page.contains("hello"), "after the restart: {page:?}");

    // The README's last line: deleting the VM removes its DNAT, deleting
    // the last NAT network the table.
    let (delete_vm, delete_net) = lines[6].split_once(';').expect("two commands");
    let o = sh(&b, delete_vm, &names);
    assert!(o.status.success(), "{delete_vm}: {}", text(&o));
    wait_table(
        &table_name,
        "no DNAT once the VM is deleted",
        |t| t.is_some_and(|t| !t.contains(&format!("dport {port}")) && t.contains("masquerade")),
        &b,
    );
    let o = sh(&b, delete_net, &names);
    assert!(o.status.success(), "{delete_net}: {}", text(&o));
    assert_eq!(
        table(&table_name),
        None,
        "the table outlived the last NAT network"
    );
    b.verify_ok();
}

/// The Debian image of `debian.rs`, built with exactly its inputs into
/// the same place, so that one build serves both files (brood-image's lock
/// on the name makes the second wait, then find it up to date).
fn debian_image() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let data = brood_bin().parent().expect("target dir").join("e2e-images");
    let dir = data.join("services");
    std::fs::create_dir_all(&dir).unwrap();
    let (indep, dep) = (dir.join("10-warm"), dir.join("20-role"));
    std::fs::write(&indep, "#!/bin/sh\necho independent > /tmp/indep-ran\n").unwrap();
    std::fs::write(
        &dep,
        "#!/bin/sh\necho \"$BROOD_HOSTNAME $BROOD_VALUE_ROLE\" > /tmp/dep-ran\n",
    )
    .unwrap();
    for f in [&indep, &dep] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut c = Command::new(brood_bin());
    c.arg("--data-dir").arg(&data).args([
        "image", "build", "--name", "deb", "--rootfs", "debian", "-o", "json",
    ]);
    for p in ["dnsmasq", "curl", "iproute2", "systemd-sysv"] {
        c.args(["--package", p]);
    }
    c.arg("--independent-service")
        .arg(&indep)
        .arg("--dependent-service")
        .arg(&dep);
    let o = c.output().expect("run brood image build");
    assert!(o.status.success(), "brood image build: {}", text(&o));
    data.join("images/deb")
}

#[test]
fn apt_get_installs_a_package_in_a_debian_guest_on_a_nat_network() {
    let image = debian_image();
    let n = tag();
    let table_name = format!("brood_apt{n}");
    let mut guard = HostState::new(&table_name);
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048", "--nft-table", &table_name]);
    // A copy, not a link: a partition hard-links its image's files.
    std::fs::create_dir_all(b.data.join("images")).unwrap();
    brood_e2e::run(
        Command::new("cp")
            .arg("-a")
            .arg(&image)
            .arg(b.data.join("images/deb")),
    );
    let net = format!("apt{n}");
    guard.taps.push(format!("bn-{net}"));
    let (cidr, _) = subnet(2);
    brood_ok(&b, &["network", "create", &net, "--subnet", &cidr, "--nat"]);
    let vm = format!("deb{n}");
    // apt under TCG (its page cache filling the guest's memory, and the
    // translation cache growing) outgrows the default QEMU allowance of
    // the VM's memory cgroup, which then kills QEMU: give it room.
    brood_ok(
        &b,
        &[
            "vm",
            "create",
            &vm,
            "--image",
            "deb",
            "--memory",
            "512",
            "--memory-limit",
            "1024",
            "--nic",
            &net,
        ],
    );
    let (code, _, _) = b.exec(&vm, "command -v hello");
    assert_ne!(
        code, 0,
        "hello is in the image already: pick another package"
    );
    // The address and resolver come from the agent once it is up.
    let online = wait_until(Duration::from_secs(90), || {
        b.exec(&vm, "getent hosts deb.debian.org").0 == 0
    });
    let (_, out, err) = b.exec(&vm, "ip -4 route; cat /etc/resolv.conf");
    assert!(
        online,
        "the guest never resolved deb.debian.org: {out}{err}\nbroodd's log:\n{}",
        b.log()
    );
    // What went wrong in the guest, for a failed step.
    let console = |b: &Broodd| {
        let (_, c) = b.call("GET", &format!("/v1/partitions/{vm}/console"), None);
        let text = c["text"].as_str().unwrap_or_default().to_string();
        let cut = text.len().saturating_sub(3000);
        text.get(cut..).unwrap_or_default().to_string()
    };
    let step = |cmd: &str| {
        let (s, r) = b.call(
            "POST",
            &format!("/v1/partitions/{vm}/exec"),
            Some(&serde_json::json!({"command": cmd, "timeout_ms": 600_000})),
        );
        let decode = |k: &str| {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(r[k].as_str().unwrap_or_default())
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        assert!(
            s == 200 && r["exit_code"] == 0,
            "{cmd} -> {s}: {r}\n{}{}\nconsole:\n{}\nthen: {:?}\nbroodd's log:\n{}",
            decode("stdout_base64"),
            decode("stderr_base64"),
            console(&b),
            b.call(
                "POST",
                &format!("/v1/partitions/{vm}/exec"),
                Some(&serde_json::json!({"command": "echo alive"}))
            ),
            b.log()
        );
        decode("stdout_base64")
    };
    step("apt-get update -q > /tmp/update.log 2>&1 || { cat /tmp/update.log; exit 1; }");
    step(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends hello > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }",
    );
    let out = step("hello");
    assert!(out.contains("Hello, world!"), "{out}");
    brood_ok(&b, &["vm", "delete", &vm, "--force"]);
    brood_ok(&b, &["network", "delete", &net]);
    assert_eq!(table(&table_name), None);
}
