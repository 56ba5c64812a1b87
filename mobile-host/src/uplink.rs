//! Uplink sockets: one UDP socket per physical uplink, bound to its interface
//! (`SO_BINDTODEVICE`), marked with the daemon's fwmark (so the policy rules keep it out of the
//! TUN), with large kernel buffers, connected to the anchor, nonblocking, registered with tokio,
//! with batched IO (`upmt_sys::batch`: recvmmsg, GRO, GSO).
//!
//! An uplink whose interface is missing or down is not an error of the daemon: [`link_state`]
//! tells the event loop, which reports the path down to the core and retries later.
//! [`Lister`] tells the core what every interface looks like (up, global addresses, default
//! routes in any table), so uplinks named by a pattern can pick a real interface. This module
//! never decides which interface an uplink uses or which path carries a packet.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};
use socket2::{Domain, Protocol, Socket, Type};
use upmt_mh_core::candidates::InterfaceFacts;
use upmt_sys::batch::BatchSocket;

/// Kernel socket buffer size asked for; throughput over a lossy, high-delay uplink needs room
/// for a few bandwidth-delay products.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Whether an interface can carry an uplink now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No interface of that name.
    Missing,
    /// Present but administratively down or without carrier.
    Down,
    /// Up and running.
    Up,
}

/// Why an uplink socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The interface does not exist.
    #[error("interface {interface} not found")]
    InterfaceNotFound { interface: String },
    /// A socket call failed.
    #[error("uplink socket on {interface}: {what} failed")]
    Socket {
        interface: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The interface's MTU (SIOCGIFMTU), if it exists: the upper bound of its path MTU search.
pub fn interface_mtu(interface: &str) -> Option<u16> {
    let mut req = ifreq_for(interface)?;
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; SIOCGIFMTU writes ifru_mtu.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU as _, &mut req) };
    // SAFETY: `fd` is ours and open.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return None;
    }
    // SAFETY: SIOCGIFMTU succeeded, so the mtu member of the union is the one written.
    u16::try_from(unsafe { req.ifr_ifru.ifru_mtu }).ok()
}

/// Looks the interface up (SIOCGIFFLAGS): missing, down, or up with carrier.
pub fn link_state(interface: &str) -> LinkState {
    let Some(mut req) = ifreq_for(interface) else {
        return LinkState::Missing;
    };
    // Any datagram socket will do as the ioctl's handle.
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return LinkState::Missing;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; SIOCGIFFLAGS writes ifru_flags.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) };
    // SAFETY: `fd` is ours and open.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return LinkState::Missing;
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the flags member of the union is the one written.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    if flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0 {
        LinkState::Up
    } else {
        LinkState::Down
    }
}

fn ifreq_for(interface: &str) -> Option<libc::ifreq> {
    let bytes = interface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Some(req)
}

/// Lists the host's interfaces over its own rtnetlink connection (the routing's connection
/// stays free for rule changes).
pub struct Lister {
    handle: Handle,
}

impl Lister {
    /// A new netlink connection. Must run inside a tokio runtime.
    pub fn new() -> io::Result<Lister> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Lister { handle })
    }

    /// Every interface but `skip` (the TUN), with its state, global addresses and default
    /// routes. Default routes count in every table but `local`: Android keeps each network's
    /// in table ifindex + 1000 and none in main.
    pub async fn list(&self, skip: &str) -> io::Result<Vec<InterfaceFacts>> {
        let mut by_index: HashMap<u32, InterfaceFacts> = HashMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.map_err(to_io)? {
            let Some(name) = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }) else {
                continue;
            };
            if name == skip {
                continue;
            }
            let flags = link.header.flags;
            by_index.insert(
                link.header.index,
                InterfaceFacts {
                    name,
                    up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
                    ..InterfaceFacts::default()
                },
            );
        }
        let mut addresses = self.handle.address().get().execute();
        while let Some(a) = addresses.try_next().await.map_err(to_io)? {
            let Some(facts) = by_index.get_mut(&a.header.index) else {
                continue;
            };
            let flags = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Flags(f) => Some(*f),
                _ => None,
            });
            let unusable = flags.is_some_and(|f| {
                f.contains(AddressFlags::Tentative) || f.contains(AddressFlags::Dadfailed)
            });
            let addr = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if unusable || a.header.scope != AddressScope::Universe {
                continue;
            }
            match addr {
                Some(IpAddr::V4(v4)) if is_global_v4(v4) => facts.global_v4 = true,
                Some(IpAddr::V6(v6)) if is_global_v6(v6) => facts.global_v6 = true,
                _ => {}
            }
        }
        for v6 in [false, true] {
            let query = if v6 {
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
            } else {
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
            };
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(to_io)?;
            for route in routes.iter().filter(|r| is_default(r)) {
                for index in out_interfaces(route) {
                    if let Some(facts) = by_index.get_mut(&index) {
                        if v6 {
                            facts.default_v6 = true;
                        } else {
                            facts.default_v4 = true;
                        }
                    }
                }
            }
        }
        Ok(by_index.into_values().collect())
    }
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// A unicast default route outside the `local` table.
fn is_default(route: &RouteMessage) -> bool {
    route.header.destination_prefix_length == 0
        && route.header.kind == RouteType::Unicast
        && crate::routing::route_table(route) != 255
}

/// The interfaces a route leaves through (one, or each next hop of a multipath route).
fn out_interfaces(route: &RouteMessage) -> Vec<u32> {
    let mut out = Vec::new();
    for a in &route.attributes {
        match a {
            RouteAttribute::Oif(i) => out.push(*i),
            RouteAttribute::MultiPath(hops) => out.extend(hops.iter().map(|h| h.interface_index)),
            _ => {}
        }
    }
    out
}

