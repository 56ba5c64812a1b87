//! End to end, per application: real `upmt-an` and `upmt-mh` in the lab, with a policy, and
//! real programs started under chosen app names (`exec -a com.example.video curl ...`). The
//! interface counters of the MH's two uplinks prove which tunnel carried each app's bytes;
//! sha256 proves the bytes. Needs root; each test builds its own lab.

use std::net::IpAddr;
use std::time::Duration;

use upmt_tests::topology::{MH_CELL_IF, MH_WIFI_IF, RWIFI_WAN_V4};
use upmt_tests::{BIG_FILE_SIZE, DeployOptions, Deployment, Family, Lab, LinkCounters};

/// Video on wifi, the store on cell, uid 4242 bypassed, the rest on wifi (shared with the core's
/// scenario tests).
const POLICY: &str = include_str!("../../mobile-host/core/tests/fixtures/two-apps-policy.toml");

fn lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"))
}

fn deploy(lab: &Lab) -> Deployment<'_> {
    let options = DeployOptions {
        mh_policy: Some(POLICY.to_owned()),
        ..DeployOptions::default()
    };
    Deployment::start(lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"))
}

fn counters(lab: &Lab) -> (LinkCounters, LinkCounters) {
    (
        lab.mh().link_counters(MH_WIFI_IF).expect("wifi counters"),
        lab.mh().link_counters(MH_CELL_IF).expect("cell counters"),
    )
}

#[test]
fn two_apps_download_at_once_one_over_wifi_and_one_over_cell() {
    let lab = lab("perapp_split");
    let upmt = deploy(&lab);
    let http = lab.start_http_server().expect("http server");
    let (wifi0, cell0) = counters(&lab);

    let mut running = Vec::new();
    for app in ["com.example.video", "com.example.store"] {
        let download = lab
            .download("big.bin")
            .app(app)
            .label(app)
            .start()
            .unwrap_or_else(|e| panic!("starting {app}: {e}"));
        running.push((app, download));
    }
    for (app, download) in running {
        let got = download
            .wait(Duration::from_secs(130))
            .unwrap_or_else(|e| panic!("{app}: {e}\n{}", upmt.logs()));
        assert!(got.success(), "{app}: {}\n{}", got.log, upmt.logs());
        assert_eq!(
            got.sha256.as_deref(),
            http.sha256("big.bin"),
            "{app}'s download"
        );
    }
    let (wifi1, cell1) = counters(&lab);
    let wifi = wifi1.since(&wifi0);
    let cell = cell1.since(&cell0);
    let size = BIG_FILE_SIZE as u64;
    // Each uplink carried one download (a little more, encrypted), not two.
    assert!(
        wifi.rx_bytes >= size && wifi.rx_bytes < size * 3 / 2,
        "wifi rx {wifi:?}\n{}",
        upmt.logs()
    );
    assert!(
        cell.rx_bytes >= size && cell.rx_bytes < size * 3 / 2,
        "cell rx {cell:?}\n{}",
        upmt.logs()
    );
    let log = upmt.mh.log();
    assert!(
        log.contains("com.example.video"),
        "the MH logged the video app's flow"
    );
    assert!(upmt.mh.is_running() && upmt.an.is_running());
}

#[test]
fn a_bypass_app_reaches_the_ch_directly_and_others_through_the_anchor() {
    let lab = lab("perapp_bypass");
    let upmt = deploy(&lab);
    let http = lab.start_http_server().expect("http server");
    let url = http.url(Family::V4, "whoami");
    let whoami = |prefix: &[&str]| -> IpAddr {
        let mut args: Vec<&str> = prefix.to_vec();
        args.extend(["curl", "-sS", "--fail", "--max-time", "10", &url]);
        let body = lab
            .mh()
            .run_stdout(&args)
            .unwrap_or_else(|e| panic!("whoami {prefix:?}: {e}\n{}", upmt.logs()));
        body.trim().parse().expect("an address")
    };
    let bypass = whoami(&[
        "setpriv",
        "--reuid",
        "4242",
        "--regid",
        "4242",
        "--clear-groups",
    ]);
    assert_eq!(bypass, IpAddr::V4(RWIFI_WAN_V4), "{}", upmt.logs());
    let tunnelled = whoami(&[]);
    assert_eq!(
        tunnelled,
        IpAddr::V4(upmt_tests::topology::AN_V4),
        "{}",
        upmt.logs()
    );
}

