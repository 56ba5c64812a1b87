//! The client's handshakes: connect, rekey, retries over the paths, cookies under load.

use super::paths::{Idle, PathState};
use super::{Client, Event, Queued};
use crate::cookie::{COOKIE_ROTATION, mac2, open_reply};
use crate::crypto::{Keypair, random_index};
use crate::handshake::Initiation;
use crate::time::Instant;
use crate::timer::{Timer, TimerTable};
use crate::wire::{
    CookieReply, CookieReplyRepr, HandshakeInit, HandshakeInitRepr, HandshakeResp,
    HandshakeRespRepr, INIT_LEN, MAC1_LEN,
};
use crate::{DropReason, PathId, SessionIndex};
use core::time::Duration;

/// A cookie is used for this long after it arrived: a margin under the anchor's rotation.
const COOKIE_LIFETIME: Duration = COOKIE_ROTATION.saturating_sub(Duration::from_secs(5));
/// The longest wait between two handshake attempts, before jitter (WireGuard's REKEY_TIMEOUT).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one handshake keeps being retried before the client waits for a reason to try
/// again: data to send or a new path (WireGuard's REKEY_ATTEMPT_TIME).
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Keys older than this neither send nor accept anything (WireGuard's REJECT_AFTER_TIME).
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// Why a handshake runs: decides the event when it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Purpose {
    Connect,
    Rekey,
}

/// The handshake in flight.
pub(super) struct Pending {
    initiation: Initiation,
    pub(super) local_index: SessionIndex,
    pub(super) bytes: [u8; INIT_LEN],
    pub(super) path: PathId,
    retry_at: Instant,
    /// When the first attempt of this handshake was sent, and how many retries followed.
    started: Instant,
    retries: u32,
    pub(super) purpose: Purpose,
    /// Whether this init was already resent with a fresh cookie's mac2.
    cookie_resent: bool,
}