/// Not loopback, link-local, unspecified or multicast: an address that can reach beyond the
/// link (private ranges included: a carrier's or a home router's NAT sits behind them).
fn is_global_v4(a: std::net::Ipv4Addr) -> bool {
    !(a.is_loopback() || a.is_link_local() || a.is_unspecified() || a.is_multicast())
}

/// Same for IPv6 (unique local addresses included, as for private IPv4).
fn is_global_v6(a: std::net::Ipv6Addr) -> bool {
    !(a.is_loopback() || a.is_unspecified() || a.is_multicast() || a.is_unicast_link_local())
}

/// Opens the uplink socket of `interface` toward `anchor`. Must run inside a tokio runtime.
pub fn open(interface: &str, anchor: SocketAddr, fwmark: u32) -> Result<BatchSocket, UplinkError> {
    let fail = |what: &'static str| {
        move |source: io::Error| UplinkError::Socket {
            interface: interface.to_owned(),
            what,
            source,
        }
    };
    let socket = Socket::new(
        Domain::for_address(anchor),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(fail("socket"))?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ENODEV) => UplinkError::InterfaceNotFound {
                interface: interface.to_owned(),
            },
            _ => fail("SO_BINDTODEVICE")(source),
        })?;
    socket.set_mark(fwmark).map_err(fail("SO_MARK"))?;
    size_buffers(&socket);
    socket.set_nonblocking(true).map_err(fail("O_NONBLOCK"))?;
    socket.connect(&anchor.into()).map_err(fail("connect"))?;
    let socket =
        tokio::net::UdpSocket::from_std(socket.into()).map_err(fail("register with tokio"))?;
    BatchSocket::new(socket).map_err(fail("batched io setup"))
}

/// Asks for [`SOCKET_BUFFER_BYTES`] in both directions: SO_*BUFFORCE ignores `net.core.*mem_max`
/// (needs CAP_NET_ADMIN); without it, the plain option gets as much as the sysctl allows.
fn size_buffers(socket: &Socket) {
    let fd = socket.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, force, SOCKET_BUFFER_BYTES).is_err()
            && let Err(e) = setsockopt_int(fd, plain, SOCKET_BUFFER_BYTES)
        {
            tracing::debug!(error = %e, "could not size a socket buffer; keeping the default");
        }
    }
}

fn setsockopt_int(fd: i32, option: libc::c_int, value: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket; the option value is a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_loopback_and_multicast_addresses_are_not_global() {
        assert!(is_global_v4("10.0.0.2".parse().unwrap()));
        assert!(is_global_v4("203.0.113.9".parse().unwrap()));
        assert!(!is_global_v4("169.254.1.1".parse().unwrap()));
        assert!(!is_global_v4("127.0.0.1".parse().unwrap()));
        assert!(is_global_v6("2001:db8::1".parse().unwrap()));
        assert!(!is_global_v6("fe80::1".parse().unwrap()));
        assert!(!is_global_v6("::1".parse().unwrap()));
        assert!(!is_global_v6("ff02::1".parse().unwrap()));
    }

    #[tokio::test]
    async fn the_listing_has_loopback_up_without_a_global_address() {
        let lister = Lister::new().expect("netlink");
        let all = lister.list("upmt-none").await.expect("listing");
        let lo = all.iter().find(|i| i.name == "lo").expect("lo listed");
        assert!(lo.up);
        assert!(!lo.global_v4 && !lo.global_v6, "{lo:?}");
    }

    #[test]
    fn loopback_is_up_and_a_made_up_interface_is_missing() {
        assert_eq!(link_state("lo"), LinkState::Up);
        assert_eq!(link_state("upmt-nonexist"), LinkState::Missing);
        assert_eq!(link_state(""), LinkState::Missing);
        assert_eq!(link_state("name-longer-than-ifnamsiz"), LinkState::Missing);
    }

    #[tokio::test]
    async fn opening_on_a_missing_interface_says_interface_not_found() {
        let Some(true) = upmt_sys::caps::has_net_admin() else {
            // SO_BINDTODEVICE needs CAP_NET_RAW; without it the error is EPERM, not ENODEV.
            return;
        };
        let err = open("upmt-nonexist", "127.0.0.1:9".parse().unwrap(), 0x5550).unwrap_err();
        assert!(
            matches!(err, UplinkError::InterfaceNotFound { .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "interface upmt-nonexist not found");
    }

    #[tokio::test]
    async fn an_open_socket_on_loopback_is_marked_and_has_big_buffers() {
        let Some(true) = upmt_sys::caps::has_net_admin() else {
            return;
        };
        let sock = match open("lo", "127.0.0.1:9".parse().unwrap(), 0x5550) {
            Ok(sock) => sock,
            // qemu-user (the aarch64 test run) does not translate SO_MARK; a kernel always does.
            Err(UplinkError::Socket {
                what: "SO_MARK",
                source,
                ..
            }) if source.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                eprintln!("skipped: SO_MARK not supported here (emulator)");
                return;
            }
            Err(e) => panic!("open on lo: {e:?}"),
        };
        let s = socket2::SockRef::from(&sock);
        assert_eq!(s.mark().unwrap(), 0x5550);
        // The kernel doubles the value it was given.
        assert!(s.recv_buffer_size().unwrap() >= SOCKET_BUFFER_BYTES);
        assert!(s.send_buffer_size().unwrap() >= SOCKET_BUFFER_BYTES);
        assert_eq!(sock.peer_addr().unwrap(), "127.0.0.1:9".parse().unwrap());
        assert_eq!(s.device().unwrap().as_deref(), Some(&b"lo"[..]));
        assert_eq!(sock.peer(), Some("127.0.0.1:9".parse().unwrap()));
    }
}
