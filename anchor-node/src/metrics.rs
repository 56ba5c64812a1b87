//! Counters for operators and tests: a snapshot type, its Prometheus text rendering, and a tiny
//! HTTP/1.0 responder that serves it.
//!
//! The event loop owns the core, so the server never reads counters itself: each scrape sends
//! a request over a channel and the loop answers with a fresh snapshot between two batches.
//! The responder serves only `GET /metrics` (and `/`); it never keeps a connection open.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// Counters of one configured peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub name: String,
    pub connected: bool,
    pub paths: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// Everything the endpoint and the periodic log line report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Per drop reason, from the core (every reason, zeros included, so series never vanish).
    pub drops: Vec<(&'static str, u64)>,
    pub peers: Vec<PeerSnapshot>,
    /// Driver-level counters.
    pub udp_rx_datagrams: u64,
    pub udp_tx_datagrams: u64,
    pub tun_rx_packets: u64,
    pub tun_tx_packets: u64,
    pub io_errors: u64,
    /// The core's flood-defence, path-validation and queue-bound counters (not drops).
    pub core: CoreStats,
    /// Packets the nftables isolation rules dropped, per rule (empty when not read).
    pub isolation_drops: Vec<(&'static str, u64)>,
}

/// The core's `AnchorStats` plus the limiter's table size, copied out for rendering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub dh_operations: u64,
    pub cookies_sent: u64,
    pub rate_limit_table_full: u64,
    pub challenges_sent: u64,
    pub paths_validated: u64,
    pub queue_overflows: u64,
    pub event_overflows: u64,
    /// Gauge: source IPs the per-IP handshake limiter tracks now.
    pub rate_limited_sources: u64,
}

impl CoreStats {
    /// Copies the core's counters.
    pub fn from_core(stats: &upmt_proto::anchor::AnchorStats, rate_limited_sources: usize) -> Self {
        CoreStats {
            dh_operations: stats.dh_operations,
            cookies_sent: stats.cookies_sent,
            rate_limit_table_full: stats.rate_limit_table_full,
            challenges_sent: stats.challenges_sent,
            paths_validated: stats.paths_validated,
            queue_overflows: stats.queue_overflows,
            event_overflows: stats.event_overflows,
            rate_limited_sources: rate_limited_sources as u64,
        }
    }

    /// The counters as (metric name, help, value); the names are also the log line's keys.
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 7] {
        [
            (
                "dh_operations",
                "Handshake inits that reached the Diffie-Hellman stage.",
                self.dh_operations,
            ),
            (
                "cookies_sent",
                "Cookie replies sent to inits that came under load without a valid mac2.",
                self.cookies_sent,
            ),
            (
                "rate_limit_table_full",
                "Inits refused because the per-source-IP limiter table was full (a bound reached).",
                self.rate_limit_table_full,
            ),
            (
                "challenges_sent",
                "Path challenges sent to unvalidated source addresses.",
                self.challenges_sent,
            ),
            (
                "paths_validated",
                "Paths moved to a newly validated address.",
                self.paths_validated,
            ),
            (
                "queue_overflows",
                "Datagrams not answered because the core's transmit queue was full (a bound reached).",
                self.queue_overflows,
            ),
            (
                "event_overflows",
                "Core events lost because the event queue was full (a bound reached).",
                self.event_overflows,
            ),
        ]
    }
}

