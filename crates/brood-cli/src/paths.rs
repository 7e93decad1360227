//! Where brood keeps things on this host: the data directory, the default
//! image inside it, and the brood-agent binary the image is built with.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// brood's data directory: `--data-dir`, else `$BROOD_DATA_DIR`, else
/// `/var/lib/brood` for root and `$XDG_DATA_HOME/brood` (or
/// `~/.local/share/brood`) for anyone else.
pub fn data_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("BROOD_DATA_DIR") {
        return PathBuf::from(p);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/brood");
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(p).join("brood");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/brood")
}

/// The images directory in the data directory: one subdirectory per image.
pub fn images_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("images")
}

/// The default image's directory in the data directory.
pub fn default_image_dir(data_dir: &Path) -> PathBuf {
    images_dir(data_dir).join(brood_image::DEFAULT_IMAGE)
}

/// Cargo's target triple the agent is built for.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Finds the brood-agent binary: `--agent`, else `$BROOD_AGENT`, else the
/// static build in the Cargo target directory this executable was built in
/// (`target/<triple>/release-agent/brood-agent`), else next to this executable.
pub fn agent_binary(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        if !p.is_file() {
            bail!("brood-agent binary {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("BROOD_AGENT") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("BROOD_AGENT={} does not exist", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("find the brood executable")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // In a Cargo tree the sibling `target/<profile>/brood-agent` is the
    // dynamically linked host build, so the static one goes first.
    let mut candidates = Vec::new();
    if let Some(target) = dir.parent() {
        candidates.push(
            target
                .join(AGENT_TARGET)
                .join("release-agent")
                .join("brood-agent"),
        );
    }
    candidates.push(dir.join("brood-agent"));
    // Where the Debian package installs it.
    candidates.push(PathBuf::from("/usr/lib/brood/brood-agent"));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "brood-agent binary not found (looked in {}); build it with \
         `RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile release-agent \
         --target {AGENT_TARGET} -p brood-agent`, or pass --agent PATH",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
