//! The anchor's one UDP socket: bound to `listen`, big buffers, nonblocking, in tokio, with
//! batched IO (`upmt_sys::batch`).
//!
//! Buffers are forced past `net.core.rmem_max` when privileged (SO_RCVBUFFORCE): in a lab run
//! the anchor's receive buffer overflowing was what capped tunnel throughput.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use upmt_sys::batch::BatchSocket;

/// Socket buffer size asked for in each direction.
pub const BUFFER_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("udp port {0} is already in use")]
    InUse(SocketAddr),
    #[error("cannot bind udp socket to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up udp socket for {addr}")]
    Setup {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the tunnel socket, set up for batched IO. `[::]:port` gives a dual-stack socket.
pub fn bind(addr: SocketAddr) -> Result<BatchSocket, UdpError> {
    let setup = |source| UdpError::Setup { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(setup)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).map_err(setup)?;
    }
    size_buffers(&socket);
    socket.set_nonblocking(true).map_err(setup)?;
    socket.bind(&addr.into()).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            UdpError::InUse(addr)
        } else {
            UdpError::Bind { addr, source }
        }
    })?;
    let std_socket: std::net::UdpSocket = socket.into();
    let socket = tokio::net::UdpSocket::from_std(std_socket).map_err(setup)?;
    BatchSocket::new(socket).map_err(setup)
}

fn size_buffers(socket: &Socket) {
    for (force, plain, what) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
    ] {
        if setsockopt_int(socket, force, BUFFER_BYTES).is_ok() {
            continue;
        }
        // Without CAP_NET_ADMIN the kernel caps the plain option at net.core.[rw]mem_max.
        let result = setsockopt_int(socket, plain, BUFFER_BYTES);
        tracing::warn!(
            result = ?result.err(),
            "cannot force the udp {what} buffer to {BUFFER_BYTES} bytes; \
             using what net.core.{}mem_max allows, which may cap throughput",
            if what == "receive" { "r" } else { "w" }
        );
    }
}

fn setsockopt_int(socket: &Socket, opt: libc::c_int, value: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid fd, a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
