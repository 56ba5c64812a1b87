//! End to end: what an idle mobile host sends on each uplink. With flows it keeps every
//! uplink's NAT binding with keepalives; with none it only checks each uplink now and then; an
//! uplink put to sleep sends nothing until a flow needs it, and that flow's first connection
//! works at once. Packets are counted by an nftables counter per uplink in the MH's namespace
//! (UDP to the anchor's port only: the kernel's own ARP and neighbour discovery are not ours).

use std::time::{Duration, Instant};

use upmt_tests::deploy::{self, mh_status};
use upmt_tests::topology::{CH_V4, HTTP_PORT, MH_CELL_IF};
use upmt_tests::{DeployOptions, Deployment, Family, Lab};

/// A short keepalive keeps the windows short.
const KEEPALIVE_S: u64 = 10;

fn lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"))
}

fn deploy<'a>(lab: &'a Lab, options: &DeployOptions) -> Deployment<'a> {
    Deployment::start(lab, options).unwrap_or_else(|e| panic!("deploying upmt: {e}"))
}

fn options(uplink_extra: Vec<(String, String)>, policy: Option<String>) -> DeployOptions {
    DeployOptions {
        mh_extra: format!("[probe]\nidle_keepalive_s = {KEEPALIVE_S}\n"),
        log: "info".to_owned(),
        uplink_extra,
        mh_policy: policy,
        ..DeployOptions::default()
    }
}

fn count_tunnel_datagrams(lab: &Lab) {
    deploy::count_tunnel_datagrams(lab).expect("tunnel datagram counters in the MH namespace");
}

/// Datagrams sent to the anchor on (wifi, cell) so far.
fn sent(lab: &Lab) -> (u64, u64) {
    deploy::tunnel_datagrams(lab).expect("the MH's tunnel counters")
}

