//! Scenario tests of NAT binding-lifetime learning on a disposable socket per path, behind a
//! simulated NAT, on virtual time.

mod util;

use std::time::Duration;
use upmt_proto::PathId;
use util::*;

const KEEPALIVE: Duration = Duration::from_secs(25);
const P0: PathId = PathId(0);

/// A pair on one path behind a NAT that forgets a binding after `nat` of outbound silence,
/// learning with disposable sockets up to 300 s; connected and past the active window.
fn pair_behind_nat(nat: Duration) -> Pair {
    let mut pair = Pair::new(&[20], |c| {
        c.keepalive = KEEPALIVE;
        c.keepalive_max = Some(Duration::from_secs(300));
        c.nat_probe = true;
    });
    pair.links[0].nat_timeout = Some(nat);
    pair.run_for(Duration::from_secs(10));
    assert!(pair.connected());
    pair
}

/// Runs `pair` for `d` in steps of a second and asserts the main binding is never lost.
fn run_keeping_the_binding(pair: &mut Pair, d: Duration) {
    let rebinds = pair.links[0].nat_rebinds;
    let end = pair.now + d;
    while pair.now < end {
        pair.run_for(Duration::from_secs(1));
        assert_eq!(
            pair.links[0].nat_rebinds,
            rebinds,
            "the main binding was lost at {:?} with a keepalive of {:?}",
            pair.now,
            pair.client.path_keepalive(P0)
        );
    }
}

#[test]
fn learning_on_a_disposable_socket_rises_below_the_nat_timeout_and_never_loses_the_main_binding() {
    let nat = Duration::from_secs(120);
    let mut pair = pair_behind_nat(nat);
    run_keeping_the_binding(&mut pair, Duration::from_secs(2 * 3600));
    let learned = pair.client.path_keepalive(P0).unwrap();
    assert!(
        learned < nat && learned + Duration::from_secs(25) >= nat,
        "after two hours the keepalive is {learned:?}, the NAT forgets after {nat:?}"
    );
    assert_eq!(
        pair.client.path_keepalive_learning(P0),
        Some(false),
        "still testing after two hours"
    );
    let (held, lost) = pair.client.path_nat_tests(P0).unwrap();
    assert!(held >= 3 && lost >= 1, "{held} tests held, {lost} lost");
    assert!(pair.anchor.stats().nat_replies >= held);
    assert_eq!(pair.anchor.stats().nat_refused, 0);
    assert!(
        pair.links[0].test_expired_drops >= 1,
        "no test ever outlived the NAT"
    );
    // The test socket's address never became the path's: downlink and challenges went only
    // to the main binding.
    assert!(
        pair.stray.is_empty(),
        "{} stray datagrams",
        pair.stray.len()
    );
    assert!(
        pair.anchor_events.iter().all(|e| !matches!(
            e,
            upmt_proto::anchor::Event::PathEndpointChanged { endpoint, .. }
                if *endpoint != pair.links[0].addr
        )),
        "a test socket's address was taken for the path"
    );

    // Learned: an idle hour costs one keepalive per interval (plus the lazy rekeys riding on
    // some of them: an init and its confirmation) and no tests.
    let sent = pair.uplink_log.len();
    let tests = pair.client.path_nat_tests(P0).unwrap();
    run_keeping_the_binding(&mut pair, Duration::from_secs(3600));
    let per_hour = pair.uplink_log.len() - sent;
    let keepalives = (3600 / learned.as_secs() + 1) as usize;
    assert!(
        per_hour <= 2 * keepalives,
        "{per_hour} datagrams in a learned idle hour at {learned:?}"
    );
    assert_eq!(pair.client.path_nat_tests(P0).unwrap(), tests);
    assert!(pair.connected());
}

#[test]
fn a_nat_that_shortens_its_timeout_is_followed_down_after_one_lost_binding() {
    let mut pair = pair_behind_nat(Duration::from_secs(120));
    run_keeping_the_binding(&mut pair, Duration::from_secs(2 * 3600));
    assert!(pair.client.path_keepalive(P0).unwrap() > Duration::from_secs(60));

    let nat = Duration::from_secs(60);
    pair.shorten_nat_until_a_binding_is_lost(0, nat, Duration::from_secs(300));
    let fallback = pair.client.path_keepalive(P0).unwrap();
    assert!(
        fallback < nat,
        "after a lost binding the keepalive is {fallback:?}"
    );
    // Relearning below the new timeout loses nothing more.
    run_keeping_the_binding(&mut pair, Duration::from_secs(2 * 3600));
    let learned = pair.client.path_keepalive(P0).unwrap();
    assert!(
        learned < nat && learned + Duration::from_secs(20) >= nat,
        "relearned {learned:?} behind a {nat:?} NAT"
    );
    assert!(pair.connected());
}

#[test]
fn a_path_without_flows_runs_no_test() {
    let mut pair = pair_behind_nat(Duration::from_secs(120));
    let now = pair.now;
    pair.client
        .set_path_idle(P0, upmt_proto::client::Idle::Check, now);
    pair.run_for(Duration::from_secs(3600));
    assert_eq!(pair.client.path_nat_tests(P0), Some((0, 0)));
    assert_eq!(pair.anchor.stats().nat_registrations, 0);
}

#[test]
fn behind_a_patient_nat_keepalives_stop_short_of_the_keys_life_and_downlink_always_gets_through() {
    let mut pair = pair_behind_nat(Duration::from_secs(600));
    run_keeping_the_binding(&mut pair, Duration::from_secs(2 * 3600));
    let learned = pair.client.path_keepalive(P0).unwrap();
    let keys_life = upmt_proto::client::REJECT_AFTER_TIME;
    assert!(
        learned < keys_life && learned >= Duration::from_secs(120),
        "learned {learned:?}"
    );
    // Downlink at any moment of the idle cycle finds the binding and live keys.
    for i in 0..40u32 {
        pair.run_for(Duration::from_secs(47));
        let delivered = pair.client_rx.len();
        pair.anchor_send(&down(5000, i))
            .expect("the anchor has live keys");
        pair.run_for(Duration::from_millis(100));
        assert_eq!(
            pair.client_rx.len(),
            delivered + 1,
            "downlink lost at {:?}",
            pair.now
        );
    }
    assert_eq!(pair.links[0].nat_rebinds, 0);
}
