//! The anchor node's core: sessions with many mobile hosts.
//!
//! Peers are configured by static public key, each with its virtual addresses. A handshake from
//! a configured key creates a *next* session that becomes current only when the first
//! authenticated transport packet arrives on it (as in WireGuard), so a replayed or stray init
//! never breaks a live session; the replaced session is kept for packets still in flight.
//!
//! Every decrypted inner packet must come from the peer's virtual address (no open relay). Data
//! packets teach the path their flow came up on: `encapsulate` sends a flow's downlink over that
//! path, else over the path that most recently carried traffic from a validated address.
//!
//! # Path validation
//! Downlink goes only to a path's *validated* endpoint. An authenticated packet from another
//! source address (NAT rebinding, or an attacker who raced a captured packet with a rewritten
//! source) does not move the path: the anchor sends a `PathChallenge` (8 random bytes, sealed) on
//! that path to that address and switches only when the `PathResponse` echoing them comes back,
//! authenticated, from that same address. Real rebinding is followed within one round trip; an
//! attacker who cannot read what is sent to the new address never gets there. A packet from the
//! validated endpoint abandons a pending challenge (the peer is demonstrably still there).
//! Challenges to one address are re-sent at most every [`CHALLENGE_RESEND`]; a response older
//! than [`CHALLENGE_TIMEOUT`] is ignored; each path holds at most one pending challenge.
//!
//! The one exception: a handshake's source address counts as validated for the handshake's path
//! once an authenticated packet *of that new session* arrives on that path from that address.
//! The response, which carries the only ephemeral key the session's keys can be derived from,
//! went to that address, so the peer answering from there proves it received it. Defeating this
//! needs an attacker who reads packets at the spoofed address and injects toward the client,
//! i.e. one on the path, against which no validation helps; even then the client's next packet
//! from its real address is challenged and moves the path back within a round trip.
//!
//! # Downlink path choice and handover
//! A flow's downlink goes over the path it was last *told* (an acked `FlowMove` from the client)
//! or last *seen* on (authenticated uplink data), whichever came last. A path is skipped when it
//! is not usable: the client said it is down (`PathStatus`, acked and retransmitted by the
//! client, applied only when newer than the last status for that path), or it delivered no
//! authenticated packet from its validated endpoint for [`AnchorConfig::path_stale_after`] (the
//! client probes active paths several times within that time, so only a dead or blackholed path
//! goes stale). A flow whose path is not usable goes over the freshest usable path; when none is
//! usable, over its own path if the client did not say it is down, else any validated one.
//! Without this, a download whose uplink ACKs are all out would keep being sent to a dead
//! Wi-Fi endpoint, since nothing else would tell the anchor.
//!
//! # Handshake floods
//! See [`crate::cookie`]'s constants: mac1 is checked first (one BLAKE2s); when the handshake
//! bucket is empty the anchor is under load and answers inits without a valid mac2 with a
//! CookieReply; inits that reach DH are rate-limited per source IP. [`AnchorStats::dh_operations`]
//! counts the DH work actually done.
//!
//! # Bounds
//! - sessions: at most three keypairs (current, previous, next) per configured peer;
//! - paths: at most 256 per peer (the path id is a byte), one pending challenge each;
//! - flows: [`MAX_FLOWS_PER_PEER`] per peer, oldest forgotten first;
//! - pending transmits: [`MAX_QUEUED_TRANSMITS`]; past it a datagram that needs an answer is
//!   dropped as `QueueFull` before any DH, and counted in [`AnchorStats::queue_overflows`];
//! - events: [`MAX_EVENTS`] undrained; past it events are lost and counted in
//!   [`AnchorStats::event_overflows`];
//! - per-IP rate-limit table: [`crate::cookie::MAX_RATE_LIMIT_ENTRIES`] source IPs.
//!
//! Reaching a bound is counted (drops and [`Anchor::stats`]); the driver logs the counters.
//!
//! Never does IO or reads a clock. The per-packet paths do hash lookups but no allocation once
//! the per-peer tables have grown to their working size (all of them are bounded).

