//! Uplink sockets: one UDP socket per physical uplink, bound to its interface
//! (`SO_BINDTODEVICE`), marked with the daemon's fwmark (so the policy rules keep it out of the
//! TUN), with large kernel buffers, connected to the anchor, nonblocking, registered with tokio,
//! with batched IO (`upmt_sys::batch`: recvmmsg, GRO, GSO).
//!
//! An uplink whose interface is missing or down is not an error of the daemon: [`link_state`]
//! tells the event loop, which reports the path down to the core and retries later. This module
//! never decides which path carries a packet.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
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
