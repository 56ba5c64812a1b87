//! `upmt-an show`: the reply built from the core's peer status, and its rendering for people.
//!
//! [`snapshot`] turns `Anchor::peers()` into the wire's [`Show`] (times become "milliseconds
//! ago" at the `now` the loop passes); [`render`] prints it as `wg show` does: a block per peer,
//! a small table of its paths. Both are pure, so the rendering is tested from a fixed value.

use std::fmt::Write as _;

use upmt_proto::anchor::PeerStatus;
use upmt_proto::time::Instant;

use crate::control::{PathShow, PeerShow, Show};

/// `base` (the anchor's own lines) with `peers` filled in as of `now`.
pub fn snapshot(base: &Show, peers: impl Iterator<Item = PeerStatus>, now: Instant) -> Show {
    let ago = |t: Option<Instant>| {
        t.map(|t| u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX))
    };
    Show {
        peers: peers
            .map(|p| PeerShow {
                name: p.name,
                public_key: p.public.to_string(),
                address: p.virtual_ipv4,
                address6: p.virtual_ipv6,
                connected: p.connected,
                last_handshake_ms_ago: ago(p.last_handshake),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rx_packets: p.rx_packets,
                tx_packets: p.tx_packets,
                flows: p.flows as u64,
                resent_bytes: p.resent_bytes,
                paths: p
                    .path_status
                    .iter()
                    .map(|s| PathShow {
                        path: s.path.0,
                        endpoint: s.endpoint,
                        last_packet_ms_ago: ago(s.last_rx),
                        down: s.down,
                    })
                    .collect(),
            })
            .collect(),
        ..base.clone()
    }
}

/// The human rendering of `show`.
pub fn render(show: &Show) -> String {
    let mut out = String::new();
    let connected = show.peers.iter().filter(|p| p.connected).count();
    let _ = writeln!(out, "anchor {}: listening on {}", show.tun, show.listen);
    let _ = writeln!(out, "  public key  {}", show.public_key);
    let _ = writeln!(out, "  config      {}", show.config);
    let _ = writeln!(
        out,
        "  peers       {} ({connected} connected)",
        show.peers.len()
    );
    for p in &show.peers {
        out.push('\n');
        let state = if p.connected {
            "connected"
        } else {
            "not connected"
        };
        let _ = writeln!(out, "peer {}: {state}", p.name);
        let _ = writeln!(out, "  public key  {}", p.public_key);
        match p.address6 {
            Some(a6) => {
                let _ = writeln!(out, "  address     {}, {a6}", p.address);
            }
            None => {
                let _ = writeln!(out, "  address     {}", p.address);
            }
        }
        let _ = writeln!(out, "  handshake   {}", ago(p.last_handshake_ms_ago));
        let _ = writeln!(
            out,
            "  transfer    {} received, {} sent ({} / {} packets)",
            bytes(p.rx_bytes),
            bytes(p.tx_bytes),
            p.rx_packets,
            p.tx_packets
        );
        let _ = writeln!(out, "  flows       {}", p.flows);
        if p.resent_bytes > 0 {
            let _ = writeln!(out, "  resent      {}", bytes(p.resent_bytes));
        }
        if p.paths.is_empty() {
            let _ = writeln!(out, "  paths       none");
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<5} {:<46} {:<13} state",
            "path", "endpoint", "last packet"
        );
        for path in &p.paths {
            let endpoint = path
                .endpoint
                .map_or_else(|| "-".to_owned(), |e| e.to_string());
            let state = match (path.endpoint, path.down) {
                (_, true) => "down (said the peer)",
                (None, false) => "not validated",
                (Some(_), false) => "up",
            };
            let _ = writeln!(
                out,
                "  {:<5} {:<46} {:<13} {state}",
                path.path,
                endpoint,
                ago(path.last_packet_ms_ago)
            );
        }
    }
    out
}

/// "12 s ago", or "never".
fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".to_owned(),
        Some(ms) => format!("{} s ago", ms / 1000),
    }
}

