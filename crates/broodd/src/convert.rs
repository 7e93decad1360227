//! Between the wire (brood-api), the ledger (brood-ledger) and the engine
//! (brood-engine): state enums, validation of definitions, the resources a
//! configuration demands, and the `VmSpec` a partition starts with.

use std::collections::BTreeMap;

use brood_api as api;
use brood_engine::{DiskSpec, Limits, MacAddr, NicBackend, NicSpec, VmSpec};
use brood_ledger::{PartitionRecord, Resources, RunState, Stage};

use crate::daemon::Paths;
use crate::error::ApiError;

/// Now, RFC 3339 in UTC.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Ledger stage to wire stage.
pub fn stage_out(s: Stage) -> api::Stage {
    match s {
        Stage::Construction => api::Stage::Construction,
        Stage::Provisioning => api::Stage::Provisioning,
        Stage::Operating => api::Stage::Operating,
        Stage::Manual => api::Stage::Manual,
        Stage::Disabled => api::Stage::Disabled,
        Stage::Decommissioned => api::Stage::Decommissioned,
        Stage::Template => api::Stage::Template,
    }
}

/// Wire stage to ledger stage.
pub fn stage_in(s: api::Stage) -> Stage {
    match s {
        api::Stage::Construction => Stage::Construction,
        api::Stage::Provisioning => Stage::Provisioning,
        api::Stage::Operating => Stage::Operating,
        api::Stage::Manual => Stage::Manual,
        api::Stage::Disabled => Stage::Disabled,
        api::Stage::Decommissioned => Stage::Decommissioned,
        api::Stage::Template => Stage::Template,
    }
}

/// Ledger run state to wire run state.
pub fn run_state_out(s: RunState) -> api::RunState {
    match s {
        RunState::Stopped => api::RunState::Stopped,
        RunState::Starting => api::RunState::Starting,
        RunState::Running => api::RunState::Running,
        RunState::Paused => api::RunState::Paused,
        RunState::Saved => api::RunState::Saved,
        RunState::Crashed => api::RunState::Crashed,
    }
}

/// Ledger resources to wire resources.
pub fn resources_out(r: &Resources) -> api::Resources {
    api::Resources {
        memory_mib: r.memory_mib,
        vcpus: r.vcpus,
        disk_gib: r.disk_gib,
        nics: r.nics,
    }
}

/// Whether `name` is a valid partition name.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b.first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
        && uuid::Uuid::parse_str(name).is_err()
}

fn valid_disk_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// The disks of a partition across all its configurations: name to size.
/// A disk named in several configurations must have one size.
pub fn all_disks(
    configs: &BTreeMap<String, api::PartitionConfig>,
) -> Result<BTreeMap<String, u64>, ApiError> {
    let mut disks = BTreeMap::new();
    for (cname, c) in configs {
        for d in &c.disks {
            if let Some(&size) = disks.get(&d.name)
                && size != d.size_gib
            {
                return Err(ApiError::bad_request(format!(
                    "disk {:?} is {size} GiB in one configuration and {} GiB in {cname:?}: a disk has one size",
                    d.name, d.size_gib
                )));
            }
            disks.insert(d.name.clone(), d.size_gib);
        }
    }
    Ok(disks)
}

