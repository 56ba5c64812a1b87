//! NAT binding tests of a client's disposable sockets (see [`crate::client::natlearn`]).
//!
//! A `NatRegister` from any source address, authenticated by the peer's session, notes that
//! address for its path: it is never taken for the path's address (no challenge, no downlink,
//! no liveness) and is answered once, with a `NatRegistered` no bigger than the registration,
//! carrying a fresh nonce. A later `NatRequest` on the path with that nonce makes the anchor send
//! one `NatReply` to the noted address. So the anchor never becomes a reflector: it sends only to
//! an address that itself sent an authenticated, non-replayed registration, and that could read
//! the nonce sent there; one small reply per registration; registrations at most one per
//! [`NAT_REGISTER_SPACING`] per path; one noted address per path, forgotten after
//! [`NAT_TEST_MAX_AGE`]. Refused registrations and requests are dropped and counted in
//! [`AnchorStats::nat_refused`](super::AnchorStats::nat_refused).

use super::{Anchor, Queued};
use crate::control::{ControlMessage, NAT_TOKEN_LEN};
use crate::cookie::random_bytes;
use crate::time::Instant;
use crate::{DropReason, PathId, PeerId};
use core::time::Duration;
use std::net::SocketAddr;

/// A registration this old can no longer be requested (longer than any keepalive learned).
pub const NAT_TEST_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// At most one registration per path per this long is answered.
pub const NAT_REGISTER_SPACING: Duration = Duration::from_secs(1);

/// The address a path's test socket registered from.
#[derive(Clone, Copy, Debug)]
pub(super) struct NatTestEntry {
    addr: SocketAddr,
    nonce: [u8; NAT_TOKEN_LEN],
    at: Instant,
}

impl Anchor {
    /// An authenticated `NatRegister` for `path` from `from`.
    pub(super) fn handle_nat_register(
        &mut self,
        id: PeerId,
        path: PathId,
        from: SocketAddr,
        token: [u8; NAT_TOKEN_LEN],
        now: Instant,
    ) -> Result<(), DropReason> {
        let peer = &mut self.peers[id.0 as usize];
        let entry = peer.paths.iter_mut().find(|e| e.id == path);
        let Some(entry) = entry.filter(|e| {
            e.nat_test
                .is_none_or(|t| now.saturating_duration_since(t.at) >= NAT_REGISTER_SPACING)
        }) else {
            // A path the peer never used, or registrations too fast.
            self.stats.nat_refused = self.stats.nat_refused.saturating_add(1);
            return Ok(());
        };
        let nonce = random_bytes::<NAT_TOKEN_LEN>(self.stats.nat_registrations ^ u64::from(id.0));
        entry.nat_test = Some(NatTestEntry {
            addr: from,
            nonce,
            at: now,
        });
        self.stats.nat_registrations = self.stats.nat_registrations.saturating_add(1);
        self.queues.push_transmit(Queued::Control {
            peer: id,
            path,
            dst: from,
            msg: ControlMessage::NatRegistered { token, nonce },
        })
    }

