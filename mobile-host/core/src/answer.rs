//! Answers to control requests computed from the daemon's state, for the event loop to call:
//! the replies about flows and apps read the PAFT; moves and unpins change it and say which
//! events to publish. Pure functions of what they are given (no IO, no clock), so the loop's
//! hookup is one `match` and this is tested without a daemon.
//!
//! Uplinks are named by the config's names, index = [`UplinkId`]. What "usable" means (socket
//! open and the core reports the path up) is the caller's to say.

use std::collections::BTreeMap;
use std::time::Duration;

use upmt_paft::{AppId, Entry, FlowId, FlowKey, Paft, UplinkId};

use crate::api::{
    AppStatus, AppsReply, ErrorKind, ErrorReply, Event, FlowStatus, FlowsReply, MoveReason,
    MoveReply, TunnelIdle, TunnelState, TunnelStatus, UnpinReply, UplinkBytes,
};
use upmt_proto::client::{Idle, PathState, PathStats};

use crate::uplinks::Uplinks;

/// The uplink called `name`, or the error that lists the real ones.
pub fn uplink_by_name(names: &[String], name: &str) -> Result<UplinkId, ErrorReply> {
    names
        .iter()
        .position(|n| n == name)
        .and_then(Uplinks::id_for_index)
        .ok_or_else(|| ErrorReply {
            kind: ErrorKind::NoSuchUplink,
            message: format!("no such uplink {name:?}; uplinks: {}", names.join(", ")),
        })
}

fn uplink_name(names: &[String], uplink: UplinkId) -> Option<String> {
    names.get(Uplinks::index(uplink)).cloned()
}

fn protocol(proto: u8) -> String {
    match proto {
        1 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        58 => "icmpv6".to_owned(),
        n => n.to_string(),
    }
}

fn flow_status(names: &[String], key: &FlowKey, e: &Entry, now: Duration) -> FlowStatus {
    let total = e.total();
    FlowStatus {
        id: e.id().0,
        app: e.app().to_string(),
        protocol: protocol(key.proto),
        src: key.src,
        src_port: key.sport,
        dst: key.dst,
        dst_port: key.dport,
        uplink: uplink_name(names, e.uplink()),
        pinned: e.pinned(),
        tx_bytes: total.bytes[0],
        rx_bytes: total.bytes[1],
        age_ms: u64::try_from(now.saturating_sub(e.created()).as_millis()).unwrap_or(u64::MAX),
    }
}

/// Every flow (or `app`'s), in id order. `now` is on the PAFT's clock.
pub fn flows(paft: &Paft, names: &[String], now: Duration, app: Option<&str>) -> FlowsReply {
    let mut flows: Vec<FlowStatus> = paft
        .iter()
        .filter(|(_, e)| app.is_none_or(|a| e.app().as_str() == a))
        .map(|(k, e)| flow_status(names, k, e, now))
        .collect();
    flows.sort_by_key(|f| f.id);
    FlowsReply { flows }
}

/// Every app with live flows, by name: its rule (`rule_of` names it, from the policy), the
/// uplinks its flows use, and bytes per uplink.
pub fn apps(
    paft: &Paft,
    names: &[String],
    mut rule_of: impl FnMut(&AppId, Option<u32>) -> String,
) -> AppsReply {
    struct Acc {
        uid: Option<u32>,
        flows: u64,
        on: [bool; upmt_paft::MAX_UPLINKS],
        bytes: [[u64; 2]; upmt_paft::MAX_UPLINKS],
    }
    let mut by_app: BTreeMap<AppId, Acc> = BTreeMap::new();
    for (_, e) in paft.iter() {
        let acc = by_app.entry(e.app().clone()).or_insert(Acc {
            uid: e.uid(),
            flows: 0,
            on: [false; upmt_paft::MAX_UPLINKS],
            bytes: [[0; 2]; upmt_paft::MAX_UPLINKS],
        });
        acc.flows += 1;
        acc.on[Uplinks::index(e.uplink())] = true;
        for (i, b) in acc.bytes.iter_mut().enumerate() {
            let Some(u) = Uplinks::id_for_index(i) else {
                continue;
            };
            let c = e.counters(u);
            b[0] += c.bytes[0];
            b[1] += c.bytes[1];
        }
    }
    let apps = by_app
        .into_iter()
        .map(|(app, acc)| {
            let in_use = |i: usize| names.get(i).cloned();
            AppStatus {
                rule: rule_of(&app, acc.uid),
                name: app.to_string(),
                uplinks: (0..names.len())
                    .filter(|&i| acc.on[i])
                    .filter_map(in_use)
                    .collect(),
                flows: acc.flows,
                blocked: 0,
                select: None,
                move_existing: false,
                avoid_metered: false,
                spread: false,
                duplicated_bytes: 0,
                bytes: (0..names.len().min(upmt_paft::MAX_UPLINKS))
                    .filter(|&i| acc.bytes[i] != [0, 0])
                    .filter_map(|i| {
                        Some(UplinkBytes {
                            uplink: in_use(i)?,
                            tx_bytes: acc.bytes[i][0],
                            rx_bytes: acc.bytes[i][1],
                        })
                    })
                    .collect(),
            }
        })
        .collect();
    AppsReply { apps }
}

