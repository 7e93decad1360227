//! What the ledger counts and who holds it: `ResourceKind`, `Resources`
//! (one amount per kind), `Owner` and `Holding`.
//!
//! Every unit of host capacity is held by exactly one owner: the `available`
//! pseudo-partition, a partition or a business unit. The ledger stores
//! owners as text, `available`, the partition's hyphenated uuid or
//! `unit:<uuid>`, and that is also their
//! `Display`, `FromStr` and JSON form. Policy (what a partition should hold)
//! lives in `partition`, storage in `store`.

use std::fmt;
use std::ops::Add;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A kind of host resource the ledger hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// Guest memory, in MiB.
    MemoryMib,
    /// Virtual CPUs.
    Vcpus,
    /// Disk space, in GiB.
    DiskGib,
    /// Network interfaces.
    Nics,
}

impl ResourceKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ResourceKind; 4] = [
        ResourceKind::MemoryMib,
        ResourceKind::Vcpus,
        ResourceKind::DiskGib,
        ResourceKind::Nics,
    ];

    /// The snake_case name used in the database, JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::MemoryMib => "memory_mib",
            ResourceKind::Vcpus => "vcpus",
            ResourceKind::DiskGib => "disk_gib",
            ResourceKind::Nics => "nics",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no resource kind, owner, stage or run state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct ParseNameError {
    /// What was being parsed ("resource kind", "stage", ...).
    pub what: &'static str,
    /// The text.
    pub value: String,
}

impl FromStr for ResourceKind {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ParseNameError {
                what: "resource kind",
                value: s.to_owned(),
            })
    }
}

/// One amount per resource kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u64,
    /// Disk space in GiB.
    pub disk_gib: u64,
    /// Network interfaces.
    pub nics: u64,
}

impl Resources {
    /// Nothing of anything.
    pub const ZERO: Resources = Resources {
        memory_mib: 0,
        vcpus: 0,
        disk_gib: 0,
        nics: 0,
    };

    /// `amount` of one kind and nothing else.
    pub fn of(kind: ResourceKind, amount: u64) -> Resources {
        let mut r = Resources::ZERO;
        r.set(kind, amount);
        r
    }

    /// The amount of `kind`.
    pub fn get(&self, kind: ResourceKind) -> u64 {
        match kind {
            ResourceKind::MemoryMib => self.memory_mib,
            ResourceKind::Vcpus => self.vcpus,
            ResourceKind::DiskGib => self.disk_gib,
            ResourceKind::Nics => self.nics,
        }
    }

    /// Sets the amount of `kind`.
    pub fn set(&mut self, kind: ResourceKind, amount: u64) {
        let slot = match kind {
            ResourceKind::MemoryMib => &mut self.memory_mib,
            ResourceKind::Vcpus => &mut self.vcpus,
            ResourceKind::DiskGib => &mut self.disk_gib,
            ResourceKind::Nics => &mut self.nics,
        };
        *slot = amount;
    }

    /// Each kind with its amount, in `ResourceKind::ALL` order.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceKind, u64)> + '_ {
        ResourceKind::ALL.into_iter().map(|k| (k, self.get(k)))
    }

    /// The sum per kind, or `None` if any kind overflows.
    pub fn checked_add(&self, other: &Resources) -> Option<Resources> {
        self.zip(other, u64::checked_add)
    }

    /// The difference per kind, or `None` if any kind would go negative.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        self.zip(other, u64::checked_sub)
    }

    /// True when every amount is zero.
    pub fn is_zero(&self) -> bool {
        self.iter().all(|(_, v)| v == 0)
    }

    /// True when every amount of `self` is at most that of `other`.
    pub fn fits_in(&self, other: &Resources) -> bool {
        self.iter().all(|(k, v)| v <= other.get(k))
    }

    fn zip(&self, other: &Resources, f: fn(u64, u64) -> Option<u64>) -> Option<Resources> {
        let mut out = Resources::ZERO;
        for kind in ResourceKind::ALL {
            out.set(kind, f(self.get(kind), other.get(kind))?);
        }
        Some(out)
    }
}

/// Saturating per-kind sum; use `checked_add` where overflow must be seen.
impl Add for Resources {
    type Output = Resources;

    fn add(self, other: Resources) -> Resources {
        self.zip(&other, |a, b| Some(a.saturating_add(b)))
            .unwrap_or(Resources::ZERO)
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (kind, amount) in self.iter() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{amount} {kind}")?;
        }
        Ok(())
    }
}

/// Who holds a unit of capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// The `available` pseudo-partition: free capacity.
    Available,
    /// A partition, by uuid.
    Partition(Uuid),
    /// A business unit's allocation, by uuid (stored as `unit:<uuid>`):
    /// what it was granted and its partitions do not hold now.
    Unit(Uuid),
}

