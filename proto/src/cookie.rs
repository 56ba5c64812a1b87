//! Handshake flood defence, WireGuard-style: cookies, mac2 and token buckets.
//!
//! The anchor keeps a token bucket of handshake inits it is willing to run Diffie-Hellman for
//! ([`HANDSHAKE_RATE`] per second, burst [`HANDSHAKE_BURST`]). When it is empty the anchor is
//! *under load* for at least [`LOAD_HOLD`]: an init whose mac2 does not verify is answered with a
//! CookieReply instead of any DH. The cookie is `BLAKE2s-128(secret, source ip)`, the secret
//! rotating every [`COOKIE_ROTATION`]; it travels sealed with ChaCha20-Poly1305 under a key
//! derived from the anchor's public key, with a random nonce and the init's mac1 as associated
//! data (so a reply only fits the init it answers). The client stores it and puts
//! `mac2 = BLAKE2s-128(cookie, init before mac2)` on its next inits, which proves it receives
//! packets at its source address: spoofed floods never get past the mac checks.
//!
//! Inits that do reach DH are also limited per source ([`PER_IP_RATE`] per second, burst
//! [`PER_IP_BURST`]) in a table of at most [`MAX_RATE_LIMIT_ENTRIES`] sources, allocated once,
//! and all together by a global budget ([`DH_RATE`] per second, burst [`DH_BURST`]), so no
//! number of sources can make the anchor spend more than that on DH.
//!
//! A *source* is an IPv4 address, or the /64 of an IPv6 address (as WireGuard's rate limiter
//! does): one subscriber or one server gets a whole /64 and picks addresses from it at will, so
//! keying by /128 would give one attacker 2^64 buckets and let it fill the table. Cookies are
//! keyed the same way: a cookie proves the sender receives packets at its source, and the /64 is
//! the unit one party controls (a phone's IPv6 privacy address changes inside it without
//! costing a new cookie round trip). IPv4-mapped IPv6 sources (what a dual-stack socket reports
//! for IPv4 peers) count as their IPv4 address, not as one shared /64.
//!
//! Reflection: nothing sent to an address that has not proven it receives there is larger than
//! what came from it. A CookieReply is smaller than the init it answers, and a path challenge
//! ([`ChallengeGate`]) goes out only for a datagram at least as long as the challenge and at
//! most once per [`crate::anchor::CHALLENGE_RESEND`] per path, whichever addresses the
//! triggering packets came from (alternating sources cannot turn one path into a stream of
//! challenges).
//!
//! Never reads a clock (everything takes `now`); the only ambient input is randomness for the
//! secret and the nonces.

use crate::control::CHALLENGE_LEN;
use crate::handshake::ct_eq;
use crate::keys::PublicKey;
use crate::time::Instant;
use crate::wire::{
    COOKIE_LEN, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, CookieReplyRepr, MAC1_LEN, MAC2_LEN,
    MAC2_OFFSET,
};
use crate::{DropReason, HEADER_LEN, PathId, PeerId, SessionIndex, TAG_LEN};
use blake2::digest::{Digest, Mac};
use blake2::{Blake2s256, Blake2sMac};
use core::time::Duration;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use std::collections::HashMap;
use std::net::IpAddr;

