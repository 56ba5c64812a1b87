//! What `upmt top` shows, computed from the daemon's replies: rates from counter deltas, a
//! short rate history per uplink, apps sorted by current rate, and the last events. Pure: the
//! caller passes the replies and the time they were taken, so tests drive it with fixed ones.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::control::proto::{AppsReply, Event, StatusReply, TunnelState};

/// Rate samples kept per uplink (one per poll: about a minute at the default interval).
pub const HISTORY: usize = 60;
/// Events kept for the event pane.
pub const EVENTS: usize = 50;

/// A fixed-size ring of the most recent samples, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    samples: VecDeque<u64>,
}

impl History {
    /// Adds a sample, forgetting the oldest beyond [`HISTORY`].
    pub fn push(&mut self, v: u64) {
        if self.samples.len() == HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back(v);
    }

    /// The last `n` samples (fewer when fewer were taken), oldest first.
    pub fn last(&self, n: usize) -> Vec<u64> {
        let skip = self.samples.len().saturating_sub(n);
        self.samples.iter().skip(skip).copied().collect()
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// No sample yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// One uplink as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct UplinkView {
    pub name: String,
    pub interface: String,
    pub state: TunnelState,
    pub rtt: Option<Duration>,
    pub loss: f32,
    /// Bytes per second, both directions, over the last interval.
    pub rate: u64,
    pub history: History,
}

/// One app as shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppView {
    pub name: String,
    /// The uplinks its flows use now (empty: blocked or none).
    pub uplinks: Vec<String>,
    pub flows: u64,
    /// Bytes per second, both directions, over the last interval.
    pub rate: u64,
    /// Bytes over its live flows.
    pub bytes: u64,
}

/// Everything on screen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// Whether the session is up, and the anchor.
    pub connected: bool,
    pub anchor: String,
    pub uplinks: Vec<UplinkView>,
    /// Sorted by rate, then bytes, then name.
    pub apps: Vec<AppView>,
    /// (seconds since start, one line), oldest first.
    pub events: VecDeque<(f64, String)>,
    /// The last error talking to the daemon, shown until the next good poll.
    pub error: Option<String>,
    /// When the last poll was taken, since start; `None` before the first.
    last_poll: Option<Duration>,
    /// Counters at the last poll: per uplink (tx + rx) and per app (tx + rx).
    last_uplink_bytes: BTreeMap<String, u64>,
    last_app_bytes: BTreeMap<String, u64>,
}

/// Bytes per second from two readings of a counter `dt` apart. A counter that went down (flows
/// ended between the readings) counts as no traffic rather than a negative rate.
pub fn rate(before: u64, after: u64, dt: Duration) -> u64 {
    if dt.is_zero() {
        return 0;
    }
    (after.saturating_sub(before) as f64 / dt.as_secs_f64()).round() as u64
}