    /// An authenticated `NatRequest` that came on `path`.
    pub(super) fn handle_nat_request(
        &mut self,
        id: PeerId,
        path: PathId,
        nonce: [u8; NAT_TOKEN_LEN],
        now: Instant,
    ) -> Result<(), DropReason> {
        let peer = &mut self.peers[id.0 as usize];
        let noted = peer.paths.iter_mut().find(|e| e.id == path).and_then(|e| {
            let t = e.nat_test?;
            let fresh = now.saturating_duration_since(t.at) < NAT_TEST_MAX_AGE;
            // One reply per registration: the entry stays (it paces registrations) but
            // can no longer be requested.
            e.nat_test = Some(NatTestEntry {
                nonce: [0; NAT_TOKEN_LEN],
                ..t
            });
            (fresh && t.nonce == nonce && nonce != [0; NAT_TOKEN_LEN]).then_some(t.addr)
        });
        let Some(dst) = noted else {
            self.stats.nat_refused = self.stats.nat_refused.saturating_add(1);
            return Ok(());
        };
        self.stats.nat_replies = self.stats.nat_replies.saturating_add(1);
        self.queues.push_transmit(Queued::Control {
            peer: id,
            path,
            dst,
            msg: ControlMessage::NatReply { nonce },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Pair, link_addr};
    use crate::{HEADER_LEN, PathId};

    /// A connected pair, idle.
    fn pair() -> Pair {
        let mut pair = Pair::new(&[20, 20], |_| {});
        pair.run_for(Duration::from_secs(10));
        assert!(pair.connected());
        pair
    }

    /// Seals `msg` with the client's keys on `path` and hands it to the anchor from `from`.
    /// Returns the anchor's datagrams in answer: (destination, length).
    fn from_client(
        pair: &mut Pair,
        path: PathId,
        from: SocketAddr,
        msg: ControlMessage,
    ) -> Vec<(SocketAddr, usize)> {
        let mut buf = [0u8; 256];
        let n = msg.emit(&mut buf[HEADER_LEN..]).unwrap();
        let len = pair.client.seal_control_raw(path, &mut buf, n).unwrap();
        pair.deliver_from(from, buf[..len].to_vec());
        let mut out = Vec::new();
        let mut tx = [0u8; 2048];
        while let Some(t) = pair.anchor.poll_transmit(pair.now, &mut tx) {
            out.push((t.dst.unwrap(), t.len));
        }
        out
    }

    fn test_addr() -> SocketAddr {
        "198.51.100.1:50001".parse().unwrap()
    }

    #[test]
    fn a_registration_is_answered_once_no_bigger_and_never_moves_the_path() {
        let mut pair = pair();
        let challenges = pair.anchor.stats().challenges_sent;
        let reg = ControlMessage::NatRegister { token: [1; 8] };
        let mut b = [0u8; 64];
        let reg_len = reg.emit(&mut b).unwrap();
        let out = from_client(&mut pair, PathId(0), test_addr(), reg);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, test_addr());
        let answer = ControlMessage::NatRegistered {
            token: [1; 8],
            nonce: [0; 8],
        };
        assert!(answer.buffer_len() <= reg_len);
        let status = pair.anchor.peers().next().unwrap();
        assert!(
            status.paths.iter().all(|(_, a)| *a != test_addr()),
            "the test socket became a path's address"
        );
        assert_eq!(pair.anchor.stats().challenges_sent, challenges);
        // A second registration within the spacing is refused, counted, not answered.
        let out = from_client(&mut pair, PathId(0), test_addr(), reg);
        assert!(out.is_empty());
        assert_eq!(pair.anchor.stats().nat_refused, 1);
        assert_eq!(pair.anchor.stats().nat_registrations, 1);
    }

    #[test]
    fn unregistered_wrong_or_repeated_requests_are_dropped_and_counted() {
        let mut pair = pair();
        let req = |nonce| ControlMessage::NatRequest { nonce };
        let main = link_addr(0);
        // Nothing registered on this path.
        assert!(from_client(&mut pair, PathId(0), main, req([5; 8])).is_empty());
        assert_eq!(pair.anchor.stats().nat_refused, 1);
        // A registration for a path the peer never used.
        let reg = ControlMessage::NatRegister { token: [1; 8] };
        assert!(from_client(&mut pair, PathId(9), test_addr(), reg).is_empty());
        assert_eq!(pair.anchor.stats().nat_refused, 2);

        // Registered: a wrong nonce gets nothing and spends the registration.
        assert_eq!(from_client(&mut pair, PathId(0), test_addr(), reg).len(), 1);
        assert!(from_client(&mut pair, PathId(0), main, req([5; 8])).is_empty());
        assert_eq!(pair.anchor.stats().nat_refused, 3);
        assert_eq!(pair.anchor.stats().nat_replies, 0);
        // The zero nonce of a spent registration is no key either.
        assert!(from_client(&mut pair, PathId(0), main, req([0; 8])).is_empty());
        assert_eq!(pair.anchor.stats().nat_refused, 4);

        // Another path's request does not reach this path's registration.
        pair.run_for(NAT_REGISTER_SPACING);
        let nonce = registered_nonce(&mut pair, test_addr());
        assert!(from_client(&mut pair, PathId(1), link_addr(1), req(nonce)).is_empty());
        assert_eq!(pair.anchor.stats().nat_refused, 5);
        // The right one: exactly one small reply, to the registered address; a repeat gets none.
        let out = from_client(&mut pair, PathId(0), main, req(nonce));
        assert_eq!(out, vec![(test_addr(), out[0].1)]);
        assert!(out[0].1 <= 64);
        assert!(from_client(&mut pair, PathId(0), main, req(nonce)).is_empty());
        assert_eq!(pair.anchor.stats().nat_replies, 1);
        assert_eq!(pair.anchor.stats().nat_refused, 6);
    }

    #[test]
    fn a_registration_older_than_the_maximum_age_cannot_be_requested() {
        let mut pair = pair();
        let nonce = registered_nonce(&mut pair, test_addr());
        pair.run_for(NAT_TEST_MAX_AGE);
        let req = ControlMessage::NatRequest { nonce };
        assert!(from_client(&mut pair, PathId(0), link_addr(0), req).is_empty());
        assert_eq!(pair.anchor.stats().nat_refused, 1);
    }

    /// Registers `addr` for path 0 and returns the nonce the anchor answered with.
    fn registered_nonce(pair: &mut Pair, addr: SocketAddr) -> [u8; NAT_TOKEN_LEN] {
        let reg = ControlMessage::NatRegister { token: [2; 8] };
        let mut buf = [0u8; 256];
        let n = reg.emit(&mut buf[HEADER_LEN..]).unwrap();
        let len = pair
            .client
            .seal_control_raw(PathId(0), &mut buf, n)
            .unwrap();
        pair.deliver_from(addr, buf[..len].to_vec());
        let mut tx = [0u8; 2048];
        let t = pair.anchor.poll_transmit(pair.now, &mut tx).unwrap();
        assert_eq!(t.dst, Some(addr));
        let mut d = tx[..t.len].to_vec();
        let before = pair.client.path_nat_tests(PathId(0));
        // The client opens it like any answer on a test socket; read the nonce from the
        // plaintext it leaves in place.
        let _ = pair.client.handle_nat_datagram(PathId(0), &mut d, pair.now);
        assert_eq!(pair.client.path_nat_tests(PathId(0)), before);
        match ControlMessage::parse(&d[HEADER_LEN..]).unwrap() {
            ControlMessage::NatRegistered { nonce, .. } => nonce,
            m => panic!("answered {m:?}"),
        }
    }
}
