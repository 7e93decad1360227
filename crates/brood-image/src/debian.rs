//! [`build_debian`]: an image with a Debian root file system, built with
//! mmdebstrap from any Debian packages, next to the cloud kernel and a small
//! initramfs that loads the virtio modules, mounts the root disk and hands
//! over to the brood-agent on it as PID 1.
//!
//! ```text
//! <images>/<name>/vmlinuz        the host's linux-image-cloud-amd64 kernel
//! <images>/<name>/initrd.img     the default initramfs plus /etc/brood/root
//! <images>/<name>/root.qcow2     ext4 root file system (qcow2, no backing file)
//! <images>/<name>/manifest.json  every package and version, sha256 of outputs
//! ```
//!
//! The root file system is mmdebstrap's `minbase` of the suite plus `kmod`
//! and the packages asked for, then brood's files: `/sbin/brood-agent`,
//! `/etc/brood/services/*`, `/etc/brood/image.json`, the kernel's modules
//! (so `modprobe` works for nftables, nfsd...), and a fixed `/etc/hostname`,
//! `/etc/hosts` and `/etc/resolv.conf` (QEMU's user-network resolver) in
//! place of the host's. Build steps run in `<images>/.build-<name>-*` and
//! the image appears under its name with one rename, only when complete;
//! any error removes the build directory. The input fingerprint covers
//! every option, the kernel, busybox and the agent: an unchanged build
//! writes nothing. The mirror's package versions are not an input (they
//! are only known after a download); `force` rebuilds to pick up new ones.
//! Package timestamps are pinned (`SOURCE_DATE_EPOCH` for mmdebstrap,
//! `E2FSPROGS_FAKE_TIME` for mkfs.ext4) and the ext4 UUID and hash seed
//! derive from the fingerprint, so that two builds from the same mirror
//! state differ as little as the tools allow; byte-identical root disks
//! are not checked (mmdebstrap's and mke2fs's file order is theirs).
//!
//! This is a library function so that broodd (service pools) and the CLI
//! build images from the same [`DebianOptions`].

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::build::{Inputs, resolve_modules, sync_dir, up_to_date, write_atomic};
use crate::layout::{self, DEPENDENT_SERVICES_DIR, INDEPENDENT_SERVICES_DIR, Service, ServiceKind};
use crate::manifest::{Fingerprint, OutputFile, Outputs, RootfsInfo, hash_file};
use crate::mmdebstrap::{self, Bootstrap};
use crate::store::{self, DEFAULT_IMAGE};
use crate::{
    INITRD_FILE, ImageError, KERNEL_FILE, MANIFEST_FILE, Manifest, ROOT_DISK_FILE, elf, package,
};

/// The suite built when none is given.
pub const DEFAULT_SUITE: &str = "bookworm";
/// The root disk size when none is given, in GiB.
pub const DEFAULT_SIZE_GIB: u64 = 2;
/// The largest root disk, in GiB.
pub const MAX_SIZE_GIB: u64 = 1024;
/// mmdebstrap's variant: essential packages, apt, nothing else.
pub const VARIANT: &str = "minbase";
/// Packages every Debian image gets besides the requested ones: `kmod`
/// for `modprobe`, which services such as nftables and nfsd need.
pub const BASE_PACKAGES: &[&str] = &["kmod"];
/// The name of the service image (`brood image build --service`): the
/// Debian image service-pool members of the `service` classes boot.
pub const SERVICE_IMAGE: &str = "service";
/// The packages of the service image: the programs of the shipped service
/// classes (`images/classes/`: dnsmasq for `dns` and `dhcp`, rsyslog for a
/// log sink, the NFS server, nftables and iproute2 for `switch`, busybox
/// for `http`) and the tools their scripts and probes use (`dig`, `ss`,
/// `sysctl`, `showmount`).
pub const SERVICE_PACKAGES: &[&str] = &[
    "dnsmasq",
    "rsyslog",
    "nfs-kernel-server",
    "nftables",
    "iproute2",
    "busybox",
    "bind9-dnsutils",
    "procps",
];
/// The most `--package` arguments.
const MAX_PACKAGES: usize = 512;
/// SOURCE_DATE_EPOCH of every build (2024-01-01T00:00:00Z): timestamps in
/// the root file system do not depend on when it was built.
const EPOCH: u64 = 1_704_067_200;
/// The root device the initramfs mounts: brood attaches the image's root
/// disk (an overlay of it) as the VM's first disk.
pub const ROOT_DEVICE: &str = "/dev/vda";
/// Room for ext4's metadata and journal, and some free space, over what
/// the files take.
const EXT4_OVERHEAD_MIB: u64 = 160;

