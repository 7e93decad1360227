//! The QEMU command line, built by a pure function from a `Launch` (the
//! spec plus everything the engine resolved on the host: accelerator, paths,
//! file descriptors). No I/O here, so golden tests pin the exact argv.
//!
//! Sockets are not bound by QEMU: the engine binds them, passes the
//! listening descriptors at fixed numbers ([`QMP_FD`], [`CONSOLE_FD`],
//! [`AGENT_FD`], taps from [`FIRST_TAP_FD`]) and QEMU uses them with
//! `fd=N`. The engine can connect the moment QEMU is spawned, with no
//! polling for a socket file to appear.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::host::Accel;
use crate::spec::{DiskFormat, MacAddr, Machine, VmSpec};

/// Descriptor of the listening QMP socket in QEMU.
pub const QMP_FD: i32 = 3;
/// Descriptor of the listening serial-console socket in QEMU.
pub const CONSOLE_FD: i32 = 4;
/// Descriptor of the listening agent-port socket in QEMU.
pub const AGENT_FD: i32 = 5;
/// Descriptor of the first tap; the n-th bridged NIC gets `FIRST_TAP_FD + n`.
pub const FIRST_TAP_FD: i32 = 6;

/// Kernel arguments brood always passes, before the spec's own.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// A disk as QEMU opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDisk {
    /// The file QEMU opens: the image, or the temporary overlay over it.
    pub path: PathBuf,
    /// Format of `path`.
    pub format: DiskFormat,
    /// Opened read-only.
    pub read_only: bool,
}

/// A NIC as QEMU sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchNic {
    /// Tap descriptor number in QEMU, or `None` for user-mode networking.
    pub tap_fd: Option<i32>,
    /// Guest MAC.
    pub mac: MacAddr,
}

/// Everything the command line is made from.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// The VM.
    pub spec: &'a VmSpec,
    /// Resolved accelerator.
    pub accel: Accel,
    /// Guest memory file.
    pub mem_path: PathBuf,
    /// Map it shared (a VM's own memory, which a template keeps) or
    /// private (a forked child: copy-on-write over its template's file).
    pub mem_shared: bool,
    /// Firmware for microvm (qboot) when installed; QEMU's default otherwise.
    pub firmware: Option<PathBuf>,
    /// TCG translation-cache size in MiB.
    pub tb_size_mib: u32,
    /// Disks, in order.
    pub disks: Vec<LaunchDisk>,
    /// NICs, in order.
    pub nics: Vec<LaunchNic>,
    /// Start with `-incoming defer`, waiting for `migrate-incoming`.
    pub incoming: bool,
    /// The VM's run directory. QEMU writes its pid there, which also puts
    /// the directory in its command line: how a restarted broodd finds it.
    pub run_dir: PathBuf,
}

