//! The disposable NAT-test sockets: one per uplink at most, opened on the uplink's interface
//! with the uplink socket's mark and anchor, so its datagrams cross the same NAT as the uplink's
//! but on a binding of their own (see `upmt_proto::client::natlearn`). A fresh test gets a fresh
//! socket; the old one is closed then, or when its uplink's socket closes. What the socket
//! sends and accepts is the core's: this module only opens, closes and moves bytes.

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use upmt_proto::PathId;
use upmt_proto::client::NatTransmit;
use upmt_sys::batch::{BatchSocket, RxBatch};

/// The test socket of each path (indexed by path id, like the uplinks).
#[derive(Default)]
pub struct TestSockets {
    sockets: Vec<Option<BatchSocket>>,
}

impl TestSockets {
    /// Sends `datagram` for `t`, opening a new socket first when the test is fresh (or none is
    /// open) on `interface` toward `anchor`. False when it could not be sent.
    pub fn send(
        &mut self,
        t: NatTransmit,
        datagram: &[u8],
        interface: &str,
        anchor: SocketAddr,
        fwmark: u32,
    ) -> bool {
        let i = usize::from(t.path.0);
        if self.sockets.len() <= i {
            self.sockets.resize_with(i + 1, || None);
        }
        if t.fresh || self.sockets[i].is_none() {
            self.sockets[i] = match crate::uplink::open(interface, anchor, fwmark) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(path = %t.path, error = %upmt_sys::display_chain(&e), "no test socket");
                    None
                }
            };
        }
        let Some(socket) = &mut self.sockets[i] else {
            return false;
        };
        match socket.send_one(anchor, datagram) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(path = %t.path, error = %e, "test socket send failed");
                false
            }
        }
    }

    /// Closes `path`'s test socket, if any (its uplink socket closed).
    pub fn close(&mut self, path: PathId) {
        if let Some(s) = self.sockets.get_mut(usize::from(path.0)) {
            *s = None;
        }
    }

    /// The first test socket with something to read.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<PathId> {
        for (i, s) in self.sockets.iter().enumerate() {
            if let Some(s) = s
                && s.poll_recv_ready(cx).is_ready()
                && let Ok(i) = u8::try_from(i)
            {
                return Poll::Ready(PathId(i));
            }
        }
        Poll::Pending
    }

    /// Reads one batch of `path`'s test socket into `rx`; false when nothing (more) waits.
    pub fn recv(&mut self, path: PathId, rx: &mut RxBatch) -> bool {
        let Some(Some(socket)) = self.sockets.get_mut(usize::from(path.0)) else {
            return false;
        };
        match socket.recv_batch(rx) {
            Ok(n) => n > 0,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                // An ICMP error reported on the connected socket: the test just gets no reply.
                tracing::debug!(%path, error = %e, "test socket receive error");
                false
            }
        }
    }
}
