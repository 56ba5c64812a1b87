//! `upmt status`: the session with the anchor and each tunnel (uplink, interface, local and
//! public endpoint, state, RTT, loss, bytes), like `wg show`.

use std::io::Write;

use crate::control::client::Client;
use crate::control::proto::{
    ProcessWatch, Request, Response, SessionState, StatusReply, TunnelIdle, TunnelState,
};

use super::table::{self, Align, Table};

/// Asks the daemon for its status and prints it.
pub async fn run(client: &mut Client, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let Response::Status(reply) = client.request(Request::Status).await? else {
        anyhow::bail!("unexpected answer from the daemon to status");
    };
    if json {
        super::print_json(out, &reply)
    } else {
        Ok(out.write_all(render(&reply).as_bytes())?)
    }
}

/// The human form of a status reply.
pub fn render(reply: &StatusReply) -> String {
    let s = &reply.session;
    let mut text = match s.state {
        SessionState::Connected => {
            let addrs: Vec<String> = s.virtual_addresses.iter().map(|a| a.to_string()).collect();
            format!(
                "session: connected to {} as {}{}{}\n",
                s.anchor,
                if addrs.is_empty() {
                    "-".to_owned()
                } else {
                    addrs.join(", ")
                },
                s.tun
                    .as_ref()
                    .map(|t| format!(" on {t}"))
                    .unwrap_or_default(),
                s.cipher
                    .as_ref()
                    .map(|c| format!(" ({})", c.as_str()))
                    .unwrap_or_default()
            )
        }
        SessionState::Handshaking => format!("session: handshaking with {}\n", s.anchor),
    };
    if let Some(a) = &s.active_anchor {
        text.push_str(&format!(
            "anchor: {} of {} ({}), in use for {}s{}\n",
            a.index + 1,
            a.anchors,
            if a.index == 0 { "primary" } else { "fallback" },
            a.since_s,
            a.note
                .as_ref()
                .map(|n| format!("; {n}"))
                .unwrap_or_default()
        ));
    }
    text.push('\n');
    let mut t = Table::new(&[
        ("UPLINK", Align::Left),
        ("INTERFACE", Align::Left),
        ("STATE", Align::Left),
        ("LOCAL", Align::Left),
        ("PUBLIC", Align::Left),
        ("RTT", Align::Right),
        ("LOSS", Align::Right),
        ("MTU", Align::Right),
        ("TX", Align::Right),
        ("RX", Align::Right),
        ("IDLE", Align::Left),
    ]);
    for tun in &reply.tunnels {
        t.row(vec![
            if tun.metered {
                format!("{} (metered)", tun.uplink)
            } else {
                tun.uplink.clone()
            },
            tun.interface.clone(),
            state(tun.state).to_owned(),
            table::or_dash(tun.local),
            table::or_dash(tun.public),
            table::rtt(tun.rtt_us),
            table::loss(tun.loss),
            table::or_dash(tun.mtu),
            table::bytes(tun.tx_bytes),
            table::bytes(tun.rx_bytes),
            idle(tun.idle, tun.keepalive_s, tun.keepalive_learning),
        ]);
    }
    text.push_str(&t.render());
    if let Some(o) = &reply.owners {
        text.push_str(&format!(
            "\nowners: {} by uid, {} from the index, {} among new processes, {} by scan, {} by uid without a process, {} unknown; {} decided by default after the lookup bound, {} decided again{}\n",
            o.by_uid, o.index_hits, o.event_hits, o.scans, o.uid_fallback, o.unknown, o.lookups_overdue, o.late_answers,
            match o.process_watch {
                Some(ProcessWatch::Events) => "; new processes from process events",
                Some(ProcessWatch::EventsFromInitialNetns) => "; new processes from process events (initial network namespace)",
                Some(ProcessWatch::Scans) => "; no process events: misses list /proc",
                None => "",
            }
        ));
    }
    text
}

/// What a tunnel sends while idle: "keepalive 25s", "keepalive 31s learning" (its NAT is
/// still tested for a longer one), "keepalive 107s learned", "check 120s" (no flows
/// anywhere), "asleep".
fn idle(idle: Option<TunnelIdle>, every: Option<u64>, learning: Option<bool>) -> String {
    let every = every.map(|s| format!(" {s}s")).unwrap_or_default();
    let learned = match learning {
        Some(true) => " learning",
        Some(false) => " learned",
        None => "",
    };
    match idle {
        Some(TunnelIdle::Keepalive) => format!("keepalive{every}{learned}"),
        Some(TunnelIdle::Check) => format!("check{every}"),
        Some(TunnelIdle::Asleep) => "asleep".to_owned(),
        None => "-".to_owned(),
    }
}

