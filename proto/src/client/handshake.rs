//! The client's handshakes: connect, rekey, retries over the paths, cookies under load.

use super::paths::PathState;
use super::{Client, Event, Queued};
use crate::cookie::{COOKIE_ROTATION, mac2, open_reply};
use crate::crypto::{Keypair, random_index};
use crate::handshake::Initiation;
use crate::time::Instant;
use crate::timer::{Timer, TimerTable};
use crate::wire::{
    CookieReply, CookieReplyRepr, HandshakeInit, HandshakeResp, HandshakeRespRepr, INIT_LEN,
};
use crate::{DropReason, PathId, SessionIndex};
use core::time::Duration;

/// A cookie is used for this long after it arrived: a margin under the anchor's rotation.
const COOKIE_LIFETIME: Duration = COOKIE_ROTATION.saturating_sub(Duration::from_secs(5));

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
    pub(super) purpose: Purpose,
    /// Whether this init was already resent with a fresh cookie's mac2.
    cookie_resent: bool,
}

impl Client {
    /// Whether a handshake is running.
    pub fn is_handshaking(&self) -> bool {
        self.pending.is_some()
    }

    /// Builds a fresh init (new ephemeral, new index, new timestamp) on the path picked by
    /// `attempt`, preferring paths that are Up.
    pub(super) fn start_handshake(&mut self, purpose: Purpose, now: Instant) {
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
        self.queues.retain_transmits(|q| !matches!(q, Queued::Init));
        // A full queue drops this init; the retry timer sends a fresh one.
        let _ = self.queues.push_transmit(Queued::Init);
    }

    /// The handshake-retry, rekey and silent-session deadlines.
    pub(super) fn handshake_timers(&self, timers: &mut TimerTable) {
        if let Some(p) = &self.pending {
            timers.set_earliest(Timer::HandshakeRetry, p.retry_at);
        }
        if let Some(keys) = &self.current
            && self.pending.is_none()
        {
            timers.set_earliest(Timer::Rekey, keys.created + self.config.rekey_after);
            if let Some(rx) = self.last_rx
                && self.all_paths_down()
            {
                timers.set_earliest(Timer::SessionSilent, rx + self.config.path_timeout);
            }
        }
    }

    /// Retries an unanswered handshake on the next path; starts one when the session went
    /// silent or its keys are due for replacement.
    pub(super) fn handshake_timeouts(&mut self, now: Instant) {
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
            let silent = self.all_paths_down()
                && self
                    .last_rx
                    .is_some_and(|rx| now >= rx + self.config.path_timeout);
            if silent {
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
        let keys = Keypair::new(&send, &recv, local_index, repr.sender_index, now);
        self.previous = self.current.replace(keys);
        self.params = Some(params);
        self.on_authenticated(path, now);
        if self.connected && purpose == Purpose::Rekey {
            self.queues.push_event(Event::Rekeyed);
        } else {
            self.connected = true;
            self.queues.push_event(Event::Connected(params));
        }
        self.probe_all_now(now);
        Ok(())
    }

    /// Fuzzing hook: the session index of the pending handshake.
    pub(crate) fn pending_index(&self) -> Option<SessionIndex> {
        self.pending.as_ref().map(|p| p.local_index)
    }
}
