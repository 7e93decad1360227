#![allow(clippy::tests_outside_test_module)]
//! The root disk in the ledger (issue 9), against the fake engine: a
//! partition of an image with a root disk is charged its overlay's virtual
//! size with its other disks, `show` lists it, a define past the host's
//! disk space is refused with the numbers and leaves nothing, and a forked
//! child charges its own overlay. (Real VMs: `brood-e2e/tests/debian.rs`.)

use axum::http::StatusCode;
use brood_ledger::Resources;
use brood_testkit::TestApp;
use serde_json::{Value, json};

/// Writes image `name` with a 2 GiB qcow2 root disk into the data directory.
fn image(app: &TestApp, name: &str) {
    let dir = app.paths().images().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // The kernel and initramfs TestApp's default image has (the engine checks a kernel's header).
    std::fs::copy(app.paths().kernel(), dir.join(brood_image::KERNEL_FILE)).unwrap();
    std::fs::copy(app.paths().initrd(), dir.join(brood_image::INITRD_FILE)).unwrap();
    let root = dir.join(brood_image::ROOT_DISK_FILE);
    let o = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&root)
        .arg("2G")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = |file: &str| {
        let size = std::fs::metadata(dir.join(file)).unwrap().len();
        json!({"file": file, "sha256": "ab".repeat(32), "size_bytes": size})
    };
    let manifest = json!({
        "format_version": brood_image::FORMAT_VERSION,
        "fingerprint": "cd".repeat(32),
        "kernel": {"metapackage": "linux-image-cloud-amd64", "metapackage_version": "1",
                   "package": "linux-image-r", "version": "2", "release": "r"},
        "busybox": {"package": "busybox-static", "version": "3"},
        "agent": {"sha256": "ef".repeat(32), "size_bytes": 9},
        "modules": [],
        "builtin_modules": [],
        "services": {"independent": [], "dependent": []},
        "outputs": {
            "kernel": out(brood_image::KERNEL_FILE),
            "initrd": out(brood_image::INITRD_FILE),
            "root_disk": out(brood_image::ROOT_DISK_FILE),
        },
    });
    std::fs::write(
        dir.join(brood_image::MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
}

async fn holds(app: &TestApp, owner: &str) -> Value {
    let (_, l) = app.get("/v1/ledger").await;
    l["owners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["owner"] == owner)
        .map(|o| o["holds"].clone())
        .unwrap_or(Value::Null)
}

fn def(name: &str, disk_gib: u64) -> Value {
    json!({
        "name": name,
        "configs": {"default": {"memory_mib": 256, "image": "deb",
                                "disks": [{"name": "d", "size_gib": disk_gib}]}},
        "start": true,
    })
}

#[tokio::test]
async fn the_root_disk_is_charged_listed_refused_past_capacity_and_charged_to_children() {
    let app = TestApp::builder()
        .capacity(Resources {
            memory_mib: 8192,
            vcpus: 8,
            disk_gib: 8,
            nics: 8,
        })
        .build()
        .await;
    image(&app, "deb");
    let (s, v) = app.post("/v1/partitions", def("a", 1)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // 1 GiB data disk + the 2 GiB root overlay.
    assert_eq!(holds(&app, "a").await["disk_gib"], 3);
    let (_, p) = app.get("/v1/partitions/a").await;
    let disks = p["disks"].as_array().unwrap();
    assert_eq!(disks[0]["name"], "image.root", "{p}");
    assert_eq!(disks[0]["size_gib"], 2, "{p}");
    assert!(
        disks[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("image.root.qcow2"),
        "{p}"
    );
    assert_eq!(disks[1]["name"], "d", "{p}");

    // A stop and start keeps the charge (the start recomputes the demand).
    let (s, v) = app
        .post("/v1/partitions/a/stop", json!({"timeout_s": 5}))
        .await;
    assert!(s.is_success(), "{v}");
    let (s, v) = app.post_empty("/v1/partitions/a/start").await;
    assert!(s.is_success(), "{v}");
    assert_eq!(holds(&app, "a").await["disk_gib"], 3);

    // 3 GiB held, 5 free: a define of 2 + 2 fits, one more of 2 + 2 does
    // not, and says by how much; nothing of it is left.
    let (s, v) = app.post("/v1/partitions", def("b", 2)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app.post("/v1/partitions", def("c", 2)).await;
    assert!(s.is_client_error(), "{s} {v}");
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains('4') && msg.contains('1'), "the numbers: {msg}");
    let (s, _) = app.get("/v1/partitions/c").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = app.delete("/v1/partitions/b?force=true").await;
    assert!(s.is_success(), "{v}");

    // A child has an overlay of its template's root disk of its own.
    let (s, v) = app.template("a", None, 0).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app.post("/v1/templates/a/fork", json!({"count": 1})).await;
    assert!(s.is_success(), "{v}");
    let child = v["children"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(holds(&app, &child).await["disk_gib"], 2, "{v}");
    let (_, l) = app.get("/v1/ledger/verify").await;
    assert_eq!(l["ok"], true, "{l}");
}
