//! Checking what clients send before anything is recorded: partition and
//! template names, whole definitions and each configuration in them.

use brood_api as api;
use brood_engine::MacAddr;

use crate::host::config::{all_disks, limits};
use crate::host::{HostError, HostResult};

/// The NIC network that opts into QEMU's user network with outbound NAT
/// and the host's loopback reachable (`restrict=off`); plain `user` reaches
/// neither (README, "Security").
pub const USER_UNRESTRICTED: &str = "user-unrestricted";

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

/// Largest guest memory a configuration may ask for (4 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 22;
/// Largest disk (64 TiB).
pub const MAX_DISK_GIB: u64 = 1 << 16;
/// Most configurations one partition may have.
pub const MAX_CONFIGS: usize = 32;
/// Most zones one configuration may require.
pub const MAX_ZONES: usize = 32;
/// Scheduling priorities run from `-MAX_PRIORITY` to `MAX_PRIORITY`.
pub const MAX_PRIORITY: i32 = 1000;
/// Longest extra kernel command line: the x86 kernel takes 2048 bytes
/// (`COMMAND_LINE_SIZE`), and brood's own arguments need the rest.
pub const MAX_CMDLINE: usize = 1024;
/// virtio devices of QEMU's `microvm` with ACPI on, the machine broodd
/// runs (see `Machine::virtio_slots`).
pub const MICROVM_VIRTIO_SLOTS: usize = brood_engine::Machine::Microvm.virtio_slots();
/// virtio devices every broodd VM uses before its disks and NICs: the
/// agent's virtio-serial and virtio-rng.
pub const FIXED_VIRTIO_DEVICES: usize = 2;
/// Most disks and NICs together in one configuration.
pub const MAX_DEVICES: usize = MICROVM_VIRTIO_SLOTS - FIXED_VIRTIO_DEVICES;
/// What a forked child is charged at least: QEMU's own memory besides the
/// guest's plus the pages a child dirties taking its identity. Measured
/// with QEMU 10.0.2 (microvm, TCG, tb-size 64): 17 MiB of anonymous memory
/// in a QEMU that has not run yet, 27 MiB of private memory in a child
/// just ready, 33 MiB after its first exec; TCG's translation cache grows
/// from there.
pub const MIN_CHARGE_MIB: u64 = 48;
/// Memory a limit must leave QEMU besides its guest's memory.
pub const QEMU_OVERHEAD_MIB: u64 = crate::host::config::QEMU_OVERHEAD_MIB;

/// Checks a whole definition.
#[cfg(test)]
pub fn validate_define(req: &api::DefineRequest) -> HostResult<String> {
    validate_define_on(req, &std::collections::BTreeSet::new())
}

/// Checks a whole definition on a host whose brood networks are `networks`
/// (a NIC may name one of them instead of a bridge).
pub fn validate_define_on(
    req: &api::DefineRequest,
    networks: &std::collections::BTreeSet<String>,
) -> HostResult<String> {
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
    if req.configs.len() > MAX_CONFIGS {
        return Err(HostError::invalid(format!(
            "configs has {} configurations; a partition has at most {MAX_CONFIGS}",
            req.configs.len()
        )));
    }
    for (cname, c) in &req.configs {
        validate_config(cname, c, networks)?;
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

/// Whether `name` is a valid Linux network interface name (the kernel's
/// `dev_valid_name`: 1-15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace), kept to printable ASCII.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_graphic() && c != b'/' && c != b':')
}

/// Whether `s` is a zone name: 1-64 characters of a-z, 0-9, '_', '.', '-'.
fn valid_zone(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(&c))
}

/// Most service classes one configuration requires.
pub const MAX_REQUIRES: usize = 8;

/// Most bytes of a boot disk's cloud-init user-data (OpenStack's limit).
pub const MAX_USER_DATA_BYTES: usize = 65536;

