//! Builds brood's default guest image from Debian packages installed on the
//! host: the kernel of `linux-image-cloud-amd64`, the virtio modules it needs,
//! `busybox-static` and the brood-agent binary, as a kernel file plus an
//! uncompressed newc initramfs.
//!
//! ```text
//! <out_dir>/vmlinuz        copy of /boot/vmlinuz-<release>
//! <out_dir>/initrd.img     newc cpio, uncompressed (faster to unpack under TCG)
//! <out_dir>/manifest.json  inputs, module load order, fingerprint, output hashes
//! ```
//!
//! The initramfs layout is drawn in [`layout`]'s module docs. The build is
//! reproducible: the same inputs give byte-identical outputs, and a build
//! whose inputs are unchanged writes nothing. This crate owns the image
//! format only; rendering progress is the CLI's job, and what the agent does
//! with the files at boot is the agent's.
//!
//! Host requirements: `dpkg-query`, the two packages, and `xz`/`zstd`/`gzip`
//! only if the kernel package ships compressed modules.

#![warn(missing_docs)]

mod build;
mod cpio;
mod elf;
mod error;
pub mod layout;
mod manifest;
mod module;
mod package;

pub use build::{BuildOptions, Progress, build, default_modules};
pub use error::ImageError;
pub use manifest::{
    AgentInfo, KernelInfo, Manifest, ModuleInfo, OutputFile, Outputs, PackageInfo, ServicesInfo,
    read_manifest,
};
pub use package::{BUSYBOX_PACKAGE, KERNEL_METAPACKAGE};

/// Version of the image layout and manifest. Part of the fingerprint, so
/// changing it rebuilds every image: bump it with any change to what the
/// builder writes for the same inputs.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name in the image directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The kernel's file name in the image directory.
pub const KERNEL_FILE: &str = "vmlinuz";
/// The initramfs's file name in the image directory.
pub const INITRD_FILE: &str = "initrd.img";
