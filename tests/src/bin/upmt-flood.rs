//! upmt-flood: a bounded load generator of hostile datagrams for the anchor node, for the lab.
//!
//! It sends `--count` datagrams (at most [`MAX_COUNT`]) of the chosen `--kinds` at `--target`
//! and stops at the count or after `--duration-max` seconds, whichever comes first, then prints
//! what it sent per kind as one JSON line on stdout (and a readable summary on stderr).
//!
//! Kinds:
//! - `garbage`: random bytes of random length;
//! - `truncated`: a valid first byte (every kind) followed by fewer bytes than that kind needs;
//! - `oversized`: a data header with a random receiver index and 1473 to 65507 bytes in all;
//! - `handshake`: inits with a valid mac1 for `--anchor-public` and random Noise bytes (each
//!   costs the anchor a DH unless its cookie and rate-limit defences refuse it first), sent from
//!   `--sources` consecutive addresses starting at `--source-base` (addresses the caller put on
//!   an interface in the lab);
//! - `badtag`, `replay`, `spoofed`: authenticated material of a real session. The generator is a
//!   second legitimate peer of the anchor (`--peer-key`, configured on the anchor like any MH):
//!   it handshakes, sends `upmt_proto::replay::WINDOW` + 256 legitimate "priming" packets (UDP to
//!   `--inner-dst`, port 9) and then sends: `badtag` = fresh packets with one tag byte flipped,
//!   `replay` = copies of the priming packets (alternately older than the replay window and
//!   within it), `spoofed` = fresh authenticated packets whose inner source is `--spoof-source`
//!   (e.g. another peer's virtual address) toward `--spoof-dst` (the CH, where a leak shows).
//!
//! What it never does: send to a target outside 203.0.113.0/24 or 2001:db8::/32 (the lab's
//! documentation ranges; anything else is refused before a socket is opened), send without a
//! count and a time bound, or aim inner packets outside private or documentation ranges.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Parser;
use upmt_proto::client::{Client, ClientConfig};
use upmt_proto::keys::{PublicKey, StaticSecret};
use upmt_proto::time::Instant;
use upmt_proto::wire::INIT_LEN;
use upmt_proto::{HEADER_LEN, PathId, TAG_LEN};
use upmt_tests::guard::{inner_allowed, target_allowed};

/// The most datagrams one run may send.
const MAX_COUNT: u64 = 20_000_000;
/// The longest one run may last.
const MAX_SECONDS: u64 = 600;
/// Datagrams per sendmmsg call.
const BATCH: usize = 64;
/// Largest UDP payload over IPv4.
const MAX_UDP: usize = 65_507;
/// Legitimate packets sent before the session kinds, so replays can be older than the window.
const PRIMING: usize = upmt_proto::replay::WINDOW as usize + 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Garbage,
    Truncated,
    Oversized,
    Handshake,
    Badtag,
    Replay,
    Spoofed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Garbage => "garbage",
            Kind::Truncated => "truncated",
            Kind::Oversized => "oversized",
            Kind::Handshake => "handshake",
            Kind::Badtag => "badtag",
            Kind::Replay => "replay",
            Kind::Spoofed => "spoofed",
        }
    }

    fn needs_session(self) -> bool {
        matches!(self, Kind::Badtag | Kind::Replay | Kind::Spoofed)
    }
}

