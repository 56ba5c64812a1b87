//! Uplinks named by pattern and a dual-stack anchor, on virtual time: the test is the driver
//! (it "opens" the sockets the host asks for) and a real anchor core answers only through the
//! (interface, family) pairs that reach it, as on a phone where IMS never reaches the anchor and
//! 464XLAT leaves IPv4 unusable from the cellular interface itself.

mod util;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use upmt_mh_core::candidates::{Change, Family, InterfaceFacts};
use upmt_mh_core::{HostConfig, MobileHost, Uplinks};
use upmt_paft::UplinkId;
use upmt_policy::Policy;
use upmt_proto::PathId;
use upmt_proto::anchor::{Anchor, AnchorConfig, PeerConfig};
use upmt_proto::client::ClientConfig;
use upmt_proto::keys::StaticSecret;
use upmt_proto::time::Instant;

const DELAY: Duration = Duration::from_millis(20);

struct Flight {
    at: Instant,
    to_anchor: bool,
    path: PathId,
    from: SocketAddr,
    bytes: Vec<u8>,
}

struct Net {
    now: Instant,
    host: MobileHost,
    anchor: Anchor,
    /// (interface, family) pairs through which the anchor is reached.
    reaches: Vec<(&'static str, Family)>,
    /// Per uplink: the (interface, family) its socket is on.
    attached: Vec<Option<(String, Family)>>,
    inflight: Vec<Flight>,
    /// Every attach the host asked for, in order.
    attaches: Vec<(usize, String, Family)>,
}

/// The host's public address for a socket on `interface` in `family`, as the anchor sees it.
fn address(interface: &str, family: Family) -> SocketAddr {
    let n = interface.bytes().map(u32::from).sum::<u32>() % 200;
    match family {
        Family::V4 => SocketAddr::new(Ipv4Addr::new(198, 51, 100, n as u8).into(), 40000),
        Family::V6 => format!("[2001:db8:1::{n:x}]:40000").parse().expect("addr"),
    }
}

fn up(name: &str, v4: bool, v6: bool) -> InterfaceFacts {
    InterfaceFacts {
        name: name.into(),
        up: true,
        global_v4: v4,
        global_v6: v6,
        default_v4: v4,
        default_v6: v6,
    }
}

impl Net {
    fn new(interfaces: &[&str], reaches: Vec<(&'static str, Family)>) -> Net {
        let mh = StaticSecret::generate().expect("key");
        let an = StaticSecret::generate().expect("key");
        let names: Vec<String> = (0..interfaces.len()).map(|i| format!("u{i}")).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let host = MobileHost::new(
            HostConfig {
                client: ClientConfig::new(mh.clone(), an.public_key()),
                client_seed: 1_700_000_000_000_000_000,
                anchor: "192.0.2.1:51900".parse().expect("addr"),
                uplinks: Uplinks::new(names.clone()).expect("fits"),
                interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
                policy: Policy::tunnel_everything(&name_refs),
                policy_source: "(built-in)".into(),
            },
            Instant::ZERO,
        );
        let anchor = Anchor::new(
            AnchorConfig::new(
                an,
                vec![PeerConfig {
                    name: "phone".into(),
                    public: mh.public_key(),
                    virtual_ipv4: Ipv4Addr::new(10, 9, 0, 2),
                    virtual_ipv6: None,
                }],
            ),
            Instant::ZERO,
        );
        Net {
            now: Instant::ZERO,
            host,
            anchor,
            reaches,
            attached: vec![None; interfaces.len()],
            inflight: Vec::new(),
            attaches: Vec::new(),
        }
    }

    fn list(&mut self, interfaces: Vec<InterfaceFacts>) {
        self.host
            .handle_interfaces(interfaces, vec![Family::V4, Family::V6], self.now);
        self.flush();
    }

    fn flush(&mut self) {
        let mut buf = vec![0u8; 4096];
        loop {
            while let Some((uplink, change)) = self.host.poll_uplink_change() {
                let i = usize::from(uplink.get());
                match change {
                    Change::Attach(a) => {
                        self.attaches.push((i, a.interface.clone(), a.family));
                        let local = address(&a.interface, a.family);
                        self.attached[i] = Some((a.interface, a.family));
                        self.host
                            .handle_uplink_available(uplink, Some(local), self.now);
                    }
                    Change::Detach => self.attached[i] = None,
                }
            }
            while let Some(t) = self.host.poll_transmit(self.now, &mut buf) {
                let i = usize::from(t.path.0);
                if let Some((interface, family)) = &self.attached[i] {
                    let from = address(interface, *family);
                    if self
                        .reaches
                        .iter()
                        .any(|(n, f)| n == interface && f == family)
                    {
                        self.inflight.push(Flight {
                            at: self.now + DELAY,
                            to_anchor: true,
                            path: t.path,
                            from,
                            bytes: buf[..t.len].to_vec(),
                        });
                    }
                }
            }
            while let Some(t) = self.anchor.poll_transmit(self.now, &mut buf) {
                let dst = t.dst.expect("anchor names a destination");
                // Delivered to whichever uplink's socket has that address now.
                let path = self
                    .attached
                    .iter()
                    .position(|a| a.as_ref().is_some_and(|(n, f)| address(n, *f) == dst));
                if let Some(i) = path {
                    self.inflight.push(Flight {
                        at: self.now + DELAY,
                        to_anchor: false,
                        path: PathId(i as u8),
                        from: dst,
                        bytes: buf[..t.len].to_vec(),
                    });
                }
            }
            while self.host.poll_routing().is_some() {}
            while self.host.poll_event().is_some() {}
            while self.anchor.poll_event().is_some() {}
            while self.host.poll_lookup().is_some() {}
            if !self.host.has_output() {
                return;
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        for _ in 0..1_000_000 {
            let arrivals = self.inflight.iter().map(|f| f.at);
            let next = util::next_wake(&self.host, &self.anchor, arrivals)
                .unwrap_or(limit + Duration::from_millis(1));
            if next > limit {
                self.now = limit;
                return;
            }
            self.now = self.now.max(next);
            for f in util::take_due(&mut self.inflight, self.now, |f| f.at) {
                let mut bytes = f.bytes;
                if f.to_anchor {
                    let _ = self.anchor.handle_datagram(f.from, &mut bytes, self.now);
                } else if self.attached[usize::from(f.path.0)]
                    .as_ref()
                    .is_some_and(|(n, fam)| address(n, *fam) == f.from)
                {
                    let _ = self.host.handle_datagram(f.path, &mut bytes, self.now);
                }
            }
            util::run_timers(&mut self.host, &mut self.anchor, self.now);
            self.flush();
        }
        panic!("the simulation does not settle");
    }

    fn path_up(&self, i: usize) -> bool {
        self.host
            .client()
            .path_stats(PathId(i as u8))
            .is_some_and(|s| s.state == upmt_proto::client::PathState::Up)
    }

    fn interface(&self, i: usize) -> &str {
        self.host
            .interface(UplinkId::new(i as u8).expect("id"))
            .expect("uplink")
    }
}

#[test]
fn a_pattern_uplink_skips_the_ims_like_interface_and_settles_on_the_one_that_answers() {
    let mut net = Net::new(
        &["wlan0", "rmnet_data*"],
        vec![("wlan0", Family::V4), ("rmnet_data1", Family::V4)],
    );
    net.list(vec![
        up("wlan0", true, false),
        up("rmnet_data0", true, false),
        up("rmnet_data1", true, false),
    ]);
    assert_eq!(
        net.interface(1),
        "rmnet_data0",
        "the first candidate in name order"
    );
    net.run_for(Duration::from_secs(15));
    assert!(
        net.host.client().session().is_some(),
        "the session is up over wlan0"
    );
    assert!(net.path_up(0) && net.path_up(1), "both paths up");
    assert_eq!(
        net.interface(1),
        "rmnet_data1",
        "upmt status shows the real interface"
    );
    assert_eq!(
        net.attaches.iter().filter(|(i, ..)| *i == 1).count(),
        2,
        "rmnet_data0 tried once, then rmnet_data1 kept: {:?}",
        net.attaches
    );
    // Stays there: the failed candidate is remembered and the working one kept.
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.interface(1), "rmnet_data1");
    assert_eq!(net.attaches.len(), 3, "{:?}", net.attaches);
}

#[test]
fn a_cellular_only_host_behind_464xlat_reaches_the_anchor_over_ipv6() {
    // IPv4 "works" on rmnet_data0 as far as the listing can tell (the CLAT's route is in
    // another table), but never reaches the anchor; IPv6 does.
    let mut net = Net::new(&["rmnet_data*"], vec![("rmnet_data0", Family::V6)]);
    net.list(vec![up("rmnet_data0", true, true)]);
    net.run_for(Duration::from_secs(20));
    assert!(net.host.client().session().is_some(), "handshake over IPv6");
    assert!(net.path_up(0));
    assert_eq!(
        net.attaches,
        vec![
            (0, "rmnet_data0".to_string(), Family::V4),
            (0, "rmnet_data0".to_string(), Family::V6)
        ]
    );
}

#[test]
fn an_uplink_whose_interface_goes_away_moves_to_the_next_candidate_at_once() {
    let mut net = Net::new(
        &["wlan0", "ccmni*"],
        vec![
            ("wlan0", Family::V4),
            ("ccmni0", Family::V4),
            ("ccmni1", Family::V4),
        ],
    );
    net.list(vec![
        up("wlan0", true, false),
        up("ccmni0", true, false),
        up("ccmni1", true, false),
    ]);
    net.run_for(Duration::from_secs(8));
    assert_eq!(net.interface(1), "ccmni0");
    assert!(net.path_up(1));
    net.list(vec![up("wlan0", true, false), up("ccmni1", true, false)]);
    assert_eq!(net.interface(1), "ccmni1");
    net.run_for(Duration::from_secs(5));
    assert!(net.path_up(1), "the path came up again on ccmni1");
    net.list(vec![up("wlan0", true, false)]);
    assert_eq!(
        net.attached[1], None,
        "no candidate left: the socket is closed"
    );
    assert_eq!(net.interface(1), "ccmni*");
}

#[test]
fn a_fixed_interface_with_a_silent_anchor_keeps_its_one_socket() {
    let mut net = Net::new(&["wlan0"], vec![]);
    net.list(vec![up("wlan0", true, false)]);
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.attaches, vec![(0, "wlan0".to_string(), Family::V4)]);
    assert!(net.host.client().session().is_none());
}