/// Inits per second the anchor runs DH for before it considers itself under load.
pub const HANDSHAKE_RATE: u64 = 50;
/// Burst of the handshake bucket.
pub const HANDSHAKE_BURST: u64 = 50;
/// Once the handshake bucket ran dry, the anchor stays under load for this long.
pub const LOAD_HOLD: Duration = Duration::from_secs(1);
/// How often the cookie secret changes; a client drops its cookie a little before that age.
pub const COOKIE_ROTATION: Duration = Duration::from_secs(120);
/// Inits per second accepted from one source IP.
pub const PER_IP_RATE: u64 = 20;
/// Burst of the per-IP bucket.
pub const PER_IP_BURST: u64 = 5;
/// Sources tracked by the per-source limiter; past that, new sources are refused (and counted).
pub const MAX_RATE_LIMIT_ENTRIES: usize = 4096;
/// Inits per second, from all sources together, that the anchor runs DH for. A responder
/// handshake is five X25519 operations (some 0.1 to 0.2 ms of one core), so this caps handshake
/// work at a fifth of a core at most, and still lets 10,000 mobile hosts re-handshake after an anchor
/// restart within their first few retries.
pub const DH_RATE: u64 = 1000;
/// Burst of the global DH budget.
pub const DH_BURST: u64 = 1000;
/// The length of a sealed path challenge on the wire.
pub const CHALLENGE_DATAGRAM_LEN: usize = HEADER_LEN + 1 + CHALLENGE_LEN + TAG_LEN;

// A cookie reply goes to an unvalidated address: it must never be larger than the init.
const _: () = assert!(COOKIE_REPLY_LEN <= crate::wire::INIT_LEN);

/// The key rate limits and cookies are kept under: an IPv4 address (also when it arrives
/// IPv4-mapped), or an IPv6 address's /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(a) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

type Mac16 = Blake2sMac<blake2::digest::consts::U16>;

fn blake2s_16(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // Keys here are 16 or 32 bytes, both valid for BLAKE2s.
    let mut m = <Mac16 as Mac>::new_from_slice(key).expect("a 16- or 32-byte blake2s key");
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

/// The key that seals cookies for inits addressed to `anchor`.
pub(crate) fn cookie_key(anchor: &PublicKey) -> LessSafeKey {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, b"upmt cookie");
    Digest::update(&mut h, anchor.as_bytes());
    let k: [u8; 32] = h.finalize().into();
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).expect("chacha20 key is 32 bytes"))
}

/// mac2 of an `INIT_LEN`-long init under `cookie`: over every byte before the mac2 field.
pub(crate) fn mac2(cookie: &[u8; COOKIE_LEN], init: &[u8]) -> [u8; MAC2_LEN] {
    blake2s_16(cookie, &[&init[..MAC2_OFFSET]])
}

fn ip_bytes(ip: IpAddr, out: &mut [u8; 16]) -> &[u8] {
    match ip {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            &out[..4]
        }
        IpAddr::V6(a) => {
            out.copy_from_slice(&a.octets());
            &out[..]
        }
    }
}

pub(crate) fn random_bytes<const N: usize>(fallback_seed: u64) -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        // Only a broken OS generator gets here; a hash of a counter still never repeats.
        let h = blake2s_16(&[0x5a; 32], &[&fallback_seed.to_le_bytes()]);
        for (i, x) in b.iter_mut().enumerate() {
            *x = h[i % 16];
        }
    }
    b
}

/// The anchor's cookie secret and sealing key.
pub(crate) struct CookieJar {
    secret: [u8; 32],
    previous: Option<[u8; 32]>,
    rotated_at: Instant,
    key: LessSafeKey,
    nonces: u64,
}

impl CookieJar {
    pub(crate) fn new(anchor: &PublicKey, now: Instant) -> Self {
        CookieJar {
            secret: random_bytes(0),
            previous: None,
            rotated_at: now,
            key: cookie_key(anchor),
            nonces: 0,
        }
    }

