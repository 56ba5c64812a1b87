//! The mobile host's Prometheus metrics (`metrics = "127.0.0.1:9101"` in the config; off by
//! default): per path state, RTT, loss and datagrams; per app bytes per uplink; handovers by
//! reason; how owners were found and how long the lookup took; flows by state; drops.
//!
//! Nothing here costs anything per packet, and nothing ticks. A scrape asks the event loop for a
//! [`Snapshot`] (the endpoint is `upmt_sys::metrics`, shared with the anchor); the loop builds
//! it from the core's read-only views ([`Snapshot::take`]) between two batches. The only things
//! recorded as they happen are the ones no view keeps: lookup latencies and handover events
//! ([`Recorder`], one add each per new flow or event), and only when the endpoint is on.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeMetric as _, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use upmt_mh_core::MobileHost;
use upmt_mh_core::api::{Event, MoveReason, Request, Response, TunnelState, TunnelStatus};
use upmt_mh_core::flows::FlowCounters;
use upmt_mh_core::uplinks::Uplinks;

use crate::appid::LookupStats;
use crate::event_loop::DriverCounters;
use crate::setup::Instant;

/// A scrape asking the event loop for a snapshot.
pub type Scrape = upmt_sys::metrics::Request<Snapshot>;

pub use upmt_sys::metrics::{bind, serve};

/// The event loop's end of the endpoint: the scrapes to answer, and what is recorded for them.
#[derive(Debug)]
pub struct LoopEnd {
    pub scrapes: tokio::sync::mpsc::Receiver<Scrape>,
    pub recorder: Recorder,
}

impl LoopEnd {
    /// The next scrape, or never when the endpoint is off (or its server ended).
    pub async fn next(end: &mut Option<LoopEnd>) -> Scrape {
        if let Some(end) = end
            && let Some(scrape) = end.scrapes.recv().await
        {
            return scrape;
        }
        std::future::pending().await
    }
}

/// Upper bounds of the owner-lookup latency buckets, in seconds: an index hit takes tens of
/// microseconds, a process scan milliseconds, a stuck /proc read up to the lookup bound.
pub const LOOKUP_BUCKETS: [f64; 10] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
];

/// Every [`MoveReason`], in label order.
const MOVE_REASONS: [MoveReason; 5] = [
    MoveReason::Manual,
    MoveReason::Unpinned,
    MoveReason::UplinkDown,
    MoveReason::Policy,
    MoveReason::Measured,
];

fn reason_label(r: MoveReason) -> &'static str {
    match r {
        MoveReason::Manual => "manual",
        MoveReason::Unpinned => "unpinned",
        MoveReason::UplinkDown => "uplink_down",
        MoveReason::Policy => "policy",
        MoveReason::Measured => "measured",
    }
}

/// What the driver records as it happens, because no view of the core keeps it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorder {
    /// Owner lookups per latency bucket ([`LOOKUP_BUCKETS`], then one for slower ones).
    lookup_buckets: [u64; LOOKUP_BUCKETS.len() + 1],
    lookup_sum: Duration,
    /// Flows moved, by [`MOVE_REASONS`] index.
    handovers: [u64; MOVE_REASONS.len()],
    /// Tunnels that came up and went down, by uplink name.
    tunnel_ups: BTreeMap<String, u64>,
    tunnel_downs: BTreeMap<String, u64>,
}

impl Recorder {
    /// One owner lookup that took `took`.
    pub fn lookup(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        let slot = LOOKUP_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LOOKUP_BUCKETS.len());
        self.lookup_buckets[slot] += 1;
        self.lookup_sum += took;
    }

    /// One event the core published.
    pub fn event(&mut self, event: &Event) {
        match event {
            Event::FlowMoved { reason, .. } => {
                if let Some(i) = MOVE_REASONS.iter().position(|r| r == reason) {
                    self.handovers[i] += 1;
                }
            }
            Event::TunnelUp { uplink } => *self.tunnel_ups.entry(uplink.clone()).or_default() += 1,
            Event::TunnelDown { uplink } => {
                *self.tunnel_downs.entry(uplink.clone()).or_default() += 1;
            }
            _ => {}
        }
    }

    /// Lookups counted.
    pub fn lookups(&self) -> u64 {
        self.lookup_buckets.iter().sum()
    }
}

