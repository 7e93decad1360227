//! Resource limits for a VM's QEMU, enforced with cgroups: v2 where the host
//! mounts the unified hierarchy with the cpu and memory controllers at
//! /sys/fs/cgroup, v1 (separate `cpu` and `memory` hierarchies) otherwise.
//!
//! Each VM gets `brood/<name>-<nonce>` in every hierarchy it uses. The group
//! is made before QEMU starts and QEMU joins it between fork and exec, so
//! every page it touches is charged from its first instruction. Groups are
//! removed once QEMU has exited (a cgroup with processes cannot be removed).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::EngineError;

const ROOT: &str = "/sys/fs/cgroup";
/// CFS period used with a CPU cap: 100 ms, the kernel default.
const CFS_PERIOD_US: u64 = 100_000;
/// Smallest memory limit: below it QEMU itself does not start.
pub const MIN_MEMORY_LIMIT_MIB: u64 = 64;
/// Largest memory limit: twice the largest guest broodd defines (4 TiB),
/// far below the 2^44 MiB at which the limit in bytes no longer fits a u64.
pub const MAX_MEMORY_LIMIT_MIB: u64 = 1 << 23;
/// Largest CPU cap: every vCPU the engine accepts (`spec::MAX_VCPUS`, 255),
/// each at 100% (a test keeps the two in step).
pub const MAX_CPU_CAP_PCT: u32 = 100 * 255;

/// Limits on one VM's QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Relative CPU weight, 1-10000; 100 is an ordinary share.
    pub cpu_weight: Option<u32>,
    /// Most CPU time in percent of one CPU.
    pub cpu_cap_pct: Option<u32>,
    /// Most memory in MiB, guest memory included.
    pub memory_limit_mib: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn is_empty(&self) -> bool {
        self.cpu_weight.is_none() && self.cpu_cap_pct.is_none() && self.memory_limit_mib.is_none()
    }

    /// Checks the values are in range.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidSpec(m));
        if let Some(w) = self.cpu_weight
            && !(1..=10_000).contains(&w)
        {
            return bad(format!("cpu weight {w} must be between 1 and 10000"));
        }
        if let Some(c) = self.cpu_cap_pct
            && !(1..=MAX_CPU_CAP_PCT).contains(&c)
        {
            return bad(format!(
                "cpu cap {c}% must be between 1% and {MAX_CPU_CAP_PCT}% (100% per vCPU)"
            ));
        }
        if let Some(m) = self.memory_limit_mib
            && !(MIN_MEMORY_LIMIT_MIB..=MAX_MEMORY_LIMIT_MIB).contains(&m)
        {
            return bad(format!(
                "memory limit {m} MiB must be between {MIN_MEMORY_LIMIT_MIB} and \
                 {MAX_MEMORY_LIMIT_MIB} MiB"
            ));
        }
        Ok(())
    }
}

/// The cgroup version the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

fn version() -> Option<Version> {
    let root = Path::new(ROOT);
    if let Ok(ctl) = fs::read_to_string(root.join("cgroup.controllers")) {
        let has = |c: &str| ctl.split_whitespace().any(|x| x == c);
        if has("cpu") && has("memory") {
            return Some(Version::V2);
        }
    }
    if root.join("cpu/cpu.shares").exists() && root.join("memory/memory.limit_in_bytes").exists() {
        return Some(Version::V1);
    }
    None
}

