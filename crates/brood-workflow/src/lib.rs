//! brood's workflows: a job's work as data. A [`Workflow`] is an ordered
//! list of tasks (built-in steps such as create, start, fork, exec, or
//! scripts) with their properties (enabled, timeout, success codes,
//! continue-on-error, idempotent) and parameters bound from the job's data
//! items and earlier tasks' outputs; [`run`] carries one out against a
//! [`Runner`] (broodd's steps; a test's model), writing every step to a
//! [`Journal`] before it goes on, so that a run interrupted by a crash
//! resumes from the journal (no task runs twice unless it is idempotent),
//! and a run that fails undoes the steps it completed, newest first.
//!
//! This crate knows nothing of broodd: no ledger, no HTTP. broodd stores
//! definitions and journals and implements the steps.

pub mod bind;
pub mod def;
mod error;
mod run;

pub use bind::{Binding, Scope, Secrets};
pub use def::{Input, Step, Task, Workflow};
pub use error::{DefError, RunError};
pub use run::{CANCELLED, Event, Journal, Outcome, Runner, TaskResult, run};
