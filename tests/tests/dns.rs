//! End to end: the anchor's `dns = "IP"` redirect. A query the mobile host sends through the
//! tunnel to an address where nothing listens is answered by the resolver the anchor's config
//! names (a tiny responder on the CH), and it still is after the Wi-Fi uplink goes down. Needs
//! root; the test builds its own lab.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use upmt_tests::exec::python;
use upmt_tests::topology::{AN_V4, CH_V4, MH_CELL_IF, MH_WIFI_IF, RWIFI_LAN_V4};
use upmt_tests::{DeployOptions, Deployment, Lab, ProcHandle, wait_for};

/// What the CH's responder answers to every A query.
const ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 123);
/// Where the MH sends its queries: an address in no namespace of the lab listens on port 53,
/// so only the anchor's redirect can produce an answer.
const NO_RESOLVER: &str = "198.51.100.53";

/// The responder: one UDP socket on the CH's port 53; parses the question by hand and answers
/// A queries with [`ANSWER`] (anything else gets an empty answer). Prints each query's sender, so
/// the test can check the query left through the anchor's NAT.
const RESPONDER_PY: &str = r#"
import socket, struct, sys
addr, answer = sys.argv[1], socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
print("answering on", addr, flush=True)
while True:
    q, peer = s.recvfrom(4096)
    if len(q) < 12:
        continue
    i = 12
    while i < len(q) and q[i] != 0:
        i += 1 + q[i]
    end = i + 5
    if end > len(q):
        continue
    question = q[12:end]
    qtype = struct.unpack("!H", q[end - 4:end - 2])[0]
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + answer if qtype == 1 else b""
    header = q[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if rr else 0, 0, 0)
    s.sendto(header + question + rr, peer)
    print("query from", peer[0], flush=True)
"#;

