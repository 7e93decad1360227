//! Typed QMP commands: one serde struct per command and a wrapper method on
//! [`QmpClient`] named after it (`query_status` sends `query-status`), so grep
//! finds both sides.
//!
//! Only what brood uses is here; anything else goes through
//! [`QmpClient::execute_raw`]. Arguments that are `None` are left out,
//! because QEMU refuses unknown or null members ("Parameter 'bogus' is
//! unexpected"). Replies are parsed leniently: members not named here are
//! ignored, and enums keep values they do not know in an `Other` variant.
//! Sending commands and routing replies is the job of the `client` module.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{QmpClient, QmpError};

/// A QMP command: its arguments are the serialized struct (a unit struct sends none).
pub trait QmpCommand: Serialize {
    /// The command name on the wire, such as `query-status`.
    const NAME: &'static str;
    /// The type of the `return` member of a successful reply.
    type Reply: DeserializeOwned;
}

/// The reply of commands that return `{}`; any members are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Empty {}

/// Defines a string enum with known variants and an `Other(String)` fallback.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value this client does not know, as QEMU sent it.
            Other(String),
        }

        impl $name {
            /// The value as it appears on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $wire,)*
                    $name::Other(s) => s,
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $($wire => $name::$variant,)*
                    _ => $name::Other(s),
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                match v {
                    $name::Other(s) => s,
                    known => known.as_str().to_owned(),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// QEMU's run state (`RunState` in the QAPI schema), from `query-status`.
    RunState {
        /// Started with `-S` and never continued.
        Prelaunch = "prelaunch",
        /// Running.
        Running = "running",
        /// Stopped by `stop`.
        Paused = "paused",
        /// Waiting for an incoming migration (`-incoming`).
        Inmigrate = "inmigrate",
        /// Stopped after an outgoing migration.
        Postmigrate = "postmigrate",
        /// Finishing an outgoing migration.
        FinishMigrate = "finish-migrate",
        /// The guest shut down and QEMU was told not to exit (`-no-shutdown`).
        Shutdown = "shutdown",
        /// The guest is suspended (ACPI S3).
        Suspended = "suspended",
        /// The guest panicked.
        GuestPanicked = "guest-panicked",
        /// An internal error stopped the VM.
        InternalError = "internal-error",
        /// An I/O error stopped the VM.
        IoError = "io-error",
    }
}

string_enum! {
    /// Status of a migration (`MigrationStatus` in the QAPI schema).
    MigrationStatus {
        /// No migration has run.
        None = "none",
        /// Setting up.
        Setup = "setup",
        /// Transferring.
        Active = "active",
        /// Transferring device state after RAM (seen in QEMU 10 with `events` on).
        Device = "device",
        /// Paused before switchover (`pause-before-switchover`).
        PreSwitchover = "pre-switchover",
        /// Being cancelled.
        Cancelling = "cancelling",
        /// Cancelled.
        Cancelled = "cancelled",
        /// Finished successfully.
        Completed = "completed",
        /// Failed; `query-migrate` has `error-desc`.
        Failed = "failed",
        /// Postcopy phase.
        PostcopyActive = "postcopy-active",
        /// Postcopy paused after a network failure.
        PostcopyPaused = "postcopy-paused",
    }
}

impl MigrationStatus {
    /// Whether the migration is over: completed, failed or cancelled.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }
}

string_enum! {
    /// A migration capability name (`MigrationCapability` in the QAPI schema).
    MigrationCapabilityName {
        /// Emit `MIGRATION` and `MIGRATION_PASS` events. Off by default: QEMU
        /// 10.0.2 sends no `MIGRATION` event without it (recorded in
        /// `tests/transcripts/migrate_poll.txt`).
        Events = "events",
        /// Do not migrate RAM blocks backed by shared memory (brood's fork).
        XIgnoreShared = "x-ignore-shared",
        /// Postcopy migration.
        PostcopyRam = "postcopy-ram",
        /// Several migration channels.
        Multifd = "multifd",
        /// Fixed RAM offsets in a `file:` migration.
        MappedRam = "mapped-ram",
        /// Throttle vCPUs when migration does not converge.
        AutoConverge = "auto-converge",
        /// Pause before switchover, to be continued with `migrate-continue`.
        PauseBeforeSwitchover = "pause-before-switchover",
        /// Check the source and destination VM UUIDs match.
        ValidateUuid = "validate-uuid",
    }
}

/// `qmp_capabilities`: leaves capabilities negotiation mode. Sent by [`QmpClient::connect`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QmpCapabilities {
    /// Protocol capabilities to enable (QEMU 10 offers only `oob`); `None` enables none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<Vec<String>>,
}

