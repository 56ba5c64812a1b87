//! End to end handover: a long TCP download through real `upmt-an` and `upmt-mh` survives the
//! Wi-Fi link going down, a blackhole on the Wi-Fi path (the link stays up), a NAT rebinding on
//! the Wi-Fi router, and a restart of `upmt-an` — finishing with the right sha256 in the same TCP
//! connection. (DNS across a handover: `dns.rs`.) Needs root; each test builds its own lab.

use std::time::{Duration, Instant};

use upmt_tests::topology::{MH_CELL_IF, MH_WIFI_IF};
use upmt_tests::{DeployOptions, Deployment, Downloaded, Lab};

/// Each uplink's downlink rate, so the 32 MiB download lasts several seconds.
const SHAPED_BITS_PER_SEC: u64 = 50_000_000;
/// When the disturbance starts, after the download started.
const DISTURB_AFTER: Duration = Duration::from_millis(1500);

fn lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"))
}

/// Each test's MH gets its own control socket, so tests can run in parallel.
fn deploy<'a>(lab: &'a Lab) -> Deployment<'a> {
    let options = DeployOptions {
        mh_extra: format!(
            "control_socket = \"{}\"",
            lab.dir().join("mh.sock").display()
        ),
        ..DeployOptions::default()
    };
    Deployment::start(lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"))
}

/// What a disturbed download ended with.
struct Outcome {
    sha_ok: bool,
    got: Downloaded,
}

/// Downloads big.bin with curl on the MH while `disturb` runs after [`DISTURB_AFTER`].
fn disturbed_download(
    lab: &Lab,
    upmt: &mut Deployment<'_>,
    disturb: impl FnOnce(&Lab, &mut Deployment<'_>),
) -> Outcome {
    let http = lab.start_http_server().expect("http server");
    for router in [lab.rwifi(), lab.rcell()] {
        router.tbf("lan", SHAPED_BITS_PER_SEC).expect("tbf");
    }
    let curl = lab
        .download("big.bin")
        .label("handover-curl")
        .count(MH_WIFI_IF)
        .count(MH_CELL_IF)
        .start()
        .expect("curl");
    let t0 = Instant::now();
    while t0.elapsed() < DISTURB_AFTER && curl.is_running() {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        curl.is_running(),
        "the download ended before the disturbance"
    );
    disturb(lab, upmt);
    let got = curl.wait(Duration::from_secs(125)).expect("curl's result");
    Outcome {
        sha_ok: got.sha256.as_deref() == http.sha256("big.bin"),
        got,
    }
}

fn assert_survived(what: &str, o: &Outcome, upmt: &Deployment<'_>, cell_carries_rest: bool) {
    let got = &o.got;
    let logs = || format!("curl: {}\n{}", got.log, upmt.logs());
    assert!(got.success(), "{what}: curl failed\n{}", logs());
    assert!(o.sha_ok, "{what}: sha256 mismatch\n{}", logs());
    assert_eq!(
        got.num_connects,
        Some(1),
        "{what}: not one TCP connection\n{}",
        logs()
    );
    if cell_carries_rest {
        // Wi-Fi carried the first ~1.5 s at 50 Mbit/s (< 12 MiB); cell must have the rest.
        let total = upmt_tests::BIG_FILE_SIZE as u64;
        let wifi_rx = got.counters(MH_WIFI_IF).rx_bytes;
        let cell_rx = got.counters(MH_CELL_IF).rx_bytes;
        assert!(
            cell_rx >= (total - wifi_rx.min(total)) * 8 / 10,
            "{what}: cell carried {} of {} bytes, wifi {}\n{}",
            cell_rx,
            total,
            wifi_rx,
            logs()
        );
    }
}

#[test]
fn a_download_survives_the_wifi_link_going_down_and_finishes_on_cell() {
    let lab = lab("ho_linkdown");
    let mut upmt = deploy(&lab);
    let o = disturbed_download(&lab, &mut upmt, |lab, _| {
        lab.mh().set_link(MH_WIFI_IF, false).expect("link down");
    });
    assert_survived("link down", &o, &upmt, true);
    assert!(
        upmt.an.log().contains("peer says path down"),
        "the anchor was not told\n{}",
        upmt.logs()
    );
}

#[test]
fn a_download_survives_a_blackhole_on_the_wifi_path_while_the_link_stays_up() {
    let lab = lab("ho_blackhole");
    let mut upmt = deploy(&lab);
    let o = disturbed_download(&lab, &mut upmt, |lab, _| {
        lab.mh().blackhole(MH_WIFI_IF).expect("blackhole");
    });
    assert_survived("blackhole", &o, &upmt, true);
    assert!(upmt.mh.log().contains("path down"), "{}", upmt.logs());
}

#[test]
fn a_download_survives_a_nat_rebinding_on_the_wifi_router() {
    let lab = lab("ho_rebind");
    let mut upmt = deploy(&lab);
    let o = disturbed_download(&lab, &mut upmt, |lab, _| {
        lab.rwifi().conntrack_flush().expect("conntrack flush");
    });
    assert_survived("nat rebinding", &o, &upmt, false);
}

/// The anchor leaves its persistent TUN and its nft table in place at exit: with the table gone
/// for the restart's ~50 ms, the server's next segment met no NAT hook and this host's own stack
/// reset the connection (or, with the TUN gone too, it was routed back out un-NATed).
#[test]
fn a_download_survives_a_restart_of_the_anchor_daemon() {
    let lab = lab("ho_anrestart");
    let mut upmt = deploy(&lab);
    let o = disturbed_download(&lab, &mut upmt, |_, upmt| {
        upmt.restart_an("info,upmt=debug").expect("restart upmt-an");
    });
    assert_survived("anchor restart", &o, &upmt, false);
    assert!(
        upmt.an.log().contains("peer connected"),
        "the mobile host did not come back\n{}",
        upmt.logs()
    );
}
