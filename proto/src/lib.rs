//! upmt-proto: the wire format, the Noise IK handshake, the transport crypto and the session and
//! path state machines of upmt, as sans-IO cores.
//!
//! This crate never does IO and never reads a clock: no sockets, no TUN, no tokio, no
//! `Instant::now()`. Every method that depends on time takes `now: time::Instant` from the driver.
//! The only ambient input is randomness (`getrandom`) for session indices, ephemeral keys and
//! static key generation.
//!
//! Two cores: [`client::Client`] (the mobile host, Noise initiator) and [`anchor::Anchor`] (the
//! anchor node, Noise responder, many peers). Both are driven the same way, once per loop turn:
//!
//! 1. feed inputs: `handle_datagram` for every received datagram, `handle_path_up` /
//!    `handle_path_down` for link changes (client), `handle_timeout` when the timer fired, and
//!    `encapsulate` for every packet read from the TUN;
//! 2. drain `poll_transmit` until it returns `None`, sending each datagram;
//! 3. drain `poll_event` until it returns `None`;
//! 4. re-arm one timer at `poll_timeout` (it also names the [`timer::Timer`] that is due, for logs).
//!
//! Drops: a core counts every datagram it drops in its own [`DropCounters`] (see `drops()`) and
//! returns the [`DropReason`]; drivers only log it, they must not count it again.

pub mod anchor;
pub mod client;
pub mod control;
pub mod cookie;
pub mod dup;
#[doc(hidden)]
pub mod fuzzing;
pub mod ip;
pub mod keys;
pub mod queue;
pub mod replay;
pub mod resend;
#[doc(hidden)]
pub mod sim;
pub mod time;
pub mod timer;
pub mod wire;

mod crypto;
mod handshake;

pub use crypto::Cipher;

use core::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// Transport header length (Data and Control): kind, path, reserved, receiver index, counter.
pub const HEADER_LEN: usize = 16;
/// AEAD tag length (ChaCha20-Poly1305).
pub const TAG_LEN: usize = 16;
/// Bytes a transported packet costs on top of the inner packet over outer IPv4 (20 + 8 + 32).
pub const OVERHEAD_V4: usize = 20 + 8 + HEADER_LEN + TAG_LEN;
/// Bytes a transported packet costs on top of the inner packet over outer IPv6 (40 + 8 + 32).
pub const OVERHEAD_V6: usize = 40 + 8 + HEADER_LEN + TAG_LEN;
/// TUN MTU that fits a 1500-byte outer path over IPv6, the worst case.
pub const DEFAULT_MTU: u16 = 1500 - OVERHEAD_V6 as u16;

/// One tunnel of a session (one per uplink of the mobile host), as carried on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathId(pub u8);

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path{}", self.0)
    }
}

/// A session's local index: the receiver picks it, the sender puts it in every transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionIndex(pub u32);

/// Anchor side: the index of a peer in `AnchorConfig::peers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u32);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer{}", self.0)
    }
}

/// What the anchor gives the mobile host in its handshake response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionParams {
    /// The mobile host's virtual IPv4 address (the TUN's address).
    pub virtual_ipv4: Ipv4Addr,
    /// Prefix length of the virtual IPv4 network.
    pub prefix4: u8,
    /// The mobile host's virtual IPv6 address, if the anchor routes IPv6.
    pub virtual_ipv6: Option<Ipv6Addr>,
    /// Prefix length of the virtual IPv6 network (meaningless without `virtual_ipv6`).
    pub prefix6: u8,
    /// TUN MTU to use.
    pub mtu: u16,
    /// The transport AEAD the anchor picked (ChaCha20-Poly1305 unless the client offered
    /// AES-256-GCM and the anchor runs it fast too).
    pub cipher: Cipher,
}

/// A datagram a core wrote into the caller's buffer: send `buf[..len]` on `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The path (uplink socket) to send on.
    pub path: PathId,
    /// Client side: `None` (each path's socket is connected to the anchor).
    /// Anchor side: the address to send to.
    pub dst: Option<SocketAddr>,
    /// Length of the datagram at the start of the buffer.
    pub len: usize,
}

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $msg:literal;)*) => {
        /// Why a core dropped a datagram or refused a packet.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
        pub enum DropReason {
            $(#[doc = $msg] #[error($msg)] $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: [DropReason; [$(DropReason::$variant),*].len()] =
                [$(DropReason::$variant),*];

            /// A short snake_case name, for logs and metrics labels.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    Truncated => "truncated", "datagram or packet too short for its kind";
    BadVersion => "bad_version", "unsupported protocol version";
    UnknownKind => "unknown_kind", "unknown datagram kind";
    UnknownSession => "unknown_session", "no session with this receiver index";
    BadMac => "bad_mac", "handshake mac1 does not match our public key";
    HandshakeFailed => "handshake_failed", "noise handshake message did not verify";
    UnknownPeer => "unknown_peer", "no configured peer for this key or address";
    StaleTimestamp => "stale_timestamp", "handshake timestamp not newer than the last accepted";
    Forged => "forged", "authentication tag did not verify";
    Replayed => "replayed", "counter already seen or too old for the replay window";
    SpoofedSource => "spoofed_source", "inner source address is not the peer's virtual address";
    NotIp => "not_ip", "inner packet is not ipv4 or ipv6";
    TooBig => "too_big", "packet does not fit the buffer";
    NoSession => "no_session", "no established session to send on";
    UnknownControl => "unknown_control", "unknown control message type";
    Expired => "expired", "session expired";
    RateLimited => "rate_limited", "rate limited";
    CookieRequired => "cookie_required", "under load: init without a valid mac2, answered with a cookie";
    QueueFull => "queue_full", "a bounded transmit or event queue was full";
    Duplicate => "duplicate", "second copy of a redundant packet (not a replay)";
}

/// One counter per [`DropReason`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::ALL.len()],
}

impl DropCounters {
    /// Counts one drop.
    pub fn add(&mut self, reason: DropReason) {
        let slot = &mut self.counts[reason as usize];
        *slot = slot.saturating_add(1);
    }

    /// How many drops for `reason` so far.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize]
    }

    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, c| a.saturating_add(*c))
    }

    /// Every reason with its count, in [`DropReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(move |r| (*r, self.get(*r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_all_is_in_discriminant_order_with_unique_names() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    #[test]
    fn drop_counters_count_per_reason() {
        let mut c = DropCounters::default();
        c.add(DropReason::Forged);
        c.add(DropReason::Forged);
        c.add(DropReason::Replayed);
        assert_eq!(c.get(DropReason::Forged), 2);
        assert_eq!(c.get(DropReason::Replayed), 1);
        assert_eq!(c.get(DropReason::Truncated), 0);
        assert_eq!(c.total(), 3);
        assert_eq!(c.iter().count(), DropReason::ALL.len());
    }

    #[test]
    fn default_mtu_leaves_room_for_ipv6_encapsulation() {
        assert_eq!(DEFAULT_MTU, 1420);
        assert_eq!(OVERHEAD_V6, 80);
        assert_eq!(OVERHEAD_V4, 60);
    }
}
