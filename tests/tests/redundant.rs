//! End to end, `redundant = true`: a paced UDP stream from the CH to a redundant app on the MH
//! (iperf3 -u -R, 1250 datagrams/s of 200 bytes, a few seconds each) loses nothing across a
//! Wi-Fi link cut, a Wi-Fi blackhole (a drop rule on the Wi-Fi router) and Wi-Fi returning;
//! the same stream without `redundant` sends datagrams into the blackhole until it is found,
//! and the anchor resends them on cell once it is (which may bring its loss to zero). Needs
//! root; each test builds its own lab.

use std::time::{Duration, Instant};

use upmt_tests::topology::MH_WIFI_IF;
use upmt_tests::{DeployOptions, Deployment, Lab, iperf3_udp_lost};

/// Datagrams per second of the stream, and their payload.
const PPS: u64 = 1250;
const PAYLOAD: u64 = 200;
/// When the event happens after the stream started.
const EVENT_AFTER: Duration = Duration::from_millis(1200);

/// iperf3 (the app: its program name) rides wifi, else cell.
fn policy(redundant: bool) -> String {
    format!(
        "version = 1\n[[rule]]\napp = \"iperf3\"\nuplinks = [\"wifi\", \"cell\"]\nredundant = {redundant}\n[default]\nuplinks = [\"wifi\"]\nwhen_none = \"any\"\n"
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    LinkDown,
    Blackhole,
    WifiReturns,
}

fn lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"))
}

fn deploy(lab: &Lab, redundant: bool) -> Deployment<'_> {
    let options = DeployOptions {
        mh_policy: Some(policy(redundant)),
        ..DeployOptions::default()
    };
    Deployment::start(lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"))
}

/// Runs one stream of `secs` with `event` at [`EVENT_AFTER`], undoes the event, and returns
/// the datagrams the MH did not get.
fn stream_across(lab: &Lab, upmt: &Deployment<'_>, event: Event, secs: u64) -> u64 {
    let mh = lab.mh();
    if event == Event::WifiReturns {
        mh.set_link(MH_WIFI_IF, false).expect("wifi down");
        std::thread::sleep(Duration::from_millis(1500));
    }
    let udp = mh
        .paced_udp_from_ch(PPS, PAYLOAD, secs, &format!("udp-{event:?}"))
        .expect("iperf3 client");
    let t0 = Instant::now();
    std::thread::sleep(EVENT_AFTER);
    match event {
        Event::LinkDown => mh.set_link(MH_WIFI_IF, false).expect("wifi down"),
        Event::Blackhole => lab.rwifi().blackhole("lan").expect("blackhole"),
        Event::WifiReturns => mh.set_link(MH_WIFI_IF, true).expect("wifi up"),
    }
    let finished = udp.wait_with_timeout(Duration::from_secs(20));
    let elapsed = t0.elapsed();
    let _ = lab.rwifi().remove_disturbance("lan");
    mh.set_link(MH_WIFI_IF, true).expect("wifi up");
    assert!(
        finished.is_some_and(|s| s.success()),
        "iperf3 across {event:?} did not finish after {elapsed:?}: {}\n{}",
        udp.log(),
        upmt.logs()
    );
    iperf3_udp_lost(&udp.log()).unwrap_or_else(|| {
        panic!(
            "no lost_packets in iperf3's report: {}\n{}",
            udp.log(),
            upmt.logs()
        )
    })
}

/// Lets a restored wifi come back into use (hold-down) before the next event.
fn settle() {
    std::thread::sleep(Duration::from_secs(4));
}

#[test]
fn a_redundant_udp_stream_loses_nothing_across_link_down_blackhole_and_wifi_returning() {
    let lab = lab("redundant_zero");
    lab.start_iperf3_server().expect("iperf3 server");
    let upmt = deploy(&lab, true);
    let mut lost = Vec::new();
    for (event, secs) in [
        (Event::LinkDown, 3),
        (Event::Blackhole, 3),
        (Event::WifiReturns, 6),
    ] {
        let n = stream_across(&lab, &upmt, event, secs);
        eprintln!("redundant: {event:?} lost {n} datagrams");
        lost.push((event, n));
        settle();
    }
    assert!(
        lost.iter().all(|(_, n)| *n == 0),
        "lost with redundant: {lost:?}\n{}",
        upmt.logs()
    );
    let metric = |name: &str| upmt.an_metric(name).expect("anchor metrics");
    let copies_sent = metric("upmt_core_duplicated_packets");
    let copies_dropped = metric("upmt_drops_total{reason=\"duplicate\"}");
    eprintln!("anchor: {copies_sent} downlink copies sent, {copies_dropped} uplink copies dropped");
    assert!(
        copies_sent > 0 && copies_dropped > 0,
        "the anchor duplicates the downlink and drops the uplink copies\n{}",
        upmt.logs()
    );
}

#[test]
fn without_redundant_the_same_stream_has_its_blackholed_datagrams_resent() {
    let lab = lab("redundant_off");
    lab.start_iperf3_server().expect("iperf3 server");
    let upmt = deploy(&lab, false);
    let down = stream_across(&lab, &upmt, Event::LinkDown, 3);
    settle();
    let blackhole = stream_across(&lab, &upmt, Event::Blackhole, 3);
    let resent = upmt
        .an_metric("upmt_core_resent_bytes")
        .expect("anchor metrics");
    eprintln!(
        "not redundant: link down lost {down}, blackhole lost {blackhole} datagrams; \
         the anchor resent {resent} bytes"
    );
    // Until probes notice the blackhole (hundreds of milliseconds), the downlink goes into it;
    // then the anchor resends what it sent there since, on cell.
    assert!(resent > 0, "nothing resent\n{}", upmt.logs());
}
