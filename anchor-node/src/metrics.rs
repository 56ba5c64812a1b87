//! Counters for operators and tests: a snapshot type and its rendering in the Prometheus text
//! format (version 0.0.4, written by `prometheus-client`). The HTTP endpoint that serves it is
//! the one both daemons share (`upmt_sys::metrics`).
//!
//! The event loop owns the core, so the server never reads counters itself: each scrape sends
//! a request over a channel and the loop answers with a fresh snapshot between two batches.

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Counters of one configured peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub name: String,
    pub connected: bool,
    pub paths: u64,
    /// Flows the core remembers for the peer's downlink path choice.
    pub flows: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// What the batched TUN IO did (see `upmt_sys::tunbatch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunSnapshot {
    /// Read syscalls that gave packets (an offloaded read gives many).
    pub read_calls: u64,
    /// Offloaded reads that could not be split, dropped.
    pub bad_super_packets: u64,
    /// Batches written (the packets of one UDP receive batch, coalesced per flow).
    pub write_batches: u64,
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
    /// The TUN's offload: `off`, `unsupported` (asked for, refused), `tcp` or `tcp+udp`.
    pub tun_offload: &'static str,
    pub tun: TunSnapshot,
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
    pub duplicated_packets: u64,
    pub duplicated_bytes: u64,
    pub nat_registrations: u64,
    pub nat_replies: u64,
    pub nat_refused: u64,
    pub resent_packets: u64,
    pub resent_bytes: u64,
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
            duplicated_packets: stats.duplicated_packets,
            duplicated_bytes: stats.duplicated_bytes,
            nat_registrations: stats.nat_registrations,
            nat_replies: stats.nat_replies,
            nat_refused: stats.nat_refused,
            resent_packets: stats.resent_packets,
            resent_bytes: stats.resent_bytes,
            rate_limited_sources: rate_limited_sources as u64,
        }
    }

    /// The counters as (metric name, help, value); the names are also the log line's keys.
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 14] {
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
            (
                "duplicated_packets",
                "Downlink packets of redundant flows sent a second time, on the flow's other path.",
                self.duplicated_packets,
            ),
            (
                "duplicated_bytes",
                "Bytes of those second copies (whole datagrams); the dropped uplink copies are upmt_drops_total{reason=\"duplicate\"}.",
                self.duplicated_bytes,
            ),
            (
                "nat_registrations",
                "NAT-test registrations noted from the mobile hosts' disposable test sockets.",
                self.nat_registrations,
            ),
            (
                "nat_replies",
                "NAT-test replies sent, one per request of a noted registration.",
                self.nat_replies,
            ),
            (
                "nat_refused",
                "NAT-test registrations and requests refused: unknown path, too fast, nothing noted, a wrong or used nonce.",
                self.nat_refused,
            ),
            (
                "resent_packets",
                "Downlink packets sent again on a flow's new path after the flow left a path (moved, said down, or stale).",
                self.resent_packets,
            ),
            (
                "resent_bytes",
                "Bytes of those datagrams; the receiver drops the copy that comes second as upmt_drops_total{reason=\"duplicate\"}.",
                self.resent_bytes,
            ),
        ]
    }
}

impl Snapshot {
    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::with_capacity(4096);
        // Writing to a String does not fail, and every name and label here is valid.
        if let Err(e) = prometheus_text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "rendering the metrics failed");
        }
        out
    }

    /// One log line with the nonzero counters.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "udp rx {} tx {}, tun rx {} tx {} (offload {}, {} reads, {} write batches), io errors {}",
            self.udp_rx_datagrams,
            self.udp_tx_datagrams,
            self.tun_rx_packets,
            self.tun_tx_packets,
            self.tun_offload,
            self.tun.read_calls,
            self.tun.write_batches,
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
    MetricType,
    &'static str,
    fn(&PeerSnapshot) -> u64,
);

/// The byte and packet totals only ever grow, but their names (which dashboards and tests use)
/// predate the `_total` suffix that the encoder gives every counter, so they are untyped.
const PER_PEER: [PeerMetric; 7] = [
    (
        "upmt_peer_connected",
        MetricType::Gauge,
        "1 when the peer has a session.",
        |p| u64::from(p.connected),
    ),
    (
        "upmt_peer_paths",
        MetricType::Gauge,
        "Paths the peer currently has.",
        |p| p.paths,
    ),
    (
        "upmt_peer_flows",
        MetricType::Gauge,
        "Flows the anchor remembers for the peer (forgotten when its session expires).",
        |p| p.flows,
    ),
    (
        "upmt_peer_rx_bytes",
        MetricType::Unknown,
        "Inner bytes received from the peer.",
        |p| p.rx_bytes,
    ),
    (
        "upmt_peer_tx_bytes",
        MetricType::Unknown,
        "Inner bytes sent to the peer.",
        |p| p.tx_bytes,
    ),
    (
        "upmt_peer_rx_packets",
        MetricType::Unknown,
        "Inner packets received from the peer.",
        |p| p.rx_packets,
    ),
    (
        "upmt_peer_tx_packets",
        MetricType::Unknown,
        "Inner packets sent to the peer.",
        |p| p.tx_packets,
    ),
];

