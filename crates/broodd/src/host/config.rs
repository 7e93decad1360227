//! A partition's configurations as the ledger keeps them (JSON text of
//! `brood_api::PartitionConfig`s), what the active one demands, and the
//! engine spec a partition starts with.

use std::collections::BTreeMap;

use brood_api as api;
use brood_engine::{DiskSpec, Limits, MacAddr, NicBackend, NicSpec, VmSpec};
use brood_ledger::{PartitionRecord, Resources};

use super::error::{HostError, HostResult};
use super::paths::Paths;

/// The configurations stored in a record.
pub fn configs_of(rec: &PartitionRecord) -> HostResult<BTreeMap<String, api::PartitionConfig>> {
    rec.configs
        .parse::<BTreeMap<String, api::PartitionConfig>>()
        .map_err(|e| HostError::corrupt(format!("the configurations of {}", rec.name), e))
}

/// The active configuration of a record.
pub fn active_config(rec: &PartitionRecord) -> HostResult<api::PartitionConfig> {
    let mut configs = configs_of(rec)?;
    configs.remove(&rec.active_config).ok_or_else(|| {
        HostError::corrupt(
            format!("partition {}", rec.name),
            format!(
                "its active configuration {:?} is missing",
                rec.active_config
            ),
        )
    })
}

/// The disks of a partition across all its configurations: name to size.
/// A disk named in several configurations must have one size.
pub fn all_disks(
    configs: &BTreeMap<String, api::PartitionConfig>,
) -> HostResult<BTreeMap<String, u64>> {
    let mut disks = BTreeMap::new();
    for (cname, c) in configs {
        for d in &c.disks {
            if let Some(&size) = disks.get(&d.name)
                && size != d.size_gib
            {
                return Err(HostError::invalid(format!(
                    "disk {:?} is {size} GiB in one configuration and {} GiB in {cname:?}: a disk has one size",
                    d.name, d.size_gib
                )));
            }
            disks.insert(d.name.clone(), d.size_gib);
        }
    }
    Ok(disks)
}

/// Memory QEMU needs besides its guest's memory; a partition is charged it
/// and its memory cgroup has room for it. Measured: a 256 MiB guest's QEMU
/// holds 76 MiB of its own right after boot under TCG (heap plus a
/// translation cache that grows to 64 MiB, `BROOD_TB_SIZE_MIB`), less under KVM.
pub const QEMU_OVERHEAD_MIB: u64 = 128;

/// The memory a partition running `config` is charged, which is also its
/// memory cgroup's limit: its guest memory plus QEMU's own, or its policy's
/// larger `memory_limit_mib`. The ledger never holds less than the VM may use.
pub fn memory_charge(config: &api::PartitionConfig) -> u64 {
    let own = config.memory_mib.saturating_add(QEMU_OVERHEAD_MIB);
    config.policy.memory_limit_mib.map_or(own, |l| l.max(own))
}

/// What a partition holds while it runs `config`, plus its disks (held always).
pub fn demand(config: &api::PartitionConfig, disks: &BTreeMap<String, u64>) -> Resources {
    Resources {
        memory_mib: memory_charge(config),
        vcpus: u64::from(config.vcpus),
        disk_gib: disks.values().fold(0u64, |a, b| a.saturating_add(*b)),
        nics: config.nics.len() as u64,
    }
}

/// What a partition of record `rec` demands with its active configuration.
pub fn demand_of(rec: &PartitionRecord) -> HostResult<Resources> {
    let config = active_config(rec)?;
    let disks = all_disks(&configs_of(rec)?)?;
    Ok(demand(&config, &disks))
}

/// cgroup limits of a policy.
pub fn limits(p: &api::Policy) -> Limits {
    Limits {
        cpu_weight: p.cpu_weight,
        cpu_cap_pct: p.cpu_cap_pct,
        memory_limit_mib: p.memory_limit_mib,
    }
}