impl Client {
    /// Whether a handshake is running.
    pub fn is_handshaking(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether a handshake's first init goes out on `path` at `now`: its exchange tests and
    /// refreshes the path's binding as a keepalive would.
    pub(super) fn handshake_starts_on(&self, path: PathId, now: Instant) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.path == path && p.started == now && p.retries == 0)
    }

    /// Starts a handshake: the first attempt of a new series of retries.
    pub(super) fn start_handshake(&mut self, purpose: Purpose, now: Instant) {
        self.given_up = false;
        self.send_init(purpose, now, 0, now);
    }

    /// The wait after attempt `retries` (0: the first): `handshake_retry` doubling up to
    /// `handshake_retry_max`, plus up to a quarter of it at random, so that clients that lost
    /// their anchor together do not come back in step, and a down anchor costs a phone one DH
    /// every few seconds, not every second.
    fn retry_interval(&mut self, retries: u32) -> Duration {
        let base = self
            .config
            .handshake_retry
            .saturating_mul(1 << retries.min(16))
            .min(
                self.config
                    .handshake_retry_max
                    .max(self.config.handshake_retry),
            );
        let quarter = u64::try_from(base.as_micros() / 4).unwrap_or(u64::MAX);
        let jitter = match quarter {
            0 => 0,
            q => self.next_random() % q,
        };
        base + Duration::from_micros(jitter)
    }

    /// xorshift64*, seeded in the constructor: jitter needs no more, and the core reads no clock.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Builds a fresh init (new ephemeral, new index, new timestamp) on the path picked by
    /// `attempt`, preferring paths that are Up.
    fn send_init(&mut self, purpose: Purpose, started: Instant, retries: u32, now: Instant) {
        let n = self.paths.len();
        if n == 0 {
            self.pending = None;
            return;
        }
        // An asleep path is woken for a handshake only when no other path is Up.
        let awake = self
            .paths
            .iter()
            .filter(|p| p.state == PathState::Up && p.idle() != Idle::Sleep)
            .count();
        let ups = self
            .paths
            .iter()
            .filter(|p| p.state == PathState::Up)
            .count();
        let path = if awake > 0 {
            self.paths
                .iter()
                .filter(|p| p.state == PathState::Up && p.idle() != Idle::Sleep)
                .nth(self.attempt % awake)
        } else if ups > 0 {
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
            HandshakeInitRepr {
                path,
                sender_index: local_index,
                offers_aes256gcm: self.config.fast_aes,
                mac1: [0; MAC1_LEN],
            },
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
        let retry_at = now + self.retry_interval(retries);
        self.pending = Some(Pending {
            initiation,
            local_index,
            bytes,
            path,
            retry_at,
            started,
            retries,
            purpose,
            cookie_resent: false,
        });
        self.queues.retain_transmits(|q| !matches!(q, Queued::Init));
        // A full queue drops this init; the retry timer sends a fresh one.
        let _ = self.queues.push_transmit(Queued::Init);
    }

    /// The handshake-retry, key-expiry and silent-session deadlines.
    ///
    /// Rekeying is lazy, as in WireGuard: no timer wakes an idle session for it; the next packet
    /// sent after `rekey_after` (data, or the probe of a path's next probe deadline) starts
    /// it. Key expiry is lazy too while no handshake runs: keys past `reject_after` neither
    /// send nor accept anything, and the next packet finds them expired and handshakes afresh.
    /// While a handshake runs (a rekey that keeps failing) the expiry is a timer, so the
    /// session reports `Disconnected` on time.
    pub(super) fn handshake_timers(&self, timers: &mut TimerTable) {
        if let Some(p) = &self.pending {
            timers.set_earliest(Timer::HandshakeRetry, p.retry_at);
        }
        if let Some(keys) = &self.current
            && !self.keys_expired
            && self.pending.is_some()
        {
            timers.set_earliest(Timer::KeyExpiry, keys.created + self.config.reject_after);
        }
        if self.current.is_some()
            && self.pending.is_none()
            && !self.given_up
            && let Some(rx) = self.last_rx
            && self.all_paths_down()
        {
            timers.set_earliest(Timer::SessionSilent, rx + self.config.path_timeout);
        }
    }

    /// Retries an unanswered handshake on the next path, or gives up after
    /// `handshake_attempt_time`; ends a session whose keys expired; starts a handshake when the
    /// session went silent or its keys are due for replacement.
    pub(super) fn handshake_timeouts(&mut self, now: Instant) {
        if let Some(p) = &self.pending
            && now >= p.retry_at
        {
            let (purpose, started, retries) = (p.purpose, p.started, p.retries);
            if now.saturating_duration_since(started) >= self.config.handshake_attempt_time {
                // Until there is data to send or a new path: see `start_on_demand`.
                self.pending = None;
                self.given_up = true;
            } else {
                self.attempt = self.attempt.wrapping_add(1);
                self.send_init(purpose, started, retries.saturating_add(1), now);
            }
        }
        if let Some(keys) = &self.current
            && !self.keys_expired
            && now >= keys.created + self.config.reject_after
        {
            // Every rekey failed for the keys' whole life: stop using them, and let the
            // handshake already running (or the next one on demand) connect afresh.
            self.keys_expired = true;
            if self.connected {
                self.connected = false;
                self.queues.push_event(Event::Disconnected);
            }
            if let Some(p) = &mut self.pending {
                p.purpose = Purpose::Connect;
            }
        }
        if self.pending.is_none()
            && !self.given_up
            && let Some(keys) = &self.current
        {
            let silent = self.all_paths_down()
                && self
                    .last_rx
                    .is_some_and(|rx| now >= rx + self.config.path_timeout);
            if silent || self.keys_expired {
                if self.connected {
                    self.connected = false;
                    self.queues.push_event(Event::Disconnected);
                }
                self.start_handshake(Purpose::Connect, now);
            } else if now >= keys.created + self.config.rekey_after {
                self.start_handshake(Purpose::Rekey, now);
            }
        }
    }

    /// Data waits for a session that is missing or expired: start a handshake if none runs.
    pub(super) fn start_on_demand(&mut self, now: Instant) {
        if self.pending.is_none() && (self.current.is_none() || self.keys_expired) {
            self.start_handshake(Purpose::Connect, now);
        }
    }

    /// Stores the cookie of a CookieReply to the pending init and resends that init once with
    /// mac2.
    pub(super) fn handle_cookie(
        &mut self,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), DropReason> {
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
            self.queues.retain_transmits(|q| !matches!(q, Queued::Init));
            self.queues.push_transmit(Queued::Init)?;
        }
        Ok(())
    }

    /// Completes the pending handshake: the new keys become current, the old ones previous.
    pub(super) fn handle_resp(
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
        let keys = Keypair::new(
            params.cipher,
            &send,
            &recv,
            local_index,
            repr.sender_index,
            now,
        );
        self.previous = self.current.replace(keys);
        self.given_up = false;
        if self.keys_expired {
            // The old keys must not come back as the previous ones.
            self.previous = None;
            self.keys_expired = false;
        }
        self.params = Some(params);
        self.on_authenticated(path, now);
        if self.connected && purpose == Purpose::Rekey {
            self.queues.push_event(Event::Rekeyed);
        } else {
            self.connected = true;
            self.queues.push_event(Event::Connected(params));
        }
        let rekeyed_on = (purpose == Purpose::Rekey).then_some(path);
        self.probe_all_now(rekeyed_on, now);
        Ok(())
    }

    /// Fuzzing hook: the session index of the pending handshake.
    pub(crate) fn pending_index(&self) -> Option<SessionIndex> {
        self.pending.as_ref().map(|p| p.local_index)
    }
}
