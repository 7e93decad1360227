//! Changing a live VM's devices and limits: which changes a machine type
//! takes while it runs ([`Machine::hotplug`]), growing a disk with QMP
//! `block_resize`, and the vCPU cap of its cgroup. What cannot change live
//! is applied by broodd at the VM's next start; this module only says so.
//!
//! What QEMU 10.0 answers on `microvm` (checked against
//! `qemu-system-x86_64 -M microvm,acpi=on -m 128M,slots=2,maxmem=1G`):
//! `device_add virtio-blk-device` and `virtio-net-device` fail with "Bus
//! 'virtio-mmio-bus.23' does not support hotplugging" (virtio-mmio
//! transports are fixed at machine creation), `device_add pc-dimm` with
//! "Device 'pc-dimm' can not be hotplugged on this machine", and
//! `query-hotpluggable-cpus` with "machine does not support hot-plugging
//! CPUs". virtio-mem exists only as `virtio-mem-pci`. `q35` as brood
//! builds it has no `maxmem`/`slots`, no `maxcpus` above `-smp` and no
//! PCIe root ports, so it has nowhere to plug them either. A disk that is
//! already attached can grow on both: `block_resize` changes the image
//! and virtio-blk tells the guest its new capacity (a config-change
//! interrupt; Linux logs "new size" and updates `/sys/block/vdX/size`).

use serde_json::json;

use crate::EngineError;
use crate::spec::Machine;
use crate::vm::Vm;

/// What a running VM of a machine type can take without a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hotplug {
    /// Memory added or removed (pc-dimm, virtio-mem).
    pub memory: bool,
    /// vCPUs added or removed.
    pub vcpus: bool,
    /// Disks and NICs attached or detached.
    pub devices: bool,
    /// An attached disk grown.
    pub disk_resize: bool,
    /// The CPU cap changed (a cgroup limit, outside the guest).
    pub cpu_cap: bool,
}

impl Machine {
    /// What a running VM of this machine type, as brood builds its command
    /// line, can change without a restart (see the module docs for QEMU's
    /// own answers).
    pub fn hotplug(self) -> Hotplug {
        match self {
            Machine::Microvm | Machine::Q35 => Hotplug {
                memory: false,
                vcpus: false,
                devices: false,
                disk_resize: true,
                cpu_cap: true,
            },
        }
    }

    /// Why this machine type cannot hotplug `what`, for messages.
    pub fn no_hotplug_reason(self, what: &str) -> String {
        match self {
            Machine::Microvm => format!(
                "the microvm machine cannot hotplug {what} (virtio-mmio devices, memory and \
                 vCPUs are fixed when QEMU starts)"
            ),
            Machine::Q35 => format!(
                "a q35 VM as brood starts it cannot hotplug {what} (no memory slots, spare \
                 vCPUs or PCIe root ports)"
            ),
        }
    }
}

impl Vm {
    /// Resizes disk `index` of the spec to `bytes` (the caller refuses a
    /// shrink: it cuts off whatever the guest kept there) with QMP `block_resize` on its top node (`disk<index>`).
    pub async fn block_resize(&self, index: usize, bytes: u64) -> Result<(), EngineError> {
        if index >= self.spec.disks.len() {
            return Err(EngineError::InvalidSpec(format!(
                "the VM has {} disks, no disk {index}",
                self.spec.disks.len()
            )));
        }
        if self.spec.disks.get(index).is_some_and(|d| d.read_only) {
            return Err(EngineError::InvalidSpec(format!(
                "disk {index} is read-only: it cannot be resized"
            )));
        }
        let node = super::keep::top_node(self, index).await;
        let args = json!({"node-name": node, "size": bytes});
        self.qmp
            .execute_raw("block_resize", Some(args))
            .await
            .map(|_| ())
            .map_err(EngineError::Qmp)
    }

    /// Sets the link of NIC `index` (`nic<index>` in the argv) up or down
    /// with QMP `set_link`: virtio-net clears or sets its link-up status
    /// bit and raises a config interrupt, so the guest's carrier follows
    /// (one that is paused sees it when it continues).
    pub async fn set_link(&self, index: usize, up: bool) -> Result<(), EngineError> {
        if index >= self.spec.nics.len() {
            return Err(EngineError::InvalidSpec(format!(
                "the VM has {} NICs, no NIC {index}",
                self.spec.nics.len()
            )));
        }
        let args = json!({"name": format!("nic{index}"), "up": up});
        self.qmp
            .execute_raw("set_link", Some(args))
            .await
            .map(|_| ())
            .map_err(EngineError::Qmp)
    }

    /// Changes the VM's CPU cap (percent of one CPU; `None` removes it).
    pub fn set_cpu_cap(&self, pct: Option<u32>) -> Result<(), EngineError> {
        match self.cgroup() {
            Some(cg) => cg.set_cpu_cap(pct),
            None => Err(EngineError::InvalidState {
                op: "change the CPU cap of",
                state: "not in a cgroup".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resize_and_cpu_cap_change_live() {
        for m in [Machine::Microvm, Machine::Q35] {
            let h = m.hotplug();
            assert!(h.disk_resize && h.cpu_cap);
            assert!(!h.memory && !h.vcpus && !h.devices);
            assert!(m.no_hotplug_reason("memory").contains("memory"));
        }
    }
}
