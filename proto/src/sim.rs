//! A tiny simulated network on virtual time: one client, one anchor, one link per path with its
//! own delay, and switches to blackhole a link, drop at random or capture what crosses it.
//! Modelled on quinn-proto's `tests/util.rs` `Pair`. Shared by the scenario tests
//! (`proto/tests/`) and the fuzz targets ([`crate::fuzzing`]), so both drive the cores the same
//! way. Not part of the API.
//!
//! Every delivery checks what the protocol promises whatever arrives: a refused datagram is
//! counted exactly once in the receiver's drops, an inner packet handed to the anchor's TUN
//! comes from the mobile host's own virtual address, one handed to the client's TUN is IP.

use crate::anchor::{self, Anchor, AnchorConfig, PeerConfig};
use crate::client::{self, Client, ClientConfig};
use crate::keys::StaticSecret;
use crate::time::Instant;
use crate::{DropReason, HEADER_LEN, PathId, PeerId, TAG_LEN, ip, wire};
use core::time::Duration;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The mobile host's virtual IPv4 address.
pub const MH_V4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
/// The mobile host's virtual IPv6 address.
pub const MH_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// A correspondent host.
pub const CH_V4: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
/// The unix time the client believes it started at, in nanoseconds.
pub const UNIX_START: u64 = 1_700_000_000_000_000_000;

/// One path between the client and the anchor.
pub struct Link {
    /// The path it carries.
    pub id: PathId,
    /// One-way delay, both ways.
    pub delay: Duration,
    /// Drops everything crossing it.
    pub blackholed: bool,
    /// Drops each datagram crossing the link (either way) with probability 1/n; 0 drops none.
    /// The draw comes from a fixed-seed generator, so a lossy-path scenario replays exactly.
    pub drop_one_in: u32,
    /// The state of that generator (xorshift64).
    pub rng: u64,
    /// The client's public (post-NAT) address on this link.
    pub addr: SocketAddr,
    /// A NAT on the link that forgets its binding after this long without an outbound
    /// datagram: the next one gets a new public port. `None`: the binding never expires.
    pub nat_timeout: Option<Duration>,
    /// When the last datagram went out through the NAT.
    pub nat_last_out: Option<Instant>,
    /// Bindings the NAT forgot so far.
    pub nat_rebinds: u32,
    /// The largest outer IP packet it carries (UDP payload plus 28 bytes of IPv4 and UDP
    /// headers, 48 over IPv6); larger datagrams are dropped silently, as by a router whose ICMP
    /// never arrives. `None`: any size.
    pub mtu: Option<u16>,
    /// The public address of the client's disposable NAT-test socket on this link (a new port
    /// per fresh socket); it shares the link's NAT timeout but not its binding.
    pub test_addr: SocketAddr,
    /// When the last datagram went out through the test socket's binding.
    pub test_last_out: Option<Instant>,
    /// Datagrams the anchor sent to the test socket after its binding expired (dropped).
    pub test_expired_drops: u32,
}

/// A datagram on its way.
pub struct InFlight {
    /// When it arrives.
    pub at: Instant,
    /// Toward the anchor (else toward the client).
    pub to_anchor: bool,
    /// The link it crosses.
    pub path: PathId,
    /// The datagram.
    pub bytes: Vec<u8>,
    /// From or to the path's disposable NAT-test socket (see [`Link::test_addr`]).
    pub test_socket: bool,
}

/// A client and an anchor joined by [`Link`]s.
pub struct Pair {
    /// Virtual time.
    pub now: Instant,
    /// The client's identity.
    pub mh_secret: StaticSecret,
    /// The anchor's identity.
    pub an_secret: StaticSecret,
    /// The mobile host's core.
    pub client: Client,
    /// The anchor's core.
    pub anchor: Anchor,
    /// One link per path, indexed by path id.
    pub links: Vec<Link>,
    /// Datagrams on their way.
    pub inflight: Vec<InFlight>,
    /// Inner packets the client handed to its TUN.
    pub client_rx: Vec<Vec<u8>>,
    /// Inner packets the anchor handed to its TUN.
    pub anchor_rx: Vec<(PeerId, Vec<u8>)>,
    /// Why the client refused datagrams.
    pub client_errs: Vec<DropReason>,
    /// Why the anchor refused datagrams.
    pub anchor_errs: Vec<DropReason>,
    /// The client's events.
    pub client_events: Vec<client::Event>,
    /// The anchor's events.
    pub anchor_events: Vec<anchor::Event>,
    /// Every datagram sent toward the anchor: (path, bytes), for replay tests.
    pub uplink_log: Vec<(PathId, Vec<u8>)>,
    /// Every datagram the anchor sent to a link: (path, bytes), for replay tests.
    pub downlink_log: Vec<(PathId, Vec<u8>)>,
    /// Downlink datagrams per path, counted on send.
    pub downlink_count: Vec<usize>,
    /// Anchor datagrams to addresses that are no link's (attackers, flood sources, old NAT
    /// mappings): (destination, path, bytes). They go nowhere.
    pub stray: Vec<(SocketAddr, PathId, Vec<u8>)>,
    /// Also check that the anchor sends data only to the address of a link on that link's
    /// path (true for a network where no link ever changes its address).
    pub data_only_to_links: bool,
    /// Datagrams for which this is true are lost on every link (e.g. every handshake init).
    pub drop_if: Option<fn(&[u8]) -> bool>,
}

