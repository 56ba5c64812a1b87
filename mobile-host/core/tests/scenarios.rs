//! The mobile host's decisions on a simulated network with virtual time: a [`MobileHost`] and a
//! real anchor core, one link per uplink, no namespaces and no sockets. Each scenario runs in
//! milliseconds what the namespace lab needs seconds for.

mod util;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use upmt_mh_core::api::{Event, MoveReason, Request, Response};
use upmt_mh_core::{HostConfig, MobileHost, Owner, RoutingIntent, Source, Uplinks};
use upmt_paft::{FlowKey, UplinkId};
use upmt_policy::Policy;
use upmt_proto::anchor::{self, Anchor, AnchorConfig, PeerConfig};
use upmt_proto::client::ClientConfig;
use upmt_proto::keys::StaticSecret;
use upmt_proto::time::Instant;
use upmt_proto::{HEADER_LEN, PathId, TAG_LEN};

const MH_V4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const CH_V4: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const WIFI: usize = 0;
const CELL: usize = 1;

/// Video on wifi, the store on cell, uid 4242 bypassed, the rest on wifi.
const POLICY: &str = include_str!("fixtures/two-apps-policy.toml");

struct Link {
    delay: Duration,
    /// The host's public address on this link, as the anchor sees it.
    addr: SocketAddr,
}

struct Flight {
    at: Instant,
    to_anchor: bool,
    path: PathId,
    bytes: Vec<u8>,
}

/// The host, the anchor and the links between them.
struct Net {
    now: Instant,
    host: MobileHost,
    anchor: Anchor,
    links: Vec<Link>,
    inflight: Vec<Flight>,
    /// Inner packets the anchor received, with the uplink they came on.
    anchor_rx: Vec<(usize, Vec<u8>)>,
    anchor_events: Vec<anchor::Event>,
    /// TCP resets the host wrote into its TUN.
    resets: Vec<Vec<u8>>,
    lookups: Vec<FlowKey>,
    routing: Vec<RoutingIntent>,
    events: Vec<Event>,
}

impl Net {
    /// A host with wifi and cell (both with a socket), handshaken and with its TUN up.
    fn connected() -> Net {
        Net::with_policy(POLICY)
    }

    /// [`Net::connected`] with another policy.
    fn with_policy(text: &str) -> Net {
        let mh = StaticSecret::generate().expect("key");
        let an = StaticSecret::generate().expect("key");
        let now = Instant::ZERO;
        let policy = Policy::parse(text, "policy.toml", &["wifi", "cell"]).expect("policy");
        let host = MobileHost::new(
            HostConfig {
                client: ClientConfig::new(mh.clone(), an.public_key()),
                client_seed: 1_700_000_000_000_000_000,
                anchor: "192.0.2.1:51900".parse().expect("addr"),
                uplinks: Uplinks::new(vec!["wifi".into(), "cell".into()]).expect("two"),
                interfaces: vec!["wlan0".into(), "rmnet_data0".into()],
                policy,
                policy_source: "policy.toml".into(),
            },
            now,
        );
        let anchor = Anchor::new(
            AnchorConfig::new(
                an,
                vec![PeerConfig {
                    name: "phone".into(),
                    public: mh.public_key(),
                    virtual_ipv4: MH_V4,
                    virtual_ipv6: None,
                }],
            ),
            now,
        );
        let links = (0..2)
            .map(|i| Link {
                delay: Duration::from_millis(10 + 20 * i as u64),
                addr: format!("198.51.100.{}:4000{i}", i + 1)
                    .parse()
                    .expect("addr"),
            })
            .collect();
        let mut net = Net {
            now,
            host,
            anchor,
            links,
            inflight: Vec::new(),
            anchor_rx: Vec::new(),
            anchor_events: Vec::new(),
            resets: Vec::new(),
            lookups: Vec::new(),
            routing: Vec::new(),
            events: Vec::new(),
        };
        for i in [WIFI, CELL] {
            let local = net.links[i].addr;
            net.host
                .handle_uplink_available(uplink(i), Some(local), now);
        }
        net.flush();
        // Past the hold-down, so both uplinks count as usable.
        net.run_for(Duration::from_secs(4));
        assert!(net.host.client().session().is_some(), "handshake");
        assert!(net.usable(WIFI) && net.usable(CELL));
        net
    }

