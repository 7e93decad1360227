//! Where the brood-agent binary an image is built with is found: the same
//! search for the CLI (`brood image build`) and for broodd (an image build
//! job), since both run from the same install or Cargo target directory.

use std::path::{Path, PathBuf};

use crate::ImageError;

/// Cargo's target triple the agent is built for.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Finds the brood-agent binary: `explicit` (a flag), else `$BROOD_AGENT`,
/// else the static build in the Cargo target directory the running
/// executable was built in (`target/<triple>/release-agent/brood-agent`),
/// else next to the running executable, else where the Debian package
/// installs it.
pub fn find_agent(explicit: Option<&Path>) -> Result<PathBuf, ImageError> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(ImageError::AgentNotFile {
                path: p.to_path_buf(),
                from: "--agent",
            });
        }
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("BROOD_AGENT") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(ImageError::AgentNotFile {
                path: p,
                from: "$BROOD_AGENT",
            });
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
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
    candidates.push(PathBuf::from("/usr/lib/brood/brood-agent"));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    Err(ImageError::AgentNotFound {
        looked: candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}
