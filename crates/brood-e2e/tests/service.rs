//! Service classes of the Debian `service` image (`brood image build
//! --service`, built once per run into `BROOD_DATA_DIR`) on real VMs: a pool
//! of that image refills by clone, and a `dns` domain (dnsmasq) answers for
//! the names brood registered with it and forwards the rest (to a stub
//! upstream: a second dnsmasq the request's init script starts), and an
//! `nfs` domain exports a directory that an NFS mount reads.

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
