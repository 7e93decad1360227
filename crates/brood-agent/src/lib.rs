//! brood-agent: the guest side of the brood control channel.
//!
//! The binary (`src/main.rs`) only parses arguments; everything it runs lives
//! here so that the request handling can be tested on the host over a
//! `UnixStream` pair:
//!
//! - [`init`]: PID 1 duties (mounts, modules, hostname, loopback) and the
//!   reaper loop that respawns the agent; [`root`] leaves the initramfs
//!   for an image's root disk.
//! - [`port`]: finds the virtio-serial port and serves on it.
//! - [`serve`]: the transport-generic serving loop: one reader thread, one
//!   worker thread per request, one shared writer ([`link`]).
//! - `exec`, `file`, [`system`]: the request handlers; [`net`] holds the
//!   network ioctls behind [`system::Machine`].
//! - [`point`]: named points, the local socket that `brood-agent announce`
//!   and `brood-agent fork-point` talk to.
//! - [`fork`]: preparing to be forked and applying a child's identity;
//!   [`child`] checks and renders that identity, [`service`] runs the
//!   image's service scripts.
//!
//! The wire format itself belongs to brood-proto. Everything this crate reads
//! from the host, the guest or the local socket is treated as hostile: it is
//! bounded and never reaches a panic.

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

#[macro_use]
pub mod console;
pub mod child;
mod exec;
mod file;
pub mod fork;
pub mod init;
pub mod link;
pub mod net;
pub mod point;
pub mod port;
pub mod probe;
pub mod pty;
pub mod root;
pub mod serve;
pub mod service;
pub mod system;
pub mod trigger;
pub mod workers;

/// The agent's version, reported in `Ready` and `Info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
