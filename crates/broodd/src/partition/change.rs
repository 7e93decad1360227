//! Changing a partition after it is defined (`brood vm set`, `vm disk
//! attach|detach|resize`, `vm nic attach|detach`).
//!
//! A stopped partition's change is its new definition at once: disks are
//! created, grown or deleted and the ledger's disk reservation moves with
//! the change in one transaction (refused past the unit's allocation or
//! the host's capacity). A running partition takes live what its machine
//! allows (`brood_engine::Machine::hotplug`: a disk grows with QMP
//! `block_resize`, the CPU cap is a cgroup limit) and everything else at
//! its next start: the definition changes now, and a `pending_change` row
//! in the ledger (same transaction) keeps the configuration its VM runs,
//! which `vm list` shows with a `*`, a restore of its saved state uses, and
//! the next start clears ([`before_start`]) after creating, growing or
//! deleting the disk files the change named. While it runs it keeps
//! holding what it started with; a detached disk's space is given back
//! when that start deletes it.
//!
//! The definition is checked as `define` checks it. A live step that fails
//! undoes the ledger change, so nothing is left half-done.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use brood_api as api;
use brood_api::Apply;
use brood_engine::Machine;
use brood_ledger::{ChangeOp, JsonText, Op, PartitionPatch, PartitionRecord, Resources, RunState};
use uuid::Uuid;

use crate::host::config::{all_disks, configs_of, demand, stable_mac};
use crate::host::{Host, HostError, HostResult, Kind};

/// Pending changes by partition, as the ledger holds them (loaded when
/// broodd starts, kept in step with every change), for rendering.
#[derive(Debug, Default)]
pub struct Changes {
    marks: Mutex<HashMap<Uuid, Mark>>,
}

#[derive(Debug, Clone)]
struct Mark {
    running: api::PartitionConfig,
    view: api::PendingChange,
}

impl Changes {
    /// The pending change of a partition, as the API shows it.
    pub fn of(&self, uuid: Uuid) -> Option<api::PendingChange> {
        self.lock().get(&uuid).map(|m| m.view.clone())
    }

    fn running(&self, uuid: Uuid) -> Option<api::PartitionConfig> {
        self.lock().get(&uuid).map(|m| m.running.clone())
    }

