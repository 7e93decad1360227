//! Confining QEMU. Every QEMU brood starts runs:
//!
//! - as a user of its own: a uid picked per VM from [`UID_BASE`]..+[`UID_SPAN`]
//!   (no passwd entry), with the VM's gid (its own, or for a forked child its
//!   template's, which is what lets it read the template's memory file) and
//!   no supplementary groups but `kvm` when it uses /dev/kvm. A uid per VM
//!   rather than one shared user: a QEMU taken over by its guest cannot
//!   signal, ptrace or read the /proc files of another VM's QEMU, and
//!   RLIMIT_NPROC counts one VM's threads only;
//! - with no capabilities (the bounding set emptied, then set*uid from root
//!   clears the rest) and `PR_SET_NO_NEW_PRIVS`;
//! - in a mount namespace of its own whose root (a chroot) is the VM's run
//!   directory, holding only: /usr read-only (QEMU, its libraries and
//!   firmware), the `lib*`/`bin` links of a merged-/usr host, /etc/ld.so.cache,
//!   a few device nodes (null, zero, random, urandom, kvm), and read-only
//!   binds of the kernel, the initramfs and, for a forked child, its
//!   template's memory file. Disks, sockets, taps and migration streams are
//!   descriptors handed in, never paths;
//! - in a network namespace of its own (only a loopback of its own), unless
//!   a NIC is `UserUnrestricted`, whose slirp must open host sockets: a
//!   tap is a descriptor and works from any namespace, and a restricted
//!   slirp opens none. So a QEMU taken over cannot connect to the host's
//!   loopback services itself either;
//! - with rlimits: no core dumps, bounded descriptors and threads;
//! - under QEMU's seccomp sandbox (`argv::SANDBOX`).
//!
//! QEMU's own `-run-with user=,chroot=` cannot be used: it changes uid after
//! installing the sandbox, whose `elevateprivileges=deny` then kills it
//! (QEMU 10.0). So the engine does it between fork and exec, as libvirt and
//! Firecracker's jailer do. Everything `enter` needs is computed by
//! `Jail::prepare` beforehand, because after fork only async-signal-safe
//! calls are allowed.
//!
//! All of this needs root. An engine run by another user (`brood run` as
//! yourself) starts QEMU as that user, already unprivileged, with the
//! sandbox, `NoNewPrivs` and the rlimits but no namespaces or chroot.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::EngineError;

/// First uid brood gives a QEMU.
pub const UID_BASE: u32 = 1_900_000_000;
/// How many uids brood picks from.
pub const UID_SPAN: u32 = 1 << 20;
/// Most descriptors a QEMU may hold.
const NOFILE: u64 = 4096;
/// Most threads a QEMU may run (vCPUs, I/O workers, RCU...).
const NPROC: u64 = 1024;

/// The user and group a VM's QEMU runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
}

impl Ident {
    /// A fresh identity: a uid no live process uses, and the same number as gid.
    pub fn fresh() -> Result<Self, EngineError> {
        for _ in 0..16 {
            let b: [u8; 4] = crate::random::random_bytes()?;
            let uid = UID_BASE + u32::from_le_bytes(b) % UID_SPAN;
            if !uid_in_use(uid) {
                return Ok(Self { uid, gid: uid });
            }
        }
        // Never two VMs under one uid: that would let one reach the other.
        Err(EngineError::InvalidState {
            op: "pick a uid for",
            state: "a VM whose 16 random uids are all in use".into(),
        })
    }

    /// A fresh uid in group `gid` (a forked child in its template's group).
    pub fn in_group(gid: u32) -> Result<Self, EngineError> {
        Ok(Self {
            uid: Self::fresh()?.uid,
            gid,
        })
    }
}

/// The group a forked child of the template whose memory file is `mem`
/// runs in: the file's group, which may read it. A file from before brood
/// confined QEMU (or made elsewhere) is given a fresh group first, root
/// keeping ownership, so that a child never runs in a group like `root`.
pub fn template_group(mem: &Path) -> Result<u32, EngineError> {
    let gid = std::fs::metadata(mem)
        .map_err(|e| EngineError::host(format!("stat {}", mem.display()), e))?
        .gid();
    if (UID_BASE..UID_BASE + UID_SPAN).contains(&gid) {
        return Ok(gid);
    }
    let gid = Ident::fresh()?.gid;
    std::os::unix::fs::chown(mem, Some(0), Some(gid))
        .and_then(|()| std::fs::set_permissions(mem, std::fs::Permissions::from_mode(0o440)))
        .map_err(|e| EngineError::host(format!("restrict {}", mem.display()), e))?;
    Ok(gid)
}

