//! The Grafana dashboard (docs/grafana/upmt.json) is valid JSON and every metric its queries
//! use is one the daemons serve: both registries are rendered and their names compared, so a
//! renamed series fails here rather than as an empty panel.

use std::collections::BTreeSet;

use upmt_anchor_node::metrics as anchor;
use upmt_mobile_host::metrics as mh;

const DASHBOARD: &str = include_str!("../../docs/grafana/upmt.json");

/// The sample names a rendering declares (`# TYPE` lines; histograms add their three series).
fn names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("name and type");
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Every series both daemons can serve (the anchor's isolation counters only appear when read,
/// so its snapshot has one).
fn served() -> BTreeSet<String> {
    let an = anchor::Snapshot {
        isolation_drops: vec![("peer_to_peer", 0)],
        ..anchor::Snapshot::default()
    };
    let mut all = names(&an.render());
    all.extend(names(&mh::Snapshot::default().render()));
    all
}

/// The metric names a PromQL expression refers to (ours all start with `upmt_`).
fn used(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("upmt_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_served_by_a_daemon() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 15, "only {} queries", queries.len());
    let served = served();
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    for q in &queries {
        let names = used(q);
        assert!(!names.is_empty(), "query without an upmt metric: {q}");
        for n in names {
            if !served.contains(&n) {
                missing.push(format!("{n} (in {q})"));
            }
            seen.insert(n);
        }
    }
    assert!(
        missing.is_empty(),
        "not served by either daemon: {missing:#?}"
    );
    // Both daemons are on it, and the series the issue names.
    for name in [
        "upmt_mh_path_rtt_seconds",
        "upmt_mh_path_loss_ratio",
        "upmt_mh_app_rx_bytes_total",
        "upmt_mh_handovers_total",
        "upmt_mh_owner_lookup_seconds_bucket",
        "upmt_peer_connected",
        "upmt_drops_total",
    ] {
        assert!(seen.contains(name), "the dashboard does not show {name}");
    }
}

#[test]
fn the_name_check_would_catch_a_renamed_series() {
    assert_eq!(
        used("sum by (le) (rate(upmt_mh_owner_lookup_seconds_bucket{a=\"upmt_x\"}[5m]))"),
        ["upmt_mh_owner_lookup_seconds_bucket", "upmt_x"]
    );
    assert!(!served().contains("upmt_mh_path_rtt"));
    assert!(served().contains("upmt_mh_path_rtt_seconds"));
}