impl Model {
    /// Takes one poll: the status and apps replies taken at `at` (since start).
    pub fn update(&mut self, status: &StatusReply, apps: &AppsReply, at: Duration) {
        let dt = self.last_poll.map(|t| at.saturating_sub(t));
        self.connected = status.session.state == crate::control::proto::SessionState::Connected;
        self.anchor = status.session.anchor.to_string();
        let mut uplinks = Vec::with_capacity(status.tunnels.len());
        for t in &status.tunnels {
            let bytes = t.tx_bytes + t.rx_bytes;
            let before = self.last_uplink_bytes.insert(t.uplink.clone(), bytes);
            let rate = match (before, dt) {
                (Some(b), Some(dt)) => rate(b, bytes, dt),
                _ => 0,
            };
            let mut history = self
                .uplinks
                .iter()
                .find(|u| u.name == t.uplink)
                .map(|u| u.history.clone())
                .unwrap_or_default();
            if dt.is_some() {
                history.push(rate);
            }
            uplinks.push(UplinkView {
                name: t.uplink.clone(),
                interface: t.interface.clone(),
                state: t.state,
                rtt: t.rtt_us.map(Duration::from_micros),
                loss: t.loss,
                rate,
                history,
            });
        }
        self.uplinks = uplinks;
        let mut seen = BTreeMap::new();
        let mut views = Vec::with_capacity(apps.apps.len());
        for a in &apps.apps {
            let bytes: u64 = a.bytes.iter().map(|b| b.tx_bytes + b.rx_bytes).sum();
            let rate = match (self.last_app_bytes.get(&a.name), dt) {
                (Some(&b), Some(dt)) => rate(b, bytes, dt),
                _ => 0,
            };
            seen.insert(a.name.clone(), bytes);
            views.push(AppView {
                name: if a.name.is_empty() {
                    "(unknown)".to_owned()
                } else {
                    a.name.clone()
                },
                uplinks: a.uplinks.clone(),
                flows: a.flows,
                rate,
                bytes,
            });
        }
        views.sort_by(|a, b| {
            (b.rate, b.bytes)
                .cmp(&(a.rate, a.bytes))
                .then_with(|| a.name.cmp(&b.name))
        });
        self.apps = views;
        // Apps that left are forgotten, so the map stays as large as the reply.
        self.last_app_bytes = seen;
        self.last_poll = Some(at);
        self.error = None;
    }

    /// Records an event seen at `at` (since start).
    pub fn event(&mut self, event: &Event, at: Duration) {
        if self.events.len() == EVENTS {
            self.events.pop_front();
        }
        self.events
            .push_back((at.as_secs_f64(), crate::cli::watch::render(event)));
    }

