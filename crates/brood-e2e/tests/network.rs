//! Networks served by switch I/O partitions, against real VMs (at most two
//! at once): two VMs on one network ping each other, and a VM on another
//! zone's network is unreachable even from an address on its subnet; the
//! host reaches a VM through the gateway tap; kill -9 of the switch while a
//! guest pings: the switch is restarted and the ping resumes; stopping the
//! switch with clients is refused; kill -9 of broodd with the switch
//! running, then the switch is adopted and `verify` is clean.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::process::Command;
use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, wait_until};
use serde_json::{Value, json};

/// A name no other test (or run) uses: taps and switches are host-wide.
fn unique(prefix: &str) -> String {
    let n = std::process::id() % 100_000;
    format!("{prefix}{n}")
}

/// Deletes the gateway taps a failed test leaves (broodd's own are removed
/// with their networks).
struct Taps(Vec<String>);

impl Drop for Taps {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = Command::new("ip").args(["link", "del", t]).output();
        }
    }
}

fn create_vm(b: &Broodd, name: &str, network: &str) {
    let req = json!({
        "name": name,
        "configs": {"default": {"memory_mib": 256, "nics": [{"network": network}]}},
        "start": true
    });
    let (s, v) = b.call("POST", "/v1/partitions", Some(&req));
    assert_eq!(s, 201, "{v}");
}

/// Waits until the guest's eth0 has `addr` (given by its agent).
fn wait_address(b: &Broodd, vm: &str, addr: &str) {
    let got = wait_until(Duration::from_secs(120), || {
        let (_, out, _) = b.exec(vm, "ip -4 addr show eth0");
        out.contains(&format!("inet {addr}/"))
    });
    let (_, out, _) = b.exec(vm, "ip -4 addr show eth0");
    assert!(got, "{vm} never got {addr}: {out}\n{}", b.log());
}

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

fn switch(b: &Broodd, name: &str) -> Value {
    b.ok("GET", &format!("/v1/io/{name}"), None)
}

fn brood(b: &Broodd, args: &[&str]) -> std::process::Output {
    b.brood().args(args).output().expect("run brood")
}

