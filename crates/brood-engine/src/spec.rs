//! `VmSpec`: what a VM is made of, and the checks run before any process is
//! started, so that bad input fails with a message naming the problem and
//! leaves nothing behind. How a spec becomes a QEMU command line is the
//! business of `qemu::argv`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::EngineError;

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when the host has hardware virtualization, TCG otherwise.
    #[default]
    Auto,
    /// Hardware virtualization; fails when the host has none.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            _ => Err(format!("unknown accelerator {s:?}: use auto, kvm or tcg")),
        }
    }
}

/// The QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// `microvm` with ACPI, virtio-mmio devices described in the DSDT.
    #[default]
    Microvm,
    /// `q35` with virtio-pci devices: the fallback for kernels without virtio-mmio.
    Q35,
}

impl FromStr for Machine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "microvm" => Ok(Self::Microvm),
            "q35" => Ok(Self::Q35),
            _ => Err(format!("unknown machine type {s:?}: use microvm or q35")),
        }
    }
}

impl Machine {
    /// How many virtio devices the machine takes, measured with QEMU 10.0.2:
    /// microvm with ACPI (as brood runs it) has 24 virtio-mmio transports,
    /// one per pin of its second IOAPIC (8 with ACPI off); the 25th
    /// `virtio-*-device` fails with "No 'virtio-bus' bus found". q35 has 30
    /// free slots on its root bus (0 is the host bridge, 31 the LPC, SATA
    /// and SMBus functions); the 31st device finds no slot.
    pub const fn virtio_slots(self) -> usize {
        match self {
            Machine::Microvm => 24,
            Machine::Q35 => 30,
        }
    }
}

/// Disk image format. Always given, never probed from the file: a guest
/// that can write a raw image could otherwise write a qcow2 header into it
/// and name a host file as its backing file (libvirt and Proxmox refuse to
/// probe for the same reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A plain block image: what a disk is unless it says otherwise.
    #[default]
    Raw,
    /// QEMU copy-on-write v2.
    Qcow2,
}

impl DiskFormat {
    /// The QEMU driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Self::Raw),
            "qcow2" => Ok(Self::Qcow2),
            _ => Err(format!("unknown disk format {s:?}: use raw or qcow2")),
        }
    }
}

/// A disk attached as virtio-blk; the first one is `/dev/vda` in the guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskSpec {
    /// The image file.
    pub path: PathBuf,
    /// Its format (raw unless set): QEMU is told it, nothing is probed.
    #[serde(default)]
    pub format: DiskFormat,
    /// The guest cannot write it.
    pub read_only: bool,
    /// Writes go to a temporary qcow2 overlay in the VM's run directory,
    /// dropped with the VM; the image itself is never written.
    pub overlay: bool,
    /// A qcow2 image may have backing files (each with its format recorded
    /// in the image). Off, an image that names one is refused: set it only
    /// for images brood made itself (template children's overlays) or that
    /// the user vouches for.
    #[serde(default)]
    pub allow_backing: bool,
    /// Served by a storage I/O partition instead of opened by QEMU: the
    /// image (`path`) is the server's, and QEMU reaches it over NBD.
    #[serde(default)]
    pub nbd: Option<NbdExport>,
    /// Caps on the guest's requests to it (a QEMU throttle group of its
    /// own), whatever serves it.
    #[serde(default)]
    pub throttle: Option<Throttle>,
}

/// Caps on a disk's requests: QEMU's `throttle-group` limits, over reads
/// and writes together. A cap of `None` is no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Throttle {
    /// Requests per second.
    pub iops: Option<u32>,
    /// MiB per second.
    pub mbps: Option<u32>,
}

/// An export of a storage I/O partition (`crate::storage`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NbdExport {
    /// The server's listening unix socket.
    pub socket: PathBuf,
    /// The export's name: a random secret, since every client of the
    /// server could name any export.
    pub export: String,
}