#[test]
fn an_app_whose_only_uplink_is_down_gets_no_connection_and_leaks_nothing() {
    let lab = lab("perapp_block");
    let upmt = deploy(&lab);
    lab.start_http_server().expect("http server");
    lab.mh().set_link(MH_CELL_IF, false).expect("cell down");
    // Let the daemon see the uplink go (link re-check every few seconds, path timeout).
    upmt_tests::wait_for(
        "the MH to report cell lost",
        Duration::from_secs(15),
        || upmt.mh.log().contains("uplink lost") || upmt.mh.log().contains("path down"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", upmt.logs()));

    let attempt = |app: &str| {
        let got = lab
            .download("mid.bin")
            .app(app)
            .connect_timeout(Duration::from_secs(5))
            .max_time(Duration::from_secs(10))
            .discard()
            .count(MH_WIFI_IF)
            .run()
            .expect("run curl");
        (got.success(), got.counters(MH_WIFI_IF))
    };
    // The control: an app allowed on wifi downloads there.
    let (ok, control) = attempt("com.example.video");
    assert!(ok, "the control app must download\n{}", upmt.logs());
    assert!(control.rx_bytes > 1_000_000, "control {control:?}");

    let (ok, used) = attempt("com.example.store");
    assert!(!ok, "the store app must get no connection\n{}", upmt.logs());
    // Tunnel keepalives and probes only: far less than any of its bytes would take.
    assert!(
        used.tx_bytes < 2_000 && used.rx_bytes < 2_000,
        "wifi carried {used:?} while the blocked app tried\n{}",
        upmt.logs()
    );
    let log = upmt.mh.log();
    assert!(
        log.contains("flow blocked"),
        "the MH logged the block\n{log}"
    );
}

#[test]
fn a_wifi_only_app_stops_when_wifi_goes_and_resumes_when_it_returns() {
    const WIFI_ONLY: &str = r#"version = 1

[[rule]]
app = "com.example.store"
uplinks = ["wifi"]

[default]
uplinks = ["wifi", "cell"]
"#;
    let lab = lab("perapp_resume");
    let options = DeployOptions {
        mh_policy: Some(WIFI_ONLY.to_owned()),
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    lab.start_http_server().expect("http server");
    let fetch = |app: &str| {
        lab.download("small.txt")
            .app(app)
            .max_time(Duration::from_secs(3))
            .discard()
            .run()
            .expect("running curl")
            .success()
    };
    assert!(
        fetch("com.example.store"),
        "store over wifi\n{}",
        upmt.logs()
    );

    lab.mh().set_link(MH_WIFI_IF, false).expect("wifi down");
    std::thread::sleep(Duration::from_millis(1500));
    let (_, cell0) = counters(&lab);
    assert!(
        !fetch("com.example.store"),
        "the store reached the CH without wifi\n{}",
        upmt.logs()
    );
    let (_, cell1) = counters(&lab);
    // Only probes crossed cell while the store tried (a few hundred bytes a second), not its
    // connection: the small file alone is 4 KiB.
    let leaked = cell1.since(&cell0);
    assert!(
        leaked.tx_bytes < 3000,
        "cell tx while the store was blocked: {leaked:?}"
    );
    // Other apps keep working over cell meanwhile.
    assert!(
        fetch("com.example.browser"),
        "default app over cell\n{}",
        upmt.logs()
    );

    lab.mh().set_link(MH_WIFI_IF, true).expect("wifi up");
    let (wifi0, _) = counters(&lab);
    upmt_tests::wait_for(
        "the store to work again over wifi",
        Duration::from_secs(20),
        || fetch("com.example.store"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", upmt.logs()));
    let (wifi1, _) = counters(&lab);
    assert!(
        wifi1.since(&wifi0).rx_bytes >= 4096,
        "store bytes came over wifi"
    );
}