use crate::control::{CHALLENGE_LEN, ControlMessage};
use crate::cookie::{ChallengeGate, CookieJar, Limiter, Verdict, random_bytes};
use crate::crypto::{Keypair, random_index};
use crate::handshake::{Response, check_mac1, mac1_key};
use crate::ip;
use crate::keys::{PublicKey, StaticSecret};
use crate::time::Instant;
use crate::wire::{
    self, COOKIE_REPLY_LEN, HandshakeRespRepr, Kind, RESP_LEN, TransportHeader, TransportRepr,
};
use crate::{
    DEFAULT_MTU, DropCounters, DropReason, HEADER_LEN, PathId, PeerId, SessionIndex, SessionParams,
    TAG_LEN, Transmit,
};
use core::ops::Range;
use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Flows remembered per peer for downlink path choice; the oldest is forgotten first.
pub const MAX_FLOWS_PER_PEER: usize = 4096;
/// Datagrams waiting for `poll_transmit` (handshake responses, cookies, probe acks, challenges).
pub const MAX_QUEUED_TRANSMITS: usize = 1024;
/// Events waiting for `poll_event`.
pub const MAX_EVENTS: usize = 1024;
/// A challenge to the same address is re-sent at most this often (lost challenge, busy uplink).
pub const CHALLENGE_RESEND: Duration = Duration::from_millis(250);
/// A path response this long after its challenge is ignored.
pub const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of the anchor's defences and bounds (drops are in [`Anchor::drops`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnchorStats {
    /// Handshake inits that reached the Diffie-Hellman stage (the expensive part).
    pub dh_operations: u64,
    /// CookieReplies sent to inits that arrived under load without a valid mac2.
    pub cookies_sent: u64,
    /// Inits refused because the per-IP table was full of active sources.
    pub rate_limit_table_full: u64,
    /// Path challenges sent.
    pub challenges_sent: u64,
    /// Paths moved to a newly validated address (first contact included).
    pub paths_validated: u64,
    /// Datagrams not answered because the transmit queue was full.
    pub queue_overflows: u64,
    /// Events lost because the event queue was full.
    pub event_overflows: u64,
}

/// One mobile host the anchor accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// A name for logs and status.
    pub name: String,
    /// Its static public key.
    pub public: PublicKey,
    /// The virtual IPv4 address it gets (the only inner IPv4 source accepted from it).
    pub virtual_ipv4: Ipv4Addr,
    /// The virtual IPv6 address it gets, if any.
    pub virtual_ipv6: Option<Ipv6Addr>,
}

/// Settings of an [`Anchor`].
#[derive(Clone, Debug)]
pub struct AnchorConfig {
    /// The anchor's identity.
    pub static_secret: StaticSecret,
    /// The accepted peers; `PeerId(i)` is `peers[i]`.
    pub peers: Vec<PeerConfig>,
    /// Prefix length of the virtual IPv4 network.
    pub prefix4: u8,
    /// Prefix length of the virtual IPv6 network.
    pub prefix6: u8,
    /// TUN MTU announced to peers.
    pub mtu: u16,
    /// A session with no authenticated traffic for this long is forgotten (default 180 s).
    pub session_timeout: Duration,
    /// A path with no authenticated packet for this long is skipped for downlink while a
    /// fresher one exists (default 500 ms: 2.5 times the client's default active probe interval).
    pub path_stale_after: Duration,
}

/// Default [`AnchorConfig::path_stale_after`].
pub const DEFAULT_PATH_STALE_AFTER: Duration = Duration::from_millis(500);

impl AnchorConfig {
    /// A config with defaults: /24, /64, `DEFAULT_MTU`, 180 s.
    pub fn new(static_secret: StaticSecret, peers: Vec<PeerConfig>) -> Self {
        AnchorConfig {
            static_secret,
            peers,
            prefix4: 24,
            prefix6: 64,
            mtu: DEFAULT_MTU,
            session_timeout: Duration::from_secs(180),
            path_stale_after: DEFAULT_PATH_STALE_AFTER,
        }
    }
}