    /// Records a failed poll; the last good figures stay on screen.
    pub fn failed(&mut self, error: String) {
        self.error = Some(error);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::proto::{
        AppStatus, MoveReason, SessionState, SessionStatus, TunnelStatus, UplinkBytes,
    };

    pub(crate) fn tunnel(name: &str, state: TunnelState, bytes: u64) -> TunnelStatus {
        TunnelStatus {
            uplink: name.into(),
            interface: format!("{name}0"),
            state,
            local: None,
            public: None,
            public_addr: None,
            rtt_us: (state == TunnelState::Up).then_some(12_300),
            loss: if state == TunnelState::Up { 0.02 } else { 0.0 },
            tx_bytes: bytes / 4,
            rx_bytes: bytes - bytes / 4,
            tx_packets: 0,
            rx_packets: 0,
            idle: None,
            keepalive_s: None,
            keepalive_learning: None,
            resent_bytes: 0,
            mtu: None,
            metered: false,
        }
    }

    pub(crate) fn status(tunnels: Vec<TunnelStatus>) -> StatusReply {
        StatusReply {
            session: SessionStatus {
                state: SessionState::Connected,
                anchor: "203.0.113.2:51900".parse().unwrap(),
                virtual_addresses: Vec::new(),
                tun: Some("upmt0".into()),
                active_anchor: None,
                cipher: None,
            },
            tunnels,
            owners: None,
        }
    }

    pub(crate) fn app(name: &str, uplink: &str, bytes: u64) -> AppStatus {
        AppStatus {
            name: name.into(),
            rule: String::new(),
            uplinks: vec![uplink.into()],
            flows: 1,
            blocked: 0,
            bytes: vec![UplinkBytes {
                uplink: uplink.into(),
                tx_bytes: 0,
                rx_bytes: bytes,
            }],
            select: None,
            move_existing: false,
            avoid_metered: false,
            spread: false,
            duplicated_bytes: 0,
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn rates_come_from_counter_deltas_and_a_shrinking_counter_is_no_traffic() {
        assert_eq!(rate(1000, 3000, 2 * S), 1000);
        assert_eq!(rate(5000, 100, S), 0);
        assert_eq!(rate(0, 100, Duration::ZERO), 0);
        assert_eq!(rate(0, 150, Duration::from_millis(500)), 300);
    }

    #[test]
    fn the_first_poll_has_no_rate_and_later_ones_fill_the_history() {
        let mut m = Model::default();
        let apps = AppsReply { apps: Vec::new() };
        m.update(
            &status(vec![tunnel("wifi", TunnelState::Up, 1000)]),
            &apps,
            S,
        );
        assert_eq!(m.uplinks[0].rate, 0);
        assert!(m.uplinks[0].history.is_empty());
        m.update(
            &status(vec![tunnel("wifi", TunnelState::Up, 5000)]),
            &apps,
            3 * S,
        );
        assert_eq!(m.uplinks[0].rate, 2000);
        assert_eq!(m.uplinks[0].history.last(10), vec![2000]);
        assert_eq!(m.uplinks[0].rtt, Some(Duration::from_micros(12_300)));
        assert!(m.connected);
    }

    #[test]
    fn the_history_keeps_only_the_newest_samples() {
        let mut h = History::default();
        for v in 0..(HISTORY as u64 + 5) {
            h.push(v);
        }
        assert_eq!(h.len(), HISTORY);
        assert_eq!(
            h.last(3),
            vec![HISTORY as u64 + 2, HISTORY as u64 + 3, HISTORY as u64 + 4]
        );
        assert_eq!(h.last(1000).first(), Some(&5));
    }

    #[test]
    fn apps_are_sorted_by_current_rate_then_bytes_then_name() {
        let mut m = Model::default();
        let st = status(vec![tunnel("wifi", TunnelState::Up, 0)]);
        let first = AppsReply {
            apps: vec![
                app("big-idle", "wifi", 9_000_000),
                app("curl", "wifi", 1000),
                app("video", "cell", 1000),
                app("a-quiet", "wifi", 10),
            ],
        };
        m.update(&st, &first, S);
        let names = |m: &Model| m.apps.iter().map(|a| a.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&m), ["big-idle", "curl", "video", "a-quiet"]);
        let second = AppsReply {
            apps: vec![
                app("big-idle", "wifi", 9_000_000),
                app("curl", "wifi", 51_000),
                app("video", "cell", 201_000),
                app("a-quiet", "wifi", 10),
            ],
        };
        m.update(&st, &second, 2 * S);
        assert_eq!(names(&m), ["video", "curl", "big-idle", "a-quiet"]);
        assert_eq!(m.apps[0].rate, 200_000);
        assert_eq!(m.apps[0].uplinks, ["cell"]);
    }

    #[test]
    fn events_are_kept_in_order_up_to_a_bound() {
        let mut m = Model::default();
        for i in 0..(EVENTS as u64 + 3) {
            m.event(
                &Event::FlowMoved {
                    flow: i,
                    app: "curl".into(),
                    from: Some("wifi".into()),
                    to: "cell".into(),
                    reason: MoveReason::UplinkDown,
                },
                S * i as u32,
            );
        }
        assert_eq!(m.events.len(), EVENTS);
        assert!(
            m.events[0]
                .1
                .starts_with("flow 3 (curl) moved wifi -> cell"),
            "{:?}",
            m.events[0]
        );
        assert_eq!(m.events.back().map(|e| e.0), Some((EVENTS + 2) as f64));
    }

    #[test]
    fn a_failed_poll_keeps_the_figures_and_the_next_good_one_clears_the_error() {
        let mut m = Model::default();
        let apps = AppsReply {
            apps: vec![app("curl", "wifi", 10)],
        };
        m.update(&status(vec![tunnel("wifi", TunnelState::Up, 0)]), &apps, S);
        m.failed("daemon not running".into());
        assert_eq!(m.apps.len(), 1);
        assert_eq!(m.error.as_deref(), Some("daemon not running"));
        m.update(
            &status(vec![tunnel("wifi", TunnelState::Up, 0)]),
            &apps,
            2 * S,
        );
        assert_eq!(m.error, None);
    }
}