/// A byte count with a binary unit, like `wg show`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use upmt_proto::anchor::PathStatus;
    use upmt_proto::keys::PublicKey;
    use upmt_proto::{PathId, PeerId};

    fn base() -> Show {
        Show {
            public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            listen: "[::]:51900".into(),
            tun: "upmt0".into(),
            config: "/etc/upmt/an.toml".into(),
            peers: Vec::new(),
        }
    }

    fn fixed() -> Show {
        let t0 = Instant::ZERO;
        let now = t0 + Duration::from_millis(75_400);
        let phone = PeerStatus {
            peer: PeerId(0),
            name: "phone".into(),
            connected: true,
            paths: Vec::new(),
            public: PublicKey::from_bytes([1; 32]),
            virtual_ipv4: "10.77.0.2".parse().unwrap(),
            virtual_ipv6: Some("fd77::2".parse().unwrap()),
            last_handshake: Some(t0 + Duration::from_secs(63)),
            flows: 4,
            path_status: vec![
                PathStatus {
                    path: PathId(0),
                    endpoint: Some("198.51.100.7:40000".parse().unwrap()),
                    last_rx: Some(t0 + Duration::from_millis(75_200)),
                    down: false,
                },
                PathStatus {
                    path: PathId(1),
                    endpoint: Some("[2001:db8::7]:40001".parse().unwrap()),
                    last_rx: Some(t0 + Duration::from_millis(66_400)),
                    down: true,
                },
                PathStatus {
                    path: PathId(2),
                    endpoint: None,
                    last_rx: None,
                    down: false,
                },
            ],
            rx_packets: 1200,
            rx_bytes: 1_572_864,
            tx_packets: 800,
            tx_bytes: 35_000,
            resent_bytes: 0,
            last_rx: Some(now),
            cipher: None,
        };
        let laptop = PeerStatus {
            peer: PeerId(1),
            name: "laptop".into(),
            connected: false,
            paths: Vec::new(),
            public: PublicKey::from_bytes([2; 32]),
            virtual_ipv4: "10.77.0.3".parse().unwrap(),
            virtual_ipv6: None,
            last_handshake: None,
            flows: 0,
            path_status: Vec::new(),
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            resent_bytes: 0,
            last_rx: None,
            cipher: None,
        };
        snapshot(&base(), [phone, laptop].into_iter(), now)
    }

    #[test]
    fn the_human_rendering_shows_each_peer_and_its_paths() {
        let expected = "\
anchor upmt0: listening on [::]:51900
  public key  AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
  config      /etc/upmt/an.toml
  peers       2 (1 connected)

peer phone: connected
  public key  AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=
  address     10.77.0.2, fd77::2
  handshake   12 s ago
  transfer    1.50 MiB received, 34.18 KiB sent (1200 / 800 packets)
  flows       4
  path  endpoint                                       last packet   state
  0     198.51.100.7:40000                             0 s ago       up
  1     [2001:db8::7]:40001                            9 s ago       down (said the peer)
  2     -                                              never         not validated

peer laptop: not connected
  public key  AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=
  address     10.77.0.3
  handshake   never
  transfer    0 B received, 0 B sent (0 / 0 packets)
  flows       0
  paths       none
";
        assert_eq!(render(&fixed()), expected);
    }

    #[test]
    fn the_json_keeps_its_documented_field_names() {
        let json = serde_json::to_value(fixed()).unwrap();
        let phone = &json["peers"][0];
        assert_eq!(phone["name"], "phone");
        assert_eq!(phone["address"], "10.77.0.2");
        assert_eq!(phone["last_handshake_ms_ago"], 12_400);
        assert_eq!(phone["rx_bytes"], 1_572_864);
        assert_eq!(phone["flows"], 4);
        assert_eq!(phone["paths"][0]["endpoint"], "198.51.100.7:40000");
        assert_eq!(phone["paths"][0]["last_packet_ms_ago"], 200);
        assert_eq!(phone["paths"][1]["down"], true);
        assert!(phone["paths"][2]["endpoint"].is_null());
        assert!(json["peers"][1]["last_handshake_ms_ago"].is_null());
    }
}
