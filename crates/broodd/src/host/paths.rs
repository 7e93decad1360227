//! `Paths`: where broodd keeps things on disk. Pure path arithmetic; who
//! creates each file (and with which mode) is up to its owner.

use std::path::PathBuf;

use uuid::Uuid;

/// Where broodd keeps things.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The data directory.
    pub data: PathBuf,
    /// The guest image (vmlinuz, initrd.img).
    pub image: PathBuf,
    /// Template directories (memory file, device state): a tmpfs, beside
    /// the run root.
    pub templates: PathBuf,
}

impl Paths {
    /// The ledger database.
    pub fn ledger(&self) -> PathBuf {
        self.data.join("ledger.db")
    }
    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.data.join(brood_api::SOCKET_FILE)
    }
    /// The bearer token.
    pub fn token(&self) -> PathBuf {
        self.data.join(brood_api::TOKEN_FILE)
    }
    /// The lock that keeps a second broodd off this data directory.
    pub fn lock(&self) -> PathBuf {
        self.data.join(brood_api::LOCK_FILE)
    }
    /// A partition's disk directory.
    pub fn disk_dir(&self, uuid: Uuid) -> PathBuf {
        self.data.join("disks").join(uuid.to_string())
    }
    /// A partition's disk.
    pub fn disk(&self, uuid: Uuid, name: &str) -> PathBuf {
        self.disk_dir(uuid).join(format!("{name}.qcow2"))
    }
    /// A partition's saved state.
    pub fn saved_state(&self, uuid: Uuid) -> PathBuf {
        self.data.join("saves").join(format!("{uuid}.state"))
    }
    /// Where a partition's console log is kept after its VM ends.
    pub fn console_log(&self, uuid: Uuid) -> PathBuf {
        self.data.join("logs").join(format!("{uuid}.console.log"))
    }
    /// A template's directory.
    pub fn template_dir(&self, uuid: Uuid) -> PathBuf {
        self.templates.join(uuid.to_string())
    }
    /// The kernel of the guest image.
    pub fn kernel(&self) -> PathBuf {
        self.image.join("vmlinuz")
    }
    /// The initramfs of the guest image.
    pub fn initrd(&self) -> PathBuf {
        self.image.join("initrd.img")
    }
    /// The named images (`brood image build --name`), one directory each.
    pub fn images(&self) -> PathBuf {
        self.data.join("images")
    }
    /// A partition's overlay of its image's root disk. `.` cannot be in a
    /// disk name, so no configured disk has this file.
    pub fn image_root(&self, uuid: Uuid) -> PathBuf {
        self.disk(uuid, "image.root")
    }
    /// The hard link to the image's root disk that a partition's overlay
    /// backs onto.
    pub fn image_base(&self, uuid: Uuid) -> PathBuf {
        self.disk(uuid, "image.base")
    }
    /// A partition's hard link to its image's kernel.
    pub fn image_kernel(&self, uuid: Uuid) -> PathBuf {
        self.disk_dir(uuid).join("image.vmlinuz")
    }
    /// A partition's hard link to its image's initramfs.
    pub fn image_initrd(&self, uuid: Uuid) -> PathBuf {
        self.disk_dir(uuid).join("image.initrd.img")
    }
}