/// One path (uplink) at the moment of the scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct PathSnapshot {
    pub uplink: String,
    pub interface: String,
    pub state: TunnelState,
    pub rtt: Option<Duration>,
    pub loss: f32,
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub resent_bytes: u64,
}

impl From<&TunnelStatus> for PathSnapshot {
    fn from(t: &TunnelStatus) -> Self {
        PathSnapshot {
            uplink: t.uplink.clone(),
            interface: t.interface.clone(),
            state: t.state,
            rtt: t.rtt_us.map(Duration::from_micros),
            loss: t.loss,
            tx_packets: t.tx_packets,
            rx_packets: t.rx_packets,
            resent_bytes: t.resent_bytes,
        }
    }
}

/// One app's bytes on one uplink since the daemon started (ended flows included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppBytes {
    pub app: String,
    pub uplink: String,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// Everything one scrape reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub connected: bool,
    pub paths: Vec<PathSnapshot>,
    pub apps: Vec<AppBytes>,
    /// Live flows per app.
    pub app_flows: Vec<(String, u64)>,
    /// Flows by state: tunnel, blocked, no_uplink, pending.
    pub flows: [(&'static str, u64); 4],
    pub flow_counters: FlowCounters,
    /// Drops by layer and reason (every reason, zeros included, so series never vanish).
    pub drops: Vec<(&'static str, &'static str, u64)>,
    /// How owners were found (the lookup's counts and the core's overdue/late).
    pub owners: Vec<(&'static str, u64)>,
    pub recorder: Recorder,
}

/// The name the metrics give an app with no known owner.
pub const UNKNOWN_APP_LABEL: &str = "(unknown)";

impl Snapshot {
    /// Reads the core's views (status reply, flow table, counters) and the driver's counters.
    /// Allocates per flow and app, once per scrape; never called while the endpoint is off.
    pub fn take(
        host: &mut MobileHost,
        driver: DriverCounters,
        lookups: Option<LookupStats>,
        recorder: &Recorder,
        now: Instant,
    ) -> Snapshot {
        let status = match host.answer(Request::Status, now) {
            Response::Status(s) => Some(s),
            _ => None,
        };
        let names = host.uplinks().names().to_vec();
        let flows = host.flows();
        let app_label = |a: &str| {
            if a.is_empty() {
                UNKNOWN_APP_LABEL.to_owned()
            } else {
                a.to_owned()
            }
        };
        let mut apps = Vec::new();
        for (app, bytes) in flows.app_totals() {
            for (i, name) in names.iter().enumerate() {
                let [tx, rx] = bytes.get(i).copied().unwrap_or_default();
                if Uplinks::id_for_index(i).is_some() && (tx, rx) != (0, 0) {
                    apps.push(AppBytes {
                        app: app_label(app.as_str()),
                        uplink: name.clone(),
                        tx_bytes: tx,
                        rx_bytes: rx,
                    });
                }
            }
        }
        let table = flows.snapshot(&names, now.as_duration());
        let count = |state: &str| table.flows.iter().filter(|f| f.state == state).count() as u64;
        let c = flows.counters();
        let h = host.counters();
        let mut drops: Vec<(&'static str, &'static str, u64)> = host
            .client()
            .drops()
            .iter()
            .map(|(r, n)| ("protocol", r.as_str(), n))
            .collect();
        drops.extend([
            ("flows", "unparsable", c.unparsable),
            ("flows", "pending_overflow", c.pending_overflow),
            ("flows", "pending_flows_full", c.pending_flows_full),
            ("flows", "blocked", c.blocked_packets),
            ("flows", "no_uplink", c.held_packets),
            ("flows", "table_full", c.table_full),
            ("host", "tun_no_path", h.tun_no_path),
            ("host", "resets_dropped", h.resets_dropped),
            ("driver", "send_error", driver.send_errors),
            ("driver", "recv_error", driver.recv_errors),
            ("driver", "tun_write_error", driver.tun_write_errors),
            (
                "driver",
                "tun_bad_super_packet",
                driver.tun_bad_super_packets,
            ),
        ]);
        let l = lookups.unwrap_or_default();
        Snapshot {
            connected: host.client().session().is_some(),
            paths: status
                .as_ref()
                .map(|s| s.tunnels.iter().map(PathSnapshot::from).collect())
                .unwrap_or_default(),
            apps,
            app_flows: table
                .apps
                .iter()
                .map(|a| (app_label(&a.name), a.flows as u64))
                .collect(),
            flows: [
                ("tunnel", count("tunnel")),
                ("blocked", count("blocked")),
                ("no_uplink", count("no-uplink")),
                ("pending", table.pending as u64),
            ],
            flow_counters: c,
            drops,
            owners: vec![
                ("by_uid", l.by_uid),
                ("index_hit", l.index_hits),
                ("event_hit", l.event_hits),
                ("scan", l.scans),
                ("uid_fallback", l.uid_fallback),
                ("unknown", l.unknown),
                ("overdue", c.lookups_overdue),
                ("late_answer", c.late_answers),
            ],
            recorder: recorder.clone(),
        }
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::with_capacity(8192);
        // Writing to a String does not fail, and every name here is valid.
        if let Err(e) = prometheus_text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "rendering the metrics failed");
        }
        out
    }
}

