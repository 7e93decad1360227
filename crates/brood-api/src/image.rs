//! Guest images in broodd's data directory (`DATA_DIR/images/NAME`), and
//! an image build run by broodd as a job.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an image's root file system is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageRootfs {
    /// The busybox initramfs (no root disk): the fast default.
    #[default]
    Busybox,
    /// A Debian root file system on a qcow2 root disk, built with mmdebstrap.
    Debian,
}

/// Body of `POST /v1/images`: what `brood image build` takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageBuildRequest {
    /// Image name, 1-64 characters of `[a-z0-9_.-]` starting with a
    /// letter or digit (`default` is the busybox image VMs boot unless
    /// they name another). With `service`, leave it out (`service`).
    #[schema(max_length = 64, pattern = "^[a-z0-9][a-z0-9_.-]*$")]
    pub name: Option<String>,
    /// Its root file system.
    #[serde(default)]
    pub rootfs: ImageRootfs,
    /// The service image: a Debian image named `service` with the packages
    /// of the shipped service classes, plus `packages`.
    #[serde(default)]
    pub service: bool,
    /// Debian suite (Debian only; default `bookworm`).
    #[schema(max_length = 64)]
    pub suite: Option<String>,
    /// Debian packages to install (Debian only), at most 256.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub packages: Vec<String>,
    /// Root disk size in GiB (Debian only; default 2).
    #[schema(minimum = 1, maximum = 1024)]
    pub size_gib: Option<u64>,
    /// Debian mirror URL (Debian only; default: the host's apt mirror).
    #[schema(max_length = 1024)]
    pub mirror: Option<String>,
    /// Extra kernel modules for the initramfs, with their dependencies.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub modules: Vec<String>,
    /// Rebuild even if the image is up to date.
    #[serde(default)]
    pub force: bool,
}

/// An image in the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// Its name.
    pub name: String,
    /// Its root file system.
    pub rootfs: ImageRootfs,
    /// The fingerprint of its inputs (a rebuild with the same inputs is skipped).
    pub fingerprint: String,
    /// The guest kernel's release.
    pub kernel: String,
    /// Debian: the suite.
    pub suite: Option<String>,
    /// Debian: the packages asked for.
    pub packages: Vec<String>,
    /// Debian: the root disk's size, GiB.
    pub size_gib: Option<u64>,
    /// Debian: the image's init (`brood-agent` or `systemd`).
    pub init: Option<String>,
}

/// The images of the data directory, by name; one whose manifest cannot be
/// read is in `unreadable` with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    /// Readable images.
    pub items: Vec<Image>,
    /// Image directories whose manifest could not be read: name and why.
    pub unreadable: Vec<UnreadableImage>,
}

/// An image directory whose manifest could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnreadableImage {
    /// The directory's name.
    pub name: String,
    /// Why it cannot be read.
    pub error: String,
}
