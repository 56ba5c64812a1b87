//! The mobile host's core: one session to one anchor over several paths.
//!
//! The driver declares paths (one UDP socket per uplink, connected to the anchor) with
//! `handle_path_up` / `handle_path_down`. The client handshakes on the first declared path and,
//! when no answer comes within `handshake_retry`, tries again with a fresh handshake on the next
//! path. Once connected, any path carries data (`encapsulate` takes the path the driver's policy
//! chose) and every declared path is probed: the answers give the path's RTT and loss and keep it
//! Up.
//!
//! # Probing and liveness
//! Probe timing balances detection time against a phone's battery:
//! - *active* (data sent or received within `active_window`, default 5 s): every path is probed
//!   every `probe_interval` (default 200 ms);
//! - *idle*: one probe per `keepalive` (default 25 s), just often enough to keep NAT bindings;
//! - a path with a probe outstanding is probed every `probe_interval` until answered, and a Down
//!   path every `down_probe_interval` (default 1 s), to see it come back.
//!
//! A path is Down when a probe sent on it stays without any authenticated answer on that path
//! for `path_timeout` (default 700 ms, about three active probes): a blackholed path is found
//! within `probe_interval + path_timeout` (<= 0.9 s) while active, and within one keepalive plus
//! `path_timeout` when idle. A link the driver reports gone (`handle_path_down`) is Down at once.
//!
//! # Signalling the anchor
//! The anchor learns each move at once: when a path goes Down (timeout or the driver) the client
//! sends `PathStatus { down }` on a live path, and `PathStatus { up }` when it answers again;
//! [`Client::move_flows`] sends one `FlowMove` per flow, on the flow's new path. Each signal is
//! resent every `signal_retry` (doubling, at most 2 s, rotating over the usable paths) until
//! the anchor's `SignalAck` for its sequence number arrives. Sequence numbers grow with the
//! unix clock, so a restarted client's signals are still newer than its old ones.
//!
//! # Hold-down
//! [`Client::path_usable`] says whether the driver should put traffic on a path: a path that
//! came back Up is usable only after staying Up for `hold_down` (default 3 s) while another
//! path has been Up that long, so a flapping preferred link does not drag flows back and forth.
//!
//! # Session lifetime
//! After `rekey_after` a new handshake runs while the old keys keep working; the old receive key
//! is kept after the switch for packets still in flight. When every path is Down and nothing
//! authenticated arrived for `path_timeout` (the anchor restarted and forgot us, or every uplink
//! is blackholed), the client reports `Disconnected` and handshakes again, still sending on the
//! old keys meanwhile so that a mere blip loses nothing.
//!
//! Path validation: the anchor answers a packet from an address it has not validated for that
//! path with a `PathChallenge`; the client echoes it at once in a `PathResponse` on the same
//! path, so NAT rebinding costs one round trip.
//!
//! Handshake floods: an anchor under load answers an init with a CookieReply; the client keeps
//! the cookie (for a little less than its 2-minute life), resends the pending init at once with
//! `mac2` set (once per init, so forged replies cannot make it loop) and puts mac2 on later
//! inits while the cookie lasts.
//!
//! Bounds: the transmit queue holds at most [`MAX_QUEUED_TRANSMITS`] datagrams and the event
//! queue [`MAX_EVENTS`]; past that, the datagram or event is lost and counted as `QueueFull`.
//!
//! Never does IO or reads a clock; never allocates per packet (the queues are allocated once at
//! their bound).

pub use crate::control::FlowKey;
use crate::control::{CHALLENGE_LEN, ControlMessage};
use crate::cookie::{COOKIE_ROTATION, cookie_key, mac2, open_reply};
use crate::crypto::{Keypair, random_index};
use crate::handshake::{Initiation, mac1_key};
use crate::keys::{PublicKey, StaticSecret};
use crate::time::Instant;
use crate::wire::{
    self, COOKIE_LEN, CookieReply, CookieReplyRepr, HandshakeInit, HandshakeResp,
    HandshakeRespRepr, INIT_LEN, Kind, TransportHeader, TransportRepr,
};
use crate::{DropCounters, DropReason, HEADER_LEN, PathId, SessionParams, TAG_LEN, Transmit};
use core::ops::Range;
use core::time::Duration;
use ring::aead::LessSafeKey;
use std::collections::VecDeque;

