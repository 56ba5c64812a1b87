//! Two anchors on virtual time: the host talks to the first; when it dies the host moves to
//! the second, takes the address that one gives it, and resets the TCP flows it had. The test
//! is the driver: it opens the sockets the host asks for, toward the endpoint of the anchor in
//! use, and each anchor core answers only what reaches it.

mod util;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use upmt_mh_core::anchors::AnchorConfig as Fallback;
use upmt_mh_core::api::{Request, Response};
use upmt_mh_core::candidates::{Change, Family, InterfaceFacts};
use upmt_mh_core::{HostConfig, MobileHost, Owner, RoutingIntent, Source, Uplinks};
use upmt_paft::{UplinkId, parse_packet, tcp_flags};
use upmt_policy::Policy;
use upmt_proto::anchor::{Anchor, AnchorConfig, PeerConfig};
use upmt_proto::client::ClientConfig;
use upmt_proto::keys::StaticSecret;
use upmt_proto::time::Instant;
use upmt_proto::{HEADER_LEN, PathId, TAG_LEN};

const DELAY: Duration = Duration::from_millis(15);
const FAILOVER_AFTER: Duration = Duration::from_secs(2);
const CH_V4: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
/// The virtual address each anchor gives the host.
const VIRTUAL: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 10, 0, 2)];

fn endpoint(anchor: usize) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(203, 0, 113, 2 + anchor as u8).into(), 51900)
}

/// The host's public address on uplink `i`.
fn local(i: usize) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(198, 51, 100, 1 + i as u8).into(), 40000)
}

struct Flight {
    at: Instant,
    /// `Some(anchor)`: toward that anchor; `None`: toward the host.
    anchor: Option<usize>,
    path: PathId,
    bytes: Vec<u8>,
}

struct Net {
    now: Instant,
    host: MobileHost,
    anchors: Vec<Anchor>,
    alive: [bool; 2],
    /// Per uplink: the anchor endpoint its socket is connected to.
    attached: Vec<Option<SocketAddr>>,
    inflight: Vec<Flight>,
    /// Inner packets each anchor received.
    anchor_rx: Vec<(usize, Vec<u8>)>,
    /// What the host wrote into its TUN (resets and the ACKs that ask for one).
    tun_writes: Vec<Vec<u8>>,
    connects: Vec<Ipv4Addr>,
    lookups: Vec<upmt_paft::FlowKey>,
}

fn uplink(i: usize) -> UplinkId {
    UplinkId::new(i as u8).expect("below MAX_UPLINKS")
}

fn up(name: &str) -> InterfaceFacts {
    InterfaceFacts {
        name: name.into(),
        up: true,
        global_v4: true,
        global_v6: false,
        default_v4: true,
        default_v6: false,
    }
}

impl Net {
    /// A host with two uplinks configured with both anchors; `alive` says which answer.
    fn new(alive: [bool; 2]) -> Net {
        Net::with_first(alive, vec![endpoint(0)])
    }

    /// [`Net::new`], the first anchor at `first` (its endpoint 0 answers if alive).
    fn with_first(alive: [bool; 2], first: Vec<SocketAddr>) -> Net {
        let mh = StaticSecret::generate().expect("key");
        let keys = [
            StaticSecret::generate().expect("key"),
            StaticSecret::generate().expect("key"),
        ];
        let now = Instant::ZERO;
        let names = ["wifi", "cell"];
        let mut host = MobileHost::new(
            HostConfig {
                client: ClientConfig::new(mh.clone(), keys[0].public_key()),
                client_seed: 1_700_000_000_000_000_000,
                anchor: endpoint(0),
                uplinks: Uplinks::new(names.iter().map(|n| n.to_string()).collect()).expect("two"),
                interfaces: vec!["wlan0".into(), "rmnet_data0".into()],
                policy: Policy::tunnel_everything(&names),
                policy_source: "(built-in)".into(),
            },
            now,
        );
        host.set_anchors(
            first,
            vec![Fallback {
                endpoints: vec![endpoint(1)],
                public_key: keys[1].public_key(),
            }],
            FAILOVER_AFTER,
            now,
        );
        let anchors = keys
            .into_iter()
            .zip(VIRTUAL)
            .map(|(key, virtual_ipv4)| {
                Anchor::new(
                    AnchorConfig::new(
                        key,
                        vec![PeerConfig {
                            name: "phone".into(),
                            public: mh.public_key(),
                            virtual_ipv4,
                            virtual_ipv6: None,
                        }],
                    ),
                    now,
                )
            })
            .collect();
        let mut net = Net {
            now,
            host,
            anchors,
            alive,
            attached: vec![None; 2],
            inflight: Vec::new(),
            anchor_rx: Vec::new(),
            tun_writes: Vec::new(),
            connects: Vec::new(),
            lookups: Vec::new(),
        };
        // As the driver does: the families of the anchor in use.
        let families = net
            .host
            .anchor_endpoints()
            .iter()
            .map(|e| if e.is_ipv4() { Family::V4 } else { Family::V6 })
            .collect();
        net.host
            .handle_interfaces(vec![up("wlan0"), up("rmnet_data0")], families, now);
        net.flush();
        net
    }

