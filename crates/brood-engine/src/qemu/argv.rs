//! The QEMU command line, built by a pure function from a `Launch` (the
//! spec plus everything the engine resolved on the host: accelerator, paths,
//! file descriptors). No I/O here, so golden tests pin the exact argv.
//!
//! Sockets are not bound by QEMU: the engine binds them, passes the
//! listening descriptors at fixed numbers ([`QMP_FD`], [`CONSOLE_FD`],
//! [`AGENT_FD`], [`FDMON_FD`], taps from [`FIRST_TAP_FD`]) and QEMU uses
//! them with `fd=N`. The engine can connect the moment QEMU is spawned, with
//! no polling for a socket file to appear.
//!
//! QEMU runs confined (see `jail`): as its own user, in a mount namespace
//! whose root is the VM's run directory, under its seccomp sandbox. So the
//! paths on this command line are paths inside that root, disk images are
//! descriptors (`-add-fd`, opened as `/dev/fdset/N`) with every layer of a
//! backing chain named explicitly, and nothing is opened by a host path.

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
/// Descriptor of the listening socket of the second QMP monitor, used only
/// to hand QEMU descriptors (`add-fd`, `getfd`) for migration.
pub const FDMON_FD: i32 = 6;
/// Descriptor of the first tap; the n-th bridged NIC gets `FIRST_TAP_FD + n`.
/// Disk image descriptors follow the taps.
pub const FIRST_TAP_FD: i32 = 7;

/// QEMU's seccomp filter: no obsolete system calls, no set*uid, no fork or
/// exec, no changing priorities or affinities (what libvirt passes).
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Kernel arguments brood always passes, before the spec's own.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// Kernel arguments for a microvm: it has no PCI bus (its devices are
/// virtio-mmio, found through the ACPI DSDT), so the kernel is told not to
/// probe for one (`pci=off`) and not to run `pci_arch_init`, which looks
/// for a way to reach PCI configuration space and, finding none, prints
/// `PCI: Fatal: No config space access function found` at KERN_ERR on
/// every boot whatever `pci=` says (arch/x86/pci/init.c, Linux 6.1).
/// `initcall_blacklist` (init/main.c) skips just that initcall.
pub const MICROVM_CMDLINE: &str = "pci=off initcall_blacklist=pci_arch_init";

/// One image of a disk's backing chain, as a descriptor QEMU holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchLayer {
    /// Descriptor number in QEMU (also the number of its fd set).
    pub fd: i32,
    /// Format of the image.
    pub format: DiskFormat,
}

/// A disk as QEMU opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDisk {
    /// The images, top first: the one the guest sees (the image, or the
    /// temporary overlay over it), then each backing file in turn. A qcow2
    /// layer gets exactly the next one as its backing (or none), whatever
    /// its header says.
    pub layers: Vec<LaunchLayer>,
    /// The top layer is opened read-only (backing layers always are).
    pub read_only: bool,
    /// Served over NBD instead (`layers` empty): the socket as QEMU sees
    /// it and the export's name.
    pub nbd: Option<(PathBuf, String)>,
    /// Caps on the guest's requests (a throttle filter over the disk).
    pub throttle: Option<crate::spec::Throttle>,
}

/// How long QEMU's NBD client holds requests while its server is away
/// (restarted): they are sent again on reconnect, and fail with EIO only
/// after this (`reconnect-delay`, QEMU 5.0+).
pub const NBD_RECONNECT_S: u32 = 60;

/// A NIC as QEMU sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchNic {
    /// Tap descriptor number in QEMU, or `None` for user-mode networking.
    pub tap_fd: Option<i32>,
    /// Descriptor of the listening switch-port socket (a `Switch` NIC).
    pub stream_fd: Option<i32>,
    /// Guest MAC.
    pub mac: MacAddr,
    /// For user-mode networking: `restrict=on` (no host, no outside).
    pub restrict: bool,
}

/// Everything the command line is made from.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// The VM.
    pub spec: &'a VmSpec,
    /// Resolved accelerator.
    pub accel: Accel,
    /// The kernel, as QEMU sees it.
    pub kernel: PathBuf,
    /// The initramfs, as QEMU sees it.
    pub initrd: Option<PathBuf>,
    /// Guest memory file, as QEMU sees it.
    pub mem_path: PathBuf,
    /// Map it shared (a VM's own memory, which a template keeps) or
    /// private (a forked child: copy-on-write over its template's file,
    /// which it opens read-only).
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
}