/// What Debian image to build, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianOptions {
    /// The images directory (`DATA_DIR/images`).
    pub images_dir: PathBuf,
    /// The image's name: its directory under `images_dir`.
    pub name: String,
    /// The Debian suite (`bookworm`, `trixie`...).
    pub suite: String,
    /// Packages to install besides minbase and [`BASE_PACKAGES`].
    pub packages: Vec<String>,
    /// The root disk's size in GiB.
    pub size_gib: u64,
    /// The mirror; `None` takes the host's apt sources' Debian mirror.
    pub mirror: Option<String>,
    /// The brood-agent binary: a static x86-64 Linux executable.
    pub agent: PathBuf,
    /// Service scripts for `/etc/brood/services/independent/`.
    pub independent_services: Vec<PathBuf>,
    /// Service scripts for `/etc/brood/services/dependent/`.
    pub dependent_services: Vec<PathBuf>,
    /// Kernel modules to add to the initramfs's defaults.
    pub extra_modules: Vec<String>,
    /// Rebuild even when the image is up to date.
    pub force: bool,
}

impl DebianOptions {
    /// Options for image `name` of the default suite and size.
    pub fn new(
        images_dir: impl Into<PathBuf>,
        name: impl Into<String>,
        agent: impl Into<PathBuf>,
    ) -> Self {
        DebianOptions {
            images_dir: images_dir.into(),
            name: name.into(),
            suite: DEFAULT_SUITE.to_string(),
            packages: Vec::new(),
            size_gib: DEFAULT_SIZE_GIB,
            mirror: None,
            agent: agent.into(),
            independent_services: Vec::new(),
            dependent_services: Vec::new(),
            extra_modules: Vec::new(),
            force: false,
        }
    }
}

/// A step of [`build_debian`], reported as it starts (and mmdebstrap's own
/// lines while step 2 runs). Render as `[2/6] {progress}`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DebianProgress {
    /// Step 1: checking options, tools, the agent and the kernel.
    Checking,
    /// Step 2: mmdebstrap starts.
    Bootstrapping {
        /// The suite.
        suite: String,
        /// The mirror.
        mirror: String,
        /// How many packages were asked for (besides minbase).
        packages: usize,
    },
    /// Step 2: a progress line of mmdebstrap's.
    Tool {
        /// The line, as mmdebstrap printed it.
        line: String,
    },
    /// Step 3: adding the agent, services and modules; listing packages.
    Customizing,
    /// Step 4: writing the ext4 root disk.
    WritingRootDisk {
        /// Its size.
        size_gib: u64,
    },
    /// Step 5: writing the kernel, initramfs and manifest.
    WritingBoot,
    /// Step 6: the image was built and is in place.
    Done {
        /// The input fingerprint.
        fingerprint: String,
    },
    /// Step 6: the image was already up to date; nothing was written.
    UpToDate {
        /// The input fingerprint.
        fingerprint: String,
    },
}

impl DebianProgress {
    /// The number of steps.
    pub const STEPS: u8 = 6;

    /// This step's number, 1 to [`DebianProgress::STEPS`].
    pub fn step(&self) -> u8 {
        match self {
            DebianProgress::Checking => 1,
            DebianProgress::Bootstrapping { .. } | DebianProgress::Tool { .. } => 2,
            DebianProgress::Customizing => 3,
            DebianProgress::WritingRootDisk { .. } => 4,
            DebianProgress::WritingBoot => 5,
            DebianProgress::Done { .. } | DebianProgress::UpToDate { .. } => 6,
        }
    }
}