/// The engine spec a partition starts with: the guest image, its active
/// configuration, the VM kept alive across broodd restarts.
pub fn vm_spec(rec: &PartitionRecord, paths: &Paths) -> HostResult<VmSpec> {
    let c = active_config(rec)?;
    let image = super::image::for_partition(paths, rec.uuid, c.image.as_deref())?;
    let mut spec = VmSpec::new(rec.uuid.to_string(), image.kernel);
    spec.initrd = Some(image.initrd);
    spec.vcpus = c.vcpus;
    spec.mem_mib = c.memory_mib;
    // A disk image booted without brood's agent has no channel to it.
    spec.agent = c.boot_disk.as_ref().is_none_or(|b| b.agent);
    let brood_args = match (&c.boot_disk, c.init) {
        (Some(boot), _) => super::boot_disk::cmdline(boot),
        (None, init) => init.unwrap_or_default().kernel_args(),
    };
    spec.cmdline = format!("{brood_args} {}", c.cmdline).trim().to_string();
    spec.die_with_parent = false;
    spec.limits = limits(&c.policy);
    // Every VM runs in a memory cgroup no larger than its charge.
    spec.limits.memory_limit_mib = Some(memory_charge(&c));
    // An image's root disk (the partition's overlay of it) is /dev/vda.
    // So is an imported boot disk, whose cloud-init seed comes last.
    let root = match &c.boot_disk {
        Some(_) => Some(paths.image_root(rec.uuid)),
        None => image.root_disk.map(|_| paths.image_root(rec.uuid)),
    };
    let seed = c.boot_disk.as_ref().map(|_| DiskSpec {
        read_only: true,
        ..DiskSpec::new(super::boot_disk::seed_path(paths, rec.uuid))
    });
    spec.disks = root
        .into_iter()
        .map(DiskSpec::own_qcow2)
        .chain(c.disks.iter().map(|d| DiskSpec {
            throttle: (d.iops.is_some() || d.mbps.is_some()).then_some(brood_engine::Throttle {
                iops: d.iops,
                mbps: d.mbps,
            }),
            ..DiskSpec::own_qcow2(paths.disk(rec.uuid, &d.name))
        }))
        .chain(seed)
        .collect();
    spec.nics = c
        .nics
        .iter()
        .enumerate()
        .map(|(i, n)| NicSpec {
            backend: match n.network.as_str() {
                "user" => NicBackend::User,
                "user-unrestricted" => NicBackend::UserUnrestricted,
                bridge => NicBackend::Bridge(bridge.to_string()),
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

/// The index in a spec of `spec_disks` disks made from `c` of `c`'s first
/// disk: after the root disk (an image's or a boot disk), if any, and
/// before a boot disk's cloud-init seed, which is last.
pub fn first_config_disk(spec_disks: usize, c: &api::PartitionConfig) -> usize {
    let seed = usize::from(c.boot_disk.is_some());
    spec_disks
        .saturating_sub(c.disks.len())
        .saturating_sub(seed)
}

/// A MAC derived from the partition's uuid, so it survives restarts.
pub fn stable_mac(uuid: uuid::Uuid, index: usize) -> MacAddr {
    let b = uuid.as_bytes();
    let i = u8::try_from(index % 256).unwrap_or(0);
    MacAddr([0x52, 0x54, 0x00, b[13] ^ i, b[14], b[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_networks_are_isolated_unless_opted_out() {
        let mut c = api::PartitionConfig::default();
        for net in ["user", "user-unrestricted", "br0"] {
            c.nics.push(api::NicConfig {
                network: net.into(),
                mac: None,
                mbps: None,
            });
        }
        let mut rec = PartitionRecord::new("n");
        rec.active_config = "d".into();
        rec.configs =
            brood_ledger::JsonText::from_serialize(&BTreeMap::from([("d".to_string(), c)]))
                .unwrap();
        let paths = Paths {
            data: "/d".into(),
            image: "/i".into(),
            templates: "/t".into(),
        };
        let nics: Vec<NicBackend> = vm_spec(&rec, &paths)
            .unwrap()
            .nics
            .into_iter()
            .map(|n| n.backend)
            .collect();
        assert_eq!(
            nics,
            [
                NicBackend::User,
                NicBackend::UserUnrestricted,
                NicBackend::Bridge("br0".into())
            ]
        );
    }

    #[test]
    fn config_disks_sit_between_the_root_and_the_seed() {
        let paths = Paths {
            data: "/d".into(),
            image: "/i".into(),
            templates: "/t".into(),
        };
        let disk = |name: &str| api::DiskConfig {
            name: name.into(),
            size_gib: 1,
            io_zone: None,
            iops: None,
            mbps: None,
        };
        let c = api::PartitionConfig {
            disks: vec![disk("a"), disk("b")],
            boot_disk: Some(api::BootDiskConfig {
                size_gib: 2,
                agent: true,
                user_data: None,
            }),
            ..Default::default()
        };
        let mut rec = PartitionRecord::new("n");
        rec.active_config = "d".into();
        rec.configs =
            brood_ledger::JsonText::from_serialize(&BTreeMap::from([("d".to_string(), c.clone())]))
                .unwrap();
        let spec = vm_spec(&rec, &paths).unwrap();
        let names: Vec<String> = spec
            .disks
            .iter()
            .map(|d| d.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["image.root.qcow2", "a.qcow2", "b.qcow2", "boot.seed.img"]
        );
        let first = first_config_disk(spec.disks.len(), &c);
        assert_eq!(names[first], "a.qcow2");
        assert!(spec.disks[3].read_only);
        assert!(
            spec.cmdline
                .starts_with("brood.root=auto brood.init=/sbin/init")
        );
        // Without a boot disk, the configuration's disks come first.
        let plain = api::PartitionConfig {
            disks: vec![disk("a")],
            ..Default::default()
        };
        assert_eq!(first_config_disk(1, &plain), 0);
    }

    #[test]
    fn disks_have_one_size_across_configs() {
        let mut configs = BTreeMap::new();
        let mut a = api::PartitionConfig::default();
        a.disks.push(api::DiskConfig {
            name: "d".into(),
            size_gib: 1,
            io_zone: None,
            iops: None,
            mbps: None,
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
        assert_eq!(
            (d.memory_mib, d.vcpus, d.disk_gib, d.nics),
            (256 + QEMU_OVERHEAD_MIB, 1, 1, 0)
        );
        a.policy.memory_limit_mib = Some(1000);
        assert_eq!(memory_charge(&a), 1000);
        a.policy.memory_limit_mib = Some(10);
        assert_eq!(memory_charge(&a), 256 + QEMU_OVERHEAD_MIB);
    }
}
