//! End to end in the lab's android profile ([`upmt_tests::android`]): real `upmt-an` and
//! `upmt-mh` with `platform = "android"` on a phone-shaped MH (wlan0, rmnet_data0, an IMS-like
//! rmnet_data1, netd's rules and per-interface tables, no `lookup main`, a tethered client, apps
//! under their own uids). Interface and nftables counters prove where traffic went. Needs
//! root; each test builds its own lab.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use upmt_tests::android::{AndroidLab, BROWSER, IMS, RMNET, STORE, VIDEO, WLAN};
use upmt_tests::deploy::{mh_status, tunnel};
use upmt_tests::topology::{AN_V4, AN_V6, CH_V4, RCELL_WAN_V4, RWIFI_WAN_V4};
use upmt_tests::{Deployment, Family, MID_FILE_SIZE, wait_for};

fn lab(name: &str) -> AndroidLab {
    AndroidLab::new(name).unwrap_or_else(|e| panic!("building the android lab: {e}"))
}

#[test]
fn apps_split_over_wlan0_and_rmnet_data0_while_bypass_marked_and_tethered_traffic_stay_out_of_the_tun()
 {
    let lab = lab("android-split");
    // As when a phone boots, the IMS network is up before the internet one: rmnet_data0 has
    // no default route yet, so `rmnet_data*` can only try rmnet_data1.
    lab.set_default_routes(1, false)
        .expect("rmnet_data0 not yet routed");
    // A path that comes back is used after its hold-down: a short one keeps the test short.
    let mut options = lab.deploy_options();
    options.mh_extra.push_str("[probe]\nhold_down_ms = 300\n");
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    let mh = lab.mh();
    let mut last = Value::Null;
    let tried = wait_for(
        "the cell uplink on the IMS interface",
        Duration::from_secs(10),
        || {
            last = mh_status(&lab).unwrap_or(Value::Null);
            tunnel(&last, "cell").is_some_and(|t| t["interface"] == IMS)
        },
    );
    assert!(tried.is_ok(), "{last:#}\n{}", upmt.logs());

    // The internet network connects: the cell uplink leaves the silent IMS interface for it
    // once its trial there ends.
    lab.set_default_routes(1, true).expect("rmnet_data0 routed");
    let routed = Instant::now();
    let mut up_on_ims = false;
    let settled = wait_for(
        "the cell uplink on rmnet_data0",
        Duration::from_secs(15),
        || {
            last = mh_status(&lab).unwrap_or(Value::Null);
            let Some(cell) = tunnel(&last, "cell") else {
                return false;
            };
            up_on_ims |= cell["interface"] == IMS && cell["state"] == "up";
            cell["interface"] == RMNET && cell["state"] == "up"
        },
    );
    assert!(settled.is_ok(), "{last:#}\n{}", upmt.logs());
    println!(
        "cell uplink up on {RMNET} {} ms after its default route appeared",
        routed.elapsed().as_millis()
    );
    assert!(!up_on_ims, "the anchor never answers through {IMS}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        tunnel(&last, "wifi").map(|t| t["interface"].clone()),
        Some(Value::from(WLAN)),
        "{last:#}"
    );

    // Two apps, by their uids in packages.list, each on its uplink.
    for (app, on, off) in [(VIDEO, WLAN, RMNET), (STORE, RMNET, WLAN)] {
        let (on0, off0) = (
            mh.link_counters(on).expect("counters"),
            mh.link_counters(off).expect("counters"),
        );
        let out = lab.app_download(&app, "mid.bin").expect("curl");
        assert!(
            out.status.success(),
            "{}: {}\n{}",
            app.package,
            String::from_utf8_lossy(&out.stderr),
            upmt.logs()
        );
        let on = mh.link_counters(on).expect("counters").since(&on0);
        let off = mh.link_counters(off).expect("counters").since(&off0);
        assert!(
            on.rx_bytes >= MID_FILE_SIZE as u64 && off.rx_bytes < MID_FILE_SIZE as u64 / 4,
            "{}: {on:?} on its uplink, {off:?} on the other\n{}",
            app.package,
            upmt.logs()
        );
        assert_eq!(
            lab.app_whoami(&app).expect("whoami"),
            IpAddr::V4(AN_V4),
            "{} is tunnelled",
            app.package
        );
    }

    // The bypass app leaves by netd's default network, the clear path.
    let tun0 = lab.tun_packets();
    assert_eq!(
        lab.app_whoami(&BROWSER).expect("the browser's whoami"),
        IpAddr::V4(RWIFI_WAN_V4)
    );
    assert_eq!(lab.tun_packets(), tun0, "the bypass app entered the TUN");

    // Explicitly selected traffic (wlan0's netId with 0x10000, as NetworkMonitor's probes carry)
    // is netd's; the same ping unmarked is tunnelled, so the TUN's counter does count.
    let ch = CH_V4.to_string();
    let ping = |mark: Option<&str>| {
        let mut args = vec!["ping", "-c", "3", "-i", "0.2", "-W", "2"];
        if let Some(m) = mark {
            args.extend(["-m", m]);
        }
        args.push(&ch);
        let (tun0, wlan0) = (lab.tun_packets(), mh.link_counters(WLAN).expect("counters"));
        let out = mh.run(&args);
        assert!(out.is_ok(), "{args:?}: {out:?}");
        (
            lab.tun_packets() - tun0,
            mh.link_counters(WLAN)
                .expect("counters")
                .since(&wlan0)
                .tx_packets,
        )
    };
    let mark = upmt_tests::netd::explicit_mark(100).to_string();
    let (tun, wlan) = ping(Some(&mark));
    assert!(tun == 0 && wlan >= 3, "marked: tun {tun}, wlan0 {wlan}");
    let (tun, _) = ping(None);
    assert!(tun >= 3, "unmarked: tun {tun}");

    // A tethered client's traffic is routed by netd's 21000 rule and NATed on rmnet_data0.
    let (tun0, rmnet0) = (
        lab.tun_packets(),
        mh.link_counters(RMNET).expect("counters"),
    );
    assert_eq!(
        lab.tether()
            .whoami(None, Family::V4)
            .expect("the tethered client's whoami"),
        IpAddr::V4(RCELL_WAN_V4)
    );
    let rmnet = mh.link_counters(RMNET).expect("counters").since(&rmnet0);
    assert_eq!(
        lab.tun_packets(),
        tun0,
        "the tethered client entered the TUN"
    );
    assert!(rmnet.tx_packets >= 3, "{rmnet:?}");
}