/// What happened, for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A peer's session was confirmed by its first authenticated transport packet.
    PeerConnected {
        /// Which peer.
        peer: PeerId,
        /// Its configured name.
        name: String,
        /// Where that packet came from.
        endpoint: SocketAddr,
    },
    /// A peer's session expired.
    PeerDisconnected {
        /// Which peer.
        peer: PeerId,
        /// Its configured name.
        name: String,
    },
    /// A path of a peer was seen at a new address (first contact, NAT rebinding, new uplink IP).
    PathEndpointChanged {
        /// Which peer.
        peer: PeerId,
        /// Which of its paths.
        path: PathId,
        /// The new source address.
        endpoint: SocketAddr,
    },
    /// The peer signalled that a path went down or came back (applied, not a duplicate).
    PathStatusChanged {
        /// Which peer.
        peer: PeerId,
        /// Which of its paths.
        path: PathId,
        /// Whether it is down now.
        down: bool,
    },
    /// The peer moved a flow to a path by an explicit signal (applied, not a duplicate).
    FlowMoved {
        /// Which peer.
        peer: PeerId,
        /// The flow.
        flow: FlowKey,
        /// Its new path.
        path: PathId,
    },
}

/// Status of one peer, for the CLI and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Which peer.
    pub peer: PeerId,
    /// Its configured name.
    pub name: String,
    /// Whether it has a confirmed session.
    pub connected: bool,
    /// Each known path and its last authenticated source address.
    pub paths: Vec<(PathId, SocketAddr)>,
    /// Authenticated datagrams received.
    pub rx_packets: u64,
    /// Bytes of authenticated datagrams received.
    pub rx_bytes: u64,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// Bytes of datagrams sent.
    pub tx_bytes: u64,
    /// When the last authenticated datagram arrived.
    pub last_rx: Option<Instant>,
}

pub use crate::control::FlowKey;

/// Flow -> the path it last came up on or was moved to, with the sequence number of the last
/// explicit move (0: none), bounded, oldest inserted evicted first.
#[derive(Default)]
struct FlowTable {
    map: HashMap<FlowKey, (PathId, u64)>,
    order: VecDeque<FlowKey>,
}

impl FlowTable {
    /// Learns `path` from uplink data.
    fn record(&mut self, key: FlowKey, path: PathId) {
        if let Some(p) = self.map.get_mut(&key) {
            p.0 = path;
            return;
        }
        self.insert(key, (path, 0));
    }

    /// Applies an explicit move; false when an equal or newer move was already applied.
    fn apply_move(&mut self, key: FlowKey, path: PathId, seq: u64) -> bool {
        if let Some(p) = self.map.get_mut(&key) {
            if seq <= p.1 {
                return false;
            }
            *p = (path, seq);
            return true;
        }
        self.insert(key, (path, seq));
        true
    }

    fn insert(&mut self, key: FlowKey, value: (PathId, u64)) {
        if self.map.len() >= MAX_FLOWS_PER_PEER
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.map.insert(key, value);
        self.order.push_back(key);
    }

    fn get(&self, key: &FlowKey) -> Option<PathId> {
        self.map.get(key).map(|v| v.0)
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

#[derive(Clone, Copy, Debug)]
struct Challenge {
    addr: SocketAddr,
    data: [u8; CHALLENGE_LEN],
    sent_at: Instant,
}

struct PathEntry {
    id: PathId,
    /// The validated address downlink goes to, if any.
    endpoint: Option<SocketAddr>,
    challenge: Option<Challenge>,
    /// The last authenticated packet from the validated endpoint.
    last_rx: Option<Instant>,
    /// The client said this path is down.
    down: bool,
    /// Sequence number of the last applied `PathStatus` (0: none).
    status_seq: u64,
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
        }
    }

    /// Validated, not said to be down, and heard from within `stale`.
    fn fresh(&self, now: Instant, stale: Duration) -> bool {
        self.endpoint.is_some()
            && !self.down
            && self
                .last_rx
                .is_some_and(|t| now.saturating_duration_since(t) < stale)
    }
}

/// What an authenticated packet means for its path.
enum PathAction {
    Nothing,
    /// `from` just became the path's endpoint.
    Validated,
    /// Send this challenge to `from`.
    Challenge([u8; CHALLENGE_LEN]),
}

struct Peer {
    config: PeerConfig,
    last_timestamp: Option<u64>,
    current: Option<Keypair>,
    previous: Option<Keypair>,
    next: Option<Keypair>,
    connected: bool,
    paths: Vec<PathEntry>,
    /// The latest handshake: (its session index, path, source address).
    origin: Option<(SessionIndex, PathId, SocketAddr)>,
    last_path: Option<PathId>,
    flows: FlowTable,
    last_rx: Option<Instant>,
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
}

