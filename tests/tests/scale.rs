//! Scale smoke test: a thousand simulated mobile hosts (`upmt-swarm`, real handshakes, ten flows
//! each, some with a second path) against one anchor in the lab. Every session comes up, as the
//! swarm counts it and as the anchor's metrics confirm, and once the swarm is gone the anchor
//! forgets every one of its sessions, paths and flows after its (shortened) session timeout.
//! The figures (memory, handshake rate, CPU) come from `upmt-lab bench-scale`, not from here.
//! Needs root.

use std::time::Duration;

use upmt_tests::deploy::metric_sum;
use upmt_tests::scale::{RunningSwarm, SwarmOptions, add_swarm_host, deploy_options};
use upmt_tests::{Deployment, Lab, wait_for};

const HOSTS: usize = 1000;
const FLOWS: u16 = 10;
/// The anchor forgets a silent session after this long in this test (the default is 180 s).
const SESSION_TIMEOUT_S: u64 = 5;

#[test]
fn a_thousand_mobile_hosts_all_connect_and_the_anchor_forgets_them_all_after_they_leave() {
    let mut lab = Lab::new("scale_smoke").unwrap_or_else(|e| panic!("building the lab: {e}"));
    add_swarm_host(&mut lab, 64).unwrap_or_else(|e| panic!("the swarm's namespace: {e}"));
    lab.start_udp_echo()
        .unwrap_or_else(|e| panic!("the CH's echo server: {e}"));
    let options = deploy_options(HOSTS, &format!("session_timeout_s = {SESSION_TIMEOUT_S}\n"));
    let upmt = Deployment::start(&lab, &options).unwrap_or_else(|e| panic!("deploying: {e}"));

    // A trickle well within the session timeout keeps every session alive while the swarm runs.
    let swarm = RunningSwarm::start(
        &lab,
        &upmt,
        &SwarmOptions {
            flows: FLOWS,
            trickle_s: 2,
            duration: Duration::from_secs(45),
            ..SwarmOptions::new(HOSTS)
        },
    )
    .unwrap_or_else(|e| panic!("starting the swarm: {e}"));
    let up = swarm
        .wait(
            "every host up with its flows open",
            Duration::from_secs(30),
            |p| p.up == HOSTS && p.flows_opened == HOSTS,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", upmt.logs()));
    println!("swarm: {}", up.json());

    let swarm_sum =
        |metrics: &str, name: &str| metric_sum(metrics, &format!("{name}{{peer=\"swarm"));
    let mut last = String::new();
    let confirmed = wait_for(
        "the anchor to count every swarm session",
        Duration::from_secs(10),
        || {
            last = upmt.an_metrics().unwrap_or_default();
            swarm_sum(&last, "upmt_peer_connected") == HOSTS as u64
                && swarm_sum(&last, "upmt_peer_flows") >= HOSTS as u64 * u64::from(FLOWS)
        },
    );
    assert!(
        confirmed.is_ok(),
        "the anchor counts {} connected swarm peers with {} flows, the swarm {} up\n{}",
        swarm_sum(&last, "upmt_peer_connected"),
        swarm_sum(&last, "upmt_peer_flows"),
        up.up,
        upmt.logs()
    );
    assert!(
        swarm_sum(&last, "upmt_peer_paths") > HOSTS as u64,
        "the hosts with a second path have it validated at the anchor"
    );

    // They leave: nothing of theirs may stay once their sessions expired.
    swarm.proc.kill();
    let forgotten = wait_for(
        "the anchor to forget the swarm",
        Duration::from_secs(SESSION_TIMEOUT_S + 10),
        || {
            last = upmt.an_metrics().unwrap_or_default();
            ["upmt_peer_connected", "upmt_peer_paths", "upmt_peer_flows"]
                .iter()
                .all(|name| swarm_sum(&last, name) == 0)
        },
    );
    assert!(
        forgotten.is_ok(),
        "after the swarm left: {} connected, {} paths, {} flows\n{}",
        swarm_sum(&last, "upmt_peer_connected"),
        swarm_sum(&last, "upmt_peer_paths"),
        swarm_sum(&last, "upmt_peer_flows"),
        upmt.logs()
    );
    assert!(upmt.an.is_running(), "the anchor survived\n{}", upmt.logs());
}