/// Datagrams waiting for `poll_transmit`.
pub const MAX_QUEUED_TRANSMITS: usize = 256;
/// Events waiting for `poll_event`.
pub const MAX_EVENTS: usize = 256;
/// Signals (path status, flow moves) waiting for their ack; past it the oldest is given up.
pub const MAX_PENDING_SIGNALS: usize = 128;
/// The longest wait between two sends of an unacknowledged signal.
const MAX_SIGNAL_RETRY: Duration = Duration::from_secs(2);
/// A cookie is used for this long after it arrived: a margin under the anchor's rotation.
const COOKIE_LIFETIME: Duration = COOKIE_ROTATION.saturating_sub(Duration::from_secs(5));

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The mobile host's identity.
    pub static_secret: StaticSecret,
    /// The anchor's identity.
    pub anchor_public: PublicKey,
    /// Probe interval on an Up path while idle: keeps NAT bindings (default 25 s).
    pub keepalive: Duration,
    /// Probe interval on every path while active, and while a probe is unanswered
    /// (default 200 ms).
    pub probe_interval: Duration,
    /// Probe interval on a Down path (default 1 s).
    pub down_probe_interval: Duration,
    /// Data sent or received within this long makes the session active (default 5 s).
    pub active_window: Duration,
    /// A path whose probe got no authenticated answer for this long is Down (default 700 ms).
    pub path_timeout: Duration,
    /// A path that came back Up is usable after this long Up (default 3 s).
    pub hold_down: Duration,
    /// First resend of an unacknowledged signal (default 150 ms, then doubling).
    pub signal_retry: Duration,
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
            probe_interval: Duration::from_millis(200),
            down_probe_interval: Duration::from_secs(1),
            active_window: Duration::from_secs(5),
            path_timeout: Duration::from_millis(700),
            hold_down: Duration::from_secs(3),
            signal_retry: Duration::from_millis(150),
            handshake_retry: Duration::from_secs(1),
            rekey_after: Duration::from_secs(120),
        }
    }
}

/// Liveness of a path as the probes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathState {
    /// Its probes are answered.
    Up,
    /// A probe went unanswered for `path_timeout`, or nothing arrived on it yet.
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

struct Path {
    id: PathId,
    state: PathState,
    /// When it last became Up.
    up_since: Option<Instant>,
    /// When the oldest probe not followed by any authenticated packet on this path was sent.
    unanswered_since: Option<Instant>,
    last_rx: Option<Instant>,
    next_probe: Instant,
    next_seq: u32,
    /// The first probe sequence number not yet accounted as answered or lost.
    acked_upto: u32,
    srtt: Option<Duration>,
    loss: f32,
    tx_packets: u64,
    rx_packets: u64,
}

impl Path {
    fn new(id: PathId, now: Instant) -> Self {
        Path {
            id,
            state: PathState::Down,
            up_since: None,
            unanswered_since: None,
            last_rx: None,
            next_probe: now,
            next_seq: 0,
            acked_upto: 0,
            srtt: None,
            loss: 0.0,
            tx_packets: 0,
            rx_packets: 0,
        }
    }

    fn on_probe_ack(&mut self, seq: u32, echo_us: u64, now: Instant) {
        if seq < self.acked_upto || seq >= self.next_seq {
            return; // stale duplicate, or an ack for a probe we never sent
        }
        // Probes skipped over by this ack are counted lost; capped so a long outage is one burst.
        let lost = (seq - self.acked_upto).min(16);
        for _ in 0..lost {
            self.loss = self.loss * 0.875 + 0.125;
        }
        self.loss *= 0.875;
        self.acked_upto = seq + 1;
        let sample = Duration::from_micros(micros(now).saturating_sub(echo_us));
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }
}

fn micros(now: Instant) -> u64 {
    u64::try_from(now.as_duration().as_micros()).unwrap_or(u64::MAX)
}

/// Why a handshake runs: decides the event when it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Connect,
    Rekey,
}