impl upmt_sys::metrics::Render for Snapshot {
    fn render(&self) -> String {
        Snapshot::render(self)
    }
}

fn state_label(s: TunnelState) -> &'static str {
    match s {
        TunnelState::Up => "up",
        TunnelState::Probing => "probing",
        TunnelState::Down => "down",
    }
}

/// The snapshot is the collector: the registry asks it for its series at each render.
impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let connected = encoder.encode_descriptor(
            "upmt_mh_session_connected",
            "1 when the session with the anchor is up.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(u64::from(self.connected)).encode(connected)?;

        {
            let mut state = encoder.encode_descriptor(
                "upmt_mh_path_state",
                "1 for the path's current state (up, probing, down), 0 for the others.",
                None,
                MetricType::Gauge,
            )?;
            for p in &self.paths {
                for s in [TunnelState::Up, TunnelState::Probing, TunnelState::Down] {
                    let labels = [
                        ("uplink", p.uplink.as_str()),
                        ("interface", p.interface.as_str()),
                        ("state", state_label(s)),
                    ];
                    ConstGauge::new(u64::from(p.state == s))
                        .encode(state.encode_family(&labels)?)?;
                }
            }
        }
        let by_path = |f: &dyn Fn(&PathSnapshot) -> Option<f64>| -> Vec<(Vec<(&str, &str)>, f64)> {
            self.paths
                .iter()
                .filter_map(|p| Some((vec![("uplink", p.uplink.as_str())], f(p)?)))
                .collect()
        };
        gauge(
            &mut encoder,
            "upmt_mh_path_rtt_seconds",
            "Smoothed probe round-trip time of the path (absent until a probe was answered).",
            &by_path(&|p| p.rtt.map(|d| d.as_secs_f64())),
        )?;
        gauge(
            &mut encoder,
            "upmt_mh_path_loss_ratio",
            "Smoothed fraction of the path's probes lost, 0 to 1.",
            &by_path(&|p| Some(f64::from(p.loss))),
        )?;
        counters(
            &mut encoder,
            "upmt_mh_path_tx_datagrams",
            "Datagrams sent on the path (data, probes, handshakes).",
            self.paths
                .iter()
                .map(|p| (vec![("uplink", p.uplink.as_str())], p.tx_packets)),
        )?;
        counters(
            &mut encoder,
            "upmt_mh_path_rx_datagrams",
            "Authenticated datagrams received on the path.",
            self.paths
                .iter()
                .map(|p| (vec![("uplink", p.uplink.as_str())], p.rx_packets)),
        )?;
        counters(
            &mut encoder,
            "upmt_mh_path_resent_bytes",
            "Bytes of datagrams sent again on the path: recent packets of flows that moved to it from a path that went down.",
            self.paths
                .iter()
                .map(|p| (vec![("uplink", p.uplink.as_str())], p.resent_bytes)),
        )?;
        let mut transitions = Vec::new();
        for (to, map) in [
            ("up", &self.recorder.tunnel_ups),
            ("down", &self.recorder.tunnel_downs),
        ] {
            for (uplink, n) in map {
                transitions.push((vec![("uplink", uplink.as_str()), ("to", to)], *n));
            }
        }
        counters(
            &mut encoder,
            "upmt_mh_path_transitions",
            "Times the path's tunnel came up or went down.",
            transitions,
        )?;

        counters(
            &mut encoder,
            "upmt_mh_app_tx_bytes",
            "Inner bytes the app sent, per uplink, since the daemon started.",
            self.apps.iter().map(|a| {
                (
                    vec![("app", a.app.as_str()), ("uplink", a.uplink.as_str())],
                    a.tx_bytes,
                )
            }),
        )?;
        counters(
            &mut encoder,
            "upmt_mh_app_rx_bytes",
            "Inner bytes the app received, per uplink, since the daemon started.",
            self.apps.iter().map(|a| {
                (
                    vec![("app", a.app.as_str()), ("uplink", a.uplink.as_str())],
                    a.rx_bytes,
                )
            }),
        )?;
        gauge(
            &mut encoder,
            "upmt_mh_app_flows",
            "The app's live flows (blocked ones included).",
            &self
                .app_flows
                .iter()
                .map(|(app, n)| (vec![("app", app.as_str())], *n))
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut encoder,
            "upmt_mh_flows",
            "Flows by state: tunnel, blocked, no_uplink (held), pending (owner lookup).",
            &self
                .flows
                .iter()
                .map(|(s, n)| (vec![("state", *s)], *n))
                .collect::<Vec<_>>(),
        )?;
        let c = &self.flow_counters;
        counters(
            &mut encoder,
            "upmt_mh_flows_decided",
            "Flows decided, by outcome.",
            [
                (vec![("outcome", "tunnel")], c.flows_tunnelled),
                (vec![("outcome", "blocked")], c.flows_blocked),
            ],
        )?;
        counters(
            &mut encoder,
            "upmt_mh_handovers",
            "Flows moved to another uplink, by reason (manual: upmt move; unpinned: upmt unpin; uplink_down; policy: a preferred uplink returned or the policy changed).",
            MOVE_REASONS
                .iter()
                .zip(self.recorder.handovers)
                .map(|(r, n)| (vec![("reason", reason_label(*r))], n)),
        )?;
        counters(
            &mut encoder,
            "upmt_mh_drops",
            "Packets or datagrams dropped, by layer and reason.",
            self.drops
                .iter()
                .map(|(layer, reason, n)| (vec![("layer", *layer), ("reason", *reason)], *n)),
        )?;
        counters(
            &mut encoder,
            "upmt_mh_owner_lookups",
            "New flows' owners, by how they were found (overdue: decided by the default rule while the lookup was late; late_answer: decided again when it came).",
            self.owners.iter().map(|(how, n)| (vec![("how", *how)], *n)),
        )?;

        let r = &self.recorder;
        let buckets: Vec<(f64, u64)> = LOOKUP_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(r.lookup_buckets)
            .collect();
        let mut histogram = encoder.encode_descriptor(
            "upmt_mh_owner_lookup_seconds",
            "How long owner lookups took (socket diag and process reads, on the lookup thread).",
            None,
            MetricType::Histogram,
        )?;
        histogram.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            r.lookup_sum.as_secs_f64(),
            r.lookups(),
            &buckets,
            None,
        )?;
        Ok(())
    }
}

