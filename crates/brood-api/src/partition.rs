//! Partitions on the wire: their definition (named configurations), their
//! life-cycle stage and run state, and the bodies of the operations on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ErrorDetail;

/// Life-cycle stage of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Defined, not yet provisioned.
    Construction,
    /// Its disks are being created.
    Provisioning,
    /// Ready to run.
    Operating,
    /// Held by an administrator; can run, no automatic actions (restarts).
    Manual,
    /// Cannot be started.
    Disabled,
    /// Retired; only deletion remains.
    Decommissioned,
    /// A frozen parent that children are forked from; never runs again.
    Template,
}

/// Run state of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// No QEMU; holds no memory, vCPUs or NICs.
    Stopped,
    /// QEMU is being started.
    Starting,
    /// Running.
    Running,
    /// vCPUs stopped; memory still held.
    Paused,
    /// State saved to disk; memory and vCPUs returned.
    Saved,
    /// QEMU died without being asked to; resources returned.
    Crashed,
}

/// What the daemon does when a partition's QEMU ends on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Leave it stopped or crashed.
    #[default]
    Never,
    /// Restart it when it crashed (not when the guest powered off).
    OnFailure,
    /// Restart it whenever it ends, unless it was stopped through the API.
    Always,
}

/// Resource policy of a partition, enforced with cgroups.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Relative CPU weight, 1-10000 (100 is the default share).
    #[schema(minimum = 1, maximum = 10000)]
    pub cpu_weight: Option<u32>,
    /// Most CPU time, in percent of one CPU (150 = one and a half CPUs):
    /// 1 to 100 per vCPU.
    #[schema(minimum = 1, maximum = 25500)]
    pub cpu_cap_pct: Option<u32>,
    /// Most memory QEMU may use, guest memory included, in MiB: at least
    /// `memory_mib` + 128 (QEMU's own), at most 8388608.
    #[schema(minimum = 64, maximum = 8388608)]
    pub memory_limit_mib: Option<u64>,
    /// Scheduling priority of the partition's jobs, -1000 to 1000: higher goes first.
    pub priority: i32,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Start it whenever broodd starts, when it is stopped or crashed then
    /// (libvirt's autostart).
    pub autostart: bool,
}

/// A disk of a configuration; broodd creates it as a qcow2 file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Name, unique in the configuration: `[a-z0-9_-]`, 1-32 characters.
    #[schema(min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]+$")]
    pub name: String,
    /// Size in GiB, 1-65536.
    #[schema(minimum = 1, maximum = 65536)]
    pub size_gib: u64,
    /// Served by the storage I/O partition of this storage zone
    /// (`storage-ZONE`) instead of opened by the guest's QEMU: 1-32
    /// characters of `[a-z0-9_.-]`. Absent: QEMU opens the image itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 32, pattern = "^[a-z0-9_.-]+$")]
    pub io_zone: Option<String>,
    /// Cap on the guest's requests to it, per second (reads and writes
    /// together), 1-1000000. Absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub iops: Option<u32>,
    /// Cap on its bandwidth in MiB per second, 1-100000. Absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000)]
    pub mbps: Option<u32>,
}

/// A NIC of a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    /// A Linux bridge on the host (an interface name: 1-15 printable ASCII
    /// characters without `/`, `:` or spaces), `user` for QEMU's user-mode
    /// network (isolated: neither the outside nor the host is reachable),
    /// or `user-unrestricted` to opt into its outbound NAT, which reaches the
    /// host's loopback too.
    pub network: String,
    /// MAC address (unicast, unique in the configuration); chosen by broodd when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Bandwidth cap in Mbit/s, 1-100000, each direction; only for a NIC
    /// on a brood network, whose switch enforces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000)]
    pub mbps: Option<u32>,
}