impl QmpCommand for QmpCapabilities {
    const NAME: &'static str = "qmp_capabilities";
    type Reply = Empty;
}

/// Declares a command without arguments that returns `{}`.
macro_rules! unit_command {
    ($(#[$meta:meta])* $name:ident = $wire:literal, $method:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct $name;

        impl QmpCommand for $name {
            const NAME: &'static str = $wire;
            type Reply = Empty;
        }

        impl QmpClient {
            #[doc = concat!("Sends `", $wire, "`.")]
            pub async fn $method(&self) -> Result<(), QmpError> {
                self.execute(&$name).await.map(|_| ())
            }
        }
    };
}

unit_command!(
    /// `stop`: pauses the vCPUs; QEMU sends a `STOP` event.
    Stop = "stop", stop
);
unit_command!(
    /// `cont`: resumes the vCPUs (also leaves `-S` prelaunch); QEMU sends `RESUME`.
    Cont = "cont", cont
);
unit_command!(
    /// `system_powerdown`: presses the ACPI power button; QEMU sends `POWERDOWN`.
    SystemPowerdown = "system_powerdown", system_powerdown
);
unit_command!(
    /// `system_reset`: resets the machine; QEMU sends `RESET`.
    SystemReset = "system_reset", system_reset
);
unit_command!(
    /// `quit`: QEMU sends `SHUTDOWN` (reason `host-qmp-quit`), replies, then exits.
    Quit = "quit", quit
);

/// `query-status`: the VM's run state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueryStatus;

/// Reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs are running.
    pub running: bool,
    /// The run state.
    pub status: RunState,
}

impl QmpCommand for QueryStatus {
    const NAME: &'static str = "query-status";
    type Reply = StatusInfo;
}

/// One capability and its desired state, for `migrate-set-capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCapability {
    /// The capability.
    pub capability: MigrationCapabilityName,
    /// Whether to enable it.
    pub state: bool,
}

/// `migrate-set-capabilities`: sets migration capabilities (before `migrate` or `migrate-incoming`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateSetCapabilities {
    /// The capabilities to change.
    pub capabilities: Vec<MigrationCapability>,
}

impl QmpCommand for MigrateSetCapabilities {
    const NAME: &'static str = "migrate-set-capabilities";
    type Reply = Empty;
}

/// `migrate-set-parameters`: sets migration parameters; `None` leaves one unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrateSetParameters {
    /// Bandwidth cap in bytes per second (`max-bandwidth`; QEMU's default is 128 MiB/s).
    #[serde(rename = "max-bandwidth", skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_bytes_per_s: Option<u64>,
    /// Longest tolerated downtime in milliseconds (`downtime-limit`; default 300).
    #[serde(rename = "downtime-limit", skip_serializing_if = "Option::is_none")]
    pub downtime_limit_ms: Option<u64>,
    /// Number of multifd channels (`multifd-channels`; default 2).
    #[serde(rename = "multifd-channels", skip_serializing_if = "Option::is_none")]
    pub multifd_channels: Option<u8>,
}

impl QmpCommand for MigrateSetParameters {
    const NAME: &'static str = "migrate-set-parameters";
    type Reply = Empty;
}

/// `migrate`: starts an outgoing migration to `uri` (`unix:`, `file:`, `fd:`, `exec:`, `tcp:`).
///
/// QEMU replies as soon as migration is set up; wait with [`QmpClient::wait_migration`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migrate {
    /// Where to migrate to.
    pub uri: String,
}

impl QmpCommand for Migrate {
    const NAME: &'static str = "migrate";
    type Reply = Empty;
}

/// `migrate-incoming`: loads an incoming migration from `uri` into a QEMU started with `-incoming defer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateIncoming {
    /// Where to read the migration from.
    pub uri: String,
}

impl QmpCommand for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    type Reply = Empty;
}

/// `query-migrate`: the state of the current or last migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueryMigrate;

/// Reply of `query-migrate`. QEMU 10 returns `{}` when no migration has run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// The migration's status; `None` if none has run.
    #[serde(default)]
    pub status: Option<MigrationStatus>,
    /// Why it failed, when `status` is `failed`.
    #[serde(default)]
    pub error_desc: Option<String>,
    /// Milliseconds since the migration started (`total-time`).
    #[serde(default, rename = "total-time")]
    pub total_time_ms: Option<u64>,
    /// Milliseconds the VM was stopped for switchover (`downtime`).
    #[serde(default, rename = "downtime")]
    pub downtime_ms: Option<u64>,
}

impl QmpCommand for QueryMigrate {
    const NAME: &'static str = "query-migrate";
    type Reply = MigrationInfo;
}

