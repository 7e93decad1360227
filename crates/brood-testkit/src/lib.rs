//! Test support for broodd: a fake engine whose VMs are models with real
//! guest-agent connections, and a `TestApp` that runs broodd's router on a
//! temporary ledger with it. Used only as a dev-dependency.
//!
//! - [`FakeEngine`] (`engine`): implements `brood_engine::Engine` and
//!   `VmHandle`, models VM processes (start, exit, crash, hang, fork,
//!   save/restore, attach after a restart), injects failures on any call,
//!   and finishes transitions on a timer ([`Mode::Auto`]) or when the test
//!   says so ([`Mode::Explicit`]).
//! - the fake guest agent (`agent`): brood-proto frames over a socket pair
//!   to a real `AgentClient`.
//! - [`TestApp`] (`app`): data directory, engine, capacity, broodd; requests
//!   through the router; restart; a unix socket for the `brood` CLI.

#![warn(missing_docs)]

mod agent;
mod app;
mod engine;

pub use app::{Events, Reply, Served, TOKEN, TestApp, TestAppBuilder};
pub use brood_ledger::Resources;
pub use engine::{Call, ExecReply, ExecRule, FakeEngine, FakeVm, Identity, Mode, Op, Phase};