impl Snapshot {
    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str("# HELP upmt_drops_total Packets dropped by the anchor, by reason.\n");
        out.push_str("# TYPE upmt_drops_total counter\n");
        for (reason, n) in &self.drops {
            let _ = writeln!(out, "upmt_drops_total{{reason=\"{}\"}} {n}", escape(reason));
        }
        let per_peer: [PeerMetric; 6] = [
            (
                "upmt_peer_connected",
                "gauge",
                "1 when the peer has a session.",
                |p| u64::from(p.connected),
            ),
            (
                "upmt_peer_paths",
                "gauge",
                "Paths the peer currently has.",
                |p| p.paths,
            ),
            (
                "upmt_peer_rx_bytes",
                "counter",
                "Inner bytes received from the peer.",
                |p| p.rx_bytes,
            ),
            (
                "upmt_peer_tx_bytes",
                "counter",
                "Inner bytes sent to the peer.",
                |p| p.tx_bytes,
            ),
            (
                "upmt_peer_rx_packets",
                "counter",
                "Inner packets received from the peer.",
                |p| p.rx_packets,
            ),
            (
                "upmt_peer_tx_packets",
                "counter",
                "Inner packets sent to the peer.",
                |p| p.tx_packets,
            ),
        ];
        for (metric, kind, help, get) in per_peer {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for p in &self.peers {
                let _ = writeln!(out, "{metric}{{peer=\"{}\"}} {}", escape(&p.name), get(p));
            }
        }
        for (metric, help, v) in [
            (
                "upmt_udp_rx_datagrams_total",
                "Datagrams read from the tunnel socket.",
                self.udp_rx_datagrams,
            ),
            (
                "upmt_udp_tx_datagrams_total",
                "Datagrams sent on the tunnel socket.",
                self.udp_tx_datagrams,
            ),
            (
                "upmt_tun_rx_packets_total",
                "Packets read from the tun device.",
                self.tun_rx_packets,
            ),
            (
                "upmt_tun_tx_packets_total",
                "Packets written to the tun device.",
                self.tun_tx_packets,
            ),
            (
                "upmt_io_errors_total",
                "Socket or tun errors other than would-block.",
                self.io_errors,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} counter\n{metric} {v}"
            );
        }
        for (name, help, v) in self.core.counters() {
            let _ = writeln!(
                out,
                "# HELP upmt_core_{name}_total {help}\n# TYPE upmt_core_{name}_total counter\n\
                 upmt_core_{name}_total {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP upmt_core_rate_limited_sources Source IPs the handshake limiter tracks now.\n\
             # TYPE upmt_core_rate_limited_sources gauge\nupmt_core_rate_limited_sources {}",
            self.core.rate_limited_sources
        );
        if !self.isolation_drops.is_empty() {
            out.push_str(
                "# HELP upmt_isolation_dropped_packets_total Packets from mobile hosts dropped by \
                 the anchor's isolation rules (its nftables counters), by rule.\n\
                 # TYPE upmt_isolation_dropped_packets_total counter\n",
            );
            for (rule, n) in &self.isolation_drops {
                let _ = writeln!(
                    out,
                    "upmt_isolation_dropped_packets_total{{rule=\"{}\"}} {n}",
                    escape(rule)
                );
            }
        }
        out
    }

    /// One log line with the nonzero counters.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "udp rx {} tx {}, tun rx {} tx {}, io errors {}",
            self.udp_rx_datagrams,
            self.udp_tx_datagrams,
            self.tun_rx_packets,
            self.tun_tx_packets,
            self.io_errors
        );
        let drops: Vec<String> = self
            .drops
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = write!(
            out,
            "; drops: {}",
            if drops.is_empty() {
                "none".into()
            } else {
                drops.join(" ")
            }
        );
        let core: Vec<String> = self
            .core
            .counters()
            .iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(name, _, n)| format!("{name}={n}"))
            .collect();
        if !core.is_empty() || self.core.rate_limited_sources > 0 {
            let _ = write!(
                out,
                "; core: {} limiter_sources={}",
                core.join(" "),
                self.core.rate_limited_sources
            );
        }
        for p in &self.peers {
            let _ = write!(
                out,
                "; peer {} {} paths {} rx {}B tx {}B",
                p.name,
                if p.connected { "up" } else { "down" },
                p.paths,
                p.rx_bytes,
                p.tx_bytes
            );
        }
        out
    }
}

/// Name, type, help text and accessor of one per-peer series.
type PeerMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PeerSnapshot) -> u64,
);

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A scrape asking the event loop for a snapshot.
pub type Request = oneshot::Sender<Snapshot>;

