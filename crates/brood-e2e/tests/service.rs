//! Service classes of the Debian `service` image (`brood image build
//! --service`, built once per run into `BROOD_DATA_DIR`) on real VMs: a pool
//! of that image refills by clone, and a `dns` domain (dnsmasq) answers for
//! the names brood registered with it and forwards the rest (to a stub
//! upstream: a second dnsmasq the request's init script starts), a guest
//! that requires `dns` and `log` resolves its own name through the domain
//! its start took and its syslog is stored by the other, and an `nfs` domain exports a directory that an NFS mount reads.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, wait_until};
use serde_json::json;

#[test]
fn a_dns_domain_of_the_service_image_answers_for_registered_names_and_forwards_the_rest() {
    let image = brood_e2e::service_image();
    let env = TestEnv::new();
    let b = Broodd::start(&env, &[]);
    // The pool's image is looked up in broodd's own data directory.
    std::fs::create_dir_all(b.data.join("images")).unwrap();
    std::os::unix::fs::symlink(&image, b.data.join("images/service")).unwrap();
    let (s, p) = b.call(
        "POST",
        "/v1/pools",
        Some(&json!({"name": "svc", "image": "service", "min": 1, "max": 2, "memory_mib": 256, "cpu_threshold_pct": 100})),
    );
    assert_eq!(s, 201, "{p}");
    let ready = wait_until(Duration::from_secs(300), || {
        b.ok("GET", "/v1/pools/svc", None)["ready"] == 1
    });
    assert!(ready, "{}\n{}", b.ok("GET", "/v1/pools/svc", None), b.log());
    // The stub upstream knows one name outside brood's domain.
    let script = env.run_root().join("upstream.sh");
    std::fs::write(
        &script,
        "dnsmasq --no-resolv --no-hosts --port=5353 --listen-address=127.0.0.1 \
         --bind-interfaces --address=/ext.example/192.0.2.7 --pid-file=/run/upstream.pid\n",
    )
    .unwrap();
    let v = b.ok(
        "POST",
        "/v1/services",
        Some(&json!({"class": "dns", "pool": "svc", "name": "ns1",
                     "set": {"hosts": "web=10.0.0.5,db=10.0.0.6", "upstream": "127.0.0.1#5353"},
                     "script": script.display().to_string()})),
    );
    assert_eq!(v["state"], "ready", "{v}");
    let member = v["member"].as_str().unwrap();
    let (code, out, err) = b.exec(
        member,
        "dig +short @127.0.0.1 web.brood.internal; dig +short @127.0.0.1 db.brood.internal; \
         dig +short @127.0.0.1 nope.brood.internal; dig +short @127.0.0.1 ext.example",
    );
    assert_eq!(code, 0, "{err}");
    // Registered names answered, an unknown one of the domain not
    // forwarded (the domain is local), the rest forwarded upstream.
    assert_eq!(out, "10.0.0.5\n10.0.0.6\n192.0.2.7\n", "{out}");
    // A class that needs this image is refused by a pool of the busybox one.
    let (s, _) = b.call(
        "POST",
        "/v1/pools",
        Some(&json!({"name": "bb", "min": 0, "max": 0})),
    );
    assert_eq!(s, 201);
    let (s, e) = b.call(
        "POST",
        "/v1/services",
        Some(&json!({"class": "dns", "pool": "bb"})),
    );
    assert_eq!(s, 400, "{e}");
    assert!(
        e.to_string().contains("needs the \\\"service\\\" image"),
        "{e}"
    );
    b.verify_ok();
    assert_eq!(b.call("DELETE", "/v1/services/ns1", None).0, 204);
    for p in ["svc", "bb"] {
        assert_eq!(b.call("DELETE", &format!("/v1/pools/{p}"), None).0, 204);
    }
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

/// An `nfs` domain of the service image exports its directory: the export
/// is listed, and an NFS mount of it (over the domain's loopback: the guest
/// kernel's NFS client and server modules both load) reads a file the
/// server wrote.
#[test]
fn an_nfs_domain_exports_a_directory_that_mounts_and_reads() {
    let image = brood_e2e::service_image();
    let env = TestEnv::new();
    let b = Broodd::start(&env, &[]);
    std::fs::create_dir_all(b.data.join("images")).unwrap();
    std::os::unix::fs::symlink(&image, b.data.join("images/service")).unwrap();
    b.ok(
        "POST",
        "/v1/pools",
        Some(&json!({"name": "nfs", "image": "service", "min": 1, "max": 2, "memory_mib": 256, "cpu_threshold_pct": 100})),
    );
    let ready = wait_until(Duration::from_secs(300), || {
        b.ok("GET", "/v1/pools/nfs", None)["ready"] == 1
    });
    assert!(ready, "{}\n{}", b.ok("GET", "/v1/pools/nfs", None), b.log());
    let (s, v) = b.call(
        "POST",
        "/v1/services",
        Some(&json!({"class": "nfs", "pool": "nfs", "name": "files"})),
    );
    assert_eq!(s, 201, "{v}\n{}", b.log());
    let member = v["member"].as_str().unwrap();
    let (code, out, err) = b.exec(
        member,
        "echo brood-nfs > /srv/nfs/hello && mkdir -p /mnt/n && \
         mount -t nfs -o vers=4,proto=tcp 127.0.0.1:/srv/nfs /mnt/n && cat /mnt/n/hello && umount /mnt/n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "brood-nfs\n", "{out}");
    assert_eq!(b.call("DELETE", "/v1/services/files", None).0, 204);
    assert_eq!(b.call("DELETE", "/v1/pools/nfs", None).0, 204);
    b.verify_ok();
    drop(b);
    env.assert_clean();
}

/// Makes `b` a broodd that knows the service image, with a pool `name` of
/// it whose members have a NIC on each of `networks`, one member ready and
/// no refill after it (`max` 1: a test keeps at most two VMs at once).
fn service_pool(b: &Broodd, name: &str, networks: &[&str]) {
    service_pool_of(b, name, networks, 1);
}

/// [`service_pool`] with `n` members ready, then `min` 0 so that handing
/// them out starts no refill.
fn service_pool_of(b: &Broodd, name: &str, networks: &[&str], n: u64) {
    let image = brood_e2e::service_image();
    std::fs::create_dir_all(b.data.join("images")).unwrap();
    std::os::unix::fs::symlink(&image, b.data.join("images/service")).unwrap();
    let (first, rest) = networks.split_first().expect("a network");
    let (s, p) = b.call(
        "POST",
        "/v1/pools",
        Some(
            &json!({"name": name, "image": "service", "min": n, "max": n, "memory_mib": 256,
                     "cpu_threshold_pct": 100, "network": first, "networks": rest}),
        ),
    );
    assert_eq!(s, 201, "{p}");
    let ready = wait_until(Duration::from_secs(300), || {
        b.ok("GET", &format!("/v1/pools/{name}"), None)["ready"] == n
    });
    assert!(
        ready,
        "{}\n{}",
        b.ok("GET", &format!("/v1/pools/{name}"), None),
        b.log()
    );
    if n > 1 {
        b.ok(
            "PATCH",
            &format!("/v1/pools/{name}"),
            Some(&json!({"min": 0})),
        );
    }
}

/// The address the ledger gave `vm` (a name or uuid) on `network`.
fn address_on(b: &Broodd, network: &str, vm: &str) -> String {
    let n = b.ok("GET", &format!("/v1/networks/{network}"), None);
    n["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["partition"] == vm || m["uuid"] == vm)
        .unwrap_or_else(|| panic!("{vm} is not on {network}: {n}"))["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until `vm`'s `iface` has `addr` (given by its agent).
fn wait_address(b: &Broodd, vm: &str, iface: &str, addr: &str) {
    let got = wait_until(Duration::from_secs(120), || {
        let (_, out, _) = b.exec(vm, &format!("ip -4 addr show {iface}"));
        out.contains(&format!("inet {addr}/"))
    });
    let (_, out, _) = b.exec(vm, &format!("ip -4 addr show {iface}"));
    assert!(got, "{vm} never got {addr} on {iface}: {out}\n{}", b.log());
}

fn guest_on(b: &Broodd, name: &str, network: &str) {
    let (s, v) = b.call(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": name,
                     "configs": {"default": {"memory_mib": 128, "nics": [{"network": network}]}},
                     "start": true})),
    );
    assert_eq!(s, 201, "{v}");
}

/// A `dhcp` domain (dnsmasq, DHCP only) on a brood network leases an
/// address of its configured range to a guest of that network: the guest's
/// busybox `udhcpc` gets an offer from the domain and the lease is in the
/// domain's lease file.
#[test]
fn a_dhcp_domain_leases_an_address_of_its_range_to_a_guest_on_its_network() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    // No gateway: the network makes nothing host-wide.
    b.ok(
        "POST",
        "/v1/networks",
        Some(&json!({"name": "lan", "subnet": "10.77.0.0/24"})),
    );
    service_pool(&b, "dh", &["lan"]);
    let (s, v) = b.call(
        "POST",
        "/v1/services",
        Some(&json!({"class": "dhcp", "pool": "dh", "name": "leases",
                     "set": {"range": "10.77.0.200,10.77.0.220,1h"}})),
    );
    assert_eq!(s, 201, "{v}\n{}", b.log());
    let member = v["member"].as_str().unwrap().to_string();
    guest_on(&b, "client", "lan");
    let ip = address_on(&b, "lan", "client");
    wait_address(&b, "client", "eth0", &ip);
    // udhcpc's script prints what it was offered instead of applying it.
    let (code, out, err) = b.exec(
        "client",
        "printf '#!/bin/sh\\n[ \"$1\" = bound ] && echo \"lease $ip from $serverid\"\\nexit 0\\n' > /tmp/dh; \
         chmod +x /tmp/dh; udhcpc -i eth0 -n -q -f -t 5 -T 2 -s /tmp/dh",
    );
    assert_eq!(
        code,
        0,
        "{out}{err}\n{}",
        b.exec(&member, "cat /run/brood/service/*.log").1
    );
    let lease = out
        .lines()
        .find_map(|l| l.strip_prefix("lease "))
        .unwrap_or_else(|| panic!("no lease: {out}{err}"));
    let (addr, server) = lease.split_once(" from ").unwrap();
    let last: u8 = addr.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        addr.starts_with("10.77.0.") && (200..=220).contains(&last),
        "{lease}"
    );
    assert_eq!(server, address_on(&b, "lan", &member), "{lease}");
    // The domain recorded the lease (its MAC is the guest's).
    let (_, leases, _) = b.exec(&member, "cat /var/lib/misc/dnsmasq.leases");
    assert!(leases.contains(addr), "{leases}");
    assert_eq!(b.call("DELETE", "/v1/services/leases", None).0, 204);
    b.ok("POST", "/v1/partitions/client/stop", None);
    b.ok("DELETE", "/v1/partitions/client", None);
    assert_eq!(b.call("DELETE", "/v1/pools/dh", None).0, 204);
    // The network's last client gone, its switch goes with it.
    assert_eq!(b.call("DELETE", "/v1/networks/lan", None).0, 204);
    b.verify_ok();
    drop(b);
    // Under load a QEMU killed at a delete takes a while to be reaped.
    wait_until(Duration::from_secs(60), || env.qemu_pids().is_empty());
    for pid in env.qemu_pids() {
        let name = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        eprintln!(
            "left: {pid}: {}",
            String::from_utf8_lossy(&name).replace('\0', " ")
        );
    }
    env.assert_clean();
}

