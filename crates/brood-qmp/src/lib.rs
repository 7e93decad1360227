//! A small, hand-written async client of the QEMU Machine Protocol (QMP).
//!
//! [`QmpClient::connect`] takes a connected unix socket, reads QEMU's
//! greeting, leaves capabilities negotiation mode and spawns one I/O task that
//! routes replies to commands by `id` and fans events out to any number of
//! receivers. Commands are serde structs implementing [`QmpCommand`], sent with
//! [`QmpClient::execute`]; the ones brood needs also have wrapper methods named
//! after the QMP command (`client.query_status()`). Anything else goes through
//! [`QmpClient::execute_raw`].
//!
//! This crate owns the protocol only. Starting QEMU, choosing socket paths and
//! deciding what a VM's state means belong to brood-engine. QEMU is treated as
//! semi-trusted: lines are capped at [`MAX_LINE_LEN`], malformed input is
//! logged and skipped, and nothing here panics on what QEMU sends.
//!
//! ```no_run
//! # async fn demo() -> Result<(), brood_qmp::QmpError> {
//! use std::time::Duration;
//! use brood_qmp::QmpClient;
//!
//! let (qmp, greeting) = QmpClient::connect_path("/run/vm/qmp.sock", Duration::from_secs(5)).await?;
//! let mut events = qmp.events();
//! qmp.cont().await?;
//! qmp.wait_event(&mut events, "RESUME", Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod client;
pub mod command;
mod error;
mod line;
mod message;
mod wait;

pub use client::{EVENT_CAPACITY, QMP_COMMAND_TIMEOUT, QMP_HANDSHAKE_TIMEOUT, QmpClient};
pub use command::{
    Cont, Empty, HumanMonitorCommand, Migrate, MigrateIncoming, MigrateSetCapabilities,
    MigrateSetParameters, MigrationCapability, MigrationCapabilityName, MigrationInfo,
    MigrationStatus, QmpCapabilities, QmpCommand, QueryMigrate, QueryStatus, Quit, RunState,
    StatusInfo, Stop, SystemPowerdown, SystemReset,
};
pub use error::QmpError;
pub use message::{
    Greeting, MAX_LINE_LEN, QemuVersion, QmpEvent, QmpMessage, VersionInfo, parse_message,
};