/// Counts blocked flows (`held`: each held flow's app, uid and whether the policy blocks it,
/// rather than no uplink being up) into `reply`, adding the apps that have no live flow, so an
/// app whose flows are all blocked still shows (`rule_of` names its rule).
pub fn add_blocked<'a>(
    reply: &mut AppsReply,
    held: impl Iterator<Item = (&'a AppId, Option<u32>, bool)>,
    mut rule_of: impl FnMut(&AppId, Option<u32>) -> String,
) {
    for (app, uid, blocked) in held {
        if !blocked {
            continue;
        }
        match reply.apps.iter_mut().find(|a| a.name == app.as_str()) {
            Some(a) => a.blocked += 1,
            None => reply.apps.push(AppStatus {
                name: app.to_string(),
                rule: rule_of(app, uid),
                uplinks: Vec::new(),
                flows: 0,
                blocked: 1,
                bytes: Vec::new(),
                select: None,
                move_existing: false,
                avoid_metered: false,
                spread: false,
                duplicated_bytes: 0,
            }),
        }
    }
    reply.apps.sort_by(|a, b| a.name.cmp(&b.name));
}

fn uplink_down(name: &str) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::UplinkDown,
        message: format!("uplink {name} is down; it cannot carry flows now"),
    }
}

/// Moves flow `id` to the uplink called `to` and pins it; `usable` says whether an uplink can
/// carry traffic now. The events to publish go into `events`.
pub fn move_flow(
    paft: &mut Paft,
    names: &[String],
    id: u64,
    to: &str,
    usable: impl Fn(UplinkId) -> bool,
    events: &mut Vec<Event>,
) -> Result<MoveReply, ErrorReply> {
    let uplink = uplink_by_name(names, to)?;
    let Some(entry) = paft.by_id_mut(FlowId(id)) else {
        return Err(ErrorReply {
            kind: ErrorKind::NoSuchFlow,
            message: format!("no such flow {id}"),
        });
    };
    if !usable(uplink) {
        return Err(uplink_down(to));
    }
    let from = entry.uplink();
    entry.set_uplink(uplink, true);
    events.push(Event::FlowMoved {
        flow: id,
        app: entry.app().to_string(),
        from: uplink_name(names, from),
        to: to.to_owned(),
        reason: MoveReason::Manual,
    });
    Ok(MoveReply {
        uplink: to.to_owned(),
        flows: vec![id],
    })
}

/// Moves every live flow of `app` to the uplink called `to` and pins them.
pub fn move_app(
    paft: &mut Paft,
    names: &[String],
    app: &str,
    to: &str,
    usable: impl Fn(UplinkId) -> bool,
    events: &mut Vec<Event>,
) -> Result<MoveReply, ErrorReply> {
    let uplink = uplink_by_name(names, to)?;
    let mut ids: Vec<FlowId> = paft.flows_of_app(app).map(|(_, e)| e.id()).collect();
    if ids.is_empty() {
        return Err(ErrorReply {
            kind: ErrorKind::NoSuchApp,
            message: format!("no such app {app:?} with live flows (see upmt apps)"),
        });
    }
    if !usable(uplink) {
        return Err(uplink_down(to));
    }
    ids.sort_unstable();
    for &id in &ids {
        let Some(entry) = paft.by_id_mut(id) else {
            continue;
        };
        let from = entry.uplink();
        entry.set_uplink(uplink, true);
        events.push(Event::FlowMoved {
            flow: id.0,
            app: app.to_owned(),
            from: uplink_name(names, from),
            to: to.to_owned(),
            reason: MoveReason::Manual,
        });
    }
    Ok(MoveReply {
        uplink: to.to_owned(),
        flows: ids.iter().map(|i| i.0).collect(),
    })
}

