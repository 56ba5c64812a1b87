//! One mobile host as the anchor keeps it: its keypairs, its paths and their validation.

use super::control::EventBudget;
use super::flows::FlowTable;
use super::{CHALLENGE_RESEND, CHALLENGE_TIMEOUT, PeerConfig};
use crate::control::CHALLENGE_LEN;
use crate::cookie::random_bytes;
use crate::crypto::Keypair;
use crate::dup::DupVerdict;
use crate::resend::ResendRing;
use crate::time::Instant;
use crate::{PathId, SessionIndex};
use core::time::Duration;
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug)]
struct Challenge {
    addr: SocketAddr,
    data: [u8; CHALLENGE_LEN],
    sent_at: Instant,
}

pub(super) struct PathEntry {
    pub(super) id: PathId,
    /// The validated address downlink goes to, if any.
    pub(super) endpoint: Option<SocketAddr>,
    challenge: Option<Challenge>,
    /// The last authenticated packet from the validated endpoint.
    pub(super) last_rx: Option<Instant>,
    /// The client said this path is down.
    pub(super) down: bool,
    /// Sequence number of the last applied `PathStatus` (0: none).
    pub(super) status_seq: u64,
    /// The address its disposable NAT-test socket registered from (see `nattest.rs`).
    pub(super) nat_test: Option<super::nattest::NatTestEntry>,
    /// Its recent downlink packets (see [`super::resend`]); sized at the first one.
    pub(super) ring: ResendRing,
    /// Downlink went around it and its ring was marked; cleared when it is heard from again.
    pub(super) drained: bool,
}

impl PathEntry {
    fn new(id: PathId) -> Self {
        PathEntry {
            id,
            endpoint: None,
            challenge: None,
            last_rx: None,
            down: false,
            status_seq: 0,
            nat_test: None,
            ring: ResendRing::new(0, Duration::ZERO),
            drained: false,
        }
    }

    /// Validated, not said to be down, and heard from within `stale`.
    pub(super) fn fresh(&self, now: Instant, stale: Duration) -> bool {
        self.endpoint.is_some()
            && !self.down
            && self
                .last_rx
                .is_some_and(|t| now.saturating_duration_since(t) < stale)
    }
}

/// What an authenticated packet means for its path.
pub(super) enum PathAction {
    Nothing,
    /// `from` just became the path's endpoint.
    Validated,
    /// Send this challenge to `from`.
    Challenge([u8; CHALLENGE_LEN]),
}

pub(super) struct Peer {
    pub(super) config: PeerConfig,
    pub(super) last_timestamp: Option<u64>,
    /// Boxed: a keypair holds its replay window and ciphers (about 2 KB), and most configured
    /// peers of a big anchor have no session at any moment.
    pub(super) current: Option<Box<Keypair>>,
    pub(super) previous: Option<Box<Keypair>>,
    pub(super) next: Option<Box<Keypair>>,
    pub(super) connected: bool,
    /// It has an entry in the anchor's expiry heap (at most one).
    pub(super) expiry_scheduled: bool,
    pub(super) paths: Vec<PathEntry>,
    /// The latest handshake: (its session index, path, source address).
    pub(super) origin: Option<(SessionIndex, PathId, SocketAddr)>,
    pub(super) last_path: Option<PathId>,
    pub(super) flows: FlowTable,
    /// Events its signals may still raise (see `control.rs`).
    pub(super) signal_events: EventBudget,
    pub(super) last_rx: Option<Instant>,
    pub(super) rx_packets: u64,
    pub(super) rx_bytes: u64,
    pub(super) tx_packets: u64,
    pub(super) tx_bytes: u64,
    /// Taken out of the config by [`super::Anchor::set_peers`]: no map points here any more,
    /// the slot only keeps the ids of the others stable.
    pub(super) removed: bool,
    /// The dup sequence of the last redundant downlink packet.
    pub(super) dup_seq: u64,
    /// The resend sequence of the last other downlink packet.
    pub(super) resend_seq: u64,
    /// It is in the anchor's queue of peers with packets to resend.
    pub(super) resend_queued: bool,
    /// Bytes of the datagrams it had resent.
    pub(super) resent_bytes: u64,
}

impl Peer {
    pub(super) fn new(config: PeerConfig) -> Self {
        Peer {
            config,
            last_timestamp: None,
            current: None,
            previous: None,
            next: None,
            connected: false,
            expiry_scheduled: false,
            paths: Vec::new(),
            origin: None,
            last_path: None,
            flows: FlowTable::default(),
            signal_events: EventBudget::default(),
            last_rx: None,
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            removed: false,
            dup_seq: 0,
            resend_seq: 0,
            resend_queued: false,
            resent_bytes: 0,
        }
    }

    pub(super) fn endpoint(&self, path: PathId) -> Option<SocketAddr> {
        self.paths
            .iter()
            .find(|p| p.id == path)
            .and_then(|p| p.endpoint)
    }

