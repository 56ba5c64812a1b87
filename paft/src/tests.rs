//! Table tests on virtual time: unit tests for each operation and a model-based property
//! test of the invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use proptest::prelude::*;

use crate::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn up(n: u8) -> UplinkId {
    UplinkId::new(n).expect("uplink id below MAX_UPLINKS")
}

fn key(proto_num: u8, n: u8) -> FlowKey {
    FlowKey {
        proto: proto_num,
        src: IpAddr::from([10, 0, 0, 2]),
        dst: IpAddr::from([192, 0, 2, n]),
        sport: 40_000 + u16::from(n),
        dport: 443,
    }
}

fn flow(app: &str, uplink: u8) -> NewFlow {
    NewFlow {
        app: AppId::from(app),
        uid: Some(10_123),
        uplink: up(uplink),
        pinned: false,
    }
}

fn table(max_flows: usize) -> Paft {
    Paft::new(Config {
        max_flows,
        timeouts: Timeouts::default(),
    })
}

fn expired_keys(t: &mut Paft, now: Duration) -> Vec<FlowKey> {
    let mut out = Vec::new();
    t.expire(now, &mut out);
    let mut keys: Vec<FlowKey> = out.into_iter().map(|(k, _)| k).collect();
    keys.sort();
    keys
}

#[test]
fn an_inserted_flow_is_found_by_key_and_by_id() {
    let mut t = table(16);
    let k = key(proto::TCP, 1);
    let id = t
        .insert(k, flow("com.example.video", 1), secs(5))
        .expect("room");
    let e = t.lookup(&k).expect("inserted");
    assert_eq!(e.id(), id);
    assert_eq!(e.app().as_str(), "com.example.video");
    assert_eq!(e.uid(), Some(10_123));
    assert_eq!(e.uplink(), up(1));
    assert_eq!(e.created(), secs(5));
    let (k2, e2) = t.by_id(id).expect("by id");
    assert_eq!(*k2, k);
    assert_eq!(e2.id(), id);
    assert!(
        t.lookup(&k.reversed()).is_none(),
        "flows are stored in the initiator's direction only"
    );
}

#[test]
fn inserting_an_existing_key_is_refused_with_its_id() {
    let mut t = table(16);
    let k = key(proto::UDP, 1);
    let id = t.insert(k, flow("a", 0), secs(0)).expect("room");
    assert_eq!(
        t.insert(k, flow("b", 1), secs(1)),
        Err(InsertError::Exists(id))
    );
    assert_eq!(t.lookup(&k).map(|e| e.app().as_str()), Some("a"));
}

#[test]
fn touch_counts_per_uplink_and_direction() {
    let mut t = table(16);
    let k = key(proto::UDP, 1);
    t.insert(k, flow("a", 0), secs(0)).expect("room");
    t.touch(&k, Dir::Orig, 100, 0, None, secs(1))
        .expect("known flow");
    t.touch(&k, Dir::Orig, 50, 0, None, secs(1))
        .expect("known flow");
    t.touch(&k, Dir::Reply, 1400, 0, Some(up(2)), secs(2))
        .expect("known flow");
    let e = t.lookup(&k).expect("known flow");
    assert_eq!(e.counters(up(0)).packets, [2, 0]);
    assert_eq!(e.counters(up(0)).bytes, [150, 0]);
    assert_eq!(e.counters(up(2)).packets, [0, 1]);
    assert_eq!(e.counters(up(2)).bytes, [0, 1400]);
    assert_eq!(e.total().bytes, [150, 1400]);
    assert_eq!(e.last_seen(), secs(2));
    assert!(e.replied());
    assert!(
        t.touch(&key(proto::UDP, 9), Dir::Orig, 1, 0, None, secs(3))
            .is_none()
    );
}