/// Hostile datagrams at an upmt anchor in the lab, bounded in count and time.
#[derive(Debug, Parser)]
#[command(name = "upmt-flood", version)]
struct Args {
    /// The anchor's UDP address (only 203.0.113.0/24 or 2001:db8::/32).
    #[arg(long)]
    target: SocketAddr,
    /// Datagrams to send in all, spread evenly over the kinds (at most 20,000,000).
    #[arg(long)]
    count: u64,
    /// Hard stop after this many seconds (at most 600).
    #[arg(long, default_value_t = 30)]
    duration_max: u64,
    /// Kinds to send, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "garbage,truncated,oversized"
    )]
    kinds: Vec<Kind>,
    /// Datagrams per second in all (0 = as fast as the socket takes them).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The anchor's public key (base64): needed by `handshake` and the session kinds.
    #[arg(long)]
    anchor_public: Option<PublicKey>,
    /// The private key (base64) of a peer the anchor knows: needed by the session kinds.
    #[arg(long)]
    peer_key: Option<StaticSecret>,
    /// Local address for the session and the single-source kinds.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// First of the source addresses of `handshake` (consecutive, already on an interface).
    #[arg(long)]
    source_base: Option<Ipv4Addr>,
    /// How many source addresses `handshake` uses.
    #[arg(long, default_value_t = 1)]
    sources: u32,
    /// Inner source of `spoofed` packets.
    #[arg(long, default_value = "10.77.0.2")]
    spoof_source: Ipv4Addr,
    /// Inner destination of the priming, badtag and replay packets (the anchor's own virtual
    /// address keeps the legitimate ones inside the anchor).
    #[arg(long, default_value = "10.77.0.1")]
    inner_dst: Ipv4Addr,
    /// Inner destination of `spoofed` packets (the lab's CH, where a leak would show).
    #[arg(long, default_value = "192.0.2.2")]
    spoof_dst: Ipv4Addr,
    /// Seed of the generator's randomness (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("upmt-flood: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if !target_allowed(args.target.ip()) {
        bail!(
            "refusing target {}: only 203.0.113.0/24 and 2001:db8::/32 (the lab) are allowed",
            args.target
        );
    }
    if args.count == 0 || args.count > MAX_COUNT {
        bail!("--count must be between 1 and {MAX_COUNT}");
    }
    if args.duration_max == 0 || args.duration_max > MAX_SECONDS {
        bail!("--duration-max must be between 1 and {MAX_SECONDS}");
    }
    if args.sources == 0 || args.sources > 4096 {
        bail!("--sources must be between 1 and 4096");
    }
    for ip in [args.inner_dst, args.spoof_source, args.spoof_dst] {
        if !inner_allowed(ip) {
            bail!("refusing inner address {ip}: only private or documentation ranges");
        }
    }
    let mut kinds = args.kinds.clone();
    kinds.dedup();
    if kinds.is_empty() {
        bail!("--kinds is empty");
    }
    let deadline = StdInstant::now() + Duration::from_secs(args.duration_max);
    let mut rng = Rng::new(args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id())
    }));

    let bind = args.bind.unwrap_or(match args.target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    });
    let main_socket = connect(SocketAddr::new(bind, 0), args.target)?;

    let mut session = if kinds.iter().any(|k| k.needs_session()) {
        let anchor = args
            .anchor_public
            .context("badtag, replay and spoofed need --anchor-public")?;
        let key = args
            .peer_key
            .clone()
            .context("badtag, replay and spoofed need --peer-key")?;
        Some(Session::establish(
            &main_socket,
            key,
            anchor,
            &args,
            deadline,
        )?)
    } else {
        None
    };

    let inits = if kinds.contains(&Kind::Handshake) {
        let anchor = args
            .anchor_public
            .context("handshake needs --anchor-public")?;
        (0..256)
            .map(|_| {
                let mut init = vec![0u8; INIT_LEN];
                rng.fill(&mut init);
                init[0] = 0x11;
                init[1] = 0;
                init[2] = 0;
                init[3] = 0;
                init[INIT_LEN - 16..].fill(0); // no mac2: a cookie is what the anchor may ask
                upmt_proto::fuzzing::seal_mac1(&anchor, &mut init);
                init
            })
            .collect::<Vec<_>>()
    } else {
        Vec::new()
    };
    let handshake_sockets = if kinds.contains(&Kind::Handshake) {
        match args.source_base {
            Some(base) => (0..args.sources)
                .map(|i| {
                    let ip = Ipv4Addr::from(u32::from(base).wrapping_add(i));
                    connect(SocketAddr::new(IpAddr::V4(ip), 0), args.target)
                        .with_context(|| format!("source address {ip} (is it on an interface?)"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => Vec::new(),
        }
    } else {
        Vec::new()
    };

    let mut pool = vec![0u8; 1 << 16];
    rng.fill(&mut pool);
    let mut batch = Batch::new();
    let mut sent = vec![0u64; kinds.len()];
    let mut total = 0u64;
    let started = StdInstant::now();
    let mut turn = 0usize;
    let mut source_turn = 0usize;
    let mut stop = "count";
    while total < args.count {
        if StdInstant::now() >= deadline {
            stop = "duration";
            break;
        }
        let k = turn % kinds.len();
        let kind = kinds[k];
        turn += 1;
        let n = (args.count - total).min(BATCH as u64) as usize;
        batch.clear();
        for _ in 0..n {
            let buf = batch.next_buf();
            let len = match kind {
                Kind::Garbage => {
                    // A random slice of a random pool, with fresh first bytes: as random to a
                    // parser as fresh bytes, at a memcpy's cost.
                    let len = 1 + rng.below(1400);
                    let at = rng.below(pool.len() - len);
                    buf[..len].copy_from_slice(&pool[at..at + len]);
                    rng.fill(&mut buf[..len.min(8)]);
                    len
                }
                Kind::Truncated => {
                    // (first byte, the shortest length that kind accepts)
                    const MIN: [(u8, usize); 5] = [
                        (0x11, INIT_LEN),
                        (0x12, upmt_proto::wire::RESP_LEN),
                        (0x13, HEADER_LEN + TAG_LEN),
                        (0x14, HEADER_LEN + TAG_LEN),
                        (0x15, upmt_proto::wire::COOKIE_REPLY_LEN),
                    ];
                    let (first, min) = MIN[rng.below(MIN.len())];
                    let len = 1 + rng.below(min - 1);
                    rng.fill(&mut buf[..len]);
                    buf[0] = first;
                    len
                }
                Kind::Oversized => {
                    // Mostly just over a 1500-byte link's payload; now and then a jumbo and
                    // the largest UDP payload (many fragments each, so kept rare).
                    let len = match rng.below(256) {
                        0 => MAX_UDP,
                        n if n < 8 => 9000,
                        n if n < 128 => 1473,
                        _ => 3000,
                    };
                    // Random header bytes; the rest is whatever the reused buffer holds.
                    rng.fill(&mut buf[..64]);
                    buf[0] = 0x13;
                    buf[1] = 0;
                    buf[2] = 0;
                    buf[3] = 0;
                    len
                }
                Kind::Handshake => {
                    let init = &inits[rng.below(inits.len())];
                    buf[..init.len()].copy_from_slice(init);
                    init.len()
                }
                Kind::Badtag | Kind::Replay | Kind::Spoofed => match session.as_mut() {
                    Some(s) => s.craft(kind, buf, &args)?,
                    None => bail!("no session for {}", kind.name()),
                },
            };
            batch.commit(len);
        }
        let socket = if kind == Kind::Handshake && !handshake_sockets.is_empty() {
            source_turn = (source_turn + 1) % handshake_sockets.len();
            &handshake_sockets[source_turn]
        } else {
            &main_socket
        };
        let done = batch.send(socket)?;
        sent[k] += done as u64;
        total += done as u64;
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(total as f64 / args.rate as f64);
            let now = StdInstant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let per_kind: Vec<String> = kinds
        .iter()
        .zip(&sent)
        .map(|(k, n)| format!("\"{}\":{n}", k.name()))
        .collect();
    let primed = session.as_ref().map_or(0, |s| s.primed);
    println!(
        "{{\"sent\":{{{}}},\"total\":{total},\"primed\":{primed},\"seconds\":{secs:.3},\"rate\":{:.0},\"stopped_by\":\"{stop}\"}}",
        per_kind.join(","),
        total as f64 / secs.max(1e-9)
    );
    eprintln!(
        "upmt-flood: sent {total} datagrams in {secs:.2} s ({:.0}/s), stopped by {stop}",
        total as f64 / secs.max(1e-9)
    );
    for (k, n) in kinds.iter().zip(&sent) {
        eprintln!("  {:<10} {n}", k.name());
    }
    if primed > 0 {
        eprintln!("  (plus {primed} legitimate priming packets of the flood's own session)");
    }
    Ok(())
}

fn connect(local: SocketAddr, target: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind(local).with_context(|| format!("cannot bind {local}"))?;
    socket
        .connect(target)
        .with_context(|| format!("cannot connect to {target}"))?;
    Ok(socket)
}

/// A second legitimate peer's session, the source of authenticated hostile material.
struct Session {
    client: Client,
    clock: StdInstant,
    virtual_ipv4: Ipv4Addr,
    /// Copies of the priming packets, oldest first.
    recorded: Vec<Vec<u8>>,
    replay_turn: usize,
    primed: u64,
}

impl Session {
    fn establish(
        socket: &UdpSocket,
        key: StaticSecret,
        anchor: PublicKey,
        args: &Args,
        deadline: StdInstant,
    ) -> anyhow::Result<Session> {
        let clock = StdInstant::now();
        let now = |c: StdInstant| Instant::from_duration(c.elapsed());
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .context("clock before 1970")?;
        let mut client = Client::new(ClientConfig::new(key, anchor), now(clock), unix);
        client.handle_path_up(PathId(0), now(clock));
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .context("socket timeout")?;
        let mut buf = vec![0u8; 2048];
        let give_up = (StdInstant::now() + Duration::from_secs(10)).min(deadline);
        let params = loop {
            if let Some(p) = client.session() {
                break *p;
            }
            if StdInstant::now() >= give_up {
                bail!("the flood's own peer did not complete a handshake with the anchor");
            }
            client.handle_timeout(now(clock));
            while let Some(t) = client.poll_transmit(now(clock), &mut buf) {
                // A lost init is retried on the core's timer.
                let _ = socket.send(&buf[..t.len]);
            }
            if let Ok(n) = socket.recv(&mut buf) {
                let _ = client.handle_datagram(PathId(0), &mut buf[..n], now(clock));
            }
        };
        // Answers (ICMP from the anchor, probe acks) are of no interest from here on.
        socket.set_read_timeout(None).context("socket timeout")?;
        let mut session = Session {
            client,
            clock,
            virtual_ipv4: params.virtual_ipv4,
            recorded: Vec::with_capacity(PRIMING),
            replay_turn: 0,
            primed: 0,
        };
        for i in 0..PRIMING {
            let mut d = vec![0u8; HEADER_LEN + 64 + TAG_LEN];
            let len = session.seal(&mut d, session.virtual_ipv4, args.inner_dst)?;
            d.truncate(len);
            socket.send(&d).context("sending a priming packet")?;
            session.recorded.push(d);
            session.primed += 1;
            // Paced so the anchor's socket does not drop its own legitimate packets.
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(session)
    }

    /// Writes one authenticated datagram (a small UDP packet `src -> dst:9`) into `buf`.
    fn seal(&mut self, buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) -> anyhow::Result<usize> {
        let inner = udp_packet(src, dst, &mut buf[HEADER_LEN..HEADER_LEN + 64]);
        let now = Instant::from_duration(self.clock.elapsed());
        self.client
            .encapsulate(PathId(0), buf, inner, now)
            .map_err(|r| anyhow::anyhow!("encapsulating: {r}"))
    }

    fn craft(&mut self, kind: Kind, buf: &mut [u8], args: &Args) -> anyhow::Result<usize> {
        match kind {
            Kind::Badtag => {
                // Sealed fresh each time: a pool would fall behind the replay window as the
                // spoofed kind's authenticated packets move it, and read as replays.
                let len = self.seal(buf, self.virtual_ipv4, args.inner_dst)?;
                buf[len - 1] ^= 0x5a;
                Ok(len)
            }
            Kind::Spoofed => self.seal(buf, args.spoof_source, args.spoof_dst),
            _ => {
                // Alternate: one older than the window, one within it.
                self.replay_turn += 1;
                let n = self.recorded.len();
                // The first 128 priming packets are more than 128 counters older than the window.
                let old = n - PRIMING + (self.replay_turn / 2) % 128;
                let recent = n - 1 - (self.replay_turn / 2) % 4096;
                let d = &self.recorded[if self.replay_turn.is_multiple_of(2) {
                    old
                } else {
                    recent
                }];
                buf[..d.len()].copy_from_slice(d);
                Ok(d.len())
            }
        }
    }
}

/// Writes an IPv4/UDP packet `src -> dst:9` with a 20-byte payload; returns its length.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, out: &mut [u8]) -> usize {
    const LEN: usize = 20 + 8 + 20;
    let p = &mut out[..LEN];
    p.fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..22].copy_from_slice(&40_000u16.to_be_bytes());
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[24..26].copy_from_slice(&28u16.to_be_bytes());
    p[28..].copy_from_slice(b"upmt-flood priming..");
    LEN
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Up to [`BATCH`] datagrams in buffers allocated once, sent with one sendmmsg.
struct Batch {
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    n: usize,
}

impl Batch {
    fn new() -> Self {
        Batch {
            bufs: (0..BATCH).map(|_| vec![0u8; MAX_UDP]).collect(),
            lens: [0; BATCH],
            n: 0,
        }
    }

    fn clear(&mut self) {
        self.n = 0;
    }

    fn next_buf(&mut self) -> &mut [u8] {
        &mut self.bufs[self.n]
    }

    fn commit(&mut self, len: usize) {
        self.lens[self.n] = len;
        self.n += 1;
    }

    /// Sends the batch on a connected socket; returns how many datagrams went out.
    fn send(&mut self, socket: &UdpSocket) -> anyhow::Result<usize> {
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid value (no name, no control).
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((iov, buf), len) in iovs
            .iter_mut()
            .zip(&mut self.bufs)
            .zip(self.lens)
            .take(self.n)
        {
            *iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: len,
            };
        }
        for (msg, iov) in msgs.iter_mut().zip(iovs.iter_mut()).take(self.n) {
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        let mut done = 0;
        while done < self.n {
            // SAFETY: msgs[done..n] point at iovecs that point at live buffers of the given
            // lengths; the socket is connected so no address is needed.
            let r = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    msgs[done..].as_mut_ptr(),
                    (self.n - done) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    // The anchor's ICMP port-unreachable for a rejected datagram, or a full
                    // queue: that datagram is lost, like any other, and the flood goes on.
                    Some(libc::ECONNREFUSED) | Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                        continue;
                    }
                    _ => return Err(e).context("sendmmsg"),
                }
            }
            done += r as usize;
        }
        Ok(done)
    }
}

/// xorshift64*: fast, not cryptographic; the datagrams only need to look random to a parser.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_packets_are_valid_ipv4_with_a_correct_header_checksum() {
        let mut buf = [0u8; 64];
        let len = udp_packet(
            Ipv4Addr::new(10, 77, 0, 3),
            Ipv4Addr::new(10, 77, 0, 1),
            &mut buf,
        );
        assert_eq!(len, 48);
        assert_eq!(checksum(&buf[..20]), 0, "a valid header sums to zero");
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]) as usize, len);
    }
}