    fn set(&self, uuid: Uuid, mark: Option<Mark>) {
        let mut m = self.lock();
        match mark {
            Some(mark) => m.insert(uuid, mark),
            None => m.remove(&uuid),
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Mark>> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn mark_of(running: api::PartitionConfig, summary: String, since: String) -> Mark {
    let view = api::PendingChange {
        summary,
        since,
        running: api::RunningNow {
            memory_mib: running.memory_mib,
            vcpus: running.vcpus,
            disks: running.disks.iter().map(|d| d.name.clone()).collect(),
            nics: running.nics.iter().map(|n| n.network.clone()).collect(),
        },
    };
    Mark { running, view }
}

/// Loads the ledger's pending changes (when broodd starts).
pub async fn load(host: &Host) -> HostResult<()> {
    let changes = host.feature::<Changes>();
    for c in host.ledger.pending_changes().await? {
        let running: api::PartitionConfig = c
            .running
            .parse()
            .map_err(|e| HostError::corrupt("a pending change's running configuration", e))?;
        changes.set(c.partition, Some(mark_of(running, c.summary, c.since)));
    }
    Ok(())
}

/// A change to a partition's definition.
#[derive(Debug, Clone)]
pub enum Change {
    /// Memory, vCPUs, CPU cap.
    Resources(api::SetResourcesRequest),
    /// A new empty disk.
    AttachDisk(api::AttachDiskRequest),
    /// A disk grown.
    ResizeDisk {
        /// The disk's name.
        disk: String,
        /// Its new size.
        req: api::ResizeDiskRequest,
    },
    /// A disk removed (its file is deleted).
    DetachDisk {
        /// The disk's name.
        disk: String,
        /// When.
        apply: Apply,
    },
    /// A new NIC.
    AttachNic(api::AttachNicRequest),
    /// A NIC removed.
    DetachNic {
        /// Its MAC address or its index (0 is `eth0`).
        nic: String,
        /// When.
        apply: Apply,
    },
}

impl Change {
    fn apply(&self) -> Apply {
        match self {
            Change::Resources(r) => r.apply,
            Change::AttachDisk(r) => r.apply,
            Change::ResizeDisk { req, .. } => req.apply,
            Change::DetachDisk { apply, .. } | Change::DetachNic { apply, .. } => *apply,
            Change::AttachNic(r) => r.apply,
        }
    }
}

/// What a change did.
#[derive(Debug)]
pub struct Outcome {
    /// The partition after it.
    pub rec: PartitionRecord,
    /// What the running VM took live.
    pub applied_now: Vec<String>,
    /// What waits for the next start, and why.
    pub next_start: Vec<String>,
}

/// A step on the running VM, taken after the ledger change.
#[derive(Debug, Clone, PartialEq)]
enum Live {
    CpuCap(Option<u32>),
    Resize { disk: String, size_gib: u64 },
}

/// What kind of change an edit is, for the hotplug table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Memory,
    Vcpus,
    CpuCap,
    Devices,
    Resize,
}

impl Part {
    fn live(self, m: Machine) -> bool {
        let h = m.hotplug();
        match self {
            Part::Memory => h.memory,
            Part::Vcpus => h.vcpus,
            Part::CpuCap => h.cpu_cap,
            Part::Devices => h.devices,
            Part::Resize => h.disk_resize,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Part::Memory => "memory",
            Part::Vcpus => "vCPUs",
            Part::CpuCap => "a CPU cap",
            Part::Devices => "disks or NICs",
            Part::Resize => "a disk's size",
        }
    }
}

/// The effective MAC of NIC `i` of a partition.
fn mac_of(uuid: Uuid, i: usize, n: &api::NicConfig) -> String {
    n.mac
        .as_deref()
        .and_then(|m| m.parse::<brood_engine::MacAddr>().ok())
        .unwrap_or_else(|| stable_mac(uuid, i))
        .to_string()
}

/// Applies `change` to the active configuration `c` (and a disk's size to
/// every configuration that has it); returns the parts it touches.
fn edit(
    uuid: Uuid,
    configs: &mut BTreeMap<String, api::PartitionConfig>,
    active: &str,
    change: &Change,
) -> HostResult<Vec<(Part, Option<Live>)>> {
    let Some(c) = configs.get_mut(active) else {
        return Err(HostError::invalid(format!(
            "the active configuration {active:?} is missing"
        )));
    };
    let mut parts = Vec::new();
    match change {
        Change::Resources(r) => {
            if r.cpu_cap_pct.is_some() && r.no_cpu_cap {
                return Err(HostError::invalid(
                    "give a CPU cap or lift it (no_cpu_cap), not both",
                ));
            }
            if r.memory_mib.is_none()
                && r.vcpus.is_none()
                && r.cpu_cap_pct.is_none()
                && !r.no_cpu_cap
                && r.publish.is_empty()
                && r.unpublish.is_empty()
            {
                return Err(HostError::invalid(
                    "nothing to change: give memory_mib, vcpus, cpu_cap_pct, no_cpu_cap, publish or unpublish",
                ));
            }
            if let Some(m) = r.memory_mib.filter(|m| *m != c.memory_mib) {
                c.memory_mib = m;
                parts.push((Part::Memory, None));
            }
            if let Some(v) = r.vcpus.filter(|v| *v != c.vcpus) {
                c.vcpus = v;
                parts.push((Part::Vcpus, None));
            }
            let cap = if r.no_cpu_cap {
                None
            } else {
                r.cpu_cap_pct.or(c.policy.cpu_cap_pct)
            };
            if cap != c.policy.cpu_cap_pct {
                c.policy.cpu_cap_pct = cap;
                parts.push((Part::CpuCap, Some(Live::CpuCap(cap))));
            }
        }
        Change::AttachDisk(r) => {
            if c.disks.iter().any(|d| d.name == r.name) {
                return Err(HostError::conflict(format!(
                    "it has a disk {:?} already: pick another name",
                    r.name
                )));
            }
            c.disks.push(api::DiskConfig {
                name: r.name.clone(),
                size_gib: r.size_gib,
                io_zone: None,
                iops: None,
                mbps: None,
            });
            parts.push((Part::Devices, None));
        }
        Change::ResizeDisk { disk, req } => {
            let Some(d) = c.disks.iter().find(|d| &d.name == disk) else {
                return Err(no_disk(c, disk));
            };
            if req.size_gib <= d.size_gib {
                return Err(HostError::invalid(format!(
                    "disk {disk:?} is {} GiB: a disk only grows (shrinking it would cut off what \
                     the guest keeps at its end); give more than {} GiB",
                    d.size_gib, d.size_gib
                )));
            }
            for c in configs.values_mut() {
                for d in c.disks.iter_mut().filter(|d| &d.name == disk) {
                    d.size_gib = req.size_gib;
                }
            }
            parts.push((
                Part::Resize,
                Some(Live::Resize {
                    disk: disk.clone(),
                    size_gib: req.size_gib,
                }),
            ));
        }
        Change::DetachDisk { disk, .. } => {
            let before = c.disks.len();
            c.disks.retain(|d| &d.name != disk);
            if c.disks.len() == before {
                return Err(no_disk(c, disk));
            }
            parts.push((Part::Devices, None));
        }
        Change::AttachNic(r) => {
            pin_macs(uuid, c);
            let mac = match &r.mac {
                Some(m) => m.clone(),
                None => (0..256)
                    .map(|i| stable_mac(uuid, i).to_string())
                    .find(|m| !c.nics.iter().any(|n| n.mac.as_deref() == Some(m.as_str())))
                    .ok_or_else(|| HostError::invalid("no free MAC left: give one"))?,
            };
            c.nics.push(api::NicConfig {
                network: r.network.clone(),
                mac: Some(mac),
                mbps: None,
            });
            parts.push((Part::Devices, None));
        }
        Change::DetachNic { nic, .. } => {
            pin_macs(uuid, c);
            let idx = match nic.parse::<usize>() {
                Ok(i) if i < c.nics.len() => Some(i),
                _ => c.nics.iter().position(|n| {
                    n.mac
                        .as_deref()
                        .is_some_and(|m| m.eq_ignore_ascii_case(nic))
                }),
            };
            let Some(i) = idx else {
                let have: Vec<String> = c
                    .nics
                    .iter()
                    .enumerate()
                    .map(|(i, n)| format!("{i} ({}, {})", mac_of(uuid, i, n), n.network))
                    .collect();
                return Err(HostError::NotFound(format!(
                    "no NIC {nic:?}: name one by its MAC or index ({})",
                    if have.is_empty() {
                        "it has none".to_string()
                    } else {
                        have.join(", ")
                    }
                )));
            };
            c.nics.remove(i);
            parts.push((Part::Devices, None));
        }
    }
    Ok(parts)
}

/// Gives every NIC its effective MAC, so removing one never renumbers the
/// MACs derived for the others.
fn pin_macs(uuid: Uuid, c: &mut api::PartitionConfig) {
    for (i, n) in c.nics.iter_mut().enumerate() {
        n.mac = Some(mac_of(uuid, i, n));
    }
}

fn no_disk(c: &api::PartitionConfig, disk: &str) -> HostError {
    let have: Vec<&str> = c.disks.iter().map(|d| d.name.as_str()).collect();
    HostError::NotFound(format!(
        "no disk {disk:?} in the active configuration ({})",
        if have.is_empty() {
            "it has none".to_string()
        } else {
            have.join(", ")
        }
    ))
}

/// What differs between what runs and what the definition says, for people.
fn diff(uuid: Uuid, running: &api::PartitionConfig, next: &api::PartitionConfig) -> Vec<String> {
    let mut out = Vec::new();
    if running.memory_mib != next.memory_mib {
        out.push(format!(
            "memory {} MiB -> {} MiB",
            running.memory_mib, next.memory_mib
        ));
    }
    if running.vcpus != next.vcpus {
        out.push(format!("vCPUs {} -> {}", running.vcpus, next.vcpus));
    }
    if running.policy.cpu_cap_pct != next.policy.cpu_cap_pct {
        let cap = |c: Option<u32>| c.map_or_else(|| "none".to_string(), |c| format!("{c}%"));
        out.push(format!(
            "CPU cap {} -> {}",
            cap(running.policy.cpu_cap_pct),
            cap(next.policy.cpu_cap_pct)
        ));
    }
    let sizes = |c: &api::PartitionConfig| -> BTreeMap<String, u64> {
        c.disks
            .iter()
            .map(|d| (d.name.clone(), d.size_gib))
            .collect()
    };
    let (a, b) = (sizes(running), sizes(next));
    for (name, size) in &b {
        match a.get(name) {
            None => out.push(format!("disk {name} ({size} GiB) attached")),
            Some(old) if old != size => out.push(format!("disk {name} {old} GiB -> {size} GiB")),
            Some(_) => {}
        }
    }
    for name in a.keys().filter(|n| !b.contains_key(*n)) {
        out.push(format!("disk {name} detached"));
    }
    let nics = |c: &api::PartitionConfig| -> Vec<(String, String)> {
        c.nics
            .iter()
            .enumerate()
            .map(|(i, n)| (mac_of(uuid, i, n), n.network.clone()))
            .collect()
    };
    let (a, b) = (nics(running), nics(next));
    for (mac, net) in b.iter().filter(|x| !a.contains(x)) {
        out.push(format!("NIC {mac} on {net} attached"));
    }
    for (mac, net) in a.iter().filter(|x| !b.contains(x)) {
        out.push(format!("NIC {mac} on {net} detached"));
    }
    out
}

/// Refuses a definition whose VM could never start in the unit (or on the host).
async fn check_fits(host: &Host, rec: &PartitionRecord, want: &Resources) -> HostResult<()> {
    let (limit, whose) = match host.ledger.unit_of(rec.uuid).await? {
        Some(unit) => {
            let (used, free) = host.ledger.unit_usage(unit).await?;
            (
                used.checked_add(&free).unwrap_or(Resources {
                    memory_mib: u64::MAX,
                    vcpus: u64::MAX,
                    disk_gib: u64::MAX,
                    nics: u64::MAX,
                }),
                "its unit's allocation",
            )
        }
        None => (host.ledger.capacity().await?, "the host's capacity"),
    };
    let over: Vec<String> = [
        ("MiB of memory", want.memory_mib, limit.memory_mib),
        ("vCPUs", want.vcpus, limit.vcpus),
        ("NICs", want.nics, limit.nics),
    ]
    .iter()
    .filter(|(_, w, l)| w > l)
    .map(|(what, w, l)| format!("{w} {what} (of {l})"))
    .collect();
    if over.is_empty() {
        return Ok(());
    }
    Err(HostError::conflict(format!(
        "{} would need {} when it runs, more than {whose}: ask for less, or for a larger \
         allocation (`brood unit request`)",
        rec.name,
        over.join(", ")
    )))
}

/// Changes a partition's definition; see the module docs.
pub async fn change(
    host: &Arc<Host>,
    actor: &str,
    uuid: Uuid,
    change: Change,
) -> HostResult<Outcome> {
    let lock = host.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = host.reload(uuid).await?;
    let kind = Kind::of(&rec);
    if kind == Kind::Template {
        return Err(HostError::transition(format!(
            "{} is a template: it never runs again, so it does not change (change its \
             children, or make a new template)",
            rec.name
        )));
    }
    if kind == Kind::Child
        && !matches!(&change, Change::Resources(r) if r.memory_mib.is_none() && r.vcpus.is_none())
    {
        return Err(HostError::transition(format!(
            "{} is a forked child: its memory, vCPUs and devices are its template's (only its \
             CPU cap changes)",
            rec.name
        )));
    }
    let live = match rec.run_state {
        RunState::Stopped | RunState::Crashed => false,
        RunState::Running | RunState::Paused => true,
        RunState::Saved => {
            return Err(HostError::transition(format!(
                "{} is saved: its saved state needs the devices it was saved with; restore it \
                 (`brood vm restore {}`) or stop it to discard the state, then change it",
                rec.name, rec.name
            )));
        }
        RunState::Starting => {
            return Err(HostError::conflict(format!(
                "{} is starting: retry once it runs",
                rec.name
            )));
        }
    };
    // A stopped partition with a change left from its last run gets its
    // disk files in line first, so what follows starts from its definition.
    let rec = if live {
        rec
    } else {
        settle(host, actor, rec).await?
    };
    let configs = configs_of(&rec)?;
    let mut next = configs.clone();
    let parts = edit(uuid, &mut next, &rec.active_config, &change)?;
    let networks = crate::network::names(host).await?;
    for (name, c) in &next {
        crate::convert::validate_config(name, c, &networks)?;
    }
    let next_disks = all_disks(&next)?;
    let active = next.get(&rec.active_config).cloned().unwrap_or_default();
    let root = crate::host::root::root_gib(&host.paths, uuid, &configs)?;
    let mut wants = demand(&active, &next_disks);
    wants.disk_gib = wants.disk_gib.saturating_add(root);
    check_fits(host, &rec, &wants).await?;
    // Published ports: checked as define checks them, and committed with
    // the rest of the change.
    let (old_ports, ports) = match &change {
        Change::Resources(r) if !r.publish.is_empty() || !r.unpublish.is_empty() => {
            let (old, new) =
                crate::network::nat::ports_after(host, uuid, &active, &r.publish, &r.unpublish)
                    .await?;
            (old, Some(new))
        }
        Change::DetachNic { .. } => {
            crate::network::nat::check_keeps_nat(host, uuid, &rec.name, &active).await?;
            (Vec::new(), None)
        }
        _ => (Vec::new(), None),
    };

    let changes = host.feature::<Changes>();
    let old_mark = changes.lock().get(&uuid).cloned();
    let mut running_now = match (&old_mark, live) {
        (Some(m), true) => m.running.clone(),
        _ => configs.get(&rec.active_config).cloned().unwrap_or_default(),
    };
    // Decide what the running VM takes live.
    let machine = host
        .registry
        .running(uuid)
        .map_or(Machine::Microvm, |r| r.vm.spec().machine);
    let apply = change.apply();
    let (mut now, mut later, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    for (part, step) in parts {
        if !live {
            continue;
        }
        let can = part.live(machine) && step.is_some();
        match (apply, can) {
            (Apply::NextStart, _) => {
                later.push(format!("{}: asked for the next start", part.what()))
            }
            (_, true) => {
                if let Some(s) = step {
                    match &s {
                        Live::CpuCap(cap) => running_now.policy.cpu_cap_pct = *cap,
                        Live::Resize { disk, size_gib } => {
                            for d in running_now.disks.iter_mut().filter(|d| &d.name == disk) {
                                d.size_gib = *size_gib;
                            }
                        }
                    }
                    now.push(part.what().to_string());
                    steps.push(s);
                }
            }
            (Apply::Now, false) => {
                return Err(HostError::transition(format!(
                    "{} runs and {}: leave out --apply now (or give --apply next-start) to \
                     change it at its next start, or stop it first",
                    rec.name,
                    machine.no_hotplug_reason(part.what())
                )));
            }
            (Apply::Auto, false) => later.push(format!(
                "{}: {}, so it changes at the next start",
                part.what(),
                machine.no_hotplug_reason(part.what())
            )),
        }
    }

    // The disk space the partition holds: its definition's disks, and
    // while it runs the ones it still has open.
    let mut held: BTreeMap<String, u64> = next_disks.clone();
    if live {
        for d in &running_now.disks {
            let e = held.entry(d.name.clone()).or_insert(0);
            *e = (*e).max(d.size_gib);
        }
    }
    // The image's root disk stays charged (`host::root`).
    let disk_gib = held.values().fold(root, |a, b| a.saturating_add(*b));
    let new_demand = if live {
        Resources {
            disk_gib,
            ..rec.demand
        }
    } else {
        Resources {
            disk_gib,
            ..demand(&active, &next_disks)
        }
    };
    let mut ops = disk_moves(uuid, rec.demand.disk_gib, disk_gib);
    let summary = if live {
        diff(uuid, &running_now, &active)
    } else {
        Vec::new()
    };
    let mark = (!summary.is_empty()).then(|| {
        mark_of(
            running_now.clone(),
            summary.join("; "),
            old_mark
                .as_ref()
                .map_or_else(crate::wire::now, |m| m.view.since.clone()),
        )
    });
    match &mark {
        Some(m) => ops.push(Op::Change(ChangeOp::Mark {
            partition: uuid,
            running: JsonText::from_serialize(&m.running)
                .map_err(|e| HostError::corrupt("encode the running configuration", e))?,
            summary: m.view.summary.clone(),
        })),
        None if old_mark.is_some() => ops.push(Op::Change(ChangeOp::Clear { partition: uuid })),
        None => {}
    }
    if let Some(p) = &ports {
        ops.push(Op::Publish(brood_ledger::PublishOp::Set {
            partition: uuid,
            ports: p.iter().map(crate::network::nat::port_in).collect(),
        }));
        if live {
            now.push("published ports".to_string());
        }
    }
    let patch = PartitionPatch {
        configs: Some(
            JsonText::from_serialize(&next)
                .map_err(|e| HostError::corrupt("encode the configurations", e))?,
        ),
        demand: Some(new_demand),
        ..Default::default()
    };
    let what = describe(&change);
    let new = host
        .update(actor, format!("{} of {}", what, rec.name), &rec, patch, ops)
        .await?;
    changes.set(uuid, mark);
    if let Some(p) = &ports {
        host.feature::<crate::network::nat::Nat>().record(uuid, p);
    }

    // The files and the live VM, after the ledger: a failure puts the
    // ledger back as it was.
    let done = async {
        if live {
            if let Change::AttachDisk(r) = &change {
                crate::host::disk::create(&host.paths.disk(uuid, &r.name), r.size_gib).await?;
            }
            for s in &steps {
                live_step(host, uuid, s).await?;
            }
            if ports.is_some() {
                // The DNATs are in place when the answer comes.
                crate::network::nat::sync(host).await?;
            }
        } else {
            files_to(host, uuid, &configs, &next).await?;
        }
        HostResult::Ok(())
    }
    .await;
    if let Err(e) = done {
        let old_ports = ports.is_some().then_some(old_ports);
        undo(host, actor, &new, &rec, &configs, old_mark, old_ports).await;
        return Err(e);
    }
    if !live {
        remove_detached(host, uuid, &next).await;
    }
    Ok(Outcome {
        rec: new,
        applied_now: now,
        next_start: later,
    })
}

fn describe(c: &Change) -> String {
    match c {
        Change::Resources(r)
            if r.memory_mib.is_none()
                && r.vcpus.is_none()
                && r.cpu_cap_pct.is_none()
                && !r.no_cpu_cap =>
        {
            "a change of published ports".into()
        }
        Change::Resources(_) => "a change of resources".into(),
        Change::AttachDisk(r) => format!("attach disk {}", r.name),
        Change::ResizeDisk { disk, .. } => format!("resize disk {disk}"),
        Change::DetachDisk { disk, .. } => format!("detach disk {disk}"),
        Change::AttachNic(r) => format!("attach a NIC on {}", r.network),
        Change::DetachNic { nic, .. } => format!("detach NIC {nic}"),
    }
}

/// Moves disk space between `available` and the partition (or its unit).
fn disk_moves(uuid: Uuid, held: u64, want: u64) -> Vec<Op> {
    let delta = |gib| Resources {
        disk_gib: gib,
        ..Resources::default()
    };
    match want.cmp(&held) {
        std::cmp::Ordering::Greater => Op::reserve(uuid, &delta(want - held)),
        std::cmp::Ordering::Less => Op::release(uuid, &delta(held - want)),
        std::cmp::Ordering::Equal => Vec::new(),
    }
}

async fn live_step(host: &Host, uuid: Uuid, step: &Live) -> HostResult<()> {
    let running = host
        .registry
        .running(uuid)
        .ok_or_else(|| HostError::conflict("its VM is not there any more; retry"))?;
    match step {
        Live::CpuCap(cap) => running
            .vm
            .set_cpu_cap(*cap)
            .map_err(|e| HostError::engine("change the CPU cap", e)),
        Live::Resize { disk, size_gib } => {
            let path = host.paths.disk(uuid, disk);
            let index = running
                .vm
                .spec()
                .disks
                .iter()
                .position(|d| d.path == path)
                .ok_or_else(|| {
                    HostError::conflict(format!(
                        "disk {disk} is not attached to the running VM (it was attached for \
                         the next start): give --apply next-start"
                    ))
                })?;
            let bytes = size_gib.checked_mul(1 << 30).ok_or_else(|| {
                HostError::invalid(format!("{size_gib} GiB does not fit in 64 bits of bytes"))
            })?;
            running
                .vm
                .resize_disk(index, bytes)
                .await
                .map_err(|e| HostError::engine(format!("grow disk {disk}"), e))
        }
    }
}

/// Puts the ledger back after a failed file or live step.
async fn undo(
    host: &Host,
    actor: &str,
    new: &PartitionRecord,
    old: &PartitionRecord,
    configs: &BTreeMap<String, api::PartitionConfig>,
    old_mark: Option<Mark>,
    old_ports: Option<Vec<api::PublishedPort>>,
) {
    let mut ops = disk_moves(old.uuid, new.demand.disk_gib, old.demand.disk_gib);
    if let Some(p) = &old_ports {
        ops.push(Op::Publish(brood_ledger::PublishOp::Set {
            partition: old.uuid,
            ports: p.iter().map(crate::network::nat::port_in).collect(),
        }));
    }
    match &old_mark {
        Some(m) => {
            if let Ok(running) = JsonText::from_serialize(&m.running) {
                ops.push(Op::Change(ChangeOp::Mark {
                    partition: old.uuid,
                    running,
                    summary: m.view.summary.clone(),
                }));
            }
        }
        None => ops.push(Op::Change(ChangeOp::Clear {
            partition: old.uuid,
        })),
    }
    let patch = PartitionPatch {
        configs: JsonText::from_serialize(configs).ok(),
        demand: Some(old.demand),
        ..Default::default()
    };
    let reason = format!("undo a failed change of {}", old.name);
    match host.update(actor, reason, new, patch, ops).await {
        Ok(_) => {
            host.feature::<Changes>().set(old.uuid, old_mark);
            if let Some(p) = &old_ports {
                host.feature::<crate::network::nat::Nat>()
                    .record(old.uuid, p);
                if let Err(e) = crate::network::nat::sync(host).await {
                    tracing::warn!(partition = %old.uuid, "rules after undoing a change of published ports: {}", crate::host::chain(&e));
                }
            }
        }
        Err(e) => {
            tracing::warn!(partition = %old.uuid, "undoing a failed change: {}", crate::host::chain(&e))
        }
    }
}

/// Makes the disk files of a stopped partition match `next` (from `from`):
/// new disks created, grown disks grown. Detached ones are removed by
/// `remove_detached` once nothing can fail.
async fn files_to(
    host: &Host,
    uuid: Uuid,
    from: &BTreeMap<String, api::PartitionConfig>,
    next: &BTreeMap<String, api::PartitionConfig>,
) -> HostResult<()> {
    let (a, b) = (all_disks(from)?, all_disks(next)?);
    let dir = host.paths.disk_dir(uuid);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
    for (name, size) in &b {
        let path = host.paths.disk(uuid, name);
        match a.get(name) {
            _ if !path.exists() => crate::host::disk::create(&path, *size).await?,
            Some(old) if old < size => grow_file(&path, *size).await?,
            _ => {}
        }
    }
    Ok(())
}

/// Deletes the disk files of `uuid` that no configuration of `next` names
/// (a disk name has no `.`, so the image's overlay and links stay).
async fn remove_detached(host: &Host, uuid: Uuid, next: &BTreeMap<String, api::PartitionConfig>) {
    let keep: BTreeSet<String> = all_disks(next)
        .map(|d| d.into_keys().collect())
        .unwrap_or_default();
    let Ok(mut rd) = tokio::fs::read_dir(host.paths.disk_dir(uuid)).await else {
        return;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".qcow2") else {
            continue;
        };
        if !stem.is_empty() && !stem.contains('.') && !keep.contains(stem) {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}

/// Grows a qcow2 file that no QEMU has open.
async fn grow_file(path: &std::path::Path, size_gib: u64) -> HostResult<()> {
    let out = tokio::process::Command::new("qemu-img")
        .arg("resize")
        .arg("-q")
        .args(["-f", "qcow2"])
        .arg(path)
        .arg(format!("{size_gib}G"))
        .output()
        .await
        .map_err(|e| HostError::io("run qemu-img (install qemu-utils)", e))?;
    if !out.status.success() {
        return Err(HostError::io(
            format!("grow {} to {size_gib} GiB", path.display()),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(())
}

/// Applies a stopped partition's pending change to its disk files (create,
/// grow, delete what the change named), gives back the space of detached
/// disks and clears the mark, in one transaction. The caller holds its lock.
async fn settle(host: &Host, actor: &str, rec: PartitionRecord) -> HostResult<PartitionRecord> {
    let changes = host.feature::<Changes>();
    let Some(running) = changes.running(rec.uuid) else {
        return Ok(rec);
    };
    // A forked child's only change is its CPU cap: its disks are
    // overlays of its template's and are left alone.
    if Kind::of(&rec) != Kind::Plain {
        let new = host
            .update(
                actor,
                format!("the pending change of {} is applied", rec.name),
                &rec,
                PartitionPatch::default(),
                vec![Op::Change(ChangeOp::Clear {
                    partition: rec.uuid,
                })],
            )
            .await?;
        changes.set(rec.uuid, None);
        return Ok(new);
    }
    let configs = configs_of(&rec)?;
    let from = BTreeMap::from([(rec.active_config.clone(), running)]);
    files_to(host, rec.uuid, &from, &configs).await?;
    let disks = all_disks(&configs)?;
    let root = crate::host::root::root_gib(&host.paths, rec.uuid, &configs)?;
    let disk_gib = disks.values().fold(root, |a, b| a.saturating_add(*b));
    let mut ops = disk_moves(rec.uuid, rec.demand.disk_gib, disk_gib);
    ops.push(Op::Change(ChangeOp::Clear {
        partition: rec.uuid,
    }));
    let patch = PartitionPatch {
        demand: Some(Resources {
            disk_gib,
            ..rec.demand
        }),
        ..Default::default()
    };
    let new = host
        .update(
            actor,
            format!("the pending change of {} is applied", rec.name),
            &rec,
            patch,
            ops,
        )
        .await?;
    changes.set(rec.uuid, None);
    remove_detached(host, rec.uuid, &configs).await;
    Ok(new)
}

/// Before a stopped partition starts: its pending change is applied (see
/// [`settle`]). The caller holds its lock.
pub async fn before_start(
    host: &Host,
    actor: &str,
    rec: PartitionRecord,
) -> HostResult<PartitionRecord> {
    settle(host, actor, rec).await
}

/// The record as its VM runs: with a pending change, its configuration is
/// the one the VM was started with (a restore of its saved state, or an
/// attach after broodd restarts, needs the same devices).
pub fn as_running(host: &Host, rec: &PartitionRecord) -> PartitionRecord {
    let Some(running) = host.feature::<Changes>().running(rec.uuid) else {
        return rec.clone();
    };
    let mut r = rec.clone();
    let mut configs = configs_of(rec).unwrap_or_default();
    configs.insert(rec.active_config.clone(), running);
    if let Ok(j) = JsonText::from_serialize(&configs) {
        r.configs = j;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BTreeMap<String, api::PartitionConfig> {
        let mut c = api::PartitionConfig::default();
        c.disks.push(api::DiskConfig {
            name: "data".into(),
            size_gib: 1,
            io_zone: None,
            iops: None,
            mbps: None,
        });
        BTreeMap::from([("default".to_string(), c)])
    }

    #[test]
    fn edits_touch_the_active_configuration_and_say_what_changed() {
        let u = Uuid::from_u128(9);
        let before = cfg();
        let mut next = before.clone();
        let parts = edit(
            u,
            &mut next,
            "default",
            &Change::Resources(api::SetResourcesRequest {
                memory_mib: Some(512),
                vcpus: Some(2),
                cpu_cap_pct: Some(50),
                ..Default::default()
            }),
        )
        .unwrap();
        let kinds: Vec<Part> = parts.iter().map(|p| p.0).collect();
        assert_eq!(kinds, [Part::Memory, Part::Vcpus, Part::CpuCap]);
        let d = diff(u, &before["default"], &next["default"]);
        assert_eq!(
            d,
            [
                "memory 256 MiB -> 512 MiB",
                "vCPUs 1 -> 2",
                "CPU cap none -> 50%"
            ]
        );
        // A disk only grows.
        let shrink = Change::ResizeDisk {
            disk: "data".into(),
            req: api::ResizeDiskRequest {
                size_gib: 1,
                apply: Apply::Auto,
            },
        };
        assert!(edit(u, &mut next.clone(), "default", &shrink).is_err());
        let nothing = Change::Resources(api::SetResourcesRequest::default());
        assert!(edit(u, &mut next.clone(), "default", &nothing).is_err());
    }

    #[test]
    fn nics_keep_their_macs_when_another_is_detached() {
        let u = Uuid::from_u128(0xabcdef);
        let mut c = cfg();
        for net in ["user", "user"] {
            edit(
                u,
                &mut c,
                "default",
                &Change::AttachNic(api::AttachNicRequest {
                    network: net.into(),
                    mac: None,
                    apply: Apply::Auto,
                }),
            )
            .unwrap();
        }
        let macs: Vec<String> = c["default"]
            .nics
            .iter()
            .filter_map(|n| n.mac.clone())
            .collect();
        assert_eq!(macs.len(), 2);
        assert_ne!(macs[0], macs[1]);
        let before = c.clone();
        edit(
            u,
            &mut c,
            "default",
            &Change::DetachNic {
                nic: macs[0].to_uppercase(),
                apply: Apply::Auto,
            },
        )
        .unwrap();
        assert_eq!(c["default"].nics[0].mac.as_deref(), Some(macs[1].as_str()));
        let d = diff(u, &before["default"], &c["default"]);
        assert_eq!(d, [format!("NIC {} on user detached", macs[0])]);
        // A third NIC never takes a MAC in use.
        edit(
            u,
            &mut c,
            "default",
            &Change::AttachNic(api::AttachNicRequest {
                network: "user".into(),
                mac: None,
                apply: Apply::Auto,
            }),
        )
        .unwrap();
        let now: BTreeSet<Option<String>> =
            c["default"].nics.iter().map(|n| n.mac.clone()).collect();
        assert_eq!(now.len(), 2);
        assert!(matches!(
            edit(
                u,
                &mut c,
                "default",
                &Change::DetachNic {
                    nic: "7".into(),
                    apply: Apply::Auto
                }
            ),
            Err(HostError::NotFound(_))
        ));
    }

    #[test]
    fn disk_space_moves_by_the_difference() {
        let u = Uuid::from_u128(1);
        assert!(disk_moves(u, 3, 3).is_empty());
        assert_eq!(
            disk_moves(u, 1, 3),
            Op::reserve(
                u,
                &Resources {
                    disk_gib: 2,
                    ..Resources::default()
                }
            )
        );
        assert_eq!(
            disk_moves(u, 3, 1),
            Op::release(
                u,
                &Resources {
                    disk_gib: 2,
                    ..Resources::default()
                }
            )
        );
    }
}
