//! End to end, observing the mobile host: real `upmt-an` and `upmt-mh` (with `metrics = ...`) in
//! the lab, one app's download, then the MH's Prometheus endpoint scraped with curl from inside
//! its namespace, and `upmt top --frames` as a smoke test of the live view. Needs root; builds
//! its own lab.

use upmt_tests::{DeployOptions, Deployment, Lab, MID_FILE_SIZE, bin_path};

/// Where the MH serves its metrics, inside its namespace (its own loopback).
const METRICS: &str = "127.0.0.1:9101";
const APP: &str = "observe-app";

/// The value of the sample `series` (name and labels exactly as rendered), or a panic showing
/// the scrape.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in the scrape:\n{text}"))
}

#[test]
fn a_scrape_shows_the_apps_bytes_on_wifi_and_each_paths_state_and_rtt() {
    let lab = Lab::new("observe").unwrap_or_else(|e| panic!("building the lab: {e}"));
    let options = DeployOptions {
        mh_extra: format!("metrics = \"{METRICS}\"\n"),
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    let _http = lab.start_http_server().expect("http server");

    let got = lab
        .download("mid.bin")
        .app(APP)
        .discard()
        .run()
        .unwrap_or_else(|e| panic!("download: {e}\n{}", upmt.logs()));
    assert!(got.success(), "{}\n{}", got.log, upmt.logs());

    let mh = lab.mh();
    let url = format!("http://{METRICS}/metrics");
    let text = mh
        .run_stdout(&["curl", "-sS", "--fail", "--max-time", "5", url.as_str()])
        .unwrap_or_else(|e| panic!("scraping {url}: {e}\n{}", upmt.logs()));

    assert_eq!(sample(&text, "upmt_mh_session_connected"), 1.0);
    // With no policy everything takes the first uplink: the app's bytes are all on wifi.
    let rx = sample(
        &text,
        &format!("upmt_mh_app_rx_bytes_total{{app=\"{APP}\",uplink=\"wifi\"}}"),
    );
    assert!(
        rx > MID_FILE_SIZE as f64,
        "{APP} received {rx} bytes on wifi, the file has {MID_FILE_SIZE}:\n{text}"
    );
    assert!(
        !text.contains(&format!("app=\"{APP}\",uplink=\"cell\"")),
        "{APP} has bytes on cell:\n{text}"
    );
    for uplink in ["wifi", "cell"] {
        let up = text
            .lines()
            .find(|l| {
                l.starts_with(&format!("upmt_mh_path_state{{uplink=\"{uplink}\","))
                    && l.contains("state=\"up\"")
            })
            .unwrap_or_else(|| panic!("no up state for {uplink}:\n{text}"));
        assert!(up.ends_with(" 1"), "{uplink} is not up: {up}");
        let rtt = sample(
            &text,
            &format!("upmt_mh_path_rtt_seconds{{uplink=\"{uplink}\"}}"),
        );
        // The lab's links add a few milliseconds; a second would be a unit mistake.
        assert!(rtt > 0.0 && rtt < 1.0, "{uplink} rtt {rtt} s:\n{text}");
        let loss = sample(
            &text,
            &format!("upmt_mh_path_loss_ratio{{uplink=\"{uplink}\"}}"),
        );
        assert!((0.0..=1.0).contains(&loss), "{uplink} loss {loss}");
    }
    // The app's flow was looked up: the histogram counted it, and some answer path did too.
    assert!(
        sample(&text, "upmt_mh_owner_lookup_seconds_count") >= 1.0,
        "{text}"
    );
    assert!(sample(&text, "upmt_mh_flows_decided_total{outcome=\"tunnel\"}") >= 1.0);

    // The live view, printed once: the uplinks and the app (a closed TCP flow stays in the
    // table for seconds, so the app is still listed).
    let upmt_cli = bin_path("upmt").expect("upmt binary");
    let socket = lab.dir().join("mh.sock");
    let frame = mh
        .run_stdout(&[
            upmt_cli.as_os_str(),
            "--socket".as_ref(),
            socket.as_os_str(),
            "top".as_ref(),
            "--frames".as_ref(),
            "1".as_ref(),
        ])
        .unwrap_or_else(|e| panic!("upmt top --frames 1: {e}\n{}", upmt.logs()));
    assert!(frame.contains("connected to"), "{frame}");
    for uplink in ["wifi", "cell"] {
        assert!(
            frame
                .lines()
                .any(|l| l.starts_with(uplink) && l.contains(" up ")),
            "{uplink} not shown up:\n{frame}"
        );
    }
    assert!(frame.contains(APP), "{APP} not shown:\n{frame}");
}