impl Peer {
    fn endpoint(&self, path: PathId) -> Option<SocketAddr> {
        self.paths
            .iter()
            .find(|p| p.id == path)
            .and_then(|p| p.endpoint)
    }

    /// Path validation for an authenticated packet of session `idx` on `path` from `from`;
    /// `response` is the payload of a PathResponse it carried. See the module docs.
    fn observe(
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
        let i = match self.paths.iter().position(|p| p.id == path) {
            Some(i) => i,
            None => {
                self.paths.push(PathEntry::new(path));
                self.paths.len() - 1
            }
        };
        let entry = &mut self.paths[i];
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

    /// When the session is forgotten if nothing arrives.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let newest = [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|k| k.created)
            .max()?;
        Some(self.last_rx.map_or(newest, |rx| rx.max(newest)) + timeout)
    }
}

#[derive(Clone, Copy, Debug)]
enum Queued {
    Resp {
        bytes: [u8; RESP_LEN],
        path: PathId,
        dst: SocketAddr,
    },
    Cookie {
        bytes: [u8; COOKIE_REPLY_LEN],
        path: PathId,
        dst: SocketAddr,
    },
    Control {
        peer: PeerId,
        path: PathId,
        dst: SocketAddr,
        msg: ControlMessage,
    },
}

/// Pushes an event unless the queue is full; false when it was lost.
fn push_event(events: &mut VecDeque<Event>, stats: &mut AnchorStats, e: Event) {
    if events.len() >= MAX_EVENTS {
        stats.event_overflows = stats.event_overflows.saturating_add(1);
    } else {
        events.push_back(e);
    }
}

/// Queues a datagram unless the queue is full (then `QueueFull`, counted).
fn push_transmit(
    queue: &mut VecDeque<Queued>,
    stats: &mut AnchorStats,
    q: Queued,
) -> Result<(), DropReason> {
    if queue.len() >= MAX_QUEUED_TRANSMITS {
        stats.queue_overflows = stats.queue_overflows.saturating_add(1);
        return Err(DropReason::QueueFull);
    }
    queue.push_back(q);
    Ok(())
}

/// The anchor's protocol core. See the crate docs for the calling order.
pub struct Anchor {
    config: AnchorConfig,
    mac1_key: [u8; 32],
    peers: Vec<Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    by_addr: HashMap<IpAddr, PeerId>,
    by_index: HashMap<u32, PeerId>,
    queue: VecDeque<Queued>,
    events: VecDeque<Event>,
    drops: DropCounters,
    cookies: CookieJar,
    limiter: Limiter,
    challenges: ChallengeGate,
    stats: AnchorStats,
}

impl Anchor {
    /// An anchor with no sessions yet.
    pub fn new(config: AnchorConfig, now: Instant) -> Self {
        let public = config.static_secret.public_key();
        let mac1_key = mac1_key(&public);
        let mut by_key = HashMap::new();
        let mut by_addr = HashMap::new();
        let peers = config
            .peers
            .iter()
            .enumerate()
            .map(|(i, pc)| {
                let id = PeerId(i as u32);
                by_key.insert(pc.public, id);
                by_addr.insert(IpAddr::V4(pc.virtual_ipv4), id);
                if let Some(v6) = pc.virtual_ipv6 {
                    by_addr.insert(IpAddr::V6(v6), id);
                }
                Peer {
                    config: pc.clone(),
                    last_timestamp: None,
                    current: None,
                    previous: None,
                    next: None,
                    connected: false,
                    paths: Vec::new(),
                    origin: None,
                    last_path: None,
                    flows: FlowTable::default(),
                    last_rx: None,
                    rx_packets: 0,
                    rx_bytes: 0,
                    tx_packets: 0,
                    tx_bytes: 0,
                }
            })
            .collect();
        Anchor {
            config,
            mac1_key,
            peers,
            by_key,
            by_addr,
            by_index: HashMap::new(),
            queue: VecDeque::with_capacity(MAX_QUEUED_TRANSMITS),
            events: VecDeque::with_capacity(64),
            drops: DropCounters::default(),
            cookies: CookieJar::new(&public, now),
            limiter: Limiter::new(now),
            challenges: ChallengeGate::default(),
            stats: AnchorStats::default(),
        }
    }