struct Pending {
    initiation: Initiation,
    local_index: crate::SessionIndex,
    bytes: [u8; INIT_LEN],
    path: PathId,
    retry_at: Instant,
    purpose: Purpose,
    /// Whether this init was already resent with a fresh cookie's mac2.
    cookie_resent: bool,
}

#[derive(Clone, Copy, Debug)]
enum Queued {
    Init,
    Probe(PathId),
    ProbeAck {
        path: PathId,
        seq: u32,
        echo_us: u64,
    },
    PathResponse {
        path: PathId,
        data: [u8; CHALLENGE_LEN],
    },
    /// The pending signal with this sequence number (skipped if acked meanwhile).
    Signal(u64),
}

/// What a signal says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SignalBody {
    PathStatus { path: PathId, down: bool },
    FlowMove { path: PathId, flow: FlowKey },
}

/// A signal waiting for its ack.
#[derive(Clone, Copy, Debug)]
struct Signal {
    seq: u64,
    body: SignalBody,
    next_send: Instant,
    retry: Duration,
    sends: u32,
}

impl SignalBody {
    /// Whether `self`, sent later, makes `older` pointless.
    fn supersedes(&self, older: &SignalBody) -> bool {
        match (self, older) {
            (SignalBody::PathStatus { path: a, .. }, SignalBody::PathStatus { path: b, .. }) => {
                a == b
            }
            (SignalBody::FlowMove { flow: a, .. }, SignalBody::FlowMove { flow: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// The mobile host's protocol core. See the crate docs for the calling order.
pub struct Client {
    config: ClientConfig,
    mac1_key: [u8; 32],
    cookie_key: LessSafeKey,
    /// The latest cookie from the anchor and when it arrived.
    cookie: Option<([u8; COOKIE_LEN], Instant)>,
    created: Instant,
    unix_nanos_at_created: u64,
    last_timestamp: u64,
    paths: Vec<Path>,
    pending: Option<Pending>,
    /// Rotates the path of successive handshake attempts.
    attempt: usize,
    current: Option<Keypair>,
    previous: Option<Keypair>,
    params: Option<SessionParams>,
    connected: bool,
    /// Last authenticated packet on any path of the session.
    last_rx: Option<Instant>,
    queue: VecDeque<Queued>,
    events: VecDeque<Event>,
    drops: DropCounters,
    /// Signals not acked yet, oldest first.
    signals: VecDeque<Signal>,
    last_signal_seq: u64,
    /// The last data packet sent or received.
    last_activity: Option<Instant>,
    signal_stats: SignalStats,
}

/// Counters of the client's signalling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalStats {
    /// Signals created.
    pub created: u64,
    /// Signal datagrams sent (first sends and resends).
    pub sent: u64,
    /// Signals acked.
    pub acked: u64,
    /// Signals given up because the pending list was full.
    pub abandoned: u64,
}

impl Client {
    /// A client that will handshake as soon as a path is up.
    pub fn new(config: ClientConfig, now: Instant, unix_nanos_at_now: u64) -> Self {
        let mac1_key = mac1_key(&config.anchor_public);
        let cookie_key = cookie_key(&config.anchor_public);
        Client {
            config,
            mac1_key,
            cookie_key,
            cookie: None,
            created: now,
            unix_nanos_at_created: unix_nanos_at_now,
            last_timestamp: 0,
            paths: Vec::new(),
            pending: None,
            attempt: 0,
            current: None,
            previous: None,
            params: None,
            connected: false,
            last_rx: None,
            queue: VecDeque::with_capacity(MAX_QUEUED_TRANSMITS),
            events: VecDeque::with_capacity(MAX_EVENTS),
            drops: DropCounters::default(),
            signals: VecDeque::with_capacity(MAX_PENDING_SIGNALS),
            last_signal_seq: 0,
            last_activity: None,
            signal_stats: SignalStats::default(),
        }
    }

    /// The driver has a socket for `path` (its link is up). Starts the handshake if none runs.
    pub fn handle_path_up(&mut self, path: PathId, now: Instant) {
        if self.path(path).is_none() {
            self.paths.push(Path::new(path, now));
        }
        if self.current.is_none() && self.pending.is_none() {
            self.start_handshake(Purpose::Connect, now);
        }
    }

    /// The driver lost the link of `path`. A handshake waiting on it moves to another path.
    pub fn handle_path_down(&mut self, path: PathId, now: Instant) {
        let Some(i) = self.paths.iter().position(|p| p.id == path) else {
            return;
        };
        let p = self.paths.remove(i);
        if p.state == PathState::Up {
            self.push_event(Event::PathDown(path));
            self.signal(SignalBody::PathStatus { path, down: true }, now);
        }
        if let Some(pending) = &self.pending
            && pending.path == path
        {
            let purpose = pending.purpose;
            self.start_handshake(purpose, now);
        }
    }

    /// Decrypts in place. `Ok(Some(range))`: an inner IP packet at `datagram[range]` for the TUN;
    /// `Ok(None)`: consumed (handshake or control; see `poll_transmit` / `poll_event`).
    pub fn handle_datagram(
        &mut self,
        path: PathId,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<Option<Range<usize>>, DropReason> {
        let r = self.handle_datagram_inner(path, datagram, now);
        if let Err(reason) = r {
            self.drops.add(reason);
        }
        r
    }

    fn handle_datagram_inner(
        &mut self,
        path: PathId,
        datagram: &mut [u8],
        now: Instant,
    ) -> Result<Option<Range<usize>>, DropReason> {
        match wire::peek_kind(datagram)? {
            Kind::HandshakeInit => Err(DropReason::UnknownKind),
            Kind::CookieReply => {
                self.handle_cookie(datagram, now)?;
                Ok(None)
            }
            Kind::HandshakeResp => {
                self.handle_resp(path, datagram, now)?;
                Ok(None)
            }
            Kind::Data | Kind::Control => {
                let h = TransportHeader::new_checked(&*datagram)?;
                let repr = TransportRepr::parse(&h)?;
                let idx = repr.receiver_index;
                let keys = match (&mut self.current, &mut self.previous) {
                    (Some(k), _) if k.local_index == idx => k,
                    (_, Some(k)) if k.local_index == idx => k,
                    _ => return Err(DropReason::UnknownSession),
                };
                let range = keys.open(repr.counter, datagram)?;
                self.on_authenticated(path, now);
                let plain = &datagram[range.clone()];
                if repr.kind == Kind::Data {
                    if !matches!(plain.first().map(|b| b >> 4), Some(4 | 6)) {
                        return Err(DropReason::NotIp);
                    }
                    self.note_activity(now);
                    return Ok(Some(range));
                }
                match ControlMessage::parse(plain)? {
                    ControlMessage::Probe { seq, sent_us } => {
                        self.push_transmit(Queued::ProbeAck {
                            path,
                            seq,
                            echo_us: sent_us,
                        })?;
                    }
                    ControlMessage::ProbeAck { seq, echo_us } => {
                        if let Some(p) = self.path_mut(path) {
                            p.on_probe_ack(seq, echo_us, now);
                        }
                    }
                    ControlMessage::PathChallenge { data } => {
                        self.push_transmit(Queued::PathResponse { path, data })?;
                    }
                    ControlMessage::SignalAck { seq } => {
                        if let Some(i) = self.signals.iter().position(|s| s.seq == seq) {
                            self.signals.remove(i);
                            self.signal_stats.acked += 1;
                        }
                    }
                    // The client never challenges and is never signalled.
                    ControlMessage::PathResponse { .. }
                    | ControlMessage::PathStatus { .. }
                    | ControlMessage::FlowMove { .. } => {}
                }
                Ok(None)
            }
        }
    }

    /// Stores the cookie of a CookieReply to the pending init and resends that init once with
    /// mac2.
    fn handle_cookie(&mut self, datagram: &[u8], now: Instant) -> Result<(), DropReason> {
        let view = CookieReply::new_checked(datagram)?;
        let repr = CookieReplyRepr::parse(&view)?;
        let pending = match &mut self.pending {
            Some(p) if p.local_index == repr.receiver_index => p,
            _ => return Err(DropReason::UnknownSession),
        };
        let init_mac1 = HandshakeInit::new_unchecked(&pending.bytes[..]).mac1();
        let cookie = open_reply(&self.cookie_key, &init_mac1, datagram)?;
        self.cookie = Some((cookie, now));
        if !pending.cookie_resent {
            pending.cookie_resent = true;
            let m = mac2(&cookie, &pending.bytes);
            HandshakeInit::new_unchecked(&mut pending.bytes[..]).set_mac2(&m);
            self.queue.retain(|q| !matches!(q, Queued::Init));
            self.push_transmit(Queued::Init)?;
        }
        Ok(())
    }

    fn push_transmit(&mut self, q: Queued) -> Result<(), DropReason> {
        if self.queue.len() >= MAX_QUEUED_TRANSMITS {
            self.drops.add(DropReason::QueueFull);
            return Err(DropReason::QueueFull);
        }
        self.queue.push_back(q);
        Ok(())
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.drops.add(DropReason::QueueFull);
        } else {
            self.events.push_back(e);
        }
    }

    fn handle_resp(
        &mut self,
        path: PathId,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        let view = HandshakeResp::new_checked(datagram)?;
        let repr = HandshakeRespRepr::parse(&view)?;
        let pending = match &mut self.pending {
            Some(p) if p.local_index == repr.receiver_index => p,
            _ => return Err(DropReason::UnknownSession),
        };
        let (params, (send, recv)) = pending.initiation.finish(view.noise())?;
        let local_index = pending.local_index;
        let purpose = pending.purpose;
        self.pending = None;
        let keys = Keypair::new(&send, &recv, local_index, repr.sender_index, now);
        self.previous = self.current.replace(keys);
        self.params = Some(params);
        self.on_authenticated(path, now);
        if self.connected && purpose == Purpose::Rekey {
            self.push_event(Event::Rekeyed);
        } else {
            self.connected = true;
            self.push_event(Event::Connected(params));
        }
        // Probe every path at once: measures them, and the first authenticated packet is what
        // makes the anchor switch to the new session.
        let interval = self.config.probe_interval;
        for i in 0..self.paths.len() {
            self.paths[i].next_probe = now + interval;
            let id = self.paths[i].id;
            // A full queue only delays this probe to the next interval.
            let _ = self.push_transmit(Queued::Probe(id));
        }
        Ok(())
    }

    fn on_authenticated(&mut self, path: PathId, now: Instant) {
        self.last_rx = Some(now);
        if let Some(p) = self.path_mut(path) {
            p.last_rx = Some(now);
            p.unanswered_since = None;
            p.rx_packets += 1;
            if p.state == PathState::Down {
                p.state = PathState::Up;
                p.up_since = Some(now);
                self.push_event(Event::PathUp(path));
                self.signal(SignalBody::PathStatus { path, down: false }, now);
            }
        }
    }

    /// Data went through: probe every path at the active pace from now on.
    fn note_activity(&mut self, now: Instant) {
        let was_active = self
            .last_activity
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.active_window);
        self.last_activity = Some(now);
        if !was_active {
            let soon = now + self.config.probe_interval;
            for p in &mut self.paths {
                p.next_probe = p.next_probe.min(soon);
            }
        }
    }

    fn is_active(&self, now: Instant) -> bool {
        self.last_activity
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.active_window)
    }

    /// Queues a reliable signal, replacing a pending one it makes pointless.
    fn signal(&mut self, body: SignalBody, now: Instant) {
        let elapsed = u64::try_from((now - self.created).as_micros()).unwrap_or(u64::MAX);
        let seq = (self.unix_nanos_at_created / 1000)
            .saturating_add(elapsed)
            .max(self.last_signal_seq.saturating_add(1));
        self.last_signal_seq = seq;
        self.signals.retain(|s| !body.supersedes(&s.body));
        if self.signals.len() >= MAX_PENDING_SIGNALS {
            self.signals.pop_front();
            self.signal_stats.abandoned += 1;
        }
        self.signals.push_back(Signal {
            seq,
            body,
            next_send: now,
            retry: self.config.signal_retry,
            sends: 0,
        });
        self.signal_stats.created += 1;
        self.send_due_signals(now);
    }

    /// Queues every signal whose send time came, and schedules its resend.
    fn send_due_signals(&mut self, now: Instant) {
        if self.current.is_none() {
            return;
        }
        for i in 0..self.signals.len() {
            let s = &mut self.signals[i];
            if s.next_send > now {
                continue;
            }
            s.next_send = now + s.retry;
            s.retry = (s.retry * 2).min(MAX_SIGNAL_RETRY);
            let seq = s.seq;
            // A full queue only delays this send to the next retry.
            let _ = self.push_transmit(Queued::Signal(seq));
        }
    }

    /// Moves flows to `path`: the anchor sends their downlink there once it has the (acked,
    /// retransmitted) signal. The driver still chooses the uplink path of each packet.
    pub fn move_flows(&mut self, flows: &[FlowKey], path: PathId, now: Instant) {
        for flow in flows {
            self.signal(SignalBody::FlowMove { path, flow: *flow }, now);
        }
    }

    /// Whether the driver should put traffic on `path` now: it is Up, and it has been Up for
    /// `hold_down` unless no other path has (see the module docs).
    pub fn path_usable(&self, path: PathId, now: Instant) -> bool {
        let settled = |p: &Path| {
            p.state == PathState::Up
                && p.up_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.config.hold_down)
        };
        let Some(p) = self.path(path) else {
            return false;
        };
        p.state == PathState::Up
            && (settled(p) || !self.paths.iter().any(|o| o.id != path && settled(o)))
    }

    /// Signals not acked yet.
    pub fn pending_signals(&self) -> usize {
        self.signals.len()
    }

    /// Counters of the signalling.
    pub fn signal_stats(&self) -> SignalStats {
        self.signal_stats
    }

    /// The path a signal goes on: the wanted one when Up, else one of the Up paths (rotating
    /// with `sends`, so a path that silently died is not the only one tried), else any.
    fn signal_path(&self, body: &SignalBody, sends: u32) -> Option<PathId> {
        let (wanted, avoid) = match *body {
            SignalBody::PathStatus { path, down: true } => (None, Some(path)),
            SignalBody::PathStatus { path, down: false } => (Some(path), None),
            SignalBody::FlowMove { path, .. } => (Some(path), None),
        };
        if let Some(w) = wanted
            && self.path(w).is_some_and(|p| p.state == PathState::Up)
            && sends.is_multiple_of(2)
        {
            return Some(w);
        }
        let candidates = || {
            self.paths
                .iter()
                .filter(move |p| Some(p.id) != avoid && p.state == PathState::Up)
        };
        let n = candidates().count();
        if n > 0 {
            return candidates().nth(sends as usize % n).map(|p| p.id);
        }
        let n = self.paths.len();
        (n > 0).then(|| self.paths[sends as usize % n].id)
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
        let r = self.encapsulate_inner(path, buf, len);
        match r {
            Ok(_) => {
                if let Some(p) = self.path_mut(path) {
                    p.tx_packets += 1;
                }
                self.note_activity(now);
            }
            Err(reason) => self.drops.add(reason),
        }
        r
    }

    fn encapsulate_inner(
        &mut self,
        path: PathId,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, DropReason> {
        let keys = self.current.as_mut().ok_or(DropReason::NoSession)?;
        let first = buf.get(HEADER_LEN).ok_or(DropReason::TooBig)?;
        if len == 0 || !matches!(first >> 4, 4 | 6) {
            return Err(DropReason::NotIp);
        }
        keys.seal(Kind::Data, path, buf, len)
    }

    /// The next datagram to send, written into `buf` (at least 1500 bytes is always enough).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(q) = self.queue.pop_front() {
            if let Some(t) = self.build(q, now, buf) {
                return Some(t);
            }
        }
        None
    }

