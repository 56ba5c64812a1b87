//! Blackholes found fast while data flows: a path that carried data and heard nothing for a few
//! smoothed RTTs is probed at once in a burst and declared Down when the burst goes unanswered;
//! an idle session is probed as before.

mod util;

use std::time::Duration;
use upmt_proto::PathId;
use upmt_proto::client::{Event, PathState};
use upmt_proto::time::Instant;
use upmt_proto::timer::Timer;
use util::*;

const P0: PathId = PathId(0);

/// When the client reported P0 Down, if it did.
fn down_at(pair: &mut Pair, until: Duration, mut send: impl FnMut(&mut Pair)) -> Option<Instant> {
    let end = pair.now + until;
    while pair.now < end {
        send(pair);
        pair.run_for(Duration::from_millis(5));
        if pair.client_events.contains(&Event::PathDown(P0)) {
            return Some(pair.now);
        }
    }
    None
}

#[test]
fn a_blackhole_under_uplink_data_is_found_in_about_four_hundred_milliseconds() {
    let mut pair = Pair::new(&[10, 20], |_| {});
    pair.run_for(Duration::from_secs(2));
    assert!(pair.connected());
    // Data both ways, as a TCP transfer with its acks.
    for tag in 0..100 {
        pair.client_send(P0, &up(5000, tag)).unwrap();
        let _ = pair.anchor_send(&down(5000, tag));
        pair.run_for(Duration::from_millis(5));
    }
    pair.client_events.clear();
    pair.links[0].blackholed = true;
    let cut = pair.now;
    let at = down_at(&mut pair, Duration::from_secs(2), |pair| {
        let _ = pair.client_send(P0, &up(5000, 0));
    })
    .expect("the blackhole is found");
    let took = at - cut;
    // 150 ms suspicion + a 250 ms burst timeout, after the last packet that got through.
    assert!(
        took <= Duration::from_millis(450),
        "found after {took:?}, the periodic probes alone take up to 900 ms"
    );
}

#[test]
fn a_live_path_under_uplink_only_data_is_never_declared_down() {
    let mut pair = Pair::new(&[40, 20], |_| {});
    pair.run_for(Duration::from_secs(2));
    for tag in 0..3000 {
        // A UDP upload nobody answers: only probes come back.
        pair.client_send(P0, &up(5000, tag)).unwrap();
        pair.run_for(Duration::from_millis(2));
    }
    assert!(!pair.client_events.contains(&Event::PathDown(P0)));
    assert_eq!(pair.client.path_stats(P0).unwrap().state, PathState::Up);
}

#[test]
fn an_idle_session_arms_no_suspicion_timer() {
    let mut pair = Pair::new(&[10, 20], |_| {});
    pair.run_for(Duration::from_secs(2));
    pair.client_send(P0, &up(5000, 1)).unwrap();
    let _ = pair.anchor_send(&down(5000, 1));
    // Past the active window: only the keepalive is due, at its own pace.
    pair.run_for(Duration::from_secs(8));
    let (at, timer) = pair.client.poll_timeout().expect("a keepalive");
    assert_eq!(timer, Timer::Probe);
    assert!(
        at - pair.now > Duration::from_secs(10),
        "idle wake-up in {:?}",
        at - pair.now
    );
}
