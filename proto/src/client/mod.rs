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
//! - *idle*: what each path's [`Idle`] mode says, set by the driver from the flows it carries:
//!   one probe per `keepalive` (default 25 s, or the learned interval), just often enough to
//!   keep NAT bindings, on a path with flows or that would take them over; one per
//!   `flowless_keepalive` (120 s) when the session has no flows at all; none on a path put to
//!   sleep;
//! - a path with a probe outstanding is probed every `probe_interval` until answered, and a Down
//!   path every `down_probe_interval` (default 1 s), to see it come back.
//!
//! A path is Down when a probe sent on it stays without any authenticated answer on that path
//! for `path_timeout` (default 700 ms, about three active probes): a blackholed path is found
//! within `probe_interval + path_timeout` (<= 0.9 s) while active, and within one keepalive plus
//! `path_timeout` when idle. A link the driver reports gone (`handle_path_down`) is Down at once.
//!
//! # Fast detection while data flows
//! A path that carried data and then heard nothing authenticated for
//! [`paths::suspect_after`] (3 × SRTT, at least 150 ms) is *suspect*: [`paths::SUSPECT_BURST`]
//! probes go out on it at once instead of at the next probe tick, and if nothing answers
//! within [`paths::burst_timeout`] (4 × SRTT, at least 250 ms) it is Down. A blackhole under
//! traffic is thus found about 0.4 s after the first unanswered packet (SRTT below 50 ms)
//! instead of up to 0.9 s. Why these numbers: TCP acks every other segment and the anchor
//! answers every probe, so a live path answers within one or two RTTs; the floors keep an RTT
//! measured on a quiet path from turning a queueing spike into a false Down (which would move
//! the path's flows away for a whole hold-down). Idle paths are untouched: both deadlines
//! exist only after data went out, so an idle session arms no new timer.
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
//! After `rekey_after`, the next packet sent (data, or a path's probe at its deadline: no timer of
//! its own wakes an idle session for it, as in WireGuard) starts a new handshake while the old
//! keys keep working; the old receive key
//! is kept after the switch for packets still in flight. Keys live at most `reject_after`
//! (180 s, WireGuard's REJECT_AFTER_TIME) or until a path's counter space is spent: a session
//! whose rekeys all failed then reports `Disconnected`, sends and accepts nothing on the old keys
//! and keeps handshaking.
//!
//! Handshake retries back off: `handshake_retry` (1 s) after the first attempt, doubling up to
//! `handshake_retry_max` (5 s, WireGuard's REKEY_TIMEOUT), each plus up to a quarter of it at
//! random from a generator seeded in the constructor; after `handshake_attempt_time` (90 s) of
//! attempts the client stops until there is data to send (`encapsulate`) or a new path. When every path is Down and nothing
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
//! queue [`MAX_EVENTS`]; past that, the datagram or event is lost and counted as the anchor
//! counts it (see [`crate::queue`] and [`Client::queue_stats`]).
//!
//! Code layout: `handshake.rs` (connect, rekey, retries, cookies), `paths.rs` (liveness,
//! probes, hold-down), `signals.rs` (acked path status and flow moves); this file holds the
//! struct, the inputs and outputs, and the timer table.
//!
//! Never does IO or reads a clock; never allocates per packet (the queues are allocated once at
//! their bound).

mod handshake;
pub mod natlearn;
mod paths;
pub mod pmtu;
mod resend;
mod signals;

pub use crate::control::FlowKey;
pub use crate::queue::QueueStats;
pub use handshake::{REJECT_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT};
pub use natlearn::{KeepaliveLearner, NatTransmit};
pub use paths::{Idle, PathState, PathStats};
pub use signals::{MAX_PENDING_SIGNALS, SignalStats};

use crate::control::ControlMessage;
use crate::cookie::cookie_key;
use crate::crypto::Keypair;
use crate::dup::{DupVerdict, dup_field};
use crate::handshake::mac1_key;
use crate::keys::{PublicKey, StaticSecret};
use crate::queue::Queues;
use crate::time::Instant;
use crate::timer::{Timer, TimerTable};
use crate::wire::{self, COOKIE_LEN, INIT_LEN, Kind, TransportHeader, TransportRepr};
use crate::{DropCounters, DropReason, HEADER_LEN, PathId, SessionParams, TAG_LEN, Transmit};
use core::ops::Range;
use core::time::Duration;
use handshake::{Pending, Purpose};
use paths::{Path, micros};
use ring::aead::LessSafeKey;
use signals::Signals;