/// One named configuration of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// Virtual CPUs, 1-255.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 255)]
    pub vcpus: u32,
    /// Guest memory in MiB, 32-4194304.
    #[serde(default = "default_memory")]
    #[schema(minimum = 32, maximum = 4194304)]
    pub memory_mib: u64,
    /// Disks, in guest order (`vda`, `vdb`, ...). Disks and NICs together
    /// are at most 22: the microvm machine has 24 virtio-mmio slots and
    /// brood uses two.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// NICs, in guest order.
    #[serde(default)]
    pub nics: Vec<NicConfig>,
    /// Zones the partition requires of its host: at most 32, each 1-64
    /// characters of `[a-z0-9_.-]`.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Resource policy.
    #[serde(default)]
    pub policy: Policy,
    /// Extra kernel command-line arguments: one line of at most 1024 bytes.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub cmdline: String,
    /// The guest image it boots (`brood image list`): absent means broodd's
    /// default image. An image with a Debian root disk gives the partition
    /// a qcow2 overlay of that disk as its first disk (`/dev/vda`, before
    /// `disks`), kept across stop and start; the image itself is never
    /// written. Every configuration of a partition names the same image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_.-]*$")]
    pub image: Option<String>,
    /// Service classes it needs (`brood service classes`: `dns`, `log`,
    /// `http`...), each at most once: at every start broodd requests one
    /// service of each class not serving it yet, for it (the start fails,
    /// and its VM stops again, if one cannot be had); a `dns` service
    /// becomes its resolver. Deleting it releases them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 8, inline)]
    pub requires: Vec<String>,
    /// Boots a disk image the user brought (a Debian or Ubuntu cloud
    /// image: `PUT /v1/partitions/{name}/boot-disk` imports it) instead of
    /// a brood image: it is `/dev/vda`, its ext4 root file system's own
    /// init (systemd) runs, and cloud-init finds a NoCloud seed disk.
    /// Absent: the partition boots `image`. Every configuration of a
    /// partition names the same one, and not together with `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_disk: Option<BootDiskConfig>,
    /// PID 1 of a guest whose image has a root disk (a Debian image):
    /// `agent` (the default) is brood's agent, which mounts what init must,
    /// starts the image's services and reaps, and boots in milliseconds;
    /// `systemd` runs the image's own `/sbin/init` (build the image with
    /// `--package systemd-sysv`) with brood's agent as a systemd unit, for
    /// software that expects systemd; such a guest is not forked. Absent:
    /// `agent`. A `boot_disk` always runs its image's own init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<GuestInit>,
}

/// What runs as PID 1 in a guest with a root disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GuestInit {
    /// brood's agent.
    #[default]
    Agent,
    /// The image's systemd, with the agent as its unit.
    Systemd,
}

impl GuestInit {
    /// The kernel arguments that make a Debian image's initramfs hand over
    /// to this init (brood-agent's `root::BootArgs`); none for the agent.
    pub fn kernel_args(self) -> &'static str {
        match self {
            GuestInit::Agent => "",
            GuestInit::Systemd => "brood.init=/sbin/init brood.agent=unit",
        }
    }
}

impl std::str::FromStr for GuestInit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "agent" => Ok(GuestInit::Agent),
            "systemd" => Ok(GuestInit::Systemd),
            _ => Err(format!("unknown init {s:?}: use agent or systemd")),
        }
    }
}

/// A partition's boot disk imported from a disk image (`brood vm create
/// --disk-image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootDiskConfig {
    /// Its size in GiB, 1-65536: an image with a smaller virtual size is
    /// grown to it (cloud-init grows the root partition), a larger one is
    /// refused. Charged to the disk space like any disk.
    #[schema(minimum = 1, maximum = 65536)]
    pub size_gib: u64,
    /// broodd adds its guest agent to the guest as a systemd unit at every
    /// boot (nothing is written to the disk), so exec, files and a
    /// graceful stop work. `false` boots the image as it is: exec then
    /// needs ssh (or an agent the image has), and a stop is ACPI's.
    #[serde(default = "yes")]
    pub agent: bool,
    /// cloud-init user-data (`#cloud-config ...`, a script...), given to
    /// the guest on its NoCloud seed disk (label `cidata`, with meta-data
    /// naming the partition as instance-id and hostname); at most 65536
    /// bytes. Absent: an empty cloud-config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 65536)]
    pub user_data: Option<String>,
}

fn yes() -> bool {
    true
}