    fn rotate(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated_at) >= COOKIE_ROTATION {
            self.previous = Some(self.secret);
            self.nonces = self.nonces.wrapping_add(1);
            self.secret = random_bytes(self.nonces ^ 0xc0ff_ee00);
            self.rotated_at = now;
        }
    }

    fn cookie(secret: &[u8; 32], ip: IpAddr) -> [u8; COOKIE_LEN] {
        let mut b = [0u8; 16];
        blake2s_16(secret, &[ip_bytes(source_key(ip), &mut b)])
    }

    /// Whether `init` carries a mac2 made with the cookie of `ip` (current or previous secret).
    pub(crate) fn check_mac2(&mut self, ip: IpAddr, init: &[u8], now: Instant) -> bool {
        self.rotate(now);
        let got = &init[MAC2_OFFSET..MAC2_OFFSET + MAC2_LEN];
        let ok_with = |s: &[u8; 32]| ct_eq(got, &mac2(&Self::cookie(s, ip), init));
        ok_with(&self.secret) || self.previous.as_ref().is_some_and(ok_with)
    }

    /// Writes the CookieReply for an init from `ip` whose mac1 is `init_mac1`.
    pub(crate) fn write_reply(
        &mut self,
        ip: IpAddr,
        init_mac1: &[u8; MAC1_LEN],
        path: PathId,
        receiver_index: SessionIndex,
        out: &mut [u8; COOKIE_REPLY_LEN],
        now: Instant,
    ) -> Result<(), DropReason> {
        self.rotate(now);
        self.nonces = self.nonces.wrapping_add(1);
        let nonce: [u8; COOKIE_NONCE_LEN] = random_bytes(self.nonces);
        CookieReplyRepr {
            path,
            receiver_index,
            nonce,
        }
        .emit(out);
        let body = &mut out[8 + COOKIE_NONCE_LEN..];
        let (cookie, tag_out) = body.split_at_mut(COOKIE_LEN);
        cookie.copy_from_slice(&Self::cookie(&self.secret, ip));
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&init_mac1[..]),
                cookie,
            )
            .map_err(|_| DropReason::TooBig)?;
        tag_out[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(())
    }
}

/// Client side: opens a CookieReply (already length- and kind-checked) for the init whose mac1
/// is `init_mac1`. `Forged` if it does not verify.
pub(crate) fn open_reply(
    key: &LessSafeKey,
    init_mac1: &[u8; MAC1_LEN],
    reply: &[u8],
) -> Result<[u8; COOKIE_LEN], DropReason> {
    if reply.len() != COOKIE_REPLY_LEN {
        return Err(DropReason::Truncated);
    }
    let mut nonce = [0u8; COOKIE_NONCE_LEN];
    nonce.copy_from_slice(&reply[8..8 + COOKIE_NONCE_LEN]);
    let mut sealed = [0u8; COOKIE_LEN + TAG_LEN];
    sealed.copy_from_slice(&reply[8 + COOKIE_NONCE_LEN..]);
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&init_mac1[..]),
            &mut sealed,
        )
        .map_err(|_| DropReason::Forged)?;
    let mut cookie = [0u8; COOKIE_LEN];
    cookie.copy_from_slice(plain);
    Ok(cookie)
}

/// A token bucket on the driver's clock, in nano-tokens so that refills need no floats.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    level: u64,
    last: Instant,
}

const NANO: u64 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn full(burst: u64, now: Instant) -> Self {
        TokenBucket {
            level: burst.saturating_mul(NANO),
            last: now,
        }
    }

    fn refill(&mut self, rate: u64, burst: u64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.level = self
            .level
            .saturating_add(ns.saturating_mul(rate))
            .min(burst.saturating_mul(NANO));
        if now > self.last {
            self.last = now;
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, rate: u64, burst: u64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.level >= NANO {
            self.level -= NANO;
            true
        } else {
            false
        }
    }

    /// Whether the bucket refilled completely (an idle source).
    fn is_full(&mut self, rate: u64, burst: u64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        self.level >= burst.saturating_mul(NANO)
    }
}

/// Global load tracking, the per-source limiter and the global DH budget.
pub(crate) struct Limiter {
    global: TokenBucket,
    under_load_until: Option<Instant>,
    /// Keyed by [`source_key`].
    per_ip: HashMap<IpAddr, TokenBucket>,
    last_sweep: Option<Instant>,
    dh: TokenBucket,
    dh_refused: u64,
}

/// What the limiter says about one init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Run the handshake.
    Allow,
    /// This source is over its rate, or the global DH budget is spent.
    RateLimited,
    /// The per-IP table is full of active addresses.
    TableFull,
}

