//! End to end handover: a long TCP download through real `upmt-an` and `upmt-mh` survives the
//! Wi-Fi link going down, a blackhole on the Wi-Fi path (the link stays up), a NAT rebinding on
//! the Wi-Fi router, and a restart of `upmt-an` — finishing with the right sha256 in the same TCP
//! connection. (DNS across a handover: `dns.rs`.) Needs root; each test builds its own lab.

use std::time::{Duration, Instant};

use upmt_tests::topology::{MH_CELL_IF, MH_WIFI_IF};
use upmt_tests::{DeployOptions, Deployment, Family, Lab, sha256_file};

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
    curl_ok: bool,
    connects: Option<u32>,
    wifi_rx: u64,
    cell_rx: u64,
    log: String,
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
    let out = lab.dir().join("handover-download.bin");
    let curl = lab
        .mh()
        .command(&[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "120",
            "-w",
            "\nnum_connects=%{num_connects}\n",
            "-o",
            out.to_str().expect("utf-8 path"),
            &http.url(Family::V4, "big.bin"),
        ])
        .label("handover-curl")
        .spawn()
        .expect("curl");
    let mh = lab.mh();
    let wifi0 = mh.link_counters(MH_WIFI_IF).expect("counters");
    let cell0 = mh.link_counters(MH_CELL_IF).expect("counters");
    let t0 = Instant::now();
    while t0.elapsed() < DISTURB_AFTER && curl.is_running() {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        curl.is_running(),
        "the download ended before the disturbance"
    );
    disturb(lab, upmt);
    let status = curl.wait_with_timeout(Duration::from_secs(125));
    let log = curl.log();
    let connects = log
        .lines()
        .find_map(|l| l.strip_prefix("num_connects="))
        .and_then(|n| n.trim().parse().ok());
    let sha = sha256_file(&out).unwrap_or_default();
    Outcome {
        sha_ok: Some(sha.as_str()) == http.sha256("big.bin"),
        curl_ok: status.is_some_and(|s| s.success()),
        connects,
        wifi_rx: mh
            .link_counters(MH_WIFI_IF)
            .expect("counters")
            .since(&wifi0)
            .rx_bytes,
        cell_rx: mh
            .link_counters(MH_CELL_IF)
            .expect("counters")
            .since(&cell0)
            .rx_bytes,
        log,
    }
}

fn assert_survived(what: &str, o: &Outcome, upmt: &Deployment<'_>, cell_carries_rest: bool) {
    let logs = || format!("curl: {}\n{}", o.log, upmt.logs());
    assert!(o.curl_ok, "{what}: curl failed\n{}", logs());
    assert!(o.sha_ok, "{what}: sha256 mismatch\n{}", logs());
    assert_eq!(
        o.connects,
        Some(1),
        "{what}: not one TCP connection\n{}",
        logs()
    );
    if cell_carries_rest {
        // Wi-Fi carried the first ~1.5 s at 50 Mbit/s (< 12 MiB); cell must have the rest.
        let total = upmt_tests::BIG_FILE_SIZE as u64;
        assert!(
            o.cell_rx >= (total - o.wifi_rx.min(total)) * 8 / 10,
            "{what}: cell carried {} of {} bytes, wifi {}\n{}",
            o.cell_rx,
            total,
            o.wifi_rx,
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
