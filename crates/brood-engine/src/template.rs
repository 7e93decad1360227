//! `Template`: a frozen VM that children are forked from, as the engine
//! keeps it on disk. The directory holds the guest memory file (`mem`), the
//! device state (`state`) and this description (`template.json`); how a
//! child maps them is the backend's business (`qemu::fork`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::EngineError;
use crate::host::Accel;
use crate::spec::{AccelChoice, VmSpec};

/// The template's description in its directory.
pub const TEMPLATE_FILE: &str = "template.json";

/// A frozen VM that children are forked from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Its directory: `mem`, `state`, `template.json`.
    pub dir: PathBuf,
    /// The parent's spec: children must have the same devices.
    pub spec: VmSpec,
    /// The accelerator the state was saved under; children use it too.
    pub accel: Accel,
    /// Size of the device state.
    pub state_bytes: u64,
}

impl Template {
    /// The guest memory file children map.
    pub fn mem_path(&self) -> PathBuf {
        self.dir.join("mem")
    }

    /// The device state children load.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Reads a template back from its directory (after a restart).
    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        let f = dir.join(TEMPLATE_FILE);
        let text =
            std::fs::read(&f).map_err(|e| EngineError::host(format!("read {}", f.display()), e))?;
        let t: Template = serde_json::from_slice(&text).map_err(|e| {
            EngineError::InvalidSpec(format!(
                "{} is not a template description: {e}",
                f.display()
            ))
        })?;
        for p in [t.mem_path(), t.state_path()] {
            if !p.is_file() {
                return Err(EngineError::InvalidSpec(format!(
                    "template {} lost {} (its memory lives on a tmpfs and does not survive a host reboot)",
                    dir.display(),
                    p.display()
                )));
            }
        }
        Ok(t)
    }

    /// The spec a child starts with: the template's devices, the child's
    /// name and disks (overlays over the template's, made by the caller),
    /// the template's accelerator.
    pub fn child_spec(
        &self,
        name: &str,
        disks: Vec<crate::spec::DiskSpec>,
    ) -> Result<VmSpec, EngineError> {
        if disks.len() != self.spec.disks.len() {
            return Err(EngineError::InvalidSpec(format!(
                "a child of this template needs {} disks, got {}",
                self.spec.disks.len(),
                disks.len()
            )));
        }
        let mut s = self.spec.clone();
        s.name = name.to_string();
        s.disks = disks;
        s.accel = match self.accel {
            Accel::Kvm => AccelChoice::Kvm,
            Accel::Tcg { .. } => AccelChoice::Tcg,
        };
        Ok(s)
    }
}