#[test]
fn netd_rewriting_its_rules_mid_download_leaves_the_connection_and_our_rules_are_back_within_a_second()
 {
    let lab = lab("android-flush");
    let upmt = Deployment::start(&lab, &lab.deploy_options())
        .unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    let before = lab.rules().expect("ip rule");
    let ours = lab.band_rules().expect("our rules");
    assert!(ours.iter().any(|r| r.starts_with("14006:")), "{before}");

    // About three seconds of video over wlan0.
    lab.rwifi().tbf("lan", 6_000_000).expect("tbf");
    let download = lab
        .start_app_download(&VIDEO, "mid.bin")
        .expect("the video's download");
    wait_for(
        "the download's first bytes",
        Duration::from_secs(10),
        || download.bytes() > 256 * 1024 || !download.is_running(),
    )
    .expect("first bytes");

    let (gap, back) = std::thread::scope(|s| {
        // How long the file stops growing, sampled every 5 ms until curl ends.
        let sampler = s.spawn(|| {
            let (mut last_bytes, mut last_change, mut gap) = (0, Instant::now(), Duration::ZERO);
            while download.is_running() {
                let bytes = download.bytes();
                if bytes != last_bytes {
                    gap = gap.max(last_change.elapsed());
                    (last_bytes, last_change) = (bytes, Instant::now());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            gap
        });
        // netd restarts: every rule flushed, its own written again; ours come back by themselves.
        lab.flush_rules().expect("flush");
        let flushed = Instant::now();
        let netd = s.spawn(|| lab.write_netd_rules());
        let mut back = None;
        while flushed.elapsed() < Duration::from_secs(3) {
            if lab.band_rules().is_ok_and(|r| r == ours) {
                back = Some(flushed.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        netd.join()
            .expect("netd's thread")
            .expect("netd's rules written");
        (sampler.join().expect("sampler"), back)
    });
    let back = back.unwrap_or_else(|| {
        panic!(
            "our rules not back:\n{}\n{}",
            lab.rules().unwrap_or_default(),
            upmt.logs()
        )
    });
    println!(
        "rules back {} ms after the flush; longest download gap {} ms",
        back.as_millis(),
        gap.as_millis()
    );
    assert!(back < Duration::from_secs(1), "{back:?}");
    let done = download
        .wait(Duration::from_secs(30))
        .expect("the download");
    assert!(done.success && done.intact, "{}\n{}", done.log, upmt.logs());
    assert_eq!(done.num_connects, Some(1), "{}", done.log);
    assert_eq!(
        lab.rules().expect("ip rule"),
        before,
        "the layout is whole again"
    );
}

/// What fail-closed means while there is no session: a tunnelled app gets no path out (its
/// curl fails and no packet of it leaves on wlan0 or rmnet_data0), the bypass app keeps its.
fn assert_fail_closed(lab: &AndroidLab, when: &str) {
    let clear0 = lab.clear_app_packets().expect("counter");
    for app in [VIDEO, STORE] {
        let out = lab.app_download(&app, "small.txt").expect("curl");
        assert!(!out.status.success(), "{} got through {when}", app.package);
    }
    assert_eq!(
        lab.clear_app_packets().expect("counter"),
        clear0,
        "a tunnelled app's packets left in clear {when}"
    );
    assert_eq!(
        lab.app_whoami(&BROWSER)
            .unwrap_or_else(|e| panic!("the bypass app {when}: {e}")),
        IpAddr::V4(RWIFI_WAN_V4)
    );
}

#[test]
fn tunnelled_apps_have_no_clear_path_before_the_handshake_or_after_a_kill_and_stop_leaves_netds_rules_alone()
 {
    let lab = lab("android-closed");
    let netd_only = lab.rules().expect("ip rule");
    lab.count_clear_app_packets().expect("counter");
    // The anchor answers nothing until the checks are done.
    let port = upmt_tests::deploy::AN_PORT;
    lab.an()
        .add_drop_table("hold", &format!("udp dport {port} drop"), "accept")
        .expect("holding the anchor");
    let options = lab.deploy_options();
    let upmt = std::thread::scope(|s| {
        let starting = s.spawn(|| Deployment::start(&lab, &options));
        wait_for("the daemon's rules", Duration::from_secs(15), || {
            lab.band_rules()
                .is_ok_and(|r| r.iter().any(|l| l.starts_with("14006:")))
        })
        .expect("rules at start");
        assert_fail_closed(&lab, "before the first handshake");
        lab.an().remove_disturbance("hold").expect("releasing");
        starting
            .join()
            .expect("the deploying thread")
            .unwrap_or_else(|e| panic!("deploying upmt: {e}"))
    });
    assert_eq!(lab.app_whoami(&VIDEO).expect("whoami"), IpAddr::V4(AN_V4));

    upmt.mh.signal(libc::SIGKILL);
    assert!(upmt.mh.wait_with_timeout(Duration::from_secs(5)).is_some());
    assert_fail_closed(&lab, "after a SIGKILL");

    let stop = upmt.mh_stop().expect("upmt-mh stop");
    assert!(stop.starts_with("removed "), "{stop}");
    assert_eq!(lab.rules().expect("ip rule"), netd_only, "{stop}");
    for family in ["-4", "-6"] {
        let table = lab
            .mh()
            .run_stdout(&["ip", family, "route", "show", "table", "555"])
            .expect("table 555");
        assert_eq!(table.trim(), "", "{family}");
    }
    // Without upmt the video app goes by netd's default network, and the counter sees it.
    assert_eq!(
        lab.app_whoami(&VIDEO).expect("whoami"),
        IpAddr::V4(RWIFI_WAN_V4)
    );
    assert!(lab.clear_app_packets().expect("counter").packets > 0);
}

#[test]
fn an_ipv6_only_rmnet_data0_carries_the_stores_flows_to_a_dual_stack_anchor() {
    let lab = lab("android-v6only");
    // As under 464XLAT: the cellular interface has IPv6 only (the CLAT's IPv4 cannot carry a
    // socket bound to rmnet_data0).
    lab.mh()
        .run(&["ip", "-4", "addr", "flush", "dev", RMNET])
        .expect("flushing rmnet_data0's IPv4");
    let port = upmt_tests::deploy::AN_PORT;
    let mut options = lab.deploy_options();
    options.mh_anchor = Some(format!("[\"{AN_V4}:{port}\", \"[{AN_V6}]:{port}\"]"));
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    let mut last = Value::Null;
    let settled = wait_for("the cell uplink over IPv6", Duration::from_secs(15), || {
        last = mh_status(&lab).unwrap_or(Value::Null);
        tunnel(&last, "cell").is_some_and(|t| {
            t["interface"] == RMNET
                && t["state"] == "up"
                && t["local"]
                    .as_str()
                    .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
                    .is_some_and(|a| a.is_ipv6())
        })
    });
    assert!(settled.is_ok(), "{last:#}\n{}", upmt.logs());

    let rmnet0 = lab.mh().link_counters(RMNET).expect("counters");
    let out = lab.app_download(&STORE, "mid.bin").expect("curl");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        upmt.logs()
    );
    let rmnet = lab
        .mh()
        .link_counters(RMNET)
        .expect("counters")
        .since(&rmnet0);
    assert!(rmnet.rx_bytes >= MID_FILE_SIZE as u64, "{rmnet:?}");
}
