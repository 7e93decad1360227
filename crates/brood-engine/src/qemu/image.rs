//! What a disk image is made of, checked before QEMU sees it. A raw image
//! has no metadata to trust. A qcow2 image may name a backing file: with
//! [`DiskSpec::allow_backing`] off that is refused; on, the chain is read
//! with `qemu-img info --backing-chain -U` and every link must record its
//! backing file's format (a format QEMU would have to probe is exactly how
//! a guest-written header reaches a host file). The layers found become
//! explicit `-blockdev` nodes, each opened by brood and passed as a
//! descriptor, so QEMU itself never follows a name from an image.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::EngineError;
use crate::spec::{DiskFormat, DiskSpec};

/// Longest backing chain accepted (templates of templates of ...).
const MAX_CHAIN: usize = 32;
/// How long `qemu-img info` may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(30);

/// One image of a disk's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layer {
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
}

/// The images of disk `d`, top first.
pub(crate) async fn backing_chain(d: &DiskSpec) -> Result<Vec<Layer>, EngineError> {
    let top = Layer {
        path: d.path.clone(),
        format: d.format,
    };
    if d.format == DiskFormat::Raw {
        return Ok(vec![top]);
    }
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["info", "--output=json", "-U", "-f", d.format.as_str()]);
    if d.allow_backing {
        cmd.arg("--backing-chain");
    }
    cmd.arg(&d.path).kill_on_drop(true);
    let out = tokio::time::timeout(INFO_TIMEOUT, cmd.output())
        .await
        .map_err(|_| EngineError::Timeout {
            op: "qemu-img info",
            after: INFO_TIMEOUT,
        })?
        .map_err(|e| EngineError::host("run qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(EngineError::InvalidSpec(format!(
            "disk {} is not a usable {} image: {}",
            d.path.display(),
            d.format.as_str(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let info: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        EngineError::InvalidSpec(format!(
            "qemu-img info of {} is not JSON: {e}",
            d.path.display()
        ))
    })?;
    chain_from_info(d, &info)
}

/// The chain `qemu-img info` described (an object, or with
/// `--backing-chain` an array, top first).
fn chain_from_info(d: &DiskSpec, info: &Value) -> Result<Vec<Layer>, EngineError> {
    let bad = |m: String| Err(EngineError::InvalidSpec(m));
    let images: Vec<&Value> = match info {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    if images.len() > MAX_CHAIN {
        return bad(format!(
            "disk {} has a backing chain of {} images; at most {MAX_CHAIN} are allowed",
            d.path.display(),
            images.len()
        ));
    }
    let mut layers = Vec::with_capacity(images.len());
    for (i, img) in images.iter().enumerate() {
        let text = |k: &str| img.get(k).and_then(Value::as_str);
        let path = match i {
            0 => d.path.clone(),
            _ => PathBuf::from(text("filename").unwrap_or_default()),
        };
        let format = match text("format") {
            Some("raw") => DiskFormat::Raw,
            Some("qcow2") => DiskFormat::Qcow2,
            other => {
                return bad(format!(
                    "disk {}: image {} has format {other:?}; only raw and qcow2 are supported",
                    d.path.display(),
                    path.display()
                ));
            }
        };
        if i > 0 {
            // Only local files: a backing "file" may be a URL or a json: spec.
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                return bad(format!(
                    "disk {}: backing file {} is not a local file",
                    d.path.display(),
                    path.display()
                ));
            }
        }
        layers.push(Layer { path, format });
        let Some(backing) = text("backing-filename") else {
            if i + 1 < images.len() {
                return bad(format!("disk {}: odd qemu-img output", d.path.display()));
            }
            break;
        };
        if !d.allow_backing {
            return bad(format!(
                "disk {} is a qcow2 image with a backing file ({:?}); brood does not open the \
                 backing files of a given image: flatten it (`qemu-img convert -O qcow2 IN OUT`), \
                 or add `,backing=allow` if you trust it",
                d.path.display(),
                backing.chars().take(200).collect::<String>()
            ));
        }
        let Some(backing_format) = text("backing-filename-format") else {
            return bad(format!(
                "disk {}: image {} names its backing file {:?} without its format, which would \
                 have to be guessed: record it with `qemu-img rebase -u -F raw|qcow2 -b FILE IMAGE`",
                d.path.display(),
                layers
                    .last()
                    .map(|l| l.path.display().to_string())
                    .unwrap_or_default(),
                backing.chars().take(200).collect::<String>()
            ));
        };
        let next = images.get(i + 1).and_then(|n| n.get("format")?.as_str());
        if next != Some(backing_format) {
            return bad(format!(
                "disk {}: backing file {backing:?} is recorded as {backing_format} but reads as {next:?}",
                d.path.display()
            ));
        }
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qcow2(path: &str, allow: bool) -> DiskSpec {
        DiskSpec {
            format: DiskFormat::Qcow2,
            allow_backing: allow,
            ..DiskSpec::new(path)
        }
    }

    #[test]
    fn a_backing_file_is_refused_unless_allowed() {
        let info = json!({"filename": "/a", "format": "qcow2",
            "backing-filename": "/etc/shadow", "backing-filename-format": "raw"});
        let err = chain_from_info(&qcow2("/a", false), &info)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("backing file") && err.contains("backing=allow"),
            "{err}"
        );
        let plain = json!({"filename": "/a", "format": "qcow2"});
        let chain = chain_from_info(&qcow2("/a", false), &plain).unwrap();
        assert_eq!(chain.len(), 1);
    }

    #[test]
    fn an_allowed_chain_needs_recorded_formats() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::write(&base, b"").unwrap();
        let base_s = base.to_str().unwrap();
        let good = json!([
            {"filename": "/top", "format": "qcow2", "backing-filename": base_s,
             "backing-filename-format": "raw"},
            {"filename": base_s, "format": "raw"}
        ]);
        let chain = chain_from_info(&qcow2("/top", true), &good).unwrap();
        assert_eq!(
            chain,
            vec![
                Layer {
                    path: "/top".into(),
                    format: DiskFormat::Qcow2
                },
                Layer {
                    path: base.clone(),
                    format: DiskFormat::Raw
                }
            ]
        );
        let probed = json!([
            {"filename": "/top", "format": "qcow2", "backing-filename": base_s},
            {"filename": base_s, "format": "raw"}
        ]);
        let err = chain_from_info(&qcow2("/top", true), &probed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("without its format"), "{err}");
        let remote = json!([
            {"filename": "/top", "format": "qcow2", "backing-filename": "nbd://x",
             "backing-filename-format": "raw"},
            {"filename": "nbd://x", "format": "raw"}
        ]);
        assert!(chain_from_info(&qcow2("/top", true), &remote).is_err());
        let vmdk = json!({"filename": "/top", "format": "vmdk"});
        assert!(chain_from_info(&qcow2("/top", true), &vmdk).is_err());
    }
}
