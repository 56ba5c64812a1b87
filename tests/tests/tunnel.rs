//! End to end: real `upmt-an` and `upmt-mh` in the lab carry real programs' traffic (curl,
//! iperf3) from the mobile host through the tunnel and out of the anchor's NAT, and the anchor
//! shrugs off hostile datagrams. Needs root; each test builds its own lab.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use upmt_proto::keys::StaticSecret;
use upmt_proto::time::Instant;
use upmt_proto::{PathId, client};
use upmt_tests::deploy::{AN_PORT, MH_TUN};
use upmt_tests::topology::{AN_V4, AN_V6, MH_CELL_IF, MH_WIFI_IF};
use upmt_tests::{BIG_FILE_SIZE, DeployOptions, Deployment, Downloaded, Family, Lab};

fn lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"))
}

fn deploy<'a>(lab: &'a Lab, options: &DeployOptions) -> Deployment<'a> {
    Deployment::start(lab, options).unwrap_or_else(|e| panic!("deploying upmt: {e}"))
}

/// Downloads `name` from the CH with curl in the MH namespace, counting on `count`; panics
/// with the daemons' logs when curl fails.
fn download(lab: &Lab, family: Family, name: &str, count: &[&str]) -> Downloaded {
    let mut download = lab.download(name).family(family);
    for ifname in count {
        download = download.count(ifname);
    }
    let got = download
        .run()
        .unwrap_or_else(|e| panic!("curl {name}: {e}\n{}", lab.logs()));
    assert!(got.success(), "curl {name}: {}\n{}", got.log, lab.logs());
    got
}

#[test]
fn curl_downloads_a_big_file_through_the_tunnel_and_the_ch_sees_the_anchor() {
    let lab = lab("tunnel_curl");
    let upmt = deploy(&lab, &DeployOptions::default());
    let http = lab.start_http_server().expect("http server");

    // The CH sees the anchor's NAT, never an uplink's.
    let seen = lab.whoami_via(None, Family::V4).expect("whoami");
    assert_eq!(seen, IpAddr::V4(AN_V4), "{}", upmt.logs());

    let got = download(&lab, Family::V4, "big.bin", &[MH_WIFI_IF, MH_TUN]);
    assert_eq!(got.sha256.as_deref(), http.sha256("big.bin"));

    // The bytes came in through the TUN, and under it through the wifi uplink (path 0, the
    // first uplink, carries traffic while it is up), encrypted: a little more than the file.
    let tun = got.counters(MH_TUN);
    let wifi = got.counters(MH_WIFI_IF);
    assert!(tun.rx_bytes >= BIG_FILE_SIZE as u64, "tun rx {tun:?}");
    assert!(wifi.rx_bytes >= BIG_FILE_SIZE as u64, "wifi rx {wifi:?}");
    assert!(upmt.mh.is_running() && upmt.an.is_running());
}

#[test]
fn ipv6_inside_the_tunnel_reaches_the_ch_from_the_anchor() {
    let lab = lab("tunnel_v6");
    let upmt = deploy(&lab, &DeployOptions::default());
    let http = lab.start_http_server().expect("http server");
    let seen = lab.whoami_via(None, Family::V6).expect("whoami over IPv6");
    assert_eq!(seen, IpAddr::V6(AN_V6), "{}", upmt.logs());
    let got = download(&lab, Family::V6, "mid.bin", &[]);
    assert_eq!(got.sha256.as_deref(), http.sha256("mid.bin"));
}

