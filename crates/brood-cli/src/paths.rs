//! Where brood keeps things on this host: the data directory, the default
//! image inside it, and the brood-agent binary the image is built with.

use std::path::{Path, PathBuf};

use anyhow::Result;

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

/// Finds the brood-agent binary: `--agent`, else `$BROOD_AGENT`, else the
/// static build in the Cargo target directory this executable was built in,
/// else next to this executable (`brood_image::find_agent`).
pub fn agent_binary(flag: Option<&Path>) -> Result<PathBuf> {
    Ok(brood_image::find_agent(flag)?)
}