impl Owner {
    /// The stored form of `Owner::Available`.
    pub const AVAILABLE: &'static str = "available";

    /// The prefix of a unit's stored form.
    pub const UNIT_PREFIX: &'static str = "unit:";

    /// The partition's uuid, if this is a partition.
    pub fn partition(self) -> Option<Uuid> {
        match self {
            Owner::Partition(u) => Some(u),
            Owner::Available | Owner::Unit(_) => None,
        }
    }

    /// The unit's uuid, if this is a unit.
    pub fn unit(self) -> Option<Uuid> {
        match self {
            Owner::Unit(u) => Some(u),
            Owner::Available | Owner::Partition(_) => None,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Available => f.write_str(Owner::AVAILABLE),
            Owner::Partition(u) => write!(f, "{}", u.hyphenated()),
            Owner::Unit(u) => write!(f, "{}{}", Owner::UNIT_PREFIX, u.hyphenated()),
        }
    }
}

impl FromStr for Owner {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == Owner::AVAILABLE {
            return Ok(Owner::Available);
        }
        if let Some(u) = s.strip_prefix(Owner::UNIT_PREFIX) {
            return Uuid::parse_str(u)
                .map(Owner::Unit)
                .map_err(|_| ParseNameError {
                    what: "owner",
                    value: s.to_owned(),
                });
        }
        Uuid::parse_str(s)
            .map(Owner::Partition)
            .map_err(|_| ParseNameError {
                what: "owner",
                value: s.to_owned(),
            })
    }
}

impl Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One row of the holding table: `owner` holds `amount` of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// The holder.
    pub owner: Owner,
    /// The resource.
    pub kind: ResourceKind,
    /// How much.
    pub amount: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(memory_mib: u64, vcpus: u64, disk_gib: u64, nics: u64) -> Resources {
        Resources {
            memory_mib,
            vcpus,
            disk_gib,
            nics,
        }
    }

    #[test]
    fn get_and_set_address_each_kind() {
        let mut x = Resources::ZERO;
        for (i, kind) in ResourceKind::ALL.into_iter().enumerate() {
            x.set(kind, i as u64 + 10);
        }
        assert_eq!(x, r(10, 11, 12, 13));
        for (i, kind) in ResourceKind::ALL.into_iter().enumerate() {
            assert_eq!(x.get(kind), i as u64 + 10);
            assert_eq!(Resources::of(kind, 7).get(kind), 7);
            assert_eq!(
                Resources::of(kind, 7).iter().map(|(_, v)| v).sum::<u64>(),
                7
            );
        }
    }

    #[test]
    fn checked_math() {
        let a = r(1024, 4, 20, 2);
        let b = r(256, 1, 20, 0);
        assert_eq!(a.checked_sub(&b), Some(r(768, 3, 0, 2)));
        assert_eq!(b.checked_sub(&a), None);
        assert_eq!(a.checked_add(&b), Some(r(1280, 5, 40, 2)));
        assert_eq!(r(u64::MAX, 0, 0, 0).checked_add(&r(1, 0, 0, 0)), None);
        assert_eq!(r(u64::MAX, 0, 0, 0) + r(1, 1, 0, 0), r(u64::MAX, 1, 0, 0));
        assert!(b.fits_in(&a));
        assert!(!a.fits_in(&b));
        assert!(Resources::ZERO.is_zero());
        assert!(!Resources::of(ResourceKind::Nics, 1).is_zero());
        assert_eq!(
            a.to_string(),
            "1024 memory_mib, 4 vcpus, 20 disk_gib, 2 nics"
        );
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in ResourceKind::ALL {
            assert_eq!(kind.as_str().parse::<ResourceKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).ok(),
                Some(serde_json::Value::from(kind.as_str()))
            );
        }
        assert!("cpus".parse::<ResourceKind>().is_err());
    }

    #[test]
    fn owner_text_form() {
        let u = Uuid::from_u128(0x1234);
        assert_eq!(Owner::Available.to_string(), "available");
        assert_eq!("available".parse(), Ok(Owner::Available));
        let p = Owner::Partition(u);
        assert_eq!(p.to_string().parse(), Ok(p));
        assert_eq!(p.partition(), Some(u));
        let json = serde_json::to_string(&p).unwrap_or_default();
        assert_eq!(json, format!("\"{u}\""));
        assert_eq!(serde_json::from_str::<Owner>(&json).ok(), Some(p));
        assert!("nobody".parse::<Owner>().is_err());
        let unit = Owner::Unit(u);
        assert_eq!(unit.to_string(), format!("unit:{u}"));
        assert_eq!(unit.to_string().parse(), Ok(unit));
        assert_eq!((unit.unit(), unit.partition()), (Some(u), None));
        assert!("unit:nope".parse::<Owner>().is_err());
    }
}
