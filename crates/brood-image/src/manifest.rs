//! `manifest.json`: what an image was built from and what it contains, plus
//! the input fingerprint that decides whether a rebuild is needed.
//!
//! The manifest is written last, so its presence means the outputs next to it
//! are complete. It holds no timestamps or host paths: the same inputs give
//! the same bytes.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{FORMAT_VERSION, INITRD_FILE, ImageError, KERNEL_FILE, MANIFEST_FILE, ROOT_DISK_FILE};

/// What an image was built from and what it contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the builder that wrote it.
    pub format_version: u32,
    /// Hex sha256 over every input; equal fingerprints mean equal outputs.
    pub fingerprint: String,
    /// The kernel package.
    pub kernel: KernelInfo,
    /// The busybox package.
    pub busybox: PackageInfo,
    /// The agent binary.
    pub agent: AgentInfo,
    /// The modules in the initramfs, in load order.
    pub modules: Vec<ModuleInfo>,
    /// Requested modules that are built into the kernel, so not loaded.
    pub builtin_modules: Vec<String>,
    /// The service scripts, by name.
    pub services: ServicesInfo,
    /// The files written next to the manifest.
    pub outputs: Outputs,
    /// The Debian root file system, for images that have one (absent in
    /// the default busybox image, whose manifest is unchanged by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootfsInfo>,
}

/// What a Debian root file system was built from and holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsInfo {
    /// The image's name.
    pub name: String,
    /// The Debian suite (`bookworm`).
    pub suite: String,
    /// The mirror the packages came from.
    pub mirror: String,
    /// mmdebstrap's variant (`minbase`).
    pub variant: String,
    /// The root disk's size in GiB (the ext4 file system's size).
    pub size_gib: u64,
    /// The packages asked for with `--package`, sorted.
    pub requested: Vec<String>,
    /// Every package installed in the root file system, sorted by name,
    /// as `dpkg-query` in the root file system reports it.
    pub packages: Vec<PackageInfo>,
    /// What runs as PID 1 on the root disk: `brood-agent`.
    pub init: String,
}

/// The kernel the image boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    /// The metapackage followed, `linux-image-cloud-amd64`.
    pub metapackage: String,
    /// The metapackage's version.
    pub metapackage_version: String,
    /// The versioned package it named, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// That package's version, e.g. `6.1.192-2`.
    pub version: String,
    /// The kernel release (`uname -r` in the guest).
    pub release: String,
}

/// A Debian package and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageInfo {
    /// The package name.
    pub package: String,
    /// Its version.
    pub version: String,
}

/// The agent binary, identified by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    /// Hex sha256 of the binary.
    pub sha256: String,
    /// Its size.
    pub size_bytes: u64,
}

/// One kernel module in the initramfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleInfo {
    /// The module name as the kernel reports it (`virtio_rng`).
    pub name: String,
    /// Its absolute path inside the initramfs.
    pub path: String,
}

/// The service scripts in the image, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesInfo {
    /// Scripts in `/etc/brood/services/independent/`.
    pub independent: Vec<String>,
    /// Scripts in `/etc/brood/services/dependent/`.
    pub dependent: Vec<String>,
}

/// The files of a built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// The kernel, [`KERNEL_FILE`].
    pub kernel: OutputFile,
    /// The initramfs, [`INITRD_FILE`].
    pub initrd: OutputFile,
    /// The root disk, [`ROOT_DISK_FILE`] (qcow2), for images with a root
    /// file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk: Option<OutputFile>,
}

impl Outputs {
    /// Every output with the file name it must have.
    pub fn all(&self) -> Vec<(&OutputFile, &'static str)> {
        let mut v = vec![(&self.kernel, KERNEL_FILE), (&self.initrd, INITRD_FILE)];
        if let Some(root) = &self.root_disk {
            v.push((root, ROOT_DISK_FILE));
        }
        v
    }
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    /// Its file name in the image directory.
    pub file: String,
    /// Hex sha256 of its contents.
    pub sha256: String,
    /// Its size.
    pub size_bytes: u64,
}

impl OutputFile {
    /// Its path in the image directory `dir`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(&self.file)
    }
}

/// Reads `dir/manifest.json` and checks that it is of this [`FORMAT_VERSION`]
/// and that the outputs it names exist with their recorded sizes (contents
/// are not hashed; [`crate::build`] does that).
pub fn read_manifest(dir: &Path) -> Result<Manifest, ImageError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(source) if source.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::NoImage {
                dir: dir.to_path_buf(),
            });
        }
        Err(source) => return Err(ImageError::Read { path, source }),
    };
    let manifest = parse(&path, &text)?;
    for (output, name) in manifest.outputs.all() {
        let output_path = dir.join(name);
        let damaged = |reason: String| ImageError::OutputDamaged {
            path: output_path.clone(),
            reason,
        };
        if output.file != name {
            return Err(damaged(format!("the manifest names it {:?}", output.file)));
        }
        let len = fs::metadata(&output_path)
            .map_err(|e| damaged(format!("cannot stat it: {e}")))?
            .len();
        if len != output.size_bytes {
            return Err(damaged(format!(
                "{len} bytes, the manifest says {}",
                output.size_bytes
            )));
        }
    }
    Ok(manifest)
}