/// Checks one configuration.
pub fn validate_config(
    cname: &str,
    c: &api::PartitionConfig,
    networks: &std::collections::BTreeSet<String>,
) -> HostResult<()> {
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
    if c.memory_mib < brood_engine::spec::MIN_MEM_MIB || c.memory_mib > MAX_MEMORY_MIB {
        return bad(format!(
            "memory_mib {} must be between {} and {MAX_MEMORY_MIB}",
            c.memory_mib,
            brood_engine::spec::MIN_MEM_MIB,
        ));
    }
    if let Some(b) = &c.boot_disk {
        if c.image.is_some() {
            return bad(
                "boot_disk and image exclude each other: a partition boots a brood image or a disk image it imported".into(),
            );
        }
        if b.size_gib == 0 || b.size_gib > MAX_DISK_GIB {
            return bad(format!(
                "boot_disk: size_gib {} must be between 1 and {MAX_DISK_GIB}",
                b.size_gib
            ));
        }
        if let Some(u) = &b.user_data
            && u.len() > MAX_USER_DATA_BYTES
        {
            return bad(format!(
                "boot_disk: user_data is {} bytes: at most {MAX_USER_DATA_BYTES}",
                u.len()
            ));
        }
    }
    if c.init == Some(api::GuestInit::Systemd) && c.image.is_none() && c.boot_disk.is_none() {
        return bad(
            "init systemd needs an image with a root disk (a Debian image built with --package systemd-sysv): \
             the default image is an initramfs whose init is brood's agent"
                .into(),
        );
    }
    if c.init == Some(api::GuestInit::Agent) && c.boot_disk.is_some() {
        return bad("a boot_disk runs its image's own init: leave init out".into());
    }
    // A boot disk and its cloud-init seed disk take two virtio devices.
    let boot_devices = if c.boot_disk.is_some() { 2 } else { 0 };
    if c.disks.len() + c.nics.len() + boot_devices > MAX_DEVICES {
        return bad(format!(
            "{} disks and {} NICs need {} virtio devices, but the microvm machine has \
             {MICROVM_VIRTIO_SLOTS} and brood uses {FIXED_VIRTIO_DEVICES} itself: give at most \
             {MAX_DEVICES} disks and NICs together",
            c.disks.len() + boot_devices,
            c.nics.len(),
            c.disks.len() + c.nics.len() + boot_devices
        ));
    }
    if c.requires.len() > MAX_REQUIRES {
        return bad(format!(
            "requires names {} service classes: at most {MAX_REQUIRES}",
            c.requires.len()
        ));
    }
    for (i, class) in c.requires.iter().enumerate() {
        if !crate::pool::class::is_class_name(class) {
            return bad(format!(
                "requires {class:?}: a class is 1-32 of a-z, 0-9 and '-', starting with a letter (`brood service classes`)"
            ));
        }
        if c.requires[..i].contains(class) {
            return bad(format!("requires {class:?} twice: name it once"));
        }
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
        if d.size_gib == 0 || d.size_gib > MAX_DISK_GIB {
            return bad(format!(
                "disk {:?}: size_gib {} must be between 1 and {MAX_DISK_GIB}",
                d.name, d.size_gib
            ));
        }
        if d.iops.is_some_and(|n| n == 0 || n > 1_000_000)
            || d.mbps.is_some_and(|n| n == 0 || n > 100_000)
        {
            return bad(format!(
                "disk {:?}: iops must be 1-1000000 and mbps 1-100000 (leave one out for no cap)",
                d.name
            ));
        }
        if let Some(z) = &d.io_zone
            && (z.len() > 32 || !valid_zone(z))
        {
            return bad(format!(
                "disk {:?}: storage zone {z:?} must be 1-32 characters of a-z, 0-9, '_', '.', '-'",
                d.name
            ));
        }
    }
    let mut macs = std::collections::BTreeSet::new();
    for n in &c.nics {
        // The name is checked before it is joined to a path, so a NIC
        // cannot probe host directories (`../../tmp/x`).
        let user =
            n.network == "user" || n.network == USER_UNRESTRICTED || networks.contains(&n.network);
        if !user && !valid_ifname(&n.network) {
            return bad(format!(
                "network {:?} must be `user`, `{USER_UNRESTRICTED}` or the name of a Linux \
                 bridge: 1-15 printable ASCII characters without '/', ':' or spaces, not '.' or '..'",
                n.network
            ));
        }
        if !user && !brood_engine::net::is_bridge(&n.network).unwrap_or(false) {
            return bad(format!(
                "network {:?} is neither `user` nor a Linux bridge on this host (create it with `ip link add {} type bridge`)",
                n.network, n.network
            ));
        }
        if let Some(m) = n.mbps {
            if !networks.contains(&n.network) {
                return bad(format!(
                    "mbps={m} caps a NIC on a brood network (its switch enforces it); {:?} is not one (`brood network list`)",
                    n.network
                ));
            }
            if !(1..=brood_ledger::NIC_MBPS_MAX).contains(&m) {
                return bad(format!(
                    "mbps={m}: a NIC's cap must be 1-{} Mbit/s",
                    brood_ledger::NIC_MBPS_MAX
                ));
            }
        }
        if let Some(mac) = &n.mac {
            let m = match mac.parse::<MacAddr>() {
                Ok(m) => m,
                Err(e) => return bad(e),
            };
            if !macs.insert(m.0) {
                return bad(format!("MAC {mac:?} is given to two NICs"));
            }
        }
    }
    if c.zones.len() > MAX_ZONES {
        return bad(format!(
            "zones has {} entries; at most {MAX_ZONES}",
            c.zones.len()
        ));
    }
    let mut zones = std::collections::BTreeSet::new();
    for z in &c.zones {
        if !valid_zone(z) {
            return bad(format!(
                "zone {z:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-'"
            ));
        }
        if !zones.insert(z) {
            return bad(format!("zone {z:?} is listed twice"));
        }
    }
    if c.cmdline.len() > MAX_CMDLINE || c.cmdline.chars().any(char::is_control) {
        return bad(format!(
            "cmdline must be one line of at most {MAX_CMDLINE} bytes without control characters"
        ));
    }
    validate_policy(c).or_else(bad)
}