/// Unpins flow `id` (it stays where it is until the caller lets the policy decide again, which
/// it should do at once for the returned ids).
pub fn unpin_flow(
    paft: &mut Paft,
    id: u64,
    events: &mut Vec<Event>,
) -> Result<UnpinReply, ErrorReply> {
    let Some(entry) = paft.by_id_mut(FlowId(id)) else {
        return Err(ErrorReply {
            kind: ErrorKind::NoSuchFlow,
            message: format!("no such flow {id}"),
        });
    };
    if !entry.pinned() {
        return Ok(UnpinReply { flows: vec![] });
    }
    let uplink = entry.uplink();
    entry.set_uplink(uplink, false);
    events.push(Event::FlowUnpinned {
        flow: id,
        app: entry.app().to_string(),
        reason: MoveReason::Unpinned,
    });
    Ok(UnpinReply { flows: vec![id] })
}

/// Unpins every pinned flow of `app`.
pub fn unpin_app(
    paft: &mut Paft,
    app: &str,
    events: &mut Vec<Event>,
) -> Result<UnpinReply, ErrorReply> {
    let all: Vec<(FlowId, bool)> = paft
        .flows_of_app(app)
        .map(|(_, e)| (e.id(), e.pinned()))
        .collect();
    if all.is_empty() {
        return Err(ErrorReply {
            kind: ErrorKind::NoSuchApp,
            message: format!("no such app {app:?} with live flows (see upmt apps)"),
        });
    }
    let mut flows = Vec::new();
    for (id, pinned) in all {
        if pinned {
            unpin_flow(paft, id.0, events)?;
            flows.push(id.0);
        }
    }
    flows.sort_unstable();
    Ok(UnpinReply { flows })
}

/// Unpins the flows pinned to `uplink`, which just went down, so their policy places them again;
/// returns their ids for that.
pub fn unpin_on_uplink_down(
    paft: &mut Paft,
    uplink: UplinkId,
    events: &mut Vec<Event>,
) -> Vec<FlowId> {
    let ids: Vec<FlowId> = paft
        .flows_on_uplink(uplink)
        .filter(|(_, e)| e.pinned())
        .map(|(_, e)| e.id())
        .collect();
    for &id in &ids {
        if let Some(e) = paft.by_id_mut(id) {
            e.set_uplink(uplink, false);
            events.push(Event::FlowUnpinned {
                flow: id.0,
                app: e.app().to_string(),
                reason: MoveReason::UplinkDown,
            });
        }
    }
    ids
}

/// Where every flow is, to compare before and after a re-decision ([`placement_events`]).
pub fn placements(paft: &Paft, out: &mut Vec<(FlowId, AppId, UplinkId)>) {
    out.clear();
    out.extend(
        paft.iter()
            .map(|(_, e)| (e.id(), e.app().clone(), e.uplink())),
    );
}

/// The events a re-decision caused: flows that changed uplink ([`MoveReason::Policy`]) and
/// flows that left the table while being re-decided (blocked by their policy). Scans the table:
/// for uplink changes and reloads, never per packet.
pub fn placement_events(
    before: &[(FlowId, AppId, UplinkId)],
    paft: &Paft,
    names: &[String],
    events: &mut Vec<Event>,
) {
    for (id, app, was) in before {
        match paft.by_id(*id) {
            Some((_, e)) if e.uplink() != *was => events.push(Event::FlowMoved {
                flow: id.0,
                app: app.to_string(),
                from: uplink_name(names, *was),
                to: uplink_name(names, e.uplink()).unwrap_or_default(),
                reason: MoveReason::Policy,
            }),
            Some(_) => {}
            None => events.push(Event::AppBlocked {
                app: app.to_string(),
                flow: id.0,
                reason: "its policy allows none of the uplinks that are up".to_owned(),
            }),
        }
    }
}