/// The `idle` of each tunnel in `upmt status --json`, by uplink name.
fn idle_modes(lab: &Lab) -> Vec<(String, String)> {
    let status = mh_status(lab).expect("upmt status --json");
    status["tunnels"]
        .as_array()
        .map(|tunnels| {
            tunnels
                .iter()
                .map(|t| {
                    let name = t["uplink"].as_str().unwrap_or_default().to_owned();
                    let idle = t["idle"].as_str().unwrap_or("-").to_owned();
                    (name, idle)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `upmt status` shows `want` as the tunnels' idle modes (the deploy's connect
/// ping is a flow for 30 s).
fn wait_for_modes(lab: &Lab, upmt: &Deployment, want: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(u, m)| ((*u).to_owned(), (*m).to_owned()))
        .collect();
    loop {
        let modes = idle_modes(lab);
        if modes == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the tunnels' idle modes stayed {modes:?}, expected {want:?}\n{}",
            upmt.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An idle TCP connection from the MH to the CH, held open while the handle lives.
fn hold_idle_connection(lab: &Lab) -> upmt_tests::ProcHandle {
    let code = format!(
        "import socket, time\ns = socket.create_connection(('{CH_V4}', {HTTP_PORT}))\ntime.sleep(600)\n"
    );
    lab.mh()
        .command(&["python3", "-c", code.as_str()])
        .label("idle-conn")
        .spawn()
        .expect("an idle TCP connection")
}

#[test]
fn with_an_idle_flow_each_uplink_sends_only_its_keepalives() {
    const WINDOW: Duration = Duration::from_secs(40);
    let lab = lab("idle_keepalive");
    let _http = lab.start_http_server().expect("http server");
    let upmt = deploy(&lab, &options(Vec::new(), None));
    count_tunnel_datagrams(&lab);
    let _conn = hold_idle_connection(&lab);
    wait_for_modes(&lab, &upmt, &[("wifi", "keepalive"), ("cell", "keepalive")]);
    // The handshake's and the connection's active window pass.
    std::thread::sleep(Duration::from_secs(8));
    let before = sent(&lab);
    std::thread::sleep(WINDOW);
    let after = sent(&lab);
    let keepalives = WINDOW.as_secs() / KEEPALIVE_S;
    for (name, n) in [("wifi", after.0 - before.0), ("cell", after.1 - before.1)] {
        // A lazy rekey may add its init on one uplink.
        assert!(
            n <= keepalives + 2,
            "{name} sent {n} datagrams in an idle {WINDOW:?}, expected about {keepalives}\n{}",
            upmt.logs()
        );
        assert!(
            n + 1 >= keepalives,
            "{name} sent {n} datagrams in an idle {WINDOW:?}: its keepalives are missing\n{}",
            upmt.logs()
        );
    }
    assert!(upmt.mh.is_running() && upmt.an.is_running());
}

#[test]
fn without_flows_each_uplink_only_checks_its_liveness_now_and_then() {
    const WINDOW: Duration = Duration::from_secs(30);
    let lab = lab("idle_flowless");
    let _http = lab.start_http_server().expect("http server");
    let upmt = deploy(&lab, &options(Vec::new(), None));
    count_tunnel_datagrams(&lab);
    wait_for_modes(&lab, &upmt, &[("wifi", "check"), ("cell", "check")]);
    let before = sent(&lab);
    std::thread::sleep(WINDOW);
    let after = sent(&lab);
    // Keepalives every 10 s would be 3 each; the flowless check is one per 120 s.
    for (name, n) in [("wifi", after.0 - before.0), ("cell", after.1 - before.1)] {
        assert!(
            n <= 1,
            "{name} sent {n} datagrams in a flowless {WINDOW:?}\n{}",
            upmt.logs()
        );
    }
    // Still up, and the next flow works at once.
    let got = lab
        .download("small.txt")
        .family(Family::V4)
        .max_time(Duration::from_secs(10))
        .run()
        .expect("curl");
    assert!(got.success(), "curl: {}\n{}", got.log, upmt.logs());
}

#[test]
fn an_asleep_cellular_uplink_sends_nothing_until_a_flow_needs_it() {
    const WINDOW: Duration = Duration::from_secs(25);
    let lab = lab("idle_sleep");
    let _http = lab.start_http_server().expect("http server");
    let policy =
        "version = 1\n\n[[rule]]\napp = \"cellapp\"\nuplinks = [\"cell\"]\nwhen_none = \"block\"\n";
    let upmt = deploy(
        &lab,
        &options(
            vec![("cell".to_owned(), "idle = \"sleep\"".to_owned())],
            Some(policy.to_owned()),
        ),
    );
    count_tunnel_datagrams(&lab);
    // A flow on wifi keeps it alive: cell sleeps anyway, as it carries none.
    let _conn = hold_idle_connection(&lab);
    wait_for_modes(&lab, &upmt, &[("wifi", "keepalive"), ("cell", "asleep")]);
    let before = sent(&lab);
    std::thread::sleep(WINDOW);
    let after = sent(&lab);
    assert_eq!(
        after.1 - before.1,
        0,
        "the asleep cell uplink sent in {WINDOW:?}\n{}",
        upmt.logs()
    );
    assert!(
        after.0 - before.0 >= 1,
        "wifi kept no keepalive while cell slept\n{}",
        upmt.logs()
    );

    // An app whose policy says cell: its first connection wakes the uplink and works at once
    // (a lost SYN would cost TCP a whole second).
    let first = lab
        .download("small.txt")
        .family(Family::V4)
        .app("cellapp")
        .count(MH_CELL_IF)
        .max_time(Duration::from_secs(10))
        .run()
        .expect("curl");
    assert!(first.success(), "curl: {}\n{}", first.log, upmt.logs());
    assert!(
        first.counters(MH_CELL_IF).rx_packets > 0,
        "the download did not come over cell"
    );
    let took = first.time_total.unwrap_or(Duration::MAX);
    assert!(
        took < Duration::from_millis(900),
        "the first download on the woken uplink took {took:?}\n{}",
        upmt.logs()
    );
    assert_ne!(
        idle_modes(&lab)
            .iter()
            .find(|(u, _)| u == "cell")
            .map(|(_, m)| m.as_str()),
        Some("asleep"),
        "cell still says asleep while it carries a flow"
    );
}
