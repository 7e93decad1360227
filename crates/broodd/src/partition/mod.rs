//! Partitions as users define and run them: definition and provisioning
//! ([`define`]), the life cycle of a partition's VM ([`lifecycle`]), how a
//! plain partition boots ([`plain`]) and the restart policy applied when a
//! VM ends on its own ([`restart`]), and the partitions started with
//! broodd ([`autostart`]), and changes to a definition after it is
//! made ([`change`]). Every run-state change goes through
//! the host core's `runstate`.

pub mod autostart;
pub mod change;
pub mod define;
pub mod lifecycle;
pub mod plain;
pub mod restart;
pub mod snapshot;
