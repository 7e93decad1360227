//! [`build`]: resolve the inputs, fingerprint them, and write the image unless
//! the output directory already holds an image with the same fingerprint.
//!
//! Outputs are written atomically (a temporary file in the output directory,
//! then a rename), the old manifest is removed before any output is replaced
//! and the new one is written last, so a directory with a manifest always
//! holds a complete image.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::layout::{self, Contents, Service, ServiceKind};
use crate::manifest::{
    self, AgentInfo, Fingerprint, KernelInfo, Manifest, ModuleInfo, OutputFile, Outputs,
    PackageInfo, ServicesInfo, hash_file, sha256_hex,
};
use crate::module::{self, ModuleDb, Resolved};
use crate::package::{self, BUSYBOX_PACKAGE, Busybox, KERNEL_METAPACKAGE, Kernel};
use crate::{FORMAT_VERSION, INITRD_FILE, ImageError, KERNEL_FILE, MANIFEST_FILE, elf};

/// The modules every image carries: the virtio transports of the microvm
/// (`virtio_mmio`) and q35 (`virtio_pci`) machines and the devices brood uses.
const DEFAULT_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
];

/// Modules every image carries but loads only before booting a disk the VM
/// was given (`brood vm create --disk-image`): FAT for the cloud-init seed
/// disk (ext4, for the root, is built into Debian's cloud kernel). Loading
/// them at every boot would cost the default guest's boot time.
const DISK_MODULES: &[&str] = &["vfat", "nls_cp437", "nls_ascii", "nls_utf8"];

/// The kernel modules every image includes (with their dependencies).
pub fn default_modules() -> &'static [&'static str] {
    DEFAULT_MODULES
}

/// What to build and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// The image directory; created if missing.
    pub out_dir: PathBuf,
    /// The brood-agent binary: a static x86-64 Linux executable.
    pub agent: PathBuf,
    /// Service scripts for `/etc/brood/services/independent/`.
    pub independent_services: Vec<PathBuf>,
    /// Service scripts for `/etc/brood/services/dependent/`.
    pub dependent_services: Vec<PathBuf>,
    /// Kernel modules to add to [`default_modules`] (`-` and `_` are equal).
    pub extra_modules: Vec<String>,
    /// Rebuild even when the directory holds an up-to-date image.
    pub force: bool,
}

impl BuildOptions {
    /// Options for the default image in `out_dir` with the given agent.
    pub fn new(out_dir: impl Into<PathBuf>, agent: impl Into<PathBuf>) -> Self {
        BuildOptions {
            out_dir: out_dir.into(),
            agent: agent.into(),
            independent_services: Vec::new(),
            dependent_services: Vec::new(),
            extra_modules: Vec::new(),
            force: false,
        }
    }
}

/// A step of [`build`], reported as it starts. Render with [`Progress::step`],
/// [`Progress::STEPS`] and `Display`: `[2/5] resolving kernel modules for …`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Step 1: checking the agent and finding the Debian packages.
    ResolvingPackages,
    /// Step 2: resolving the module closure from `modules.dep`.
    ResolvingModules {
        /// The kernel release.
        kernel_release: String,
    },
    /// Step 3: hashing every input into the fingerprint.
    Hashing,
    /// Step 4: writing an output file.
    Writing {
        /// The file name in the output directory.
        file: &'static str,
        /// Its size.
        bytes: u64,
    },
    /// Step 5: the image was built.
    Done {
        /// The input fingerprint.
        fingerprint: String,
    },
    /// Step 5: the directory already held this image; nothing was written.
    UpToDate {
        /// The input fingerprint.
        fingerprint: String,
    },
}

impl Progress {
    /// The number of steps.
    pub const STEPS: u8 = 5;

