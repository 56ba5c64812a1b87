//! End to end, the policy's choices by measurement: `select = "lowest_rtt"` with
//! `move_existing` when Wi-Fi's queue fills, `avoid_metered` with a metered cellular uplink, and
//! `spread` over two shaped uplinks. Real `upmt-an` and `upmt-mh` in the lab, apps started under
//! chosen names (`exec -a`); `upmt flows --json` and the interface counters of the MH's uplinks
//! say which tunnel carried what. Needs root; each test builds its own lab.

use std::time::{Duration, Instant};

use serde_json::Value;
use upmt_tests::topology::{CH_V4, IPERF3_PORT, MH_CELL_IF, MH_WIFI_IF};
use upmt_tests::{DeployOptions, Deployment, Lab, LinkCounters, MID_FILE_SIZE, bin_path, wait_for};

fn lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"))
}

fn deploy<'a>(lab: &'a Lab, policy: &str, metered: &[&str]) -> Deployment<'a> {
    let options = DeployOptions {
        mh_policy: Some(policy.to_owned()),
        metered: metered.iter().map(|s| (*s).to_owned()).collect(),
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    upmt.wait_connected(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connecting: {e}\n{}", upmt.logs()));
    upmt
}

/// `upmt <args> --json` on the lab's MH.
fn upmt_json(lab: &Lab, args: &[&str]) -> Value {
    let bin = bin_path("upmt").expect("upmt binary");
    let socket = lab.dir().join("mh.sock");
    let mut argv: Vec<String> = vec![
        bin.display().to_string(),
        "--socket".into(),
        socket.display().to_string(),
    ];
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    argv.push("--json".into());
    let out = lab.mh().run(&argv).expect("upmt");
    serde_json::from_slice(&out.stdout).expect("upmt --json prints JSON")
}

/// The uplink of every live flow of `app`.
fn uplinks_of(lab: &Lab, app: &str) -> Vec<String> {
    let flows = upmt_json(lab, &["flows", "--app", app]);
    flows["flows"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|f| f["uplink"].as_str().unwrap_or("-").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn counters(lab: &Lab, ifname: &str) -> LinkCounters {
    lab.mh().link_counters(ifname).expect("link counters")
}

fn rtt_ms(lab: &Lab, uplink: &str) -> Option<f64> {
    let status = upmt_json(lab, &["status"]);
    status["tunnels"]
        .as_array()?
        .iter()
        .find(|t| t["uplink"] == uplink)?["rtt_us"]
        .as_f64()
        .map(|us| us / 1000.0)
}

const RTT_POLICY: &str = r#"version = 1

[[rule]]
app = "call"
uplinks = ["wifi", "cell"]
select = "lowest_rtt"
move_existing = true
"#;

#[test]
fn a_lowest_rtt_app_leaves_wifi_when_its_queue_fills_and_does_not_come_back_while_it_lasts() {
    let lab = lab("select_rtt");
    let upmt = deploy(&lab, RTT_POLICY, &[]);
    let http = lab.start_http_server().expect("http server");
    // Both paths measured, equal within the margin: the rule's first uplink, Wi-Fi.
    std::thread::sleep(Duration::from_secs(1));
    // A slow download that lasts the whole test: the running flow that must move.
    let url = format!("http://{CH_V4}:{}/big.bin", http.port);
    let call = lab
        .mh()
        .command(&[
            "curl",
            "-sS",
            "--limit-rate",
            "100k",
            "-o",
            "/dev/null",
            &url,
        ])
        .argv0("call")
        .label("call-curl")
        .spawn()
        .expect("curl");
    wait_for("the call's flow", Duration::from_secs(5), || {
        !uplinks_of(&lab, "call").is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", upmt.logs()));
    assert_eq!(uplinks_of(&lab, "call"), ["wifi"], "{}", upmt.logs());

    // Another device's upload on the same Wi-Fi fills a deep, slow queue at the router: every
    // packet of the Wi-Fi tunnel waits behind it (the kernel has no netem; this is real
    // queueing delay). Cellular is untouched.
    lab.rwifi()
        .run(&[
            "tc", "qdisc", "replace", "dev", "wan", "root", "tbf", "rate", "4mbit", "burst",
            "16kb", "latency", "400ms",
        ])
        .expect("tbf");
    let iperf = lab.start_iperf3_server().expect("iperf3 server");
    let port = IPERF3_PORT.to_string();
    let bulk = lab
        .rwifi()
        .command(&[
            "iperf3",
            "-c",
            &iperf.v4.ip().to_string(),
            "-p",
            &port,
            "-t",
            "30",
        ])
        .label("wifi-bulk")
        .spawn()
        .expect("iperf3 client");
    let moved_by = Instant::now();
    wait_for(
        "the call's flow to move to cellular",
        Duration::from_secs(15),
        || uplinks_of(&lab, "call") == ["cell"],
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: flows {:?}, rtt wifi {:?} ms cell {:?} ms\n{}",
            uplinks_of(&lab, "call"),
            rtt_ms(&lab, "wifi"),
            rtt_ms(&lab, "cell"),
            upmt.logs()
        )
    });
    let (wifi, cell) = (rtt_ms(&lab, "wifi"), rtt_ms(&lab, "cell"));
    eprintln!(
        "moved after {:?}: rtt wifi {wifi:?} ms, cell {cell:?} ms",
        moved_by.elapsed()
    );
    assert!(
        wifi.unwrap_or(0.0) > cell.unwrap_or(f64::MAX) + 10.0,
        "wifi {wifi:?} ms, cell {cell:?} ms"
    );
    let log = upmt.mh.log();
    assert!(
        log.contains("select: the rule's choice changed"),
        "the switch is logged\n{log}"
    );

    // A new flow of the app goes to cellular; nothing flips back while the queue lasts.
    let small = lab
        .mh()
        .command(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            &format!("http://{CH_V4}:{}/mid.bin", http.port),
        ])
        .argv0("call")
        .label("call-new")
        .run();
    assert!(small.is_ok(), "{small:?}\n{}", upmt.logs());
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let on = uplinks_of(&lab, "call");
        assert!(
            !on.is_empty() && on.iter().all(|u| u == "cell"),
            "every flow of the call stays on cellular: {on:?}\n{}",
            upmt.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(bulk.is_running(), "the Wi-Fi bulk lasted the test");
    drop(call);
    drop(bulk);
}

/// Cellular listed first: only `avoid_metered` keeps the apps off it while Wi-Fi is up.
const METERED_POLICY: &str = r#"version = 1

[[rule]]
app = "saver"
uplinks = ["cell", "wifi"]
avoid_metered = true

[[rule]]
app = "strict-saver"
uplinks = ["cell", "wifi"]
avoid_metered = true
when_none = "block"
"#;

/// Downloads mid.bin as `app`; whether curl succeeded.
fn fetch_as(lab: &Lab, app: &str) -> bool {
    lab.download("mid.bin")
        .app(app)
        .label(app)
        .connect_timeout(Duration::from_secs(3))
        .max_time(Duration::from_secs(20))
        .run()
        .is_ok_and(|d| d.success())
}

#[test]
fn an_avoid_metered_app_stays_off_metered_cellular_until_wifi_is_gone() {
    let lab = lab("select_metered");
    let upmt = deploy(&lab, METERED_POLICY, &["cell"]);
    lab.start_http_server().expect("http server");
    let status = upmt_json(&lab, &["status"]);
    let metered: Vec<(String, bool)> = status["tunnels"]
        .as_array()
        .expect("tunnels")
        .iter()
        .map(|t| {
            (
                t["uplink"].as_str().unwrap_or("").to_owned(),
                t["metered"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        metered,
        [("wifi".to_owned(), false), ("cell".to_owned(), true)]
    );

    let cell0 = counters(&lab, MH_CELL_IF);
    let wifi0 = counters(&lab, MH_WIFI_IF);
    for app in ["saver", "strict-saver"] {
        assert!(fetch_as(&lab, app), "{app} over wifi\n{}", upmt.logs());
    }
    let cell = counters(&lab, MH_CELL_IF).since(&cell0);
    let wifi = counters(&lab, MH_WIFI_IF).since(&wifi0);
    let size = MID_FILE_SIZE as u64;
    assert!(wifi.rx_bytes >= 2 * size, "wifi {wifi:?}");
    // Probes and keepalives only: a few kB, far from one file.
    assert!(
        cell.rx_bytes + cell.tx_bytes < size / 20,
        "cell carried app bytes: {cell:?}\n{}",
        upmt.logs()
    );

    lab.mh().set_link(MH_WIFI_IF, false).expect("wifi down");
    wait_for("wifi's tunnel down", Duration::from_secs(5), || {
        upmt_json(&lab, &["status"])["tunnels"][0]["state"] == "down"
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", upmt.logs()));
    let cell0 = counters(&lab, MH_CELL_IF);
    assert!(
        fetch_as(&lab, "saver"),
        "saver falls back to cell\n{}",
        upmt.logs()
    );
    let cell = counters(&lab, MH_CELL_IF).since(&cell0);
    assert!(cell.rx_bytes >= size, "cell {cell:?}");
    assert!(
        !fetch_as(&lab, "strict-saver"),
        "strict-saver is blocked on cell\n{}",
        upmt.logs()
    );
    let apps = upmt_json(&lab, &["apps"]);
    let strict = apps["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == "strict-saver")
        .unwrap_or_else(|| panic!("strict-saver listed though all its flows are blocked: {apps}"));
    assert!(strict["blocked"].as_u64().unwrap_or(0) >= 1, "{strict}");
    assert_eq!(strict["flows"], 0, "{strict}");
    assert_eq!(strict["avoid_metered"], true, "{strict}");
}

const SPREAD_POLICY: &str = r#"version = 1

[[rule]]
app = "downloader"
spread = true
"#;

const WIFI_RATE: u64 = 20_000_000;
const CELL_RATE: u64 = 10_000_000;

#[test]
fn a_spreading_app_uses_both_uplinks_at_once_and_gets_more_than_either_alone() {
    let lab = lab("select_spread");
    let upmt = deploy(&lab, SPREAD_POLICY, &[]);
    lab.start_http_server().expect("http server");
    lab.rwifi().tbf("lan", WIFI_RATE).expect("tbf wifi");
    lab.rcell().tbf("lan", CELL_RATE).expect("tbf cell");
    let mut running = Vec::new();
    for i in 0..8 {
        let d = lab
            .download("mid.bin")
            .app("downloader")
            .label(&format!("downloader-{i}"))
            .max_time(Duration::from_secs(30))
            .start()
            .expect("curl");
        running.push(d);
    }
    // The rate both uplinks carry together once the transfers are under way.
    std::thread::sleep(Duration::from_millis(1000));
    let (wifi0, cell0, t0) = (
        counters(&lab, MH_WIFI_IF),
        counters(&lab, MH_CELL_IF),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_millis(2000));
    let (wifi, cell) = (
        counters(&lab, MH_WIFI_IF).since(&wifi0),
        counters(&lab, MH_CELL_IF).since(&cell0),
    );
    let secs = t0.elapsed().as_secs_f64();
    let on = uplinks_of(&lab, "downloader");
    for d in running {
        let got = d.wait(Duration::from_secs(40)).expect("curl ended");
        assert!(got.success(), "{}\n{}", got.log, upmt.logs());
    }
    let bits = |c: &LinkCounters| c.rx_bytes as f64 * 8.0 / secs;
    let (wifi_bps, cell_bps) = (bits(&wifi), bits(&cell));
    eprintln!(
        "spread: wifi {:.1} Mbit/s, cell {:.1} Mbit/s, flows on {on:?}",
        wifi_bps / 1e6,
        cell_bps / 1e6
    );
    assert!(
        on.iter().any(|u| u == "wifi") && on.iter().any(|u| u == "cell"),
        "flows on both uplinks: {on:?}"
    );
    assert!(
        cell_bps > 0.3 * CELL_RATE as f64,
        "cell carried the app: {cell_bps}"
    );
    assert!(
        wifi_bps + cell_bps > 1.15 * WIFI_RATE as f64,
        "together {:.1} Mbit/s, more than wifi's {} alone",
        (wifi_bps + cell_bps) / 1e6,
        WIFI_RATE / 1_000_000
    );
}