/// The anchor's config for one peer, the client of the pair.
pub fn anchor_config(an_secret: &StaticSecret, mh_secret: &StaticSecret) -> AnchorConfig {
    AnchorConfig::new(
        an_secret.clone(),
        vec![PeerConfig {
            name: "phone".into(),
            public: mh_secret.public_key(),
            virtual_ipv4: MH_V4,
            virtual_ipv6: Some(MH_V6),
        }],
    )
}

/// The client's public address on link `i`.
pub fn link_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, i + 1], 40000 + u16::from(i)))
}

impl Pair {
    /// A pair with fresh keys and one link per delay; links are declared up at the client.
    pub fn new(delays_ms: &[u64], tweak: impl FnOnce(&mut ClientConfig)) -> Self {
        let mh_secret = StaticSecret::generate().expect("os random generator");
        let an_secret = StaticSecret::generate().expect("os random generator");
        Self::with_secrets(mh_secret, an_secret, delays_ms, tweak)
    }

    /// A pair with fresh keys whose anchor config is tweaked too.
    pub fn with_anchor(
        delays_ms: &[u64],
        tweak: impl FnOnce(&mut ClientConfig),
        tweak_anchor: impl FnOnce(&mut AnchorConfig),
    ) -> Self {
        let mh_secret = StaticSecret::generate().expect("os random generator");
        let an_secret = StaticSecret::generate().expect("os random generator");
        Self::build(mh_secret, an_secret, delays_ms, tweak, tweak_anchor)
    }

    /// A pair with the given keys (reproducible runs), starting at [`Instant::ZERO`].
    pub fn with_secrets(
        mh_secret: StaticSecret,
        an_secret: StaticSecret,
        delays_ms: &[u64],
        tweak: impl FnOnce(&mut ClientConfig),
    ) -> Self {
        Self::build(mh_secret, an_secret, delays_ms, tweak, |_| {})
    }

    fn build(
        mh_secret: StaticSecret,
        an_secret: StaticSecret,
        delays_ms: &[u64],
        tweak: impl FnOnce(&mut ClientConfig),
        tweak_anchor: impl FnOnce(&mut AnchorConfig),
    ) -> Self {
        let mut cc = ClientConfig::new(mh_secret.clone(), an_secret.public_key());
        tweak(&mut cc);
        let now = Instant::ZERO;
        let client = Client::new(cc, now, UNIX_START);
        let mut ac = anchor_config(&an_secret, &mh_secret);
        tweak_anchor(&mut ac);
        let anchor = Anchor::new(ac, now);
        let links = delays_ms
            .iter()
            .enumerate()
            .map(|(i, d)| Link {
                id: PathId(i as u8),
                delay: Duration::from_millis(*d),
                blackholed: false,
                drop_one_in: 0,
                rng: 0x9e37_79b9_7f4a_7c15 ^ i as u64,
                addr: link_addr(i as u8),
                nat_timeout: None,
                nat_last_out: None,
                nat_rebinds: 0,
                mtu: None,
                test_addr: SocketAddr::from(([198, 51, 100, i as u8 + 1], 50000)),
                test_last_out: None,
                test_expired_drops: 0,
            })
            .collect::<Vec<_>>();
        let n = links.len();
        let mut pair = Pair {
            now,
            mh_secret,
            an_secret,
            client,
            anchor,
            links,
            inflight: Vec::new(),
            client_rx: Vec::new(),
            anchor_rx: Vec::new(),
            client_errs: Vec::new(),
            anchor_errs: Vec::new(),
            client_events: Vec::new(),
            anchor_events: Vec::new(),
            uplink_log: Vec::new(),
            downlink_log: Vec::new(),
            downlink_count: vec![0; n],
            stray: Vec::new(),
            data_only_to_links: false,
            drop_if: None,
        };
        for i in 0..n {
            let id = pair.links[i].id;
            pair.client.handle_path_up(id, now);
        }
        pair.flush();
        pair
    }