    /// The entry of `path`, created on first mention.
    pub(super) fn path_entry(&mut self, path: PathId) -> &mut PathEntry {
        let i = match self.paths.iter().position(|p| p.id == path) {
            Some(i) => i,
            None => {
                self.paths.push(PathEntry::new(path));
                self.paths.len() - 1
            }
        };
        &mut self.paths[i]
    }

    /// Opens a transport datagram with the keypair of `idx`. The second value is true when
    /// that keypair is the *next* one, which this packet confirms; the third says whether it
    /// is the second copy of a redundant packet.
    /// Keys older than `reject_after` open nothing (`Expired`).
    pub(super) fn open(
        &mut self,
        idx: SessionIndex,
        counter: u64,
        datagram: &mut [u8],
        now: Instant,
        reject_after: Duration,
    ) -> Result<(core::ops::Range<usize>, bool, DupVerdict), crate::DropReason> {
        let (k, next) = match (&mut self.current, &mut self.previous, &mut self.next) {
            (Some(k), _, _) if k.local_index == idx => (k, false),
            (_, Some(k), _) if k.local_index == idx => (k, false),
            (_, _, Some(k)) if k.local_index == idx => (k, true),
            _ => return Err(crate::DropReason::UnknownSession),
        };
        if now.saturating_duration_since(k.created) >= reject_after {
            return Err(crate::DropReason::Expired);
        }
        let range = k.open(counter, datagram)?;
        Ok((range, next, k.check_dup(datagram)))
    }

    /// The current keys, unless older than `reject_after`.
    pub(super) fn sending_keys(
        &mut self,
        now: Instant,
        reject_after: Duration,
    ) -> Result<&mut Keypair, crate::DropReason> {
        let k = self
            .current
            .as_deref_mut()
            .ok_or(crate::DropReason::NoSession)?;
        if now.saturating_duration_since(k.created) >= reject_after {
            return Err(crate::DropReason::Expired);
        }
        Ok(k)
    }

    /// The next keypair becomes current; returns the local index of the one that fell out.
    pub(super) fn confirm_next(&mut self) -> Option<SessionIndex> {
        let dropped = self.previous.take().map(|k| k.local_index);
        self.previous = self.current.take();
        self.current = self.next.take();
        dropped
    }

    /// Path validation for an authenticated packet of session `idx` on `path` from `from`;
    /// `response` is the payload of a PathResponse it carried. See the module docs.
    pub(super) fn observe(
        &mut self,
        idx: SessionIndex,
        path: PathId,
        from: SocketAddr,
        response: Option<[u8; CHALLENGE_LEN]>,
        now: Instant,
    ) -> PathAction {
        let origin = self
            .origin
            .is_some_and(|(i, p, a)| i == idx && p == path && a == from);
        let entry = self.path_entry(path);
        if entry.endpoint == Some(from) {
            entry.challenge = None;
            return PathAction::Nothing;
        }
        let answered = response.is_some_and(|d| {
            entry.challenge.is_some_and(|c| {
                c.addr == from
                    && crate::handshake::ct_eq(&c.data, &d)
                    && now.saturating_duration_since(c.sent_at) <= CHALLENGE_TIMEOUT
            })
        });
        if origin || answered {
            entry.endpoint = Some(from);
            entry.challenge = None;
            return PathAction::Validated;
        }
        match &mut entry.challenge {
            Some(c) if c.addr == from => {
                if now.saturating_duration_since(c.sent_at) < CHALLENGE_RESEND {
                    PathAction::Nothing
                } else {
                    c.sent_at = now;
                    PathAction::Challenge(c.data)
                }
            }
            slot => {
                let data = random_bytes(u64::from(idx.0) ^ u64::from(path.0) << 32);
                *slot = Some(Challenge {
                    addr: from,
                    data,
                    sent_at: now,
                });
                PathAction::Challenge(data)
            }
        }
    }

    /// An authenticated packet on `path` from `from`: if that is the path's validated endpoint,
    /// the path is fresh and the latest one.
    pub(super) fn heard_on(&mut self, path: PathId, from: SocketAddr, now: Instant) {
        if self.endpoint(path) == Some(from) {
            self.last_path = Some(path);
            if let Some(e) = self.paths.iter_mut().find(|e| e.id == path) {
                e.last_rx = Some(now);
                e.drained = false;
            }
        }
    }

    /// When the session is forgotten if nothing arrives.
    pub(super) fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let newest = [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|k| k.created)
            .max()?;
        Some(self.last_rx.map_or(newest, |rx| rx.max(newest)) + timeout)
    }

    /// Forgets the session: its keypairs (their local indices are returned), paths and flows.
    pub(super) fn forget_session(&mut self) -> impl Iterator<Item = SessionIndex> + use<> {
        let keys = [self.current.take(), self.previous.take(), self.next.take()];
        self.paths = Vec::new();
        self.flows.clear();
        self.last_path = None;
        keys.into_iter().flatten().map(|k| k.local_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_peer_without_a_session_is_small() {
        // Ten thousand configured peers must not cost tens of megabytes before any connects.
        let size = size_of::<Peer>();
        assert!(size <= 512, "a Peer is {size} bytes");
    }
}
