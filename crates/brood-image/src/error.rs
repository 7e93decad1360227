//! [`ImageError`], the one error type of this crate.
//!
//! Every message says what failed and, where the user can act, what to do
//! (which package to install, how to build the agent). Messages never repeat
//! their `#[source]`; callers print the chain.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Errors of building or reading a guest image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// `dpkg-query` could not be run at all.
    #[error("run dpkg-query {args}: brood image build needs a Debian host with dpkg")]
    DpkgSpawn {
        /// The arguments passed to dpkg-query.
        args: String,
        /// Why it could not be started.
        #[source]
        source: io::Error,
    },
    /// `dpkg-query` ran but failed for a reason other than a missing package.
    #[error("dpkg-query {args} exited with {status}: {stderr}")]
    DpkgFailed {
        /// The arguments passed to dpkg-query.
        args: String,
        /// Its exit status.
        status: ExitStatus,
        /// The first line of what it wrote to stderr.
        stderr: String,
    },
    /// A package the image is built from is not installed.
    #[error("package {package} is not installed; run `apt-get install -y {package}`")]
    PackageMissing {
        /// The package name.
        package: String,
    },
    /// The kernel metapackage names no installed `linux-image-*` package.
    #[error(
        "{metapackage} depends on no installed linux-image package (Depends: {depends:?}); \
         run `apt-get install -y --fix-broken {metapackage}`"
    )]
    NoKernelPackage {
        /// The metapackage, `linux-image-cloud-amd64`.
        metapackage: String,
        /// Its `Depends` field as dpkg-query printed it.
        depends: String,
    },
    /// An installed package lacks the file the image needs from it.
    #[error(
        "package {package} ships no {what}; reinstall it with `apt-get install -y --reinstall {package}`"
    )]
    PackageFileMissing {
        /// The package name.
        package: String,
        /// The file looked for, e.g. `/boot/vmlinuz-*`.
        what: String,
    },
    /// The kernel file is not a bzImage.
    #[error("{path} is not a Linux bzImage (no HdrS header); reinstall {package}")]
    NotBzImage {
        /// The kernel file.
        path: PathBuf,
        /// The package that ships it.
        package: String,
    },
    /// A file could not be read.
    #[error("read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// A file or directory in the output directory could not be written.
    #[error("write {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// A line of `modules.dep` is malformed.
    #[error("{path}:{line}: {reason}; regenerate it with `depmod`")]
    ModulesDep {
        /// The modules.dep file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A requested module is neither in `modules.dep` nor built into the kernel.
    #[error(
        "kernel module {module} is not in {path} nor built into kernel {release}; \
         check the name (`-` and `_` are the same)"
    )]
    ModuleNotFound {
        /// The requested name.
        module: String,
        /// The kernel release.
        release: String,
        /// The modules.dep file searched.
        path: PathBuf,
    },
    /// A module depends on a module that `modules.dep` does not list.
    #[error(
        "kernel module {module} depends on {dependency}, which modules.dep does not list; regenerate it with `depmod`"
    )]
    ModuleDependencyMissing {
        /// The module that has the dependency.
        module: String,
        /// The missing dependency's path as written in modules.dep.
        dependency: String,
    },
    /// The dependencies of the requested modules form a cycle.
    #[error(
        "kernel module dependencies form a cycle, so these cannot be ordered: {modules}; \
         regenerate modules.dep with `depmod`"
    )]
    ModuleCycle {
        /// The modules on or behind the cycle, comma-separated.
        modules: String,
    },
    /// The program that decompresses a module is not installed.
    #[error("decompress {path}: {program} is not installed; run `apt-get install -y {package}`")]
    DecompressorMissing {
        /// The compressed module.
        path: PathBuf,
        /// The program, e.g. `zstd`.
        program: &'static str,
        /// The package that provides it.
        package: &'static str,
    },
    /// The decompressor could not be started for a reason other than absence.
    #[error("run {program} to decompress {path}")]
    DecompressorSpawn {
        /// The compressed module.
        path: PathBuf,
        /// The program.
        program: &'static str,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// The decompressor failed.
    #[error("{program} -dc {path} exited with {status}: {stderr}")]
    Decompress {
        /// The compressed module.
        path: PathBuf,
        /// The program.
        program: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// The first line of what it wrote to stderr.
        stderr: String,
    },
    /// The agent binary could not be read.
    #[error("read agent binary {path}; build brood-agent first or pass its path")]
    AgentMissing {
        /// The path given.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// A binary that must be an ELF executable is not one.
    #[error(
        "{path} is not an ELF executable ({reason}); pass the path of a static x86-64 Linux binary"
    )]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A binary that must be static is dynamically linked.
    #[error(
        "{path} is dynamically linked (interpreter {interpreter:?}) but the guest has no libc; \
         build it with `RUSTFLAGS='-C target-feature=+crt-static' cargo build --target x86_64-unknown-linux-gnu`"
    )]
    DynamicallyLinked {
        /// The file.
        path: PathBuf,
        /// The PT_INTERP path it names.
        interpreter: String,
    },
    /// `busybox --list-full` could not be run.
    #[error("run {path} --list-full")]
    BusyboxSpawn {
        /// The busybox binary.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// `busybox --list-full` failed or printed something unusable.
    #[error("{path} --list-full: {reason}")]
    BusyboxList {
        /// The busybox binary.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A service script path is unusable.
    #[error("service script {path}: {reason}")]
    Service {
        /// The script.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Two service scripts share a file name.
    #[error("service scripts {first} and {second} share the name {name:?}; rename one")]
    DuplicateService {
        /// The shared name.
        name: String,
        /// The first script.
        first: PathBuf,
        /// The second script.
        second: PathBuf,
    },
    /// Two things were placed at the same path in the initramfs.
    #[error("initramfs path /{path} is used twice ({reason})")]
    LayoutConflict {
        /// The path inside the image.
        path: String,
        /// What collided.
        reason: String,
    },
    /// A file is too large for the newc cpio format (4 GiB).
    #[error("initramfs entry /{path} is {size} bytes, over the 4 GiB newc limit")]
    EntryTooLarge {
        /// The path inside the image.
        path: String,
        /// Its size.
        size: usize,
    },
    /// The manifest could not be encoded.
    #[error("encode {path}")]
    ManifestEncode {
        /// The manifest or image.json path.
        path: PathBuf,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// The directory holds no image (no manifest).
    #[error("no guest image in {dir}; build one with `brood image build`")]
    NoImage {
        /// The image directory.
        dir: PathBuf,
    },
    /// A manifest is not valid JSON of the expected shape.
    #[error("{path} is not a valid image manifest; rebuild with `brood image build --force`")]
    ManifestParse {
        /// The manifest.
        path: PathBuf,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest was written by another image format version.
    #[error(
        "{path} has image format {found}, this brood reads format {expected}; rebuild with `brood image build`"
    )]
    ManifestVersion {
        /// The manifest.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// [`crate::FORMAT_VERSION`].
        expected: u32,
    },
    /// An output named by the manifest is missing or has the wrong size.
    #[error("image file {path} is missing or damaged ({reason}); rebuild with `brood image build`")]
    OutputDamaged {
        /// The output file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An image name is not usable.
    #[error("image name {name:?} is not valid: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A Debian image build option is not usable.
    #[error("{what} {value:?} is not valid: {reason}")]
    InvalidOption {
        /// Which option (`--suite`, `--package`, `--size`, `--mirror`).
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// No image of that name.
    #[error(
        "no image named {name} in {dir}; `brood image list` shows the images, `brood image build --name {name} --rootfs debian` builds one"
    )]
    UnknownImage {
        /// The name asked for.
        name: String,
        /// The images directory.
        dir: PathBuf,
    },
    /// A host program the Debian build needs is not installed.
    #[error("{program} is not installed; run `apt-get install -y {package}` (or `scripts/setup`)")]
    ToolMissing {
        /// The program.
        program: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A host program could not be started.
    #[error("run {program}")]
    ToolSpawn {
        /// The program.
        program: &'static str,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// A host program failed.
    #[error("{program} exited with {status}: {detail}")]
    ToolFailed {
        /// The program.
        program: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines it wrote to stderr.
        detail: String,
    },
    /// Building a Debian root file system needs root.
    #[error(
        "building a Debian image needs root (mmdebstrap --mode=root and root-owned files in the root disk); run it with sudo"
    )]
    NeedRoot,
    /// The mirror has no such package for the suite.
    #[error(
        "package {package} is not in Debian {suite} at {mirror}; check the name with `apt-cache policy {package}`"
    )]
    UnknownPackage {
        /// The package.
        package: String,
        /// The suite.
        suite: String,
        /// The mirror.
        mirror: String,
    },
    /// The mirror has no such suite.
    #[error(
        "Debian suite {suite} does not exist at {mirror} (no Release file); use a suite such as bookworm or trixie"
    )]
    UnknownSuite {
        /// The suite.
        suite: String,
        /// The mirror.
        mirror: String,
    },
    /// The mirror could not be reached.
    #[error(
        "cannot reach the Debian mirror {mirror} ({detail}); check the network, or pass --mirror URL"
    )]
    MirrorUnreachable {
        /// The mirror.
        mirror: String,
        /// What apt reported.
        detail: String,
    },
    /// No mirror could be found in the host's apt sources.
    #[error(
        "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d; pass --mirror URL"
    )]
    NoMirror,
    /// The host's disk filled up during the build.
    #[error(
        "the disk holding {dir} is full; free space (a Debian image needs about 1 GiB while it builds) and build again"
    )]
    DiskFull {
        /// The images directory.
        dir: PathBuf,
    },
    /// The root file system does not fit the requested disk size.
    #[error(
        "the root file system needs {needed_mib} MiB but --size is {size_gib} GiB; pass --size {suggest_gib}"
    )]
    RootTooLarge {
        /// What it needs, with room for ext4's metadata.
        needed_mib: u64,
        /// The size asked for.
        size_gib: u64,
        /// A size that fits.
        suggest_gib: u64,
    },
    /// A package that was asked for is not in the built root file system.
    #[error("package {package} was asked for but is not installed in the root file system")]
    PackageNotInstalled {
        /// The package.
        package: String,
    },
    /// The brood-agent binary named (by a flag or `$BROOD_AGENT`) is not a file.
    #[error("brood-agent binary {path} does not exist ({from})")]
    AgentNotFile {
        /// The path given.
        path: PathBuf,
        /// Where it was given: a flag or the environment.
        from: &'static str,
    },
    /// No brood-agent binary was found where it is looked for.
    #[error(
        "brood-agent binary not found (looked in {looked}); build it with \
         `RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile release-agent \
         --target x86_64-unknown-linux-gnu -p brood-agent`, or pass --agent PATH"
    )]
    AgentNotFound {
        /// The places looked in.
        looked: String,
    },
    /// A build request that cannot be built as asked.
    #[error("{reason}")]
    InvalidRequest {
        /// What is wrong, and what to do.
        reason: String,
    },
}
