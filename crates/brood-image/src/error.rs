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
}