    fn build(&mut self, q: Queued, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (path, msg) = match q {
            Queued::Init => {
                let p = self.pending.as_ref()?;
                buf.get_mut(..INIT_LEN)?.copy_from_slice(&p.bytes);
                let path = p.path;
                if let Some(pp) = self.path_mut(path) {
                    pp.tx_packets += 1;
                }
                return Some(Transmit {
                    path,
                    dst: None,
                    len: INIT_LEN,
                });
            }
            Queued::Probe(path) => {
                let p = self.path_mut(path)?;
                let seq = p.next_seq;
                p.next_seq = p.next_seq.wrapping_add(1);
                (
                    path,
                    ControlMessage::Probe {
                        seq,
                        sent_us: micros(now),
                    },
                )
            }
            Queued::ProbeAck { path, seq, echo_us } => {
                (path, ControlMessage::ProbeAck { seq, echo_us })
            }
            Queued::PathResponse { path, data } => (path, ControlMessage::PathResponse { data }),
            Queued::Signal(seq) => {
                let i = self.signals.iter().position(|s| s.seq == seq)?;
                let s = self.signals[i];
                let path = self.signal_path(&s.body, s.sends)?;
                self.signals[i].sends += 1;
                self.signal_stats.sent += 1;
                let msg = match s.body {
                    SignalBody::PathStatus { path, down } => {
                        ControlMessage::PathStatus { seq, path, down }
                    }
                    SignalBody::FlowMove { path, flow } => {
                        ControlMessage::FlowMove { seq, path, flow }
                    }
                };
                (path, msg)
            }
        };
        let keys = self.current.as_mut()?;
        let body = buf.get_mut(HEADER_LEN..HEADER_LEN + msg.buffer_len() + TAG_LEN)?;
        let n = msg.emit(body).ok()?;
        let len = keys.seal(Kind::Control, path, buf, n).ok()?;
        if let Some(p) = self.path_mut(path) {
            p.tx_packets += 1;
        }
        Some(Transmit {
            path,
            dst: None,
            len,
        })
    }

