//! The anchor node's core: sessions with many mobile hosts.
use crate::keys::{PublicKey, StaticSecret};
use crate::time::Instant;
use crate::{DEFAULT_MTU, DropCounters, DropReason, PathId, PeerId, Transmit};
use core::ops::Range;
use core::time::Duration;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

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

/// The anchor's protocol core. See the crate docs for the calling order.
pub struct Anchor {
    config: AnchorConfig,
    drops: DropCounters,
}

impl Anchor {
    /// An anchor with no sessions yet.
    pub fn new(config: AnchorConfig, now: Instant) -> Self {
        let _ = now;
        Anchor {
            config,
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
        let _ = (from, datagram, now);
        Err(DropReason::UnknownSession)
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
        let _ = (buf, len, now);
        Err(DropReason::NoSession)
    }

    /// The next datagram to send, written into `buf` (at least 1500 bytes is always enough).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let _ = (now, buf);
        None
    }

    /// When `handle_timeout` must be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        None
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        None
    }

    /// Drops so far, counted by this core.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Status of every configured peer.
    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        self.config
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| PeerStatus {
                peer: PeerId(i as u32),
                name: p.name.clone(),
                connected: false,
                paths: Vec::new(),
                rx_packets: 0,
                rx_bytes: 0,
                tx_packets: 0,
                tx_bytes: 0,
                last_rx: None,
            })
    }
}
