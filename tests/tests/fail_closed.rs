//! End to end: the mobile host's routing fails closed and repairs itself. With real `upmt-an`
//! and `upmt-mh` in the lab: a rule deleted under the running daemon is back within a second
//! and the session carries on; after `kill -9` a tunnelled app's traffic finds no path (not the
//! clear one) until `upmt-mh stop` removes what the killed daemon left. Needs root; each test
//! builds its own lab.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use upmt_tests::deploy::AN_PORT;
use upmt_tests::topology::{AN_V4, CH_V4, MH_CELL_IF, MH_WIFI_IF, RWIFI_WAN_V4};
use upmt_tests::{DeployOptions, Deployment, Family, Lab, bin_path, wait_for};

fn capture_rule(lab: &Lab) -> bool {
    lab.mh()
        .run_stdout(&["ip", "rule"])
        .is_ok_and(|r| r.contains("5550:\tnot from all fwmark 0x5550 lookup 5550"))
}

#[test]
fn a_deleted_rule_is_back_within_a_second_and_a_killed_daemon_leaves_no_clear_path() {
    let lab = Lab::new("failclosed").unwrap_or_else(|e| panic!("building the lab: {e}"));
    let upmt = Deployment::start(&lab, &DeployOptions::default())
        .unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    assert_eq!(
        lab.whoami_via(None, Family::V4).expect("whoami"),
        IpAddr::V4(AN_V4)
    );

    // Someone (netd, an admin) deletes the capture rule: the daemon puts it back.
    assert!(capture_rule(&lab));
    lab.mh()
        .run(&["ip", "rule", "del", "pref", "5550"])
        .expect("delete the rule");
    let deleted = Instant::now();
    while !capture_rule(&lab) && deleted.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = deleted.elapsed();
    println!(
        "capture rule back {} ms after its deletion",
        took.as_millis()
    );
    assert!(capture_rule(&lab), "not restored:\n{}", upmt.logs());
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The same session carries on.
    assert_eq!(
        lab.whoami_via(None, Family::V4).expect("whoami"),
        IpAddr::V4(AN_V4)
    );
    assert!(
        upmt.mh.log().contains("put back"),
        "the daemon says what it repaired:\n{}",
        upmt.mh.log()
    );

    // kill -9: the TUN is gone with the process, the rules stay, and the path with them.
    upmt.mh.signal(libc::SIGKILL);
    assert!(upmt.mh.wait_with_timeout(Duration::from_secs(5)).is_some());
    let ch = CH_V4.to_string();
    let route = lab.mh().run(&["ip", "route", "get", &ch]);
    assert!(route.is_err(), "a path without the daemon: {route:?}");
    assert!(lab.whoami_via(None, Family::V4).is_err(), "left in clear");
    // The tunnel's own sockets' mark still leaves by the uplink.
    let marked = lab
        .mh()
        .run_stdout(&["ip", "route", "get", &ch, "mark", "0x5550"])
        .expect("the daemon's mark keeps its path");
    assert!(marked.contains(&format!("dev {MH_WIFI_IF}")), "{marked}");

    let stop = upmt.mh_stop().expect("upmt-mh stop");
    assert!(stop.starts_with("removed "), "{stop}");
    assert!(
        !lab.mh()
            .run_stdout(&["ip", "rule"])
            .expect("ip rule")
            .contains("5550")
    );
    // Without upmt the host is back on its own routes: the CH sees the Wi-Fi NAT.
    assert_eq!(
        lab.whoami_via(None, Family::V4).expect("whoami"),
        IpAddr::V4(RWIFI_WAN_V4)
    );
}

/// uid 4242 bypasses the tunnel; everything else is tunnelled.
const BYPASS_POLICY: &str = "version = 1\n[[rule]]\nuid = 4242\naction = \"bypass\"\n";

#[test]
fn before_the_first_handshake_a_tunnelled_app_has_no_path_and_a_bypass_app_still_works() {
    let lab = Lab::new("failstart").unwrap_or_else(|e| panic!("building the lab: {e}"));
    let options = DeployOptions {
        mh_policy: Some(BYPASS_POLICY.to_owned()),
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    let http = lab.start_http_server().expect("http server");
    // A clean stop removes the routing; then the anchor becomes unreachable, and the MH starts
    // again: it must capture traffic from its first moment, before any handshake succeeds.
    upmt.mh.signal(libc::SIGTERM);
    assert!(upmt.mh.wait_with_timeout(Duration::from_secs(10)).is_some());
    lab.mh()
        .add_drop_table(
            "anchor",
            &format!("udp sport {AN_PORT} drop"),
            &format!("udp dport {AN_PORT} drop"),
        )
        .expect("the anchor unreachable");
    // Counts what leaves the uplinks toward the CH from anyone but the bypass uid.
    let ruleset = format!(
        "table inet upmt-lab-leak {{\n counter leaked {{}}\n\
         chain post {{ type filter hook postrouting priority 300; \
         oifname {{ \"{MH_WIFI_IF}\", \"{MH_CELL_IF}\" }} ip daddr {CH_V4} meta skuid != 4242 \
         counter name leaked; }}\n}}\n"
    );
    lab.mh()
        .run_input(&["nft", "-f", "-"], ruleset.as_bytes())
        .expect("a leak counter");
    let mh = lab
        .mh()
        .command(&[
            bin_path("upmt-mh").expect("upmt-mh").as_os_str(),
            "run".as_ref(),
            "--config".as_ref(),
            upmt.mh_config.as_os_str(),
        ])
        .label("upmt-mh-unreachable")
        .spawn()
        .expect("starting upmt-mh again");
    wait_for("the capture rules", Duration::from_secs(10), || {
        capture_rule(&lab)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mh.log()));

    let url = http.url(Family::V4, "whoami");
    let tunnelled = lab
        .mh()
        .run_stdout(&["curl", "-sS", "--fail", "--max-time", "3", &url]);
    assert!(
        tunnelled.is_err(),
        "a tunnelled app got through: {tunnelled:?}"
    );
    let bypass = lab
        .mh()
        .run_stdout(&[
            "setpriv",
            "--reuid",
            "4242",
            "--regid",
            "4242",
            "--clear-groups",
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "10",
            &url,
        ])
        .unwrap_or_else(|e| panic!("the bypass app: {e}\n{}", mh.log()));
    assert_eq!(bypass.trim(), RWIFI_WAN_V4.to_string(), "{}", mh.log());
    let leaked = lab
        .mh()
        .nft_counter("inet", "upmt-lab-leak", "leaked")
        .expect("the leak counter");
    assert_eq!(
        leaked.packets, 0,
        "tunnelled traffic left in clear: {leaked:?}"
    );
    assert!(mh.is_running(), "{}", mh.log());
    assert!(
        !mh.log().contains("connected to the anchor"),
        "the anchor was reachable after all:\n{}",
        mh.log()
    );
}
