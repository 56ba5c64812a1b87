//! The anchor's timers with many configured peers: a wake-up touches only the sessions that are
//! due, never every peer.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use upmt_proto::anchor::{Anchor, AnchorConfig, Event, PeerConfig};
use upmt_proto::client::{Client, ClientConfig};
use upmt_proto::keys::StaticSecret;
use upmt_proto::sim::udp4;
use upmt_proto::time::Instant;
use upmt_proto::{HEADER_LEN, PathId, PeerId};

const CONFIGURED: usize = 2000;
const SESSIONS: usize = 40;
const TIMEOUT: Duration = Duration::from_secs(60);

fn secret() -> StaticSecret {
    StaticSecret::generate().expect("os random generator")
}

fn source(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, i as u8 + 1], 40000))
}

/// Datagrams back and forth until neither side has anything left to send.
fn exchange(anchor: &mut Anchor, clients: &mut [Client], now: Instant) {
    let mut buf = vec![0u8; 2048];
    for _ in 0..8 {
        let mut moved = false;
        for (i, c) in clients.iter_mut().enumerate() {
            while let Some(t) = c.poll_transmit(now, &mut buf) {
                moved = true;
                let _ = anchor.handle_datagram(source(i), &mut buf[..t.len], now);
            }
        }
        while let Some(t) = anchor.poll_transmit(now, &mut buf) {
            moved = true;
            let dst = t.dst.expect("the anchor always names a destination");
            let i = clients
                .iter()
                .enumerate()
                .find_map(|(i, _)| (source(i) == dst).then_some(i))
                .expect("only the clients' addresses are answered");
            let _ = clients[i].handle_datagram(t.path, &mut buf[..t.len], now);
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn a_timeout_with_thousands_of_idle_peers_touches_only_the_sessions_that_are_due() {
    let an_secret = secret();
    let mh_secrets: Vec<StaticSecret> = (0..SESSIONS).map(|_| secret()).collect();
    let peers = (0..CONFIGURED)
        .map(|i| PeerConfig {
            name: format!("mh{i}"),
            public: mh_secrets
                .get(i)
                .cloned()
                .unwrap_or_else(secret)
                .public_key(),
            virtual_ipv4: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 0, 2)) + i as u32),
            virtual_ipv6: None,
        })
        .collect();
    let mut config = AnchorConfig::new(an_secret.clone(), peers);
    config.prefix4 = 16;
    config.session_timeout = TIMEOUT;
    let mut now = Instant::ZERO;
    let mut anchor = Anchor::new(config, now);
    assert_eq!(anchor.poll_timeout(), None, "no session, no timer");

    let mut clients: Vec<Client> = mh_secrets
        .iter()
        .map(|s| {
            // Keepalives far apart: the silent half must stay silent for the whole test.
            let mut cc = ClientConfig::new(s.clone(), an_secret.public_key());
            cc.keepalive = Duration::from_secs(3600);
            let mut c = Client::new(cc, now, 1_700_000_000_000_000_000);
            c.handle_path_up(PathId(0), now);
            c
        })
        .collect();
    exchange(&mut anchor, &mut clients, now);
    assert_eq!(
        anchor.peers().filter(|p| p.connected).count(),
        SESSIONS,
        "every client got a session"
    );
    assert_eq!(anchor.sessions_scheduled(), SESSIONS);
    while anchor.poll_event().is_some() {}

    // Nothing is due before the timeout: a wake-up then looks at nothing.
    anchor.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(anchor.timer_visits(), 0);

    // Half the clients keep talking (a probe now and then), the other half go silent. Run the
    // anchor's timers as a driver would, for a little more than two timeouts.
    let end = now + TIMEOUT * 2 + Duration::from_secs(5);
    let mut wakes = 0u64;
    let mut disconnected = Vec::new();
    while now < end {
        let next_traffic = now + Duration::from_secs(10);
        let due = anchor
            .poll_timeout()
            .map_or(next_traffic, |(t, _)| t.min(next_traffic));
        now = due.max(now);
        if anchor.poll_timeout().is_some_and(|(t, _)| t <= now) {
            wakes += 1;
            anchor.handle_timeout(now);
        }
        if now == next_traffic {
            for (i, c) in clients.iter_mut().enumerate().step_by(2) {
                let v4 = c.session().expect("a session").virtual_ipv4;
                let inner = udp4(v4, Ipv4Addr::new(192, 0, 2, 2), 5000, 7777, i as u32);
                let mut buf = vec![0u8; 2048];
                buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(&inner);
                let len = c
                    .encapsulate(PathId(0), &mut buf, inner.len(), now)
                    .expect("the session seals");
                anchor
                    .handle_datagram(source(i), &mut buf[..len], now)
                    .expect("the anchor takes the packet");
            }
        }
        while let Some(e) = anchor.poll_event() {
            if let Event::PeerDisconnected { peer, .. } = e {
                disconnected.push(peer);
            }
        }
    }
    disconnected.sort();
    let silent: Vec<PeerId> = (1..SESSIONS).step_by(2).map(|i| PeerId(i as u32)).collect();
    assert_eq!(disconnected, silent, "exactly the silent sessions expired");
    assert_eq!(anchor.sessions_scheduled(), SESSIONS / 2);
    // Each talking session is re-filed about once per timeout, each silent one expires once:
    // a few visits per session in all, however many peers are configured.
    let visits = anchor.timer_visits();
    assert!(
        visits <= 3 * SESSIONS as u64,
        "{visits} expiry entries visited in {wakes} wake-ups for {SESSIONS} sessions"
    );
    assert!(
        visits >= SESSIONS as u64,
        "every session was checked at least once"
    );
}
