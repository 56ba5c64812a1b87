//! A tiny simulated network on virtual time: one client, one anchor, one link per path with its
//! own delay, and switches to blackhole a link or capture what crosses it. Modelled on
//! quinn-proto's `tests/util.rs` `Pair`.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use upmt_proto::anchor::{self, Anchor, AnchorConfig, PeerConfig};
use upmt_proto::client::{self, Client, ClientConfig};
use upmt_proto::keys::StaticSecret;
use upmt_proto::time::Instant;
use upmt_proto::{DropReason, HEADER_LEN, PathId, PeerId, TAG_LEN};

pub const MH_V4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
pub const CH_V4: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
pub const UNIX_START: u64 = 1_700_000_000_000_000_000;

pub struct Link {
    pub id: PathId,
    pub delay: Duration,
    pub blackholed: bool,
    /// Drops each datagram crossing the link (either way) with probability 1/n; 0 drops none.
    /// The draw comes from a fixed-seed generator, so a lossy-path scenario replays exactly.
    pub drop_one_in: u32,
    /// The state of that generator (xorshift64).
    pub rng: u64,
    /// The client's public (post-NAT) address on this link.
    pub addr: SocketAddr,
}

pub struct InFlight {
    pub at: Instant,
    pub to_anchor: bool,
    pub path: PathId,
    pub bytes: Vec<u8>,
}

pub struct Pair {
    pub now: Instant,
    pub mh_secret: StaticSecret,
    pub an_secret: StaticSecret,
    pub client: Client,
    pub anchor: Anchor,
    pub links: Vec<Link>,
    pub inflight: Vec<InFlight>,
    /// Inner packets the client handed to its TUN.
    pub client_rx: Vec<Vec<u8>>,
    /// Inner packets the anchor handed to its TUN.
    pub anchor_rx: Vec<(PeerId, Vec<u8>)>,
    pub client_errs: Vec<DropReason>,
    pub anchor_errs: Vec<DropReason>,
    pub client_events: Vec<client::Event>,
    pub anchor_events: Vec<anchor::Event>,
    /// Every datagram sent toward the anchor: (path, bytes), for replay tests.
    pub uplink_log: Vec<(PathId, Vec<u8>)>,
    /// Downlink datagrams per path, counted on send.
    pub downlink_count: Vec<usize>,
    /// Anchor datagrams to addresses that are no link's (attackers, flood sources, old NAT
    /// mappings): (destination, path, bytes). They go nowhere.
    pub stray: Vec<(SocketAddr, PathId, Vec<u8>)>,
}

pub fn anchor_config(an_secret: &StaticSecret, mh_secret: &StaticSecret) -> AnchorConfig {
    AnchorConfig::new(
        an_secret.clone(),
        vec![PeerConfig {
            name: "phone".into(),
            public: mh_secret.public_key(),
            virtual_ipv4: MH_V4,
            virtual_ipv6: Some("fd00::2".parse().unwrap()),
        }],
    )
}

impl Pair {
    /// A pair with one link per delay; links are declared up at the client.
    pub fn new(delays_ms: &[u64], tweak: impl FnOnce(&mut ClientConfig)) -> Self {
        let mh_secret = StaticSecret::generate().unwrap();
        let an_secret = StaticSecret::generate().unwrap();
        let mut cc = ClientConfig::new(mh_secret.clone(), an_secret.public_key());
        tweak(&mut cc);
        let now = Instant::ZERO;
        let client = Client::new(cc, now, UNIX_START);
        let anchor = Anchor::new(anchor_config(&an_secret, &mh_secret), now);
        let links = delays_ms
            .iter()
            .enumerate()
            .map(|(i, d)| Link {
                id: PathId(i as u8),
                delay: Duration::from_millis(*d),
                blackholed: false,
                drop_one_in: 0,
                rng: 0x9e37_79b9_7f4a_7c15 ^ i as u64,
                addr: format!("198.51.100.{}:{}", i + 1, 40000 + i)
                    .parse()
                    .unwrap(),
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
            downlink_count: vec![0; n],
            stray: Vec::new(),
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
        while let Some(t) = self.anchor.poll_transmit(self.now, &mut buf) {
            let dst = t.dst.expect("anchor transmits name a destination");
            let Some(link) = self.links.iter().find(|l| l.addr == dst) else {
                self.stray.push((dst, t.path, buf[..t.len].to_vec()));
                continue;
            };
            assert_eq!(link.id, t.path, "anchor sends on the path of the address");
            let (id, bytes) = (link.id, buf[..t.len].to_vec());
            self.downlink_count[id.0 as usize] += 1;
            self.send(false, id, bytes);
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
        while let Some(e) = self.anchor.poll_event() {
            self.anchor_events.push(e);
        }
    }

    pub fn send(&mut self, to_anchor: bool, path: PathId, bytes: Vec<u8>) {
        let link = &mut self.links[path.0 as usize];
        link.rng ^= link.rng << 13;
        link.rng ^= link.rng >> 7;
        link.rng ^= link.rng << 17;
        let lost = link.drop_one_in > 0 && link.rng.is_multiple_of(u64::from(link.drop_one_in));
        if link.blackholed || lost {
            return;
        }
        let at = self.now + link.delay;
        self.inflight.push(InFlight {
            at,
            to_anchor,
            path,
            bytes,
        });
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
        match self.anchor.handle_datagram(from, &mut bytes, self.now) {
            Ok(Some((peer, r))) => self.anchor_rx.push((peer, bytes[r].to_vec())),
            Ok(None) => {}
            Err(e) => self.anchor_errs.push(e),
        }
    }

    fn deliver_to_client(&mut self, path: PathId, mut bytes: Vec<u8>) {
        match self.client.handle_datagram(path, &mut bytes, self.now) {
            Ok(Some(r)) => self.client_rx.push(bytes[r].to_vec()),
            Ok(None) => {}
            Err(e) => self.client_errs.push(e),
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
            self.deliver(f.to_anchor, f.path, f.bytes);
        }
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
        self.flush();
        true
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

    /// Encapsulates `inner` at the anchor and puts it on the chosen link.
    pub fn anchor_send(&mut self, inner: &[u8]) -> Result<PathId, DropReason> {
        let mut buf = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        let t = self.anchor.encapsulate(&mut buf, inner.len(), self.now)?;
        buf.truncate(t.len);
        let dst = t.dst.expect("anchor names a destination");
        assert_eq!(self.link(t.path).addr, dst);
        self.downlink_count[t.path.0 as usize] += 1;
        self.send(false, t.path, buf);
        Ok(t.path)
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