/// Formats `PUT /v1/partitions/{name}/boot-disk` takes: always given, never
/// probed from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// QEMU copy-on-write v2 (what cloud images are shipped as).
    #[default]
    Qcow2,
    /// A plain disk image.
    Raw,
}

impl ImageFormat {
    /// Its name on the wire and for `qemu-img -f`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [ImageFormat::Qcow2, ImageFormat::Raw]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown disk image format {s:?}: use qcow2 or raw"))
    }
}

/// What an import of a boot disk made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BootDiskImported {
    /// The partition.
    pub name: String,
    /// The format the image was read as.
    pub format: ImageFormat,
    /// Bytes received.
    pub received_bytes: u64,
    /// The image's virtual size in bytes, as it came.
    pub image_virtual_bytes: u64,
    /// The boot disk's size now, in GiB.
    pub size_gib: u64,
}

fn one() -> u32 {
    1
}

fn default_memory() -> u64 {
    256
}

impl Default for PartitionConfig {
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory_mib: 256,
            disks: Vec::new(),
            nics: Vec::new(),
            zones: Vec::new(),
            policy: Policy::default(),
            cmdline: String::new(),
            image: None,
            requires: Vec::new(),
            boot_disk: None,
            init: None,
        }
    }
}

/// Body of `POST /v1/partitions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineRequest {
    /// Name: 1-64 characters of `[a-z0-9_.-]`, starting with a letter or
    /// digit, and not a uuid.
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9_.-]*$")]
    pub name: String,
    /// Configurations by name (1-32 characters of `[a-z0-9_-]`); 1-32 of them.
    pub configs: BTreeMap<String, PartitionConfig>,
    /// The configuration used at the next start; the first by name when absent.
    #[serde(default)]
    pub active_config: Option<String>,
    /// Start it once defined; if the start fails, the definition is removed too.
    #[serde(default)]
    pub start: bool,
    /// Host ports forwarded to the VM's address on its first NIC on a NAT
    /// network (which the active configuration must have); at most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<crate::network::PublishedPort>,
}

/// A partition's disk as created on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskInfo {
    /// Its name in the configuration.
    pub name: String,
    /// The qcow2 file on the host.
    pub path: String,
    /// Its size in GiB.
    pub size_gib: u64,
}

/// A partition's NIC as it is on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NicInfo {
    /// The network, bridge or `user` mode it is on.
    pub network: String,
    /// Its MAC address: the configured one, or the one broodd derives from
    /// the partition's uuid (stable across restarts).
    pub mac: String,
    /// The guest's IPv4 address on it, when brood gave it one (a network's
    /// channel, or a forked child's identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A partition as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Partition {
    /// Name.
    pub name: String,
    /// Identifier.
    pub uuid: Uuid,
    /// Life-cycle stage.
    pub stage: Stage,
    /// Run state.
    pub run_state: RunState,
    /// Configuration used at the next start.
    pub active_config: String,
    /// All configurations.
    pub configs: BTreeMap<String, PartitionConfig>,
    /// QEMU's pid while it has one.
    pub pid: Option<u32>,
    /// Disks of the active configuration.
    pub disks: Vec<DiskInfo>,
    /// NICs of the active configuration, with their real MACs.
    #[serde(default)]
    pub nics: Vec<NicInfo>,
    /// A change of its definition that waits for its next start (its VM
    /// runs what `running` says meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_change: Option<crate::change::PendingChange>,
    /// How QEMU last ended, when it has.
    pub last_exit: Option<String>,
    /// Automatic restarts so far.
    pub restart_count: u32,
    /// An operation in progress, if any.
    pub pending_op: Option<String>,
    /// The template it was forked from (children only).
    #[serde(default)]
    pub parent: Option<String>,
    /// How its fork went (children only).
    #[serde(default)]
    pub fork: Option<crate::fork::ForkChild>,
    /// When it was defined (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// Host ports forwarded to it (on a NAT network; the DNAT is there
    /// while it runs). The same field as a `DefineRequest`'s, so that what
    /// `show` prints defines it again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<crate::network::PublishedPort>,
}

/// A page of partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PartitionList {
    /// The partitions, by name.
    pub items: Vec<Partition>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// Body of `POST /v1/partitions/{name}/stop`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StopRequest {
    /// Seconds to wait for the guest to power off before killing it (default 30, at most 3600).
    #[schema(maximum = 3600)]
    pub timeout_s: Option<u64>,
}