/// Datagrams waiting for `poll_transmit`.
pub const MAX_QUEUED_TRANSMITS: usize = 256;
/// Events waiting for `poll_event`.
pub const MAX_EVENTS: usize = 256;

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The mobile host's identity.
    pub static_secret: StaticSecret,
    /// The anchor's identity.
    pub anchor_public: PublicKey,
    /// Probe interval on an Up path while idle: keeps NAT bindings (default 25 s).
    pub keepalive: Duration,
    /// Learn each path's NAT binding lifetime and stretch its idle keepalive up to this
    /// (see [`KeepaliveLearner`]); `None`: every path keeps `keepalive` (the default).
    pub keepalive_max: Option<Duration>,
    /// Learn with a disposable socket per path (see [`natlearn`]), never on the main binding:
    /// the driver drains [`Client::poll_nat_transmit`] into a second socket on the path's
    /// interface and feeds what it receives to [`Client::handle_nat_datagram`] (default false:
    /// the main keepalives learn).
    pub nat_probe: bool,
    /// Probe interval of an idle path in [`Idle::Check`]: the session carries no flows, so
    /// only the path's liveness is checked (default 120 s, which is also `rekey_after`: the
    /// lazy rekey rides on the same wake-up).
    pub flowless_keepalive: Duration,
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
    /// Time before a handshake init is first resent, on the next path (default 1 s); it
    /// doubles with each further retry up to `handshake_retry_max`, plus jitter.
    pub handshake_retry: Duration,
    /// The longest wait between two handshake attempts, before jitter (default 5 s).
    pub handshake_retry_max: Duration,
    /// A handshake is retried for this long, then only on demand (default 90 s).
    pub handshake_attempt_time: Duration,
    /// Keys older than this neither send nor accept anything (default 180 s).
    pub reject_after: Duration,
    /// Age of a session after which a new handshake starts (default 120 s).
    pub rekey_after: Duration,
    /// Whether the client runs AES-256-GCM fast (the driver detects AES hardware, or the
    /// `cipher` key forces it): then its inits offer AES-256-GCM, which the anchor picks when it
    /// runs it fast too (default false: ChaCha20-Poly1305 only).
    pub fast_aes: bool,
    /// Bytes of recent uplink packets kept per path, to resend those of flows the driver moves
    /// off a path that went down (default [`crate::resend::DEFAULT_RESEND_BYTES`]; 0: none).
    pub resend_bytes: usize,
    /// How long they are kept (default [`crate::resend::DEFAULT_RESEND_AGE`]).
    pub resend_age: Duration,
}