/// The kernel command line for a launch.
pub fn kernel_cmdline(l: &Launch<'_>) -> String {
    let mut c = String::from(BASE_CMDLINE);
    if l.spec.machine == Machine::Microvm {
        c.push(' ');
        c.push_str(MICROVM_CMDLINE);
    }
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
            "memory-backend-file,id=mem,size={}M,mem-path={},{}",
            s.mem_mib,
            opt(&l.mem_path),
            // A child opens its template's memory read-only and maps it
            // private and writable (`rom=off`, QEMU 8.2+): it can never
            // write the template's file.
            if l.mem_shared {
                "share=on"
            } else {
                "share=off,readonly=on,rom=off"
            }
        ),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-sandbox",
        SANDBOX,
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
        push(&["-kernel", &opt(&l.kernel)]);
        if let Some(initrd) = &l.initrd {
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
        &format!("socket,id=fdmon,fd={FDMON_FD},server=on,wait=off"),
        "-mon",
        "chardev=fdmon,mode=control",
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
        // Deepest backing file first: a node must exist before another
        // names it as its backing.
        if let Some((socket, export)) = &d.nbd {
            let nbd = serde_json::json!({
                "driver": "nbd",
                "node-name": format!("disk{i}"),
                "server": {"type": "unix", "path": socket.display().to_string()},
                "export": export,
                "reconnect-delay": NBD_RECONNECT_S,
                "read-only": d.read_only,
            });
            push(&["-blockdev", &nbd.to_string()]);
        }
        for (j, layer) in d.layers.iter().enumerate().rev() {
            let node = |kind: &str| match j {
                0 => format!("{kind}{i}"),
                _ => format!("{kind}{i}b{j}"),
            };
            let ro = j > 0 || d.read_only;
            let file = serde_json::json!({
                "driver": "file",
                "node-name": node("file"),
                "filename": format!("/dev/fdset/{}", layer.fd),
                "read-only": ro,
                "discard": "unmap",
            });
            let mut fmt = serde_json::json!({
                "driver": layer.format.as_str(),
                "node-name": node("disk"),
                "file": node("file"),
                "read-only": ro,
            });
            if layer.format == DiskFormat::Qcow2 {
                // Never the backing file named in the image itself.
                fmt["backing"] = match d.layers.get(j + 1) {
                    Some(_) => serde_json::Value::from(format!("disk{i}b{}", j + 1)),
                    None => serde_json::Value::Null,
                };
            }
            push(&[
                "-add-fd",
                &format!("fd={},set={}", layer.fd, layer.fd),
                "-blockdev",
                &file.to_string(),
                "-blockdev",
                &fmt.to_string(),
            ]);
        }
        let mut drive = format!("disk{i}");
        if let Some(t) = d.throttle.filter(|t| t.iops.is_some() || t.mbps.is_some()) {
            // One group per disk: its caps are its own (QEMU 2.11+
            // throttle filter driver; x- names are the group's limits).
            let mut group = format!("throttle-group,id=tg{i}");
            if let Some(n) = t.iops {
                group.push_str(&format!(",x-iops-total={n}"));
            }
            if let Some(m) = t.mbps {
                group.push_str(&format!(",x-bps-total={}", u64::from(m) << 20));
            }
            let filter = serde_json::json!({
                "driver": "throttle",
                "node-name": format!("thr{i}"),
                "throttle-group": format!("tg{i}"),
                "file": drive,
            });
            push(&["-object", &group, "-blockdev", &filter.to_string()]);
            drive = format!("thr{i}");
        }
        push(&[
            "-device",
            &format!("virtio-blk-{dev},drive={drive},id=vd{i}"),
        ]);
    }
    for (i, n) in l.nics.iter().enumerate() {
        let backend = match (n.tap_fd, n.stream_fd) {
            (Some(fd), _) => format!("tap,id=net{i},fd={fd}"),
            // The switch connects; QEMU (net/stream.c, 7.2+) listens again
            // when it goes, so a restarted switch just connects anew.
            (None, Some(fd)) => format!("stream,id=net{i},server=on,addr.type=fd,addr.str={fd}"),
            // restrict=on: slirp forwards nothing out, and so nothing to
            // 10.0.2.2, which is the host's loopback.
            (None, None) if n.restrict => format!("user,id=net{i},restrict=on"),
            (None, None) => format!("user,id=net{i}"),
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
            kernel: "/kernel".into(),
            initrd: Some("/initrd".into()),
            mem_path: "/mem".into(),
            mem_shared: true,
            firmware: Some("/usr/share/qemu/qboot.rom".into()),
            tb_size_mib: 64,
            disks: vec![LaunchDisk {
                layers: vec![LaunchLayer {
                    fd: 8,
                    format: DiskFormat::Qcow2,
                }],
                read_only: false,
                nbd: None,
                throttle: None,
            }],
            nics: vec![LaunchNic {
                tap_fd: Some(FIRST_TAP_FD),
                stream_fd: None,
                mac: "52:54:00:00:00:01".parse().unwrap(),
                restrict: true,
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
        let expected = r#"-name brood-t1,debug-threads=on
            -machine microvm,acpi=on,rtc=on,memory-backend=mem
            -accel tcg,tb-size=64 -cpu qemu64,+arat -m 256M -smp 1
            -object memory-backend-file,id=mem,size=256M,mem-path=/mem,share=on
            -nodefaults -no-user-config -display none -no-reboot
            -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny
            -bios /usr/share/qemu/qboot.rom -kernel /kernel -initrd /initrd
            -append |console=ttyS0 panic=-1 quiet pci=off initcall_blacklist=pci_arch_init tsc_early_khz=2596098 foo=bar|
            -chardev socket,id=qmp,fd=3,server=on,wait=off -mon chardev=qmp,mode=control
            -chardev socket,id=fdmon,fd=6,server=on,wait=off -mon chardev=fdmon,mode=control
            -chardev socket,id=console,fd=4,server=on,wait=off -serial chardev:console
            -device virtio-serial-device,id=vser0,max_ports=2
            -chardev socket,id=agent,fd=5,server=on,wait=off
            -device virtserialport,bus=vser0.0,chardev=agent,id=agentport,name=org.brood.agent.0
            -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-device,rng=rng0
            -add-fd fd=8,set=8
            -blockdev {"discard":"unmap","driver":"file","filename":"/dev/fdset/8","node-name":"file0","read-only":false}
            -blockdev {"backing":null,"driver":"qcow2","file":"file0","node-name":"disk0","read-only":false}
            -device virtio-blk-device,drive=disk0,id=vd0
            -netdev tap,id=net0,fd=7 -device virtio-net-device,netdev=net0,mac=52:54:00:00:00:01,id=nic0"#;
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
    fn a_throttled_disk_sits_behind_its_own_throttle_group() {
        let s = spec();
        let mut l = launch(&s);
        l.disks[0].throttle = Some(crate::spec::Throttle {
            iops: Some(50),
            mbps: Some(2),
        });
        let text = |l: &Launch<'_>| {
            qemu_argv(l)
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let j = text(&l);
        assert!(
            j.contains("-object throttle-group,id=tg0,x-iops-total=50,x-bps-total=2097152"),
            "{j}"
        );
        assert!(
            j.contains(
                r#""driver":"throttle","file":"disk0","node-name":"thr0","throttle-group":"tg0""#
            ) || j.contains(r#""throttle-group":"tg0""#),
            "{j}"
        );
        assert!(j.contains("drive=thr0,id=vd0"), "{j}");
        // No caps, no filter.
        l.disks[0].throttle = Some(crate::spec::Throttle::default());
        let j = text(&l);
        assert!(
            !j.contains("throttle") && j.contains("drive=disk0,id=vd0"),
            "{j}"
        );
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
        l.mem_path = "/template-mem".into();
        l.nics[0].stream_fd = Some(9);
        let joined = qemu_argv(&l)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains("-netdev tap,id=net0,fd=7 "));
        l.nics[0].tap_fd = None;
        let joined = qemu_argv(&l)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains("-netdev stream,id=net0,server=on,addr.type=fd,addr.str=9 "));
        l.nics[0].stream_fd = None;
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
        assert!(joined.contains("-netdev user,id=net0,restrict=on"));
        assert!(joined.ends_with("-incoming defer"));
        assert!(joined.contains("mem-path=/template-mem,share=off,readonly=on,rom=off"));
        assert!(argv.contains(&"console=ttyS0 panic=-1 quiet".to_string()));
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[test]
    fn a_backing_chain_is_explicit_and_user_net_opt_in_is_unrestricted() {
        let mut s = VmSpec::new("t", "/k");
        s.agent = false;
        let mut l = Launch {
            spec: &s,
            accel: Accel::Kvm,
            kernel: "/kernel".into(),
            initrd: None,
            mem_path: "/mem".into(),
            mem_shared: true,
            firmware: None,
            tb_size_mib: 64,
            disks: vec![LaunchDisk {
                layers: vec![
                    LaunchLayer {
                        fd: 9,
                        format: DiskFormat::Qcow2,
                    },
                    LaunchLayer {
                        fd: 10,
                        format: DiskFormat::Raw,
                    },
                ],
                read_only: false,
                nbd: None,
                throttle: None,
            }],
            nics: vec![LaunchNic {
                tap_fd: None,
                stream_fd: None,
                mac: "52:54:00:00:00:02".parse().unwrap(),
                restrict: false,
            }],
            incoming: false,
        };
        let argv: Vec<String> = qemu_argv(&l)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = argv.join(" ");
        // The base first, read-only, then the top naming it as its backing.
        let base = joined.find(r#""node-name":"disk0b1""#).unwrap();
        let top = joined.find(r#""backing":"disk0b1""#).unwrap();
        assert!(base < top, "{joined}");
        assert!(
            joined.contains(r#""filename":"/dev/fdset/10","node-name":"file0b1","read-only":true"#)
        );
        assert!(joined.contains("-netdev user,id=net0 "));
        assert!(!joined.contains("restrict"));
        // No host path at all: everything is inside the jail or a descriptor.
        l.disks[0].read_only = true;
        let ro = qemu_argv(&l)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            ro.contains(r#""node-name":"disk0","read-only":true"#),
            "{ro}"
        );
    }
}