/// The snapshot is the collector: the registry asks it for its series at each render, in a
/// fixed order, so nothing is copied into atomics first.
impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut drops = encoder.encode_descriptor(
            "upmt_drops",
            "Packets dropped by the anchor, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &self.drops {
            let labels = [("reason", *reason)];
            ConstCounter::new(*n).encode(drops.encode_family(&labels)?)?;
        }
        for (name, kind, help, get) in PER_PEER {
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for p in &self.peers {
                let labels = [("peer", p.name.as_str())];
                // A gauge's encoding is the bare value, right for gauges and untyped series.
                ConstGauge::new(get(p)).encode(metric.encode_family(&labels)?)?;
            }
        }
        let driver = [
            (
                "upmt_udp_rx_datagrams",
                "Datagrams read from the tunnel socket.",
                self.udp_rx_datagrams,
            ),
            (
                "upmt_udp_tx_datagrams",
                "Datagrams sent on the tunnel socket.",
                self.udp_tx_datagrams,
            ),
            (
                "upmt_tun_rx_packets",
                "Packets read from the tun device.",
                self.tun_rx_packets,
            ),
            (
                "upmt_tun_tx_packets",
                "Packets written to the tun device.",
                self.tun_tx_packets,
            ),
            (
                "upmt_io_errors",
                "Socket or tun errors other than would-block.",
                self.io_errors,
            ),
            (
                "upmt_tun_read_calls",
                "Reads from the tun device (with offload one read gives many packets).",
                self.tun.read_calls,
            ),
            (
                "upmt_tun_bad_super_packets",
                "Offloaded tun reads that could not be split into packets, dropped.",
                self.tun.bad_super_packets,
            ),
            (
                "upmt_tun_write_batches",
                "Batches of packets written to the tun device, coalesced per flow with offload.",
                self.tun.write_batches,
            ),
        ];
        for (name, help, v) in driver {
            counter(&mut encoder, name, help, v)?;
        }
        for (name, help, v) in self.core.counters() {
            counter(&mut encoder, &format!("upmt_core_{name}"), help, v)?;
        }
        let limiter = encoder.encode_descriptor(
            "upmt_core_rate_limited_sources",
            "Source IPs the handshake limiter tracks now.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.core.rate_limited_sources).encode(limiter)?;
        if !self.isolation_drops.is_empty() {
            let mut isolation = encoder.encode_descriptor(
                "upmt_isolation_dropped_packets",
                "Packets from mobile hosts dropped by the anchor's isolation rules (its nftables counters), by rule.",
                None,
                MetricType::Counter,
            )?;
            for (rule, n) in &self.isolation_drops {
                let labels = [("rule", *rule)];
                ConstCounter::new(*n).encode(isolation.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// One unlabelled counter; the encoder appends `_total` to `name`.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// A scrape asking the event loop for a snapshot.
pub type Request = upmt_sys::metrics::Request<Snapshot>;

pub use upmt_sys::metrics::bind;

impl upmt_sys::metrics::Render for Snapshot {
    fn render(&self) -> String {
        Snapshot::render(self)
    }
}

/// Serves scrapes until the loop goes away (the shared endpoint of `upmt_sys::metrics`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    requests: tokio::sync::mpsc::Sender<Request>,
) {
    upmt_sys::metrics::serve(listener, requests).await;
}

#[cfg(test)]
mod tests {

    use tokio::sync::mpsc;

    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            drops: vec![("truncated", 2), ("bad_version", 0)],
            peers: vec![PeerSnapshot {
                name: "ph\"one".into(),
                connected: true,
                paths: 2,
                flows: 4,
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
        assert!(
            text.contains("upmt_peer_flows{peer=\"ph\\\"one\"} 4\n"),
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

    #[tokio::test]
    async fn the_endpoint_serves_a_fresh_snapshot_and_refuses_other_paths_and_methods() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, mut rx) = mpsc::channel::<Request>(4);
        tokio::spawn(serve(listener, tx));
        // The event loop's part: answer two scrapes with a snapshot, then drop the third's
        // reply as a loop that is shutting down does.
        tokio::spawn(async move {
            let mut scrapes = 0;
            while let Some(reply) = rx.recv().await {
                scrapes += 1;
                if scrapes <= 2 {
                    let _ = reply.send(sample());
                }
            }
        });

        let ok =
            upmt_sys::testing::http_exchange(addr, "GET /metrics HTTP/1.1\r\nHost: an\r\n\r\n")
                .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{ok}"
        );
        assert!(ok.contains("connection: close\r\n"), "{ok}");
        assert!(
            ok.contains("\r\n\r\n# HELP upmt_drops_total ")
                && ok.contains("upmt_drops_total{reason=\"truncated\"} 2\n"),
            "{ok}"
        );
        let root = upmt_sys::testing::http_exchange(addr, "GET / HTTP/1.0\r\n\r\n").await;
        assert!(root.starts_with("HTTP/1.0 200 OK\r\n"), "{root}");

        let missing =
            upmt_sys::testing::http_exchange(addr, "GET /nope HTTP/1.1\r\nHost: an\r\n\r\n").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        assert!(missing.ends_with("\r\n\r\ntry /metrics\n"), "{missing}");
        let post = upmt_sys::testing::http_exchange(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: an\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );

        let gone =
            upmt_sys::testing::http_exchange(addr, "GET /metrics HTTP/1.1\r\nHost: an\r\n\r\n")
                .await;
        assert!(
            gone.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{gone}"
        );
    }
}