/// `human-monitor-command`: runs an HMP command line and returns its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HumanMonitorCommand {
    /// The HMP command line, such as `info status`.
    #[serde(rename = "command-line")]
    pub command_line: String,
    /// The CPU that is current for the command.
    #[serde(rename = "cpu-index", skip_serializing_if = "Option::is_none")]
    pub cpu_index: Option<u32>,
}

impl QmpCommand for HumanMonitorCommand {
    const NAME: &'static str = "human-monitor-command";
    type Reply = String;
}

impl QmpClient {
    /// Sends `query-status`.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.execute(&QueryStatus).await
    }

    /// Sends `migrate-set-capabilities` with `capabilities`.
    pub async fn migrate_set_capabilities(
        &self,
        capabilities: &[(MigrationCapabilityName, bool)],
    ) -> Result<(), QmpError> {
        let capabilities = capabilities
            .iter()
            .map(|(capability, state)| MigrationCapability {
                capability: capability.clone(),
                state: *state,
            })
            .collect();
        self.execute(&MigrateSetCapabilities { capabilities })
            .await
            .map(|_| ())
    }

    /// Sends `migrate-set-parameters`.
    pub async fn migrate_set_parameters(
        &self,
        params: &MigrateSetParameters,
    ) -> Result<(), QmpError> {
        self.execute(params).await.map(|_| ())
    }

    /// Sends `migrate` to `uri`; returns once migration is set up.
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        let cmd = Migrate { uri: uri.into() };
        self.execute(&cmd).await.map(|_| ())
    }

    /// Sends `migrate-incoming` from `uri`; returns once loading has started.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        let cmd = MigrateIncoming { uri: uri.into() };
        self.execute(&cmd).await.map(|_| ())
    }

    /// Sends `query-migrate`.
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        self.execute(&QueryMigrate).await
    }

    /// Sends `human-monitor-command` and returns the HMP output.
    pub async fn human_monitor_command(&self, command_line: &str) -> Result<String, QmpError> {
        let cmd = HumanMonitorCommand {
            command_line: command_line.into(),
            cpu_index: None,
        };
        self.execute(&cmd).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_leave_out_unset_members() {
        assert_eq!(serde_json::to_value(Stop).unwrap(), json!(null));
        assert_eq!(
            serde_json::to_value(QmpCapabilities::default()).unwrap(),
            json!({})
        );
        let params = MigrateSetParameters {
            max_bandwidth_bytes_per_s: Some(1 << 30),
            downtime_limit_ms: Some(500),
            multifd_channels: None,
        };
        assert_eq!(
            serde_json::to_value(&params).unwrap(),
            json!({"max-bandwidth": 1073741824, "downtime-limit": 500})
        );
        let caps = MigrateSetCapabilities {
            capabilities: vec![MigrationCapability {
                capability: MigrationCapabilityName::XIgnoreShared,
                state: true,
            }],
        };
        assert_eq!(
            serde_json::to_value(&caps).unwrap(),
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
        );
        let hmp = HumanMonitorCommand {
            command_line: "info status".into(),
            cpu_index: None,
        };
        assert_eq!(
            serde_json::to_value(&hmp).unwrap(),
            json!({"command-line": "info status"})
        );
    }

    #[test]
    fn replies_parse_leniently() {
        let info: StatusInfo = serde_json::from_value(
            json!({"status": "prelaunch", "running": false, "singlestep": false}),
        )
        .unwrap();
        assert_eq!(info.status, RunState::Prelaunch);
        let info: StatusInfo =
            serde_json::from_value(json!({"status": "colo", "running": false})).unwrap();
        assert_eq!(info.status, RunState::Other("colo".into()));
        assert_eq!(info.status.to_string(), "colo");

        let empty: MigrationInfo = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty.status, None);
        let failed: MigrationInfo = serde_json::from_value(json!({
            "status": "failed",
            "error-desc": "Failed to connect",
            "ram": {"total": 1}
        }))
        .unwrap();
        assert_eq!(failed.status, Some(MigrationStatus::Failed));
        assert_eq!(failed.error_desc.as_deref(), Some("Failed to connect"));
        let _: Empty = serde_json::from_value(json!({"unexpected": 1})).unwrap();
    }

    #[test]
    fn string_enums_round_trip() {
        for s in ["completed", "wait-unplug", "device", "none"] {
            let status = MigrationStatus::from(s.to_string());
            assert_eq!(String::from(status.clone()), s);
            assert_eq!(status.as_str(), s);
        }
        assert!(MigrationStatus::Cancelled.is_final());
        assert!(!MigrationStatus::Other("wait-unplug".into()).is_final());
    }
}