    fn usable(&mut self, i: usize) -> bool {
        self.host.handle_timeout(self.now);
        self.host.statuses()[i].up
    }

    /// Drains every output of both sides.
    fn flush(&mut self) {
        let mut buf = vec![0u8; 4096];
        loop {
            while let Some(t) = self.host.poll_transmit(self.now, &mut buf) {
                let bytes = buf[..t.len].to_vec();
                self.send(true, t.path, bytes);
            }
            while let Some(t) = self.anchor.poll_transmit(self.now, &mut buf) {
                let dst = t.dst.expect("anchor names a destination");
                if let Some(i) = self.links.iter().position(|l| l.addr == dst) {
                    let bytes = buf[..t.len].to_vec();
                    self.send(false, PathId(i as u8), bytes);
                }
            }
            while let Some(n) = self.host.poll_tun_write(&mut buf) {
                self.resets.push(buf[..n].to_vec());
            }
            while let Some(key) = self.host.poll_lookup() {
                self.lookups.push(key);
            }
            while let Some(intent) = self.host.poll_routing() {
                if matches!(intent, RoutingIntent::Connect(_)) {
                    self.host.handle_tun_ready("upmt0".into());
                }
                self.routing.push(intent);
            }
            while let Some(e) = self.host.poll_event() {
                self.events.push(e);
            }
            while let Some(e) = self.anchor.poll_event() {
                self.anchor_events.push(e);
            }
            if !self.host.has_output() {
                return;
            }
        }
    }

    fn send(&mut self, to_anchor: bool, path: PathId, bytes: Vec<u8>) {
        let at = self.now + self.links[usize::from(path.0)].delay;
        self.inflight.push(Flight {
            at,
            to_anchor,
            path,
            bytes,
        });
    }

    fn deliver(&mut self, f: Flight) {
        let mut bytes = f.bytes;
        if f.to_anchor {
            let from = self.links[usize::from(f.path.0)].addr;
            if let Ok(Some((_, r))) = self.anchor.handle_datagram(from, &mut bytes, self.now) {
                self.anchor_rx
                    .push((usize::from(f.path.0), bytes[r].to_vec()));
            }
        } else {
            let _ = self.host.handle_datagram(f.path, &mut bytes, self.now);
        }
    }

    /// Runs the network for `d` of virtual time.
    fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        for _ in 0..1_000_000 {
            let arrivals = self.inflight.iter().map(|f| f.at);
            let Some(next) = util::next_wake(&self.host, &self.anchor, arrivals) else {
                self.now = limit;
                return;
            };
            if next > limit {
                self.now = limit;
                return;
            }
            self.now = self.now.max(next);
            for f in util::take_due(&mut self.inflight, self.now, |f| f.at) {
                self.deliver(f);
            }
            util::run_timers(&mut self.host, &mut self.anchor, self.now);
            self.flush();
        }
        panic!("the simulation does not settle");
    }

    /// An app sends `packet` into the TUN.
    fn app_sends(&mut self, packet: &[u8]) {
        let mut buf = vec![0u8; HEADER_LEN + packet.len() + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + packet.len()].copy_from_slice(packet);
        if let Some(t) = self
            .host
            .handle_tun_packet(&mut buf, packet.len(), self.now)
        {
            let bytes = buf[..t.len].to_vec();
            self.send(true, t.path, bytes);
        }
        if let Some((path, copy)) = self.host.take_copy() {
            let copy = copy.to_vec();
            self.send(true, path, copy);
        }
        self.flush();
    }

    /// The lookup answers: `key` belongs to `app`.
    fn owner_is(&mut self, key: FlowKey, app: &str) {
        let owner = Owner {
            name: Some(Arc::from(app)),
            uid: Some(10_123),
            pid: Some(4000),
            source: Source::Process,
        };
        self.host.handle_owner(key, &owner, self.now);
        self.flush();
    }

    /// Starts a flow of `app` from `sport` and lets its first packet through the lookup.
    fn start_flow(&mut self, app: &str, sport: u16) -> FlowKey {
        self.app_sends(&tcp(sport, 0x02));
        let key = *self.lookups.last().expect("a lookup for the new flow");
        self.owner_is(key, app);
        self.run_for(Duration::from_millis(100));
        key
    }

    /// Which uplink the anchor last received a packet of `sport` on.
    fn arrived_on(&self, sport: u16) -> Option<usize> {
        self.anchor_rx
            .iter()
            .rev()
            .find(|(_, p)| p.get(20..22) == Some(&sport.to_be_bytes()[..]))
            .map(|(i, _)| *i)
    }

    fn flow_id(&self, key: &FlowKey) -> u64 {
        self.host
            .flows()
            .paft()
            .lookup(key)
            .expect("live flow")
            .id()
            .0
    }
}