type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One gauge family.
fn gauge<N: EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, N)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// One counter family; the encoder appends `_total` to `name`.
fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut recorder = Recorder::default();
        recorder.lookup(Duration::from_micros(30));
        recorder.lookup(Duration::from_micros(700));
        recorder.lookup(Duration::from_secs(1));
        recorder.event(&Event::FlowMoved {
            flow: 1,
            app: "curl".into(),
            from: Some("wifi".into()),
            to: "cell".into(),
            reason: MoveReason::UplinkDown,
        });
        recorder.event(&Event::TunnelDown {
            uplink: "wifi".into(),
        });
        Snapshot {
            connected: true,
            paths: vec![
                PathSnapshot {
                    uplink: "wifi".into(),
                    interface: "wlan0".into(),
                    state: TunnelState::Up,
                    rtt: Some(Duration::from_micros(12_500)),
                    loss: 0.25,
                    tx_packets: 10,
                    rx_packets: 9,
                    resent_bytes: 0,
                },
                PathSnapshot {
                    uplink: "cell".into(),
                    interface: "rmnet0".into(),
                    state: TunnelState::Down,
                    rtt: None,
                    loss: 0.0,
                    tx_packets: 0,
                    rx_packets: 0,
                    resent_bytes: 0,
                },
            ],
            apps: vec![AppBytes {
                app: "curl".into(),
                uplink: "wifi".into(),
                tx_bytes: 300,
                rx_bytes: 4000,
            }],
            app_flows: vec![("curl".into(), 2)],
            flows: [
                ("tunnel", 2),
                ("blocked", 0),
                ("no_uplink", 0),
                ("pending", 1),
            ],
            drops: vec![("protocol", "truncated", 3), ("driver", "send_error", 0)],
            owners: vec![("scan", 5)],
            recorder,
            ..Snapshot::default()
        }
    }

    #[test]
    fn paths_report_state_rtt_loss_and_datagrams_per_uplink() {
        let text = sample().render();
        for line in [
            "upmt_mh_session_connected 1\n",
            "upmt_mh_path_state{uplink=\"wifi\",interface=\"wlan0\",state=\"up\"} 1\n",
            "upmt_mh_path_state{uplink=\"wifi\",interface=\"wlan0\",state=\"down\"} 0\n",
            "upmt_mh_path_state{uplink=\"cell\",interface=\"rmnet0\",state=\"down\"} 1\n",
            "upmt_mh_path_rtt_seconds{uplink=\"wifi\"} 0.0125\n",
            "upmt_mh_path_loss_ratio{uplink=\"wifi\"} 0.25\n",
            "upmt_mh_path_tx_datagrams_total{uplink=\"wifi\"} 10\n",
            "upmt_mh_path_transitions_total{uplink=\"wifi\",to=\"down\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // No RTT sample for a path never answered, rather than a misleading zero.
        assert!(
            !text.contains("upmt_mh_path_rtt_seconds{uplink=\"cell\"}"),
            "{text}"
        );
    }

    #[test]
    fn apps_handovers_drops_and_flows_are_labelled_counters_and_gauges() {
        let text = sample().render();
        for line in [
            "upmt_mh_app_rx_bytes_total{app=\"curl\",uplink=\"wifi\"} 4000\n",
            "upmt_mh_app_tx_bytes_total{app=\"curl\",uplink=\"wifi\"} 300\n",
            "# TYPE upmt_mh_app_rx_bytes_total counter\n",
            "upmt_mh_app_flows{app=\"curl\"} 2\n",
            "upmt_mh_flows{state=\"pending\"} 1\n",
            "upmt_mh_handovers_total{reason=\"uplink_down\"} 1\n",
            "upmt_mh_handovers_total{reason=\"manual\"} 0\n",
            "upmt_mh_drops_total{layer=\"protocol\",reason=\"truncated\"} 3\n",
            "upmt_mh_drops_total{layer=\"driver\",reason=\"send_error\"} 0\n",
            "upmt_mh_owner_lookups_total{how=\"scan\"} 5\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn owner_lookup_latency_is_a_cumulative_histogram() {
        let text = sample().render();
        for line in [
            "# TYPE upmt_mh_owner_lookup_seconds histogram\n",
            "upmt_mh_owner_lookup_seconds_bucket{le=\"5e-05\"} 1\n",
            "upmt_mh_owner_lookup_seconds_bucket{le=\"0.001\"} 2\n",
            "upmt_mh_owner_lookup_seconds_bucket{le=\"0.1\"} 2\n",
            "upmt_mh_owner_lookup_seconds_bucket{le=\"+Inf\"} 3\n",
            "upmt_mh_owner_lookup_seconds_count 3\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn every_sample_line_has_a_name_and_a_number() {
        for line in sample().render().lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("upmt_mh_"), "{line}");
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("not a number: {line}"));
        }
    }
}