impl fmt::Display for DebianProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DebianProgress::Checking => write!(f, "checking tools, agent and kernel"),
            DebianProgress::Bootstrapping {
                suite,
                mirror,
                packages,
            } => write!(
                f,
                "mmdebstrap {VARIANT} {suite} from {mirror} with {packages} extra package(s) (a minute or more)"
            ),
            DebianProgress::Tool { line } => write!(f, "  {line}"),
            DebianProgress::Customizing => {
                write!(f, "adding brood-agent, services and kernel modules")
            }
            DebianProgress::WritingRootDisk { size_gib } => {
                write!(
                    f,
                    "writing the {size_gib} GiB ext4 root disk ({ROOT_DISK_FILE})"
                )
            }
            DebianProgress::WritingBoot => {
                write!(f, "writing {KERNEL_FILE}, {INITRD_FILE}, {MANIFEST_FILE}")
            }
            DebianProgress::Done { fingerprint } => {
                write!(
                    f,
                    "built image {}",
                    fingerprint.get(..12).unwrap_or(fingerprint)
                )
            }
            DebianProgress::UpToDate { fingerprint } => write!(
                f,
                "image {} is up to date",
                fingerprint.get(..12).unwrap_or(fingerprint)
            ),
        }
    }
}

/// Builds (or finds up to date) the Debian image `opts.name` and returns its
/// manifest. See the module docs for what it holds and how it appears.
pub fn build_debian(
    opts: &DebianOptions,
    progress: &mut dyn FnMut(DebianProgress),
) -> Result<Manifest, ImageError> {
    progress(DebianProgress::Checking);
    let packages = check_options(opts)?;
    let _lock = store::lock(&opts.images_dir, &opts.name)?;
    // What an earlier build of this name that was killed left.
    for left in store::sweep_locked(&opts.images_dir, &opts.name) {
        tracing::info!(
            "removed {}, left by a build that did not finish",
            left.display()
        );
    }
    let final_dir = store::image_dir(&opts.images_dir, &opts.name)?;
    let mirror = match &opts.mirror {
        Some(m) => check_mirror(m)?,
        None => mmdebstrap::host_mirror()?,
    };
    let agent = fs::read(&opts.agent).map_err(|source| ImageError::AgentMissing {
        path: opts.agent.clone(),
        source,
    })?;
    elf::check_static_x86_64(&opts.agent, &agent)?;
    let services = layout::read_services(&opts.independent_services, &opts.dependent_services)?;
    let kernel = package::kernel()?;
    let busybox = package::busybox()?;
    let mut modules = opts.extra_modules.clone();
    // Built into Debian's cloud kernel; a module in others.
    modules.push("ext4".to_string());
    let resolved = resolve_modules(&kernel, &modules)?;
    // The initramfs carries no services: they live on the root disk.
    let inputs = Inputs::read(agent, Vec::new(), kernel, busybox, resolved)?;
    let fingerprint = fingerprint(opts, &packages, &mirror, &inputs, &services);
    if !opts.force
        && let Some(m) = up_to_date(&final_dir, &fingerprint)
    {
        progress(DebianProgress::UpToDate { fingerprint });
        return Ok(m);
    }
    if !is_root() {
        return Err(ImageError::NeedRoot);
    }

    let scratch = crate::mounts::Scratch::new(
        tempfile::Builder::new()
            .prefix(&format!(".build-{}-", opts.name))
            .tempdir_in(&opts.images_dir)
            .map_err(|source| write_err(&opts.images_dir, source))?,
    );
    let rootfs = scratch.path().join("rootfs");
    let out = scratch.path().join("out");
    fs::create_dir(&out).map_err(|source| write_err(&out, source))?;

    progress(DebianProgress::Bootstrapping {
        suite: opts.suite.clone(),
        mirror: mirror.clone(),
        packages: opts.packages.len(),
    });
    mmdebstrap::bootstrap(
        &Bootstrap {
            suite: &opts.suite,
            mirror: &mirror,
            variant: VARIANT,
            packages: &packages,
            target: &rootfs,
            epoch: EPOCH,
        },
        &mut |line| {
            progress(DebianProgress::Tool {
                line: line.to_string(),
            })
        },
    )?;
    // What mmdebstrap failed to unmount must not reach the root disk.
    crate::mounts::detach_below(&rootfs)?;

    progress(DebianProgress::Customizing);
    customize(&rootfs, &inputs, &services, &fingerprint)?;
    let installed = mmdebstrap::installed_packages(&rootfs)?;
    for p in &packages {
        if !installed.iter().any(|i| &i.package == p) {
            return Err(ImageError::PackageNotInstalled { package: p.clone() });
        }
    }

    progress(DebianProgress::WritingRootDisk {
        size_gib: opts.size_gib,
    });
    let root_disk = root_disk(&rootfs, scratch.path(), &out, opts.size_gib, &fingerprint)?;
    // The tree is in the disk now; free its space before the rename.
    let _ = fs::remove_dir_all(&rootfs);

    progress(DebianProgress::WritingBoot);
    let root_config = format!("device={ROOT_DEVICE}\nfstype=ext4\n");
    let initrd = inputs.initrd(&fingerprint, Some(&root_config))?;
    let kernel_out = write_atomic(&out, KERNEL_FILE, &inputs.kernel_image)?;
    let initrd_out = write_atomic(&out, INITRD_FILE, &initrd)?;
    let mut manifest = inputs.manifest(
        fingerprint.clone(),
        Outputs {
            kernel: kernel_out,
            initrd: initrd_out,
            root_disk: Some(root_disk),
        },
    );
    manifest.services = crate::ServicesInfo {
        independent: service_names(&services, ServiceKind::Independent),
        dependent: service_names(&services, ServiceKind::Dependent),
    };
    let mut requested = opts.packages.clone();
    requested.sort();
    requested.dedup();
    manifest.rootfs = Some(RootfsInfo {
        name: opts.name.clone(),
        suite: opts.suite.clone(),
        mirror: mirror.clone(),
        variant: VARIANT.to_string(),
        size_gib: opts.size_gib,
        requested,
        packages: installed,
        init: "brood-agent".to_string(),
    });
    let manifest_path = out.join(MANIFEST_FILE);
    let encoded = crate::manifest::encode(&manifest_path, &manifest)?;
    write_atomic(&out, MANIFEST_FILE, &encoded)?;
    sync_dir(&out)?;
    store::install(&opts.images_dir, &opts.name, &out, scratch.path())?;
    drop(scratch);
    progress(DebianProgress::Done { fingerprint });
    Ok(manifest)
}