    /// When `handle_timeout` must be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let mut best: Option<(Instant, &'static str)> = None;
        let mut consider = |t: Instant, why: &'static str| {
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, why));
            }
        };
        if let Some(p) = &self.pending {
            consider(p.retry_at, "handshake retry");
        }
        if let Some(keys) = &self.current {
            if self.pending.is_none() {
                consider(keys.created + self.config.rekey_after, "rekey");
                if let Some(rx) = self.last_rx
                    && self.all_paths_down()
                {
                    consider(rx + self.config.path_timeout, "session silent");
                }
            }
            for p in &self.paths {
                consider(p.next_probe, "probe");
                if let (PathState::Up, Some(t)) = (p.state, p.unanswered_since) {
                    consider(t + self.config.path_timeout, "path timeout");
                }
            }
            if let Some(t) = self.signals.iter().map(|s| s.next_send).min() {
                consider(t, "signal retry");
            }
        }
        best
    }

    fn all_paths_down(&self) -> bool {
        !self.paths.is_empty() && self.paths.iter().all(|p| p.state == PathState::Down)
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let path_timeout = self.config.path_timeout;
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            if let (PathState::Up, Some(t)) = (p.state, p.unanswered_since)
                && now >= t + path_timeout
            {
                p.state = PathState::Down;
                p.up_since = None;
                let id = p.id;
                self.push_event(Event::PathDown(id));
                self.signal(
                    SignalBody::PathStatus {
                        path: id,
                        down: true,
                    },
                    now,
                );
            }
        }
        if let Some(p) = &self.pending
            && now >= p.retry_at
        {
            let purpose = p.purpose;
            self.attempt = self.attempt.wrapping_add(1);
            self.start_handshake(purpose, now);
        }
        if self.pending.is_none()
            && let Some(keys) = &self.current
        {
            let silent =
                self.all_paths_down() && self.last_rx.is_some_and(|rx| now >= rx + path_timeout);
            if silent {
                if self.connected {
                    self.connected = false;
                    self.push_event(Event::Disconnected);
                }
                self.start_handshake(Purpose::Connect, now);
            } else if now >= keys.created + self.config.rekey_after {
                self.start_handshake(Purpose::Rekey, now);
            }
        }
        if self.current.is_some() {
            let active = self.is_active(now);
            for i in 0..self.paths.len() {
                let p = &mut self.paths[i];
                if now < p.next_probe {
                    continue;
                }
                let outstanding = p.unanswered_since.is_some();
                if !outstanding {
                    p.unanswered_since = Some(now);
                }
                // Unanswered probes are repeated at the fast pace: one lost keepalive is not a
                // dead path, three unanswered probes are.
                let interval = match p.state {
                    PathState::Down => self.config.down_probe_interval,
                    PathState::Up if active || outstanding => self.config.probe_interval,
                    PathState::Up => self.config.keepalive,
                };
                p.next_probe = now + interval;
                let id = p.id;
                let _ = self.push_transmit(Queued::Probe(id));
            }
            self.send_due_signals(now);
        }
    }

    /// Builds a fresh init (new ephemeral, new index, new timestamp) on the path picked by
    /// `attempt`, preferring paths that are Up.
    fn start_handshake(&mut self, purpose: Purpose, now: Instant) {
        let n = self.paths.len();
        if n == 0 {
            self.pending = None;
            return;
        }
        let ups = self
            .paths
            .iter()
            .filter(|p| p.state == PathState::Up)
            .count();
        let path = if ups > 0 {
            self.paths
                .iter()
                .filter(|p| p.state == PathState::Up)
                .nth(self.attempt % ups)
        } else {
            self.paths.get(self.attempt % n)
        }
        .map(|p| p.id)
        .unwrap_or(PathId(0));
        let elapsed = u64::try_from((now - self.created).as_nanos()).unwrap_or(u64::MAX);
        let timestamp = self
            .unix_nanos_at_created
            .saturating_add(elapsed)
            .max(self.last_timestamp.saturating_add(1));
        self.last_timestamp = timestamp;
        let local_index = random_index(timestamp);
        let mut bytes = [0u8; INIT_LEN];
        let Ok(initiation) = Initiation::start(
            &self.config.static_secret,
            &self.config.anchor_public,
            &self.mac1_key,
            path,
            local_index,
            timestamp,
            &mut bytes,
        ) else {
            // Only a broken static key gets here; retrying later will not fix it, but keeps the
            // timer alive instead of wedging the state machine.
            self.pending = None;
            return;
        };
        if let Some((cookie, at)) = self.cookie {
            if now.saturating_duration_since(at) < COOKIE_LIFETIME {
                let m = mac2(&cookie, &bytes);
                HandshakeInit::new_unchecked(&mut bytes[..]).set_mac2(&m);
            } else {
                self.cookie = None;
            }
        }
        self.pending = Some(Pending {
            initiation,
            local_index,
            bytes,
            path,
            retry_at: now + self.config.handshake_retry,
            purpose,
            cookie_resent: false,
        });
        self.queue.retain(|q| !matches!(q, Queued::Init));
        // A full queue drops this init; the retry timer sends a fresh one.
        let _ = self.push_transmit(Queued::Init);
    }

    fn path(&self, id: PathId) -> Option<&Path> {
        self.paths.iter().find(|p| p.id == id)
    }

    fn path_mut(&mut self, id: PathId) -> Option<&mut Path> {
        self.paths.iter_mut().find(|p| p.id == id)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The parameters of the current session.
    pub fn session(&self) -> Option<&SessionParams> {
        self.params.as_ref().filter(|_| self.current.is_some())
    }

    /// Whether a handshake is running.
    pub fn is_handshaking(&self) -> bool {
        self.pending.is_some()
    }

    /// Measurements of `path`, if the driver declared it up.
    pub fn path_stats(&self, path: PathId) -> Option<PathStats> {
        self.path(path).map(|p| PathStats {
            state: p.state,
            rtt: p.srtt,
            loss: p.loss,
            last_rx: p.last_rx,
            tx_packets: p.tx_packets,
            rx_packets: p.rx_packets,
        })
    }

    /// Drops so far, counted by this core.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Fuzzing hook: seals `buf[HEADER_LEN..HEADER_LEN + len]` as a Control packet with the
    /// current keys, whatever it holds.
    pub(crate) fn seal_control_raw(
        &mut self,
        path: PathId,
        buf: &mut [u8],
        len: usize,
    ) -> Option<usize> {
        self.current
            .as_mut()?
            .seal(Kind::Control, path, buf, len)
            .ok()
    }

    /// Fuzzing hook: the session index of the pending handshake.
    pub(crate) fn pending_index(&self) -> Option<crate::SessionIndex> {
        self.pending.as_ref().map(|p| p.local_index)
    }
}
