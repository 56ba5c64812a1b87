//! End to end: data caps with essential apps, usage kept across a restart of the MH, and each
//! path's public (NAT) address as the anchor sees it. Real `upmt-an` and `upmt-mh` in the lab,
//! real curl under chosen app names; interface counters of the MH's uplinks say what went
//! where. Lean: small files, no settle times beyond what the daemons need. Needs root.

use std::net::IpAddr;
use std::time::Duration;

use upmt_tests::topology::{MH_CELL_IF, MH_WIFI_IF};
use upmt_tests::{DeployOptions, Deployment, Family, Lab, MID_FILE_SIZE, bin_path, wait_for};

fn lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"))
}

/// `upmt usage --json [args]` of the lab's MH.
fn usage(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let bin = bin_path("upmt").expect("upmt binary");
    let socket = lab.dir().join("mh.sock");
    let mut argv = vec![
        bin.to_string_lossy().into_owned(),
        "--socket".into(),
        socket.to_string_lossy().into_owned(),
        "usage".into(),
        "--json".into(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let out = lab
        .mh()
        .command(&argv)
        .run()
        .unwrap_or_else(|e| panic!("upmt usage: {e}"));
    serde_json::from_slice(&out.stdout).expect("upmt usage --json prints JSON")
}

/// Bytes (tx, rx) of `app` on `uplink` in a usage reply; zero when absent.
fn app_bytes(reply: &serde_json::Value, app: &str, uplink: &str) -> (u64, u64) {
    reply["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["name"] == app)
        .flat_map(|a| a["uplinks"].as_array().into_iter().flatten())
        .find(|u| u["uplink"] == uplink)
        .map_or((0, 0), |u| {
            (
                u["tx_bytes"].as_u64().unwrap_or(0),
                u["rx_bytes"].as_u64().unwrap_or(0),
            )
        })
}

const CAP_POLICY: &str = r#"version = 1

# Maps must keep working on cellular even when its data is used up.
[[rule]]
app = "com.example.maps"
uplinks = ["cell"]
essential = true

# A bulk downloader that may use cellular only while the cap allows.
[[rule]]
app = "com.example.bulk"
uplinks = ["cell"]
when_none = "block"
"#;

#[test]
fn a_reached_cap_cuts_a_bulk_download_off_cellular_while_an_essential_app_keeps_it() {
    let lab = lab("usage_cap");
    let options = DeployOptions {
        mh_policy: Some(CAP_POLICY.to_owned()),
        uplink_extra: vec![("cell".into(), "cap = \"3 MB per day\"".into())],
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying: {e}"));
    let http = lab.start_http_server().expect("http server");

    // 32 MiB on a 3 MB cap: cut off after about a tenth.
    let bulk = lab
        .download("big.bin")
        .app("com.example.bulk")
        .max_time(Duration::from_secs(30))
        .discard()
        .count(MH_CELL_IF)
        .run()
        .expect("run curl");
    assert!(
        !bulk.success(),
        "the bulk download must be cut off\n{}",
        upmt.logs()
    );
    let cell = bulk.counters(MH_CELL_IF);
    assert!(
        cell.rx_bytes >= 2_000_000 && cell.rx_bytes < 12_000_000,
        "cellular carried the bulk download up to the cap only: {cell:?}\n{}",
        upmt.logs()
    );
    assert!(
        upmt.mh.log().contains("data cap reached"),
        "the MH logs the cap\n{}",
        upmt.mh.log()
    );

    // New flows of the bulk app do not get cellular either.
    let again = lab
        .download("small.txt")
        .app("com.example.bulk")
        .connect_timeout(Duration::from_secs(3))
        .max_time(Duration::from_secs(5))
        .discard()
        .run()
        .expect("run curl");
    assert!(
        !again.success(),
        "a new bulk flow is blocked\n{}",
        again.log
    );

    // The essential app keeps cellular past the cap.
    let maps = lab
        .download("mid.bin")
        .app("com.example.maps")
        .max_time(Duration::from_secs(30))
        .count(MH_CELL_IF)
        .run()
        .expect("run curl");
    assert!(maps.success(), "{}\n{}", maps.log, upmt.logs());
    assert_eq!(maps.sha256.as_deref(), http.sha256("mid.bin"));
    assert!(
        maps.counters(MH_CELL_IF).rx_bytes >= MID_FILE_SIZE as u64,
        "the essential app used cellular: {:?}",
        maps.counters(MH_CELL_IF)
    );

    let reply = usage(&lab, &[]);
    let cap = reply["uplinks"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["uplink"] == "cell"))
        .map(|u| u["cap"].clone())
        .expect("cell in the usage reply");
    assert_eq!(cap["reached"], true, "{reply:#}");
    assert_eq!(cap["left_bytes"], 0, "{reply:#}");
    assert_eq!(cap["cap_bytes"], 3_000_000, "{reply:#}");
    assert!(app_bytes(&reply, "com.example.maps", "cell").1 >= MID_FILE_SIZE as u64);
}

#[test]
fn usage_survives_a_restart_and_matches_the_uplinks_interface_counters() {
    let lab = lab("usage_restart");
    let mut upmt =
        Deployment::start(&lab, &DeployOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let http = lab.start_http_server().expect("http server");
    let app = "com.example.reader";
    let got = lab
        .download("mid.bin")
        .app(app)
        .count(MH_WIFI_IF)
        .run()
        .expect("run curl");
    assert!(got.success(), "{}\n{}", got.log, upmt.logs());
    assert_eq!(got.sha256.as_deref(), http.sha256("mid.bin"));
    // Like with like: the usage counts each tunnelled packet as the carrier sees it (the app's
    // packet plus outer IP and UDP headers, upmt header and tag); the veth counts the same
    // datagrams, plus Ethernet headers and the probes of those seconds, minus the outer headers
    // of all but the first datagram of a GSO batch (counted once per batch). Measured: within
    // about 2 %.
    let veth = got.counters(MH_WIFI_IF).rx_bytes;
    let (_, before) = app_bytes(&usage(&lab, &[]), app, "wifi");
    let off = |counted: u64| counted.abs_diff(veth) as f64 / veth as f64;
    eprintln!(
        "usage rx {before} B, wifi veth rx {veth} B: {:.2} % apart",
        off(before) * 100.0
    );
    assert!(
        off(before) < 0.05,
        "usage rx {before} vs wifi veth rx {veth}\n{}",
        upmt.logs()
    );

    upmt.restart_mh("info,upmt=debug")
        .unwrap_or_else(|e| panic!("restarting the MH: {e}"));
    let today = usage(&lab, &[])["until"].as_str().map(str::to_owned);
    let reply = usage(
        &lab,
        &["--app", app, "--since", today.as_deref().unwrap_or("")],
    );
    let (_, after) = app_bytes(&reply, app, "wifi");
    assert!(
        after >= before && off(after) < 0.05,
        "after the restart: usage rx {after}, before {before}, veth {veth}\n{reply:#}\n{}",
        upmt.logs()
    );
    assert_eq!(reply["apps"].as_array().map(Vec::len), Some(1), "{reply:#}");
}

#[test]
fn status_shows_each_paths_public_address_as_the_anchor_sees_it() {
    let lab = lab("usage_public");
    let upmt = Deployment::start(&lab, &DeployOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let public = |uplink: &str| -> Option<IpAddr> {
        let status = upmt_tests::deploy::mh_status(&lab).ok()?;
        status["tunnels"]
            .as_array()?
            .iter()
            .find(|t| t["uplink"] == uplink)?["public_addr"]
            .as_str()?
            .parse()
            .ok()
    };
    wait_for(
        "both paths' public addresses",
        Duration::from_secs(10),
        || public("wifi").is_some() && public("cell").is_some(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{:?}\n{}",
            upmt_tests::deploy::mh_status(&lab),
            upmt.logs()
        )
    });
    assert_eq!(public("wifi"), Family::V4.nat_of(MH_WIFI_IF));
    assert_eq!(public("cell"), Family::V4.nat_of(MH_CELL_IF));
}