/// Whether this process runs as root: mmdebstrap's root mode and the root
/// disk's file ownership need euid 0.
fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn write_err(path: &Path, source: io::Error) -> ImageError {
    if source.raw_os_error() == Some(28) {
        // ENOSPC
        return ImageError::DiskFull {
            dir: path.to_path_buf(),
        };
    }
    ImageError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn service_names(services: &[Service], kind: ServiceKind) -> Vec<String> {
    services
        .iter()
        .filter(|s| s.kind == kind)
        .map(|s| s.name.clone())
        .collect()
}

/// Checks every option that needs no I/O; returns the package list given
/// to mmdebstrap ([`BASE_PACKAGES`] plus the requested ones, sorted, unique).
fn check_options(opts: &DebianOptions) -> Result<Vec<String>, ImageError> {
    store::validate_name(&opts.name)?;
    if opts.name == DEFAULT_IMAGE {
        return Err(ImageError::InvalidName {
            name: opts.name.clone(),
            reason: "`default` is the busybox image; give a Debian image another name",
        });
    }
    let suite_ok = !opts.suite.is_empty()
        && opts.suite.len() <= 32
        && opts
            .suite
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase())
        && opts
            .suite
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !suite_ok {
        return Err(ImageError::InvalidOption {
            what: "--suite",
            value: opts.suite.clone(),
            reason: "a suite is a Debian codename such as bookworm or trixie".to_string(),
        });
    }
    if opts.size_gib == 0 || opts.size_gib > MAX_SIZE_GIB {
        return Err(ImageError::InvalidOption {
            what: "--size",
            value: opts.size_gib.to_string(),
            reason: format!("use 1 to {MAX_SIZE_GIB} GiB"),
        });
    }
    if opts.packages.len() > MAX_PACKAGES {
        return Err(ImageError::InvalidOption {
            what: "--package",
            value: format!("{} packages", opts.packages.len()),
            reason: format!("at most {MAX_PACKAGES}"),
        });
    }
    for p in &opts.packages {
        // Debian Policy 5.6.1: lowercase letters, digits, + - . ; at least
        // two characters, starting with a letter or digit.
        let ok = p.len() >= 2
            && p.len() <= 128
            && p.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if !ok {
            return Err(ImageError::InvalidOption {
                what: "--package",
                value: p.clone(),
                reason: "a Debian package name is 2 or more of a-z, 0-9, '+', '-', '.'".to_string(),
            });
        }
    }
    mmdebstrap::check_tools()?;
    let mut all: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
    all.extend(opts.packages.iter().cloned());
    all.sort();
    all.dedup();
    Ok(all)
}

