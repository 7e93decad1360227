//! `GET /metrics` from a real broodd after a VM has booted, become a
//! template and forked a child: every state gauge agrees with what the API
//! says, and the latency histograms counted exactly what happened. Also
//! the one bad value of issue 8 item 6 that needs a template to reach:
//! `charge_mib` u64::MAX on a fork.

#![allow(clippy::tests_outside_test_module)] // integration tests are their own module

use std::collections::HashMap;
use std::time::Duration;

use brood_e2e::{Broodd, TestEnv, http, wait_until};
use serde_json::{Value, json};

/// Every sample of a scrape: `name{labels}` to value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn scrape(b: &Broodd) -> HashMap<String, f64> {
    let (status, text) = http(&b.socket(), "GET", "/metrics", Some(&b.token()), None, None);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("# TYPE brood_vms gauge"), "{text}");
    parse(&text)
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:#?}"))
}

#[test]
fn metrics_agree_with_the_api_after_a_vm_runs_and_forks() {
    let env = TestEnv::new();
    let b = Broodd::start(&env, &["--memory-mib", "2048"]);

    // Without the token: 401, like every other route.
    let (status, _) = http(&b.socket(), "GET", "/metrics", None, None, None);
    assert_eq!(status, 401);

    let vm = json!({"name": "web", "configs": {"default": {"memory_mib": 256}}, "start": true});
    b.ok("POST", "/v1/partitions", Some(&vm));
    let (code, out, _) = b.exec("web", "echo up");
    assert_eq!((code, out.as_str()), (0, "up\n"));
    b.ok(
        "POST",
        "/v1/templates",
        Some(&json!({"vm": "web", "warm": 1})),
    );
    let r = b.ok("POST", "/v1/templates/web/fork", Some(&json!({"count": 1})));
    let child = r["children"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(r["children"][0]["status"], "ready", "{r}");

    // Issue 8: charge_mib u64::MAX gave HTTP 500.
    let (status, e) = b.call(
        "POST",
        "/v1/templates/web/fork",
        Some(&json!({"count": 1, "charge_mib": u64::MAX})),
    );
    assert_eq!(status, 400, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("charge_mib 18446744073709551615"), "{msg}");
    assert!(msg.contains("between 48"), "{msg}");
    assert!(msg.contains("and 256 (the template's memory)"), "{msg}");
    let (status, e) = b.call(
        "POST",
        "/v1/templates/web/fork",
        Some(&json!({"count": 1, "charge_mib": 0})),
    );
    assert_eq!(status, 400, "{e}");

    // Warm children are made in the background; wait until it is full, so the
    // API and the scrape see the same.
    assert!(wait_until(Duration::from_secs(120), || {
        b.ok("GET", "/v1/templates/web", None)["warm_ready"] == 1
    }));
    let m = scrape(&b);

    // VMs by stage and run state, as the partition list has them.
    let mut by_state: HashMap<(String, String), f64> = HashMap::new();
    for p in b.ok("GET", "/v1/partitions", None)["items"]
        .as_array()
        .unwrap()
    {
        let k = (
            p["stage"].as_str().unwrap().to_string(),
            p["run_state"].as_str().unwrap().to_string(),
        );
        *by_state.entry(k).or_default() += 1.0;
    }
    assert_eq!(by_state.values().sum::<f64>(), 2.0, "{by_state:?}");
    for stage in ["operating", "template", "construction"] {
        for run_state in ["running", "stopped", "saved", "crashed"] {
            let want = by_state
                .get(&(stage.to_string(), run_state.to_string()))
                .copied()
                .unwrap_or(0.0);
            let key = format!("brood_vms{{stage=\"{stage}\",run_state=\"{run_state}\"}}");
            assert_eq!(get(&m, &key), want, "{key}");
        }
    }
    assert_eq!(
        get(&m, "brood_vms{stage=\"operating\",run_state=\"running\"}"),
        1.0
    );

    // Ledger capacity, holdings and what is available, as /v1/host says.
    let host = b.ok("GET", "/v1/host", None);
    for (res, field) in [
        ("memory_mib", "memory_mib"),
        ("vcpus", "vcpus"),
        ("disk_gib", "disk_gib"),
        ("nics", "nics"),
    ] {
        let l = format!("{{resource=\"{res}\"}}");
        let api = |k: &str| host[k][field].as_f64().unwrap();
        assert_eq!(
            get(&m, &format!("brood_ledger_capacity{l}")),
            api("capacity")
        );
        assert_eq!(
            get(&m, &format!("brood_ledger_held{l}")),
            api("used"),
            "{res}"
        );
        assert_eq!(
            get(&m, &format!("brood_ledger_available{l}")),
            api("available"),
            "{res}"
        );
    }
    assert_eq!(
        get(&m, "brood_ledger_capacity{resource=\"memory_mib\"}"),
        2048.0
    );

    // The template's warm children.
    assert_eq!(
        get(&m, "brood_template_children_ready{template=\"web\"}"),
        1.0
    );
    assert_eq!(get(&m, "brood_template_warm_target{template=\"web\"}"), 1.0);

    // One boot, one fork, both ended well; nothing failed.
    assert_eq!(
        get(&m, "brood_boot_seconds_count{outcome=\"running\"}"),
        1.0
    );
    assert!(get(&m, "brood_boot_seconds_sum{outcome=\"running\"}") > 0.0);
    assert_eq!(get(&m, "brood_fork_seconds_count{outcome=\"ready\"}"), 1.0);
    assert_eq!(
        get(
            &m,
            "brood_fork_seconds_bucket{outcome=\"ready\",le=\"+Inf\"}"
        ),
        1.0
    );
    assert_eq!(get(&m, "brood_boot_seconds_count{outcome=\"failed\"}"), 0.0);
    assert_eq!(get(&m, "brood_fork_seconds_count{outcome=\"failed\"}"), 0.0);

    // API latency by route template, never by name; the refused forks and
    // the 401 are there with their status.
    let api = |method: &str, route: &str, status: u16| {
        let key = format!(
            "brood_api_request_seconds_count{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
        );
        m.get(&key).copied().unwrap_or(0.0)
    };
    assert_eq!(api("POST", "/v1/partitions", 201), 1.0);
    assert_eq!(api("POST", "/v1/templates/{name}/fork", 201), 1.0);
    assert_eq!(api("POST", "/v1/templates/{name}/fork", 400), 2.0);
    assert_eq!(api("POST", "/v1/partitions/{name}/exec", 200), 1.0);
    assert_eq!(api("GET", "/metrics", 401), 1.0);
    assert!(
        !m.keys().any(|k| k.contains(&child)),
        "a child's name is no label"
    );

    // The error counters exist from the start; nothing went wrong.
    assert_eq!(get(&m, "brood_qmp_errors_total"), 0.0);
    for kind in ["reply", "channel", "timeout"] {
        let key = format!("brood_agent_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(get(&m, &key), 0.0, "{key}");
    }

    b.ok("DELETE", "/v1/templates/web?cascade=true", None);
    let m = scrape(&b);
    assert!(
        !m.keys().any(|k| k.contains("template=\"web\"")),
        "a deleted template leaves the metrics"
    );
    assert_eq!(get(&m, "brood_ledger_held{resource=\"memory_mib\"}"), 0.0);
    let _: Value = b.ok("GET", "/v1/ledger/verify", None);
}