fn uplink(i: usize) -> UplinkId {
    UplinkId::new(i as u8).expect("below MAX_UPLINKS")
}

/// A TCP segment from the host's virtual address with `flags` (0x02 SYN, 0x10 ACK).
fn tcp(sport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&MH_V4.octets());
    p[16..20].copy_from_slice(&CH_V4.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&443u16.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p
}

#[test]
fn a_new_flow_waits_for_its_owner_then_leaves_on_the_uplink_its_policy_names() {
    let mut net = Net::connected();
    net.app_sends(&tcp(5000, 0x02));
    net.app_sends(&tcp(5000, 0x10));
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.lookups.len(), 1, "one lookup per new flow");
    assert_eq!(
        net.arrived_on(5000),
        None,
        "nothing leaves before the owner is known"
    );
    let key = net.lookups[0];
    net.owner_is(key, "com.example.store");
    net.run_for(Duration::from_millis(100));
    let store: Vec<_> = net
        .anchor_rx
        .iter()
        .filter(|(_, p)| p[20..22] == 5000u16.to_be_bytes())
        .collect();
    assert_eq!(store.len(), 2, "both queued packets are released");
    assert!(
        store.iter().all(|(i, _)| *i == CELL),
        "on cell, as the policy says"
    );
    // Later packets skip the lookup.
    net.app_sends(&tcp(5000, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.lookups.len(), 1);
    assert_eq!(net.arrived_on(5000), Some(CELL));
}