fn check_mirror(m: &str) -> Result<String, ImageError> {
    let ok = (m.starts_with("http://") || m.starts_with("https://"))
        && m.len() <= 512
        && !m
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b',');
    if !ok {
        return Err(ImageError::InvalidOption {
            what: "--mirror",
            value: m.to_string(),
            reason: "give an http:// or https:// URL of a Debian mirror".to_string(),
        });
    }
    Ok(m.trim_end_matches('/').to_string())
}

/// The fingerprint over every input of a Debian image.
fn fingerprint(
    opts: &DebianOptions,
    packages: &[String],
    mirror: &str,
    inputs: &Inputs,
    services: &[Service],
) -> String {
    let mut fp = Fingerprint::new();
    fp.field("kind", b"debian");
    fp.field("boot", inputs.fingerprint().as_bytes());
    fp.field("name", opts.name.as_bytes());
    fp.field("suite", opts.suite.as_bytes());
    fp.field("mirror", mirror.as_bytes());
    fp.field("variant", VARIANT.as_bytes());
    fp.field("size_gib", &opts.size_gib.to_le_bytes());
    for p in packages {
        fp.field("package", p.as_bytes());
    }
    for s in services {
        fp.field(s.kind.tag(), s.name.as_bytes());
        fp.field("service.mode", &s.mode.to_le_bytes());
        fp.field("service.data", &s.data);
    }
    fp.finish()
}

/// Adds brood's files to the root file system.
fn customize(
    rootfs: &Path,
    inputs: &Inputs,
    services: &[Service],
    fingerprint: &str,
) -> Result<(), ImageError> {
    write_in_root(rootfs, layout::AGENT_PATH, &inputs.agent, 0o755)?;
    for dir in [INDEPENDENT_SERVICES_DIR, DEPENDENT_SERVICES_DIR] {
        mkdir_in_root(rootfs, dir)?;
    }
    for s in services {
        let dir = match s.kind {
            ServiceKind::Independent => INDEPENDENT_SERVICES_DIR,
            ServiceKind::Dependent => DEPENDENT_SERVICES_DIR,
        };
        write_in_root(rootfs, &format!("{dir}/{}", s.name), &s.data, 0o755)?;
    }
    let image_json = serde_json::json!({
        "format_version": crate::FORMAT_VERSION,
        "kernel_release": inputs.kernel.release,
        "fingerprint": fingerprint,
        "rootfs": "debian",
    });
    write_in_root(
        rootfs,
        "/etc/brood/image.json",
        format!("{image_json}\n").as_bytes(),
        0o644,
    )?;
    write_in_root(rootfs, "/etc/hostname", b"brood\n", 0o644)?;
    write_in_root(
        rootfs,
        "/etc/hosts",
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    // mmdebstrap copies the host's; a guest on QEMU's user network asks
    // QEMU's resolver, a bridged one writes its own.
    write_in_root(rootfs, "/etc/resolv.conf", b"nameserver 10.0.2.3\n", 0o644)?;
    // Empty: the agent gives each VM (and each forked child) its own.
    write_in_root(rootfs, "/etc/machine-id", b"", 0o444)?;
    copy_modules(rootfs, &inputs.kernel.modules_dir, &inputs.kernel.release)
}

/// The kernel's whole modules directory, so `modprobe` finds any module.
fn copy_modules(rootfs: &Path, modules_dir: &Path, release: &str) -> Result<(), ImageError> {
    let parent = "/usr/lib/modules";
    mkdir_in_root(rootfs, parent)?;
    let target = rootfs.join(parent.trim_start_matches('/')).join(release);
    mmdebstrap::run(
        "cp",
        Command::new("cp")
            .arg("-a")
            .arg("--no-target-directory")
            .arg(modules_dir)
            .arg(&target),
    )?;
    Ok(())
}

/// Resolves `path` (absolute, in the guest) to a host path inside `rootfs`,
/// creating missing directories; refuses a symlink on the way that could
/// lead out of the root (absolute or with `..`).
fn host_path(rootfs: &Path, path: &str, create_parents: bool) -> Result<PathBuf, ImageError> {
    let rel = Path::new(path.trim_start_matches('/'));
    let mut host = rootfs.to_path_buf();
    let comps: Vec<Component<'_>> = rel.components().collect();
    let bad = |why: String| ImageError::LayoutConflict {
        path: path.trim_start_matches('/').to_string(),
        reason: why,
    };
    for (i, c) in comps.iter().enumerate() {
        let Component::Normal(name) = c else {
            return Err(bad("not a plain path".to_string()));
        };
        host.push(name);
        if i + 1 == comps.len() {
            break;
        }
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&host).map_err(|source| ImageError::Read {
                    path: host.clone(),
                    source,
                })?;
                let inside = target.is_relative()
                    && target
                        .components()
                        .all(|c| matches!(c, Component::Normal(_)));
                if !inside {
                    return Err(bad(format!(
                        "{} is a symlink to {} in the root file system",
                        host.display(),
                        target.display()
                    )));
                }
                // Relative, downward only: resolves next to the link.
                host.pop();
                host.push(target);
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(bad(format!("{} is not a directory", host.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create_parents => {
                fs::create_dir(&host).map_err(|source| write_err(&host, source))?;
            }
            Err(source) => {
                return Err(ImageError::Read {
                    path: host.clone(),
                    source,
                });
            }
        }
    }
    Ok(host)
}

fn mkdir_in_root(rootfs: &Path, dir: &str) -> Result<(), ImageError> {
    let host = host_path(rootfs, dir, true)?;
    match fs::create_dir(&host) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && host.is_dir() => Ok(()),
        Err(source) => Err(write_err(&host, source)),
    }
}

/// Writes a file in the root file system, replacing (never following)
/// whatever is at its path.
fn write_in_root(rootfs: &Path, path: &str, data: &[u8], mode: u32) -> Result<(), ImageError> {
    let host = host_path(rootfs, path, true)?;
    match fs::remove_file(&host) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(write_err(&host, source)),
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&host)
        .map_err(|source| write_err(&host, source))?;
    f.write_all(data)
        .map_err(|source| write_err(&host, source))?;
    // The umask may have taken bits away.
    fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(|source| write_err(&host, source))
}

