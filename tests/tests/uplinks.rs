//! End to end: an uplink named by a pattern (`ce*`) in the lab, where an IMS-like interface
//! `ce0` sorts first: up, with a global address and a default route in its own table (as netd
//! keeps it, table ifindex + 1000 style, reached by an `oif` rule), but nothing behind it ever
//! answers. The daemon tries `ce0`, gives up on it after its trial, settles on `cell`, and
//! `upmt status` shows the real interface. Needs root; each test builds its own lab.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use upmt_tests::deploy::{AN_PORT, tunnel};
use upmt_tests::topology::{AN_V4, AN_V6, MH_CELL_IF, MH_WIFI_IF};
use upmt_tests::{DeployOptions, Deployment, Lab, bin_path};

/// The IMS-like interface: one end of a veth pair whose other end has no address, so what is
/// sent through it goes nowhere (the kernel's dummy driver may be missing).
const IMS_IF: &str = "ce0";
const IMS_PEER: &str = "ims-peer";

fn status(lab: &Lab, socket: &Path) -> Value {
    let bin = bin_path("upmt").expect("the upmt binary (cargo build --workspace --bins)");
    let out = lab
        .mh()
        .command(&[
            bin.to_str().expect("utf-8 path"),
            "--socket",
            socket.to_str().expect("utf-8 path"),
            "status",
            "--json",
        ])
        .timeout(Duration::from_secs(10))
        .run_unchecked()
        .expect("running upmt");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[test]
fn a_cellular_uplink_named_by_pattern_skips_the_silent_interface_and_settles_on_the_one_that_answers()
 {
    let lab = Lab::new("uplinks-pattern").unwrap_or_else(|e| panic!("building the lab: {e}"));
    let mh = lab.mh();
    for cmd in [
        vec![
            "ip", "link", "add", IMS_IF, "type", "veth", "peer", "name", IMS_PEER,
        ],
        vec!["ip", "link", "set", IMS_PEER, "up"],
        vec!["ip", "addr", "add", "100.80.0.2/24", "dev", IMS_IF],
        vec!["ip", "link", "set", IMS_IF, "up"],
        vec![
            "ip", "route", "add", "default", "dev", IMS_IF, "table", "1100",
        ],
        vec![
            "ip", "rule", "add", "oif", IMS_IF, "lookup", "1100", "priority", "11000",
        ],
    ] {
        mh.run(&cmd)
            .unwrap_or_else(|e| panic!("{}: {e}", cmd.join(" ")));
    }
    let socket = lab.dir().join("mh.sock");
    let options = DeployOptions {
        uplinks: vec![
            ("wifi".to_owned(), MH_WIFI_IF.to_owned()),
            ("cell".to_owned(), "ce*".to_owned()),
        ],
        mh_extra: format!("control_socket = \"{}\"\n", socket.display()),
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying: {e}"));
    upmt.wait_connected(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));

    let start = Instant::now();
    let mut last;
    let mut seen_ims = false;
    let settled = loop {
        last = status(&lab, &socket);
        if let Some(cell) = tunnel(&last, "cell") {
            seen_ims |= cell["interface"] == IMS_IF;
            if cell["interface"] == MH_CELL_IF && cell["state"] == "up" {
                break Some(start.elapsed());
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let Some(took) = settled else {
        panic!(
            "the cell uplink never came up on {MH_CELL_IF}: {last:#}\n{}",
            upmt.logs()
        );
    };
    eprintln!("cell uplink up on {MH_CELL_IF} {took:?} after the session (ce0 seen: {seen_ims})");
    let logs = upmt.logs();
    assert!(
        logs.contains("uplink tries a candidate") && logs.contains(IMS_IF),
        "the silent interface was tried first (it sorts first):\n{logs}"
    );
    assert_eq!(
        tunnel(&last, "wifi").map(|t| t["interface"].clone()),
        Some(Value::from(MH_WIFI_IF))
    );
    // It stays there: the silent one is remembered as failed.
    std::thread::sleep(Duration::from_secs(6));
    let later = status(&lab, &socket);
    let cell = tunnel(&later, "cell").expect("cell tunnel");
    assert_eq!(cell["interface"], MH_CELL_IF, "{later:#}");
    assert_eq!(cell["state"], "up", "{later:#}");
}

#[test]
fn an_ipv6_only_cellular_uplink_reaches_a_dual_stack_anchor_over_ipv6() {
    let lab = Lab::new("uplinks-v6only").unwrap_or_else(|e| panic!("building the lab: {e}"));
    // As under 464XLAT on a phone: the cellular interface has IPv6 only; IPv4 would need the
    // CLAT, which the tunnel socket bound to the interface cannot use.
    lab.mh()
        .run(&["ip", "-4", "addr", "flush", "dev", MH_CELL_IF])
        .expect("flushing cell's IPv4 addresses");
    let socket = lab.dir().join("mh.sock");
    let options = DeployOptions {
        uplinks: vec![("cell".to_owned(), MH_CELL_IF.to_owned())],
        mh_anchor: Some(format!("[\"{AN_V4}:{AN_PORT}\", \"[{AN_V6}]:{AN_PORT}\"]")),
        mh_extra: format!("control_socket = \"{}\"\n", socket.display()),
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying: {e}"));
    let start = Instant::now();
    upmt.wait_connected(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "session up over IPv6-only cellular in {:?}",
        start.elapsed()
    );
    let s = status(&lab, &socket);
    let cell = tunnel(&s, "cell").unwrap_or_else(|| panic!("no cell tunnel: {s:#}"));
    assert_eq!(cell["state"], "up", "{s:#}");
    let local = cell["local"].as_str().unwrap_or_default();
    assert!(
        local
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.is_ipv6()),
        "the cell tunnel's socket is IPv6: {s:#}"
    );
}