/// One tunnel's status from what the loop knows about it.
pub fn tunnel(
    name: &str,
    interface: &str,
    local: Option<std::net::SocketAddr>,
    stats: Option<PathStats>,
    keepalive: Option<std::time::Duration>,
    bytes: (u64, u64),
) -> TunnelStatus {
    let state = match (local, stats.map(|s| s.state)) {
        (None, _) => TunnelState::Down,
        (Some(_), Some(PathState::Up)) => TunnelState::Up,
        (Some(_), _) => TunnelState::Probing,
    };
    TunnelStatus {
        uplink: name.to_owned(),
        interface: interface.to_owned(),
        state,
        local,
        public: stats.and_then(|s| s.observed).filter(|_| local.is_some()),
        public_addr: stats
            .and_then(|s| s.observed)
            .filter(|_| local.is_some())
            .map(|e| e.ip()),
        rtt_us: stats
            .and_then(|s| s.rtt)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        loss: stats.map_or(0.0, |s| s.loss),
        metered: false,
        tx_bytes: bytes.0,
        rx_bytes: bytes.1,
        tx_packets: stats.map_or(0, |s| s.tx_packets),
        rx_packets: stats.map_or(0, |s| s.rx_packets),
        idle: stats.map(|s| match s.idle {
            Idle::Keepalive => TunnelIdle::Keepalive,
            Idle::Check => TunnelIdle::Check,
            Idle::Sleep => TunnelIdle::Asleep,
        }),
        keepalive_s: keepalive
            .filter(|_| stats.is_some_and(|s| s.idle != Idle::Sleep))
            .map(|k| k.as_secs()),
        keepalive_learning: None,
        resent_bytes: 0,
        mtu: stats.and_then(|s| s.mtu).filter(|_| local.is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upmt_paft::{Config, NewFlow};

    fn names() -> Vec<String> {
        vec!["wifi".into(), "cell".into()]
    }

    fn up(n: u8) -> UplinkId {
        UplinkId::new(n).unwrap()
    }

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            proto: 6,
            src: "10.77.0.2".parse().unwrap(),
            dst: "192.0.2.2".parse().unwrap(),
            sport,
            dport: 80,
        }
    }

    /// Two flows of curl and one of ssh, all on wifi.
    fn table() -> (Paft, Vec<u64>) {
        let mut paft = Paft::new(Config::default());
        let mut ids = Vec::new();
        for (port, app) in [(1000, "curl"), (1001, "curl"), (1002, "ssh")] {
            let id = paft
                .insert(
                    key(port),
                    NewFlow {
                        app: AppId::from(app),
                        uid: Some(1000),
                        uplink: up(0),
                        pinned: false,
                    },
                    Duration::from_secs(1),
                )
                .unwrap();
            ids.push(id.0);
        }
        (paft, ids)
    }

    #[test]
    fn an_unknown_uplink_is_named_with_the_real_ones() {
        let err = uplink_by_name(&names(), "lte").unwrap_err();
        assert_eq!(err.kind, ErrorKind::NoSuchUplink);
        assert_eq!(err.message, "no such uplink \"lte\"; uplinks: wifi, cell");
        assert_eq!(uplink_by_name(&names(), "cell").unwrap(), up(1));
    }

    #[test]
    fn moving_a_flow_pins_it_on_the_new_uplink_and_reports_the_move() {
        let (mut paft, ids) = table();
        let mut events = Vec::new();
        let reply = move_flow(&mut paft, &names(), ids[0], "cell", |_| true, &mut events).unwrap();
        assert_eq!(reply.flows, vec![ids[0]]);
        let (_, e) = paft.by_id(FlowId(ids[0])).unwrap();
        assert_eq!((e.uplink(), e.pinned()), (up(1), true));
        assert_eq!(
            events,
            vec![Event::FlowMoved {
                flow: ids[0],
                app: "curl".into(),
                from: Some("wifi".into()),
                to: "cell".into(),
                reason: MoveReason::Manual
            }]
        );
        let listed = flows(&paft, &names(), Duration::from_secs(3), None);
        let f = &listed.flows[0];
        assert_eq!(
            (f.id, f.uplink.as_deref(), f.pinned),
            (ids[0], Some("cell"), true)
        );
        assert_eq!(f.age_ms, 2000);
        assert_eq!(f.protocol, "tcp");
    }

    #[test]
    fn a_move_to_a_missing_flow_or_a_down_uplink_changes_nothing() {
        let (mut paft, ids) = table();
        let mut events = Vec::new();
        let err = move_flow(&mut paft, &names(), 4242, "cell", |_| true, &mut events).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (ErrorKind::NoSuchFlow, "no such flow 4242")
        );
        let err = move_flow(
            &mut paft,
            &names(),
            ids[0],
            "cell",
            |u| u == up(0),
            &mut events,
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UplinkDown);
        assert!(events.is_empty());
        assert_eq!(paft.by_id(FlowId(ids[0])).unwrap().1.uplink(), up(0));
    }

    #[test]
    fn moving_an_app_moves_all_its_flows_and_only_them() {
        let (mut paft, ids) = table();
        let mut events = Vec::new();
        let reply = move_app(&mut paft, &names(), "curl", "cell", |_| true, &mut events).unwrap();
        assert_eq!(reply.flows, vec![ids[0], ids[1]]);
        assert_eq!(events.len(), 2);
        assert_eq!(paft.by_id(FlowId(ids[2])).unwrap().1.uplink(), up(0));
        let only = flows(&paft, &names(), Duration::from_secs(1), Some("curl"));
        assert!(
            only.flows
                .iter()
                .all(|f| f.uplink.as_deref() == Some("cell") && f.pinned)
        );
        assert_eq!(only.flows.len(), 2);
        let err =
            move_app(&mut paft, &names(), "nobody", "cell", |_| true, &mut events).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NoSuchApp);
    }

    #[test]
    fn unpinning_and_an_uplink_going_down_release_pinned_flows() {
        let (mut paft, ids) = table();
        let mut events = Vec::new();
        move_app(&mut paft, &names(), "curl", "cell", |_| true, &mut events).unwrap();
        events.clear();
        assert_eq!(
            unpin_flow(&mut paft, ids[0], &mut events).unwrap().flows,
            vec![ids[0]]
        );
        assert_eq!(
            unpin_flow(&mut paft, ids[0], &mut events).unwrap().flows,
            Vec::<u64>::new()
        );
        let released = unpin_on_uplink_down(&mut paft, up(1), &mut events);
        assert_eq!(released, vec![FlowId(ids[1])]);
        assert!(matches!(
            events.last(),
            Some(Event::FlowUnpinned {
                reason: MoveReason::UplinkDown,
                ..
            })
        ));
        assert!(paft.iter().all(|(_, e)| !e.pinned()));
        assert_eq!(
            unpin_app(&mut paft, "curl", &mut events).unwrap().flows,
            Vec::<u64>::new()
        );
    }

    #[test]
    fn apps_group_flows_with_their_rule_uplinks_and_bytes() {
        let (mut paft, ids) = table();
        let mut events = Vec::new();
        move_flow(&mut paft, &names(), ids[1], "cell", |_| true, &mut events).unwrap();
        let reply = apps(&paft, &names(), |app, uid| format!("{app} uid {uid:?}"));
        let names: Vec<&str> = reply.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["curl", "ssh"]);
        let curl = &reply.apps[0];
        assert_eq!(curl.flows, 2);
        assert_eq!(curl.uplinks, ["wifi", "cell"]);
        assert_eq!(curl.rule, "curl uid Some(1000)");
        assert_eq!(reply.apps[1].uplinks, ["wifi"]);
    }

    #[test]
    fn apps_whose_flows_are_all_blocked_still_appear_with_their_blocked_count() {
        let (paft, _) = table();
        let mut reply = apps(&paft, &names(), |app, _| format!("{app} rule"));
        let (backup, curl) = (AppId::from("backup"), AppId::from("curl"));
        let held = [
            (&backup, Some(7), true),
            (&backup, Some(7), true),
            (&curl, Some(1000), true),
            (&curl, Some(1000), false),
        ];
        add_blocked(&mut reply, held.into_iter(), |app, _| format!("{app} rule"));
        let rows: Vec<(&str, u64, u64, &str)> = reply
            .apps
            .iter()
            .map(|a| (a.name.as_str(), a.flows, a.blocked, a.rule.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("backup", 0, 2, "backup rule"),
                ("curl", 2, 1, "curl rule"),
                ("ssh", 1, 0, "ssh rule")
            ],
            "held without any uplink up is not blocked"
        );
    }

    #[test]
    fn a_redecision_reports_moved_and_blocked_flows() {
        let (mut paft, ids) = table();
        let mut before = Vec::new();
        placements(&paft, &mut before);
        paft.set_uplink(FlowId(ids[0]), up(1), false).unwrap();
        paft.remove(FlowId(ids[2]));
        let mut events = Vec::new();
        placement_events(&before, &paft, &names(), &mut events);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(
            matches!(&events[0], Event::FlowMoved { flow, reason: MoveReason::Policy, to, .. } if *flow == ids[0] && to == "cell")
        );
        assert!(matches!(&events[1], Event::AppBlocked { app, .. } if app == "ssh"));
    }

    #[test]
    fn a_tunnel_without_a_socket_is_down_and_one_not_proven_is_probing() {
        let t = tunnel("wifi", "wlan0", None, None, None, (0, 0));
        assert_eq!(t.state, TunnelState::Down);
        let local = Some("192.0.2.1:4000".parse().unwrap());
        let t = tunnel("wifi", "wlan0", local, None, None, (1, 2));
        assert_eq!(
            (t.state, t.tx_bytes, t.rx_bytes),
            (TunnelState::Probing, 1, 2)
        );
    }
}
