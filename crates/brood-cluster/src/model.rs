//! The cluster's vocabulary: zones and their kinds, hosts and their
//! states, domains and their policy, what a partition requires. Plain
//! values with parsing and validation; the catalog stores them and
//! placement reads them, neither lives here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;

/// Longest zone, host or domain name accepted.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a zone, host or domain name: 1-63 of `[a-z0-9._-]`, starting
/// with a letter or digit.
pub fn check_name(what: &str, name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Invalid(format!(
            "{what} name {name:?} is not valid: use 1-{MAX_NAME_LEN} of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        )))
    }
}

/// What a zone provides (WO 2005/036358 [0239], [0285]-[0295]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ZoneKind {
    /// A network a partition's NIC joins.
    Network,
    /// Storage a partition's disks live on.
    Storage,
    /// Where its console goes.
    Console,
    /// A firmware (version) it boots with.
    Firmware,
    /// A monitor (engine version) that runs it.
    Monitor,
    /// A power domain.
    Power,
    /// A kind of processor.
    Processor,
    /// A kind of memory.
    Memory,
    /// An administrator-defined kind.
    Custom(String),
}

impl ZoneKind {
    /// The built-in kinds.
    pub const BUILTIN: [ZoneKind; 8] = [
        ZoneKind::Network,
        ZoneKind::Storage,
        ZoneKind::Console,
        ZoneKind::Firmware,
        ZoneKind::Monitor,
        ZoneKind::Power,
        ZoneKind::Processor,
        ZoneKind::Memory,
    ];

    /// Its name.
    pub fn as_str(&self) -> &str {
        match self {
            ZoneKind::Network => "network",
            ZoneKind::Storage => "storage",
            ZoneKind::Console => "console",
            ZoneKind::Firmware => "firmware",
            ZoneKind::Monitor => "monitor",
            ZoneKind::Power => "power",
            ZoneKind::Processor => "processor",
            ZoneKind::Memory => "memory",
            ZoneKind::Custom(s) => s,
        }
    }

    /// Whether one matching zone of this kind is enough, whatever else the
    /// partition lists of it (power, processor, memory: the partition runs
    /// in one of them), rather than one per required channel.
    pub fn one_suffices(&self) -> bool {
        matches!(
            self,
            ZoneKind::Power | ZoneKind::Processor | ZoneKind::Memory
        )
    }

    /// Whether it is built in.
    pub fn is_builtin(&self) -> bool {
        !matches!(self, ZoneKind::Custom(_))
    }
}

impl FromStr for ZoneKind {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Self, ClusterError> {
        Ok(match s {
            "network" => ZoneKind::Network,
            "storage" => ZoneKind::Storage,
            "console" => ZoneKind::Console,
            "firmware" => ZoneKind::Firmware,
            "monitor" => ZoneKind::Monitor,
            "power" => ZoneKind::Power,
            "processor" => ZoneKind::Processor,
            "memory" => ZoneKind::Memory,
            other => {
                check_name("zone type", other)?;
                ZoneKind::Custom(other.to_owned())
            }
        })
    }
}