/// Binds the metrics listener (separately from `serve`, so a bad address fails at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves scrapes until the loop goes away.
pub async fn serve(listener: TcpListener, requests: mpsc::Sender<Request>) {
    while !requests.is_closed() {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(5), respond(stream, requests)).await;
            if !matches!(r, Ok(Ok(()))) {
                tracing::debug!(%peer, "metrics request failed or timed out");
            }
        });
    }
}

async fn respond(
    mut stream: tokio::net::TcpStream,
    requests: mpsc::Sender<Request>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    // Read the request head; the body (there should be none) is ignored.
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
        && !buf[..len].windows(2).any(|w| w == b"\n\n")
    {
        if len == buf.len() {
            break;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let first_line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = first_line.split(|&b| b == b' ');
    let method = words.next().unwrap_or_default();
    let target = words.next().unwrap_or_default();
    let (status, body) = if method != b"GET" {
        ("405 Method Not Allowed", String::from("only GET\n"))
    } else if target != b"/metrics" && target != b"/" {
        ("404 Not Found", String::from("try /metrics\n"))
    } else {
        let (tx, rx) = oneshot::channel();
        if requests.send(tx).await.is_err() {
            ("503 Service Unavailable", String::from("shutting down\n"))
        } else {
            match rx.await {
                Ok(snapshot) => ("200 OK", snapshot.render()),
                Err(_) => ("503 Service Unavailable", String::from("shutting down\n")),
            }
        }
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            drops: vec![("truncated", 2), ("bad_version", 0)],
            peers: vec![PeerSnapshot {
                name: "ph\"one".into(),
                connected: true,
                paths: 2,
                rx_bytes: 100,
                tx_bytes: 50,
                rx_packets: 3,
                tx_packets: 1,
            }],
            udp_rx_datagrams: 7,
            core: CoreStats {
                dh_operations: 5,
                cookies_sent: 9,
                rate_limited_sources: 3,
                ..CoreStats::default()
            },
            ..Snapshot::default()
        }
    }

    #[test]
    fn drops_are_rendered_per_reason_including_zeros() {
        let text = sample().render();
        assert!(
            text.contains("upmt_drops_total{reason=\"truncated\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("upmt_drops_total{reason=\"bad_version\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE upmt_drops_total counter\n"));
    }

    #[test]
    fn peer_counters_are_labelled_and_escaped() {
        let text = sample().render();
        assert!(
            text.contains("upmt_peer_rx_bytes{peer=\"ph\\\"one\"} 100\n"),
            "{text}"
        );
        assert!(
            text.contains("upmt_peer_tx_bytes{peer=\"ph\\\"one\"} 50\n"),
            "{text}"
        );
        assert!(
            text.contains("upmt_peer_connected{peer=\"ph\\\"one\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("upmt_udp_rx_datagrams_total 7\n"), "{text}");
    }

    #[test]
    fn every_sample_line_has_a_name_and_a_number() {
        for line in sample().render().lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("upmt_"), "{line}");
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("not a number: {line}"));
        }
    }

    #[test]
    fn core_stats_are_rendered_as_counters_and_the_limiter_as_a_gauge() {
        let text = sample().render();
        assert!(text.contains("upmt_core_dh_operations_total 5\n"), "{text}");
        assert!(text.contains("upmt_core_cookies_sent_total 9\n"), "{text}");
        assert!(
            text.contains("upmt_core_rate_limit_table_full_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE upmt_core_queue_overflows_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("upmt_core_rate_limited_sources 3\n"),
            "{text}"
        );
        let s = sample().summary();
        assert!(
            s.contains("core: dh_operations=5 cookies_sent=9 limiter_sources=3"),
            "{s}"
        );
    }

    #[test]
    fn the_summary_lists_only_nonzero_drops() {
        let s = sample().summary();
        assert!(s.contains("drops: truncated=2"), "{s}");
        assert!(!s.contains("bad_version"), "{s}");
        assert!(s.contains("peer ph\"one up paths 2"), "{s}");
    }
}