impl Limiter {
    pub(crate) fn new(now: Instant) -> Self {
        Limiter {
            global: TokenBucket::full(HANDSHAKE_BURST, now),
            under_load_until: None,
            per_ip: HashMap::with_capacity(MAX_RATE_LIMIT_ENTRIES),
            last_sweep: None,
            dh: TokenBucket::full(DH_BURST, now),
            dh_refused: 0,
        }
    }

    /// Accounts one init that passed mac1; true when the anchor is under load (so mac2 is
    /// required). An init that finds the bucket empty starts or extends the load period.
    pub(crate) fn under_load(&mut self, now: Instant) -> bool {
        let took = self.global.take(HANDSHAKE_RATE, HANDSHAKE_BURST, now);
        if !took {
            self.under_load_until = now.checked_add(LOAD_HOLD);
        }
        !took || self.under_load_until.is_some_and(|t| now < t)
    }

    /// The verdict for an init from `ip` about to cost a DH: its source's bucket first (so a
    /// source over its rate costs the global budget nothing), then the global DH budget.
    pub(crate) fn check_ip(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        match self.check_source(source_key(ip), now) {
            Verdict::Allow if !self.dh.take(DH_RATE, DH_BURST, now) => {
                self.dh_refused = self.dh_refused.saturating_add(1);
                Verdict::RateLimited
            }
            v => v,
        }
    }

    fn check_source(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        if let Some(b) = self.per_ip.get_mut(&ip) {
            return if b.take(PER_IP_RATE, PER_IP_BURST, now) {
                Verdict::Allow
            } else {
                Verdict::RateLimited
            };
        }
        if self.per_ip.len() >= MAX_RATE_LIMIT_ENTRIES {
            // Forget idle sources, at most every 100 ms so a full table of busy ones does not
            // cost a sweep per init.
            if self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(100))
            {
                self.last_sweep = Some(now);
                self.per_ip
                    .retain(|_, b| !b.is_full(PER_IP_RATE, PER_IP_BURST, now));
            }
            if self.per_ip.len() >= MAX_RATE_LIMIT_ENTRIES {
                return Verdict::TableFull;
            }
        }
        let mut b = TokenBucket::full(PER_IP_BURST, now);
        let ok = b.take(PER_IP_RATE, PER_IP_BURST, now);
        self.per_ip.insert(ip, b);
        if ok {
            Verdict::Allow
        } else {
            Verdict::RateLimited
        }
    }

    /// Sources tracked now.
    pub(crate) fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }

    /// Inits refused because the global DH budget was spent.
    #[cfg(test)]
    pub(crate) fn dh_refused(&self) -> u64 {
        self.dh_refused
    }
}

/// Path challenges go only where they cannot amplify: see the module docs.
#[derive(Default)]
pub(crate) struct ChallengeGate {
    /// When each path last had a challenge sent. Bounded: only authenticated packets of
    /// configured peers get here, and a peer has at most 256 paths.
    last_sent: HashMap<(PeerId, PathId), Instant>,
}

impl ChallengeGate {
    /// Whether a challenge may go out on `path` of `peer` for a datagram of `received` bytes
    /// from an unvalidated address; records the send when it may.
    pub(crate) fn allow(
        &mut self,
        peer: PeerId,
        path: PathId,
        received: usize,
        now: Instant,
    ) -> bool {
        if received < CHALLENGE_DATAGRAM_LEN {
            return false;
        }
        let resend = crate::anchor::CHALLENGE_RESEND;
        match self.last_sent.get_mut(&(peer, path)) {
            Some(t) if now.saturating_duration_since(*t) < resend => false,
            Some(t) => {
                *t = now;
                true
            }
            None => {
                self.last_sent.insert((peer, path), now);
                true
            }
        }
    }