    fn flush(&mut self) {
        let mut buf = vec![0u8; 4096];
        loop {
            while let Some((id, change)) = self.host.poll_uplink_change() {
                let i = usize::from(id.get());
                match change {
                    Change::Attach(a) => {
                        let to = self
                            .host
                            .anchor_endpoints()
                            .iter()
                            .copied()
                            .find(|e| e.is_ipv4() == (a.family == Family::V4));
                        // The interfaces have IPv4 only: an IPv6 socket cannot be opened.
                        let to = to.filter(|_| a.family == Family::V4);
                        self.attached[i] = to;
                        if to.is_some() {
                            self.host
                                .handle_uplink_available(id, Some(local(i)), self.now);
                        } else {
                            self.host.handle_attach_failed(id, self.now);
                        }
                    }
                    Change::Detach => self.attached[i] = None,
                }
            }
            while let Some(t) = self.host.poll_transmit(self.now, &mut buf) {
                let i = usize::from(t.path.0);
                let Some(to) = self.attached[i] else { continue };
                let anchor = (0..2).find(|a| endpoint(*a) == to);
                if let Some(a) = anchor.filter(|a| self.alive[*a]) {
                    self.inflight.push(Flight {
                        at: self.now + DELAY,
                        anchor: Some(a),
                        path: t.path,
                        bytes: buf[..t.len].to_vec(),
                    });
                }
            }
            for a in 0..2 {
                while let Some(t) = self.anchors[a].poll_transmit(self.now, &mut buf) {
                    if !self.alive[a] {
                        continue;
                    }
                    let dst = t.dst.expect("anchor names a destination");
                    // Only a socket connected to this anchor gets its datagrams.
                    let path =
                        (0..2).find(|i| local(*i) == dst && self.attached[*i] == Some(endpoint(a)));
                    if let Some(i) = path {
                        self.inflight.push(Flight {
                            at: self.now + DELAY,
                            anchor: None,
                            path: PathId(i as u8),
                            bytes: buf[..t.len].to_vec(),
                        });
                    }
                }
                while self.anchors[a].poll_event().is_some() {}
            }
            while let Some(n) = self.host.poll_tun_write(&mut buf) {
                self.tun_writes.push(buf[..n].to_vec());
            }
            while let Some(key) = self.host.poll_lookup() {
                self.lookups.push(key);
            }
            while let Some(intent) = self.host.poll_routing() {
                if let RoutingIntent::Connect(p) = intent {
                    self.connects.push(p.virtual_ipv4);
                    self.host.handle_tun_ready("upmt0".into());
                }
            }
            while self.host.poll_event().is_some() {}
            if !self.host.has_output() {
                return;
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        for _ in 0..1_000_000 {
            let next = [
                self.host.poll_timeout(),
                self.inflight.iter().map(|f| f.at).min(),
                self.anchors[0].poll_timeout().map(|(t, _)| t),
                self.anchors[1].poll_timeout().map(|(t, _)| t),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|n| *n <= limit) else {
                self.now = limit;
                return;
            };
            self.now = self.now.max(next);
            for f in util::take_due(&mut self.inflight, self.now, |f| f.at) {
                let mut bytes = f.bytes;
                match f.anchor {
                    Some(a) => {
                        let from = local(usize::from(f.path.0));
                        if let Ok(Some((_, r))) =
                            self.anchors[a].handle_datagram(from, &mut bytes, self.now)
                        {
                            self.anchor_rx.push((a, bytes[r].to_vec()));
                        }
                    }
                    None => {
                        let _ = self.host.handle_datagram(f.path, &mut bytes, self.now);
                    }
                }
            }
            self.host.handle_timeout(self.now);
            for a in &mut self.anchors {
                if a.poll_timeout().is_some_and(|(t, _)| t <= self.now) {
                    a.handle_timeout(self.now);
                }
            }
            self.flush();
        }
        panic!("the simulation does not settle");
    }

    /// An app sends a TCP segment from `src:sport` with `flags`.
    fn app_sends(&mut self, src: Ipv4Addr, sport: u16, flags: u8) {
        let packet = tcp(src, sport, flags);
        let mut buf = vec![0u8; HEADER_LEN + packet.len() + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + packet.len()].copy_from_slice(&packet);
        if let Some(t) = self
            .host
            .handle_tun_packet(&mut buf, packet.len(), self.now)
        {
            let i = usize::from(t.path.0);
            let to = (0..2).find(|a| self.attached[i] == Some(endpoint(*a)));
            if let Some(a) = to.filter(|a| self.alive[*a]) {
                self.inflight.push(Flight {
                    at: self.now + DELAY,
                    anchor: Some(a),
                    path: t.path,
                    bytes: buf[..t.len].to_vec(),
                });
            }
        }
        self.flush();
    }

    /// A new flow of `app` from `src:sport`, through its owner lookup.
    fn start_flow(&mut self, src: Ipv4Addr, sport: u16) {
        self.app_sends(src, sport, tcp_flags::SYN);
        let key = *self.lookups.last().expect("a lookup for the new flow");
        let owner = Owner {
            name: Some(Arc::from("org.example.browser")),
            uid: Some(10_123),
            pid: Some(4000),
            source: Source::Process,
        };
        self.host.handle_owner(key, &owner, self.now);
        self.flush();
        self.run_for(Duration::from_millis(100));
    }

    fn received_by(&self, anchor: usize, sport: u16) -> usize {
        self.anchor_rx
            .iter()
            .filter(|(a, p)| *a == anchor && p.get(20..22) == Some(&sport.to_be_bytes()[..]))
            .count()
    }

    fn status(&mut self) -> upmt_mh_core::api::StatusReply {
        match self.host.answer(Request::Status, self.now) {
            Response::Status(s) => s,
            other => panic!("expected a status, got {other:?}"),
        }
    }
}

/// A TCP segment from `src:sport` to the correspondent's port 443.
fn tcp(src: Ipv4Addr, sport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&CH_V4.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&443u16.to_be_bytes());
    p[24..28].copy_from_slice(&1000u32.to_be_bytes());
    p[28..32].copy_from_slice(&5555u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p
}

#[test]
fn a_dead_anchor_is_left_for_the_next_whose_address_the_host_takes_and_its_tcp_flows_are_reset() {
    let mut net = Net::new([true, true]);
    net.run_for(Duration::from_secs(4));
    assert_eq!(net.connects, vec![VIRTUAL[0]], "connected to the first");
    net.start_flow(VIRTUAL[0], 5000);
    assert_eq!(net.received_by(0, 5000), 1);

    net.alive[0] = false;
    let killed = net.now;
    // Data keeps the session active, so the dead paths are seen within a path timeout.
    net.app_sends(VIRTUAL[0], 5000, tcp_flags::ACK);
    net.run_for(Duration::from_millis(1900));
    assert_eq!(net.host.anchors().index(), 0, "not before the wait is over");
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.host.anchors().index(), 1, "on the second anchor");
    let moved = net.host.anchors().since();
    assert!(
        moved - killed <= Duration::from_secs(1) + FAILOVER_AFTER,
        "left {:?} after the anchor died",
        moved - killed
    );
    assert_eq!(
        net.connects,
        vec![VIRTUAL[0], VIRTUAL[1]],
        "the second's address"
    );
    assert!(net.attached.iter().all(|a| *a == Some(endpoint(1))));

    // The app's end of the lost flow was asked for a segment, twice, from the peer.
    let asks: Vec<_> = net
        .tun_writes
        .iter()
        .map(|p| parse_packet(p).expect("a packet"))
        .collect();
    assert_eq!(asks.len(), 2, "{asks:?}");
    for m in &asks {
        assert_eq!(m.tcp_flags, tcp_flags::ACK);
        assert_eq!((m.key.dst, m.key.dport), (VIRTUAL[0].into(), 5000));
    }
    // ... and what it answers with is reset at once, never tunnelled.
    net.app_sends(VIRTUAL[0], 5000, tcp_flags::ACK);
    let reset = parse_packet(net.tun_writes.last().expect("a reset")).expect("a packet");
    assert_eq!(reset.tcp_flags, tcp_flags::RST);
    assert_eq!((reset.key.dst, reset.key.dport), (VIRTUAL[0].into(), 5000));
    assert_eq!(net.received_by(1, 5000), 0);

    // A new connection from the new address goes to the second anchor.
    net.run_for(Duration::from_secs(4));
    net.start_flow(VIRTUAL[1], 6000);
    assert_eq!(net.received_by(1, 6000), 1);

    let status = net.status();
    assert_eq!(status.session.anchor, endpoint(1));
    let active = status.session.active_anchor.expect("two anchors");
    assert_eq!((active.index, active.anchors), (1, 2));
    assert_eq!(active.failed_over_from, Some(endpoint(0)));
    assert_eq!(active.flows_reset, 1);
    let note = active.note.expect("a note");
    assert!(
        note.starts_with("failed over from 203.0.113.2:51900") && note.ends_with("1 flows reset"),
        "{note}"
    );
}

#[test]
fn a_first_anchor_that_never_answers_is_left_after_the_wait() {
    let mut net = Net::new([false, true]);
    net.run_for(FAILOVER_AFTER - Duration::from_millis(100));
    assert!(net.connects.is_empty());
    assert_eq!(net.host.anchors().index(), 0);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.host.anchors().index(), 1);
    assert_eq!(net.connects, vec![VIRTUAL[1]]);
}

