//! A child's network identity through the classic socket ioctls (netdevice(7),
//! route(4)): hardware address, IPv4 address and netmask, link state, and
//! the default route.
//!
//! ioctls rather than netlink: each step is one syscall on one datagram
//! socket, needs no message building or parsing, and is what busybox
//! `ifconfig` and `route` do. Only [`crate::system::LinuxMachine`] calls
//! these; tests on the host use a double of the `Machine` trait instead and
//! never touch the host's interfaces.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

use brood_proto::Ipv4Config;
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// How many default routes the agent removes at most before adding its own.
const MAX_DEFAULT_ROUTES: usize = 16;

/// Errors of network configuration.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The interface does not exist.
    #[error("no network interface {iface}")]
    NoInterface {
        /// Its name.
        iface: String,
    },
    /// The interface name does not fit `IFNAMSIZ`.
    #[error("interface name {iface:?} is too long")]
    BadName {
        /// The name.
        iface: String,
    },
    /// The control socket could not be opened.
    #[error("open a control socket")]
    Socket(#[source] Errno),
    /// An ioctl failed.
    #[error("{op} on {iface}")]
    Ioctl {
        /// The request, as in netdevice(7).
        op: &'static str,
        /// The interface.
        iface: String,
        /// What the kernel answered.
        #[source]
        source: Errno,
    },
}

/// An open control socket and the interface it configures.
struct Iface {
    sock: OwnedFd,
    name: String,
}

