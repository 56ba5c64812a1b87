//! End to end, how fast a new app's flow is named: real `upmt-an` and `upmt-mh` in the lab, with
//! a crowd of processes holding sockets on the MH, or a package table giving apps their own
//! uids. The interface counters prove which uplink carried the app; `upmt status --json` proves
//! how its owner was found. Needs root; each test builds its own lab.

use std::time::Duration;

use serde_json::Value;
use upmt_tests::crowd::{self, percentile};
use upmt_tests::topology::{MH_CELL_IF, MH_WIFI_IF};
use upmt_tests::{Crowd, CrowdOptions, DeployOptions, Deployment, Family, Lab, MID_FILE_SIZE};

/// Video on wifi, the store on cell, uid 4242 bypassed, the rest on wifi (shared with the core's
/// scenario tests).
const POLICY: &str = include_str!("../../mobile-host/core/tests/fixtures/two-apps-policy.toml");
/// The uid the policy bypasses: the direct path, without upmt.
const DIRECT: [&str; 7] = [
    "setpriv",
    "--reuid",
    "4242",
    "--regid",
    "4242",
    "--clear-groups",
    "--",
];
/// How much slower than direct a connection through upmt may be: far above the tunnel's own
/// cost, far below a read of every process's fds on a loaded machine.
const SLACK: Duration = Duration::from_millis(50);
/// Connections timed per path.
const TRIES: usize = 7;

fn lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"))
}

fn deploy<'a>(lab: &'a Lab, mh_extra: String) -> Deployment<'a> {
    let options = DeployOptions {
        mh_policy: Some(POLICY.to_owned()),
        mh_extra,
        ..DeployOptions::default()
    };
    Deployment::start(lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"))
}

/// `upmt status --json`'s owner counts.
fn owners(lab: &Lab, upmt: &Deployment<'_>) -> Value {
    let status = upmt_tests::deploy::mh_status(lab)
        .unwrap_or_else(|e| panic!("upmt status: {e}\n{}", upmt.logs()));
    status["owners"].clone()
}

fn count(owners: &Value, field: &str) -> u64 {
    owners[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no owners.{field} in {owners}"))
}

#[test]
fn a_new_app_among_a_thousand_processes_gets_its_uplink_about_as_fast_as_the_direct_path() {
    let lab = lab("lookup_crowd");
    let upmt = deploy(&lab, String::new());
    let http = lab.start_http_server().expect("http server");
    let url = http.url(Family::V4, "mid.bin");
    let crowd = Crowd::start(&lab.mh(), &CrowdOptions::idle(1000))
        .unwrap_or_else(|e| panic!("{e}\n{}", upmt.logs()));

    let mh = lab.mh();
    let before = owners(&lab, &upmt);
    let cell_before = mh.link_counters(MH_CELL_IF).expect("cell counters");
    let mut direct = Vec::new();
    let mut through = Vec::new();
    for _ in 0..TRIES {
        let d = crowd::connect(&mh, &DIRECT, None, &url)
            .unwrap_or_else(|e| panic!("direct: {e}\n{}", upmt.logs()));
        direct.push(d.connect);
        let t = crowd::connect(&mh, &[], Some("com.example.store"), &url)
            .unwrap_or_else(|e| panic!("through upmt: {e}\n{}", upmt.logs()));
        through.push(t.connect);
    }
    let cell = mh
        .link_counters(MH_CELL_IF)
        .expect("cell counters")
        .since(&cell_before);
    assert!(crowd.is_running(), "the crowd stayed for every connection");
    // Every store download came in on cell.
    assert!(
        cell.rx_bytes >= (TRIES * MID_FILE_SIZE) as u64,
        "the store's flows took cell: {cell:?}\n{}",
        upmt.logs()
    );
    // The MH runs in the lab's network namespace; the kernel sends process events only to
    // the initial one's sockets, where the MH opened its own. Each new curl is then found by
    // reading it alone, not by a scan of the crowd (one may be, after the kernel dropped
    // events in the crowd's start).
    let after = owners(&lab, &upmt);
    assert_eq!(
        after["process_watch"],
        "events_from_initial_netns",
        "{after}\n{}",
        upmt.logs()
    );
    assert!(
        count(&after, "event_hits") + 1 >= count(&before, "event_hits") + TRIES as u64,
        "each new curl was found through process events: {before} -> {after}"
    );
    let (d, t) = (percentile(&direct, 50.0), percentile(&through, 50.0));
    assert!(
        t <= d + SLACK,
        "median connect through upmt {t:?} vs direct {d:?} (through {through:?}, direct {direct:?})\n{after}"
    );
}

#[test]
fn an_app_with_its_own_uid_is_named_from_the_package_table_without_reading_processes() {
    let lab = lab("lookup_uid");
    let packages = lab.dir().join("packages.list");
    std::fs::write(
        &packages,
        "com.example.store 10123 0 /data/user/0/com.example.store default:targetSdkVersion=34 3003 0 1\n\
         com.example.video 10124 0 /data/user/0/com.example.video default:targetSdkVersion=34 3003 0 1\n",
    )
    .expect("writing packages.list");
    let upmt = deploy(
        &lab,
        format!("packages_list = \"{}\"\n", packages.display()),
    );
    let http = lab.start_http_server().expect("http server");
    let url = http.url(Family::V4, "mid.bin");
    let mh = lab.mh();

    let before = owners(&lab, &upmt);
    let (wifi0, cell0) = (
        mh.link_counters(MH_WIFI_IF).expect("wifi counters"),
        mh.link_counters(MH_CELL_IF).expect("cell counters"),
    );
    // The program's name says nothing: only its uid makes it the store.
    let store = [
        "setpriv",
        "--reuid",
        "10123",
        "--regid",
        "10123",
        "--clear-groups",
        "--",
    ];
    for _ in 0..3 {
        crowd::connect(&mh, &store, None, &url)
            .unwrap_or_else(|e| panic!("the store's curl: {e}\n{}", upmt.logs()));
    }
    let cell = mh
        .link_counters(MH_CELL_IF)
        .expect("cell counters")
        .since(&cell0);
    let wifi = mh
        .link_counters(MH_WIFI_IF)
        .expect("wifi counters")
        .since(&wifi0);
    let after = owners(&lab, &upmt);

    assert!(
        count(&after, "by_uid") >= count(&before, "by_uid") + 3,
        "each of the store's flows was named by its uid: {before} -> {after}\n{}",
        upmt.logs()
    );
    assert_eq!(
        count(&after, "scans"),
        count(&before, "scans"),
        "no process was read: {before} -> {after}"
    );
    for field in ["index_hits", "event_hits"] {
        assert_eq!(
            count(&after, field),
            count(&before, field),
            "{field}: {before} -> {after}"
        );
    }
    assert!(
        cell.rx_bytes >= 3 * MID_FILE_SIZE as u64 && wifi.rx_bytes < MID_FILE_SIZE as u64,
        "the store's policy (cell) applied: cell {cell:?}, wifi {wifi:?}\n{}",
        upmt.logs()
    );
}