impl ClientConfig {
    /// A config with the default timers.
    pub fn new(static_secret: StaticSecret, anchor_public: PublicKey) -> Self {
        ClientConfig {
            static_secret,
            anchor_public,
            keepalive: Duration::from_secs(25),
            keepalive_max: None,
            nat_probe: false,
            flowless_keepalive: Duration::from_secs(120),
            probe_interval: Duration::from_millis(200),
            down_probe_interval: Duration::from_secs(1),
            active_window: Duration::from_secs(5),
            path_timeout: Duration::from_millis(700),
            hold_down: Duration::from_secs(3),
            signal_retry: Duration::from_millis(150),
            handshake_retry: Duration::from_secs(1),
            handshake_retry_max: handshake::REKEY_TIMEOUT,
            handshake_attempt_time: handshake::REKEY_ATTEMPT_TIME,
            reject_after: handshake::REJECT_AFTER_TIME,
            rekey_after: Duration::from_secs(120),
            fast_aes: false,
            resend_bytes: crate::resend::DEFAULT_RESEND_BYTES,
            resend_age: crate::resend::DEFAULT_RESEND_AGE,
        }
    }
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

/// A datagram waiting to be built by `poll_transmit`.
#[derive(Clone, Copy, Debug)]
enum Queued {
    Init,
    Probe(PathId),
    /// An answer on the path its request came on (a probe's ack, a challenge's response).
    Reply {
        path: PathId,
        msg: ControlMessage,
    },
    /// The pending signal with this sequence number (skipped if acked meanwhile).
    Signal(u64),
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
    queues: Queues<Queued, Event>,
    drops: DropCounters,
    signals: Signals,
    /// The last data packet sent or received.
    last_activity: Option<Instant>,
    /// The current keys outlived `reject_after`: they neither send nor open anything.
    keys_expired: bool,
    /// The last handshake was retried for `handshake_attempt_time` in vain; the next one starts
    /// on demand.
    given_up: bool,
    /// Jitter of the handshake retries (xorshift state, never 0).
    rng: u64,
    /// The dup sequence of the next redundant packet.
    dup_seq: u64,
    /// Datagrams for the paths' disposable test sockets: (path, message, on a fresh socket).
    nat_queue: std::collections::VecDeque<(PathId, ControlMessage, bool)>,
    /// The resend sequence of the last other data packet.
    resend_seq: u64,
    /// Each path's recent data packets (see [`crate::resend`]); they outlive a path that goes
    /// away, so that its flows' packets can follow them.
    rings: Vec<(PathId, crate::resend::ResendRing)>,
    /// Bytes resent per path they went out on.
    resent: Vec<(PathId, u64)>,
    /// Path MTU probes due, as (path, size, sequence number): at most one per path.
    mtu_probes: Vec<(PathId, u16, u32)>,
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
            queues: Queues::new(MAX_QUEUED_TRANSMITS, MAX_EVENTS),
            drops: DropCounters::default(),
            signals: Signals::new(),
            last_activity: None,
            keys_expired: false,
            given_up: false,
            rng: getrandom::u64().unwrap_or(unix_nanos_at_now) | 1,
            dup_seq: 0,
            nat_queue: std::collections::VecDeque::new(),
            resend_seq: 0,
            rings: Vec::new(),
            resent: Vec::new(),
            mtu_probes: Vec::new(),
        }
    }

    /// The driver has a socket for `path` (its link is up). Starts the handshake if none runs.
    pub fn handle_path_up(&mut self, path: PathId, now: Instant) {
        if self.path(path).is_none() {
            let (base, probe) = (self.config.keepalive, self.config.nat_probe);
            // Keepalives also keep the keys (see `Path::idle_due`): none is ever further apart
            // than their life minus the margin, so learning more is of no use.
            let longest = self
                .config
                .reject_after
                .saturating_sub(paths::KEY_MARGIN)
                .max(base);
            let learner = self.config.keepalive_max.map(|max| {
                let max = max.min(longest);
                if probe {
                    KeepaliveLearner::probing(base, max)
                } else {
                    KeepaliveLearner::new(base, max)
                }
            });
            self.paths.push(Path::new(path, now).learning(learner));
        }
        if self.pending.is_none() && (self.current.is_none() || self.keys_expired) {
            self.start_handshake(Purpose::Connect, now);
        } else if self.pending.is_none() && self.given_up {
            self.start_handshake(Purpose::Rekey, now);
        }
    }

    /// The driver lost the link of `path`. A handshake waiting on it moves to another path.
    pub fn handle_path_down(&mut self, path: PathId, now: Instant) {
        let Some(i) = self.paths.iter().position(|p| p.id == path) else {
            return;
        };
        let p = self.paths.remove(i);
        if p.state == PathState::Up {
            self.queues.push_event(Event::PathDown(path));
            self.signal(signals::SignalBody::PathStatus { path, down: true }, now);
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
                if now.saturating_duration_since(keys.created) >= self.config.reject_after {
                    return Err(DropReason::Expired);
                }
                let range = keys.open(repr.counter, datagram)?;
                let dup = keys.check_dup(datagram);
                self.on_authenticated(path, now);
                let plain = &datagram[range.clone()];
                if repr.kind == Kind::Data {
                    if !matches!(plain.first().map(|b| b >> 4), Some(4 | 6)) {
                        return Err(DropReason::NotIp);
                    }
                    self.note_activity(now);
                    // After `on_authenticated`: the copy still proves its path alive.
                    if dup == DupVerdict::Duplicate {
                        return Err(DropReason::Duplicate);
                    }
                    return Ok(Some(range));
                }
                self.handle_control(path, ControlMessage::parse(plain)?, now)?;
                Ok(None)
            }
        }
    }

    /// An authenticated control message from the anchor on `path`.
    fn handle_control(
        &mut self,
        path: PathId,
        msg: ControlMessage,
        now: Instant,
    ) -> Result<(), DropReason> {
        let reply = match msg {
            ControlMessage::Probe { seq, sent_us } => ControlMessage::ProbeAck {
                seq,
                echo_us: sent_us,
                observed: None,
            },
            ControlMessage::PathChallenge { data } => {
                if let Some(p) = self.path_mut(path) {
                    p.on_challenge();
                }
                ControlMessage::PathResponse { data }
            }
            ControlMessage::ProbeAck {
                seq,
                echo_us,
                observed,
            } => {
                if let Some(p) = self.path_mut(path) {
                    // A new public address after a silence: the NAT forgot the binding (a
                    // rekey's init from there was answered without a challenge).
                    if observed.is_some() && p.observed.is_some() && observed != p.observed {
                        p.on_challenge();
                    }
                    if seq & pmtu::SEQ_BIT != 0 {
                        p.pmtu.on_ack(seq, now);
                    } else {
                        p.on_probe_ack(seq, echo_us, now);
                    }
                    if observed.is_some() {
                        p.observed = observed;
                    }
                }
                return Ok(());
            }
            ControlMessage::SignalAck { seq } => {
                self.on_signal_ack(seq);
                return Ok(());
            }
            // The client never challenges and is never signalled; NAT test answers count only
            // on the test socket.
            ControlMessage::PathResponse { .. }
            | ControlMessage::PathStatus { .. }
            | ControlMessage::FlowMove { .. }
            | ControlMessage::NatRegister { .. }
            | ControlMessage::NatRegistered { .. }
            | ControlMessage::NatRequest { .. }
            | ControlMessage::NatReply { .. } => return Ok(()),
        };
        self.queues
            .push_transmit(Queued::Reply { path, msg: reply })
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
        let reserved = self.keep_for_resend(path, buf, len, now);
        let r = self.encapsulate_inner(path, buf, len, reserved, now);
        self.after_encapsulate(path, r, now)
    }

    /// Like [`Client::encapsulate`], for a redundant flow: the same packet goes on `paths[0]`
    /// and on `paths[1]`, both carrying one dup sequence so the anchor delivers the first copy
    /// and drops the second (see [`crate::dup`]). `copy` receives the second datagram, so it
    /// needs the same room as `buf`. Returns both lengths; the second is `None` when the copy
    /// could not be sealed (no room, or the second path's counters are spent) and only the
    /// first goes out.
    pub fn encapsulate_redundant(
        &mut self,
        paths: [PathId; 2],
        buf: &mut [u8],
        len: usize,
        copy: &mut [u8],
        now: Instant,
    ) -> Result<(usize, Option<usize>), DropReason> {
        let field = dup_field(self.dup_seq);
        let copied = match (
            buf.get(HEADER_LEN..HEADER_LEN + len),
            copy.get_mut(HEADER_LEN..HEADER_LEN + len),
        ) {
            (Some(from), Some(to)) => {
                to.copy_from_slice(from);
                true
            }
            _ => false,
        };
        let first = self.encapsulate_inner(paths[0], buf, len, field, now);
        let first = self.after_encapsulate(paths[0], first, now)?;
        if !copied || paths[0] == paths[1] {
            return Ok((first, None));
        }
        self.dup_seq = self.dup_seq.wrapping_add(1);
        let second = self.encapsulate_inner(paths[1], copy, len, field, now);
        Ok((first, self.after_encapsulate(paths[1], second, now).ok()))
    }

    fn after_encapsulate(
        &mut self,
        path: PathId,
        r: Result<usize, DropReason>,
        now: Instant,
    ) -> Result<usize, DropReason> {
        match r {
            Ok(_) => {
                if let Some(p) = self.path_mut(path) {
                    p.on_sent(now);
                    p.on_data_sent(now);
                }
                self.wake_for_data(path, now);
                self.note_activity(now);
                // Lazy rekey: the first packet after `rekey_after` starts it.
                if self.pending.is_none()
                    && self
                        .current
                        .as_ref()
                        .is_some_and(|k| now >= k.created + self.config.rekey_after)
                {
                    self.start_handshake(Purpose::Rekey, now);
                }
            }
            Err(reason) => {
                self.drops.add(reason);
                if matches!(reason, DropReason::NoSession | DropReason::Expired) {
                    self.start_on_demand(now);
                }
            }
        }
        r
    }

    fn encapsulate_inner(
        &mut self,
        path: PathId,
        buf: &mut [u8],
        len: usize,
        reserved: u16,
        now: Instant,
    ) -> Result<usize, DropReason> {
        let keys = self.current.as_mut().ok_or(DropReason::NoSession)?;
        if self.keys_expired
            || now.saturating_duration_since(keys.created) >= self.config.reject_after
        {
            return Err(DropReason::Expired);
        }
        let first = buf.get(HEADER_LEN).ok_or(DropReason::TooBig)?;
        if len == 0 || !matches!(first >> 4, 4 | 6) {
            return Err(DropReason::NotIp);
        }
        keys.seal_with(Kind::Data, path, buf, len, reserved)
    }

    /// The next datagram to send, written into `buf` (at least 1500 bytes is always enough;
    /// a resent packet needs the room of the packet, as for `encapsulate`): the client's own
    /// datagrams first, then packets resent after the driver moved their flows.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(q) = self.queues.pop_transmit() {
            if let Some(t) = self.build(q, now, buf) {
                return Some(t);
            }
        }
        self.poll_resend(now, buf)
    }

    fn build(&mut self, q: Queued, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (path, msg) = match q {
            Queued::Init => {
                let p = self.pending.as_ref()?;
                buf.get_mut(..INIT_LEN)?.copy_from_slice(&p.bytes);
                let path = p.path;
                if let Some(pp) = self.path_mut(path) {
                    pp.on_sent(now);
                }
                return Some(Transmit {
                    path,
                    dst: None,
                    len: INIT_LEN,
                });
            }
            Queued::Probe(path) => {
                let seq = self.path_mut(path)?.next_probe_seq();
                (
                    path,
                    ControlMessage::Probe {
                        seq,
                        sent_us: micros(now),
                    },
                )
            }
            Queued::Reply { path, msg } => (path, msg),
            Queued::Signal(seq) => self.build_signal(seq)?,
        };
        if self.keys_expired {
            return None;
        }
        let keys = self.current.as_mut()?;
        let body = buf.get_mut(HEADER_LEN..HEADER_LEN + msg.buffer_len() + TAG_LEN)?;
        let n = msg.emit(body).ok()?;
        let len = keys.seal(Kind::Control, path, buf, n).ok()?;
        if let Some(p) = self.path_mut(path) {
            p.on_sent(now);
        }
        Some(Transmit {
            path,
            dst: None,
            len,
        })
    }

    /// The next path MTU probe (see [`pmtu`]), written like `poll_transmit`'s datagrams. It is
    /// a separate output because it must leave differently: with the don't-fragment bit and
    /// never fragmented by the sender, whatever path MTU the sender's kernel cached, or it
    /// would prove nothing.
    pub fn poll_mtu_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some((path, size, seq)) = self.mtu_probes.pop() {
            if let Some(t) = self.build_mtu_probe(path, size, seq, now, buf) {
                return Some(t);
            }
        }
        None
    }

    /// A probe padded to an outer packet of `size`; a size the buffer cannot hold counts as
    /// too big for the path.
    fn build_mtu_probe(
        &mut self,
        path: PathId,
        size: u16,
        seq: u32,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        if self.keys_expired {
            return None;
        }
        let p = self.path_mut(path)?;
        let len = p.pmtu.datagram_len(size);
        let plain = len
            .checked_sub(HEADER_LEN + TAG_LEN)
            .filter(|n| *n >= crate::control::PROBE_LEN && len <= buf.len());
        let Some(plain) = plain else {
            p.pmtu.unsendable(size, now);
            return None;
        };
        let body = &mut buf[HEADER_LEN..HEADER_LEN + plain];
        // The anchor ignores the bytes after the probe's fields.
        body.fill(0);
        ControlMessage::Probe {
            seq,
            sent_us: micros(now),
        }
        .emit(body)
        .ok()?;
        let len = self
            .current
            .as_mut()?
            .seal(Kind::Control, path, buf, plain)
            .ok()?;
        if let Some(p) = self.path_mut(path) {
            p.on_sent(now);
        }
        Some(Transmit {
            path,
            dst: None,
            len,
        })
    }

    /// Every armed deadline, by timer.
    fn timers(&self) -> TimerTable {
        let mut timers = TimerTable::default();
        self.handshake_timers(&mut timers);
        if self.current.is_some() {
            self.path_timers(&mut timers);
            self.signal_timers(&mut timers);
            self.nat_timers(&mut timers);
        }
        timers
    }

    /// When `handle_timeout` must be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        self.timers().next()
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_paths(now);
        self.handshake_timeouts(now);
        if self.current.is_some() {
            self.probe_suspect_paths(now);
            self.send_due_probes(now);
            self.send_due_mtu_probes(now);
            self.send_due_signals(now);
            self.nat_timeouts(now);
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.queues.pop_event()
    }

    /// The parameters of the current session.
    pub fn session(&self) -> Option<&SessionParams> {
        self.params
            .as_ref()
            .filter(|_| self.current.is_some() && !self.keys_expired)
    }

    /// Drops so far, counted by this core.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Overflows of the transmit and event queues (see [`crate::queue`]).
    pub fn queue_stats(&self) -> QueueStats {
        self.queues.stats
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
}
