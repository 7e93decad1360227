//! How a plain partition starts: its active configuration demands its
//! resources, and the engine boots the guest image with it.

use std::sync::Arc;

use async_trait::async_trait;
use brood_engine::BoxedVm;
use brood_ledger::{PartitionRecord, Resources};

use crate::host::config::{demand_of, vm_spec};
use crate::host::{Host, HostError, HostResult, Launcher};

/// Boots plain partitions.
#[derive(Debug)]
pub struct PlainLauncher {
    /// Where their files are (the root disk's size is read there).
    pub paths: crate::host::paths::Paths,
}

#[async_trait]
impl Launcher for PlainLauncher {
    fn demand(&self, rec: &PartitionRecord) -> HostResult<Resources> {
        let configs = crate::host::config::configs_of(rec)?;
        crate::host::root::with_root(&self.paths, rec.uuid, &configs, demand_of(rec)?)
    }

    async fn launch(&self, host: &Arc<Host>, rec: &PartitionRecord) -> HostResult<BoxedVm> {
        let config = crate::host::config::active_config(rec)?;
        if let Some(boot) = &config.boot_disk {
            if !host.paths.image_root(rec.uuid).is_file() {
                return Err(HostError::transition(format!(
                    "{} has no boot disk yet: import its disk image (`brood vm disk import {} FILE --format qcow2`)",
                    rec.name, rec.name
                )));
            }
            crate::host::boot_disk::write_seed(&host.paths, rec.uuid, &rec.name, boot).await?;
        }
        let mut spec = vm_spec(rec, &host.paths)?;
        crate::network::use_channels(host, rec.uuid, &mut spec).await?;
        crate::io::storage::use_disks(host, rec.uuid, &mut spec).await?;
        crate::metrics::boot(host.engine.boot(&spec))
            .await
            .map_err(|e| HostError::engine(format!("start {}", rec.name), e))
    }
}