/// Body of `PUT /v1/partitions/{name}/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetConfigRequest {
    /// The configuration to use at the next start.
    pub config: String,
}

/// Body of `PUT /v1/partitions/{name}/stage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStageRequest {
    /// The new stage.
    pub stage: Stage,
}

/// Body of `POST /v1/partitions/{name}/exec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExecRequest {
    /// A shell command, run with `/bin/sh -c` (no NUL bytes).
    pub command: Option<String>,
    /// An argv to run directly (instead of `command`): 1-4096 entries, no NUL bytes.
    #[schema(min_items = 1, max_items = 4096)]
    pub argv: Option<Vec<String>>,
    /// Environment variables added: at most 4096; names without `=`, no NUL bytes.
    pub env: BTreeMap<String, String>,
    /// Standard input, base64.
    pub stdin_base64: Option<String>,
    /// Kill the command after this long, in ms: 1 to 86400000 (a day).
    #[schema(minimum = 1, maximum = 86400000)]
    pub timeout_ms: Option<u64>,
    /// How long to wait for the guest agent to be ready, in ms (default 60000, at most 600000).
    #[schema(maximum = 600000)]
    pub ready_timeout_ms: Option<u64>,
}

/// Result of an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal, when one ended it.
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Standard output, base64.
    pub stdout_base64: String,
    /// Standard error, base64.
    pub stderr_base64: String,
    /// Standard output was cut at the output limit.
    pub stdout_truncated: bool,
    /// Standard error was cut at the output limit.
    pub stderr_truncated: bool,
}

/// Media type of a streamed exec: one JSON [`ExecChunk`] per line.
pub const NDJSON: &str = "application/x-ndjson";

/// One line of a streamed exec (`POST /v1/partitions/{name}/exec?stream=true`,
/// or with `Accept: application/x-ndjson`): output chunks in the order the
/// guest wrote them, then exactly one last line, the end or an error.
/// Closing the connection before the end kills the command in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ExecChunk {
    /// A chunk of standard output.
    Stdout {
        /// The bytes, base64.
        stdout_base64: String,
    },
    /// A chunk of standard error.
    Stderr {
        /// The bytes, base64.
        stderr_base64: String,
    },
    /// The stream failed (the agent went away, say); the last line.
    Error {
        /// What went wrong, as in every error response.
        error: ErrorDetail,
    },
    /// The command ended; the last line.
    End(ExecEnd),
}

/// How a streamed command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecEnd {
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal, when one ended it.
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Standard output was cut at the output limit.
    pub stdout_truncated: bool,
    /// Standard error was cut at the output limit.
    pub stderr_truncated: bool,
}

/// The tail of a partition's console log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleLog {
    /// The text (invalid UTF-8 replaced).
    pub text: String,
    /// Older output exists that is not included.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn exec_chunks_are_told_apart_by_their_fields() {
        let lines = [
            r#"{"stdout_base64":"aGk="}"#,
            r#"{"stderr_base64":"b29wcw=="}"#,
            r#"{"error":{"code":"engine_failed","message":"gone"}}"#,
            r#"{"exit_code":3,"signal":null,"timed_out":false,"stdout_truncated":false,"stderr_truncated":true}"#,
        ];
        let parsed: Vec<ExecChunk> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            parsed,
            vec![
                ExecChunk::Stdout {
                    stdout_base64: "aGk=".into()
                },
                ExecChunk::Stderr {
                    stderr_base64: "b29wcw==".into()
                },
                ExecChunk::Error {
                    error: ErrorDetail {
                        code: ErrorCode::EngineFailed,
                        message: "gone".into()
                    }
                },
                ExecChunk::End(ExecEnd {
                    exit_code: Some(3),
                    signal: None,
                    timed_out: false,
                    stdout_truncated: false,
                    stderr_truncated: true,
                }),
            ]
        );
        for (line, chunk) in lines.iter().zip(&parsed) {
            assert_eq!(serde_json::to_string(chunk).unwrap(), *line);
        }
    }
}