#[test]
fn the_host_stays_on_the_second_anchor_when_the_first_comes_back() {
    let mut net = Net::new([false, true]);
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.host.anchors().index(), 1);
    net.alive[0] = true;
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.host.anchors().index(), 1);
    assert_eq!(net.connects, vec![VIRTUAL[1]], "no second session");
}

#[test]
fn when_every_anchor_is_silent_the_host_goes_round_them_in_order() {
    let mut net = Net::new([false, false]);
    net.run_for(FAILOVER_AFTER + Duration::from_millis(100));
    assert_eq!(net.host.anchors().index(), 1);
    net.run_for(FAILOVER_AFTER);
    assert_eq!(
        net.host.anchors().index(),
        0,
        "after the last, the first again"
    );
    net.alive[0] = true;
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.connects, vec![VIRTUAL[0]]);
    assert_eq!(net.host.anchors().index(), 0);
}

#[test]
fn losing_every_uplink_is_not_the_anchors_fault() {
    let mut net = Net::new([true, true]);
    net.run_for(Duration::from_secs(4));
    for i in 0..2 {
        net.host.handle_uplink_lost(uplink(i), net.now);
    }
    // The interfaces are gone too: nothing to attach to.
    net.host
        .handle_interfaces(Vec::new(), vec![Family::V4], net.now);
    net.flush();
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.host.anchors().index(), 0);
    assert_eq!(net.connects, vec![VIRTUAL[0]]);
}

#[test]
fn an_anchor_the_phones_networks_cannot_reach_by_its_family_is_left_too() {
    // IPv6 only, while both uplinks have IPv4 only: no socket toward it ever opens.
    let mut net = Net::with_first(
        [false, true],
        vec!["[2001:db8::2]:51900".parse().expect("addr")],
    );
    assert!(net.attached.iter().all(Option::is_none));
    net.run_for(FAILOVER_AFTER + Duration::from_secs(2));
    assert_eq!(net.host.anchors().index(), 1);
    assert_eq!(net.connects, vec![VIRTUAL[1]]);
}