/// Checks a configuration's policy against its size.
fn validate_policy(c: &api::PartitionConfig) -> Result<(), String> {
    let p = &c.policy;
    limits(p).validate().map_err(|e| {
        let field = match &e {
            brood_engine::EngineError::InvalidSpec(m) if m.starts_with("cpu weight") => {
                "policy.cpu_weight"
            }
            brood_engine::EngineError::InvalidSpec(m) if m.starts_with("cpu cap") => {
                "policy.cpu_cap_pct"
            }
            _ => "policy.memory_limit_mib",
        };
        format!("{field}: {e}")
    })?;
    if let Some(cap) = p.cpu_cap_pct
        && u64::from(cap) > 100 * u64::from(c.vcpus)
    {
        return Err(format!(
            "policy.cpu_cap_pct {cap} is more than its {} vCPUs can use ({}%): lower it or \
             leave it out",
            c.vcpus,
            100 * u64::from(c.vcpus)
        ));
    }
    if let Some(limit) = p.memory_limit_mib
        && limit < c.memory_mib + QEMU_OVERHEAD_MIB
    {
        return Err(format!(
            "policy.memory_limit_mib {limit} is below memory_mib {} plus {QEMU_OVERHEAD_MIB} MiB \
             for QEMU itself: the guest could not use its memory; raise it to at least {}",
            c.memory_mib,
            c.memory_mib + QEMU_OVERHEAD_MIB
        ));
    }
    if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&p.priority) {
        return Err(format!(
            "policy.priority {} must be between -{MAX_PRIORITY} and {MAX_PRIORITY}",
            p.priority
        ));
    }
    Ok(())
}

/// What a forked child of a template with `template_mib` of memory is
/// charged: `asked`, or a quarter of the template's memory, never below
/// [`MIN_CHARGE_MIB`]. An `asked` outside `MIN_CHARGE_MIB..=template_mib`
/// is refused: a child can never add more than the template's memory.
pub fn child_charge(asked: Option<u64>, template_mib: u64) -> HostResult<u64> {
    let top = template_mib.max(MIN_CHARGE_MIB);
    match asked {
        None => Ok((template_mib / 4).clamp(MIN_CHARGE_MIB, top)),
        Some(c) if (MIN_CHARGE_MIB..=top).contains(&c) => Ok(c),
        Some(c) => Err(HostError::invalid(format!(
            "charge_mib {c} must be between {MIN_CHARGE_MIB} (QEMU's own memory and what a child \
             dirties taking its identity) and {top} (the template's memory); leave it out for \
             a quarter of the template's memory"
        ))),
    }
}