/// Whether a process runs with real, effective or saved uid `uid`.
fn uid_in_use(uid: u32) -> bool {
    let want = uid.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .any(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .is_some_and(|l| l.split_whitespace().skip(1).any(|u| u == want))
        })
}

/// A bind mount made in QEMU's namespace.
#[derive(Debug)]
struct Bind {
    src: CString,
    dst: CString,
    /// Remount read-only, nosuid, nodev (not for device nodes).
    read_only: bool,
}

/// Everything `enter` does, computed before the fork.
#[derive(Debug)]
pub struct Jail {
    /// Namespaces, chroot and uid change (root only); rlimits and
    /// `NoNewPrivs` always.
    confine: bool,
    root: CString,
    binds: Vec<Bind>,
    ident: Ident,
    groups: Vec<libc::gid_t>,
    /// Unshare the network namespace too.
    own_network: bool,
    /// The QEMU binary as seen inside the root.
    program: PathBuf,
}

fn cstr(p: &Path) -> Result<CString, EngineError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| EngineError::InvalidSpec(format!("path {} contains a NUL byte", p.display())))
}

/// Creates an empty file (a mount point) at `p`.
fn placeholder(p: &Path) -> Result<(), EngineError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .map(drop)
        .map_err(|e| EngineError::host(format!("create {}", p.display()), e))
}

/// Creates directory `p` in the root, searchable by QEMU's user (the
/// files in it are binds, protected by their own modes).
fn mkdir(p: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(p)
        .and_then(|()| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)))
        .map_err(|e| EngineError::host(format!("create {}", p.display()), e))
}

