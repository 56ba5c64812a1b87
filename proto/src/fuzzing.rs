//! Entry points of the fuzz targets in `proto/fuzz/`, shared with the corpus replay test
//! (`tests/fuzz_corpus.rs`) so that both always run the same code. Not part of the API.
//!
//! Each entry takes arbitrary bytes, never panics on them, and asserts the invariants the
//! protocol promises (round trips, every drop counted, no inner packet with a foreign source,
//! downlink only to validated addresses, MSS clamping keeps checksums valid). The core targets
//! read the input as a small script of operations on the simulated network of [`crate::sim`]
//! (which checks the drop and delivery invariants on every datagram), so the harness can produce
//! authenticated packets the fuzzer could never forge, and the scripts stay meaningful although
//! session indices are random per run.

use crate::control::ControlMessage;
use crate::handshake::{mac1, mac1_key};
use crate::keys::{PublicKey, StaticSecret};
use crate::sim::{MH_V4, Pair, link_addr};
use crate::wire::{self, INIT_LEN, MAC1_LEN, MAC1_OFFSET};
use crate::{HEADER_LEN, PathId, PeerId, ip};
use core::time::Duration;
use std::net::{IpAddr, SocketAddr};

/// The fuzz targets, by name (the directory names under `proto/fuzz/corpus/`).
pub const TARGETS: [&str; 4] = [
    "wire_decode",
    "anchor_datagram",
    "client_datagram",
    "ip_clamp_mss",
];

/// Runs target `name` on `data`; false if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "wire_decode" => wire_decode(data),
        "anchor_datagram" => anchor_datagram(data),
        "client_datagram" => client_datagram(data),
        "ip_clamp_mss" => ip_clamp_mss(data),
        _ => return false,
    }
    true
}

/// Both ends of one session's transport keys under `cipher`, for the AEAD bench
/// (`benches/aead.rs`): the same in-place seal and open the cores run per packet.
pub struct TransportKeys {
    sender: crate::crypto::Keypair,
    receiver: crate::crypto::Keypair,
}

impl TransportKeys {
    /// Fixed keys (a bench needs no secrecy) under `cipher`.
    pub fn new(cipher: crate::Cipher) -> Self {
        use crate::SessionIndex;
        use crate::time::Instant;
        let (a, b) = ([1u8; 32], [2u8; 32]);
        TransportKeys {
            sender: crate::crypto::Keypair::new(
                cipher,
                &a,
                &b,
                SessionIndex(1),
                SessionIndex(2),
                Instant::ZERO,
            ),
            receiver: crate::crypto::Keypair::new(
                cipher,
                &b,
                &a,
                SessionIndex(2),
                SessionIndex(1),
                Instant::ZERO,
            ),
        }
    }

    /// Seals `buf[HEADER_LEN..HEADER_LEN + len]` as a Data packet on path 0; returns the
    /// datagram length.
    pub fn seal(&mut self, buf: &mut [u8], len: usize) -> Result<usize, crate::DropReason> {
        self.sender.seal(wire::Kind::Data, PathId(0), buf, len)
    }

    /// Opens a datagram [`Self::seal`] made (replay check included); returns the plaintext
    /// range.
    pub fn open(
        &mut self,
        datagram: &mut [u8],
    ) -> Result<core::ops::Range<usize>, crate::DropReason> {
        let counter = wire::TransportHeader::new_checked(&datagram[..])?.counter();
        self.receiver.open(counter, datagram)
    }
}

/// Writes a valid mac1 for `anchor` into an `INIT_LEN`-long init (tests and flood scenarios).
pub fn seal_mac1(anchor: &PublicKey, init: &mut [u8]) {
    if init.len() == INIT_LEN {
        let m = mac1(&mac1_key(anchor), init);
        init[MAC1_OFFSET..MAC1_OFFSET + MAC1_LEN].copy_from_slice(&m);
    }
}