impl DiskSpec {
    /// A writable raw disk used in place.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: DiskFormat::Raw,
            read_only: false,
            overlay: false,
            allow_backing: false,
            nbd: None,
            throttle: None,
        }
    }

    /// A qcow2 image brood made (a partition disk, a child's overlay over
    /// its template's): its backing chain is trusted.
    pub fn own_qcow2(path: impl Into<PathBuf>) -> Self {
        Self {
            format: DiskFormat::Qcow2,
            allow_backing: true,
            ..Self::new(path)
        }
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random address in QEMU's `52:54:00` range.
    pub fn random() -> Result<Self, EngineError> {
        let b: [u8; 3] = crate::random::random_bytes()?;
        Ok(MacAddr([0x52, 0x54, 0x00, b[0], b[1], b[2]]))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts
                .next()
                .ok_or_else(|| format!("MAC {s:?} has fewer than 6 bytes"))?;
            *byte = u8::from_str_radix(p, 16)
                .ok()
                .filter(|_| p.len() == 2)
                .ok_or_else(|| format!("MAC {s:?}: {p:?} is not a hex byte"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC {s:?} has more than 6 bytes"));
        }
        if out[0] & 1 == 1 {
            return Err(format!("MAC {s:?} is a multicast address"));
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How a NIC reaches the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicBackend {
    /// A tap device created for the VM and enslaved to this Linux bridge.
    Bridge(String),
    /// QEMU's user-mode network (slirp) with `restrict=on`: the guest gets
    /// an address by DHCP and reaches nothing, neither the host (10.0.2.2
    /// would be the host's loopback) nor the outside. Needs no host setup.
    User,
    /// QEMU's user-mode network unrestricted (opt-in): outbound NAT to
    /// anywhere, and 10.0.2.2 reaches services listening on the host's
    /// 127.0.0.1, broodd's API included. Only for guests you trust.
    UserUnrestricted,
    /// A port of a switch I/O partition: QEMU listens on a unix stream
    /// socket the engine binds in the VM's run directory
    /// ([`switch_socket`]), and the switch connects to it. QEMU's stream
    /// server listens again when its client goes, so a switch that dies
    /// and is restarted reconnects with nothing to do on the VM's side.
    Switch,
}

/// Where the switch port of NIC `index` of a VM whose run directory is
/// `run_dir` listens.
pub fn switch_socket(run_dir: &Path, index: usize) -> PathBuf {
    run_dir.join(format!("nic{index}.sock"))
}

/// A virtio-net NIC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NicSpec {
    /// Where its traffic goes.
    pub backend: NicBackend,
    /// Its address; random in `52:54:00` when `None`.
    pub mac: Option<MacAddr>,
}

/// Smallest guest memory the engine accepts.
pub const MIN_MEM_MIB: u64 = 32;
/// Most vCPUs the engine accepts.
pub const MAX_VCPUS: u32 = 255;

/// Everything needed to boot a VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmSpec {
    /// Name: 1-64 characters of `[A-Za-z0-9_.-]`, unique among the engine's live VMs.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Linux bzImage.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel arguments added after brood's defaults.
    pub cmdline: String,
    /// Disks, in guest order (`vda`, `vdb`, ...).
    pub disks: Vec<DiskSpec>,
    /// NICs, in guest order (`eth0`, ...).
    pub nics: Vec<NicSpec>,
    /// Accelerator.
    pub accel: AccelChoice,
    /// Machine type.
    pub machine: Machine,
    /// Add the virtio-serial port brood-agent talks on.
    pub agent: bool,
    /// Most bytes of console output kept in the console log.
    pub console_log_limit: u64,
    /// Kill QEMU when the process that started it dies or drops its `Vm`
    /// (for `brood run` and tests; broodd turns it off so VMs outlive a
    /// daemon restart and are found again by `QemuEngine::attach`).
    pub die_with_parent: bool,
    /// CPU and memory limits, enforced with cgroups.
    #[serde(default)]
    pub limits: crate::cgroup::Limits,
}

impl VmSpec {
    /// A spec with brood's defaults: 1 vCPU, 256 MiB, microvm, agent on.
    pub fn new(name: impl Into<String>, kernel: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            vcpus: 1,
            mem_mib: 256,
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            disks: Vec::new(),
            nics: Vec::new(),
            accel: AccelChoice::Auto,
            machine: Machine::Microvm,
            agent: true,
            console_log_limit: 1 << 20,
            die_with_parent: true,
            limits: crate::cgroup::Limits::default(),
        }
    }

    /// Checks everything that can be checked without starting QEMU.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidSpec(m));
        if !valid_name(&self.name) {
            return bad(format!(
                "name {:?} must be 1-64 characters of letters, digits, '_', '.' and '-'",
                self.name
            ));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return bad(format!(
                "vcpus {} must be between 1 and {MAX_VCPUS}",
                self.vcpus
            ));
        }
        if self.mem_mib < MIN_MEM_MIB {
            return bad(format!(
                "memory {} MiB is below the {MIN_MEM_MIB} MiB minimum",
                self.mem_mib
            ));
        }
        // virtio-rng always, the agent's virtio-serial when it is on.
        let own = 1 + usize::from(self.agent);
        let slots = self.machine.virtio_slots();
        if self.disks.len() + self.nics.len() + own > slots {
            return bad(format!(
                "{} disks and {} NICs do not fit: the {:?} machine has {slots} virtio devices and \
                 brood uses {own}, so at most {} disks and NICs together",
                self.disks.len(),
                self.nics.len(),
                self.machine,
                slots - own
            ));
        }
        check_kernel(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_initrd(initrd)?;
        }
        self.limits.validate()?;
        if self.cmdline.contains('\n') {
            return bad("kernel command line must not contain newlines".into());
        }
        for d in &self.disks {
            let meta = std::fs::metadata(&d.path).map_err(|e| {
                EngineError::host(format!("disk {} cannot be used", d.path.display()), e)
            })?;
            if !meta.is_file() && !is_block_device(&meta) {
                return bad(format!(
                    "disk {} is not a file or block device",
                    d.path.display()
                ));
            }
        }
        for n in &self.nics {
            if let NicBackend::Bridge(br) = &n.backend
                && !crate::net::is_bridge(br).unwrap_or(false)
            {
                return bad(format!(
                    "bridge {br:?} does not exist: create it with `ip link add {br} type bridge && ip link set {br} up`"
                ));
            }
        }
        Ok(())
    }
}