/// The kernel command line for a launch.
pub fn kernel_cmdline(l: &Launch<'_>) -> String {
    let mut c = String::from(BASE_CMDLINE);
    if let Accel::Tcg { tsc_khz: Some(khz) } = l.accel {
        c.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let extra = l.spec.cmdline.trim();
    if !extra.is_empty() {
        c.push(' ');
        c.push_str(extra);
    }
    c
}

/// Escapes a value for QEMU's `key=value,...` option syntax (a comma is doubled).
fn opt(v: impl AsRef<std::ffi::OsStr>) -> String {
    v.as_ref().to_string_lossy().replace(',', ",,")
}

/// Builds the argv (without the program name).
pub fn qemu_argv(l: &Launch<'_>) -> Vec<OsString> {
    let s = l.spec;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|x| x.to_string()));
    push(&["-name", &format!("brood-{},debug-threads=on", opt(&s.name))]);
    let (machine, dev) = match s.machine {
        // ACPI on: a stock kernel finds virtio-mmio devices in the DSDT only
        // (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is off in Debian's kernels).
        Machine::Microvm => ("microvm,acpi=on,rtc=on", "device"),
        Machine::Q35 => ("q35", "pci"),
    };
    push(&["-machine", &format!("{machine},memory-backend=mem")]);
    match l.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        // qemu64 lacks ARAT (an APIC timer that keeps running in deep C
        // states); without it Linux keeps the LAPIC in periodic mode and an
        // idle guest takes all HZ=250 ticks, each slow under TCG (about 7%
        // of a host CPU per idle VM). With it the guest goes tickless.
        Accel::Tcg { .. } => push(&[
            "-accel",
            &format!("tcg,tb-size={}", l.tb_size_mib),
            "-cpu",
            "qemu64,+arat",
        ]),
    }
    push(&[
        "-m",
        &format!("{}M", s.mem_mib),
        "-smp",
        &s.vcpus.to_string(),
    ]);
    push(&[
        "-object",
        &format!(
            "memory-backend-file,id=mem,size={}M,mem-path={},share={}",
            s.mem_mib,
            opt(&l.mem_path),
            if l.mem_shared { "on" } else { "off" }
        ),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-pidfile",
        &opt(l.run_dir.join("qemu.pid")),
    ]);
    if let (Machine::Microvm, Some(fw)) = (s.machine, &l.firmware) {
        push(&["-bios", &opt(fw)]);
    }
    // A forked child never boots: its guest is loaded from the template's
    // state. Without -kernel QEMU does not keep a copy of the kernel and
    // initramfs for the firmware (about 18 MiB of every child's memory).
    // (q35 keeps them: its linuxboot option ROM is a RAM block the
    // template's state names, so the child must have it too.)
    if l.mem_shared || !l.incoming || s.machine == Machine::Q35 {
        push(&["-kernel", &opt(&s.kernel)]);
        if let Some(initrd) = &s.initrd {
            push(&["-initrd", &opt(initrd)]);
        }
        push(&["-append", &kernel_cmdline(l)]);
    }
    push(&[
        "-chardev",
        &format!("socket,id=qmp,fd={QMP_FD},server=on,wait=off"),
        "-mon",
        "chardev=qmp,mode=control",
        "-chardev",
        &format!("socket,id=console,fd={CONSOLE_FD},server=on,wait=off"),
        "-serial",
        "chardev:console",
    ]);
    if s.agent {
        push(&[
            "-device",
            &format!("virtio-serial-{dev},id=vser0,max_ports=2"),
            "-chardev",
            &format!("socket,id=agent,fd={AGENT_FD},server=on,wait=off"),
            "-device",
            &format!(
                // The id makes QEMU report the guest end in VSERPORT_CHANGE
                // (hw/char/virtio-console.c sends it only for a device with an id).
                "virtserialport,bus=vser0.0,chardev=agent,id={},name={}",
                crate::agent::AGENT_PORT_ID,
                brood_proto::AGENT_PORT_NAME
            ),
        ]);
    }
    push(&[
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        &format!("virtio-rng-{dev},rng=rng0"),
    ]);
    for (i, d) in l.disks.iter().enumerate() {
        let ro = if d.read_only { "on" } else { "off" };
        push(&[
            "-blockdev",
            &format!(
                "driver=file,node-name=file{i},filename={},read-only={ro},discard=unmap",
                opt(&d.path)
            ),
            "-blockdev",
            &format!(
                "driver={},node-name=disk{i},file=file{i},read-only={ro}",
                d.format.as_str()
            ),
            "-device",
            &format!("virtio-blk-{dev},drive=disk{i},id=vd{i}"),
        ]);
    }
    for (i, n) in l.nics.iter().enumerate() {
        let backend = match n.tap_fd {
            Some(fd) => format!("tap,id=net{i},fd={fd}"),
            None => format!("user,id=net{i}"),
        };
        push(&[
            "-netdev",
            &backend,
            "-device",
            &format!("virtio-net-{dev},netdev=net{i},mac={},id=nic{i}", n.mac),
        ]);
    }
    if l.incoming {
        push(&["-incoming", "defer"]);
    }
    a.into_iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{NicBackend, NicSpec};

    fn launch(spec: &VmSpec) -> Launch<'_> {
        Launch {
            spec,
            accel: Accel::Tcg {
                tsc_khz: Some(2_596_098),
            },
            mem_path: "/dev/shm/brood/t/mem".into(),
            mem_shared: true,
            run_dir: "/dev/shm/brood/t".into(),
            firmware: Some("/usr/share/qemu/qboot.rom".into()),
            tb_size_mib: 64,
            disks: vec![LaunchDisk {
                path: "/img/a,b.qcow2".into(),
                format: DiskFormat::Qcow2,
                read_only: false,
            }],
            nics: vec![LaunchNic {
                tap_fd: Some(FIRST_TAP_FD),
                mac: "52:54:00:00:00:01".parse().unwrap(),
            }],
            incoming: false,
        }
    }

    fn spec() -> VmSpec {
        let mut s = VmSpec::new("t1", "/img/vmlinuz");
        s.initrd = Some("/img/initrd.img".into());
        s.cmdline = "foo=bar".into();
        s.nics.push(NicSpec {
            backend: NicBackend::Bridge("br0".into()),
            mac: None,
        });
        s
    }

    #[test]
    fn golden_microvm_tcg() {
        let s = spec();
        let argv: Vec<String> = qemu_argv(&launch(&s))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let expected = "-name brood-t1,debug-threads=on \
            -machine microvm,acpi=on,rtc=on,memory-backend=mem \
            -accel tcg,tb-size=64 -cpu qemu64,+arat -m 256M -smp 1 \
            -object memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/brood/t/mem,share=on \
            -nodefaults -no-user-config -display none -no-reboot -pidfile /dev/shm/brood/t/qemu.pid \
            -bios /usr/share/qemu/qboot.rom -kernel /img/vmlinuz -initrd /img/initrd.img \
            -append |console=ttyS0 panic=-1 quiet tsc_early_khz=2596098 foo=bar| \
            -chardev socket,id=qmp,fd=3,server=on,wait=off -mon chardev=qmp,mode=control \
            -chardev socket,id=console,fd=4,server=on,wait=off -serial chardev:console \
            -device virtio-serial-device,id=vser0,max_ports=2 \
            -chardev socket,id=agent,fd=5,server=on,wait=off \
            -device virtserialport,bus=vser0.0,chardev=agent,id=agentport,name=org.brood.agent.0 \
            -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-device,rng=rng0 \
            -blockdev driver=file,node-name=file0,filename=/img/a,,b.qcow2,read-only=off,discard=unmap \
            -blockdev driver=qcow2,node-name=disk0,file=file0,read-only=off \
            -device virtio-blk-device,drive=disk0,id=vd0 \
            -netdev tap,id=net0,fd=6 -device virtio-net-device,netdev=net0,mac=52:54:00:00:00:01,id=nic0";
        let expected: Vec<String> = expected
            .split(' ')
            .collect::<Vec<_>>()
            .join(" ")
            .split('|')
            .enumerate()
            .flat_map(|(i, part)| {
                if i % 2 == 1 {
                    vec![part.to_string()]
                } else {
                    part.split_whitespace().map(String::from).collect()
                }
            })
            .collect();
        assert_eq!(argv, expected);
    }

    #[test]
    fn q35_kvm_incoming_without_agent() {
        let mut s = spec();
        s.machine = Machine::Q35;
        s.agent = false;
        s.cmdline.clear();
        let mut l = launch(&s);
        l.accel = Accel::Kvm;
        l.incoming = true;
        l.mem_shared = false;
        l.mem_path = "/dev/shm/brood/templates/t/mem".into();
        l.nics[0].tap_fd = None;
        let argv: Vec<String> = qemu_argv(&l)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = argv.join(" ");
        assert!(joined.contains("-machine q35,memory-backend=mem"));
        assert!(joined.contains("-accel kvm -cpu host"));
        assert!(!joined.contains("-bios"));
        assert!(!joined.contains("virtserialport"));
        assert!(joined.contains("virtio-blk-pci,drive=disk0"));
        assert!(joined.contains("-netdev user,id=net0"));
        assert!(joined.ends_with("-incoming defer"));
        assert!(joined.contains("mem-path=/dev/shm/brood/templates/t/mem,share=off"));
        assert!(argv.contains(&"console=ttyS0 panic=-1 quiet".to_string()));
    }
}
