//! Facts about the host the engine needs before it starts a VM: whether
//! hardware virtualization is usable, the TSC frequency a TCG guest must be
//! told, and how much memory is free. Read from /proc and /sys, parsed
//! leniently; the parsing functions are pure so they can be tested.

use std::path::Path;

use crate::EngineError;
use crate::spec::AccelChoice;

/// The accelerator a VM actually runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation, with the guest told the host TSC rate.
    Tcg {
        /// Host TSC frequency in kHz, passed as `tsc_early_khz=` when known.
        tsc_khz: Option<u64>,
    },
}

impl Accel {
    /// "kvm" or "tcg".
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg { .. } => "tcg",
        }
    }
}

/// Whether this host can run KVM guests: the CPU flags show vmx or svm and
/// /dev/kvm opens read-write. (A nested software hypervisor may expose
/// /dev/kvm without either flag; a stock kernel then barely boots, so brood
/// treats that as no KVM.)
pub fn kvm_usable() -> bool {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo_has_virt(&flags)
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

fn cpuinfo_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .take(1)
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Resolves the user's choice against the host.
pub fn resolve_accel(choice: AccelChoice) -> Result<Accel, EngineError> {
    match choice {
        AccelChoice::Kvm if kvm_usable() => Ok(Accel::Kvm),
        AccelChoice::Kvm => Err(EngineError::InvalidSpec(
            "--accel kvm needs hardware virtualization (vmx or svm in /proc/cpuinfo and a \
             writable /dev/kvm); use --accel tcg or auto"
                .into(),
        )),
        AccelChoice::Auto if kvm_usable() => Ok(Accel::Kvm),
        AccelChoice::Auto | AccelChoice::Tcg => Ok(Accel::Tcg {
            tsc_khz: host_tsc_khz(),
        }),
    }
}

/// The host TSC frequency in kHz: the kernel's own figure when it exports
/// one, else the first "cpu MHz" of /proc/cpuinfo.
///
/// Under TCG the guest kernel calibrates the TSC against the PIT/HPET, which
/// is slow and erratic when emulated; without `tsc_early_khz=` Linux 6.1 can
/// hang or take seconds in calibration.
pub fn host_tsc_khz() -> Option<u64> {
    let sys = Path::new("/sys/devices/system/cpu/cpu0/tsc_freq_khz");
    if let Some(khz) = std::fs::read_to_string(sys)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return Some(khz);
    }
    cpuinfo_mhz_khz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn cpuinfo_mhz_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    if !(1.0..1.0e6).contains(&mhz) {
        return None;
    }
    // In range by the check above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((mhz * 1000.0).round() as u64)
}

/// MemAvailable from /proc/meminfo, in MiB.
pub fn mem_available_mib() -> Option<u64> {
    meminfo_available_mib(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn meminfo_available_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Free space of the file system holding `dir`, in MiB.
pub fn fs_free_mib(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()) >> 20)
}

/// Number of online CPUs.
pub fn online_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_flags() {
        assert!(cpuinfo_has_virt(
            "processor: 0\nflags\t\t: fpu vme svm sse\n"
        ));
        assert!(cpuinfo_has_virt("flags : fpu vmx\n"));
        assert!(!cpuinfo_has_virt("flags : fpu vme sse svmx\n"));
        assert!(!cpuinfo_has_virt(""));
    }

    #[test]
    fn tsc_from_cpuinfo() {
        assert_eq!(cpuinfo_mhz_khz("cpu MHz\t\t: 2596.098\n"), Some(2_596_098));
        assert_eq!(cpuinfo_mhz_khz("cpu MHz : bogus\n"), None);
        assert_eq!(cpuinfo_mhz_khz("cpu MHz : -5\n"), None);
        assert_eq!(cpuinfo_mhz_khz(""), None);
    }

    #[test]
    fn meminfo() {
        let m = "MemTotal:       24000000 kB\nMemAvailable:   2048000 kB\n";
        assert_eq!(meminfo_available_mib(m), Some(2000));
        assert_eq!(meminfo_available_mib("MemAvailable: x kB"), None);
    }

    #[test]
    fn tcg_is_always_available() {
        assert!(matches!(
            resolve_accel(AccelChoice::Tcg),
            Ok(Accel::Tcg { .. })
        ));
    }
}
