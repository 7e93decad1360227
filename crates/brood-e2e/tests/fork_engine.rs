//! Fork at the engine level, on real VMs: a running VM becomes a template,
//! children start from it sharing its memory, and each diverges on its own.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::time::{Duration, Instant};

use brood_e2e::TestEnv;
use brood_engine::Vm;
use brood_proto::ExecRequest;

const READY: Duration = Duration::from_secs(60);

/// PSS of a process in KiB (smaps_rollup).
fn pss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn sh(vm: &Vm, cmd: &str) -> String {
    let out = vm
        .agent()
        .unwrap()
        .exec(&ExecRequest::shell(cmd))
        .await
        .unwrap();
    assert_eq!(
        out.status.code,
        Some(0),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_share_the_template_and_diverge() {
    let env = TestEnv::new();
    let engine = env.engine();
    let parent = engine.boot(&env.spec("parent")).await.unwrap();
    parent.wait_ready(READY).await.unwrap();
    sh(&parent, "echo from-the-parent > /tmp/inherited").await;
    let parent_rss = parent.rss_kib().unwrap();
    let (seq, _) = parent
        .agent()
        .unwrap()
        .prepare_fork(Duration::from_secs(30))
        .await
        .unwrap();
    let tpl_dir = env.run_root().join("tpl");
    let tpl = engine.save_template(&parent, &tpl_dir).await.unwrap();
    drop(parent);
    assert!(
        tpl.state_bytes < 4 << 20,
        "device state is {} bytes",
        tpl.state_bytes
    );

    let mut children = Vec::new();
    for i in 0..3 {
        let spec = tpl.child_spec(&format!("child{i}"), Vec::new()).unwrap();
        let inc = engine.prepare_child(&tpl, &spec).await.unwrap();
        let t0 = Instant::now();
        let vm = engine.start_child(&tpl, inc).await.unwrap();
        let running = t0.elapsed();
        let mut config = brood_proto::ChildConfig {
            index: i,
            hostname: format!("child-{i}"),
            macs: vec![],
            ipv4: None,
            identity: Some(format!("dom-{i}")),
            entropy: vec![u8::try_from(i).unwrap(); 32],
            machine_id: format!("{i:032x}"),
            values: vec![],
            time_unix_ns: 0,
        };
        config.entropy.extend_from_slice(&[7; 32]);
        let report = vm
            .agent()
            .unwrap()
            .complete_fork(seq, config, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(report.failed, None, "{report:?}");
        eprintln!(
            "child {i}: running after {running:?}, ready after {:?}",
            t0.elapsed()
        );
        children.push(vm);
    }
    for (i, vm) in children.iter().enumerate() {
        assert_eq!(sh(vm, "cat /tmp/inherited").await, "from-the-parent\n");
        assert_eq!(sh(vm, "hostname").await, format!("child-{i}\n"));
        sh(vm, &format!("echo child-{i} > /tmp/mine")).await;
    }
    for (i, vm) in children.iter().enumerate() {
        assert_eq!(sh(vm, "cat /tmp/mine").await, format!("child-{i}\n"));
    }
    let sums: Vec<String> =
        futures_lite_join(&children, "head -c 1048576 /dev/urandom | md5sum").await;
    assert!(
        sums[0] != sums[1] && sums[1] != sums[2] && sums[0] != sums[2],
        "{sums:?}"
    );
    let pss: u64 = children.iter().map(|v| pss_kib(v.pid())).sum();
    eprintln!(
        "parent RSS {parent_rss} KiB; children PSS {:?} KiB",
        children
            .iter()
            .map(|v| pss_kib(v.pid()))
            .collect::<Vec<_>>()
    );
    assert!(
        pss < 3 * parent_rss,
        "children PSS {pss} KiB, one parent {parent_rss} KiB"
    );
    for vm in &children {
        vm.kill().await.unwrap();
    }
    drop(children);
    drop(tpl);
    env.assert_clean();
}

async fn futures_lite_join(vms: &[Vm], cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    for vm in vms {
        out.push(sh(vm, cmd).await);
    }
    out
}
