//! Disk images users already have: `brood vm create --disk-image FILE`
//! (define with a `boot_disk`, import, start) and `brood vm disk import`
//! (replace a stopped VM's boot disk). The file is streamed to broodd
//! (`PUT /v1/partitions/{name}/boot-disk`), which imports a copy; it is
//! never written, and its format is the one given, never probed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use brood_api::attach::OCTET_STREAM;
use brood_api::{BootDiskConfig, BootDiskImported, ImageFormat};
use clap::Args;
use http_body_util::BodyExt;
use hyper::Method;
use hyper::header::CONTENT_TYPE;
use std::io::IsTerminal as _;
use std::io::Read as _;

use crate::client::{Client, decode_error, encode};
use crate::cp::ReadBody;

/// One GiB.
const GIB: u64 = 1 << 30;
/// Most bytes of a user-data file (broodd's limit too).
const MAX_USER_DATA: u64 = 65536;

/// The flags of `vm create` and `vm define` that boot a disk image.
#[derive(Debug, Default, Args)]
pub struct DiskImageArgs {
    /// Boot this disk image (a Debian or Ubuntu cloud image, qcow2 or raw)
    /// instead of a brood image: broodd imports a copy as /dev/vda, boots
    /// brood's kernel with its ext4 root file system and runs its own init
    /// (systemd), with cloud-init finding a NoCloud seed.
    #[arg(long, value_name = "FILE", conflicts_with = "image")]
    pub disk_image: Option<PathBuf>,
    /// The image's format, given, never probed (cloud images named .img
    /// are qcow2 too).
    #[arg(long, value_name = "qcow2|raw", default_value = "qcow2", value_parser = parse_format, requires = "disk_image")]
    pub disk_format: ImageFormat,
    /// The boot disk's size (8G; a plain number is GiB) [default: the
    /// image's virtual size]: a larger one is grown (cloud-init grows the
    /// root partition).
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_gib, requires = "disk_image")]
    pub disk_size: Option<u64>,
    /// cloud-init user-data for the guest (`#cloud-config ...`), at most
    /// 64 KiB, on its NoCloud seed disk.
    #[arg(long, value_name = "FILE", requires = "disk_image")]
    pub user_data: Option<PathBuf>,
    /// Boot the image as it is, without brood's agent as a systemd unit:
    /// `vm exec`, `vm cp` and a graceful stop then need ssh (or an agent
    /// the image has); `vm stop` falls back to killing it.
    #[arg(long, requires = "disk_image")]
    pub no_agent: bool,
}

/// Parses `--disk-format`.
pub fn parse_format(s: &str) -> Result<ImageFormat, String> {
    s.parse()
}

/// The virtual size in bytes of an image of the format given: a raw
/// file's length, or a qcow2 header's size field (bytes 24..32).
pub fn virtual_bytes(path: &Path, format: ImageFormat) -> Result<u64> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    match format {
        ImageFormat::Raw => Ok(f.metadata()?.len()),
        ImageFormat::Qcow2 => {
            let mut head = [0u8; 32];
            if f.read_exact(&mut head).is_err() || head.get(..4) != Some(b"QFI\xfb".as_slice()) {
                bail!(
                    "{} is not a qcow2 image: give its format (--disk-format raw)",
                    path.display()
                );
            }
            let size: [u8; 8] = head
                .get(24..32)
                .and_then(|s| s.try_into().ok())
                .unwrap_or_default();
            Ok(u64::from_be_bytes(size))
        }
    }
}

/// The boot disk configuration the flags describe.
pub fn config(args: &DiskImageArgs) -> Result<Option<BootDiskConfig>> {
    let Some(file) = &args.disk_image else {
        return Ok(None);
    };
    let meta =
        std::fs::metadata(file).with_context(|| format!("--disk-image {}", file.display()))?;
    if !meta.is_file() {
        bail!("--disk-image {} is not a regular file", file.display());
    }
    let image_gib = virtual_bytes(file, args.disk_format)?.div_ceil(GIB).max(1);
    let size_gib = match args.disk_size {
        Some(s) if s < image_gib => bail!(
            "--disk-size {s}G is smaller than the image's virtual size ({image_gib} GiB): give at least {image_gib}G"
        ),
        Some(s) => s,
        None => image_gib,
    };
    let user_data = match &args.user_data {
        None => None,
        Some(p) => {
            let len = std::fs::metadata(p)
                .with_context(|| format!("--user-data {}", p.display()))?
                .len();
            if len > MAX_USER_DATA {
                bail!(
                    "--user-data {} is {len} bytes: cloud-init user-data is at most {MAX_USER_DATA}",
                    p.display()
                );
            }
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--user-data {} (it must be UTF-8 text)", p.display()))?;
            Some(text)
        }
    };
    Ok(Some(BootDiskConfig {
        size_gib,
        agent: !args.no_agent,
        user_data,
    }))
}

/// Streams `file` to partition `vm`'s boot disk; says so on a terminal.
pub async fn upload(
    client: &Client,
    vm: &str,
    file: &Path,
    format: ImageFormat,
) -> Result<BootDiskImported> {
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("open {}", file.display()))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    if std::io::stderr().is_terminal() {
        eprintln!(
            "importing {} ({} MiB, {}) as {vm}'s boot disk...",
            file.display(),
            len.div_ceil(1 << 20),
            format.as_str()
        );
    }
    let body = ReadBody {
        reader: Box::new(f),
        buf: vec![0u8; 1 << 20].into_boxed_slice(),
        counted: Default::default(),
    };
    let uri = format!(
        "/v1/partitions/{}/boot-disk?format={}",
        encode(vm),
        format.as_str()
    );
    let req = client
        .builder(Method::PUT, &uri)
        .header(CONTENT_TYPE, OCTET_STREAM)
        .body(body)
        .context("build the request")?;
    let what = format!("import {} as {vm}'s boot disk", file.display());
    let resp = client.one_shot(req).await?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if !status.is_success() {
        return Err(decode_error(&what, status, &bytes).into());
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{what}: broodd's answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_come_from_the_format_given() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, vec![0u8; 3 << 20]).unwrap();
        assert_eq!(virtual_bytes(&raw, ImageFormat::Raw).unwrap(), 3 << 20);
        // A raw file is not read as qcow2 because its name says so.
        let err = virtual_bytes(&raw, ImageFormat::Qcow2).unwrap_err();
        assert!(err.to_string().contains("--disk-format raw"), "{err}");
        let mut head = b"QFI\xfb".to_vec();
        head.resize(24, 0);
        head.extend_from_slice(&(5u64 << 30).to_be_bytes());
        let q = dir.path().join("disk.img");
        std::fs::write(&q, &head).unwrap();
        assert_eq!(virtual_bytes(&q, ImageFormat::Qcow2).unwrap(), 5 << 30);
        let args = DiskImageArgs {
            disk_image: Some(q.clone()),
            disk_format: ImageFormat::Qcow2,
            disk_size: Some(4),
            ..Default::default()
        };
        assert!(
            config(&args)
                .unwrap_err()
                .to_string()
                .contains("at least 5G")
        );
        let args = DiskImageArgs {
            disk_size: None,
            no_agent: true,
            ..args
        };
        let c = config(&args).unwrap().unwrap();
        assert_eq!((c.size_gib, c.agent, c.user_data), (5, false, None));
        assert!(parse_format("vmdk").unwrap_err().contains("qcow2 or raw"));
    }
}
