//! Checking what clients send before anything is recorded: partition and
//! template names, whole definitions and each configuration in them.

use brood_api as api;
use brood_engine::MacAddr;

use crate::host::config::{all_disks, limits};
use crate::host::{HostError, HostResult};

/// Checks a template's name: a partition name whose children's names
/// (`NAME-INDEX`) are hostnames too.
pub fn check_template_name(name: &str) -> HostResult<()> {
    // Room for "-" and the largest index.
    let longest = format!("{name}-{}", u32::MAX);
    if !valid_name(name) || !brood_proto::hostname::is_valid(&longest) {
        return Err(HostError::invalid(format!(
            "template name {name:?} must be 1-53 characters of a-z, 0-9, '.', '-', starting with a letter or digit: its children are named NAME-INDEX, and a child's name is its hostname"
        )));
    }
    Ok(())
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

/// Checks a whole definition.
pub fn validate_define(req: &api::DefineRequest) -> HostResult<String> {
    if !valid_name(&req.name) {
        return Err(HostError::invalid(format!(
            "name {:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-', start with a letter or digit, and not be a uuid",
            req.name
        )));
    }
    if req.configs.is_empty() {
        return Err(HostError::invalid(
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
            return Err(HostError::invalid(format!(
                "active_config {a:?} is not one of the configurations ({})",
                req.configs.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        None => req.configs.keys().next().cloned().unwrap_or_default(),
    };
    Ok(active)
}

/// Checks one configuration.
pub fn validate_config(cname: &str, c: &api::PartitionConfig) -> HostResult<()> {
    let bad = |m: String| Err(HostError::invalid(format!("configuration {cname:?}: {m}")));
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
        .map_err(|e| HostError::invalid(format!("configuration {cname:?}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
                .to_string()
                .contains("not one of")
        );
        let mut r = req("ok");
        r.configs.get_mut("default").unwrap().vcpus = 0;
        assert!(
            validate_define(&r)
                .unwrap_err()
                .to_string()
                .contains("vcpus 0")
        );
        let mut r = req("ok");
        r.configs
            .get_mut("default")
            .unwrap()
            .nics
            .push(api::NicConfig {
                network: "nobr0x".into(),
                mac: None,
            });
        assert!(
            validate_define(&r)
                .unwrap_err()
                .to_string()
                .contains("nobr0x")
        );
        let mut r = req("ok");
        let d = api::DiskConfig {
            name: "data".into(),
            size_gib: 1,
        };
        r.configs.get_mut("default").unwrap().disks = vec![d.clone(), d];
        assert!(
            validate_define(&r)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let mut r = req("ok");
        r.configs.clear();
        assert!(validate_define(&r).is_err());
    }

    #[test]
    fn template_names_leave_room_for_child_indices() {
        assert!(check_template_name("web").is_ok());
        assert!(check_template_name("db_1").is_err());
        assert!(check_template_name(&"a".repeat(53)).is_ok());
        assert!(check_template_name(&"a".repeat(54)).is_err());
    }
}