/// Bytes the files under `dir` take (allocated blocks), not crossing mounts.
fn used_bytes(dir: &Path) -> u64 {
    let Ok(top) = fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.dev() != top.dev() {
                continue;
            }
            total = total.saturating_add(m.blocks().saturating_mul(512));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// A UUID-shaped string from the fingerprint (ext4's UUID and hash seed).
fn uuid_from(fingerprint: &str) -> String {
    let h: String = fingerprint
        .chars()
        .filter(char::is_ascii_hexdigit)
        .chain(std::iter::repeat('0'))
        .take(32)
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Makes the ext4 file system of `rootfs` in a sparse raw file, converts it
/// to `out/root.qcow2` and returns that output.
fn root_disk(
    rootfs: &Path,
    scratch: &Path,
    out: &Path,
    size_gib: u64,
    fingerprint: &str,
) -> Result<OutputFile, ImageError> {
    let mib = 1024 * 1024;
    let needed_mib = used_bytes(rootfs) / mib + used_bytes(rootfs) / mib / 8 + EXT4_OVERHEAD_MIB;
    if needed_mib > size_gib * 1024 {
        return Err(ImageError::RootTooLarge {
            needed_mib,
            size_gib,
            suggest_gib: needed_mib.div_ceil(1024) + 1,
        });
    }
    let raw = scratch.join("root.raw");
    let f = fs::File::create(&raw).map_err(|source| write_err(&raw, source))?;
    f.set_len(size_gib * 1024 * mib)
        .map_err(|source| write_err(&raw, source))?;
    drop(f);
    let uuid = uuid_from(fingerprint);
    let mkfs = mmdebstrap::run(
        "mkfs.ext4",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", "brood-root", "-U", &uuid])
            .arg("-E")
            .arg(format!("root_owner=0:0,hash_seed={uuid}"))
            .arg("-d")
            .arg(rootfs)
            .arg(&raw)
            .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string())
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string()),
    );
    if let Err(ImageError::ToolFailed { detail, .. }) = &mkfs
        && (detail.contains("No space left") || detail.contains("Could not allocate"))
    {
        return Err(
            if detail.contains("No space left on device") && !detail.contains("allocate") {
                ImageError::DiskFull {
                    dir: scratch.parent().unwrap_or(scratch).to_path_buf(),
                }
            } else {
                ImageError::RootTooLarge {
                    needed_mib,
                    size_gib,
                    suggest_gib: size_gib * 2,
                }
            },
        );
    }
    mkfs?;
    let qcow2 = out.join(ROOT_DISK_FILE);
    mmdebstrap::run(
        "qemu-img",
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow2),
    )
    .map_err(|e| match e {
        ImageError::ToolFailed { ref detail, .. } if detail.contains("No space left") => {
            ImageError::DiskFull {
                dir: scratch.parent().unwrap_or(scratch).to_path_buf(),
            }
        }
        other => other,
    })?;
    let _ = fs::remove_file(&raw);
    fs::set_permissions(&qcow2, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(|source| write_err(&qcow2, source))?;
    let (sha256, size_bytes) = hash_file(&qcow2).map_err(|source| ImageError::Read {
        path: qcow2.clone(),
        source,
    })?;
    Ok(OutputFile {
        file: ROOT_DISK_FILE.to_string(),
        sha256,
        size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> DebianOptions {
        DebianOptions::new("/i", "deb", "/a")
    }

    #[test]
    fn options_are_checked_before_anything_runs() {
        let mut o = opts();
        o.packages = vec!["curl".into(), "kmod".into(), "curl".into()];
        if mmdebstrap::have("mmdebstrap") {
            assert_eq!(check_options(&o).unwrap(), ["curl", "kmod"]);
        }
        for (edit, what) in [
            (
                Box::new(|o: &mut DebianOptions| o.name = "default".into())
                    as Box<dyn Fn(&mut DebianOptions)>,
                "default",
            ),
            (
                Box::new(|o: &mut DebianOptions| o.name = "Bad".into()),
                "a-z",
            ),
            (
                Box::new(|o: &mut DebianOptions| o.suite = "book worm".into()),
                "--suite",
            ),
            (
                Box::new(|o: &mut DebianOptions| o.suite = String::new()),
                "--suite",
            ),
            (Box::new(|o: &mut DebianOptions| o.size_gib = 0), "--size"),
            (
                Box::new(|o: &mut DebianOptions| o.size_gib = MAX_SIZE_GIB + 1),
                "--size",
            ),
            (
                Box::new(|o: &mut DebianOptions| o.packages = vec!["Curl".into()]),
                "--package",
            ),
            (
                Box::new(|o: &mut DebianOptions| o.packages = vec!["a,b".into()]),
                "--package",
            ),
            (
                Box::new(|o: &mut DebianOptions| o.packages = vec!["x".into()]),
                "--package",
            ),
        ] {
            let mut o = opts();
            edit(&mut o);
            let err = check_options(&o).unwrap_err();
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
        assert!(check_mirror("ftp://x").is_err());
        assert!(check_mirror("http://a b").is_err());
        assert_eq!(check_mirror("http://m/debian/").unwrap(), "http://m/debian");
    }

    #[test]
    fn uuid_is_derived_from_the_fingerprint() {
        assert_eq!(
            uuid_from(&"ab".repeat(32)),
            "abababab-abab-abab-abab-abababababab"
        );
        assert_eq!(uuid_from("12").len(), 36);
    }

    #[test]
    fn writes_stay_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        write_in_root(&root, "/sbin/brood-agent", b"A", 0o755).unwrap();
        assert_eq!(fs::read(root.join("usr/sbin/brood-agent")).unwrap(), b"A");
        let err = write_in_root(&root, "/etc/hostname", b"x", 0o644).unwrap_err();
        assert!(matches!(err, ImageError::LayoutConflict { .. }), "{err:?}");
        assert!(fs::read_dir(&outside).unwrap().next().is_none());
        // A symlink at the file itself is replaced, not followed.
        fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root.join("var/f")).unwrap();
        write_in_root(&root, "/var/f", b"y", 0o644).unwrap();
        assert!(!outside.join("f").exists());
        mkdir_in_root(&root, "/etc2/brood/services").unwrap();
        assert!(root.join("etc2/brood/services").is_dir());
    }
}