    /// Forgets `peer`'s `paths` (its session expired; they start afresh with a new one).
    pub(crate) fn forget(&mut self, peer: PeerId, paths: impl Iterator<Item = PathId>) {
        for path in paths {
            self.last_sent.remove(&(peer, path));
        }
    }

    /// Paths with a challenge on record.
    pub(crate) fn len(&self) -> usize {
        self.last_sent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::StaticSecret;
    use crate::wire::INIT_LEN;

    fn t(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn a_token_bucket_gives_its_burst_then_refills_at_its_rate() {
        let mut b = TokenBucket::full(3, t(0));
        assert!((0..3).all(|_| b.take(10, 3, t(0))));
        assert!(!b.take(10, 3, t(0)));
        assert!(!b.take(10, 3, t(50)));
        assert!(b.take(10, 3, t(100)));
        assert!(!b.take(10, 3, t(100)));
    }

    #[test]
    fn the_anchor_is_under_load_once_the_handshake_bucket_is_empty_and_stays_so_for_a_while() {
        let mut l = Limiter::new(t(0));
        for _ in 0..HANDSHAKE_BURST {
            assert!(!l.under_load(t(0)));
        }
        assert!(l.under_load(t(0)));
        // Tokens come back, but the load period holds.
        assert!(l.under_load(t(500)));
        assert!(!l.under_load(t(1600)));
    }

    #[test]
    fn one_source_ip_is_limited_to_its_burst_and_the_table_is_bounded() {
        let mut l = Limiter::new(t(0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..PER_IP_BURST {
            assert_eq!(l.check_ip(ip, t(0)), Verdict::Allow);
        }
        assert_eq!(l.check_ip(ip, t(0)), Verdict::RateLimited);
        assert_eq!(l.check_ip(ip, t(60)), Verdict::Allow);
        for i in 0..(MAX_RATE_LIMIT_ENTRIES as u32 + 10) {
            // Distinct /64s: addresses of one /64 share a bucket.
            let ip = IpAddr::V6(std::net::Ipv6Addr::from((u128::from(i) + 1) << 64));
            let _ = l.check_ip(ip, t(60));
        }
        assert_eq!(l.tracked_ips(), MAX_RATE_LIMIT_ENTRIES);
        let fresh: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(l.check_ip(fresh, t(60)), Verdict::TableFull);
        // Once the others are idle long enough to refill, they are swept and room is made.
        assert_eq!(l.check_ip(fresh, t(2000)), Verdict::Allow);
        assert!(l.tracked_ips() < MAX_RATE_LIMIT_ENTRIES);
    }

    #[test]
    fn a_cookie_reply_opens_only_for_its_init_and_the_cookie_makes_a_valid_mac2() {
        let an = StaticSecret::from_bytes([7; 32]).public_key();
        let mut jar = CookieJar::new(&an, t(0));
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let mac1 = [3u8; MAC1_LEN];
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        jar.write_reply(ip, &mac1, PathId(1), SessionIndex(9), &mut reply, t(0))
            .unwrap();
        let key = cookie_key(&an);
        assert_eq!(
            open_reply(&key, &[4u8; MAC1_LEN], &reply),
            Err(DropReason::Forged)
        );
        let cookie = open_reply(&key, &mac1, &reply).unwrap();
        let mut init = [0x11u8; INIT_LEN];
        assert!(!jar.check_mac2(ip, &init, t(0)));
        let m = mac2(&cookie, &init);
        init[MAC2_OFFSET..].copy_from_slice(&m);
        assert!(jar.check_mac2(ip, &init, t(0)));
        assert!(!jar.check_mac2("203.0.113.10".parse().unwrap(), &init, t(0)));
        // Still valid across one rotation, not two.
        assert!(jar.check_mac2(ip, &init, t(121_000)));
        assert!(!jar.check_mac2(ip, &init, t(242_000)));
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s_and_mapped_ipv4_is_ipv4() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"));
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(
            k("2001:db8:1:2:aaaa::1"),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        // A dual-stack socket reports IPv4 peers mapped: each keeps its own bucket.
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("::ffff:192.0.2.7"), k("::ffff:192.0.2.8"));
    }

    #[test]
    fn a_slash_64_with_ten_thousand_sources_gets_one_sources_rate() {
        let mut l = Limiter::new(t(0));
        let mut allowed = 0;
        // 10,000 inits per second for 2 s, each from a different address of one /64.
        for i in 0..20_000u64 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(
                (0x2001_0db8_0000_0001u128 << 64) | u128::from(i * 7919 + 1),
            ));
            if l.check_ip(ip, t(i / 10)) == Verdict::Allow {
                allowed += 1;
            }
        }
        assert_eq!(l.tracked_ips(), 1);
        // The burst, then the source's rate over 2 s.
        assert!(allowed <= PER_IP_BURST + 2 * PER_IP_RATE, "{allowed}");
        assert!(allowed >= PER_IP_BURST + PER_IP_RATE, "{allowed}");
    }

    #[test]
    fn ten_thousand_sources_together_get_no_more_than_the_global_dh_budget() {
        let mut l = Limiter::new(t(0));
        let mut allowed = 0u64;
        // Two rounds a second apart over 10,000 distinct /64s (a /48's worth of attackers);
        // each source stays within its own rate.
        for round in 0..2u64 {
            for i in 0..10_000u64 {
                let ip = IpAddr::V6(std::net::Ipv6Addr::from(
                    ((0x2001_0db8_0000_0000u128 | u128::from(i)) << 64) | 1,
                ));
                if l.check_ip(ip, t(round * 1000 + i / 100)) == Verdict::Allow {
                    allowed += 1;
                }
            }
        }
        // The burst plus a second's refill, and not one more.
        assert!(allowed <= DH_BURST + DH_RATE + DH_RATE / 10, "{allowed}");
        assert!(l.dh_refused() > 0);
    }

    #[test]
    fn a_cookie_is_good_for_its_whole_slash_64_and_no_other() {
        let an = StaticSecret::from_bytes([7; 32]).public_key();
        let mut jar = CookieJar::new(&an, t(0));
        let ip: IpAddr = "2001:db8:0:1::5".parse().unwrap();
        let mac1 = [3u8; MAC1_LEN];
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        jar.write_reply(ip, &mac1, PathId(0), SessionIndex(1), &mut reply, t(0))
            .unwrap();
        let cookie = open_reply(&cookie_key(&an), &mac1, &reply).unwrap();
        let mut init = [0x11u8; INIT_LEN];
        let m = mac2(&cookie, &init);
        init[MAC2_OFFSET..].copy_from_slice(&m);
        assert!(jar.check_mac2("2001:db8:0:1:ffff::9".parse().unwrap(), &init, t(0)));
        assert!(!jar.check_mac2("2001:db8:0:2::5".parse().unwrap(), &init, t(0)));
    }

    #[test]
    fn a_challenge_needs_a_datagram_as_long_as_itself_and_alternating_sources_share_its_resend_limit()
     {
        let mut g = ChallengeGate::default();
        let (peer, path) = (PeerId(0), PathId(0));
        // A bare keepalive is shorter than the challenge: no challenge for it.
        assert!(!g.allow(peer, path, crate::wire::MIN_TRANSPORT_LEN, t(0)));
        assert!(g.allow(peer, path, CHALLENGE_DATAGRAM_LEN, t(0)));
        // Whatever address the next packets come from, the path waits out the resend interval.
        let resend = crate::anchor::CHALLENGE_RESEND.as_millis() as u64;
        let sent = (0..1000u64)
            .filter(|ms| g.allow(peer, path, 1400, t(1 + ms)))
            .count() as u64;
        assert!(sent <= 1000 / resend + 1, "{sent} challenges in 1 s");
        // Other paths have their own interval.
        assert!(g.allow(peer, PathId(1), 1400, t(1)));
    }
}