fn state(s: TunnelState) -> &'static str {
    match s {
        TunnelState::Up => "up",
        TunnelState::Probing => "probing",
        TunnelState::Down => "down",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{OwnerLookups, SessionCipher, SessionStatus, TunnelStatus};

    #[test]
    fn status_renders_the_session_line_and_an_aligned_tunnel_table() {
        let reply = StatusReply {
            session: SessionStatus {
                state: SessionState::Connected,
                anchor: "198.51.100.1:51820".parse().unwrap(),
                virtual_addresses: vec!["10.77.0.2".parse().unwrap(), "fd77::2".parse().unwrap()],
                tun: Some("upmt0".into()),
                active_anchor: None,
                cipher: None,
            },
            tunnels: vec![
                TunnelStatus {
                    uplink: "wifi".into(),
                    interface: "wlan0".into(),
                    state: TunnelState::Up,
                    local: Some("192.168.1.10:40000".parse().unwrap()),
                    public: Some("203.0.113.7:61000".parse().unwrap()),
                    public_addr: Some("203.0.113.7".parse().unwrap()),
                    rtt_us: Some(12_345),
                    loss: 0.0,
                    metered: false,
                    tx_bytes: 1_234_567,
                    rx_bytes: 98_765_432,
                    tx_packets: 10,
                    rx_packets: 20,
                    idle: Some(TunnelIdle::Keepalive),
                    keepalive_s: Some(25),
                    keepalive_learning: None,
                    resent_bytes: 0,
                    mtu: Some(1472),
                },
                TunnelStatus {
                    uplink: "cell".into(),
                    interface: "rmnet0".into(),
                    state: TunnelState::Down,
                    local: None,
                    public: None,
                    public_addr: None,
                    rtt_us: None,
                    loss: 1.0,
                    metered: false,
                    tx_bytes: 0,
                    rx_bytes: 512,
                    tx_packets: 0,
                    rx_packets: 1,
                    idle: Some(TunnelIdle::Asleep),
                    keepalive_s: None,
                    keepalive_learning: None,
                    resent_bytes: 0,
                    mtu: None,
                },
            ],
            owners: Some(Box::new(OwnerLookups {
                by_uid: 40,
                index_hits: 7,
                event_hits: 5,
                scans: 1,
                uid_fallback: 2,
                unknown: 3,
                lookups_overdue: 1,
                late_answers: 1,
                process_watch: Some(ProcessWatch::EventsFromInitialNetns),
            })),
        };
        let expected = "\
session: connected to 198.51.100.1:51820 as 10.77.0.2, fd77::2 on upmt0

UPLINK  INTERFACE  STATE  LOCAL               PUBLIC                 RTT  LOSS   MTU       TX        RX  IDLE
wifi    wlan0      up     192.168.1.10:40000  203.0.113.7:61000  12.3 ms    0%  1472  1.2 MiB  94.2 MiB  keepalive 25s
cell    rmnet0     down   -                   -                        -  100%     -      0 B     512 B  asleep

owners: 40 by uid, 7 from the index, 5 among new processes, 1 by scan, 2 by uid without a process, 3 unknown; 1 decided by default after the lookup bound, 1 decided again; new processes from process events (initial network namespace)
";
        assert_eq!(render(&reply), expected);
    }

    #[test]
    fn a_metered_uplink_says_so_after_its_name() {
        let reply = StatusReply {
            session: SessionStatus {
                state: SessionState::Handshaking,
                anchor: "198.51.100.1:51820".parse().unwrap(),
                virtual_addresses: vec![],
                tun: None,
                active_anchor: None,
                cipher: None,
            },
            tunnels: vec![TunnelStatus {
                uplink: "cell".into(),
                interface: "rmnet0".into(),
                state: TunnelState::Up,
                local: None,
                public: None,
                public_addr: None,
                rtt_us: None,
                loss: 0.0,
                idle: None,
                keepalive_s: None,
                keepalive_learning: None,
                resent_bytes: 0,
                mtu: None,
                metered: true,
                tx_bytes: 0,
                rx_bytes: 0,
                tx_packets: 0,
                rx_packets: 0,
            }],
            owners: None,
        };
        let text = render(&reply);
        assert!(text.contains("\ncell (metered)  rmnet0"), "{text}");
    }

    #[test]
    fn a_connected_session_names_its_cipher() {
        let reply = StatusReply {
            session: SessionStatus {
                state: SessionState::Connected,
                anchor: "198.51.100.1:51820".parse().unwrap(),
                virtual_addresses: vec!["10.77.0.2".parse().unwrap()],
                tun: Some("upmt0".into()),
                active_anchor: None,
                cipher: Some(SessionCipher::Aes256Gcm),
            },
            tunnels: vec![],
            owners: None,
        };
        assert!(
            render(&reply).starts_with(
                "session: connected to 198.51.100.1:51820 as 10.77.0.2 on upmt0 (aes-256-gcm)\n"
            ),
            "{}",
            render(&reply)
        );
    }

    #[test]
    fn a_handshaking_session_says_so() {
        let reply = StatusReply {
            session: SessionStatus {
                state: SessionState::Handshaking,
                anchor: "[2001:db8::1]:51820".parse().unwrap(),
                virtual_addresses: vec![],
                tun: None,
                active_anchor: None,
                cipher: None,
            },
            tunnels: vec![],
            owners: None,
        };
        assert!(
            render(&reply).starts_with("session: handshaking with [2001:db8::1]:51820\n"),
            "{}",
            render(&reply)
        );
    }

    #[test]
    fn a_failed_over_session_names_the_anchor_in_use_and_what_was_lost() {
        let reply = StatusReply {
            session: SessionStatus {
                state: SessionState::Connected,
                anchor: "198.51.100.7:51900".parse().unwrap(),
                virtual_addresses: vec!["10.78.0.2".parse().unwrap()],
                tun: Some("upmt0".into()),
                active_anchor: Some(Box::new(crate::control::proto::ActiveAnchor {
                    index: 1,
                    anchors: 2,
                    endpoints: vec!["198.51.100.7:51900".parse().unwrap()],
                    public_key: "k".into(),
                    since_s: 42,
                    failed_over_from: Some("203.0.113.2:51900".parse().unwrap()),
                    flows_reset: 3,
                    note: Some("failed over from 203.0.113.2:51900 42s ago: 3 flows reset".into()),
                })),
                cipher: None,
            },
            tunnels: vec![],
            owners: None,
        };
        assert!(
            render(&reply).starts_with(
                "session: connected to 198.51.100.7:51900 as 10.78.0.2 on upmt0\n\
                 anchor: 2 of 2 (fallback), in use for 42s; failed over from 203.0.113.2:51900 42s ago: 3 flows reset\n"
            ),
            "{}",
            render(&reply)
        );
    }
}