/// Most entries in an exec's `argv` or `env`.
pub const MAX_EXEC_ITEMS: usize = 4096;
/// Longest exec timeout (a day).
pub const MAX_EXEC_TIMEOUT_MS: u64 = 86_400_000;
/// Longest wait for a guest agent to be ready (10 minutes).
pub const MAX_READY_TIMEOUT_MS: u64 = 600_000;

/// Checks an exec request's fields (which of `command` and `argv` is given
/// is the handler's business).
pub fn validate_exec(req: &api::ExecRequest) -> HostResult<()> {
    let bad = |m: String| Err(HostError::invalid(m));
    if req.command.as_deref().is_some_and(|c| c.contains('\0')) {
        return bad("command must not contain NUL bytes".into());
    }
    if let Some(argv) = &req.argv {
        if argv.len() > MAX_EXEC_ITEMS {
            return bad(format!(
                "argv has {} entries; at most {MAX_EXEC_ITEMS}",
                argv.len()
            ));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return bad("argv entries must not contain NUL bytes".into());
        }
    }
    if req.env.len() > MAX_EXEC_ITEMS {
        return bad(format!(
            "env has {} entries; at most {MAX_EXEC_ITEMS}",
            req.env.len()
        ));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return bad(format!(
                "env {k:?}: names are non-empty without '=' or NUL, values without NUL"
            ));
        }
    }
    if let Some(t) = req.timeout_ms
        && !(1..=MAX_EXEC_TIMEOUT_MS).contains(&t)
    {
        return bad(format!(
            "timeout_ms {t} must be between 1 and {MAX_EXEC_TIMEOUT_MS} (a day); leave it out \
             for no timeout"
        ));
    }
    if let Some(t) = req.ready_timeout_ms
        && t > MAX_READY_TIMEOUT_MS
    {
        return bad(format!(
            "ready_timeout_ms {t} must be at most {MAX_READY_TIMEOUT_MS} (10 minutes)"
        ));
    }
    Ok(())
}

/// Longest value in an identity pool.
pub const MAX_POOL_VALUE: usize = 256;
/// Most values a pool may have.
pub const MAX_POOL_VALUES: usize = 65_536;

