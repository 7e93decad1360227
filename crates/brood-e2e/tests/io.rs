//! The storage I/O partition against a real VM: a guest whose disk a
//! qemu-storage-daemon serves over NBD writes data of known sha256 while
//! the daemon is killed -9 and restarted mid-write; the write completes
//! without an I/O error, the guest reads back the same sha256, the image
//! holds it, and `qemu-img check` finds it clean.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use brood_e2e::{TestEnv, run};
use brood_engine::storage::{StorageExport, StorageServer, export_name};
use brood_engine::{DiskFormat, DiskSpec, NbdExport};
use brood_proto::ExecRequest;

const READY: Duration = Duration::from_secs(60);
/// What the guest writes: 48 MiB of a pattern the host can make too.
const BYTES: u64 = 48 << 20;
const PATTERN: &str = "yes brood-io-partition | head -c 50331648";

fn sha256_of_shell(cmd: &str) -> String {
    let out = run(Command::new("sh").args(["-c", &format!("{cmd} | sha256sum")]));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_survives_kill_9_of_the_storage_server() {
    let env = TestEnv::new();
    // The server's socket and the VMs' run directories share a file
    // system: QEMU reaches the socket through a hard link in its root.
    let dir = env.run_root().join("io");
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("64M"));
    let mut server = StorageServer::create(&dir.join("nbd.sock")).unwrap();
    let export = StorageExport {
        name: export_name().unwrap(),
        path: img.clone(),
        format: DiskFormat::Qcow2,
    };
    server.start(std::slice::from_ref(&export)).await.unwrap();

    let engine = env.engine();
    let mut spec = env.spec("nbd");
    spec.disks.push(DiskSpec {
        nbd: Some(NbdExport {
            socket: server.socket().to_path_buf(),
            export: export.name.clone(),
        }),
        ..DiskSpec::own_qcow2(&img)
    });
    let vm = engine.boot(&spec).await.unwrap();
    vm.wait_ready(READY).await.unwrap();
    let agent = vm.agent().unwrap();
    let want = sha256_of_shell(PATTERN);

    let done = Arc::new(AtomicBool::new(false));
    let write = async {
        let r = agent
            .exec(&ExecRequest::shell(format!(
                "{PATTERN} | dd of=/dev/vda bs=64k conv=fsync 2>&1; echo rc=$?"
            )))
            .await;
        done.store(true, Ordering::SeqCst);
        r
    };
    let chaos = async {
        // Kill the daemon once the guest's data has started to land.
        let mut pause = Duration::from_millis(5);
        while std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0) < 8 << 20 {
            assert!(
                !done.load(Ordering::SeqCst),
                "the write ended before any data landed"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        let pid = server.pid().unwrap();
        server.kill().await;
        let mid_write = !done.load(Ordering::SeqCst);
        server.start(std::slice::from_ref(&export)).await.unwrap();
        assert_ne!(server.pid(), Some(pid));
        mid_write
    };
    let (out, mid_write) = tokio::join!(write, chaos);
    assert!(
        mid_write,
        "the write had finished before the server was killed"
    );
    let out = out.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("rc=0"), "the guest saw an error: {text}");

    // The guest reads back what it wrote, from the device, not its cache.
    let back = agent
        .exec(&ExecRequest::shell(format!(
            "echo 3 > /proc/sys/vm/drop_caches; head -c {BYTES} /dev/vda | sha256sum"
        )))
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&back.stdout).into_owned();
    assert!(got.starts_with(&want), "guest read {got}, wrote {want}");
    vm.kill().await.unwrap();
    drop(vm);
    server.kill().await;

    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let raw = dir.join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&img)
        .arg(&raw));
    let on_disk = sha256_of_shell(&format!("head -c {BYTES} {}", raw.display()));
    assert_eq!(
        on_disk, want,
        "the image does not hold what the guest wrote"
    );
    env.assert_clean();
}
