//! Tap devices for bridged NICs, made with ioctls (no `ip` process on the
//! boot path). A tap is created non-persistent: the kernel deletes it when
//! the last descriptor closes, so once QEMU (which holds a copy) exits and
//! the engine drops its own, nothing is left behind, even after a crash.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::EngineError;

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    /// The interface name the kernel chose (`brtapN`).
    pub name: String,
    /// The open `/dev/net/tun` descriptor bound to it; `None` once handed
    /// to QEMU and closed here.
    pub fd: Option<OwnedFd>,
}

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
const SIOCBRDELIF: libc::c_ulong = 0x89a3;

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqIndex {
    name: [libc::c_char; libc::IFNAMSIZ],
    index: libc::c_int,
    _pad: [u8; 20],
}

fn ifname(s: &str) -> [libc::c_char; libc::IFNAMSIZ] {
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(s.bytes().take(libc::IFNAMSIZ - 1)) {
        *o = b as libc::c_char;
    }
    out
}

/// Creates a tap, brings it up and enslaves it to `bridge`.
pub fn create_tap(bridge: &str) -> Result<Tap, EngineError> {
    let tap = create_detached_tap()?;
    attach_tap(&tap.name, bridge)?;
    Ok(tap)
}

/// Creates a tap that is down and on no bridge: for a forked child that
/// waits in a pool with its template's MAC, which must not reach the
/// network until the child has its own.
pub fn create_detached_tap() -> Result<Tap, EngineError> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| {
            EngineError::host(
                "open /dev/net/tun (is the tun module loaded, are you root?)",
                e,
            )
        })?;
    let fd = OwnedFd::from(tun);
    let mut req = IfReqFlags {
        name: ifname("brtap%d"),
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    // SAFETY: TUNSETIFF reads and writes an `ifreq`; `req` is a properly sized,
    // initialised ifreq layout that lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(EngineError::host(
            "create a tap device",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel wrote a NUL-terminated name into the IFNAMSIZ buffer.
    let name = unsafe { CStr::from_ptr(req.name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok(Tap { name, fd: Some(fd) })
}

/// Opens the existing (persistent) tap `name`, with a virtio-net header
/// on each frame when `vnet_hdr` is set.
pub fn open_tap(name: &str, vnet_hdr: bool) -> Result<OwnedFd, EngineError> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| EngineError::host("open /dev/net/tun", e))?;
    let fd = OwnedFd::from(tun);
    let mut req = IfReqFlags {
        name: ifname(name),
        flags: IFF_TAP | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 },
        _pad: [0; 22],
    };
    // SAFETY: TUNSETIFF reads and writes a properly sized, initialised ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(EngineError::host(
            format!("open tap {name}"),
            io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}

/// Brings tap `name` up and enslaves it to `bridge`.
pub fn attach_tap(name: &str, bridge: &str) -> Result<(), EngineError> {
    let ctl = control_socket()?;
    set_up(&ctl, name)?;
    let index = nix::net::if_::if_nametoindex(name)
        .map_err(|e| EngineError::host(format!("find index of {name}"), e.into()))?;
    let mut br = IfReqIndex {
        name: ifname(bridge),
        index: i32::try_from(index).unwrap_or(i32::MAX),
        _pad: [0; 20],
    };
    // SAFETY: SIOCBRADDIF reads an ifreq with the bridge name and the port's ifindex.
    let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), SIOCBRADDIF as _, &mut br) };
    if rc < 0 {
        return Err(EngineError::host(
            format!("add {name} to bridge {bridge}"),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Whether `name` is a Linux bridge in this process's network namespace.
///
/// Not `/sys/class/net/NAME/bridge`: sysfs shows the namespace of whoever
/// mounted it, so a broodd that entered a host's network namespace
/// (`nsenter --net`) would see the init namespace's bridges there. The
/// probe is a bridge ioctl with no side effect: removing port 0 (no such
/// interface) from `name` fails with `EINVAL` on a bridge, `EOPNOTSUPP` on
/// another kind of interface and `ENODEV` when there is none.
pub fn is_bridge(name: &str) -> Result<bool, EngineError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Ok(false);
    }
    let ctl = control_socket()?;
    let mut req = IfReqIndex {
        name: ifname(name),
        index: 0,
        _pad: [0; 20],
    };
    // SAFETY: SIOCBRDELIF reads an ifreq with the bridge name and a port
    // index; index 0 names no interface, so it removes nothing.
    let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), SIOCBRDELIF as _, &mut req) };
    if rc == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EINVAL) => Ok(true),
        Some(libc::EOPNOTSUPP | libc::ENODEV | libc::ENXIO) => Ok(false),
        _ => Err(EngineError::host(
            format!("check whether {name} is a bridge"),
            io::Error::last_os_error(),
        )),
    }
}

fn control_socket() -> Result<OwnedFd, EngineError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(EngineError::host(
            "open a network control socket",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `s` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

fn set_up(ctl: &OwnedFd, name: &str) -> Result<(), EngineError> {
    let mut req = IfReqFlags {
        name: ifname(name),
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: SIOCGIFFLAGS fills the flags of a valid ifreq.
    if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(EngineError::host(
            format!("read flags of {name}"),
            io::Error::last_os_error(),
        ));
    }
    // IFF_UP is 1: it fits the short flags field.
    req.flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    // SAFETY: SIOCSIFFLAGS reads the same valid ifreq.
    if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut req) } < 0 {
        return Err(EngineError::host(
            format!("bring {name} up"),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(std::mem::size_of::<IfReqIndex>(), 40);
        assert_eq!(
            ifname("br0")[..4],
            [b'b' as libc::c_char, b'r' as _, b'0' as _, 0]
        );
        assert_eq!(ifname(&"x".repeat(40))[15], 0);
    }
}