    /// This step's number, 1 to [`Progress::STEPS`].
    pub fn step(&self) -> u8 {
        match self {
            Progress::ResolvingPackages => 1,
            Progress::ResolvingModules { .. } => 2,
            Progress::Hashing => 3,
            Progress::Writing { .. } => 4,
            Progress::Done { .. } | Progress::UpToDate { .. } => 5,
        }
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::ResolvingPackages => {
                write!(
                    f,
                    "resolving packages {KERNEL_METAPACKAGE}, {BUSYBOX_PACKAGE}"
                )
            }
            Progress::ResolvingModules { kernel_release } => {
                write!(f, "resolving kernel modules for {kernel_release}")
            }
            Progress::Hashing => write!(f, "hashing inputs"),
            Progress::Writing { file, bytes } => write!(f, "writing {file} ({bytes} bytes)"),
            Progress::Done { fingerprint } => write!(f, "built image {}", short(fingerprint)),
            Progress::UpToDate { fingerprint } => {
                write!(f, "image {} is up to date", short(fingerprint))
            }
        }
    }
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// Builds the guest image into `opts.out_dir`, reporting each step to
/// `progress`, and returns its manifest. When the directory already holds an
/// image with the same input fingerprint whose files still match the
/// manifest, nothing is written (unless `opts.force`).
pub fn build(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest, ImageError> {
    progress(Progress::ResolvingPackages);
    let agent = fs::read(&opts.agent).map_err(|source| ImageError::AgentMissing {
        path: opts.agent.clone(),
        source,
    })?;
    elf::check_static_x86_64(&opts.agent, &agent)?;
    let services = layout::read_services(&opts.independent_services, &opts.dependent_services)?;
    let kernel = package::kernel()?;
    let busybox = package::busybox()?;

    progress(Progress::ResolvingModules {
        kernel_release: kernel.release.clone(),
    });
    let resolved = resolve_modules(&kernel, &opts.extra_modules)?;

    progress(Progress::Hashing);
    let inputs = Inputs::read(agent, services, kernel, busybox, resolved)?;
    let fingerprint = inputs.fingerprint();
    if !opts.force
        && let Some(manifest) = up_to_date(&opts.out_dir, &fingerprint)
    {
        progress(Progress::UpToDate { fingerprint });
        return Ok(manifest);
    }
    let initrd = inputs.initrd(&fingerprint, None)?;

    let out = &opts.out_dir;
    fs::create_dir_all(out).map_err(|source| ImageError::Write {
        path: out.clone(),
        source,
    })?;
    remove_manifest(out)?;
    progress(Progress::Writing {
        file: KERNEL_FILE,
        bytes: inputs.kernel_image.len() as u64,
    });
    let kernel_out = write_atomic(out, KERNEL_FILE, &inputs.kernel_image)?;
    progress(Progress::Writing {
        file: INITRD_FILE,
        bytes: initrd.len() as u64,
    });
    let initrd_out = write_atomic(out, INITRD_FILE, &initrd)?;
    let manifest = inputs.manifest(
        fingerprint.clone(),
        Outputs {
            kernel: kernel_out,
            initrd: initrd_out,
            root_disk: None,
        },
    );
    let manifest_path = out.join(MANIFEST_FILE);
    let encoded = manifest::encode(&manifest_path, &manifest)?;
    write_atomic(out, MANIFEST_FILE, &encoded)?;
    sync_dir(out)?;
    progress(Progress::Done { fingerprint });
    Ok(manifest)
}

/// The closure of [`DEFAULT_MODULES`] and `extra` in load order, from the
/// kernel's `modules.dep` (and `modules.builtin`, if present).
pub(crate) fn resolve_modules(kernel: &Kernel, extra: &[String]) -> Result<Resolved, ImageError> {
    let dep_path = kernel.modules_dir.join("modules.dep");
    let db = ModuleDb::parse(&read_text(&dep_path)?, &dep_path)?;
    // modules.builtin only turns "not found" into "built in"; a kernel
    // without it simply has nothing built in that we asked for.
    let builtin = match fs::read_to_string(kernel.modules_dir.join("modules.builtin")) {
        Ok(text) => module::parse_builtin(&text),
        Err(_) => BTreeSet::new(),
    };
    let requested: Vec<String> = DEFAULT_MODULES
        .iter()
        .map(|m| m.to_string())
        .chain(extra.iter().cloned())
        .collect();
    let at_boot = db.resolve(&requested, &builtin, &kernel.release, &dep_path)?;
    let with_disk: Vec<String> = requested
        .iter()
        .cloned()
        .chain(DISK_MODULES.iter().map(|m| m.to_string()))
        .collect();
    let mut all = db.resolve(&with_disk, &builtin, &kernel.release, &dep_path)?;
    let loaded: BTreeSet<&str> = at_boot.order.iter().map(|m| m.name.as_str()).collect();
    all.on_demand = all
        .order
        .iter()
        .filter(|m| !loaded.contains(m.name.as_str()))
        .map(|m| m.name.clone())
        .collect();
    all.builtin = at_boot.builtin;
    Ok(all)
}

/// Every input of the image, read into memory (about 20 MiB in all).
#[derive(Debug)]
pub(crate) struct Inputs {
    pub agent: Vec<u8>,
    pub services: Vec<Service>,
    pub kernel: Kernel,
    pub kernel_image: Vec<u8>,
    pub busybox: Busybox,
    pub busybox_bin: Vec<u8>,
    pub resolved: Resolved,
    /// The module files as shipped (possibly compressed), in load order.
    pub module_raw: Vec<Vec<u8>>,
}

impl Inputs {
    pub fn read(
        agent: Vec<u8>,
        services: Vec<Service>,
        kernel: Kernel,
        busybox: Busybox,
        resolved: Resolved,
    ) -> Result<Self, ImageError> {
        let kernel_image = read(&kernel.image)?;
        if !package::is_bzimage(&kernel_image) {
            return Err(ImageError::NotBzImage {
                path: kernel.image.clone(),
                package: kernel.package.clone(),
            });
        }
        let busybox_bin = read(&busybox.path)?;
        elf::check_static_x86_64(&busybox.path, &busybox_bin)?;
        let module_raw = resolved
            .order
            .iter()
            .map(|m| read(&kernel.modules_dir.join(&m.rel_path)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Inputs {
            agent,
            services,
            kernel,
            kernel_image,
            busybox,
            busybox_bin,
            resolved,
            module_raw,
        })
    }

    /// The fingerprint over everything that can change an output. The busybox
    /// applet list is a function of the busybox binary, so it is covered.
    pub fn fingerprint(&self) -> String {
        let k = &self.kernel;
        let mut fp = Fingerprint::new();
        for (tag, value) in [
            (
                "kernel.metapackage_version",
                k.metapackage_version.as_bytes(),
            ),
            ("kernel.package", k.package.as_bytes()),
            ("kernel.version", k.version.as_bytes()),
            ("kernel.release", k.release.as_bytes()),
            ("kernel.image", &self.kernel_image),
            ("busybox.version", self.busybox.version.as_bytes()),
            ("busybox", &self.busybox_bin),
            ("agent", &self.agent),
        ] {
            fp.field(tag, value);
        }
        for (m, raw) in self.resolved.order.iter().zip(&self.module_raw) {
            fp.field("module.path", m.rel_path.as_bytes());
            fp.field("module.data", raw);
        }
        for name in &self.resolved.builtin {
            fp.field("module.builtin", name.as_bytes());
        }
        for name in &self.resolved.on_demand {
            fp.field("module.on_demand", name.as_bytes());
        }
        for s in &self.services {
            fp.field(s.kind.tag(), s.name.as_bytes());
            fp.field("service.mode", &s.mode.to_le_bytes());
            fp.field("service.data", &s.data);
        }
        fp.finish()
    }

    /// The initramfs archive; `root` names a root disk to switch to.
    pub fn initrd(&self, fingerprint: &str, root: Option<&str>) -> Result<Vec<u8>, ImageError> {
        let applets = layout::busybox_applets(&self.busybox.path)?;
        let mut modules = Vec::with_capacity(self.module_raw.len());
        for (m, raw) in self.resolved.order.iter().zip(&self.module_raw) {
            let data = match m.decompressor() {
                Some(_) => module::read_module(&self.kernel.modules_dir, m)?,
                None => raw.clone(),
            };
            modules.push((m, data));
        }
        let tree = layout::initramfs(Contents {
            release: &self.kernel.release,
            fingerprint,
            agent: &self.agent,
            busybox: &self.busybox_bin,
            applets: &applets,
            modules,
            on_demand: &self.resolved.on_demand,
            services: &self.services,
            root,
        })?;
        let mut initrd = Vec::new();
        tree.write_newc(&mut initrd)?;
        Ok(initrd)
    }

    pub fn manifest(&self, fingerprint: String, outputs: Outputs) -> Manifest {
        let k = &self.kernel;
        let names = |kind| {
            self.services
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.name.clone())
                .collect()
        };
        Manifest {
            format_version: FORMAT_VERSION,
            fingerprint,
            kernel: KernelInfo {
                metapackage: KERNEL_METAPACKAGE.to_string(),
                metapackage_version: k.metapackage_version.clone(),
                package: k.package.clone(),
                version: k.version.clone(),
                release: k.release.clone(),
            },
            busybox: PackageInfo {
                package: BUSYBOX_PACKAGE.to_string(),
                version: self.busybox.version.clone(),
            },
            agent: AgentInfo {
                sha256: sha256_hex(&self.agent),
                size_bytes: self.agent.len() as u64,
            },
            modules: self
                .resolved
                .order
                .iter()
                .map(|m| ModuleInfo {
                    name: m.name.clone(),
                    path: layout::module_image_path(&k.release, m),
                })
                .collect(),
            builtin_modules: self.resolved.builtin.clone(),
            services: ServicesInfo {
                independent: names(ServiceKind::Independent),
                dependent: names(ServiceKind::Dependent),
            },
            outputs,
            rootfs: None,
        }
    }
}

/// The manifest in `dir` if it has `fingerprint` and every output still has
/// its recorded hash and size. Any problem just means "rebuild".
pub(crate) fn up_to_date(dir: &Path, fingerprint: &str) -> Option<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = fs::read(&path).ok()?;
    let manifest = match manifest::parse(&path, &text) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "existing manifest unusable; rebuilding");
            return None;
        }
    };
    if manifest.fingerprint != fingerprint {
        return None;
    }
    for (output, name) in manifest.outputs.all() {
        let (sha256, size) = hash_file(&dir.join(name)).ok()?;
        if output.file != name || output.sha256 != sha256 || output.size_bytes != size {
            tracing::debug!(file = name, "image output changed on disk; rebuilding");
            return None;
        }
    }
    Some(manifest)
}

fn remove_manifest(dir: &Path) -> Result<(), ImageError> {
    let path = dir.join(MANIFEST_FILE);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ImageError::Write { path, source }),
    }
}

/// Writes `dir/name` through a temporary file in `dir` and a rename.
pub(crate) fn write_atomic(
    dir: &Path,
    name: &'static str,
    data: &[u8],
) -> Result<OutputFile, ImageError> {
    let path = dir.join(name);
    let err = |source| ImageError::Write {
        path: path.clone(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".brood-image-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(data).map_err(err)?;
    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(err)?;
    file.sync_all().map_err(err)?;
    tmp.persist(&path).map_err(|e| err(e.error))?;
    Ok(OutputFile {
        file: name.to_string(),
        sha256: sha256_hex(data),
        size_bytes: data.len() as u64,
    })
}

/// Makes the renames durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ImageError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, ImageError> {
    let bytes = read(path)?;
    String::from_utf8(bytes).map_err(|e| ImageError::Read {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}
