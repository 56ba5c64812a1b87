//! The anchor node's core: sessions with many mobile hosts.
//!
//! Peers are configured by static public key, each with its virtual addresses. A handshake from
//! a configured key creates a *next* session that becomes current only when the first
//! authenticated transport packet arrives on it (as in WireGuard), so a replayed or stray init
//! never breaks a live session; the replaced session is kept for packets still in flight.
//!
//! Every decrypted inner packet must come from the peer's virtual address (no open relay). Each
//! authenticated packet teaches the path's endpoint (NAT rebinding just works) and, for data, the
//! path its flow came up on: `encapsulate` sends a flow's downlink over that path, else over the
//! path that most recently carried traffic from the peer.
//!
//! Never does IO or reads a clock. The per-packet paths do hash lookups but no allocation once
//! the per-peer tables have grown to their working size (flows are bounded per peer).

use crate::control::ControlMessage;
use crate::crypto::{Keypair, random_index};
use crate::handshake::{Response, mac1_key};
use crate::ip;
use crate::keys::{PublicKey, StaticSecret};
use crate::time::Instant;
use crate::wire::{self, HandshakeRespRepr, Kind, RESP_LEN, TransportHeader, TransportRepr};
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
}

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

/// A flow as seen from the mobile host: protocol, remote address and port, local port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    protocol: u8,
    remote: IpAddr,
    remote_port: u16,
    local_port: u16,
}

/// Flow -> the path it last came up on, bounded, oldest inserted evicted first.
#[derive(Default)]
struct FlowTable {
    map: HashMap<FlowKey, PathId>,
    order: VecDeque<FlowKey>,
}

impl FlowTable {
    fn record(&mut self, key: FlowKey, path: PathId) {
        if let Some(p) = self.map.get_mut(&key) {
            *p = path;
            return;
        }
        if self.map.len() >= MAX_FLOWS_PER_PEER
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.map.insert(key, path);
        self.order.push_back(key);
    }

    fn get(&self, key: &FlowKey) -> Option<PathId> {
        self.map.get(key).copied()
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

struct PathEntry {
    id: PathId,
    endpoint: SocketAddr,
}

struct Peer {
    config: PeerConfig,
    last_timestamp: Option<u64>,
    current: Option<Keypair>,
    previous: Option<Keypair>,
    next: Option<Keypair>,
    connected: bool,
    paths: Vec<PathEntry>,
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
        self.paths.iter().find(|p| p.id == path).map(|p| p.endpoint)
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
    ProbeAck {
        peer: PeerId,
        path: PathId,
        dst: SocketAddr,
        seq: u32,
        echo_us: u64,
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
    queue: VecDeque<Queued>,
    events: VecDeque<Event>,
    drops: DropCounters,
}

impl Anchor {
    /// An anchor with no sessions yet.
    pub fn new(config: AnchorConfig, now: Instant) -> Self {
        let _ = now;
        let mac1_key = mac1_key(&config.static_secret.public_key());
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
            queue: VecDeque::with_capacity(64),
            events: VecDeque::with_capacity(64),
            drops: DropCounters::default(),
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
            Kind::HandshakeResp => Err(DropReason::UnknownKind),
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
        let path = wire::HandshakeInit::new_checked(datagram)?.path();
        let sender_index = wire::HandshakeInit::new_checked(datagram)?.sender_index();
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
        self.by_index.insert(local_index.0, id);
        self.queue.push_back(Queued::Resp {
            bytes,
            path,
            dst: from,
        });
        Ok(())
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
        peer.last_path = Some(path);
        if !peer.connected {
            peer.connected = true;
            self.events.push_back(Event::PeerConnected {
                peer: id,
                name: peer.config.name.clone(),
                endpoint: from,
            });
        }
        match peer.paths.iter_mut().find(|p| p.id == path) {
            Some(p) if p.endpoint == from => {}
            Some(p) => {
                p.endpoint = from;
                self.events.push_back(Event::PathEndpointChanged {
                    peer: id,
                    path,
                    endpoint: from,
                });
            }
            None => {
                peer.paths.push(PathEntry {
                    id: path,
                    endpoint: from,
                });
                self.events.push_back(Event::PathEndpointChanged {
                    peer: id,
                    path,
                    endpoint: from,
                });
            }
        }
        let plain = &datagram[range.clone()];
        if repr.kind == Kind::Control {
            match ControlMessage::parse(plain)? {
                ControlMessage::Probe { seq, sent_us } => {
                    self.queue.push_back(Queued::ProbeAck {
                        peer: id,
                        path,
                        dst: from,
                        seq,
                        echo_us: sent_us,
                    });
                }
                ControlMessage::ProbeAck { .. } => {}
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
    /// destination picks the peer; the downlink path is the one the flow last came up on, else
    /// the path that most recently carried authenticated traffic from that peer.
    pub fn encapsulate(
        &mut self,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Result<Transmit, DropReason> {
        let _ = now;
        let r = self.encapsulate_inner(buf, len);
        if let Err(reason) = r {
            self.drops.add(reason);
        }
        r
    }

    fn encapsulate_inner(&mut self, buf: &mut [u8], len: usize) -> Result<Transmit, DropReason> {
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
        let (path, dst) = peer
            .flows
            .get(&flow)
            .and_then(|p| Some((p, peer.endpoint(p)?)))
            .or_else(|| peer.last_path.and_then(|p| Some((p, peer.endpoint(p)?))))
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
                Queued::ProbeAck {
                    peer,
                    path,
                    dst,
                    seq,
                    echo_us,
                } => {
                    let msg = ControlMessage::ProbeAck { seq, echo_us };
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

    /// Status of every configured peer.
    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        self.peers.iter().enumerate().map(|(i, p)| PeerStatus {
            peer: PeerId(i as u32),
            name: p.config.name.clone(),
            connected: p.connected,
            paths: p.paths.iter().map(|e| (e.id, e.endpoint)).collect(),
            rx_packets: p.rx_packets,
            rx_bytes: p.rx_bytes,
            tx_packets: p.tx_packets,
            tx_bytes: p.tx_bytes,
            last_rx: p.last_rx,
        })
    }
}