    fn link(&self, path: PathId) -> &Link {
        &self.links[path.0 as usize]
    }

    /// Drains both cores' transmits and events.
    pub fn flush(&mut self) {
        let mut buf = [0u8; 2048];
        while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
            assert!(t.dst.is_none());
            let bytes = buf[..t.len].to_vec();
            self.uplink_log.push((t.path, bytes.clone()));
            self.send(true, t.path, bytes);
        }
        while let Some(t) = self.client.poll_mtu_probe(self.now, &mut buf) {
            let bytes = buf[..t.len].to_vec();
            self.uplink_log.push((t.path, bytes.clone()));
            self.send(true, t.path, bytes);
        }
        while let Some(t) = self.client.poll_nat_transmit(self.now, &mut buf) {
            let link = &mut self.links[t.path.0 as usize];
            let expired = link
                .test_last_out
                .zip(link.nat_timeout)
                .is_some_and(|(last, timeout)| self.now.saturating_duration_since(last) > timeout);
            if t.fresh || expired {
                link.test_addr
                    .set_port(link.test_addr.port().wrapping_add(1));
            }
            link.test_last_out = Some(self.now);
            let bytes = buf[..t.len].to_vec();
            self.send_test(true, t.path, bytes);
        }
        while let Some(t) = self.anchor.poll_transmit(self.now, &mut buf) {
            let dst = t.dst.expect("anchor transmits name a destination");
            if self.data_only_to_links && buf[0] == wire::Kind::Data.first_byte() {
                assert_eq!(
                    dst,
                    self.link(t.path).addr,
                    "data sent to an unvalidated address"
                );
            }
            if let Some(link) = self.links.iter().find(|l| l.test_addr == dst) {
                assert_eq!(link.id, t.path, "anchor answers a test socket on its path");
                let (id, bytes) = (link.id, buf[..t.len].to_vec());
                self.send_test(false, id, bytes);
                continue;
            }
            let Some(link) = self.links.iter().find(|l| l.addr == dst) else {
                self.stray.push((dst, t.path, buf[..t.len].to_vec()));
                continue;
            };
            assert_eq!(link.id, t.path, "anchor sends on the path of the address");
            let (id, bytes) = (link.id, buf[..t.len].to_vec());
            self.downlink_count[id.0 as usize] += 1;
            self.downlink_log.push((id, bytes.clone()));
            self.send(false, id, bytes);
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
        while let Some(e) = self.anchor.poll_event() {
            self.anchor_events.push(e);
        }
    }

    /// Puts a datagram on `path`'s link, unless the link loses it.
    pub fn send(&mut self, to_anchor: bool, path: PathId, bytes: Vec<u8>) {
        if self.drop_if.is_some_and(|f| f(&bytes)) {
            return;
        }
        let link = &mut self.links[path.0 as usize];
        link.rng ^= link.rng << 13;
        link.rng ^= link.rng >> 7;
        link.rng ^= link.rng << 17;
        let lost = link.drop_one_in > 0 && link.rng.is_multiple_of(u64::from(link.drop_one_in));
        let headers = if link.addr.is_ipv4() { 28 } else { 48 };
        let too_big = link
            .mtu
            .is_some_and(|m| bytes.len() + headers > usize::from(m));
        if link.blackholed || lost || too_big {
            return;
        }
        if to_anchor {
            if let (Some(timeout), Some(last)) = (link.nat_timeout, link.nat_last_out)
                && self.now.saturating_duration_since(last) > timeout
            {
                link.addr.set_port(link.addr.port().wrapping_add(1000));
                link.nat_rebinds += 1;
            }
            link.nat_last_out = Some(self.now);
        }
        let at = self.now + link.delay;
        self.inflight.push(InFlight {
            at,
            to_anchor,
            path,
            bytes,
            test_socket: false,
        });
    }

    /// Puts a datagram from or to `path`'s disposable test socket on the link (lost like any
    /// other; its binding is checked on arrival).
    fn send_test(&mut self, to_anchor: bool, path: PathId, bytes: Vec<u8>) {
        let link = &self.links[path.0 as usize];
        if link.blackholed {
            return;
        }
        self.inflight.push(InFlight {
            at: self.now + link.delay,
            to_anchor,
            path,
            bytes,
            test_socket: true,
        });
    }