#[test]
fn a_one_way_udp_flow_expires_after_60_s_idle_and_a_two_way_one_after_180_s() {
    let mut t = table(16);
    let one = key(proto::UDP, 1);
    let two = key(proto::UDP, 2);
    t.insert(one, flow("a", 0), secs(0)).expect("room");
    t.insert(two, flow("a", 0), secs(0)).expect("room");
    t.touch(&one, Dir::Orig, 10, 0, None, secs(10));
    t.touch(&two, Dir::Orig, 10, 0, None, secs(10));
    t.touch(&two, Dir::Reply, 10, 0, None, secs(10));
    assert!(expired_keys(&mut t, secs(69)).is_empty());
    assert_eq!(expired_keys(&mut t, secs(70)), vec![one]);
    assert!(expired_keys(&mut t, secs(189)).is_empty());
    assert_eq!(expired_keys(&mut t, secs(190)), vec![two]);
    assert!(t.is_empty());
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn a_touched_flow_survives_its_first_deadline_and_poll_timeout_is_never_late() {
    let mut t = table(16);
    let k = key(proto::ICMP, 1);
    t.insert(k, flow("ping", 0), secs(0)).expect("room");
    assert_eq!(t.poll_timeout(), Some(secs(30)));
    t.touch(&k, Dir::Orig, 84, 0, None, secs(20));
    assert!(t.poll_timeout().is_some_and(|d| d <= secs(50)));
    assert!(
        expired_keys(&mut t, secs(30)).is_empty(),
        "touched at 20 s, so alive until 50 s"
    );
    assert_eq!(t.poll_timeout(), Some(secs(50)));
    assert_eq!(expired_keys(&mut t, secs(50)), vec![k]);
}

#[test]
fn an_established_tcp_flow_lives_two_hours_idle() {
    let mut t = table(16);
    let k = key(proto::TCP, 1);
    t.insert(k, flow("a", 0), secs(0)).expect("room");
    t.touch(&k, Dir::Orig, 60, tcp_flags::SYN, None, secs(0));
    t.touch(
        &k,
        Dir::Reply,
        60,
        tcp_flags::SYN | tcp_flags::ACK,
        None,
        secs(0),
    );
    assert_eq!(
        t.lookup(&k).map(Entry::tcp_state),
        Some(TcpState::Established)
    );
    assert!(expired_keys(&mut t, secs(7199)).is_empty());
    assert_eq!(expired_keys(&mut t, secs(7200)), vec![k]);
}

#[test]
fn an_unanswered_syn_expires_after_the_opening_timeout() {
    let mut t = table(16);
    let k = key(proto::TCP, 1);
    t.insert(k, flow("a", 0), secs(0)).expect("room");
    t.touch(&k, Dir::Orig, 60, tcp_flags::SYN, None, secs(0));
    assert_eq!(expired_keys(&mut t, secs(60)), vec![k]);
}

#[test]
fn a_tcp_flow_closed_by_fins_expires_ten_seconds_after_its_last_packet() {
    let mut t = table(16);
    let k = key(proto::TCP, 1);
    t.insert(k, flow("a", 0), secs(0)).expect("room");
    t.touch(&k, Dir::Orig, 60, tcp_flags::SYN, None, secs(0));
    t.touch(
        &k,
        Dir::Reply,
        60,
        tcp_flags::SYN | tcp_flags::ACK,
        None,
        secs(0),
    );
    t.touch(
        &k,
        Dir::Orig,
        60,
        tcp_flags::FIN | tcp_flags::ACK,
        None,
        secs(100),
    );
    assert_eq!(
        t.lookup(&k).map(Entry::tcp_state),
        Some(TcpState::HalfClosed)
    );
    t.touch(
        &k,
        Dir::Reply,
        60,
        tcp_flags::FIN | tcp_flags::ACK,
        None,
        secs(101),
    );
    assert_eq!(t.lookup(&k).map(Entry::tcp_state), Some(TcpState::Closing));
    assert!(t.poll_timeout().is_some_and(|d| d <= secs(111)));
    assert!(expired_keys(&mut t, secs(110)).is_empty());
    assert_eq!(
        t.poll_timeout(),
        Some(secs(111)),
        "the stale opening timer was re-armed"
    );
    assert_eq!(expired_keys(&mut t, secs(111)), vec![k]);
}

#[test]
fn a_reset_tcp_flow_expires_after_the_closing_timeout() {
    let mut t = table(16);
    let k = key(proto::TCP, 1);
    t.insert(k, flow("a", 0), secs(0)).expect("room");
    t.touch(&k, Dir::Orig, 60, tcp_flags::ACK, None, secs(0));
    // Re-arms the flow's timer at its established deadline (2 h), so the RST must pull it in.
    assert!(expired_keys(&mut t, secs(100)).is_empty());
    assert_eq!(t.poll_timeout(), Some(secs(7200)));
    t.touch(&k, Dir::Reply, 40, tcp_flags::RST, None, secs(500));
    assert_eq!(t.poll_timeout(), Some(secs(510)));
    assert!(expired_keys(&mut t, secs(509)).is_empty());
    assert_eq!(expired_keys(&mut t, secs(510)), vec![k]);
}

#[test]
fn a_full_table_drops_expired_flows_first_and_reports_them_later() {
    let mut t = table(2);
    let a = key(proto::ICMP, 1);
    let b = key(proto::UDP, 2);
    t.insert(a, flow("a", 0), secs(0)).expect("room");
    t.insert(b, flow("a", 0), secs(0)).expect("room");
    let c = key(proto::UDP, 3);
    assert_eq!(
        t.insert(c, flow("a", 0), secs(29)),
        Err(InsertError::Full(2))
    );
    // At 30 s the ICMP flow has expired and makes room; the UDP one (60 s) stays.
    t.insert(c, flow("a", 0), secs(30))
        .expect("expired flow evicted");
    assert_eq!(t.len(), 2);
    assert!(t.lookup(&a).is_none());
    assert_eq!(
        expired_keys(&mut t, secs(30)),
        vec![a],
        "the eviction is reported by expire"
    );
}

#[test]
fn pinning_moves_a_flow_between_uplinks() {
    let mut t = table(16);
    let k1 = key(proto::UDP, 1);
    let k2 = key(proto::UDP, 2);
    let id1 = t.insert(k1, flow("video", 0), secs(0)).expect("room");
    t.insert(k2, flow("store", 0), secs(0)).expect("room");
    t.set_uplink(id1, up(1), true).expect("known id");
    let e = t.by_id(id1).expect("known id").1;
    assert_eq!((e.uplink(), e.pinned()), (up(1), true));
    let on0: Vec<_> = t.flows_on_uplink(up(0)).map(|(k, _)| *k).collect();
    assert_eq!(on0, vec![k2]);
    let mut ids = Vec::new();
    t.ids_on_uplink(up(1), &mut ids);
    assert_eq!(ids, vec![id1]);
    assert_eq!(
        t.set_uplink(FlowId(999), up(1), true),
        Err(UnknownFlow(FlowId(999)))
    );
}

#[test]
fn flows_of_app_lists_only_that_app() {
    let mut t = table(16);
    for (i, app) in ["video", "store", "video"].iter().enumerate() {
        t.insert(key(proto::UDP, i as u8), flow(app, 0), secs(0))
            .expect("room");
    }
    assert_eq!(t.flows_of_app("video").count(), 2);
    assert_eq!(t.flows_of_app("store").count(), 1);
    assert_eq!(t.flows_of_app("bank").count(), 0);
}

#[test]
fn removed_flows_free_their_slot_and_ids_are_never_reused() {
    let mut t = table(1);
    let k = key(proto::UDP, 1);
    let id1 = t.insert(k, flow("a", 0), secs(0)).expect("room");
    let (rk, re) = t.remove(id1).expect("present");
    assert_eq!((rk, re.id()), (k, id1));
    assert!(t.by_id(id1).is_none() && t.lookup(&k).is_none());
    let id2 = t.insert(k, flow("a", 0), secs(1)).expect("slot freed");
    assert!(id2 > id1);
    // The removed flow's timer must not expire the new flow living in the same slot.
    assert!(expired_keys(&mut t, secs(60)).is_empty());
    assert_eq!(expired_keys(&mut t, secs(61)), vec![k]);
}

#[test]
fn the_timer_heap_stays_bounded_under_churn() {
    let mut t = table(100);
    for round in 0..200u64 {
        for n in 0..50u8 {
            let k = key(proto::TCP, n);
            if let Ok(id) = t.insert(k, flow("a", 0), secs(round)) {
                t.touch(&k, Dir::Orig, 1, tcp_flags::FIN, None, secs(round));
                if n % 2 == 0 {
                    t.remove(id);
                }
            }
        }
        let mut out = Vec::new();
        t.expire(secs(round), &mut out);
        assert!(t.timer_count() <= 2 * t.len() + 1024 + 100);
    }
}

fn numbered_key(n: u32) -> FlowKey {
    FlowKey {
        proto: proto::TCP,
        src: IpAddr::from([10, 0, (n >> 16) as u8, (n >> 8) as u8]),
        dst: IpAddr::from([192, 0, 2, 1]),
        sport: 1024 + (n & 0xff) as u16,
        dport: 443,
    }
}

#[test]
fn the_table_gives_memory_back_after_a_burst_and_keeps_its_survivors() {
    let mut t = table(65_536);
    let empty = t.heap_bytes();
    let mut survivors = Vec::new();
    for n in 0..50_000u32 {
        let k = numbered_key(n);
        let id = t.insert(k, flow("a", 0), secs(0)).expect("room");
        // Every thousandth flow is established (two hours); the rest close (ten seconds).
        let flags = if n % 1000 == 0 {
            tcp_flags::ACK
        } else {
            tcp_flags::RST
        };
        t.touch(&k, Dir::Orig, 40, flags, None, secs(0));
        if n % 1000 == 0 {
            survivors.push((k, id));
        }
    }
    let burst = t.heap_bytes();
    let mut out = Vec::new();
    t.expire(secs(11), &mut out);
    assert_eq!(out.len(), 50_000 - survivors.len());
    let after = t.heap_bytes();
    assert!(
        after < burst / 20 && after < empty + 64 * 1024,
        "heap {after} B after the burst ({burst} B at its peak, {empty} B empty)"
    );
    for (k, id) in &survivors {
        assert_eq!(t.lookup(k).map(Entry::id), Some(*id));
        assert_eq!(t.by_id(*id).map(|(key, _)| *key), Some(*k));
    }
    // The survivors still count, expire on time, and new flows still fit.
    let (k0, _) = survivors[0];
    assert!(
        t.touch(&k0, Dir::Reply, 40, tcp_flags::ACK, None, secs(12))
            .is_some()
    );
    let fresh = t
        .insert(numbered_key(60_000), flow("b", 1), secs(12))
        .expect("room");
    assert!(t.by_id(fresh).is_some());
    out.clear();
    t.expire(secs(12 + 2 * 3600), &mut out);
    assert_eq!(out.len(), survivors.len() + 1);
    assert!(t.is_empty());
}

#[test]
fn a_flow_counted_on_a_second_uplink_keeps_both_counts() {
    let mut t = table(16);
    let k = key(proto::UDP, 1);
    t.insert(k, flow("a", 1), secs(0)).expect("room");
    t.touch(&k, Dir::Orig, 100, 0, None, secs(0));
    t.touch(&k, Dir::Reply, 200, 0, Some(up(3)), secs(0));
    t.touch(&k, Dir::Orig, 50, 0, None, secs(0));
    let e = t.lookup(&k).expect("present");
    assert_eq!(e.counters(up(1)).bytes, [150, 0]);
    assert_eq!(e.counters(up(3)).bytes, [0, 200]);
    assert_eq!(e.counters(up(0)).bytes, [0, 0]);
    assert_eq!(e.total().packets, [2, 1]);
}

#[test]
fn uplink_ids_are_bounded_by_max_uplinks() {
    assert!(UplinkId::new(MAX_UPLINKS as u8 - 1).is_some());
    assert!(UplinkId::new(MAX_UPLINKS as u8).is_none());
}

// ---- model-based property test ----

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, u8),
    Touch(u8, bool, u16, u8),
    Advance(u16),
    Expire,
    Remove(u8),
    SetUplink(u8, u8, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..12, 0u8..4).prop_map(|(k, u)| Op::Insert(k, u)),
        (0u8..12, any::<bool>(), 0u16..1500, 0u8..4).prop_map(|(k, r, l, u)| Op::Touch(k, r, l, u)),
        (0u16..100).prop_map(Op::Advance),
        Just(Op::Expire),
        (0u8..12).prop_map(Op::Remove),
        (0u8..12, 0u8..4, any::<bool>()).prop_map(|(k, u, p)| Op::SetUplink(k, u, p)),
    ]
}