/// Finds `program` in `PATH` when it has no slash.
fn resolve_program(program: &Path) -> Result<PathBuf, EngineError> {
    let found = if program.components().count() > 1 {
        Some(program.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
    };
    let found = found.ok_or_else(|| {
        EngineError::InvalidSpec(format!(
            "{} not found in PATH: install QEMU (qemu-system-x86) or set BROOD_QEMU",
            program.display()
        ))
    })?;
    std::fs::canonicalize(&found)
        .map_err(|e| EngineError::host(format!("resolve {}", found.display()), e))
}

impl Jail {
    /// Lays out `run` as QEMU's root: mount points for /usr, the devices
    /// and each of `files` (host path, name in the root), and returns what
    /// `enter` does in the child. A file of `files` that QEMU's user could
    /// not read through its bind (not world-readable) is copied in instead,
    /// owned by it; `group_files` (a template's memory, readable by its
    /// group) are always bound. With `own_network` QEMU gets an empty
    /// network namespace.
    pub fn prepare(
        run: &Path,
        qemu: &Path,
        files: &[(&Path, &str)],
        group_files: &[(&Path, &str)],
        ident: Ident,
        kvm: bool,
        own_network: bool,
    ) -> Result<Self, EngineError> {
        let mut binds = Vec::new();
        let mut bind = |src: &Path, dst: PathBuf, read_only: bool| -> Result<(), EngineError> {
            binds.push(Bind {
                src: cstr(src)?,
                dst: cstr(&dst)?,
                read_only,
            });
            Ok(())
        };
        mkdir(&run.join("usr"))?;
        bind(Path::new("/usr"), run.join("usr"), true)?;
        // Merged /usr: /lib64 -> usr/lib64 and so on. A host that keeps
        // them as directories gets them bound read-only.
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            let inside = run.join(top);
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&host)
                    .map_err(|e| EngineError::host(format!("read {}", host.display()), e))?;
                if std::fs::symlink_metadata(&inside).is_err() {
                    std::os::unix::fs::symlink(&target, &inside)
                        .map_err(|e| EngineError::host(format!("link {}", inside.display()), e))?;
                }
            } else if meta.is_dir() {
                mkdir(&inside)?;
                bind(&host, inside, true)?;
            }
        }
        let cache = Path::new("/etc/ld.so.cache");
        if cache.is_file() {
            mkdir(&run.join("etc"))?;
            placeholder(&run.join("etc/ld.so.cache"))?;
            bind(cache, run.join("etc/ld.so.cache"), true)?;
        }
        mkdir(&run.join("dev"))?;
        let mut groups = Vec::new();
        let mut devices = vec!["null", "zero", "random", "urandom"];
        if kvm {
            devices.push("kvm");
            let kvm_gid = std::fs::metadata("/dev/kvm")
                .map_err(|e| EngineError::host("stat /dev/kvm", e))?
                .gid();
            groups.push(kvm_gid);
        }
        for dev in devices {
            let inside = run.join("dev").join(dev);
            placeholder(&inside)?;
            bind(&Path::new("/dev").join(dev), inside, false)?;
        }
        for (host, name) in group_files {
            placeholder(&run.join(name))?;
            bind(host, run.join(name), true)?;
        }
        for (host, name) in files {
            let inside = run.join(name);
            let meta = std::fs::metadata(host)
                .map_err(|e| EngineError::host(format!("stat {}", host.display()), e))?;
            if meta.permissions().mode() & 0o004 != 0 {
                placeholder(&inside)?;
                bind(host, inside, true)?;
            } else {
                std::fs::copy(host, &inside).map_err(|e| {
                    EngineError::host(format!("copy {} for QEMU", host.display()), e)
                })?;
                std::os::unix::fs::chown(&inside, Some(ident.uid), Some(ident.gid))
                    .and_then(|()| {
                        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o400))
                    })
                    .map_err(|e| {
                        EngineError::host(format!("hand {} to QEMU", host.display()), e)
                    })?;
            }
        }
        let real = resolve_program(qemu)?;
        let program = if real.starts_with("/usr") {
            real
        } else {
            placeholder(&run.join("qemu"))?;
            bind(&real, run.join("qemu"), true)?;
            PathBuf::from("/qemu")
        };
        Ok(Self {
            confine: true,
            root: cstr(run)?,
            binds,
            ident,
            groups,
            own_network,
            program,
        })
    }

    /// For an engine not run by root: QEMU runs as the caller, in the
    /// host's namespaces, with rlimits and `NoNewPrivs` only.
    pub fn unconfined(qemu: &Path) -> Result<Self, EngineError> {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        Ok(Self {
            confine: false,
            root: cstr(Path::new("/"))?,
            binds: Vec::new(),
            ident: Ident { uid, gid },
            groups: Vec::new(),
            own_network: false,
            program: resolve_program(qemu)?,
        })
    }

    /// The QEMU binary's path inside the root.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The user QEMU runs as.
    pub fn ident(&self) -> Ident {
        self.ident
    }

    /// Enters the jail: called in the child between fork and exec, as root.
    ///
    /// # Safety
    /// Only between fork and exec, in the single-threaded child: it makes
    /// system calls only (mount, chroot, setrlimit, prctl, set*id) on data
    /// prepared before the fork, and allocates nothing.
    pub unsafe fn enter(&self) -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        let limit = |res, n: u64| {
            let r = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit reads a valid rlimit on the stack.
            check(unsafe { libc::setrlimit(res, &r) })
        };
        if !self.confine {
            limit(libc::RLIMIT_CORE, 0)?;
            limit(libc::RLIMIT_NOFILE, NOFILE)?;
            // SAFETY: umask and prctl take plain values.
            unsafe {
                libc::umask(0o077);
                return check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
            }
        }
        // SAFETY: each call below is a plain system call on NUL-terminated
        // strings and values that live as long as `self`.
        unsafe {
            let net = if self.own_network {
                libc::CLONE_NEWNET
            } else {
                0
            };
            check(libc::unshare(libc::CLONE_NEWNS | net))?;
            // Nothing mounted here may propagate back to the host.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for b in &self.binds {
                check(libc::mount(
                    b.src.as_ptr(),
                    b.dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if b.read_only {
                    check(libc::mount(
                        std::ptr::null(),
                        b.dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND
                            | libc::MS_REMOUNT
                            | libc::MS_RDONLY
                            | libc::MS_NOSUID
                            | libc::MS_NODEV,
                        std::ptr::null(),
                    ))?;
                }
            }
            check(libc::chroot(self.root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            libc::umask(0o077);
            limit(libc::RLIMIT_CORE, 0)?;
            limit(libc::RLIMIT_NOFILE, NOFILE)?;
            limit(libc::RLIMIT_NPROC, NPROC)?;
            // Empty the bounding set; setresuid below clears the rest.
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                    break;
                }
            }
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setresgid(
                self.ident.gid,
                self.ident.gid,
                self.ident.gid,
            ))?;
            check(libc::setresuid(
                self.ident.uid,
                self.ident.uid,
                self.ident.uid,
            ))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

/// What `confine` needs to know about the VM being started.
#[derive(Debug)]
pub(crate) struct Setup<'a> {
    /// Its run directory (already created).
    pub res: &'a super::process::VmResources,
    /// The VM.
    pub spec: &'a crate::spec::VmSpec,
    /// The QEMU binary.
    pub qemu: &'a Path,
    /// Firmware for microvm, if any.
    pub firmware: Option<&'a Path>,
    /// A forked child's template memory.
    pub template_mem: Option<&'a Path>,
    /// It uses /dev/kvm.
    pub kvm: bool,
    /// It gets a network namespace of its own.
    pub own_network: bool,
}

/// The jail and the paths QEMU is given for its files.
#[derive(Debug)]
pub(crate) struct Confined {
    pub jail: Jail,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub mem: PathBuf,
    pub firmware: Option<PathBuf>,
}

