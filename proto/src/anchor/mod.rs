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
//!   dropped as `QueueFull` before any DH, and counted in [`AnchorStats::queue_overflows`]
//!   (the same way as the client counts, see [`crate::queue`]);
//! - events: [`MAX_EVENTS`] undrained; past it events are lost and counted in
//!   [`AnchorStats::event_overflows`];
//! - per-IP rate-limit table: [`crate::cookie::MAX_RATE_LIMIT_ENTRIES`] source IPs.
//!
//! Reaching a bound is counted (drops and [`Anchor::stats`]); the driver logs the counters.
//!
//! Never does IO or reads a clock. The per-packet paths do hash lookups but no allocation once
//! the per-peer tables have grown to their working size (all of them are bounded).
//!
//! Code layout: `handshake.rs` (inits and the flood defences), `peer.rs` (a peer's keypairs and
//! path validation), `flows.rs` (downlink path choice, uplink checks, `encapsulate`),
//! `control.rs` (probes and signals from the client, and their answers), `expiry.rs` (the
//! deadline heap of session expiry: a wake-up touches only the sessions that are due); this file
//! holds the struct, the inputs and outputs, and the timers.

mod control;
mod expiry;
mod flows;
mod handshake;
mod membership;
mod nattest;
mod peer;
mod resend;

pub use crate::control::FlowKey;
pub use crate::queue::QueueStats;
pub use control::{SIGNAL_EVENT_BURST, SIGNAL_EVENT_REFILL};
pub use membership::PeerChanges;
pub use nattest::{NAT_REGISTER_SPACING, NAT_TEST_MAX_AGE};
pub use resend::MOVE_RESEND_SILENCE;

use crate::control::ControlMessage;
use crate::cookie::{ChallengeGate, CookieJar, Limiter};
use crate::dup::DupVerdict;
use crate::handshake::mac1_key;
use crate::keys::{PublicKey, StaticSecret};
use crate::queue::Queues;
use crate::time::Instant;
use crate::timer::Timer;
use crate::wire::{self, COOKIE_REPLY_LEN, Kind, RESP_LEN, TransportHeader, TransportRepr};
use crate::{Cipher, DEFAULT_MTU, DropCounters, DropReason, HEADER_LEN, PathId, PeerId, Transmit};
use core::ops::Range;
use core::time::Duration;
use expiry::ExpiryQueue;
use peer::{PathAction, Peer};
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
    /// Datagrams not answered because the transmit queue was full
    /// ([`QueueStats::queue_overflows`]).
    pub queue_overflows: u64,
    /// Events lost because the event queue was full ([`QueueStats::event_overflows`]).
    pub event_overflows: u64,
    /// Applied signals whose event was left out because the peer spent its event budget
    /// (see [`SIGNAL_EVENT_BURST`]).
    pub signal_events_suppressed: u64,
    /// Downlink packets of redundant flows sent a second time, on the flow's other path.
    pub duplicated_packets: u64,
    /// The bytes of those second copies (whole datagrams).
    pub duplicated_bytes: u64,
    /// NAT-test registrations noted (see `nattest.rs`).
    pub nat_registrations: u64,
    /// NAT-test replies sent, one per request of a noted registration.
    pub nat_replies: u64,
    /// NAT-test registrations and requests refused: unknown path, too fast, nothing noted, a
    /// wrong or used nonce, too old.
    pub nat_refused: u64,
    /// Downlink packets sent again on a flow's new path after it left a path (see
    /// [`crate::resend`]).
    pub resent_packets: u64,
    /// The bytes of those datagrams.
    pub resent_bytes: u64,
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
    /// The accepted peers; at start `PeerId(i)` is `peers[i]` (peers added later by
    /// [`Anchor::set_peers`] get the next free ids).
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
    /// Keys older than this neither send nor accept anything (default 180 s, WireGuard's
    /// REJECT_AFTER_TIME; the client rekeys well before).
    pub reject_after: Duration,
    /// Whether the anchor runs AES-256-GCM fast (the driver detects AES hardware, or the
    /// `cipher` key forces it): then it picks AES-256-GCM for clients that offer it, and
    /// ChaCha20-Poly1305 otherwise (default false: always ChaCha20-Poly1305).
    pub fast_aes: bool,
    /// Bytes of recent downlink packets kept per path of a peer, to resend those of flows that
    /// leave the path (default [`crate::resend::DEFAULT_RESEND_BYTES`]; 0: none kept).
    pub resend_bytes: usize,
    /// How long they are kept (default [`crate::resend::DEFAULT_RESEND_AGE`]).
    pub resend_age: Duration,
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
            reject_after: crate::client::REJECT_AFTER_TIME,
            fast_aes: false,
            resend_bytes: crate::resend::DEFAULT_RESEND_BYTES,
            resend_age: crate::resend::DEFAULT_RESEND_AGE,
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
    /// Its static public key.
    pub public: PublicKey,
    /// Its virtual IPv4 address.
    pub virtual_ipv4: Ipv4Addr,
    /// Its virtual IPv6 address, if any.
    pub virtual_ipv6: Option<Ipv6Addr>,
    /// When the newest keypair was made (its handshake), if it has one.
    pub last_handshake: Option<Instant>,
    /// Flows the anchor remembers for downlink path choice.
    pub flows: usize,
    /// Every path the peer mentioned, validated or not, in the order first seen.
    pub path_status: Vec<PathStatus>,
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
    /// The transport AEAD of its confirmed session, if any.
    pub cipher: Option<Cipher>,
    /// Bytes of downlink datagrams sent again after their flow left a path (in `tx_bytes` too).
    pub resent_bytes: u64,
}