/// Checks a pool's name and its identity values (ranges, prefixes and
/// gateways are checked where they are expanded).
pub fn validate_pool(req: &api::IdentityPoolCreateRequest) -> HostResult<()> {
    if !valid_name(&req.name) {
        return Err(HostError::invalid(format!(
            "pool name {:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-', start with a \
             letter or digit, and not be a uuid",
            req.name
        )));
    }
    if req.values.len() > MAX_POOL_VALUES {
        return Err(HostError::invalid(format!(
            "values has {} entries; a pool has at most {MAX_POOL_VALUES}",
            req.values.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for v in &req.values {
        if v.is_empty() || v.len() > MAX_POOL_VALUE || v.chars().any(char::is_control) {
            return Err(HostError::invalid(format!(
                "pool value {v:?} must be 1-{MAX_POOL_VALUE} bytes without control characters"
            )));
        }
        if !seen.insert(v) {
            return Err(HostError::invalid(format!(
                "pool value {v:?} is listed twice"
            )));
        }
    }
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
            publish: Vec::new(),
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
                mbps: None,
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
            io_zone: None,
            iops: None,
            mbps: None,
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

    /// The message a definition with the default configuration changed by `f` is refused with.
    fn refused(f: impl FnOnce(&mut api::PartitionConfig)) -> String {
        let mut r = req("ok");
        f(r.configs.get_mut("default").unwrap());
        let e = validate_define(&r).unwrap_err();
        assert!(matches!(e, HostError::Invalid(_)), "{e:?}");
        e.to_string()
    }

    fn accepted(f: impl FnOnce(&mut api::PartitionConfig)) {
        let mut r = req("ok");
        f(r.configs.get_mut("default").unwrap());
        validate_define(&r).unwrap();
    }

    /// Issue 8: 2^44 MiB became a cgroup limit of 0, 2^44 + 300 MiB one of 300 MiB.
    #[test]
    fn memory_limits_are_bounded() {
        for m in [17_592_186_044_416u64, 17_592_186_044_716, u64::MAX] {
            let e = refused(|c| c.policy.memory_limit_mib = Some(m));
            assert!(e.contains("policy.memory_limit_mib"), "{e}");
            assert!(e.contains("8388608"), "{e}");
        }
        let e = refused(|c| c.policy.memory_limit_mib = Some(256));
        assert!(
            e.contains(&format!("at least {}", 256 + QEMU_OVERHEAD_MIB)),
            "{e}"
        );
        accepted(|c| c.policy.memory_limit_mib = Some(256 + QEMU_OVERHEAD_MIB));
    }

    #[test]
    fn cpu_caps_are_bounded_by_the_vcpus() {
        let e = refused(|c| c.policy.cpu_cap_pct = Some(u32::MAX));
        assert!(e.contains("policy.cpu_cap_pct"), "{e}");
        let e = refused(|c| {
            c.vcpus = 2;
            c.policy.cpu_cap_pct = Some(201);
        });
        assert!(e.contains("more than its 2 vCPUs can use (200%)"), "{e}");
        accepted(|c| {
            c.vcpus = 2;
            c.policy.cpu_cap_pct = Some(200);
        });
        let e = refused(|c| c.policy.cpu_weight = Some(10_001));
        assert!(e.contains("policy.cpu_weight"), "{e}");
        let e = refused(|c| c.policy.priority = i32::MIN);
        assert!(e.contains("policy.priority"), "{e}");
    }

    /// Issue 8: 70 disks on microvm were accepted and could never start.
    #[test]
    fn devices_fit_the_machines_virtio_slots() {
        let disks = |n: usize| {
            (0..n)
                .map(|i| api::DiskConfig {
                    name: format!("d{i}"),
                    size_gib: 1,
                    io_zone: None,
                    iops: None,
                    mbps: None,
                })
                .collect::<Vec<_>>()
        };
        let e = refused(|c| c.disks = disks(70));
        assert!(e.contains("70 disks and 0 NICs"), "{e}");
        assert!(e.contains("at most 22"), "{e}");
        accepted(|c| c.disks = disks(MAX_DEVICES));
        let e = refused(|c| {
            c.disks = disks(MAX_DEVICES);
            c.nics.push(api::NicConfig {
                network: "user".into(),
                mac: None,
                mbps: None,
            });
        });
        assert!(e.contains("22 disks and 1 NICs"), "{e}");
        assert_eq!(MAX_DEVICES, 22);
    }

    /// Issue 8: `../../tmp/x` was joined to /sys/class/net, telling a caller
    /// whether a host directory exists.
    #[test]
    fn networks_are_interface_names_before_any_path() {
        for n in [
            "../../tmp/x",
            "..",
            ".",
            "",
            "a/b",
            "eth0:1",
            "br 0",
            "sixteen-chars-xx",
            "br\0",
        ] {
            let e = refused(|c| {
                c.nics.push(api::NicConfig {
                    network: n.into(),
                    mac: None,
                    mbps: None,
                })
            });
            assert!(e.contains("1-15 printable"), "{n:?}: {e}");
        }
        // A valid name that is no bridge gets the other message.
        let e = refused(|c| {
            c.nics.push(api::NicConfig {
                network: "nobr0x".into(),
                mac: None,
                mbps: None,
            })
        });
        assert!(e.contains("neither `user` nor a Linux bridge"), "{e}");
        assert!(valid_ifname("br0"));
        assert!(valid_ifname("fifteen-chars-x"));
    }

    #[test]
    fn every_field_of_a_config_is_checked() {
        let e = refused(|c| c.memory_mib = u64::MAX);
        assert!(e.contains("memory_mib"), "{e}");
        let e = refused(|c| c.vcpus = u32::MAX);
        assert!(e.contains("vcpus"), "{e}");
        let e = refused(|c| {
            c.disks.push(api::DiskConfig {
                name: "d".into(),
                size_gib: u64::MAX,
                io_zone: None,
                iops: None,
                mbps: None,
            })
        });
        assert!(e.contains("size_gib"), "{e}");
        let e = refused(|c| c.zones = vec!["Zone A".into()]);
        assert!(e.contains("zone"), "{e}");
        let e = refused(|c| c.zones = vec!["a".into(), "a".into()]);
        assert!(e.contains("twice"), "{e}");
        let e = refused(|c| c.zones = (0..=MAX_ZONES).map(|i| format!("z{i}")).collect());
        assert!(e.contains("at most 32"), "{e}");
        let e = refused(|c| c.cmdline = "quiet\0init=/x".into());
        assert!(e.contains("control characters"), "{e}");
        let e = refused(|c| c.cmdline = "a".repeat(MAX_CMDLINE + 1));
        assert!(e.contains("1024"), "{e}");
        let e = refused(|c| {
            for _ in 0..2 {
                c.nics.push(api::NicConfig {
                    network: "user".into(),
                    mac: Some("52:54:00:00:00:01".into()),
                    mbps: None,
                });
            }
        });
        assert!(e.contains("two NICs"), "{e}");
        let mut r = req("ok");
        for i in 0..=MAX_CONFIGS {
            r.configs
                .insert(format!("c{i}"), api::PartitionConfig::default());
        }
        assert!(
            validate_define(&r)
                .unwrap_err()
                .to_string()
                .contains("at most 32")
        );
    }

    /// Issue 8: `charge_mib` u64::MAX on a fork gave HTTP 500.
    #[test]
    fn child_charges_have_a_floor_and_a_ceiling() {
        for c in [u64::MAX, 257, 0, MIN_CHARGE_MIB - 1] {
            let e = child_charge(Some(c), 256).unwrap_err();
            assert!(matches!(e, HostError::Invalid(_)), "{e:?}");
            let m = e.to_string();
            assert!(m.contains("between 48"), "{m}");
            assert!(m.contains("and 256"), "{m}");
        }
        assert_eq!(child_charge(Some(256), 256).unwrap(), 256);
        assert_eq!(child_charge(Some(48), 256).unwrap(), 48);
        assert_eq!(child_charge(None, 256).unwrap(), 64);
        assert_eq!(child_charge(None, 128).unwrap(), 48);
        assert_eq!(child_charge(None, 32).unwrap(), 48);
        assert_eq!(child_charge(Some(48), 32).unwrap(), 48);
    }

    #[test]
    fn exec_requests_are_checked() {
        let ok = api::ExecRequest {
            command: Some("true".into()),
            ..Default::default()
        };
        validate_exec(&ok).unwrap();
        let check = |f: &dyn Fn(&mut api::ExecRequest), want: &str| {
            let mut r = ok.clone();
            f(&mut r);
            let e = validate_exec(&r).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        check(&|r| r.timeout_ms = Some(u64::MAX), "timeout_ms");
        check(&|r| r.timeout_ms = Some(0), "timeout_ms 0");
        check(&|r| r.ready_timeout_ms = Some(u64::MAX), "ready_timeout_ms");
        check(&|r| r.command = Some("a\0b".into()), "NUL");
        check(&|r| r.argv = Some(vec!["a\0".into()]), "NUL");
        check(
            &|r| r.argv = Some(vec![String::new(); MAX_EXEC_ITEMS + 1]),
            "argv has",
        );
        check(
            &|r| {
                r.env.insert("A=B".into(), "c".into());
            },
            "env",
        );
        check(
            &|r| {
                r.env.insert(String::new(), "c".into());
            },
            "env",
        );
    }

    #[test]
    fn pools_are_checked() {
        let ok = api::IdentityPoolCreateRequest {
            name: "doms".into(),
            kind: api::IdentityPoolKind::Identity,
            values: vec!["a".into(), "b".into()],
            range: None,
            prefix: None,
            gateway: None,
        };
        validate_pool(&ok).unwrap();
        let check = |f: &dyn Fn(&mut api::IdentityPoolCreateRequest), want: &str| {
            let mut r = ok.clone();
            f(&mut r);
            let e = validate_pool(&r).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        check(&|r| r.name = "../x".into(), "pool name");
        check(&|r| r.name = String::new(), "pool name");
        check(&|r| r.values = vec!["a".into(), "a".into()], "twice");
        check(&|r| r.values = vec![String::new()], "1-256 bytes");
        check(&|r| r.values = vec!["x".repeat(257)], "1-256 bytes");
        check(&|r| r.values = vec!["a\nb".into()], "control");
    }

    #[test]
    fn template_names_leave_room_for_child_indices() {
        assert!(check_template_name("web").is_ok());
        assert!(check_template_name("db_1").is_err());
        assert!(check_template_name(&"a".repeat(53)).is_ok());
        assert!(check_template_name(&"a".repeat(54)).is_err());
    }
}