/// Checks a whole definition.
pub fn validate_define(req: &api::DefineRequest) -> Result<String, ApiError> {
    if !valid_name(&req.name) {
        return Err(ApiError::bad_request(format!(
            "name {:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-', start with a letter or digit, and not be a uuid",
            req.name
        )));
    }
    if req.configs.is_empty() {
        return Err(ApiError::bad_request(
            "a partition needs at least one configuration in `configs`",
        ));
    }
    for (cname, c) in &req.configs {
        validate_config(cname, c)?;
    }
    all_disks(&req.configs)?;
    let active = match &req.active_config {
        Some(a) if req.configs.contains_key(a) => a.clone(),
        Some(a) => {
            return Err(ApiError::bad_request(format!(
                "active_config {a:?} is not one of the configurations ({})",
                req.configs.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        None => req.configs.keys().next().cloned().unwrap_or_default(),
    };
    Ok(active)
}

/// Checks one configuration.
pub fn validate_config(cname: &str, c: &api::PartitionConfig) -> Result<(), ApiError> {
    let bad = |m: String| {
        Err(ApiError::bad_request(format!(
            "configuration {cname:?}: {m}"
        )))
    };
    if cname.is_empty() || cname.len() > 32 || !valid_disk_name(cname) {
        return bad("configuration names are 1-32 characters of a-z, 0-9, '_', '-'".into());
    }
    if c.vcpus == 0 || c.vcpus > brood_engine::spec::MAX_VCPUS {
        return bad(format!(
            "vcpus {} must be between 1 and {}",
            c.vcpus,
            brood_engine::spec::MAX_VCPUS
        ));
    }
    if c.memory_mib < brood_engine::spec::MIN_MEM_MIB || c.memory_mib > 1 << 22 {
        return bad(format!(
            "memory_mib {} must be between {} and {}",
            c.memory_mib,
            brood_engine::spec::MIN_MEM_MIB,
            1u64 << 22
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in &c.disks {
        if !valid_disk_name(&d.name) {
            return bad(format!(
                "disk name {:?} must be 1-32 characters of a-z, 0-9, '_', '-'",
                d.name
            ));
        }
        if !seen.insert(&d.name) {
            return bad(format!("disk {:?} is listed twice", d.name));
        }
        if d.size_gib == 0 || d.size_gib > 1 << 16 {
            return bad(format!(
                "disk {:?}: size_gib {} must be between 1 and 65536",
                d.name, d.size_gib
            ));
        }
    }
    for n in &c.nics {
        if n.network != "user"
            && !std::path::Path::new("/sys/class/net")
                .join(&n.network)
                .join("bridge")
                .is_dir()
        {
            return bad(format!(
                "network {:?} is neither `user` nor a Linux bridge on this host (create it with `ip link add {} type bridge`)",
                n.network, n.network
            ));
        }
        if let Some(mac) = &n.mac
            && let Err(e) = mac.parse::<MacAddr>()
        {
            return bad(e);
        }
    }
    if c.cmdline.contains('\n') || c.cmdline.len() > 1024 {
        return bad("cmdline must be one line of at most 1024 bytes".into());
    }
    limits(&c.policy)
        .validate()
        .map_err(|e| ApiError::bad_request(format!("configuration {cname:?}: {e}")))?;
    Ok(())
}

/// cgroup limits of a policy.
pub fn limits(p: &api::Policy) -> Limits {
    Limits {
        cpu_weight: p.cpu_weight,
        cpu_cap_pct: p.cpu_cap_pct,
        memory_limit_mib: p.memory_limit_mib,
    }
}

/// What a partition holds while it runs `config`, plus its disks (held always).
pub fn demand(config: &api::PartitionConfig, disks: &BTreeMap<String, u64>) -> Resources {
    Resources {
        memory_mib: config.memory_mib,
        vcpus: u64::from(config.vcpus),
        disk_gib: disks.values().sum(),
        nics: config.nics.len() as u64,
    }
}

/// The configurations stored in a record.
pub fn configs_of(
    rec: &PartitionRecord,
) -> Result<BTreeMap<String, api::PartitionConfig>, ApiError> {
    // Deserialize from the borrowed value: no copy of the JSON tree.
    rec.configs
        .parse::<BTreeMap<String, api::PartitionConfig>>()
        .map_err(|e| ApiError::internal(&format!("configurations of {}", rec.name), &e))
}

/// The active configuration of a record.
pub fn active_config(rec: &PartitionRecord) -> Result<api::PartitionConfig, ApiError> {
    let mut configs = configs_of(rec)?;
    configs.remove(&rec.active_config).ok_or_else(|| {
        ApiError::internal(
            &format!("partition {}", rec.name),
            &std::io::Error::other(format!(
                "active configuration {:?} is missing",
                rec.active_config
            )),
        )
    })
}

/// A record as the API shows it (taken by value: its strings move over);
/// `parent` is the name of the template it was forked from.
pub fn partition_out(
    rec: PartitionRecord,
    paths: &Paths,
    parent: Option<String>,
) -> Result<api::Partition, ApiError> {
    let configs = configs_of(&rec)?;
    let fork = match crate::template::fork_data(&rec) {
        Some(crate::template::ForkData::Child(c)) => Some(crate::fork::child_out(&rec, &c)),
        _ => None,
    };
    let active = configs.get(&rec.active_config);
    let disks = active
        .map(|c| {
            c.disks
                .iter()
                .map(|d| api::DiskInfo {
                    name: d.name.clone(),
                    path: paths.disk(rec.uuid, &d.name).display().to_string(),
                    size_gib: d.size_gib,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(api::Partition {
        name: rec.name,
        uuid: rec.uuid,
        stage: stage_out(rec.stage),
        run_state: run_state_out(rec.run_state),
        active_config: rec.active_config,
        configs,
        pid: rec.pid,
        disks,
        last_exit: rec.last_exit,
        restart_count: rec.restart_count,
        pending_op: rec.pending_op,
        parent,
        fork,
        created_at: rec.created_at,
        updated_at: rec.updated_at,
    })
}

/// The engine spec a partition starts with: the guest image, its active
/// configuration, QEMU kept alive across broodd restarts.
pub fn vm_spec(rec: &PartitionRecord, paths: &Paths) -> Result<VmSpec, ApiError> {
    let c = active_config(rec)?;
    let mut spec = VmSpec::new(rec.uuid.to_string(), paths.kernel());
    spec.initrd = Some(paths.initrd());
    spec.vcpus = c.vcpus;
    spec.mem_mib = c.memory_mib;
    spec.cmdline = c.cmdline.clone();
    spec.die_with_parent = false;
    spec.limits = limits(&c.policy);
    spec.disks = c
        .disks
        .iter()
        .map(|d| DiskSpec::own_qcow2(paths.disk(rec.uuid, &d.name)))
        .collect();
    spec.nics = c
        .nics
        .iter()
        .enumerate()
        .map(|(i, n)| NicSpec {
            backend: if n.network == "user" {
                NicBackend::User
            } else {
                NicBackend::Bridge(n.network.clone())
            },
            mac: n
                .mac
                .as_ref()
                .and_then(|m| m.parse().ok())
                .or_else(|| Some(stable_mac(rec.uuid, i))),
        })
        .collect();
    Ok(spec)
}

/// A MAC derived from the partition's uuid, so it survives restarts.
fn stable_mac(uuid: uuid::Uuid, index: usize) -> MacAddr {
    let b = uuid.as_bytes();
    let i = u8::try_from(index % 256).unwrap_or(0);
    MacAddr([0x52, 0x54, 0x00, b[13] ^ i, b[14], b[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> api::DefineRequest {
        let mut configs = BTreeMap::new();
        configs.insert("default".into(), api::PartitionConfig::default());
        api::DefineRequest {
            name: name.into(),
            configs,
            active_config: None,
            start: false,
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("web-1"));
        assert!(valid_name("0db.primary_2"));
        assert!(!valid_name("Web"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(!valid_name("6f1c2a48-0b9e-4d2b-9a43-5a1f0e7c1b2d"));
    }

    #[test]
    fn definitions_are_checked() {
        assert_eq!(validate_define(&req("ok")).unwrap(), "default");
        let mut r = req("ok");
        r.active_config = Some("nope".into());
        assert!(
            validate_define(&r)
                .unwrap_err()
                .message
                .contains("not one of")
        );
        let mut r = req("ok");
        r.configs.get_mut("default").unwrap().vcpus = 0;
        assert!(validate_define(&r).unwrap_err().message.contains("vcpus 0"));
        let mut r = req("ok");
        r.configs
            .get_mut("default")
            .unwrap()
            .nics
            .push(api::NicConfig {
                network: "nobr0x".into(),
                mac: None,
            });
        assert!(validate_define(&r).unwrap_err().message.contains("nobr0x"));
        let mut r = req("ok");
        let d = api::DiskConfig {
            name: "data".into(),
            size_gib: 1,
        };
        r.configs.get_mut("default").unwrap().disks = vec![d.clone(), d];
        assert!(validate_define(&r).unwrap_err().message.contains("twice"));
        let mut r = req("ok");
        r.configs.clear();
        assert!(validate_define(&r).is_err());
    }

    #[test]
    fn disks_have_one_size_across_configs() {
        let mut configs = BTreeMap::new();
        let mut a = api::PartitionConfig::default();
        a.disks.push(api::DiskConfig {
            name: "d".into(),
            size_gib: 1,
        });
        let mut b = a.clone();
        configs.insert("a".into(), a.clone());
        configs.insert("b".into(), b.clone());
        assert_eq!(all_disks(&configs).unwrap().get("d"), Some(&1));
        b.disks[0].size_gib = 2;
        configs.insert("b".into(), b);
        assert!(all_disks(&configs).is_err());
        let d = demand(
            &a,
            &all_disks(&BTreeMap::from([("a".to_string(), a.clone())])).unwrap(),
        );
        assert_eq!((d.memory_mib, d.vcpus, d.disk_gib, d.nics), (256, 1, 1, 0));
    }
}
