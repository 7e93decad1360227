//! Builds brood's guest images from Debian packages. The default image
//! ([`build`]) comes from packages installed on the host: the kernel of
//! `linux-image-cloud-amd64`, the virtio modules it needs, `busybox-static`
//! and the brood-agent binary, as a kernel file plus an uncompressed newc
//! initramfs. A Debian image ([`build_debian`], module `debian`) adds a
//! qcow2 root disk built with mmdebstrap from any Debian packages; named
//! images live in an images directory ([`list_images`], [`delete_image`]).
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
//! only if the kernel package ships compressed modules; for Debian images
//! also `mmdebstrap`, `mkfs.ext4` (e2fsprogs), `qemu-img`, root and a
//! reachable Debian mirror.
//!
//! ```text
//! <images>/default/            the busybox image (build)
//! <images>/<name>/root.qcow2   a Debian image's root disk (build_debian)
//! ```

#![warn(missing_docs)]

mod agent;
mod build;
mod cpio;
mod debian;
mod elf;
mod error;
pub mod layout;
mod manifest;
mod mmdebstrap;
mod module;
mod mounts;
mod package;
mod plan;
mod store;

pub use agent::find_agent;
pub use build::{BuildOptions, Progress, build, default_modules};
pub use debian::{
    BASE_PACKAGES, DEFAULT_SIZE_GIB, DEFAULT_SUITE, DebianOptions, DebianProgress, MAX_SIZE_GIB,
    ROOT_DEVICE, SERVICE_IMAGE, SERVICE_PACKAGES, VARIANT, build_debian,
};
pub use error::ImageError;
pub use manifest::{
    AgentInfo, KernelInfo, Manifest, ModuleInfo, OutputFile, Outputs, PackageInfo, RootfsInfo,
    ServicesInfo, read_manifest,
};
pub use package::{BUSYBOX_PACKAGE, KERNEL_METAPACKAGE};
pub use plan::{BuildPlan, BuildRequest};
pub use store::{
    DEFAULT_IMAGE, ImageEntry, delete_image, image_dir, list_images, open_image, sweep_leftovers,
    validate_name,
};

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
/// The root disk's file name in a Debian image's directory (qcow2).
pub const ROOT_DISK_FILE: &str = "root.qcow2";