fn is_block_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_block_device()
}

/// Whether `name` is usable as a VM name (and so as a path component).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn read_prefix(path: &Path, what: &str, len: usize) -> Result<Vec<u8>, EngineError> {
    let f = std::fs::File::open(path)
        .map_err(|e| EngineError::host(format!("{what} {} cannot be opened", path.display()), e))?;
    let mut buf = Vec::with_capacity(len);
    f.take(len as u64)
        .read_to_end(&mut buf)
        .map_err(|e| EngineError::host(format!("read {what} {}", path.display()), e))?;
    Ok(buf)
}

/// Checks that `path` is an x86 Linux boot image: "HdrS" at offset 0x202.
fn check_kernel(path: &Path) -> Result<(), EngineError> {
    let head = read_prefix(path, "kernel", 0x206)?;
    if head.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(EngineError::InvalidSpec(format!(
            "kernel {} is not a Linux bzImage (no boot header): pass a vmlinuz file",
            path.display()
        )));
    }
    Ok(())
}

/// Checks that `path` starts like a cpio archive or a compressed one.
fn check_initrd(path: &Path) -> Result<(), EngineError> {
    const MAGICS: &[&[u8]] = &[
        b"070701",                       // cpio newc
        b"070702",                       // cpio crc
        &[0x1f, 0x8b],                   // gzip
        &[0x28, 0xb5, 0x2f, 0xfd],       // zstd
        &[0xfd, b'7', b'z', b'X', b'Z'], // xz
        &[0x02, 0x21, 0x4c, 0x18],       // lz4 legacy
        b"BZh",                          // bzip2
        &[0x5d, 0x00, 0x00],             // lzma
        &[0x89, b'L', b'Z', b'O'],       // lzop
    ];
    let head = read_prefix(path, "initrd", 8)?;
    if !MAGICS.iter().any(|m| head.starts_with(m)) {
        return Err(EngineError::InvalidSpec(format!(
            "initrd {} is not a cpio archive (plain or compressed): rebuild it with `brood image build`",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_display() {
        let m: MacAddr = "52:54:00:ab:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:0f:11".parse::<MacAddr>().is_err());
        assert!("01:54:00:ab:cd:0f".parse::<MacAddr>().is_err());
        assert!("5:54:00:ab:cd:0f".parse::<MacAddr>().is_err());
        assert_eq!(MacAddr::random().unwrap().0[..3], [0x52, 0x54, 0x00]);
    }

    /// Issue 8: 70 disks on microvm were accepted and QEMU refused them at start.
    #[test]
    fn devices_beyond_the_machines_virtio_slots_are_refused() {
        let mut spec = VmSpec::new("t", "/nonexistent/vmlinuz");
        spec.disks = vec![DiskSpec::new("/nonexistent/disk"); 70];
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("70 disks and 0 NICs do not fit"), "{err}");
        assert!(err.contains("at most 22"), "{err}");
        spec.machine = Machine::Q35;
        spec.agent = false;
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("at most 29"), "{err}");
        // 22 fit on microvm: the next check (the kernel) is what fails.
        spec.machine = Machine::Microvm;
        spec.agent = true;
        spec.disks.truncate(22);
        let err = spec.validate().unwrap_err().to_string();
        assert!(!err.contains("do not fit"), "{err}");
    }

    #[test]
    fn names() {
        assert!(valid_name("vm-1.test_a"));
        assert!(!valid_name(""));
        assert!(!valid_name("../x"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn bad_kernel_and_initrd_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        std::fs::write(&k, b"not a kernel").unwrap();
        let mut spec = VmSpec::new("t", &k);
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("not a Linux bzImage"), "{err}");

        let mut img = vec![0u8; 0x300];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&k, &img).unwrap();
        spec.validate().unwrap();

        let i = dir.path().join("initrd");
        std::fs::write(&i, b"garbage!").unwrap();
        spec.initrd = Some(i.clone());
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("not a cpio archive"), "{err}");
        std::fs::write(&i, b"070701000").unwrap();
        spec.validate().unwrap();

        spec.kernel = dir.path().join("missing");
        let err = spec.validate().unwrap_err();
        assert!(format!("{err}").contains("cannot be opened"), "{err}");
    }

    #[test]
    fn spec_limits() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        let mut img = vec![0u8; 0x300];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&k, &img).unwrap();
        let mut spec = VmSpec::new("t", &k);
        spec.vcpus = 0;
        assert!(spec.validate().is_err());
        spec.vcpus = 1;
        spec.mem_mib = 1;
        assert!(spec.validate().is_err());
        spec.mem_mib = 64;
        spec.nics.push(NicSpec {
            backend: NicBackend::Bridge("nobr-xyz".into()),
            mac: None,
        });
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("ip link add nobr-xyz type bridge"), "{err}");
    }

    #[test]
    fn disk_formats_are_explicit() {
        assert_eq!(DiskSpec::new("/x").format, DiskFormat::Raw);
        assert!(!DiskSpec::new("/x").allow_backing);
        let own = DiskSpec::own_qcow2("/y");
        assert_eq!((own.format, own.allow_backing), (DiskFormat::Qcow2, true));
        assert_eq!("qcow2".parse::<DiskFormat>().unwrap(), DiskFormat::Qcow2);
        assert!("vmdk".parse::<DiskFormat>().is_err());
        // A spec written before the format was a field still reads as raw.
        let d: DiskSpec =
            serde_json::from_str(r#"{"path":"/z","read_only":false,"overlay":false}"#).unwrap();
        assert_eq!(d.format, DiskFormat::Raw);
    }
}
