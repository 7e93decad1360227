//! The root disk in the ledger: a partition booted from an image with a
//! root disk (a Debian image) holds a qcow2 overlay of it, and that
//! overlay is charged to its disk demand like any disk it has.
//!
//! It is charged its virtual size, rounded up to whole GiB, not the bytes
//! it has allocated: the guest can write until the overlay holds its whole
//! virtual size (the ext4 file system spans it), so charging what is
//! allocated today would charge less than the VM can use tomorrow, which
//! the ledger never does (DESIGN.md, "Partitions and the ledger"); the
//! configured disks are charged their size for the same reason. The size
//! is read from the qcow2 header (bytes 24..32, big-endian; QEMU's
//! `docs/interop/qcow2.txt`) of the partition's own overlay once it
//! exists, else of the image's root disk it will be made from (an overlay
//! made without a size has its backing file's): a header broodd or
//! `brood image build` wrote, never the guest, whose writes land in data
//! clusters. A forked child's overlay is over its template's root disk,
//! so it is charged the same.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use brood_api as api;
use brood_ledger::Resources;
use uuid::Uuid;

use super::error::{HostError, HostResult};
use super::paths::Paths;

/// One GiB.
const GIB: u64 = 1 << 30;

/// The virtual size in bytes of the qcow2 image at `path`.
pub fn qcow2_virtual_size(path: &Path) -> HostResult<u64> {
    let mut head = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| HostError::io(format!("read the header of {}", path.display()), e))?;
    parse_header(&head)
        .ok_or_else(|| HostError::invalid(format!("{} is not a qcow2 image", path.display())))
}

fn parse_header(head: &[u8; 32]) -> Option<u64> {
    let (magic, rest) = head.split_first_chunk::<4>()?;
    if magic != b"QFI\xfb" {
        return None;
    }
    let size: [u8; 8] = rest.get(20..28)?.try_into().ok()?;
    Some(u64::from_be_bytes(size))
}

/// The GiB partition `uuid`'s root disk is charged: 0 without an image
/// root disk.
pub fn root_gib(
    paths: &Paths,
    uuid: Uuid,
    configs: &BTreeMap<String, api::PartitionConfig>,
) -> HostResult<u64> {
    // An imported boot disk is its configured size (the import grows it to that).
    if let Some(boot) = super::boot_disk::of(configs) {
        return Ok(boot.size_gib);
    }
    let Some(name) = configs.values().find_map(|c| c.image.clone()) else {
        return Ok(0);
    };
    let own = paths.image_root(uuid);
    let file = if own.is_file() {
        own
    } else {
        // Its own links first: a partition of a busybox image (no root
        // disk) still starts after the image is deleted.
        match super::image::for_partition(paths, uuid, Some(&name))?.root_disk {
            Some(base) => base,
            None => return Ok(0),
        }
    };
    Ok(qcow2_virtual_size(&file)?.div_ceil(GIB))
}

/// `demand` with partition `uuid`'s root disk added to its disk space.
pub fn with_root(
    paths: &Paths,
    uuid: Uuid,
    configs: &BTreeMap<String, api::PartitionConfig>,
    demand: Resources,
) -> HostResult<Resources> {
    let root = root_gib(paths, uuid, configs)?;
    Ok(Resources {
        disk_gib: demand.disk_gib.saturating_add(root),
        ..demand
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_comes_from_a_qcow2_header_only() {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[24..32].copy_from_slice(&(3 * GIB + 1).to_be_bytes());
        assert_eq!(parse_header(&h), Some(3 * GIB + 1));
        assert_eq!(parse_header(&h).map(|s| s.div_ceil(GIB)), Some(4));
        h[0] = b'X';
        assert_eq!(parse_header(&h), None);
    }

    #[test]
    fn a_real_overlay_reads_its_backing_files_size() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("b.qcow2");
        let top = d.path().join("t.qcow2");
        let ok = |args: &[&std::ffi::OsStr]| {
            let o = std::process::Command::new("qemu-img")
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        ok(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            base.as_os_str(),
            "2G".as_ref(),
        ]);
        ok(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            base.as_os_str(),
            top.as_os_str(),
        ]);
        assert_eq!(qcow2_virtual_size(&top).unwrap(), 2 * GIB);
        let e = qcow2_virtual_size(&d.path().join("none")).unwrap_err();
        assert!(e.to_string().contains("none"), "{e}");
    }
}
