//! Small helpers about one partition that several command groups share:
//! its API path and its one-line summary.

use brood_api::Partition;

use crate::client::encode;
use crate::render::wire_name;

/// `/v1/partitions/NAME`, with the name percent-encoded.
pub fn partition_path(name: &str) -> String {
    format!("/v1/partitions/{}", encode(name))
}

/// One line about a partition: `web: operating, running (pid 4242), config default`.
pub fn summary(p: &Partition) -> String {
    let pid = p.pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default();
    format!(
        "{}: {}, {}{pid}, config {}",
        p.name,
        wire_name(&p.stage),
        wire_name(&p.run_state),
        p.active_config
    )
}