/// One path of a peer, for the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathStatus {
    /// Which path.
    pub path: PathId,
    /// Its validated endpoint (downlink goes there), if any yet.
    pub endpoint: Option<SocketAddr>,
    /// When the last authenticated packet from that endpoint arrived.
    pub last_rx: Option<Instant>,
    /// The peer said this path is down.
    pub down: bool,
}

/// A datagram waiting for `poll_transmit`.
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

/// The anchor's protocol core. See the crate docs for the calling order.
pub struct Anchor {
    config: AnchorConfig,
    mac1_key: [u8; 32],
    peers: Vec<Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    by_addr: HashMap<IpAddr, PeerId>,
    by_index: HashMap<u32, PeerId>,
    queues: Queues<Queued, Event>,
    drops: DropCounters,
    cookies: CookieJar,
    limiter: Limiter,
    challenges: ChallengeGate,
    /// When each peer with a session is due for its expiry check (see `expiry.rs`).
    expiry: ExpiryQueue,
    /// The defence counters; the queue counters live in `queues`.
    stats: AnchorStats,
    /// Peers with packets marked for resending, in the order they were marked.
    resend_due: VecDeque<PeerId>,
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
                Peer::new(pc.clone())
            })
            .collect();
        Anchor {
            config,
            mac1_key,
            peers,
            by_key,
            by_addr,
            by_index: HashMap::new(),
            queues: Queues::new(MAX_QUEUED_TRANSMITS, MAX_EVENTS),
            drops: DropCounters::default(),
            cookies: CookieJar::new(&public, now),
            limiter: Limiter::new(now),
            challenges: ChallengeGate::default(),
            expiry: ExpiryQueue::default(),
            stats: AnchorStats::default(),
            resend_due: VecDeque::new(),
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

    /// A Data or Control datagram: authenticate, confirm a next session, validate the path,
    /// then hand the control message to `handle_control` or the inner packet to the TUN.
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
        let (range, confirmed_next, dup) =
            peer.open(idx, repr.counter, datagram, now, self.config.reject_after)?;
        // Authenticated from here on.
        if confirmed_next && let Some(old) = peer.confirm_next() {
            self.by_index.remove(&old.0);
        }
        let path = repr.path;
        peer.last_rx = Some(now);
        peer.rx_packets += 1;
        peer.rx_bytes += datagram.len() as u64;
        if !peer.connected {
            peer.connected = true;
            self.queues.push_event(Event::PeerConnected {
                peer: id,
                name: peer.config.name.clone(),
                endpoint: from,
            });
        }
        let plain = &datagram[range.clone()];
        let control = (repr.kind == Kind::Control).then(|| ControlMessage::parse(plain));
        if let Some(Ok(ControlMessage::NatRegister { token })) = control {
            // From a disposable test socket: neither the path's address nor news of it.
            self.handle_nat_register(id, path, from, token, now)?;
            return Ok(None);
        }
        let response = match control {
            Some(Ok(ControlMessage::PathResponse { data })) => Some(data),
            _ => None,
        };
        match peer.observe(idx, path, from, response, now) {
            PathAction::Nothing => {}
            PathAction::Validated => {
                self.stats.paths_validated = self.stats.paths_validated.saturating_add(1);
                self.queues.push_event(Event::PathEndpointChanged {
                    peer: id,
                    path,
                    endpoint: from,
                });
            }
            PathAction::Challenge(data) if self.challenges.allow(id, path, datagram.len(), now) => {
                self.stats.challenges_sent = self.stats.challenges_sent.saturating_add(1);
                self.queues.push_transmit(Queued::Control {
                    peer: id,
                    path,
                    dst: from,
                    msg: ControlMessage::PathChallenge { data },
                })?;
            }
            PathAction::Challenge(_) => {}
        }
        let peer = &mut self.peers[id.0 as usize];
        peer.heard_on(path, from, now);
        if let Some(control) = control {
            self.handle_control(id, path, from, control?, range.len(), now)?;
            return Ok(None);
        }
        // After `heard_on`: the second copy still proves its path alive.
        if dup == DupVerdict::Duplicate {
            return Err(DropReason::Duplicate);
        }
        if let Some(old) = peer.uplink(&datagram[range.clone()], path)? {
            // The flow came up on a new path: the client moved it.
            self.resend_moved(id, old.0, Some(old.1), now);
        }
        Ok(Some((id, range)))
    }

    /// The next datagram to send, written into `buf` (at least 1500 bytes is always enough;
    /// a resent packet needs the room of the packet, as for `encapsulate`): handshake answers
    /// and control datagrams first, then packets resent after their flow left a path.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(q) = self.queues.pop_transmit() {
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
                    let Ok(keys) = p.sending_keys(now, self.config.reject_after) else {
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
        self.poll_resend(now, buf)
    }

    /// When `handle_timeout` must be called next, and why. Constant time: the earliest entry
    /// of the expiry heap, which may be a little early for a peer heard from since (see
    /// `expiry.rs`); the wake-up then only re-files that peer.
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        self.expiry.next().map(|at| (at, Timer::SessionExpiry))
    }

    /// Runs the timers due at `now`: forgets sessions silent for `session_timeout`. Touches only
    /// the peers whose expiry entry is due, not every peer.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.session_timeout;
        while let Some(id) = self.expiry.pop_due(now) {
            let Some(peer) = self.peers.get_mut(id.0 as usize) else {
                continue;
            };
            peer.expiry_scheduled = false;
            match peer.deadline(timeout) {
                // The session went away meanwhile: nothing to expire.
                None => {}
                Some(d) if now < d => {
                    peer.expiry_scheduled = true;
                    self.expiry.push(d, id);
                }
                Some(_) => {
                    self.challenges.forget(id, peer.paths.iter().map(|p| p.id));
                    for index in peer.forget_session() {
                        self.by_index.remove(&index.0);
                    }
                    if peer.connected {
                        peer.connected = false;
                        self.queues.push_event(Event::PeerDisconnected {
                            peer: id,
                            name: peer.config.name.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Files `id`'s session for an expiry check, unless it already has an entry (whose time is
    /// never later than the session's deadline, which only moves later).
    fn schedule_expiry(&mut self, id: PeerId) {
        let timeout = self.config.session_timeout;
        if let Some(peer) = self.peers.get_mut(id.0 as usize)
            && !peer.expiry_scheduled
            && let Some(d) = peer.deadline(timeout)
        {
            peer.expiry_scheduled = true;
            self.expiry.push(d, id);
        }
    }

    /// Expiry entries the timers took off their heap so far: a wake-up costs one per due peer,
    /// never one per configured peer (for tests and benches).
    pub fn timer_visits(&self) -> u64 {
        self.expiry.visits()
    }

    /// Peers with a session waiting on the expiry heap.
    pub fn sessions_scheduled(&self) -> usize {
        self.expiry.len()
    }

    /// Paths with a path challenge on record (they are forgotten with their session).
    pub fn challenged_paths(&self) -> usize {
        self.challenges.len()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.queues.pop_event()
    }

    /// Drops so far, counted by this core.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Counters of the flood defences, path validation and queue bounds.
    pub fn stats(&self) -> AnchorStats {
        let q = self.queues.stats;
        AnchorStats {
            queue_overflows: q.queue_overflows,
            event_overflows: q.event_overflows,
            ..self.stats.clone()
        }
    }

    /// Overflows of the transmit and event queues (see [`crate::queue`]).
    pub fn queue_stats(&self) -> QueueStats {
        self.queues.stats
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

    /// The transport AEAD of a peer's confirmed session, if it has one.
    pub fn peer_cipher(&self, peer: PeerId) -> Option<Cipher> {
        let p = self.peers.get(peer.0 as usize)?;
        p.current.as_ref().map(|k| k.cipher)
    }

    /// Status of every configured peer.
    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.removed)
            .map(|(i, p)| PeerStatus {
                peer: PeerId(i as u32),
                name: p.config.name.clone(),
                connected: p.connected,
                paths: p
                    .paths
                    .iter()
                    .filter_map(|e| Some((e.id, e.endpoint?)))
                    .collect(),
                public: p.config.public,
                virtual_ipv4: p.config.virtual_ipv4,
                virtual_ipv6: p.config.virtual_ipv6,
                last_handshake: [&p.current, &p.previous, &p.next]
                    .into_iter()
                    .flatten()
                    .map(|k| k.created)
                    .max(),
                flows: p.flows.len(),
                path_status: p
                    .paths
                    .iter()
                    .map(|e| PathStatus {
                        path: e.id,
                        endpoint: e.endpoint,
                        last_rx: e.last_rx,
                        down: e.down,
                    })
                    .collect(),
                rx_packets: p.rx_packets,
                rx_bytes: p.rx_bytes,
                tx_packets: p.tx_packets,
                tx_bytes: p.tx_bytes,
                last_rx: p.last_rx,
                cipher: p.current.as_ref().map(|k| k.cipher),
                resent_bytes: p.resent_bytes,
            })
    }
}