impl Iface {
    fn open(name: &str) -> Result<Self, NetError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(NetError::BadName {
                iface: crate::console::cut(name, 64).to_owned(),
            });
        }
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(NetError::Socket)?;
        Ok(Self {
            sock,
            name: name.to_owned(),
        })
    }

    fn error(&self, op: &'static str) -> impl FnOnce(Errno) -> NetError + '_ {
        move |source| match source {
            Errno::ENODEV => NetError::NoInterface {
                iface: self.name.clone(),
            },
            _ => NetError::Ioctl {
                op,
                iface: self.name.clone(),
                source,
            },
        }
    }

    /// An `ifreq` naming this interface, everything else zero.
    fn request(&self) -> libc::ifreq {
        // SAFETY: ifreq is plain old data (a name and a union of plain
        // fields and a pointer); all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in req.ifr_name.iter_mut().zip(self.name.bytes()) {
            *slot = libc::c_char::from_ne_bytes([byte]);
        }
        req
    }

    /// Runs an `ifreq` ioctl.
    fn ioctl(
        &self,
        op: &'static str,
        request: libc::Ioctl,
        req: &mut libc::ifreq,
    ) -> Result<(), NetError> {
        // SAFETY: every request used here (SIOC[GS]IF*) reads and writes at
        // most one `struct ifreq`, which `req` points to for the whole call.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), request, std::ptr::from_mut(req)) };
        Errno::result(rc).map(drop).map_err(self.error(op))
    }

    fn flags(&self) -> Result<libc::c_short, NetError> {
        let mut req = self.request();
        self.ioctl("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        Ok(unsafe { req.ifr_ifru.ifru_flags })
    }

    fn set_flags(&self, flags: libc::c_short) -> Result<(), NetError> {
        let mut req = self.request();
        req.ifr_ifru.ifru_flags = flags;
        self.ioctl("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, &mut req)
    }

    fn up(&self) -> Result<(), NetError> {
        let flags = self.flags()?;
        if flags & IFF_UP == 0 {
            self.set_flags(flags | IFF_UP)?;
        }
        Ok(())
    }

    fn set_hw_addr(&self, mac: [u8; 6]) -> Result<(), NetError> {
        let mut req = self.request();
        req.ifr_ifru.ifru_hwaddr = sockaddr(libc::ARPHRD_ETHER, &mac);
        self.ioctl("SIOCSIFHWADDR", libc::SIOCSIFHWADDR, &mut req)
    }
}

const IFF_UP: libc::c_short = 1;

/// The hardware address of `iface`.
pub fn hw_addr(iface: &str) -> Result<[u8; 6], NetError> {
    let iface = Iface::open(iface)?;
    let mut req = iface.request();
    iface.ioctl("SIOCGIFHWADDR", libc::SIOCGIFHWADDR, &mut req)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (out, byte) in mac.iter_mut().zip(data) {
        *out = byte.to_ne_bytes()[0];
    }
    Ok(mac)
}

/// Sets the hardware address of `iface`. virtio-net takes a new address
/// while up (it sets `IFF_LIVE_ADDR_CHANGE`); a driver that answers EBUSY
/// gets it with the link down, then the link's flags are restored.
pub fn set_hw_addr(iface: &str, mac: [u8; 6]) -> Result<(), NetError> {
    let iface = Iface::open(iface)?;
    match iface.set_hw_addr(mac) {
        Err(NetError::Ioctl {
            source: Errno::EBUSY,
            ..
        }) => {
            let flags = iface.flags()?;
            iface.set_flags(flags & !IFF_UP)?;
            let set = iface.set_hw_addr(mac);
            let restored = iface.set_flags(flags);
            set.and(restored)
        }
        other => other,
    }
}

/// Gives `iface` the address and netmask of `config`, brings it up, and
/// when `config` has a gateway, replaces every default route with one via it.
pub fn set_ipv4(iface: &str, config: &Ipv4Config) -> Result<(), NetError> {
    let net = Iface::open(iface)?;
    let mut req = net.request();
    req.ifr_ifru.ifru_addr = sockaddr_in(config.address);
    net.ioctl("SIOCSIFADDR", libc::SIOCSIFADDR, &mut req)?;
    // SIOCSIFADDR picks a classful netmask (inet_abc_len() in Linux
    // net/ipv4/devinet.c); set the real one after it.
    let mut req = net.request();
    req.ifr_ifru.ifru_netmask = sockaddr_in(netmask(config.prefix));
    net.ioctl("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, &mut req)?;
    net.up()?;
    if let Some(gateway) = config.gateway {
        replace_default_route(&net, gateway)?;
    }
    Ok(())
}

/// The netmask of a prefix length (0-32; longer is taken as 32).
pub fn netmask(prefix: u8) -> [u8; 4] {
    let bits = u32::from(prefix.min(32));
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    mask.to_be_bytes()
}

fn replace_default_route(net: &Iface, gateway: [u8; 4]) -> Result<(), NetError> {
    let mut del = route_entry();
    for _ in 0..MAX_DEFAULT_ROUTES {
        match route_ioctl(net, libc::SIOCDELRT, &mut del) {
            Ok(()) => {}
            // ESRCH: no (more) default route.
            Err(Errno::ESRCH) => break,
            Err(source) => return Err(net.error("SIOCDELRT")(source)),
        }
    }
    let dev = CString::new(net.name.as_str()).map_err(|_| NetError::BadName {
        iface: net.name.clone(),
    })?;
    let mut add = route_entry();
    add.rt_gateway = sockaddr_in(gateway);
    add.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // The kernel only reads the name (copy_from_user in
    // rtentry_to_fib_config()); `dev` outlives the call.
    add.rt_dev = dev.as_ptr().cast_mut();
    route_ioctl(net, libc::SIOCADDRT, &mut add).map_err(net.error("SIOCADDRT"))
}

/// A default-route `rtentry`: destination and genmask 0.0.0.0, flags RTF_UP.
fn route_entry() -> libc::rtentry {
    // SAFETY: rtentry is plain old data; all zeroes (a null `rt_dev`) is valid.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in([0; 4]);
    rt.rt_genmask = sockaddr_in([0; 4]);
    rt.rt_flags = libc::RTF_UP;
    rt
}

fn route_ioctl(net: &Iface, request: libc::Ioctl, rt: &mut libc::rtentry) -> Result<(), Errno> {
    // SAFETY: SIOCADDRT and SIOCDELRT read one `struct rtentry`, which `rt`
    // points to for the whole call, and the device name it may point to.
    let rc = unsafe { libc::ioctl(net.sock.as_raw_fd(), request, std::ptr::from_mut(rt)) };
    Errno::result(rc).map(drop)
}

/// A `sockaddr` of `family` whose data starts with `bytes`.
fn sockaddr(family: u16, bytes: &[u8]) -> libc::sockaddr {
    let mut sa = libc::sockaddr {
        sa_family: family,
        sa_data: [0; 14],
    };
    for (slot, byte) in sa.sa_data.iter_mut().zip(bytes) {
        *slot = libc::c_char::from_ne_bytes([*byte]);
    }
    sa
}

/// A `sockaddr_in` with port 0, laid out as a `sockaddr` (port, then address).
fn sockaddr_in(addr: [u8; 4]) -> libc::sockaddr {
    let [a, b, c, d] = addr;
    let family = u16::try_from(libc::AF_INET).unwrap_or(2);
    sockaddr(family, &[0, 0, a, b, c, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0), [0, 0, 0, 0]);
        assert_eq!(netmask(8), [255, 0, 0, 0]);
        assert_eq!(netmask(20), [255, 255, 240, 0]);
        assert_eq!(netmask(32), [255, 255, 255, 255]);
        assert_eq!(netmask(99), [255, 255, 255, 255]);
    }

    #[test]
    fn sockaddr_in_layout_matches_libc() {
        let sa = sockaddr_in([10, 0, 2, 15]);
        // SAFETY: sockaddr and sockaddr_in have the same size; this reads the
        // bytes back through the real C layout.
        let sin: libc::sockaddr_in = unsafe { std::mem::transmute(sa) };
        assert_eq!(i32::from(sin.sin_family), libc::AF_INET);
        assert_eq!(sin.sin_port, 0);
        assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [10, 0, 2, 15]);
    }

    #[test]
    fn read_only_queries_on_this_host() {
        assert!(hw_addr("lo").is_ok());
        assert!(matches!(
            hw_addr("brood-none0"),
            Err(NetError::NoInterface { .. })
        ));
        assert!(matches!(
            hw_addr("a-name-much-too-long"),
            Err(NetError::BadName { .. })
        ));
    }
}