/// The cookie a CookieReply carries for `init` (the init it answers), for flood scenarios whose
/// attacker receives at its source; `None` if it does not open.
pub fn cookie_from_reply(
    anchor: &PublicKey,
    init: &[u8],
    reply: &[u8],
) -> Option<[u8; wire::COOKIE_LEN]> {
    let mac1: [u8; MAC1_LEN] = init
        .get(MAC1_OFFSET..MAC1_OFFSET + MAC1_LEN)?
        .try_into()
        .ok()?;
    crate::cookie::open_reply(&crate::cookie::cookie_key(anchor), &mac1, reply).ok()
}

/// Writes the mac2 that `cookie` allows into an `INIT_LEN`-long init.
pub fn seal_mac2(cookie: &[u8; wire::COOKIE_LEN], init: &mut [u8]) {
    if init.len() == INIT_LEN {
        let m = crate::cookie::mac2(cookie, init);
        init[wire::MAC2_OFFSET..].copy_from_slice(&m);
    }
}

/// Every decoder of the wire format, the control messages and the IP helpers.
pub fn wire_decode(data: &[u8]) {
    let _ = wire::peek_kind(data);
    if let Ok(h) = wire::TransportHeader::new_checked(data)
        && let Ok(r) = wire::TransportRepr::parse(&h)
    {
        let mut copy = [0u8; wire::MIN_TRANSPORT_LEN];
        r.emit(&mut wire::TransportHeader::new_unchecked(&mut copy[..]));
        assert_eq!(&copy[..4], &[data[0], data[1], 0, 0][..]);
        assert_eq!(&copy[4..HEADER_LEN], &data[4..HEADER_LEN]);
        assert_eq!(h.payload().len() + HEADER_LEN, data.len());
    }
    if let Ok(h) = wire::HandshakeInit::new_checked(data) {
        let _ = wire::HandshakeInitRepr::parse(&h);
        let _ = (h.noise().len(), h.mac1(), h.mac2());
        let _ = crate::handshake::check_mac1(&[0u8; 32], data);
    }
    if let Ok(h) = wire::HandshakeResp::new_checked(data)
        && let Ok(r) = wire::HandshakeRespRepr::parse(&h)
    {
        assert_eq!(r.path, h.path());
    }
    if let Ok(h) = wire::CookieReply::new_checked(data)
        && let Ok(r) = wire::CookieReplyRepr::parse(&h)
    {
        let mut copy = [0u8; wire::COOKIE_REPLY_LEN];
        r.emit(&mut copy);
        assert_eq!(&copy[4..20], &data[4..20]);
    }
    if let Ok(p) = crate::SessionParams::parse(data) {
        let mut b = [0u8; crate::SessionParams::WIRE_LEN];
        assert_eq!(p.emit(&mut b), Ok(b.len()));
        assert_eq!(crate::SessionParams::parse(&b), Ok(p));
    }
    if let Ok(m) = ControlMessage::parse(data) {
        let mut b = [0u8; crate::control::MAX_LEN];
        let n = m.emit(&mut b).expect("every message fits MAX_LEN");
        assert_eq!(ControlMessage::parse(&b[..n]), Ok(m));
    }
    // The lenient parse agrees with the strict one wherever the strict one has an answer.
    let lenient = ip::parse(data);
    if let Ok(meta) = upmt_paft::parse_packet(data) {
        assert_eq!(lenient, Some(meta.key));
    }
}