impl fmt::Display for ZoneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One zone: a kind and a name, written `kind:name` (`storage:shared1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zone {
    /// What it provides.
    pub kind: ZoneKind,
    /// Its name within the kind.
    pub name: String,
}

impl Zone {
    /// A zone.
    pub fn new(kind: ZoneKind, name: &str) -> Result<Zone, ClusterError> {
        check_name("zone", name)?;
        Ok(Zone {
            kind,
            name: name.to_owned(),
        })
    }
}

impl FromStr for Zone {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Self, ClusterError> {
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            ClusterError::Invalid(format!(
                "zone {s:?} is not KIND:NAME (for example storage:shared1 or processor:x86-64-v3)"
            ))
        })?;
        Zone::new(kind.parse()?, name)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// What a partition asks of one zone kind: one of `zones` (ranked, the
/// first preferred), or any zone of the kind when `zones` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// The zone kind, by name.
    pub kind: String,
    /// Acceptable zone names, best first; empty: any of the kind.
    #[serde(default)]
    pub zones: Vec<String>,
    /// An optional zone: a host without it still qualifies, ranked lower.
    #[serde(default)]
    pub optional: bool,
}

impl Requirement {
    /// Parses `kind:name[|name...]`, `kind:*` or `?kind:...` (optional).
    pub fn parse(s: &str) -> Result<Requirement, ClusterError> {
        let (optional, rest) = match s.strip_prefix('?') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (kind, names) = rest.split_once(':').ok_or_else(|| {
            ClusterError::Invalid(format!(
                "requirement {s:?} is not KIND:NAME[|NAME...] (for example storage:shared1, network:*, ?console:serial)"
            ))
        })?;
        let kind: ZoneKind = kind.parse()?;
        let zones = if names == "*" {
            Vec::new()
        } else {
            names
                .split('|')
                .map(|n| check_name("zone", n).map(|()| n.to_owned()))
                .collect::<Result<_, _>>()?
        };
        Ok(Requirement {
            kind: kind.as_str().to_owned(),
            zones,
            optional,
        })
    }

    /// The kind, parsed.
    pub fn zone_kind(&self) -> Result<ZoneKind, ClusterError> {
        self.kind.parse()
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.optional {
            f.write_str("?")?;
        }
        if self.zones.is_empty() {
            write!(f, "{}:*", self.kind)
        } else {
            write!(f, "{}:{}", self.kind, self.zones.join("|"))
        }
    }
}

/// How much a domain's partition matters (WO 2005/036358 [0255]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum Importance {
    /// Development.
    Development,
    /// Test.
    Test,
    /// Production.
    #[default]
    Production,
    /// Mission critical.
    MissionCritical,
}

impl Importance {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Importance::Development => "development",
            Importance::Test => "test",
            Importance::Production => "production",
            Importance::MissionCritical => "mission-critical",
        }
    }
}

impl FromStr for Importance {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Self, ClusterError> {
        Ok(match s {
            "development" => Importance::Development,
            "test" => Importance::Test,
            "production" => Importance::Production,
            "mission-critical" => Importance::MissionCritical,
            other => {
                return Err(ClusterError::Invalid(format!(
                    "importance {other:?} is not one of mission-critical, production, test, development"
                )));
            }
        })
    }
}

/// Memory, vCPUs and disk: what placement counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mib: u64,
    /// vCPUs.
    #[serde(default)]
    pub vcpus: u64,
    /// Disk in GiB.
    #[serde(default)]
    pub disk_gib: u64,
}

impl Capacity {
    /// Nothing.
    pub const ZERO: Capacity = Capacity {
        memory_mib: 0,
        vcpus: 0,
        disk_gib: 0,
    };

    /// `self + o`, saturating.
    pub fn plus(self, o: Capacity) -> Capacity {
        Capacity {
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
            vcpus: self.vcpus.saturating_add(o.vcpus),
            disk_gib: self.disk_gib.saturating_add(o.disk_gib),
        }
    }

    /// `self - o`, saturating at zero.
    pub fn minus(self, o: Capacity) -> Capacity {
        Capacity {
            memory_mib: self.memory_mib.saturating_sub(o.memory_mib),
            vcpus: self.vcpus.saturating_sub(o.vcpus),
            disk_gib: self.disk_gib.saturating_sub(o.disk_gib),
        }
    }

    /// Whether every field of `self` is at most `o`'s.
    pub fn fits_in(self, o: Capacity) -> bool {
        self.memory_mib <= o.memory_mib && self.vcpus <= o.vcpus && self.disk_gib <= o.disk_gib
    }

    /// Whether it is all zero.
    pub fn is_zero(self) -> bool {
        self == Capacity::ZERO
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} MiB, {} vCPUs, {} GiB disk",
            self.memory_mib, self.vcpus, self.disk_gib
        )
    }
}

/// A domain's policy (WO 2005/036358 [0244]-[0265]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DomainPolicy {
    /// How much its partitions matter.
    #[serde(default)]
    pub importance: Importance,
    /// Hosts its partitions may use; empty: any host.
    #[serde(default)]
    pub available: Vec<String>,
    /// Hosts it prefers, tried first.
    #[serde(default)]
    pub preferred: Vec<String>,
    /// Kept free for this domain on every host it may use, whoever else
    /// asks (zero: nothing kept).
    #[serde(default)]
    pub guarantee: Capacity,
    /// At most this much of one host for this domain (zero fields: no limit).
    #[serde(default)]
    pub limit: Capacity,
}

impl DomainPolicy {
    /// Whether the domain may use `host`.
    pub fn allows(&self, host: &str) -> bool {
        self.available.is_empty()
            || self.available.iter().any(|h| h == host)
            || self.preferred.iter().any(|h| h == host)
    }

    /// Whether `used` (the domain's use of one host, with the new
    /// partition) is within its limit.
    pub fn within_limit(&self, used: Capacity) -> bool {
        let ok = |lim: u64, u: u64| lim == 0 || u <= lim;
        ok(self.limit.memory_mib, used.memory_mib)
            && ok(self.limit.vcpus, used.vcpus)
            && ok(self.limit.disk_gib, used.disk_gib)
    }
}

/// A host's state as the administrator set it and its heartbeats say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    /// Heartbeating, taking partitions.
    Active,
    /// Heartbeating, taking no new partitions (drained by the administrator).
    Draining,
    /// Added, its broodd has not registered yet.
    Pending,
    /// It missed heartbeats for longer than the suspect threshold.
    Suspect,
    /// It missed heartbeats for longer than the failed threshold.
    Failed,
}

impl HostState {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Active => "active",
            HostState::Draining => "draining",
            HostState::Pending => "pending",
            HostState::Suspect => "suspect",
            HostState::Failed => "failed",
        }
    }

    /// Whether placement may put new partitions there.
    pub fn takes_partitions(self) -> bool {
        self == HostState::Active
    }
}

/// The heartbeat thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Silent longer than this: suspect.
    pub suspect_after_ms: u64,
    /// Silent longer than this: failed.
    pub failed_after_ms: u64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            suspect_after_ms: 15_000,
            failed_after_ms: 60_000,
        }
    }
}

impl Liveness {
    /// The state of a host whose administrator state is `draining` (or
    /// not) and whose last heartbeat was `silent_ms` ago (`None`: never).
    pub fn state(self, draining: bool, silent_ms: Option<u64>) -> HostState {
        match silent_ms {
            None => HostState::Pending,
            Some(ms) if ms > self.failed_after_ms => HostState::Failed,
            Some(ms) if ms > self.suspect_after_ms => HostState::Suspect,
            Some(_) if draining => HostState::Draining,
            Some(_) => HostState::Active,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_parse_and_print() {
        let z: Zone = "storage:shared1".parse().unwrap();
        assert_eq!(z.kind, ZoneKind::Storage);
        assert_eq!(z.to_string(), "storage:shared1");
        let c: Zone = "gpu:a100".parse().unwrap();
        assert_eq!(c.kind, ZoneKind::Custom("gpu".into()));
        assert!("storage".parse::<Zone>().is_err());
        assert!("storage:Bad Name".parse::<Zone>().is_err());
        assert!(":x".parse::<Zone>().is_err());
    }

    #[test]
    fn requirements_parse() {
        let r = Requirement::parse("?network:a|b").unwrap();
        assert!(r.optional);
        assert_eq!(r.zones, vec!["a", "b"]);
        assert_eq!(r.to_string(), "?network:a|b");
        let any = Requirement::parse("processor:*").unwrap();
        assert!(any.zones.is_empty());
        assert!(Requirement::parse("processor").is_err());
        assert!(Requirement::parse("network:a||b").is_err());
    }

    #[test]
    fn importance_orders_and_parses() {
        assert!(Importance::MissionCritical > Importance::Production);
        assert!(Importance::Test > Importance::Development);
        assert_eq!(
            "mission-critical".parse::<Importance>().unwrap(),
            Importance::MissionCritical
        );
        assert!("urgent".parse::<Importance>().is_err());
    }

    #[test]
    fn liveness_thresholds() {
        let l = Liveness {
            suspect_after_ms: 100,
            failed_after_ms: 300,
        };
        assert_eq!(l.state(false, None), HostState::Pending);
        assert_eq!(l.state(false, Some(50)), HostState::Active);
        assert_eq!(l.state(true, Some(50)), HostState::Draining);
        assert_eq!(l.state(true, Some(150)), HostState::Suspect);
        assert_eq!(l.state(false, Some(301)), HostState::Failed);
    }

    #[test]
    fn domain_limits() {
        let d = DomainPolicy {
            limit: Capacity {
                memory_mib: 1024,
                ..Capacity::ZERO
            },
            available: vec!["a".into()],
            ..DomainPolicy::default()
        };
        assert!(d.allows("a"));
        assert!(!d.allows("b"));
        assert!(d.within_limit(Capacity {
            memory_mib: 1024,
            vcpus: 99,
            disk_gib: 0
        }));
        assert!(!d.within_limit(Capacity {
            memory_mib: 1025,
            ..Capacity::ZERO
        }));
    }
}
