//! End to end: a mobile host configured with two anchors moves to the second when the first
//! one's daemon dies, takes the address the second gives it, resets the connection it had, and
//! new connections work through the second anchor. Needs root; builds its own lab with a second
//! anchor namespace.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use upmt_tests::deploy::{AN_PORT, MH_TUN, mh_status};
use upmt_tests::second_an::{MH_VIRTUAL2_V4, SecondAnchor};
use upmt_tests::topology::{AN_V4, AN2_V4};
use upmt_tests::{DeployOptions, Deployment, Family, Lab, wait_for};

/// How long the host waits with no path up before it fails over (`probe.failover_after_ms`).
const FAILOVER_AFTER: Duration = Duration::from_secs(2);
/// Idle keepalive: the dead anchor's paths are seen down within this plus the path timeout.
const KEEPALIVE: Duration = Duration::from_secs(1);

#[test]
fn the_mobile_host_fails_over_to_the_second_anchor_when_the_first_dies_and_new_connections_work() {
    let mut lab = Lab::new("failover").unwrap_or_else(|e| panic!("building the lab: {e}"));
    lab.add_second_an()
        .unwrap_or_else(|e| panic!("adding the second anchor: {e}"));
    let second = SecondAnchor::new().expect("second anchor key");
    let options = DeployOptions {
        mh_extra: format!(
            "{}[probe]\nidle_keepalive_s = {}\nfailover_after_ms = {}\n",
            second.mh_config(),
            KEEPALIVE.as_secs(),
            FAILOVER_AFTER.as_millis()
        ),
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    let an2 = second
        .start(&lab, &upmt, &options.log)
        .unwrap_or_else(|e| panic!("starting the second anchor: {e}\n{}", lab.logs()));
    let http = lab.start_http_server().expect("http server");

    let status = mh_status(&lab).expect("status");
    let first = format!("{AN_V4}:{AN_PORT}");
    assert_eq!(status["session"]["anchor"], first.as_str(), "{status}");
    assert_eq!(status["session"]["active_anchor"]["index"], 0, "{status}");

    // A connection in progress through the first anchor: slow, so it is still open when the
    // anchor dies.
    let held = lab
        .mh()
        .command(&[
            "curl",
            "-sS",
            "--limit-rate",
            "64k",
            "-o",
            "/dev/null",
            &http.url(Family::V4, "mid.bin"),
        ])
        .label("curl-held")
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(500));
    assert!(held.is_running(), "curl ended early: {}", held.log());

    assert!(
        upmt.an.signal(libc::SIGKILL),
        "the first anchor was running"
    );
    let killed = Instant::now();
    let second_endpoint = second.endpoint();
    let moved = wait_for("the failover", Duration::from_secs(20), || {
        mh_status(&lab).is_ok_and(|s| {
            s["session"]["anchor"] == second_endpoint.as_str()
                && s["session"]["state"] == "connected"
        })
    });
    let took = killed.elapsed();
    assert!(
        moved.is_ok(),
        "no failover: {}\n{}",
        mh_status(&lab).map(|s| s.to_string()).unwrap_or_default(),
        lab.logs()
    );
    // Seen down within a keepalive and a path timeout, then the wait, then one handshake.
    assert!(
        took < KEEPALIVE + FAILOVER_AFTER + Duration::from_secs(3),
        "the failover took {took:?}"
    );
    println!("failover: connected to the second anchor {took:?} after the first died");

    // The connection through the dead anchor is reset, not left hanging.
    let ended = held.wait_with_timeout(Duration::from_secs(5));
    assert!(
        ended.is_some_and(|s| !s.success()),
        "the held connection: {ended:?}: {}",
        held.log()
    );
    assert!(held.log().contains("reset"), "{}", held.log());

    // The TUN took the second anchor's address, and new connections leave through it.
    let tun_address = || {
        lab.mh()
            .run_stdout(&["ip", "-4", "-o", "addr", "show", "dev", MH_TUN])
            .unwrap_or_default()
    };
    let readdressed = wait_for("the TUN's new address", Duration::from_secs(2), || {
        tun_address().contains(&MH_VIRTUAL2_V4.to_string())
    });
    assert!(readdressed.is_ok(), "{}", tun_address());
    let seen = lab.whoami_via(None, Family::V4).expect("whoami");
    assert_eq!(seen, IpAddr::V4(AN2_V4), "{}", lab.logs());
    let got = lab.download("mid.bin").run().expect("curl");
    assert!(got.success(), "{}\n{}", got.log, lab.logs());
    assert_eq!(got.sha256.as_deref(), http.sha256("mid.bin"));

    let status = mh_status(&lab).expect("status");
    let active = &status["session"]["active_anchor"];
    assert_eq!(active["index"], 1, "{status}");
    assert_eq!(active["failed_over_from"], first.as_str(), "{status}");
    assert!(
        active["note"]
            .as_str()
            .is_some_and(|n| n.contains(&format!("failed over from {first}"))),
        "{status}"
    );
    assert!(an2.is_running() && upmt.mh.is_running());
}