/// ICMP (30 s) for every third key, UDP (60 s / 180 s) for the rest.
fn model_key(k: u8) -> FlowKey {
    key(
        if k.is_multiple_of(3) {
            proto::ICMP
        } else {
            proto::UDP
        },
        k,
    )
}

struct Model {
    id: FlowId,
    last_seen: u64,
    replied: bool,
    uplink: u8,
    pinned: bool,
}

impl Model {
    fn deadline(&self, k: u8) -> u64 {
        self.last_seen
            + if k.is_multiple_of(3) {
                30
            } else if self.replied {
                180
            } else {
                60
            }
    }
}

const MAX: usize = 8;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_table_agrees_with_a_simple_model(ops in proptest::collection::vec(op(), 1..200)) {
        let mut t = table(MAX);
        let mut m: BTreeMap<u8, Model> = BTreeMap::new();
        let mut pending_evicted: BTreeSet<FlowKey> = BTreeSet::new();
        let mut all_ids: BTreeSet<FlowId> = BTreeSet::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Insert(k, u) => {
                    let r = t.insert(model_key(k), flow("app", u), secs(now));
                    if let Some(f) = m.get(&k) {
                        prop_assert_eq!(r, Err(InsertError::Exists(f.id)));
                    } else {
                        if m.len() >= MAX {
                            let dead: Vec<u8> = m.iter().filter(|(k, f)| f.deadline(**k) <= now).map(|(k, _)| *k).collect();
                            for d in dead {
                                m.remove(&d);
                                pending_evicted.insert(model_key(d));
                            }
                        }
                        if m.len() >= MAX {
                            prop_assert_eq!(r, Err(InsertError::Full(MAX)));
                        } else {
                            let id = r.expect("model says there is room");
                            prop_assert!(all_ids.insert(id), "id {} handed out twice", id);
                            m.insert(k, Model { id, last_seen: now, replied: false, uplink: u, pinned: false });
                        }
                    }
                }
                Op::Touch(k, reply, len, u) => {
                    let dir = if reply { Dir::Reply } else { Dir::Orig };
                    let r = t.touch(&model_key(k), dir, usize::from(len), 0, Some(up(u)), secs(now)).map(|e| e.id());
                    prop_assert_eq!(r, m.get(&k).map(|f| f.id));
                    if let Some(f) = m.get_mut(&k) {
                        f.last_seen = now;
                        f.replied |= reply;
                    }
                }
                Op::Advance(s) => now += u64::from(s),
                Op::Expire => {
                    let mut got: Vec<FlowKey> = expired_keys(&mut t, secs(now));
                    let dead: Vec<u8> = m.iter().filter(|(k, f)| f.deadline(**k) <= now).map(|(k, _)| *k).collect();
                    let mut want: Vec<FlowKey> = pending_evicted.iter().copied().collect();
                    for d in dead {
                        m.remove(&d);
                        want.push(model_key(d));
                    }
                    pending_evicted.clear();
                    got.sort();
                    want.sort();
                    prop_assert_eq!(got, want);
                }
                Op::Remove(k) => {
                    let id = m.get(&k).map(|f| f.id).unwrap_or(FlowId(u64::MAX));
                    let r = t.remove(id).map(|(key, _)| key);
                    prop_assert_eq!(r, m.remove(&k).map(|_| model_key(k)));
                }
                Op::SetUplink(k, u, p) => {
                    let id = m.get(&k).map(|f| f.id).unwrap_or(FlowId(u64::MAX));
                    prop_assert_eq!(t.set_uplink(id, up(u), p).is_ok(), m.contains_key(&k));
                    if let Some(f) = m.get_mut(&k) {
                        f.uplink = u;
                        f.pinned = p;
                    }
                }
            }
            // Invariants after every step.
            prop_assert!(t.len() <= MAX);
            prop_assert_eq!(t.len(), m.len());
            prop_assert_eq!(t.iter().count(), m.len());
            let mut ids = BTreeSet::new();
            for (k, f) in &m {
                let e = t.lookup(&model_key(*k)).expect("model flow is in the table");
                prop_assert_eq!(e.id(), f.id);
                prop_assert_eq!((e.uplink().get(), e.pinned()), (f.uplink, f.pinned));
                let (bk, be) = t.by_id(f.id).expect("id index agrees");
                prop_assert_eq!(*bk, model_key(*k));
                prop_assert_eq!(be.id(), f.id);
                prop_assert!(ids.insert(f.id));
            }
            if let Some(next) = m.iter().map(|(k, f)| f.deadline(*k)).min() {
                let pt = t.poll_timeout().expect("flows exist, so a timer is armed");
                prop_assert!(pt <= secs(next), "poll_timeout {:?} later than next expiry {}", pt, next);
            }
        }
    }
}
