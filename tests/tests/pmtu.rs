//! End to end: path MTU per uplink. The cellular router's link toward the MH drops to 1280 in
//! the middle of a download over cell: the download still completes whole, `upmt status` shows
//! the cell tunnel's new MTU, and the MH's TUN follows it. Needs root; builds its own lab.
//!
//! The issue asks for a 256 MiB download; CI uses the 2 MiB `mid.bin`, shaped so it lasts a
//! couple of seconds: the MTU drop lands mid-transfer all the same.

use std::time::{Duration, Instant};

use serde_json::Value;
use upmt_tests::deploy::{MH_TUN, mh_status};
use upmt_tests::topology::MH_CELL_IF;
use upmt_tests::{DeployOptions, Deployment, Lab};

/// The cellular downlink rate: `mid.bin` then takes about two seconds.
const SHAPED_BITS_PER_SEC: u64 = 8_000_000;
/// When the MTU drops, after the download started.
const DROP_AFTER: Duration = Duration::from_millis(600);

/// The `mtu` of the tunnel of uplink `name` in a status reply.
fn tunnel_mtu(status: &Value, name: &str) -> Option<u64> {
    status["tunnels"]
        .as_array()?
        .iter()
        .find(|t| t["uplink"] == name)?
        .get("mtu")?
        .as_u64()
}

/// Polls `upmt status` until the cell tunnel's MTU satisfies `ok`; the last status seen.
fn wait_cell_mtu(lab: &Lab, timeout: Duration, ok: impl Fn(u64) -> bool) -> (bool, Value) {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = mh_status(lab).unwrap_or(Value::Null);
        if tunnel_mtu(&last, "cell").is_some_and(&ok) {
            return (true, last);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (false, last)
}

#[test]
fn a_download_survives_the_cell_path_mtu_dropping_to_1280_and_status_shows_it() {
    let lab = Lab::new("pmtu_drop").unwrap_or_else(|e| panic!("building the lab: {e}"));
    let upmt = Deployment::start(
        &lab,
        &DeployOptions {
            uplinks: vec![("cell".to_owned(), MH_CELL_IF.to_owned())],
            ..DeployOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    let (found, status) = wait_cell_mtu(&lab, Duration::from_secs(10), |m| m == 1500);
    assert!(found, "cell never proved 1500: {status}\n{}", upmt.logs());

    let http = lab.start_http_server().expect("http server");
    lab.rcell()
        .tbf("lan", SHAPED_BITS_PER_SEC)
        .expect("shaping cell");
    let curl = lab
        .download("mid.bin")
        .label("pmtu-curl")
        .start()
        .expect("curl");
    let t0 = Instant::now();
    while t0.elapsed() < DROP_AFTER && curl.is_running() {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(curl.is_running(), "the download ended before the MTU drop");
    lab.rcell()
        .ip(&["link", "set", "lan", "mtu", "1280"])
        .expect("lowering the cell router's MTU");
    let got = curl.wait(Duration::from_secs(60)).expect("curl's result");
    assert!(got.success(), "curl: {}\n{}", got.log, upmt.logs());
    assert_eq!(
        got.sha256.as_deref(),
        http.sha256("mid.bin"),
        "{}",
        upmt.logs()
    );

    // A confirmation within 5 s of data, two lost probes, then the search below 1500.
    let (found, status) = wait_cell_mtu(&lab, Duration::from_secs(15), |m| m == 1280);
    assert!(
        found,
        "status never showed 1280 for cell: {status}\n{}",
        upmt.logs()
    );
    let link = lab
        .mh()
        .run_stdout(&["ip", "-o", "link", "show", MH_TUN])
        .expect("ip link show");
    assert!(link.contains("mtu 1280 "), "{link}\n{}", upmt.logs());
}
