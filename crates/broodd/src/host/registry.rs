//! The registry of live VMs and of per-partition locks.
//!
//! A partition's lock serializes the operations that change it; it is held
//! for the ledger and engine steps of an operation, never across a wait on
//! the guest (an identity step, an agent that may hang), and `kill` does
//! not wait for it to end a VM (see `runstate::kill_now`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use brood_engine::BoxedVm;
use uuid::Uuid;

/// A partition whose VM is live.
#[derive(Debug)]
pub struct Running {
    /// The VM.
    pub vm: BoxedVm,
    /// When broodd took charge of it.
    pub since: Instant,
    expected_exit: AtomicBool,
}

impl Running {
    /// Wraps a live VM.
    pub fn new(vm: BoxedVm) -> Running {
        Running {
            vm,
            since: Instant::now(),
            expected_exit: AtomicBool::new(false),
        }
    }

    /// Marks the coming end of the VM as asked for (stop, kill, save,
    /// delete, template), so its watcher does not treat it as a crash.
    pub fn expect_exit(&self) {
        self.expected_exit.store(true, Ordering::SeqCst);
    }

    /// Whether the VM's end was asked for.
    pub fn exit_expected(&self) -> bool {
        self.expected_exit.load(Ordering::SeqCst)
    }
}

/// The serializing lock of one partition.
pub type PartitionLock = Arc<tokio::sync::Mutex<()>>;

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Live VMs and partition locks, by partition uuid.
#[derive(Debug, Default)]
pub struct Registry {
    running: Mutex<HashMap<Uuid, Arc<Running>>>,
    locks: Mutex<HashMap<Uuid, PartitionLock>>,
}

impl Registry {
    /// The lock that serializes operations on partition `uuid`.
    pub fn lock(&self, uuid: Uuid) -> PartitionLock {
        guard(&self.locks).entry(uuid).or_default().clone()
    }

    /// The live VM of partition `uuid`.
    pub fn running(&self, uuid: Uuid) -> Option<Arc<Running>> {
        guard(&self.running).get(&uuid).cloned()
    }

    /// Every live VM.
    pub fn all_running(&self) -> Vec<(Uuid, Arc<Running>)> {
        guard(&self.running)
            .iter()
            .map(|(u, r)| (*u, r.clone()))
            .collect()
    }

    pub(super) fn insert(&self, uuid: Uuid, r: Arc<Running>) {
        guard(&self.running).insert(uuid, r);
    }

    pub(super) fn remove(&self, uuid: Uuid) -> Option<Arc<Running>> {
        guard(&self.running).remove(&uuid)
    }

    /// Forgets a deleted partition's lock.
    pub(super) fn forget(&self, uuid: Uuid) {
        guard(&self.locks).remove(&uuid);
    }
}