/// Parses manifest text, checking the format version before the shape so an
/// older or newer manifest gets a version error rather than a parse error.
pub(crate) fn parse(path: &Path, text: &[u8]) -> Result<Manifest, ImageError> {
    let parse_err = |source| ImageError::ManifestParse {
        path: path.to_path_buf(),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(text).map_err(parse_err)?;
    let found = value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u32::try_from(v).ok());
    if let Some(found) = found.filter(|v| *v != FORMAT_VERSION) {
        return Err(ImageError::ManifestVersion {
            path: path.to_path_buf(),
            found,
            expected: FORMAT_VERSION,
        });
    }
    serde_json::from_value(value).map_err(parse_err)
}

/// Encodes a manifest as pretty JSON with a final newline.
pub(crate) fn encode(path: &Path, manifest: &Manifest) -> Result<Vec<u8>, ImageError> {
    let mut out =
        serde_json::to_vec_pretty(manifest).map_err(|source| ImageError::ManifestEncode {
            path: path.to_path_buf(),
            source,
        })?;
    out.push(b'\n');
    Ok(out)
}

/// Hex sha256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Hex sha256 and size of a file, read in chunks.
pub(crate) fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or(&[]));
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// The input fingerprint: a sha256 over tagged, length-prefixed fields, so
/// that no two different input sets can produce the same byte stream.
#[derive(Debug, Default)]
pub(crate) struct Fingerprint {
    hasher: Sha256,
}

impl Fingerprint {
    /// Starts a fingerprint with the format version.
    pub fn new() -> Self {
        let mut fp = Fingerprint::default();
        fp.field("format_version", &FORMAT_VERSION.to_le_bytes());
        fp
    }

    /// Adds one named field.
    pub fn field(&mut self, tag: &str, value: &[u8]) {
        for part in [tag.as_bytes(), value] {
            self.hasher.update((part.len() as u64).to_le_bytes());
            self.hasher.update(part);
        }
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let out = |file: &str, size| OutputFile {
            file: file.to_string(),
            sha256: "00".repeat(32),
            size_bytes: size,
        };
        Manifest {
            format_version: FORMAT_VERSION,
            fingerprint: "ab".repeat(32),
            kernel: KernelInfo {
                metapackage: "linux-image-cloud-amd64".into(),
                metapackage_version: "1".into(),
                package: "linux-image-r".into(),
                version: "2".into(),
                release: "r".into(),
            },
            busybox: PackageInfo {
                package: "busybox-static".into(),
                version: "3".into(),
            },
            agent: AgentInfo {
                sha256: "cd".repeat(32),
                size_bytes: 9,
            },
            modules: vec![ModuleInfo {
                name: "virtio".into(),
                path: "/lib/modules/r/virtio.ko".into(),
            }],
            builtin_modules: vec![],
            services: ServicesInfo {
                independent: vec!["a".into()],
                dependent: vec![],
            },
            outputs: Outputs {
                kernel: out(KERNEL_FILE, 3),
                initrd: out(INITRD_FILE, 4),
                root_disk: None,
            },
            rootfs: None,
        }
    }

    #[test]
    fn read_manifest_round_trips_and_checks_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_manifest(dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::NoImage { .. }), "{err:?}");
        assert!(err.to_string().contains("brood image build"), "{err}");

        let path = dir.path().join(MANIFEST_FILE);
        fs::write(&path, encode(&path, &sample()).unwrap()).unwrap();
        let err = read_manifest(dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::OutputDamaged { .. }), "{err:?}");

        fs::write(dir.path().join(KERNEL_FILE), b"abc").unwrap();
        fs::write(dir.path().join(INITRD_FILE), b"abcd").unwrap();
        assert_eq!(read_manifest(dir.path()).unwrap(), sample());

        fs::write(dir.path().join(INITRD_FILE), b"abcde").unwrap();
        assert!(matches!(
            read_manifest(dir.path()),
            Err(ImageError::OutputDamaged { .. })
        ));
    }

    #[test]
    fn other_format_versions_and_garbage_are_clear_errors() {
        let p = Path::new("/i/manifest.json");
        let err = parse(p, br#"{"format_version": 99, "whatever": true}"#).unwrap_err();
        assert!(
            matches!(err, ImageError::ManifestVersion { found: 99, .. }),
            "{err:?}"
        );
        for text in [&b"not json"[..], b"{}", b"[]", br#"{"format_version": 1}"#] {
            assert!(matches!(
                parse(p, text),
                Err(ImageError::ManifestParse { .. })
            ));
        }
    }

    #[test]
    fn fingerprint_fields_are_unambiguous() {
        let fp = |fields: &[(&str, &[u8])]| {
            let mut f = Fingerprint::new();
            for (t, v) in fields {
                f.field(t, v);
            }
            f.finish()
        };
        assert_eq!(fp(&[("a", b"bc")]), fp(&[("a", b"bc")]));
        assert_ne!(fp(&[("a", b"bc")]), fp(&[("ab", b"c")]));
        assert_ne!(
            fp(&[("a", b""), ("b", b"")]),
            fp(&[("a", b"\x01\0\0\0\0\0\0\0b")])
        );
    }
}