/// One's-complement sum of `b` as big-endian words, folded.
fn sum16(mut acc: u32, b: &[u8]) -> u32 {
    for c in b.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Whether the TCP checksum of `p` (everything after the IP header is the segment) verifies.
fn tcp_checksum_ok(p: &[u8]) -> Option<bool> {
    let l = upmt_paft::parse_ip(p).ok()?;
    let seg = p.get(l.l4_start..l.end)?;
    let len = u32::try_from(seg.len()).ok()?;
    let mut acc = match (l.src, l.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum16(sum16(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum16(sum16(0, &s.octets()), &d.octets()),
        _ => return None,
    };
    acc = sum16(acc, &(len >> 16).to_be_bytes()[2..]);
    acc = sum16(acc, &(len as u16).to_be_bytes());
    acc = sum16(acc, &[0, ip::PROTO_TCP]);
    acc = sum16(acc, seg);
    Some(acc == 0xffff)
}

/// `ip::clamp_tcp_mss` on arbitrary packets: the first two bytes are the MSS limit.
pub fn ip_clamp_mss(data: &[u8]) {
    let Some((mss, packet)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_mss = u16::from_be_bytes(*mss);
    let mut buf = [0u8; 2048];
    let Some(p) = buf.get_mut(..packet.len()) else {
        return;
    };
    p.copy_from_slice(packet);
    let before = ip::parse(p);
    let sum_ok = tcp_checksum_ok(p);
    let changed = ip::clamp_tcp_mss(p, max_mss);
    assert_eq!(
        ip::parse(p),
        before,
        "clamping changed the addresses or ports"
    );
    if changed {
        assert_eq!(before.map(|i| i.proto), Some(ip::PROTO_TCP));
        if sum_ok == Some(true) {
            assert_eq!(
                tcp_checksum_ok(p),
                Some(true),
                "clamping broke the checksum"
            );
        }
        assert!(!ip::clamp_tcp_mss(p, max_mss), "clamping is not idempotent");
    } else {
        assert_eq!(&p[..], packet, "an unchanged packet was modified");
    }
}

const PATHS: usize = 2;

/// A client and an anchor on a lossless zero-delay network of two paths, with fixed keys,
/// fresh or after a real handshake.
fn sim(connect: bool) -> Pair {
    let mut pair = Pair::with_secrets(
        StaticSecret::from_bytes([0x42; 32]),
        StaticSecret::from_bytes([0x24; 32]),
        &[0; PATHS],
        |_| {},
    );
    pair.data_only_to_links = true;
    if connect {
        pump(&mut pair);
        assert!(pair.connected(), "the harness handshake failed");
    } else {
        // Keep the client's first init from reaching the anchor.
        pair.inflight.clear();
    }
    pair
}

/// Delivers what both cores want to send until they are quiet.
fn pump(pair: &mut Pair) {
    pair.run_for(Duration::ZERO);
}

/// Runs both cores' due timers `ms` later without delivering anything.
fn advance_alone(pair: &mut Pair, ms: u64) {
    pair.now += Duration::from_millis(ms);
    pair.run_due_timers();
}

/// The anchor encapsulates an IPv4 packet to the mobile host built around `body`.
fn downlink(pair: &mut Pair, body: &[u8]) {
    let n = body.len().min(1400);
    let len = 20 + n;
    let mut p = [0u8; 1420];
    let p = &mut p[..len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[9] = body.first().copied().unwrap_or(17);
    p[12..16].copy_from_slice(&[93, 184, 216, 34]);
    p[16..20].copy_from_slice(&MH_V4.octets());
    p[20..].copy_from_slice(&body[..n]);
    let _ = pair.anchor_send(p);
}

/// Splits a script into (op, argument, body) records: `op u8, len u8, body[len]`.
fn records(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = data;
    core::iter::from_fn(move || {
        let (&op, r) = rest.split_first()?;
        let (&len, r) = r.split_first().unwrap_or((&0, r));
        let n = usize::from(len).min(r.len());
        let (body, r) = r.split_at(n);
        rest = r;
        Some((op, body))
    })
}

fn attacker(op: u8) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, op & 0x0f], 1000 + u16::from(op)))
}

/// Datagrams into an anchor with one peer, fresh or after a real handshake. Byte 0 bit 0 picks
/// connected; then records: op % 8 = 0 raw from the peer's address, 1 raw from another address,
/// 2 the client sends body as an inner packet, 3 the client seals body as a control message
/// (from its address or, op bit 7, another), 4 replay the last uplink datagram from another
/// address, 5 advance time by `body[0] * 10` ms, 6 downlink body, 7 raw init with a valid mac1.
pub fn anchor_datagram(data: &[u8]) {
    let Some((&mode, script)) = data.split_first() else {
        return;
    };
    let mut pair = sim(mode & 1 == 1);
    for (op, body) in records(script).take(64) {
        let path = PathId((op >> 4) & 1);
        match op % 8 {
            0 => pair.deliver(true, path, body.to_vec()),
            1 => pair.deliver_from(attacker(op), body.to_vec()),
            2 => {
                let mut inner = body.to_vec();
                if let Some(b) = inner.first_mut() {
                    *b = 0x40 | (*b & 0x0f);
                }
                let _ = pair.client_send(path, &inner);
            }
            3 => {
                let n = body.len();
                let mut buf = [0u8; 1600];
                buf[HEADER_LEN..HEADER_LEN + n].copy_from_slice(body);
                if let Some(len) = pair.client.seal_control_raw(path, &mut buf, n) {
                    let from = if op & 0x80 != 0 {
                        attacker(op)
                    } else {
                        link_addr(path.0)
                    };
                    pair.deliver_from(from, buf[..len].to_vec());
                }
            }
            4 => {
                if let Some((_, d)) = pair.uplink_log.last() {
                    let d = d.clone();
                    pair.deliver_from(attacker(op), d);
                }
            }
            5 => pair.run_for(Duration::from_millis(
                u64::from(body.first().copied().unwrap_or(1)) * 10,
            )),
            6 => downlink(&mut pair, body),
            _ => {
                let mut init = [0u8; INIT_LEN];
                init[0] = wire::Kind::HandshakeInit.first_byte();
                let n = body.len().min(INIT_LEN - 1);
                init[1..1 + n].copy_from_slice(&body[..n]);
                seal_mac1(&pair.an_secret.public_key(), &mut init);
                pair.deliver_from(attacker(op), init.to_vec());
            }
        }
        pump(&mut pair);
    }
}

/// Datagrams into a client, fresh or connected. Byte 0 bit 0 picks connected; then records:
/// op % 6 = 0 raw on a path, 1 the anchor sends body as a downlink packet, 2 the anchor seals
/// body as a control message, 3 replay the last downlink datagram on the other path, 4 advance
/// time by `body[0] * 10` ms, 5 raw with the pending handshake's index at bytes 4..8 (cookie
/// replies, responses).
pub fn client_datagram(data: &[u8]) {
    let Some((&mode, script)) = data.split_first() else {
        return;
    };
    let mut pair = sim(mode & 1 == 1);
    // Half the scripts let the anchor answer, half keep the client alone with the input.
    let answered = mode & 2 == 0;
    for (op, body) in records(script).take(64) {
        let path = PathId((op >> 4) & 1);
        match op % 6 {
            0 => pair.deliver(false, path, body.to_vec()),
            1 => downlink(&mut pair, body),
            2 => {
                let n = body.len();
                let mut buf = [0u8; 1600];
                buf[HEADER_LEN..HEADER_LEN + n].copy_from_slice(body);
                if let Some(len) = pair.anchor.seal_control_raw(PeerId(0), path, &mut buf, n) {
                    pair.deliver(false, path, buf[..len].to_vec());
                }
            }
            3 => {
                if let Some((p, d)) = pair.downlink_log.last() {
                    let (p, d) = (*p, d.clone());
                    pair.deliver(false, PathId(p.0 ^ 1), d);
                }
            }
            4 => {
                let ms = u64::from(body.first().copied().unwrap_or(1)) * 10;
                if answered {
                    pair.run_for(Duration::from_millis(ms));
                } else {
                    advance_alone(&mut pair, ms);
                }
            }
            _ => {
                let mut d = body.to_vec();
                if let (Some(idx), Some(f)) = (pair.client.pending_index(), d.get_mut(4..8)) {
                    f.copy_from_slice(&idx.0.to_be_bytes());
                }
                pair.deliver(false, path, d);
            }
        }
        if answered {
            pump(&mut pair);
        }
    }
}
