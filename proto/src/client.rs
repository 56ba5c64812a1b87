//! The mobile host's core: one session to one anchor over several paths.
use crate::keys::{PublicKey, StaticSecret};
use crate::time::Instant;
use crate::{DropCounters, DropReason, PathId, SessionParams, Transmit};
use core::ops::Range;
use core::time::Duration;

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The mobile host's identity.
    pub static_secret: StaticSecret,
    /// The anchor's identity.
    pub anchor_public: PublicKey,
    /// Probe interval on a path that carries no traffic (default 25 s).
    pub keepalive: Duration,
    /// Probe interval on a path that carries traffic or is not yet known up (default 1 s).
    pub probe_interval: Duration,
    /// A path with no authenticated packet received for this long is Down (default 3 s).
    pub path_timeout: Duration,
    /// Time before a handshake init is resent, on the next path (default 1 s).
    pub handshake_retry: Duration,
    /// Age of a session after which a new handshake starts (default 120 s).
    pub rekey_after: Duration,
}

impl ClientConfig {
    /// A config with the default timers.
    pub fn new(static_secret: StaticSecret, anchor_public: PublicKey) -> Self {
        ClientConfig {
            static_secret,
            anchor_public,
            keepalive: Duration::from_secs(25),
            probe_interval: Duration::from_secs(1),
            path_timeout: Duration::from_secs(3),
            handshake_retry: Duration::from_secs(1),
            rekey_after: Duration::from_secs(120),
        }
    }
}

/// Liveness of a path as the probes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathState {
    /// An authenticated packet arrived on it within `path_timeout`.
    Up,
    /// Nothing authenticated arrived for `path_timeout`, or nothing yet.
    Down,
}

/// Measurements of one path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathStats {
    /// Liveness.
    pub state: PathState,
    /// Smoothed round-trip time of probes, once one was answered.
    pub rtt: Option<Duration>,
    /// Smoothed fraction of probes lost, 0.0..=1.0.
    pub loss: f32,
    /// When the last authenticated packet arrived on this path.
    pub last_rx: Option<Instant>,
    /// Datagrams sent / received on this path.
    pub tx_packets: u64,
    /// Authenticated datagrams received on this path.
    pub rx_packets: u64,
}

/// What happened, for the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A session is established (first time, or again after `Disconnected`).
    Connected(SessionParams),
    /// Every path went silent: the session is presumed lost and a new handshake is running.
    Disconnected,
    /// A path answers again.
    PathUp(PathId),
    /// A path stopped answering, or the driver said its link is gone.
    PathDown(PathId),
    /// The session's keys were replaced by a new handshake.
    Rekeyed,
}

/// The mobile host's protocol core. See the crate docs for the calling order.
pub struct Client {
    config: ClientConfig,
    drops: DropCounters,
}

impl Client {
    /// A client that will handshake as soon as a path is up.
    pub fn new(config: ClientConfig, now: Instant, unix_nanos_at_now: u64) -> Self {
        let _ = (now, unix_nanos_at_now);
        Client {
            config,
            drops: DropCounters::default(),
        }
    }

    /// The driver has a socket for `path` (its link is up).
    pub fn handle_path_up(&mut self, path: PathId, now: Instant) {
        let _ = (path, now, &self.config);
    }

    /// The driver lost the link of `path`.
    pub fn handle_path_down(&mut self, path: PathId, now: Instant) {
        let _ = (path, now);
    }

    /// Decrypts in place. `Ok(Some(range))`: an inner IP packet at `datagram[range]` for the TUN;
    /// `Ok(None)`: consumed (handshake or control; see `poll_transmit` / `poll_event`).
    pub fn handle_datagram(
        &mut self,
        path: PathId,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<Option<Range<usize>>, DropReason> {
        let _ = (path, datagram, now);
        Err(DropReason::NoSession)
    }

    /// `buf[HEADER_LEN..HEADER_LEN + len]` holds an inner IP packet and `buf` has at least
    /// `TAG_LEN` more bytes. Writes header and tag in place; returns the datagram length.
    pub fn encapsulate(
        &mut self,
        path: PathId,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Result<usize, DropReason> {
        let _ = (path, buf, len, now);
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

    /// The parameters of the current session.
    pub fn session(&self) -> Option<&SessionParams> {
        None
    }

    /// Measurements of `path`, if the driver declared it up.
    pub fn path_stats(&self, path: PathId) -> Option<PathStats> {
        let _ = path;
        None
    }

    /// Drops so far, counted by this core.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }
}