/// A VM's cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// One directory per hierarchy (one for v2, cpu and memory for v1).
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates the groups for `leaf` with `limits` applied.
    pub fn create(leaf: &str, limits: &Limits) -> Result<Self, EngineError> {
        limits.validate()?;
        let v = version().ok_or_else(|| {
            EngineError::InvalidSpec(
                "CPU and memory limits need cgroups (v2 with the cpu and memory controllers, or v1 \
                 cpu and memory hierarchies under /sys/fs/cgroup)"
                    .into(),
            )
        })?;
        let cg = match v {
            Version::V2 => {
                let parent = Path::new(ROOT).join("brood");
                mkdir(&parent)?;
                // Children of `brood` may use cpu and memory only if it delegates them.
                let _ = fs::write(
                    Path::new(ROOT).join("cgroup.subtree_control"),
                    "+cpu +memory",
                );
                write(&parent.join("cgroup.subtree_control"), "+cpu +memory")?;
                let dir = parent.join(leaf);
                mkdir(&dir)?;
                let cg = Cgroup {
                    dirs: vec![dir.clone()],
                };
                cg.apply_v2(&dir, limits).inspect_err(|_| cg.remove())?;
                cg
            }
            Version::V1 => {
                let cpu = Path::new(ROOT).join("cpu/brood").join(leaf);
                let mem = Path::new(ROOT).join("memory/brood").join(leaf);
                mkdir(&cpu)?;
                mkdir(&mem)?;
                let cg = Cgroup {
                    dirs: vec![cpu.clone(), mem.clone()],
                };
                cg.apply_v1(&cpu, &mem, limits)
                    .inspect_err(|_| cg.remove())?;
                cg
            }
        };
        Ok(cg)
    }

    fn apply_v2(&self, dir: &Path, l: &Limits) -> Result<(), EngineError> {
        if let Some(w) = l.cpu_weight {
            write(&dir.join("cpu.weight"), &w.to_string())?;
        }
        if let Some(c) = l.cpu_cap_pct {
            write(
                &dir.join("cpu.max"),
                &format!("{} {CFS_PERIOD_US}", quota_us(c)?),
            )?;
        }
        if let Some(m) = l.memory_limit_mib {
            write(&dir.join("memory.max"), &limit_bytes(m)?.to_string())?;
        }
        Ok(())
    }

    fn apply_v1(&self, cpu: &Path, mem: &Path, l: &Limits) -> Result<(), EngineError> {
        if let Some(w) = l.cpu_weight {
            // v1 shares: 1024 is an ordinary share, as weight 100 is in v2.
            write(
                &cpu.join("cpu.shares"),
                &(u64::from(w) * 1024 / 100).max(2).to_string(),
            )?;
        }
        if let Some(c) = l.cpu_cap_pct {
            write(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
            write(&cpu.join("cpu.cfs_quota_us"), &quota_us(c)?.to_string())?;
        }
        if let Some(m) = l.memory_limit_mib {
            write(
                &mem.join("memory.limit_in_bytes"),
                &limit_bytes(m)?.to_string(),
            )?;
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes `0` to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The group directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Finds the brood cgroups `pid` is in (for a VM found running after a restart).
    pub fn of_pid(pid: u32) -> Option<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let dirs: Vec<PathBuf> = text
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                if !path.starts_with("/brood/") {
                    return None;
                }
                let rel = path.trim_start_matches('/');
                match ctrls {
                    "" => Some(Path::new(ROOT).join(rel)),
                    c if c.split(',').any(|x| x == "cpu") => {
                        Some(Path::new(ROOT).join("cpu").join(rel))
                    }
                    c if c.split(',').any(|x| x == "memory") => {
                        Some(Path::new(ROOT).join("memory").join(rel))
                    }
                    _ => None,
                }
            })
            .collect();
        (!dirs.is_empty()).then_some(Cgroup { dirs })
    }

    /// The memory group's directory, if the VM has one.
    fn memory_dir(&self) -> Option<(&Path, Version)> {
        self.dirs.iter().find_map(|d| {
            if d.join("memory.max").exists() {
                Some((d.as_path(), Version::V2))
            } else if d.join("memory.limit_in_bytes").exists() {
                Some((d.as_path(), Version::V1))
            } else {
                None
            }
        })
    }

    /// Changes the memory limit of a live VM. Raising it always works;
    /// lowering it below what the group uses makes the kernel reclaim, and
    /// v1 refuses (`EBUSY`) what it cannot reclaim.
    pub fn set_memory_limit(&self, mib: u64) -> Result<(), EngineError> {
        Limits {
            memory_limit_mib: Some(mib),
            ..Limits::default()
        }
        .validate()?;
        let bytes = limit_bytes(mib)?.to_string();
        match self.memory_dir() {
            Some((d, Version::V2)) => write(&d.join("memory.max"), &bytes),
            Some((d, Version::V1)) => write(&d.join("memory.limit_in_bytes"), &bytes),
            None => Err(EngineError::InvalidSpec(
                "this VM has no memory cgroup whose limit could change".into(),
            )),
        }
    }

    /// Changes the CPU cap of a live VM (percent of one CPU; `None` lifts it).
    pub fn set_cpu_cap(&self, pct: Option<u32>) -> Result<(), EngineError> {
        let quota = pct.map(quota_us).transpose()?;
        for d in &self.dirs {
            if d.join("cpu.max").exists() {
                let q = quota.map_or_else(|| "max".to_string(), |q| q.to_string());
                return write(&d.join("cpu.max"), &format!("{q} {CFS_PERIOD_US}"));
            }
            if d.join("cpu.cfs_quota_us").exists() {
                write(&d.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                let q = quota.map_or_else(|| "-1".to_string(), |q| q.to_string());
                return write(&d.join("cpu.cfs_quota_us"), &q);
            }
        }
        Err(EngineError::InvalidSpec(
            "this VM has no cpu cgroup whose cap could change".into(),
        ))
    }

    /// The memory limit in MiB (`None` without a memory group or limit).
    pub fn memory_limit_mib(&self) -> Option<u64> {
        let (d, v) = self.memory_dir()?;
        let file = match v {
            Version::V2 => "memory.max",
            Version::V1 => "memory.limit_in_bytes",
        };
        let text = fs::read_to_string(d.join(file)).ok()?;
        text.trim().parse::<u64>().ok().map(|b| b >> 20)
    }

    /// What the VM's processes use of memory of their own, in bytes: the
    /// anonymous and shmem pages charged to the group (the pages a guest
    /// dirtied, QEMU's heap), without the clean file cache the kernel can
    /// drop at will (a template's memory file read from disk).
    pub fn memory_private_bytes(&self) -> Option<u64> {
        let (d, v) = self.memory_dir()?;
        let text = fs::read_to_string(d.join("memory.stat")).ok()?;
        private_bytes(&text, v)
    }

    /// Removes the groups; they must have no processes left.
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Removes the empty groups (`brood/<name>-<nonce>`) of the VMs `owned`
/// names, in every hierarchy: what QEMUs that ended while no process
/// watched them (a killed broodd) left. A group with a process in it is
/// not removable, so a running VM keeps its own.
pub fn remove_idle(owned: &(dyn Fn(&str) -> bool + Sync)) {
    let parents = match version() {
        Some(Version::V2) => vec![Path::new(ROOT).join("brood")],
        Some(Version::V1) => vec![
            Path::new(ROOT).join("cpu/brood"),
            Path::new(ROOT).join("memory/brood"),
        ],
        None => return,
    };
    for parent in parents {
        let Ok(dir) = fs::read_dir(&parent) else {
            continue;
        };
        for e in dir.flatten() {
            let leaf = e.file_name().to_string_lossy().into_owned();
            if leaf.rsplit_once('-').is_some_and(|(name, _)| owned(name)) {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
}

/// Anonymous plus shmem bytes from a `memory.stat` (v1 names them
/// `total_rss` and `total_shmem`, hierarchical; v2 `anon` and `shmem`).
/// Bounded parsing: unknown or malformed lines are skipped.
fn private_bytes(stat: &str, v: Version) -> Option<u64> {
    let keys: [&str; 2] = match v {
        Version::V1 => ["total_rss", "total_shmem"],
        Version::V2 => ["anon", "shmem"],
    };
    let mut found = false;
    let mut sum = 0u64;
    for line in stat.lines().take(256) {
        let mut it = line.split_whitespace();
        let (Some(k), Some(n)) = (it.next(), it.next()) else {
            continue;
        };
        if keys.contains(&k)
            && let Ok(n) = n.parse::<u64>()
        {
            found = true;
            sum = sum.saturating_add(n);
        }
    }
    found.then_some(sum)
}

/// A memory limit in bytes; refused where `mib << 20` would not fit (a
/// plain shift wraps: 2^44 MiB became a limit of 0).
fn limit_bytes(mib: u64) -> Result<u64, EngineError> {
    mib.checked_mul(1 << 20).ok_or_else(|| {
        EngineError::InvalidSpec(format!(
            "memory limit {mib} MiB does not fit in bytes; use at most {MAX_MEMORY_LIMIT_MIB} MiB"
        ))
    })
}

/// The CFS quota in microseconds per period for a cap in percent of one CPU.
fn quota_us(pct: u32) -> Result<u64, EngineError> {
    u64::from(pct)
        .checked_mul(CFS_PERIOD_US)
        .map(|q| q / 100)
        .ok_or_else(|| EngineError::InvalidSpec(format!("cpu cap {pct}% is too large")))
}

fn mkdir(p: &Path) -> Result<(), EngineError> {
    fs::create_dir_all(p)
        .map_err(|e| EngineError::host(format!("create cgroup {}", p.display()), e))
}

fn write(p: &Path, v: &str) -> Result<(), EngineError> {
    fs::write(p, v).map_err(|e| EngineError::host(format!("write {v:?} to {}", p.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_cap_covers_every_vcpu() {
        assert_eq!(MAX_CPU_CAP_PCT, 100 * crate::spec::MAX_VCPUS);
    }

    #[test]
    fn limits_are_validated() {
        assert!(Limits::default().validate().is_ok());
        assert!(Limits::default().is_empty());
        let l = Limits {
            cpu_weight: Some(0),
            ..Default::default()
        };
        assert!(
            l.validate()
                .unwrap_err()
                .to_string()
                .contains("between 1 and 10000")
        );
        let l = Limits {
            cpu_cap_pct: Some(0),
            ..Default::default()
        };
        assert!(l.validate().is_err());
        let l = Limits {
            memory_limit_mib: Some(10),
            ..Default::default()
        };
        assert!(l.validate().is_err());
    }

    /// Issue 8: 2^44 MiB shifted to a limit of 0 bytes and 2^44 + 300 MiB to
    /// 300 MiB; such limits are refused, and the conversion never wraps.
    #[test]
    fn huge_limits_are_refused_not_wrapped() {
        for m in [17_592_186_044_416u64, 17_592_186_044_716, u64::MAX] {
            let l = Limits {
                memory_limit_mib: Some(m),
                ..Default::default()
            };
            let e = l.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("memory limit {m} MiB")), "{e}");
            assert!(e.contains(&MAX_MEMORY_LIMIT_MIB.to_string()), "{e}");
            assert!(limit_bytes(m).is_err());
        }
        assert_eq!(limit_bytes(300).unwrap(), 300 << 20);
        assert_eq!(
            limit_bytes(MAX_MEMORY_LIMIT_MIB).unwrap(),
            MAX_MEMORY_LIMIT_MIB << 20
        );
        let max = Limits {
            memory_limit_mib: Some(MAX_MEMORY_LIMIT_MIB),
            cpu_cap_pct: Some(MAX_CPU_CAP_PCT),
            ..Default::default()
        };
        assert!(max.validate().is_ok());
    }

    #[test]
    fn cpu_caps_are_bounded() {
        for c in [MAX_CPU_CAP_PCT + 1, u32::MAX] {
            let l = Limits {
                cpu_cap_pct: Some(c),
                ..Default::default()
            };
            let e = l.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("{MAX_CPU_CAP_PCT}%")), "{e}");
        }
        assert_eq!(quota_us(50).unwrap(), 50_000);
        assert_eq!(quota_us(u32::MAX).unwrap(), u64::from(u32::MAX) * 1000);
    }

    #[test]
    fn private_memory_is_anon_plus_shmem() {
        let v1 = "cache 100\nrss 5\ntotal_cache 4096\ntotal_rss 1048576\ntotal_shmem 2048\n";
        assert_eq!(private_bytes(v1, Version::V1), Some(1_050_624));
        let v2 = "anon 300\nfile 9999\nshmem 12\nbogus\n\nanon_thp x\n";
        assert_eq!(private_bytes(v2, Version::V2), Some(312));
        assert_eq!(private_bytes("file 1\n", Version::V2), None);
        assert_eq!(private_bytes("", Version::V1), None);
        let huge = format!("total_rss {}\ntotal_shmem {}\n", u64::MAX, u64::MAX);
        assert_eq!(private_bytes(&huge, Version::V1), Some(u64::MAX));
    }

    #[test]
    fn limits_are_applied_on_this_host() {
        if version().is_none() {
            // brood's CI hosts have one; elsewhere, skipping is asked for
            // by name and said out loud, never a silent pass.
            assert!(
                std::env::var_os("BROOD_TEST_SKIP_CGROUPS").is_some(),
                "no cgroup hierarchy with cpu and memory under {ROOT}: this test needs v2 with \
                 both controllers or v1 cpu and memory hierarchies; on a host without them, set \
                 BROOD_TEST_SKIP_CGROUPS=1 to skip it"
            );
            eprintln!("SKIPPED limits_are_applied_on_this_host: no cgroup hierarchy under {ROOT}");
            return;
        }
        let leaf = format!("unit-{}", std::process::id());
        let l = Limits {
            cpu_weight: Some(200),
            cpu_cap_pct: Some(50),
            memory_limit_mib: Some(300),
        };
        let cg = Cgroup::create(&leaf, &l).unwrap();
        let read = |name: &str| {
            cg.dirs()
                .iter()
                .find_map(|d| fs::read_to_string(d.join(name)).ok())
                .unwrap_or_default()
        };
        match version() {
            Some(Version::V1) => {
                assert_eq!(read("cpu.shares").trim(), "2048");
                assert_eq!(read("cpu.cfs_quota_us").trim(), "50000");
                assert_eq!(
                    read("memory.limit_in_bytes").trim(),
                    (300u64 << 20).to_string()
                );
            }
            Some(Version::V2) => {
                assert_eq!(read("cpu.weight").trim(), "200");
                assert_eq!(read("cpu.max").trim(), "50000 100000");
                assert_eq!(read("memory.max").trim(), (300u64 << 20).to_string());
            }
            None => unreachable!(),
        }
        cg.set_memory_limit(400).unwrap();
        assert_eq!(cg.memory_limit_mib(), Some(400));
        assert!(cg.set_memory_limit(1).is_err());
        assert_eq!(cg.memory_private_bytes(), Some(0));
        cg.remove();
        assert!(cg.dirs().iter().all(|d| !d.exists()));
    }
}