/// Picks QEMU's user, hands it the run directory and its memory file, and
/// lays out the jail; unconfined (host paths) when not run by root.
pub(crate) fn confine(s: &Setup<'_>) -> Result<Confined, EngineError> {
    let run = &s.res.run_dir;
    let own_mem = run.join("mem");
    if !nix::unistd::geteuid().is_root() {
        if s.template_mem.is_none() {
            super::process::private_file(&own_mem)?;
        }
        return Ok(Confined {
            jail: Jail::unconfined(s.qemu)?,
            kernel: s.spec.kernel.clone(),
            initrd: s.spec.initrd.clone(),
            mem: s.template_mem.map_or(own_mem, Path::to_path_buf),
            firmware: s.firmware.map(Path::to_path_buf),
        });
    }
    // A child runs in its template's group, which may read the template's
    // memory file (see `fork`); any other VM in its own.
    let ident = match s.template_mem {
        Some(mem) => Ident::in_group(template_group(mem)?)?,
        None => Ident::fresh()?,
    };
    s.res.open_to_group(ident.gid)?;
    let mem = match s.template_mem {
        Some(_) => PathBuf::from("/template-mem"),
        None => {
            // QEMU, as its own user, opens (and sizes) its memory file.
            super::process::private_file(&own_mem)?;
            std::os::unix::fs::chown(&own_mem, Some(ident.uid), Some(ident.gid))
                .map_err(|e| EngineError::host(format!("hand {} to QEMU", own_mem.display()), e))?;
            PathBuf::from("/mem")
        }
    };
    let mut files: Vec<(&Path, &str)> = vec![(&s.spec.kernel, "kernel")];
    if let Some(initrd) = &s.spec.initrd {
        files.push((initrd, "initrd"));
    }
    let firmware = match s.firmware {
        Some(fw) if fw.starts_with("/usr") => Some(fw.to_path_buf()),
        Some(fw) => {
            files.push((fw, "firmware"));
            Some(PathBuf::from("/firmware"))
        }
        None => None,
    };
    let group_files: Vec<(&Path, &str)> = s
        .template_mem
        .map(|m| (m, "template-mem"))
        .into_iter()
        .collect();
    let jail = Jail::prepare(
        run,
        s.qemu,
        &files,
        &group_files,
        ident,
        s.kvm,
        s.own_network,
    )?;
    Ok(Confined {
        jail,
        kernel: PathBuf::from("/kernel"),
        initrd: s.spec.initrd.as_ref().map(|_| PathBuf::from("/initrd")),
        mem,
        firmware,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_uids_are_in_range_and_unprivileged() {
        let a = Ident::fresh().unwrap();
        assert!((UID_BASE..UID_BASE + UID_SPAN).contains(&a.uid));
        assert_eq!(a.uid, a.gid);
        assert_eq!(Ident::in_group(42).unwrap().gid, 42);
        assert!(!uid_in_use(UID_BASE + UID_SPAN + 1));
    }

    #[test]
    fn an_old_template_memory_file_gets_a_group_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("mem");
        std::fs::write(&mem, b"").unwrap();
        std::fs::set_permissions(&mem, std::fs::Permissions::from_mode(0o644)).unwrap();
        let gid = template_group(&mem).unwrap();
        assert!((UID_BASE..UID_BASE + UID_SPAN).contains(&gid));
        let meta = std::fs::metadata(&mem).unwrap();
        assert_eq!((meta.gid(), meta.mode() & 0o777), (gid, 0o440));
        assert_eq!(template_group(&mem).unwrap(), gid);
    }

    #[test]
    fn prepare_lays_out_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("vm");
        std::fs::create_dir(&run).unwrap();
        let public = dir.path().join("kernel");
        std::fs::write(&public, b"k").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let private = dir.path().join("initrd");
        std::fs::write(&private, b"i").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ident = Ident::fresh().unwrap();
        let j = Jail::prepare(
            &run,
            Path::new("sh"),
            &[(&public, "kernel"), (&private, "initrd")],
            &[],
            ident,
            false,
            true,
        )
        .unwrap();
        assert!(run.join("usr").is_dir() && run.join("dev/null").is_file());
        // The public file is bound (an empty mount point here), the
        // private one copied and handed to QEMU's user.
        assert_eq!(std::fs::metadata(run.join("kernel")).unwrap().len(), 0);
        let copy = std::fs::metadata(run.join("initrd")).unwrap();
        assert_eq!((copy.uid(), copy.len()), (ident.uid, 1));
        assert!(j.program().starts_with("/usr") || j.program() == Path::new("/qemu"));
        assert!(j.groups.is_empty());
    }
}