#[test]
fn iperf3_tcp_and_udp_pass_through_the_tunnel() {
    let lab = lab("tunnel_iperf3");
    let upmt = deploy(&lab, &DeployOptions::default());
    let server = lab.start_iperf3_server().expect("iperf3 server");
    let addr = server.addr(Family::V4).ip().to_string();

    let tcp = lab
        .mh()
        .command(&["iperf3", "-c", &addr, "-t", "3", "-J"])
        .timeout(Duration::from_secs(30))
        .run()
        .unwrap_or_else(|e| panic!("iperf3 tcp: {e}\n{}", upmt.logs()));
    let tcp: serde_json::Value = serde_json::from_slice(&tcp.stdout).expect("iperf3 json");
    let received = tcp["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(received > 1_000_000, "tcp received {received} bytes");

    let udp = lab
        .mh()
        .command(&["iperf3", "-c", &addr, "-u", "-b", "20M", "-t", "3", "-J"])
        .timeout(Duration::from_secs(30))
        .run()
        .unwrap_or_else(|e| panic!("iperf3 udp: {e}\n{}", upmt.logs()));
    let udp: serde_json::Value = serde_json::from_slice(&udp.stdout).expect("iperf3 json");
    let sum = &udp["end"]["sum"];
    let packets = sum["packets"].as_u64().unwrap_or(0);
    let lost = sum["lost_packets"].as_u64().unwrap_or(u64::MAX);
    assert!(packets > 1000, "udp sent {packets} packets");
    assert!(lost * 100 <= packets, "udp lost {lost} of {packets}");
}

/// Sends each datagram from the internet router (an attacker on the path to the anchor).
fn send_from_inet(lab: &Lab, dst: SocketAddr, datagrams: &[Vec<u8>]) {
    let hex: Vec<String> = datagrams.iter().map(hex::encode).collect();
    let script = "import socket,sys\n\
                  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                  for h in sys.argv[3:]:\n    s.sendto(bytes.fromhex(h),(sys.argv[1],int(sys.argv[2])))\n";
    let mut args = vec![
        "python3".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        dst.ip().to_string(),
        dst.port().to_string(),
    ];
    args.extend(hex);
    lab.inet().run(&args).expect("sending datagrams");
}

#[test]
fn hostile_datagrams_are_dropped_and_counted_and_the_session_survives() {
    let lab = lab("tunnel_hostile");
    let upmt = deploy(&lab, &DeployOptions::default());
    let http = lab.start_http_server().expect("http server");
    let anchor = SocketAddr::new(IpAddr::V4(AN_V4), AN_PORT);

    // A handshake from a key the anchor does not know, correctly addressed (mac1 is keyed by
    // the anchor's public key, which is public), so it costs the anchor a Noise attempt.
    let an_config = std::fs::read_to_string(&upmt.an_config).expect("an config");
    let an_secret: StaticSecret = an_config
        .lines()
        .find_map(|l| l.strip_prefix("private_key = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("anchor key in config")
        .parse()
        .expect("anchor key");
    let stranger = StaticSecret::generate().expect("key");
    let mut client = client::Client::new(
        client::ClientConfig::new(stranger, an_secret.public_key()),
        Instant::ZERO,
        1_700_000_000_000_000_000,
    );
    client.handle_path_up(PathId(0), Instant::ZERO);
    let mut buf = vec![0u8; 2048];
    let init = client
        .poll_transmit(Instant::ZERO, &mut buf)
        .expect("a handshake init");
    let unknown_init = buf[..init.len].to_vec();

    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
    let truncated = vec![0x13, 0, 0]; // a data packet's first bytes, cut short
    let forged = {
        // A data packet with a well-formed header, a made-up session and a bad tag.
        let mut p = vec![
            0x13, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        p.extend_from_slice(&[0x55; 64]);
        p
    };

    let before = upmt.an_metrics().expect("metrics");
    let drops_before = upmt_tests::deploy::metric_sum(&before, "upmt_drops_total");
    let datagrams = vec![garbage, truncated, forged, unknown_init];
    send_from_inet(&lab, anchor, &datagrams);

    upmt_tests::wait_for(
        "the anchor to count the drops",
        Duration::from_secs(5),
        || upmt.an_metric("upmt_drops_total").unwrap_or(0) >= drops_before + 4,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", upmt.an_metrics().unwrap_or_default()));
    let after = upmt.an_metrics().expect("metrics");
    assert!(
        upmt_tests::deploy::metric_sum(&after, "upmt_drops_total{reason=\"truncated\"}") >= 1,
        "{after}"
    );
    assert!(
        upmt_tests::deploy::metric_sum(&after, "upmt_drops_total{reason=\"unknown_session\"}") >= 1,
        "{after}"
    );

    // The anchor is alive and the live session still carries traffic.
    assert!(upmt.an.is_running(), "{}", upmt.logs());
    let got = download(&lab, Family::V4, "mid.bin", &[]);
    assert_eq!(got.sha256.as_deref(), http.sha256("mid.bin"));
}

#[test]
fn the_session_starts_on_cell_when_wifi_is_down() {
    let lab = lab("tunnel_cell_only");
    lab.mh().set_link(MH_WIFI_IF, false).expect("wifi down");
    let upmt = deploy(&lab, &DeployOptions::default());
    let http = lab.start_http_server().expect("http server");
    let got = download(&lab, Family::V4, "mid.bin", &[MH_CELL_IF]);
    assert_eq!(got.sha256.as_deref(), http.sha256("mid.bin"));
    let cell = got.counters(MH_CELL_IF);
    assert!(
        cell.rx_bytes as usize >= upmt_tests::MID_FILE_SIZE,
        "cell rx {cell:?}"
    );
    assert!(upmt.mh.is_running());
}