/// The client: sends an A query for `upmt.test` to argv[1]:53 (three tries, 1 s each) and
/// prints `<answer address> from <replying address>`.
const CLIENT_PY: &str = r#"
import os, socket, struct, sys
qid = os.urandom(2)
name = b"".join(bytes([len(l)]) + l for l in b"upmt.test".split(b".")) + b"\0"
query = qid + struct.pack("!HHHHH", 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
for _ in range(3):
    s.sendto(query, (sys.argv[1], 53))
    try:
        r, peer = s.recvfrom(4096)
    except socket.timeout:
        continue
    if r[:2] != qid or struct.unpack("!H", r[6:8])[0] < 1:
        sys.exit("bad answer: " + r.hex())
    rdata = r[12 + len(name) + 4 + 12:]
    print(socket.inet_ntoa(rdata[:4]), "from", peer[0])
    sys.exit(0)
sys.exit("no answer")
"#;

/// Starts the responder on the CH and waits until it listens on udp 53.
fn start_responder(lab: &Lab) -> ProcHandle {
    let script = lab.dir().join("dns_responder.py");
    std::fs::write(&script, RESPONDER_PY).expect("writing the responder");
    let ch = lab.ch();
    let proc = ch
        .command(&[
            python().as_str(),
            "-u",
            script.to_str().expect("utf-8 path"),
            &CH_V4.to_string(),
            &ANSWER.to_string(),
        ])
        .label("dns-responder")
        .spawn()
        .expect("starting the responder");
    let needle = SocketAddr::new(IpAddr::V4(CH_V4), 53).to_string();
    wait_for(
        "the dns responder to listen",
        Duration::from_secs(10),
        || {
            ch.run_stdout(&["ss", "-Hlun"])
                .map(|out| out.split_whitespace().any(|w| w == needle))
                .unwrap_or(false)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proc.log()));
    proc
}

/// Queries [`NO_RESOLVER`] from the MH; returns the answer and the address it came from.
fn query(lab: &Lab, upmt: &Deployment<'_>) -> (Ipv4Addr, IpAddr) {
    query_to(lab, upmt, NO_RESOLVER)
}

/// Queries `resolver` from the MH; returns the answer and the address it came from.
fn query_to(lab: &Lab, upmt: &Deployment<'_>, resolver: &str) -> (Ipv4Addr, IpAddr) {
    let out = lab
        .mh()
        .command(&[python().as_str(), "-c", CLIENT_PY, resolver])
        .timeout(Duration::from_secs(10))
        .run()
        .unwrap_or_else(|e| panic!("dns query: {e}\n{}", upmt.logs()));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let answer = words.next().and_then(|w| w.parse().ok());
    let from = words.nth(1).and_then(|w| w.parse().ok());
    match (answer, from) {
        (Some(a), Some(f)) => (a, f),
        _ => panic!("unexpected client output {text:?}"),
    }
}

#[test]
fn tunnelled_dns_to_any_address_is_answered_by_the_anchors_resolver_across_a_handover() {
    let lab = Lab::new("dns_redirect").unwrap_or_else(|e| panic!("building the lab: {e}"));
    let responder = start_responder(&lab);
    let options = DeployOptions {
        an_extra: format!("dns = \"{CH_V4}\"\n"),
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"));

    let (answer, from) = query(&lab, &upmt);
    assert_eq!(answer, ANSWER, "{}", upmt.logs());
    // The reply is un-DNATed: the client sees it from the address it asked.
    assert_eq!(from, NO_RESOLVER.parse::<IpAddr>().expect("address"));
    // The resolver saw the query from the anchor's NAT, so it went through the tunnel.
    let seen = responder.log();
    assert!(
        seen.contains(&format!("query from {AN_V4}")),
        "responder log: {seen}"
    );

    // Cut Wi-Fi: after the handover the tunnel runs over cell, and DNS still answers.
    let cell_before = lab.mh().link_counters(MH_CELL_IF).expect("counters");
    lab.mh().set_link(MH_WIFI_IF, false).expect("wifi down");
    std::thread::sleep(Duration::from_secs(1));
    let (answer, from) = query(&lab, &upmt);
    assert_eq!(answer, ANSWER, "{}", upmt.logs());
    assert_eq!(from, NO_RESOLVER.parse::<IpAddr>().expect("address"));
    let cell = lab
        .mh()
        .link_counters(MH_CELL_IF)
        .expect("counters")
        .since(&cell_before);
    assert!(cell.rx_packets > 0 && cell.tx_packets > 0, "cell {cell:?}");
    let queries = responder.log().matches("query from").count();
    assert!(queries >= 2, "responder log: {}", responder.log());
    assert!(upmt.mh.is_running() && upmt.an.is_running());
}

#[test]
fn a_query_to_the_wifi_routers_resolver_goes_through_the_tunnel_and_never_reaches_the_router() {
    let lab = Lab::new("dns_onlink").unwrap_or_else(|e| panic!("building the lab: {e}"));
    let responder = start_responder(&lab);
    // Count every DNS packet that reaches the Wi-Fi router, whatever its destination.
    let ruleset = "table inet upmt-lab-dnscount {\n\
         counter dns53 {}\n\
         chain pre { type filter hook prerouting priority -300; \
         udp dport 53 counter name dns53; tcp dport { 53, 853 } counter name dns53; }\n}\n";
    lab.rwifi()
        .run_input(&["nft", "-f", "-"], ruleset.as_bytes())
        .expect("a DNS counter on the Wi-Fi router");
    let options = DeployOptions {
        an_extra: format!("dns = \"{CH_V4}\"\n"),
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"));

    // The hotspot's own resolver address, on the Wi-Fi link: the default `dns = "tunnel"`
    // sends the query into the tunnel anyway, where the anchor's resolver answers it.
    let resolver = RWIFI_LAN_V4.to_string();
    let (answer, from) = query_to(&lab, &upmt, &resolver);
    assert_eq!(answer, ANSWER, "{}", upmt.logs());
    assert_eq!(from, IpAddr::V4(RWIFI_LAN_V4));
    assert!(
        responder.log().contains(&format!("query from {AN_V4}")),
        "responder log: {}",
        responder.log()
    );
    let seen = lab
        .rwifi()
        .nft_counter("inet", "upmt-lab-dnscount", "dns53")
        .expect("the router's DNS counter");
    assert_eq!(seen.packets, 0, "DNS reached the Wi-Fi router: {seen:?}");
}