    /// Hands one datagram of a test socket to its receiver now; toward the client only while
    /// the test socket's NAT binding lasts.
    fn deliver_test(&mut self, to_anchor: bool, path: PathId, mut bytes: Vec<u8>) {
        let link = &mut self.links[path.0 as usize];
        if to_anchor {
            let from = link.test_addr;
            self.deliver_from(from, bytes);
            return;
        }
        let alive = match (link.nat_timeout, link.test_last_out) {
            (Some(timeout), Some(last)) => self.now.saturating_duration_since(last) <= timeout,
            _ => true,
        };
        if !alive {
            link.test_expired_drops += 1;
            return;
        }
        let before = self.client.drops().total();
        if let Err(e) = self.client.handle_nat_datagram(path, &mut bytes, self.now) {
            assert_eq!(self.client.drops().total(), before + 1, "drop not counted");
            self.client_errs.push(e);
        }
    }

    /// Hands one datagram to its receiver now.
    pub fn deliver(&mut self, to_anchor: bool, path: PathId, bytes: Vec<u8>) {
        if to_anchor {
            let from = self.link(path).addr;
            self.deliver_from(from, bytes);
        } else {
            self.deliver_to_client(path, bytes);
        }
    }

    /// Hands one datagram to the anchor now, as if sent from `from`.
    pub fn deliver_from(&mut self, from: SocketAddr, mut bytes: Vec<u8>) {
        let before = self.anchor.drops().total();
        match self.anchor.handle_datagram(from, &mut bytes, self.now) {
            Ok(Some((peer, r))) => {
                let info = ip::parse(&bytes[r.clone()]).expect("delivered packets are ip");
                let own = info.src == IpAddr::V4(MH_V4) || info.src == IpAddr::V6(MH_V6);
                assert!(own, "foreign inner source delivered: {}", info.src);
                self.anchor_rx.push((peer, bytes[r].to_vec()));
            }
            Ok(None) => {}
            Err(e) => {
                assert_eq!(self.anchor.drops().total(), before + 1, "drop not counted");
                self.anchor_errs.push(e);
            }
        }
    }

    fn deliver_to_client(&mut self, path: PathId, mut bytes: Vec<u8>) {
        let before = self.client.drops().total();
        match self.client.handle_datagram(path, &mut bytes, self.now) {
            Ok(Some(r)) => {
                let first = bytes.get(r.start).copied().unwrap_or(0);
                assert!(matches!(first >> 4, 4 | 6), "non-ip delivered to the tun");
                self.client_rx.push(bytes[r].to_vec());
            }
            Ok(None) => {}
            Err(e) => {
                assert_eq!(self.client.drops().total(), before + 1, "drop not counted");
                self.client_errs.push(e);
            }
        }
    }

    /// Advances to the next delivery or timer, but not past `limit`.
    fn step(&mut self, limit: Instant) -> bool {
        let mut next = self.inflight.iter().map(|f| f.at).min();
        for t in [
            self.client.poll_timeout().map(|t| t.0),
            self.anchor.poll_timeout().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        }
        let Some(next) = next.filter(|n| *n <= limit) else {
            self.now = limit;
            return false;
        };
        self.now = self.now.max(next);
        self.inflight.sort_by_key(|f| f.at);
        let due = self
            .inflight
            .iter()
            .take_while(|f| f.at <= self.now)
            .count();
        let batch: Vec<InFlight> = self.inflight.drain(..due).collect();
        for f in batch {
            if f.test_socket {
                self.deliver_test(f.to_anchor, f.path, f.bytes);
            } else {
                self.deliver(f.to_anchor, f.path, f.bytes);
            }
        }
        self.run_due_timers();
        self.flush();
        true
    }

    /// Runs each core's timers if one is due now (without delivering anything).
    pub fn run_due_timers(&mut self) {
        if self
            .client
            .poll_timeout()
            .is_some_and(|(t, _)| t <= self.now)
        {
            self.client.handle_timeout(self.now);
        }
        if self
            .anchor
            .poll_timeout()
            .is_some_and(|(t, _)| t <= self.now)
        {
            self.anchor.handle_timeout(self.now);
        }
    }