/// `requires: ["dns", "log"]` on a guest of a brood network: its start
/// takes a `dns` domain of the pool for it, registered with the guest's
/// own name and address, and makes it the guest's resolver, so the guest
/// resolves its own name through its domain; and a `log` domain (rsyslog)
/// to which the guest's syslog is forwarded, so a line the guest logs with
/// `logger` is stored by the sink, with the guest's address; deleting the
/// guest releases both.
#[test]
fn a_guest_that_requires_dns_and_log_resolves_through_and_logs_to_its_domains() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    b.ok(
        "POST",
        "/v1/networks",
        Some(&json!({"name": "dnet", "subnet": "10.78.0.0/24"})),
    );
    service_pool_of(&b, "dnsp", &["dnet"], 2);
    let (s, v) = b.call(
        "POST",
        "/v1/partitions",
        Some(&json!({"name": "web",
                     "configs": {"default": {"memory_mib": 128, "nics": [{"network": "dnet"}],
                                             "requires": ["dns", "log"]}},
                     "start": true})),
    );
    assert_eq!(s, 201, "{v}\n{}", b.log());
    let list = b.ok("GET", "/v1/services", None);
    let of = |class: &str| {
        let svc = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["class"] == class)
            .unwrap_or_else(|| panic!("no {class} service: {list}"));
        assert_eq!(svc["guests"], json!(["web"]), "{list}");
        assert!(svc["fallback"].is_null(), "{list}");
        svc["member"].as_str().unwrap().to_string()
    };
    let member = of("dns");
    let sink = of("log");
    // Both were probed by their agents themselves (a DNS query, syslog
    // lines over UDP and TCP), not by a probe.sh run per attempt.
    for m in [&member, &sink] {
        let (code, out, _) = b.exec(
            m,
            "test ! -e /run/brood/service/probe.sh.log && cat /run/brood/service/timing",
        );
        assert_eq!(code, 0, "{m} ran probe.sh: {out}");
        assert!(out.contains("probe "), "{m}: {out}");
    }
    let dns = address_on(&b, "dnet", &member);
    let ip = address_on(&b, "dnet", "web");
    wait_address(&b, "web", "eth0", &ip);
    let (_, conf, _) = b.exec("web", "cat /etc/resolv.conf");
    assert!(conf.contains(&format!("nameserver {dns}")), "{conf}");
    let mut seen = String::new();
    let resolved = wait_until(Duration::from_secs(60), || {
        let (code, out, err) = b.exec("web", "nslookup web.brood.internal");
        seen = format!("{out}{err}");
        code == 0 && out.contains(&ip)
    });
    assert!(
        resolved,
        "{seen}\n{}",
        b.exec(&member, "cat /etc/brood-hosts /run/brood/service/*.log")
            .1
    );
    // The guest's syslog reaches its sink over UDP, stored with its address.
    let line = format!("guest-line-{}", std::process::id());
    let mut stored = String::new();
    let logged = wait_until(Duration::from_secs(30), || {
        b.exec("web", &format!("logger -t app {line}"));
        stored = b.exec(&sink, "cat /var/log/remote.log").1;
        stored
            .lines()
            .any(|l| l.contains(&line) && l.contains(&format!(" {ip} ")))
    });
    assert!(
        logged,
        "{stored}\n{}\n{}",
        b.exec("web", "ps; cat /run/brood-syslogd.pid").1,
        b.log()
    );
    b.ok("POST", "/v1/partitions/web/stop", None);
    b.ok("DELETE", "/v1/partitions/web", None);
    let released = wait_until(Duration::from_secs(60), || {
        b.ok("GET", "/v1/services", None)["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    assert!(released, "{}", b.ok("GET", "/v1/services", None));
    assert_eq!(b.call("DELETE", "/v1/pools/dnsp", None).0, 204);
    assert_eq!(b.call("DELETE", "/v1/networks/dnet", None).0, 204);
    b.verify_ok();
    drop(b);
    wait_until(Duration::from_secs(60), || env.qemu_pids().is_empty());
    env.assert_clean();
}

/// Deletes a gateway tap a failed test leaves (broodd removes its own with
/// their networks).
struct Tap(String);

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

/// A `switch` domain with two NICs, one on each of two brood networks,
/// routes between them with the nftables rules of its configuration: a
/// guest on the first network, routed through the domain, pings the host's
/// gateway address on the second (the domain masquerades what leaves its
/// second NIC, as configured, so the host answers on-link), and its
/// ruleset carries the configured forward rule. The far side is the host's
/// tap rather than a second guest, so the test keeps two VMs.
#[test]
fn a_switch_domain_routes_between_two_networks_with_its_configured_rules() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    // A name and a subnet no other test uses: the gateway tap is host-wide.
    // (The first, from the pid, whose subnet and tap the host lacks.)
    let free = |n: u32| {
        let out = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        !out(&["-4", "addr"]).contains(&format!("10.93.{n}."))
            && out(&["link", "show", &format!("bn-swf{n}")]).is_empty()
    };
    let n = (0..250)
        .map(|i| (std::process::id() + i) % 250)
        .find(|n| free(*n))
        .expect("a free 10.93.N.0/24");
    let far = format!("swf{n}");
    let _tap = Tap(format!("bn-{far}"));
    let subnet = format!("10.93.{n}.0/24");
    b.ok(
        "POST",
        "/v1/networks",
        Some(&json!({"name": "near", "subnet": "10.77.0.0/24"})),
    );
    b.ok(
        "POST",
        "/v1/networks",
        Some(&json!({"name": far, "subnet": subnet, "gateway": true})),
    );
    service_pool(&b, "sw", &["near", &far]);
    let (s, v) = b.call(
        "POST",
        "/v1/services",
        Some(&json!({"class": "switch", "pool": "sw", "name": "router",
                     "set": {"mode": "route", "masquerade": "eth1",
                             "forward_rules": "udp dport 9 drop"}})),
    );
    assert_eq!(s, 201, "{v}\n{}", b.log());
    assert_eq!(v["macs"].as_array().map(Vec::len), Some(2), "{v}");
    let member = v["member"].as_str().unwrap().to_string();
    let (near_ip, far_ip) = (
        address_on(&b, "near", &member),
        address_on(&b, &far, &member),
    );
    wait_address(&b, &member, "eth0", &near_ip);
    wait_address(&b, &member, "eth1", &far_ip);
    let (_, rules, _) = b.exec(&member, "nft list table inet brood_switch");
    assert!(
        rules.contains("oifname \"eth1\" masquerade") && rules.contains("udp dport 9 drop"),
        "{rules}"
    );
    guest_on(&b, "g", "near");
    let ip = address_on(&b, "near", "g");
    wait_address(&b, "g", "eth0", &ip);
    let host_far = format!("10.93.{n}.1");
    // Not routed yet: the guest has no way to the far network.
    let (code, _, _) = b.exec("g", &format!("ping -c 1 -W 2 {host_far}"));
    assert_ne!(code, 0, "reached {host_far} without a route");
    let (code, out, err) = b.exec(
        "g",
        &format!("ip route add 10.93.{n}.0/24 via {near_ip} && ping -c 3 -W 5 {host_far}"),
    );
    assert_eq!(code, 0, "{out}{err}\n{rules}");
    let (_, counted, _) = b.exec(&member, "cat /proc/sys/net/ipv4/ip_forward");
    assert_eq!(counted.trim(), "1");
    assert_eq!(b.call("DELETE", "/v1/services/router", None).0, 204);
    b.ok("POST", "/v1/partitions/g/stop", None);
    b.ok("DELETE", "/v1/partitions/g", None);
    assert_eq!(b.call("DELETE", "/v1/pools/sw", None).0, 204);
    for net in ["near", far.as_str()] {
        assert_eq!(
            b.call("DELETE", &format!("/v1/networks/{net}"), None).0,
            204
        );
    }
    b.verify_ok();
    drop(b);
    // Under load a QEMU killed at a delete takes a while to be reaped.
    wait_until(Duration::from_secs(60), || env.qemu_pids().is_empty());
    for pid in env.qemu_pids() {
        let name = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        eprintln!(
            "left: {pid}: {}",
            String::from_utf8_lossy(&name).replace('\0', " ")
        );
    }
    env.assert_clean();
}
