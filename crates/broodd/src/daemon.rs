//! `Daemon`: the state broodd shares between requests: where things live on
//! disk, the ledger, the engine, the running VMs, per-partition locks and the
//! event bus.
//!
//! Operations on one partition are serialized by its lock (an async mutex
//! held for the whole operation); the ledger orders everything else. A
//! running VM is a `Running` in `slots`, watched by its supervisor task.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use brood_api::{Event, EventKind};
use brood_engine::{BoxedVm, Engine};
use brood_ledger::{Ledger, PartitionRecord};
use tokio::sync::broadcast;
use uuid::Uuid;

/// Where broodd keeps things.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The data directory.
    pub data: PathBuf,
    /// The guest image (vmlinuz, initrd.img).
    pub image: PathBuf,
    /// Template directories (memory file, device state): a tmpfs, beside
    /// the run root.
    pub templates: PathBuf,
}

impl Paths {
    /// The ledger database.
    pub fn ledger(&self) -> PathBuf {
        self.data.join("ledger.db")
    }
    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.data.join(brood_api::SOCKET_FILE)
    }
    /// The bearer token.
    pub fn token(&self) -> PathBuf {
        self.data.join(brood_api::TOKEN_FILE)
    }
    /// The lock that keeps a second broodd off this data directory.
    pub fn lock(&self) -> PathBuf {
        self.data.join("broodd.lock")
    }
    /// A partition's disk directory.
    pub fn disk_dir(&self, uuid: Uuid) -> PathBuf {
        self.data.join("disks").join(uuid.to_string())
    }
    /// A partition's disk.
    pub fn disk(&self, uuid: Uuid, name: &str) -> PathBuf {
        self.disk_dir(uuid).join(format!("{name}.qcow2"))
    }
    /// A partition's saved state.
    pub fn saved_state(&self, uuid: Uuid) -> PathBuf {
        self.data.join("saves").join(format!("{uuid}.state"))
    }
    /// Where a partition's console log is kept after its QEMU ends.
    pub fn console_log(&self, uuid: Uuid) -> PathBuf {
        self.data.join("logs").join(format!("{uuid}.console.log"))
    }
    /// A template's directory.
    pub fn template_dir(&self, uuid: Uuid) -> PathBuf {
        self.templates.join(uuid.to_string())
    }
    /// The kernel of the guest image.
    pub fn kernel(&self) -> PathBuf {
        self.image.join("vmlinuz")
    }
    /// The initramfs of the guest image.
    pub fn initrd(&self) -> PathBuf {
        self.image.join("initrd.img")
    }
}

/// A partition whose QEMU is running.
#[derive(Debug)]
pub struct Running {
    /// The VM.
    pub vm: BoxedVm,
    /// Set by an operation that ends the VM on purpose (stop, kill, save,
    /// delete), so the supervisor does not treat the exit as a crash.
    pub expected_exit: AtomicBool,
}

/// A partition rendered for the API.
#[derive(Debug)]
struct Rendered {
    generation: u64,
    parent: Option<String>,
    json: Arc<[u8]>,
}

/// Shared daemon state.
#[derive(Debug)]
pub struct Daemon {
    /// Paths.
    pub paths: Paths,
    /// The ledger.
    pub ledger: Ledger,
    /// The VM engine.
    pub engine: Arc<dyn Engine>,
    /// The API token.
    pub token: String,
    /// vCPUs of capacity per host CPU.
    pub vcpu_overcommit: f64,
    slots: Mutex<HashMap<Uuid, Arc<Running>>>,
    /// Partitions as the API shows them, rendered to JSON, by uuid, with the
    /// generation and parent name they were rendered from. Every change to a
    /// record raises its generation, so a stale entry is never served.
    rendered: Mutex<HashMap<Uuid, Rendered>>,
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    events: broadcast::Sender<Event>,
    seq: AtomicU64,
    /// Set when the daemon shuts down: supervisors stop acting.
    pub stopping: AtomicBool,
    /// Templates by uuid, with their pools of waiting children.
    pub templates: Mutex<HashMap<Uuid, Arc<crate::template::TemplateRt>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Daemon {
    /// Assembles the daemon state.
    pub fn new(
        paths: Paths,
        ledger: Ledger,
        engine: Arc<dyn Engine>,
        token: String,
        vcpu_overcommit: f64,
    ) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            paths,
            ledger,
            engine,
            token,
            vcpu_overcommit,
            slots: Mutex::default(),
            rendered: Mutex::default(),
            locks: Mutex::default(),
            events,
            seq: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            templates: Mutex::default(),
        }
    }

    /// The lock that serializes operations on partition `uuid`.
    pub fn partition_lock(&self, uuid: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(uuid).or_default().clone()
    }

    /// Forgets the lock of a deleted partition.
    pub fn drop_lock(&self, uuid: Uuid) {
        lock(&self.locks).remove(&uuid);
        lock(&self.rendered).remove(&uuid);
    }

    /// The running VM of partition `uuid`.
    pub fn running(&self, uuid: Uuid) -> Option<Arc<Running>> {
        lock(&self.slots).get(&uuid).cloned()
    }

    /// Records a running VM.
    pub fn insert_running(&self, uuid: Uuid, r: Arc<Running>) {
        lock(&self.slots).insert(uuid, r);
    }

    /// Removes a running VM's record, returning it.
    pub fn remove_running(&self, uuid: Uuid) -> Option<Arc<Running>> {
        lock(&self.slots).remove(&uuid)
    }

    /// A template's runtime state.
    pub fn template(&self, uuid: Uuid) -> Option<Arc<crate::template::TemplateRt>> {
        lock(&self.templates).get(&uuid).cloned()
    }

    /// Records a template's runtime state.
    pub fn insert_template(&self, t: Arc<crate::template::TemplateRt>) {
        lock(&self.templates).insert(t.uuid, t);
    }

    /// Every template's runtime state.
    pub fn all_templates(&self) -> Vec<Arc<crate::template::TemplateRt>> {
        lock(&self.templates).values().cloned().collect()
    }

    /// Forgets a template.
    pub fn remove_template(&self, uuid: Uuid) -> Option<Arc<crate::template::TemplateRt>> {
        lock(&self.templates).remove(&uuid)
    }

    /// Receives events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Publishes an event.
    pub fn publish(&self, kind: EventKind) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.events.send(Event {
            seq,
            time: crate::convert::now(),
            kind,
        });
    }

    /// A partition's API JSON, rendered once per generation.
    pub fn render(
        &self,
        rec: PartitionRecord,
        parent: Option<String>,
    ) -> Result<Arc<[u8]>, crate::error::ApiError> {
        let (uuid, generation) = (rec.uuid, rec.generation);
        if let Some(r) = lock(&self.rendered).get(&uuid)
            && r.generation == generation
            && r.parent == parent
        {
            return Ok(r.json.clone());
        }
        let p = crate::convert::partition_out(rec, &self.paths, parent.clone())?;
        let json: Arc<[u8]> = serde_json::to_vec(&p)
            .map_err(|e| crate::error::ApiError::internal("encode a partition", &e))?
            .into();
        let mut cache = lock(&self.rendered);
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(
            uuid,
            Rendered {
                generation,
                parent,
                json: json.clone(),
            },
        );
        Ok(json)
    }

    /// Publishes a partition's current state.
    pub fn publish_partition(&self, rec: &PartitionRecord, detail: Option<String>) {
        self.publish(EventKind::Partition {
            name: rec.name.clone(),
            uuid: rec.uuid,
            stage: crate::convert::stage_out(rec.stage),
            run_state: crate::convert::run_state_out(rec.run_state),
            detail,
        });
    }
}
