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
//!
//! ```text
//! let app = TestApp::builder().mode(Mode::Explicit).build().await;
//! app.running("web").await;                      // POST /v1/partitions, started
//! app.vm("web").await.finish_boot();             // the agent says Ready
//! app.fake().fail_next(Op::Pause, EngineError::Unsupported { op: "stop" });
//! let (status, body) = app.post_empty("/v1/partitions/web/pause").await; // 502
//! app.vm("web").await.crash();                   // the supervisor records it
//! app.restart().await;                           // reconcile on the same fake
//! app.assert_verified().await;                   // GET /v1/ledger/verify is ok
//! ```
//!
//! Not modelled: cgroups, taps and bridges, disks' contents (broodd still
//! makes them with `qemu-img`), QEMU's own timing.

#![warn(missing_docs)]

mod agent;
mod app;
mod engine;
mod vm;

pub use app::{Events, Reply, Served, TOKEN, TestApp, TestAppBuilder};
pub use brood_ledger::Resources;
pub use engine::{Call, ExecReply, ExecRule, FakeEngine, Identity, Mode, Op};
pub use vm::{FakeVm, Phase};
