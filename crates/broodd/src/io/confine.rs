//! Least privilege for the processes of I/O partitions. broodd runs as
//! root, and so did they; now each is started with `no_new_privs` and a
//! capability bounding set cut down to what it needs, so root's
//! capabilities after `exec` are only those (for uid 0, `execve` gives the
//! bounding set as the permitted set: capabilities(7)):
//!
//! - the switch: `CAP_NET_ADMIN` (attach to the gateway taps) and
//!   `CAP_DAC_OVERRIDE` (connect to the port sockets in the VMs' run
//!   directories, which belong to each VM's own user);
//! - the storage daemon: `CAP_DAC_OVERRIDE` (open the images, which may
//!   belong to a VM's user).
//!
//! Everything else (`CAP_SYS_ADMIN`, `CAP_SYS_PTRACE`, `CAP_SETUID`, ...)
//! is gone, and nothing they run can get it back. A broodd that is not root
//! has no capabilities to give; its I/O partitions get `no_new_privs` only.
//! Not yet: a user of their own, a cgroup of their own and a private mount
//! namespace.

use std::io;

/// `CAP_DAC_OVERRIDE` (linux/capability.h).
pub const CAP_DAC_OVERRIDE: u32 = 1;
/// `CAP_NET_ADMIN` (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;

/// What the switch keeps.
pub const SWITCH_CAPS: &[u32] = &[CAP_DAC_OVERRIDE, CAP_NET_ADMIN];
/// What the storage daemon keeps.
pub const STORAGE_CAPS: &[u32] = &[CAP_DAC_OVERRIDE];

/// Makes `cmd`'s child, before it runs its program, drop every capability
/// but `keep` from its bounding set (when broodd is root) and set
/// `no_new_privs`.
pub fn confine(cmd: &mut tokio::process::Command, keep: &'static [u32]) {
    let root = nix::unistd::geteuid().is_root();
    // SAFETY: the closure runs in the forked child before exec and makes
    // only prctl(2) calls on integers, which allocate nothing and are
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || drop_privileges(root, keep));
    }
}

fn drop_privileges(root: bool, keep: &[u32]) -> io::Result<()> {
    if root {
        for cap in 0..64u32 {
            if keep.contains(&cap) {
                continue;
            }
            // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes integers only.
            let r =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            if r != 0 {
                let e = io::Error::last_os_error();
                // EINVAL: past the kernel's last capability.
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(e);
            }
        }
    }
    let on: libc::c_ulong = 1;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes integers only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, on, 0, 0, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