    /// Runs the network for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        let mut guard = 0u32;
        while self.step(limit) {
            guard += 1;
            assert!(guard < 1_000_000, "simulation does not settle");
        }
    }

    /// Makes link `link`'s NAT forget bindings after `timeout`, runs until it has forgotten one
    /// (panics when none is lost within `limit`), then for the round trip of the anchor's
    /// challenge that follows.
    pub fn shorten_nat_until_a_binding_is_lost(
        &mut self,
        link: usize,
        timeout: Duration,
        limit: Duration,
    ) {
        self.links[link].nat_timeout = Some(timeout);
        let rebinds = self.links[link].nat_rebinds;
        let changed = self.now;
        while self.links[link].nat_rebinds == rebinds {
            self.run_for(Duration::from_secs(1));
            assert!(self.now - changed < limit, "no binding lost");
        }
        self.run_for(Duration::from_millis(100));
    }

    /// Sends `n` packets each way (the client's on `path`), one of each every 100 ms, then runs
    /// 1 s more so the last ones arrive. Returns `n`, the count each side should have received.
    pub fn exchange_each_way(&mut self, path: PathId, n: u32) -> u32 {
        for tag in 0..n {
            self.client_send(path, &up(5000, tag)).unwrap();
            self.anchor_send(&down(5000, tag)).unwrap();
            self.run_for(Duration::from_millis(100));
        }
        self.run_for(Duration::from_secs(1));
        n
    }

    /// How many times the client's keys were renewed so far.
    pub fn client_rekeys(&self) -> usize {
        self.client_events
            .iter()
            .filter(|e| **e == client::Event::Rekeyed)
            .count()
    }

    /// Whether the client has a session.
    pub fn connected(&self) -> bool {
        self.client.session().is_some()
    }

    /// Encapsulates `inner` at the client on `path` and puts it on the link.
    pub fn client_send(&mut self, path: PathId, inner: &[u8]) -> Result<(), DropReason> {
        let mut buf = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        let n = self
            .client
            .encapsulate(path, &mut buf, inner.len(), self.now)?;
        buf.truncate(n);
        self.uplink_log.push((path, buf.clone()));
        self.send(true, path, buf);
        Ok(())
    }

    /// Encapsulates `inner` at the client for a redundant flow: a copy on each of `paths`.
    /// Returns how many datagrams went out.
    pub fn client_send_redundant(
        &mut self,
        paths: [PathId; 2],
        inner: &[u8],
    ) -> Result<usize, DropReason> {
        let mut buf = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
        let mut copy = buf.clone();
        buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        let (n, m) =
            self.client
                .encapsulate_redundant(paths, &mut buf, inner.len(), &mut copy, self.now)?;
        buf.truncate(n);
        self.uplink_log.push((paths[0], buf.clone()));
        self.send(true, paths[0], buf);
        let Some(m) = m else { return Ok(1) };
        copy.truncate(m);
        self.uplink_log.push((paths[1], copy.clone()));
        self.send(true, paths[1], copy);
        Ok(2)
    }

    /// Encapsulates `inner` at the anchor and puts it on the chosen link (and, for a redundant
    /// flow, its copy on the other one). Returns the chosen path.
    pub fn anchor_send(&mut self, inner: &[u8]) -> Result<PathId, DropReason> {
        let mut buf = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
        let mut copy = buf.clone();
        buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        let (t, c) =
            self.anchor
                .encapsulate_with_copy(&mut buf, inner.len(), &mut copy, self.now)?;
        self.anchor_put(t, buf);
        if let Some(c) = c {
            self.anchor_put(c, copy);
        }
        Ok(t.path)
    }

    fn anchor_put(&mut self, t: crate::Transmit, mut buf: Vec<u8>) {
        buf.truncate(t.len);
        let dst = t.dst.expect("anchor names a destination");
        assert_eq!(
            self.link(t.path).addr,
            dst,
            "downlink to an unvalidated address"
        );
        self.downlink_count[t.path.0 as usize] += 1;
        self.downlink_log.push((t.path, buf.clone()));
        self.send(false, t.path, buf);
    }
}

/// An IPv4 UDP packet with a payload tag, so tests can tell packets apart.
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    let total = 20 + 8 + 4;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&12u16.to_be_bytes());
    p[28..32].copy_from_slice(&tag.to_be_bytes());
    p
}

/// Uplink packet from the mobile host's virtual address.
pub fn up(sport: u16, tag: u32) -> Vec<u8> {
    udp4(MH_V4, CH_V4, sport, 443, tag)
}

/// Downlink packet to the mobile host's virtual address.
pub fn down(dport: u16, tag: u32) -> Vec<u8> {
    udp4(CH_V4, MH_V4, 443, dport, tag)
}