    /// Decrypts in place. `Ok(Some((peer, range)))`: an inner packet whose source is that peer's
    /// virtual address, for the TUN. `Ok(None)`: consumed (see `poll_transmit` / `poll_event`).
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<Option<(PeerId, Range<usize>)>, DropReason> {
        let r = self.handle_datagram_inner(from, datagram, now);
        if let Err(reason) = r {
            self.drops.add(reason);
        }
        r
    }

    fn handle_datagram_inner(
        &mut self,
        from: SocketAddr,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<Option<(PeerId, Range<usize>)>, DropReason> {
        match wire::peek_kind(datagram)? {
            Kind::HandshakeResp | Kind::CookieReply => Err(DropReason::UnknownKind),
            Kind::HandshakeInit => {
                self.handle_init(from, datagram, now)?;
                Ok(None)
            }
            Kind::Data | Kind::Control => self.handle_transport(from, datagram, now),
        }
    }

    fn handle_init(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        // Cheap checks first: length and mac1 (one BLAKE2s), then load and mac2, then per-IP.
        check_mac1(&self.mac1_key, datagram)?;
        let view = wire::HandshakeInit::new_checked(datagram)?;
        let (path, sender_index) = (view.path(), view.sender_index());
        if self.limiter.under_load(now) && !self.cookies.check_mac2(from.ip(), datagram, now) {
            if self.queue.len() >= MAX_QUEUED_TRANSMITS {
                self.stats.queue_overflows = self.stats.queue_overflows.saturating_add(1);
                return Err(DropReason::QueueFull);
            }
            let mut bytes = [0u8; COOKIE_REPLY_LEN];
            self.cookies.write_reply(
                from.ip(),
                &view.mac1(),
                path,
                sender_index,
                &mut bytes,
                now,
            )?;
            push_transmit(
                &mut self.queue,
                &mut self.stats,
                Queued::Cookie {
                    bytes,
                    path,
                    dst: from,
                },
            )?;
            self.stats.cookies_sent = self.stats.cookies_sent.saturating_add(1);
            return Err(DropReason::CookieRequired);
        }
        match self.limiter.check_ip(from.ip(), now) {
            Verdict::Allow => {}
            Verdict::RateLimited => return Err(DropReason::RateLimited),
            Verdict::TableFull => {
                self.stats.rate_limit_table_full =
                    self.stats.rate_limit_table_full.saturating_add(1);
                return Err(DropReason::RateLimited);
            }
        }
        // The response must fit in the queue: check before spending the DH.
        if self.queue.len() >= MAX_QUEUED_TRANSMITS {
            self.stats.queue_overflows = self.stats.queue_overflows.saturating_add(1);
            return Err(DropReason::QueueFull);
        }
        self.stats.dh_operations = self.stats.dh_operations.saturating_add(1);
        let resp = Response::read_init(&self.config.static_secret, &self.mac1_key, datagram)?;
        let id = *self
            .by_key
            .get(&resp.initiator)
            .ok_or(DropReason::UnknownPeer)?;
        let peer = &self.peers[id.0 as usize];
        if peer.last_timestamp.is_some_and(|t| resp.timestamp <= t) {
            return Err(DropReason::StaleTimestamp);
        }
        let timestamp = resp.timestamp;
        let params = SessionParams {
            virtual_ipv4: peer.config.virtual_ipv4,
            prefix4: self.config.prefix4,
            virtual_ipv6: peer.config.virtual_ipv6,
            prefix6: self.config.prefix6,
            mtu: self.config.mtu,
        };
        let mut bytes = [0u8; RESP_LEN];
        let (send, recv) = resp.write_resp(&params, &mut bytes)?;
        let mut local_index = random_index(timestamp);
        while local_index.0 == 0 || self.by_index.contains_key(&local_index.0) {
            local_index = SessionIndex(local_index.0.wrapping_add(0x9e37_79b9));
        }
        HandshakeRespRepr {
            path,
            sender_index: local_index,
            receiver_index: sender_index,
        }
        .emit(&mut wire::HandshakeResp::new_unchecked(&mut bytes[..]));
        let peer = &mut self.peers[id.0 as usize];
        peer.last_timestamp = Some(timestamp);
        if let Some(old) = peer.next.take() {
            self.by_index.remove(&old.local_index.0);
        }
        peer.next = Some(Keypair::new(&send, &recv, local_index, sender_index, now));
        peer.origin = Some((local_index, path, from));
        self.by_index.insert(local_index.0, id);
        push_transmit(
            &mut self.queue,
            &mut self.stats,
            Queued::Resp {
                bytes,
                path,
                dst: from,
            },
        )
    }

    fn handle_transport(
        &mut self,
        from: SocketAddr,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<Option<(PeerId, Range<usize>)>, DropReason> {
        let repr = TransportRepr::parse(&TransportHeader::new_checked(&*datagram)?)?;
        let idx = repr.receiver_index;
        let id = *self
            .by_index
            .get(&idx.0)
            .ok_or(DropReason::UnknownSession)?;
        let peer = &mut self.peers[id.0 as usize];
        let (range, confirmed_next) = match (&mut peer.current, &mut peer.previous, &mut peer.next)
        {
            (Some(k), _, _) if k.local_index == idx => (k.open(repr.counter, datagram)?, false),
            (_, Some(k), _) if k.local_index == idx => (k.open(repr.counter, datagram)?, false),
            (_, _, Some(k)) if k.local_index == idx => (k.open(repr.counter, datagram)?, true),
            _ => return Err(DropReason::UnknownSession),
        };
        // Authenticated from here on.
        if confirmed_next {
            if let Some(old) = peer.previous.take() {
                self.by_index.remove(&old.local_index.0);
            }
            peer.previous = peer.current.take();
            peer.current = peer.next.take();
        }
        let path = repr.path;
        peer.last_rx = Some(now);
        peer.rx_packets += 1;
        peer.rx_bytes += datagram.len() as u64;
        if !peer.connected {
            peer.connected = true;
            push_event(
                &mut self.events,
                &mut self.stats,
                Event::PeerConnected {
                    peer: id,
                    name: peer.config.name.clone(),
                    endpoint: from,
                },
            );
        }
        let plain = &datagram[range.clone()];
        let control = (repr.kind == Kind::Control).then(|| ControlMessage::parse(plain));
        let response = match control {
            Some(Ok(ControlMessage::PathResponse { data })) => Some(data),
            _ => None,
        };
        match peer.observe(idx, path, from, response, now) {
            PathAction::Nothing => {}
            PathAction::Validated => {
                self.stats.paths_validated = self.stats.paths_validated.saturating_add(1);
                push_event(
                    &mut self.events,
                    &mut self.stats,
                    Event::PathEndpointChanged {
                        peer: id,
                        path,
                        endpoint: from,
                    },
                );
            }
            PathAction::Challenge(data) if self.challenges.allow(id, path, datagram.len(), now) => {
                self.stats.challenges_sent = self.stats.challenges_sent.saturating_add(1);
                push_transmit(
                    &mut self.queue,
                    &mut self.stats,
                    Queued::Control {
                        peer: id,
                        path,
                        dst: from,
                        msg: ControlMessage::PathChallenge { data },
                    },
                )?;
            }
            PathAction::Challenge(_) => {}
        }
        if peer.endpoint(path) == Some(from) {
            peer.last_path = Some(path);
            if let Some(e) = peer.paths.iter_mut().find(|e| e.id == path) {
                e.last_rx = Some(now);
            }
        }
        if let Some(control) = control {
            match control? {
                ControlMessage::PathStatus {
                    seq,
                    path: target,
                    down,
                } => {
                    let entry = match peer.paths.iter().position(|e| e.id == target) {
                        Some(i) => &mut peer.paths[i],
                        None => {
                            peer.paths.push(PathEntry::new(target));
                            let last = peer.paths.len() - 1;
                            &mut peer.paths[last]
                        }
                    };
                    if seq > entry.status_seq {
                        entry.status_seq = seq;
                        if entry.down != down {
                            entry.down = down;
                            push_event(
                                &mut self.events,
                                &mut self.stats,
                                Event::PathStatusChanged {
                                    peer: id,
                                    path: target,
                                    down,
                                },
                            );
                        }
                    }
                    // Acked to the source even before validation, like a probe: the ack is
                    // smaller than the signal, so no amplification.
                    push_transmit(
                        &mut self.queue,
                        &mut self.stats,
                        Queued::Control {
                            peer: id,
                            path,
                            dst: from,
                            msg: ControlMessage::SignalAck { seq },
                        },
                    )?;
                }
                ControlMessage::FlowMove {
                    seq,
                    path: target,
                    flow,
                } => {
                    if peer.flows.apply_move(flow, target, seq) {
                        push_event(
                            &mut self.events,
                            &mut self.stats,
                            Event::FlowMoved {
                                peer: id,
                                flow,
                                path: target,
                            },
                        );
                    }
                    push_transmit(
                        &mut self.queue,
                        &mut self.stats,
                        Queued::Control {
                            peer: id,
                            path,
                            dst: from,
                            msg: ControlMessage::SignalAck { seq },
                        },
                    )?;
                }
                // Echoed to the source even before it is validated: one ack per authenticated,
                // non-replayed probe of the same size is no amplification, and it lets the
                // client measure a path that just rebound.
                ControlMessage::Probe { seq, sent_us } => push_transmit(
                    &mut self.queue,
                    &mut self.stats,
                    Queued::Control {
                        peer: id,
                        path,
                        dst: from,
                        msg: ControlMessage::ProbeAck {
                            seq,
                            echo_us: sent_us,
                        },
                    },
                )?,
                // The anchor never challenges through the client; responses were used above.
                ControlMessage::ProbeAck { .. }
                | ControlMessage::PathChallenge { .. }
                | ControlMessage::PathResponse { .. }
                | ControlMessage::SignalAck { .. } => {}
            }
            return Ok(None);
        }
        let info = ip::parse(plain).ok_or(DropReason::NotIp)?;
        let own = match info.src {
            IpAddr::V4(a) => a == peer.config.virtual_ipv4,
            IpAddr::V6(a) => Some(a) == peer.config.virtual_ipv6,
        };
        if !own {
            return Err(DropReason::SpoofedSource);
        }
        peer.flows.record(
            FlowKey {
                protocol: info.protocol,
                remote: info.dst,
                remote_port: info.dst_port,
                local_port: info.src_port,
            },
            path,
        );
        Ok(Some((id, range)))
    }

    /// `buf[HEADER_LEN..HEADER_LEN + len]` holds an inner packet read from the TUN; its
    /// destination picks the peer; the downlink path is the one the flow last came up on or was
    /// moved to, unless that path is down or stale (see the module docs), else the freshest path.
    pub fn encapsulate(
        &mut self,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Result<Transmit, DropReason> {
        let r = self.encapsulate_inner(buf, len, now);
        if let Err(reason) = r {
            self.drops.add(reason);
        }
        r
    }

    fn encapsulate_inner(
        &mut self,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Result<Transmit, DropReason> {
        let end = HEADER_LEN.checked_add(len).ok_or(DropReason::TooBig)?;
        if end.checked_add(TAG_LEN).is_none_or(|n| n > buf.len()) {
            return Err(DropReason::TooBig);
        }
        let info = ip::parse(&buf[HEADER_LEN..end]).ok_or(DropReason::NotIp)?;
        let id = *self.by_addr.get(&info.dst).ok_or(DropReason::UnknownPeer)?;
        let peer = &mut self.peers[id.0 as usize];
        let flow = FlowKey {
            protocol: info.protocol,
            remote: info.src,
            remote_port: info.src_port,
            local_port: info.dst_port,
        };
        // Only validated endpoints. Fresh first: the flow's path, else the freshest one; then,
        // when nothing is fresh, the flow's or the latest path unless said down; then any.
        let stale = self.config.path_stale_after;
        let wanted = peer.flows.get(&flow).or(peer.last_path);
        let entry = |p: PathId| peer.paths.iter().find(|e| e.id == p);
        let chosen = wanted
            .and_then(entry)
            .filter(|e| e.fresh(now, stale))
            .or_else(|| {
                peer.paths
                    .iter()
                    .filter(|e| e.fresh(now, stale))
                    .max_by_key(|e| e.last_rx)
            })
            .or_else(|| {
                [peer.flows.get(&flow), peer.last_path]
                    .into_iter()
                    .flatten()
                    .filter_map(entry)
                    .find(|e| e.endpoint.is_some() && !e.down)
            })
            .or_else(|| {
                peer.paths
                    .iter()
                    .filter(|e| e.endpoint.is_some())
                    .min_by_key(|e| e.down)
            });
        let (path, dst) = chosen
            .and_then(|e| Some((e.id, e.endpoint?)))
            .ok_or(DropReason::NoSession)?;
        let keys = peer.current.as_mut().ok_or(DropReason::NoSession)?;
        let n = keys.seal(Kind::Data, path, buf, len)?;
        peer.tx_packets += 1;
        peer.tx_bytes += n as u64;
        Ok(Transmit {
            path,
            dst: Some(dst),
            len: n,
        })
    }

    /// The next datagram to send, written into `buf` (at least 1500 bytes is always enough).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let _ = now;
        while let Some(q) = self.queue.pop_front() {
            match q {
                Queued::Resp { bytes, path, dst } => {
                    if let Some(out) = buf.get_mut(..RESP_LEN) {
                        out.copy_from_slice(&bytes);
                        return Some(Transmit {
                            path,
                            dst: Some(dst),
                            len: RESP_LEN,
                        });
                    }
                }
                Queued::Cookie { bytes, path, dst } => {
                    if let Some(out) = buf.get_mut(..COOKIE_REPLY_LEN) {
                        out.copy_from_slice(&bytes);
                        return Some(Transmit {
                            path,
                            dst: Some(dst),
                            len: COOKIE_REPLY_LEN,
                        });
                    }
                }
                Queued::Control {
                    peer,
                    path,
                    dst,
                    msg,
                } => {
                    let Some(p) = self.peers.get_mut(peer.0 as usize) else {
                        continue;
                    };
                    let Some(keys) = p.current.as_mut() else {
                        continue;
                    };
                    let Some(body) = buf.get_mut(HEADER_LEN..HEADER_LEN + msg.buffer_len()) else {
                        continue;
                    };
                    let Ok(n) = msg.emit(body) else { continue };
                    if let Ok(len) = keys.seal(Kind::Control, path, buf, n) {
                        p.tx_packets += 1;
                        p.tx_bytes += len as u64;
                        return Some(Transmit {
                            path,
                            dst: Some(dst),
                            len,
                        });
                    }
                }
            }
        }
        None
    }

    /// When `handle_timeout` must be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.peers
            .iter()
            .filter_map(|p| p.deadline(self.config.session_timeout))
            .min()
            .map(|t| (t, "session expiry"))
    }

    /// Runs the timers due at `now`: forgets sessions silent for `session_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.session_timeout;
        for (i, peer) in self.peers.iter_mut().enumerate() {
            if peer.deadline(timeout).is_none_or(|d| now < d) {
                continue;
            }
            for k in [peer.current.take(), peer.previous.take(), peer.next.take()]
                .into_iter()
                .flatten()
            {
                self.by_index.remove(&k.local_index.0);
            }
            peer.paths.clear();
            peer.flows.clear();
            peer.last_path = None;
            if peer.connected {
                peer.connected = false;
                self.events.push_back(Event::PeerDisconnected {
                    peer: PeerId(i as u32),
                    name: peer.config.name.clone(),
                });
            }
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Drops so far, counted by this core.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Counters of the flood defences, path validation and queue bounds.
    pub fn stats(&self) -> &AnchorStats {
        &self.stats
    }

    /// Fuzzing hook: seals `buf[HEADER_LEN..HEADER_LEN + len]` as a Control packet to `peer`
    /// with its current keys, whatever it holds.
    pub(crate) fn seal_control_raw(
        &mut self,
        peer: PeerId,
        path: PathId,
        buf: &mut [u8],
        len: usize,
    ) -> Option<usize> {
        self.peers
            .get_mut(peer.0 as usize)?
            .current
            .as_mut()?
            .seal(Kind::Control, path, buf, len)
            .ok()
    }

    /// Source IPs the per-IP handshake limiter tracks now (bounded).
    pub fn rate_limited_sources(&self) -> usize {
        self.limiter.tracked_ips()
    }

    /// Status of every configured peer.
    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        self.peers.iter().enumerate().map(|(i, p)| PeerStatus {
            peer: PeerId(i as u32),
            name: p.config.name.clone(),
            connected: p.connected,
            paths: p
                .paths
                .iter()
                .filter_map(|e| Some((e.id, e.endpoint?)))
                .collect(),
            rx_packets: p.rx_packets,
            rx_bytes: p.rx_bytes,
            tx_packets: p.tx_packets,
            tx_bytes: p.tx_bytes,
            last_rx: p.last_rx,
        })
    }
}