#[test]
fn vms_on_a_network_reach_each_other_and_nothing_in_another_zone() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    // The README's names: networks without a gateway make nothing host-wide.
    let (lan, far) = ("lan".to_string(), "far".to_string());
    let o = brood(&b, &["network", "create", &lan, "--subnet", "10.77.0.0/24"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = brood(
        &b,
        &[
            "network",
            "create",
            &far,
            "--subnet",
            "10.78.0.0/24",
            "--zone",
            "far",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A bad subnet is refused with what to fix, and leaves nothing.
    let o = brood(
        &b,
        &["network", "create", "bad", "--subnet", "10.79.0.1/24"],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("10.79.0.0/24"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(b.call("GET", "/v1/networks/bad", None).0, 404);

    let o = brood(
        &b,
        &["vm", "create", "a", "--memory", "256", "--nic", "lan"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    create_vm(&b, "b", &lan);
    let (ip_a, ip_b) = (member_address(&b, &lan, "a"), member_address(&b, &lan, "b"));
    assert_eq!(ip_a, "10.77.0.1");
    assert_ne!(ip_a, ip_b);
    wait_address(&b, "a", &ip_a);
    wait_address(&b, "b", &ip_b);
    let o = brood(&b, &["vm", "show", "a"]);
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("eth0 10.77.0.1/24 on lan"), "{shown}");
    let o = brood(&b, &["network", "show", "lan"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&ip_b));
    let (code, out, _) = b.exec("a", &format!("ping -c 3 -W 5 {ip_b}"));
    assert_eq!(code, 0, "a cannot ping b: {out}");
    let (code, out, _) = b.exec("b", &format!("ping -c 3 -W 5 {ip_a}"));
    assert_eq!(code, 0, "b cannot ping a: {out}");
    let io = switch(&b, "switch-default");
    assert_eq!(io["kind"], "io");
    assert_eq!(io["state"], "running");
    assert_eq!(io["clients"].as_array().unwrap().len(), 2, "{io}");
    // A restart on request: a new process, the guests reconnect.
    let o = brood(&b, &["io", "restart", "switch-default"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(wait_until(Duration::from_secs(30), || {
        let s = switch(&b, "switch-default");
        s["state"] == "running" && s["pid"] != io["pid"]
    }));
    let (code, out, _) = b.exec("a", &format!("ping -c 2 -W 5 {ip_b}"));
    assert_eq!(code, 0, "no ping after the restart: {out}");
    let o = brood(&b, &["io", "list"]);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        listed.contains("switch-default") && listed.contains("switch-far"),
        "{listed}"
    );
    let o = brood(&b, &["io", "stop", "switch-default"]);
    assert!(!o.status.success(), "a switch with clients stopped");

    // b stops: its channel closes and its address is free again.
    b.ok("POST", "/v1/partitions/b/stop", None);
    let n = b.ok("GET", &format!("/v1/networks/{lan}"), None);
    assert_eq!(n["members"].as_array().unwrap().len(), 1, "{n}");

    // c is on a network of zone "far", served by another switch. a gets an
    // address on c's subnet too: only the zones' separation keeps it out.
    create_vm(&b, "c", &far);
    let ip_c = member_address(&b, &far, "c");
    wait_address(&b, "c", &ip_c);
    assert_eq!(switch(&b, "switch-far")["state"], "running");
    let (code, _, _) = b.exec("a", "ip addr add 10.78.0.200/24 dev eth0");
    assert_eq!(code, 0);
    let (code, out, _) = b.exec("a", &format!("ping -c 3 -W 2 {ip_c}"));
    assert_ne!(code, 0, "a reached c across zones: {out}");
    let (code, out, _) = b.exec("c", &format!("ping -c 3 -W 2 {ip_a}"));
    assert_ne!(code, 0, "c reached a across zones: {out}");

    // A network with NICs on it cannot be deleted.
    let o = brood(&b, &["network", "delete", &lan]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("channels open"));
    b.ok("POST", "/v1/partitions/a/stop", None);
    b.ok("POST", "/v1/partitions/c/stop", None);
    for n in [&lan, &far] {
        let o = brood(&b, &["network", "delete", n]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The zones' last networks took their switches with them.
    let io = b.ok("GET", "/v1/io", None);
    assert_eq!(io["items"].as_array().unwrap().len(), 0, "{io}");
    b.verify_ok();
}

#[test]
fn the_switch_survives_kill_9_stop_refusal_and_a_broodd_crash() {
    let env = TestEnv::new();
    let mut b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let net = unique("gw");
    let _taps = Taps(vec![format!("bn-{net}")]);
    let o = brood(
        &b,
        &[
            "network",
            "create",
            &net,
            "--subnet",
            "10.66.0.0/24",
            "--zone",
            "gw",
            "--gateway",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    create_vm(&b, "a", &net);
    create_vm(&b, "b", &net);
    let (ip_a, ip_b) = (member_address(&b, &net, "a"), member_address(&b, &net, "b"));
    // .1 is the host's.
    assert_eq!(ip_a, "10.66.0.2");
    wait_address(&b, "a", &ip_a);
    wait_address(&b, "b", &ip_b);
    // The guest reaches the host through the gateway tap on the switch.
    let (code, out, _) = b.exec("a", "ping -c 2 -W 5 10.66.0.1");
    assert_eq!(code, 0, "a cannot reach its gateway: {out}");
    let (_, routes, _) = b.exec("a", "ip route");
    assert!(routes.contains("default via 10.66.0.1"), "{routes}");

    // kill -9 the switch while a pings b.
    let name = "switch-gw";
    let before = switch(&b, name);
    let pid = before["pid"].as_u64().unwrap();
    let pinger = {
        let sock = b.socket();
        let token = b.token();
        let ip_b = ip_b.clone();
        std::thread::spawn(move || {
            let body =
                json!({"command": format!("ping -c 60 -i 0.25 -W 1 {ip_b}; true")}).to_string();
            brood_e2e::http(
                &sock,
                "POST",
                "/v1/partitions/a/exec",
                Some(&token),
                Some(&body),
                None,
            )
        })
    };
    // Let some replies through first.
    assert!(wait_until(Duration::from_secs(30), || {
        let (_, out, _) = b.exec("b", "cat /proc/net/dev");
        out.lines()
            .find(|l| l.trim_start().starts_with("eth0:"))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|p| p.parse::<u64>().ok())
            .is_some_and(|packets| packets > 8)
    }));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = switch(&b, name);
            s["state"] == "running" && s["pid"].as_u64().is_some_and(|p| p != pid)
        }),
        "the switch was not restarted: {}",
        switch(&b, name)
    );
    assert!(switch(&b, name)["restart_count"].as_u64().unwrap() >= 1);
    let (status, text) = pinger.join().unwrap();
    assert_eq!(status, 200, "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    use base64::Engine as _;
    let out = String::from_utf8_lossy(
        &base64::engine::general_purpose::STANDARD
            .decode(r["stdout_base64"].as_str().unwrap())
            .unwrap(),
    )
    .into_owned();
    // Replies came back after the restart: the last pings were answered.
    let seqs: Vec<u64> = out
        .lines()
        .filter_map(|l| l.split("seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        seqs.iter().any(|s| *s >= 50),
        "no reply after the switch's restart: {out}"
    );
    let (code, out, _) = b.exec("a", &format!("ping -c 2 -W 5 {ip_b}"));
    assert_eq!(code, 0, "{out}");

    // Stopping the switch with clients is refused and changes nothing.
    let o = brood(&b, &["io", "stop", name]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("clients"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(switch(&b, name)["state"], "running");
    let o = brood(&b, &["io", "list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(name));

    // kill -9 of broodd: the switch keeps serving, the next broodd adopts it.
    let pid = switch(&b, name)["pid"].as_u64().unwrap();
    b.kill9();
    let (code, out, _) = {
        b.restart();
        b.exec("a", &format!("ping -c 2 -W 5 {ip_b}"))
    };
    assert_eq!(code, 0, "{out}");
    let s = switch(&b, name);
    assert_eq!(
        s["pid"].as_u64(),
        Some(pid),
        "the switch was not adopted: {s}"
    );
    assert_eq!(s["state"], "running");
    b.verify_ok();
    let o = brood(&b, &["ledger", "verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // --force detaches the clients and stops it.
    let o = brood(&b, &["io", "stop", name, "--force", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["state"], "stopped");
    assert_eq!(s["clients"].as_array().unwrap().len(), 0);
    for vm in ["a", "b"] {
        b.ok("POST", &format!("/v1/partitions/{vm}/stop"), None);
    }
    let o = brood(&b, &["network", "delete", &net]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(format!("bn-{net}"))
            .exists()
    );
    b.verify_ok();
}

#[test]
fn forked_children_on_a_network_get_their_own_addresses_and_macs() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);
    let o = brood(
        &b,
        &["network", "create", "kids", "--subnet", "10.81.0.0/24"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    create_vm(&b, "t", "kids");
    let ip_t = member_address(&b, "kids", "t");
    wait_address(&b, "t", &ip_t);
    b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": "t", "warm": 1})),
    );
    // A template runs no VM: its channel (and address) is given back.
    let n = b.ok("GET", "/v1/networks/kids", None);
    assert!(n["members"].as_array().unwrap().is_empty(), "{n}");
    // One child comes from the warm queue, one is forked cold.
    let r = b.ok("POST", "/v1/templates/t/fork", Some(&json!({"count": 2})));
    let kids: Vec<String> = r["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kids.len(), 2, "{r}");
    let ips: Vec<String> = kids.iter().map(|k| member_address(&b, "kids", k)).collect();
    assert_ne!(ips[0], ips[1]);
    let mut macs = Vec::new();
    for (k, ip) in kids.iter().zip(&ips) {
        wait_address(&b, k, ip);
        let (_, mac, _) = b.exec(k, "cat /sys/class/net/eth0/address");
        macs.push(mac.trim().to_string());
    }
    assert_ne!(macs[0], macs[1], "the children share a MAC");
    let (code, out, _) = b.exec(&kids[0], &format!("ping -c 2 -W 5 {}", ips[1]));
    assert_eq!(code, 0, "{} cannot reach {}: {out}", kids[0], kids[1]);
    let (code, out, _) = b.exec(&kids[1], &format!("ping -c 2 -W 5 {}", ips[0]));
    assert_eq!(code, 0, "{out}");
    b.ok("DELETE", "/v1/templates/t?cascade=true", None);
    let o = brood(&b, &["network", "delete", "kids"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    b.verify_ok();
}