#[test]
fn an_uplink_that_goes_away_moves_its_flows_and_blocks_those_its_policy_keeps_off_the_others() {
    let mut net = Net::connected();
    let other = net.start_flow("org.example.other", 6000);
    let video = net.start_flow("com.example.video", 6001);
    assert_eq!(net.arrived_on(6000), Some(WIFI));
    assert_eq!(net.arrived_on(6001), Some(WIFI));
    net.host.handle_uplink_lost(uplink(WIFI), net.now);
    net.flush();
    let moved = net.events.iter().any(|e| {
        matches!(e, Event::FlowMoved { flow, to, reason: MoveReason::Policy, .. }
            if *flow == net.flow_id(&other) && to == "cell")
    });
    assert!(moved, "the flow's move is published: {:?}", net.events);
    assert!(
        net.events
            .iter()
            .any(|e| matches!(e, Event::AppBlocked { app, .. } if app == "com.example.video"))
    );
    net.run_for(Duration::from_millis(200));
    // The anchor was told, so the downlink follows before the flow sends anything.
    assert!(
        net.anchor_events
            .iter()
            .any(|e| matches!(e, anchor::Event::FlowMoved { path, .. } if *path == PathId(1)))
    );
    net.app_sends(&tcp(6000, 0x10));
    net.app_sends(&tcp(6001, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.arrived_on(6000), Some(CELL));
    assert_eq!(
        net.arrived_on(6001),
        Some(WIFI),
        "the wifi-only app sent nothing more"
    );
    assert_eq!(net.resets.len(), 1, "its segment is answered with a reset");
    assert!(net.host.flows().paft().lookup(&video).is_none());
}

#[test]
fn a_returning_uplink_carries_flows_again_only_after_its_hold_down() {
    let mut net = Net::connected();
    net.start_flow("org.example.other", 7000);
    net.host.handle_uplink_lost(uplink(WIFI), net.now);
    net.flush();
    net.app_sends(&tcp(7000, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.arrived_on(7000), Some(CELL));
    let back = net.now;
    let local = net.links[WIFI].addr;
    net.host
        .handle_uplink_available(uplink(WIFI), Some(local), back);
    net.flush();
    net.run_for(Duration::from_secs(2));
    net.app_sends(&tcp(7000, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.arrived_on(7000),
        Some(CELL),
        "still held down 2 s after it returned"
    );
    net.run_for(Duration::from_secs(2));
    net.app_sends(&tcp(7000, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.arrived_on(7000),
        Some(WIFI),
        "back on wifi after the hold-down"
    );
}

#[test]
fn a_pinned_flow_stays_where_the_user_put_it_until_unpinned() {
    let mut net = Net::connected();
    let key = net.start_flow("org.example.other", 8000);
    let id = net.flow_id(&key);
    let r = net.host.answer(
        Request::MoveFlow {
            flow: id,
            uplink: "cell".into(),
        },
        net.now,
    );
    assert!(matches!(r, Response::Moved(_)), "{r:?}");
    net.flush();
    // A policy reload re-decides every flow, but not a pinned one.
    let policy = Policy::parse(POLICY, "policy.toml", &["wifi", "cell"]).expect("policy");
    net.host.reload_policy(policy, net.now);
    net.flush();
    net.app_sends(&tcp(8000, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.arrived_on(8000), Some(CELL));
    let r = net.host.answer(Request::UnpinFlow { flow: id }, net.now);
    assert!(
        matches!(r, Response::Unpinned(ref u) if u.flows == [id]),
        "{r:?}"
    );
    net.flush();
    net.app_sends(&tcp(8000, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.arrived_on(8000),
        Some(WIFI),
        "its policy places it again"
    );
    let refused = net.host.answer(
        Request::MoveFlow {
            flow: id,
            uplink: "lte".into(),
        },
        net.now,
    );
    assert!(matches!(refused, Response::Error(_)));
}

#[test]
fn the_bypass_set_is_published_at_start_before_any_session() {
    let policy = Policy::parse(POLICY, "policy.toml", &["wifi", "cell"]).expect("policy");
    let mh = StaticSecret::generate().expect("key");
    let an = StaticSecret::generate().expect("key");
    let mut host = MobileHost::new(
        HostConfig {
            client: ClientConfig::new(mh, an.public_key()),
            client_seed: 1,
            anchor: "192.0.2.1:51900".parse().expect("addr"),
            uplinks: Uplinks::new(vec!["wifi".into(), "cell".into()]).expect("two"),
            interfaces: vec!["wlan0".into(), "rmnet_data0".into()],
            policy,
            policy_source: "policy.toml".into(),
        },
        Instant::ZERO,
    );
    // No uplink, no handshake: the driver's fail-closed rules need the bypass set now.
    assert_eq!(host.poll_routing(), Some(RoutingIntent::Bypass(vec![4242])));
    assert_eq!(host.poll_routing(), None, "published once");
}

#[test]
fn the_bypass_set_follows_the_policy_and_the_package_table() {
    let mut net = Net::connected();
    assert_eq!(
        net.routing.first(),
        Some(&RoutingIntent::Bypass(vec![4242]))
    );
    assert!(
        !net.routing[1..]
            .iter()
            .any(|r| matches!(r, RoutingIntent::Bypass(_))),
        "the TUN coming up does not publish the same set again: {:?}",
        net.routing
    );
    let with_bank = format!("{POLICY}[[rule]]\napp = \"com.example.bank\"\naction = \"bypass\"\n");
    let policy = Policy::parse(&with_bank, "policy.toml", &["wifi", "cell"]).expect("policy");
    let intents = net.routing.len();
    net.host.reload_policy(policy, net.now);
    net.flush();
    assert_eq!(
        net.routing.len(),
        intents,
        "the bank's uid is not known yet: no change"
    );
    net.host
        .set_packages(BTreeMap::from([("com.example.bank".to_owned(), 10_200)]));
    net.flush();
    assert_eq!(
        net.routing.last(),
        Some(&RoutingIntent::Bypass(vec![4242, 10_200]))
    );
    let policy = Policy::parse(POLICY, "policy.toml", &["wifi", "cell"]).expect("policy");
    net.host.reload_policy(policy, net.now);
    net.flush();
    assert_eq!(net.routing.last(), Some(&RoutingIntent::Bypass(vec![4242])));
}

#[test]
fn a_lookup_past_its_bound_goes_by_the_default_rule_and_the_late_answer_moves_it() {
    let mut net = Net::connected();
    net.app_sends(&tcp(9000, 0x02));
    let key = net.lookups[0];
    net.run_for(upmt_mh_core::flows::LOOKUP_BOUND / 2);
    assert_eq!(
        net.arrived_on(9000),
        None,
        "within the bound the packet waits"
    );
    net.run_for(upmt_mh_core::flows::LOOKUP_BOUND);
    assert_eq!(
        net.arrived_on(9000),
        Some(WIFI),
        "past the bound the default rule (first uplink up) sends it"
    );
    assert_eq!(net.host.flows().counters().lookups_overdue, 1);
    net.owner_is(key, "com.example.store");
    assert_eq!(net.host.flows().counters().late_answers, 1);
    assert!(net.events.iter().any(|e| matches!(e,
        Event::FlowMoved { app, to, .. } if app == "com.example.store" && to == "cell")));
    net.app_sends(&tcp(9000, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.arrived_on(9000),
        Some(CELL),
        "its own rule places it now"
    );
}

/// Two apps choosing by RTT; only the call moves its running flows.
const MEASURED_POLICY: &str = r#"version = 1

[[rule]]
app = "call"
uplinks = ["wifi", "cell"]
select = "lowest_rtt"
move_existing = true

[[rule]]
app = "web"
uplinks = ["wifi", "cell"]
select = "lowest_rtt"
"#;

#[test]
fn a_measured_rule_moves_its_running_flows_once_another_uplink_stays_faster() {
    let mut net = Net::connected();
    let policy = Policy::parse(MEASURED_POLICY, "policy.toml", &["wifi", "cell"]).expect("policy");
    net.host.reload_policy(policy, net.now);
    net.flush();
    let call = net.start_flow("call", 8100);
    net.start_flow("web", 8200);
    assert_eq!(net.arrived_on(8100), Some(WIFI), "wifi measures faster");
    assert_eq!(net.arrived_on(8200), Some(WIFI));
    let call_id = net.flow_id(&call);
    net.events.clear();
    // Wi-Fi's queue fills: 300 ms round trips against cellular's 60.
    net.links[WIFI].delay = Duration::from_millis(150);
    for _ in 0..40 {
        net.app_sends(&tcp(8100, 0x10));
        net.app_sends(&tcp(8200, 0x10));
        net.run_for(Duration::from_millis(200));
    }
    let measured: Vec<&Event> = net
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::FlowMoved {
                    reason: MoveReason::Measured,
                    ..
                }
            )
        })
        .collect();
    assert!(
        matches!(measured[..], [Event::FlowMoved { flow, to, .. }] if *flow == call_id && to == "cell"),
        "the call moves once: {:?}",
        net.events
    );
    assert_eq!(net.arrived_on(8100), Some(CELL));
    assert_eq!(
        net.arrived_on(8200),
        Some(WIFI),
        "web's running flow stays without move_existing"
    );
    net.start_flow("web", 8201);
    assert_eq!(net.arrived_on(8201), Some(CELL), "web's new flows follow");
}

#[test]
fn a_redundant_apps_packets_go_over_both_uplinks_both_ways_and_arrive_once() {
    let mut net = Net::with_policy(
        "version = 1\n[[rule]]\napp = \"com.example.call\"\nuplinks = [\"cell\", \"wifi\"]\nredundant = true\n",
    );
    let key = net.start_flow("com.example.call", 5000);
    let n = 20;
    for _ in 0..n {
        net.app_sends(&tcp(5000, 0x10));
    }
    net.run_for(Duration::from_millis(200));
    let of_flow = |rx: &[(usize, Vec<u8>)], i: usize| {
        rx.iter()
            .filter(|(on, p)| *on == i && p.get(20..22) == Some(&5000u16.to_be_bytes()[..]))
            .count()
    };
    // Every packet went on both uplinks, the SYN that waited for the lookup too, and the
    // anchor delivered each once.
    assert_eq!(
        of_flow(&net.anchor_rx, CELL) + of_flow(&net.anchor_rx, WIFI),
        1 + n
    );
    assert_eq!(
        net.anchor.drops().get(upmt_proto::DropReason::Duplicate),
        1 + n as u64
    );
    // The anchor was told, so it duplicates the downlink too.
    let mut down = tcp(5000, 0x10);
    down[12..16].copy_from_slice(&CH_V4.octets());
    down[16..20].copy_from_slice(&MH_V4.octets());
    down[20..22].copy_from_slice(&443u16.to_be_bytes());
    down[22..24].copy_from_slice(&key.sport.to_be_bytes());
    let mut buf = vec![0u8; 256];
    let mut copy = vec![0u8; 256];
    buf[HEADER_LEN..HEADER_LEN + down.len()].copy_from_slice(&down);
    let (first, second) = net
        .anchor
        .encapsulate_with_copy(&mut buf, down.len(), &mut copy, net.now)
        .expect("downlink");
    let second = second.expect("a copy on the other path");
    assert_eq!(first.path, PathId(CELL as u8));
    assert_eq!(second.path, PathId(WIFI as u8));
    let Response::Apps(apps) = net.host.answer(Request::Apps, net.now) else {
        panic!("apps reply");
    };
    let call = apps
        .apps
        .iter()
        .find(|a| a.name == "com.example.call")
        .expect("the app");
    assert!(
        call.duplicated_bytes >= (n * (40 + HEADER_LEN + TAG_LEN)) as u64,
        "{}",
        call.duplicated_bytes
    );
}

#[test]
fn a_cap_reached_mid_flow_blocks_the_app_kept_on_it_and_the_next_day_lets_it_back() {
    use upmt_mh_core::usage::{Cap, OVERHEAD_V4, Period};
    let mut net = Net::connected();
    // 2026-12-01 10:00 UTC; cell capped at 20 packets of ours.
    let morning = 1_796_119_200;
    let limit = 20 * (40 + OVERHEAD_V4);
    net.host.set_caps(
        vec![
            None,
            Some(Cap {
                limit,
                period: Period::Day,
            }),
        ],
        net.now,
    );
    net.host.handle_wall_clock(morning, 0, net.now);
    let store = net.start_flow("com.example.store", 7000);
    let other = net.start_flow("org.example.other", 7001);
    assert_eq!(net.arrived_on(7000), Some(CELL));
    // The driver runs due timers after every batch; here after every packet.
    for _ in 0..25 {
        net.app_sends(&tcp(7000, 0x10));
        net.run_for(Duration::from_millis(1));
    }
    net.run_for(Duration::from_millis(100));
    assert!(
        net.events
            .iter()
            .any(|e| matches!(e, Event::CapReached { uplink, .. } if uplink == "cell")),
        "{:?}",
        net.events
    );
    // The store may only use cell: blocked at the packet that used up the cap (the rest
    // reset), not left on it.
    assert!(net.host.flows().paft().lookup(&store).is_none());
    let store_on_cell = |net: &Net| {
        net.anchor_rx
            .iter()
            .filter(|(i, p)| *i == CELL && p[20..22] == 7000u16.to_be_bytes())
            .count()
    };
    assert_eq!(store_on_cell(&net), 20, "{:?}", net.events);
    assert_eq!(
        net.resets.len(),
        6,
        "the SYN and 19 segments went, the other 6 were reset"
    );
    net.app_sends(&tcp(7000, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(store_on_cell(&net), 20);
    assert_eq!(net.resets.len(), 7, "a later segment is reset too");
    // Other apps keep wifi; what was counted is in the usage reply.
    assert!(net.host.flows().paft().lookup(&other).is_some());
    let Response::Usage(usage) = net.host.answer(
        Request::Usage {
            app: None,
            since: None,
        },
        net.now,
    ) else {
        panic!("a usage reply");
    };
    let cell = usage.uplinks.iter().find(|u| u.uplink == "cell").unwrap();
    let cap = cell.cap.clone().expect("cell's cap");
    assert!(cap.reached && cap.left_bytes == 0, "{cap:?}");
    assert_eq!(cap.resets, "2026-12-02");

    // The next day the store is let back on cell.
    net.host.handle_wall_clock(morning + 86_400, 0, net.now);
    net.flush();
    assert!(
        net.events
            .iter()
            .any(|e| matches!(e, Event::CapRestored { uplink } if uplink == "cell"))
    );
    net.app_sends(&tcp(7000, 0x10));
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.arrived_on(7000), Some(CELL));
}

#[test]
fn segments_of_one_offloaded_tun_read_follow_a_flow_moved_between_them_and_all_decrypt() {
    let mut net = Net::connected();
    let key = net.start_flow("org.example.other", 8100);
    let id = net.flow_id(&key);
    // One offloaded read gives the driver four MTU-sized segments of the flow, which it hands
    // to the core one by one; the user moves the flow after the second.
    const MTU: usize = 1420;
    let segment = |i: u8| {
        let mut p = tcp(8100, 0x10);
        p.resize(MTU, i);
        p[2..4].copy_from_slice(&(MTU as u16).to_be_bytes());
        p
    };
    let mut sent = Vec::new();
    for i in 0..4u8 {
        if i == 2 {
            let r = net.host.answer(
                Request::MoveFlow {
                    flow: id,
                    uplink: "cell".into(),
                },
                net.now,
            );
            assert!(matches!(r, Response::Moved(_)), "{r:?}");
            net.flush();
        }
        let p = segment(i);
        // Exactly the room the driver's read buffers have: the header before, the tag after.
        let mut buf = vec![0u8; HEADER_LEN + MTU + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + MTU].copy_from_slice(&p);
        let t = net
            .host
            .handle_tun_packet(&mut buf, MTU, net.now)
            .expect("a known flow's segment leaves at once");
        sent.push((t.path, buf[..t.len].to_vec()));
    }
    let paths: Vec<usize> = sent.iter().map(|(p, _)| usize::from(p.0)).collect();
    assert_eq!(
        paths,
        [WIFI, WIFI, CELL, CELL],
        "the move takes effect mid-read"
    );
    for (path, datagram) in sent {
        net.send(true, path, datagram);
    }
    net.run_for(Duration::from_millis(100));
    let mut arrived: Vec<(u8, usize)> = net
        .anchor_rx
        .iter()
        .filter(|(_, p)| p.len() == MTU)
        .map(|(uplink, p)| (p[MTU - 1], *uplink))
        .collect();
    arrived.sort_unstable();
    assert_eq!(
        arrived,
        [(0, WIFI), (1, WIFI), (2, CELL), (3, CELL)],
        "every segment decrypted at the anchor, on the uplink it was sent on"
    );
}
