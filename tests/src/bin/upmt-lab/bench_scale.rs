//! `upmt-lab bench-scale`: one real anchor against a swarm of N simulated mobile hosts
//! (`upmt-swarm`), for each N asked. For each, a fresh lab and deployment (the anchor configured
//! with the N hosts and the lab's real MH), then:
//! 1. the anchor's RSS with N configured peers and no session (from /proc);
//! 2. the swarm starts (faster than the anchor's handshake budget, so the anchor sets the pace):
//!    the handshake rate is N over the time until every host is up;
//! 3. the anchor's RSS with N sessions, then, after the hosts opened their flows (one UDP packet
//!    each toward the CH's echo server), with N x flows flows: RSS per MH and per flow;
//! 4. after a settle (the hosts' active windows end, only keepalives remain), the anchor's CPU
//!    (utime + stime) over a window, in % of one core;
//! 5. iperf3 TCP download through the tunnel by the lab's real MH while the swarm idles.
//!
//! Figures, never asserted. Goals from issue 15: 10,000 MHs x 10 flows under 256 MB RSS, idle
//! CPU with 10,000 keepalive sessions under 5 % of a core.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use upmt_tests::deploy::metric_sum;
use upmt_tests::scale::{
    RunningSwarm, SwarmOptions, add_swarm_host, deploy_options, proc_stat, ticks_per_second,
};
use upmt_tests::{Deployment, Family, Lab, wait_for};

/// What the bench varies and how long it waits.
pub struct Options {
    pub counts: Vec<usize>,
    pub flows: u16,
    pub sources: u32,
    pub settle: Duration,
    pub window: Duration,
    pub iperf_seconds: u32,
}

/// One row of the table.
struct Row {
    count: usize,
    rss_configured_kib: u64,
    rss_sessions_kib: u64,
    rss_flows_kib: u64,
    all_up_s: f64,
    handshake_rate: f64,
    dh_operations: u64,
    cookies_sent: u64,
    idle_cpu_percent: f64,
    download_bps: f64,
    /// Flows the anchor counted.
    flows_counted: u64,
    /// Swarm sessions lost until the end of the idle window, and during the download.
    lost_idle: u64,
    lost_download: u64,
}

pub fn run(options: &Options) -> Result<()> {
    let mut rows = Vec::new();
    for &count in &options.counts {
        let started = Instant::now();
        // A failed count is reported and the others still run (each has its own lab).
        match one(count, options) {
            Ok(row) => {
                eprintln!(
                    "bench-scale: {count} hosts measured in {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                rows.push(row);
            }
            Err(e) => eprintln!("bench-scale: {count} hosts failed: {e:#}"),
        }
    }
    println!(
        "\none anchor, N simulated MHs x {} flows (every tenth with a second path), {} s idle window:",
        options.flows,
        options.window.as_secs()
    );
    println!(
        "{:>6} | {:>8} {:>8} {:>8} | {:>8} {:>9} | {:>8} {:>8} {:>7} | {:>8} | {:>9} | {:>7}",
        "MHs",
        "RSS cfg",
        "sessions",
        "flows",
        "B/MH",
        "B/flow",
        "all up",
        "HS/s",
        "DH ops",
        "idle CPU",
        "1 MH down",
        "lost"
    );
    for r in rows {
        let per_mh = (r.rss_sessions_kib.saturating_sub(r.rss_configured_kib) * 1024) as f64
            / r.count as f64;
        let flows = r.flows_counted as f64;
        let per_flow =
            (r.rss_flows_kib.saturating_sub(r.rss_sessions_kib) * 1024) as f64 / flows.max(1.0);
        println!(
            "{:>6} | {:>5} MB {:>5} MB {:>5} MB | {:>8.0} {:>9.0} | {:>6.1} s {:>8.0} {:>7} | {:>6.2} % | {:>4.2} Gbps | {:>7}",
            r.count,
            r.rss_configured_kib / 1024,
            r.rss_sessions_kib / 1024,
            r.rss_flows_kib / 1024,
            per_mh,
            per_flow,
            r.all_up_s,
            r.handshake_rate,
            r.dh_operations,
            r.idle_cpu_percent,
            r.download_bps / 1e9,
            format!("{}+{}", r.lost_idle, r.lost_download),
        );
        let expected = r.count as u64 * u64::from(options.flows);
        if r.flows_counted < expected {
            println!(
                "         (the anchor counted {} of {expected} flows; B/flow divides by that)",
                r.flows_counted
            );
        }
        if r.cookies_sent > 0 {
            println!(
                "         ({} cookie replies: the anchor's handshake budget was the pace)",
                r.cookies_sent
            );
        }
    }
    println!(
        "RSS cfg: anchor with N peers configured, no session; sessions: every MH up; flows: every \
         flow open. B/MH and B/flow are the differences divided. HS/s: N / time until all up. \
         idle CPU: utime+stime over the window / one core. 1 MH down: iperf3 download of the \
         lab's real MH while the swarm idles. lost: swarm sessions lost until the end of the idle \
         window + during the download."
    );
    Ok(())
}

fn one(count: usize, options: &Options) -> Result<Row> {
    let mut lab = Lab::new("upmt-lab-bench-scale").context("building the lab")?;
    add_swarm_host(&mut lab, options.sources)?;
    lab.start_udp_echo().context("the CH's echo server")?;
    let iperf = lab
        .start_iperf3_server()
        .context("the CH's iperf3 server")?;
    let upmt = Deployment::start(&lab, &deploy_options(count, "")).context("starting upmt")?;
    let an = upmt.an.pid();
    // The MH's first probes and the anchor's start-up settle.
    std::thread::sleep(Duration::from_secs(2));
    let rss_configured_kib = proc_stat(an)?.rss_kib;

    let generous = Duration::from_secs(60 + count as u64 / 100);
    let swarm = RunningSwarm::start(
        &lab,
        &upmt,
        &SwarmOptions {
            flows: options.flows,
            sources: options.sources,
            trickle_s: 0,
            start_rate: 5000,
            flows_on_signal: true,
            duration: generous * 2 + options.settle + options.window + Duration::from_secs(120),
            ..SwarmOptions::new(count)
        },
    )?;
    let up = swarm.wait("every host up", generous, |p| p.up == count)?;
    let all_up_s = up.all_up_at.unwrap_or(up.t);
    wait_for("the anchor to count every session", generous, || {
        upmt.an_metrics()
            .is_ok_and(|m| metric_sum(&m, "upmt_peer_connected{peer=\"swarm") == count as u64)
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_sessions_kib = proc_stat(an)?.rss_kib;
    // Each phase's figures as they come, so a later phase that fails leaves them behind.
    eprintln!(
        "bench-scale: {count} hosts: RSS {} MB configured, {} MB with every session; all up after \
         {all_up_s:.1} s ({:.0} handshakes/s)",
        rss_configured_kib / 1024,
        rss_sessions_kib / 1024,
        count as f64 / all_up_s.max(1e-3)
    );

    swarm.open_flows();
    swarm.wait("every host's flows open", generous, |p| {
        p.flows_opened == count
    })?;
    // A first packet lost on the way is not sent again (no trickle here): 99 % will do, and the
    // per-flow figure divides by what the anchor counts.
    let flows = count as u64 * u64::from(options.flows);
    let anchor_flows = || {
        upmt.an_metrics()
            .map_or(0, |m| metric_sum(&m, "upmt_peer_flows{peer=\"swarm"))
    };
    if wait_for("the anchor to count the flows", generous, || {
        anchor_flows() >= flows * 99 / 100
    })
    .is_err()
    {
        eprintln!(
            "bench-scale: the anchor counts {} of {flows} flows; measuring with those",
            anchor_flows()
        );
    }
    std::thread::sleep(options.settle);
    let rss_flows_kib = proc_stat(an)?.rss_kib;
    let flows_counted = anchor_flows();
    eprintln!(
        "bench-scale: {count} hosts: RSS {} MB with {flows_counted} flows",
        rss_flows_kib / 1024
    );

    let before = proc_stat(an)?;
    let t0 = Instant::now();
    std::thread::sleep(options.window);
    let after = proc_stat(an)?;
    let lost_idle = swarm.progress().unwrap_or_default().disconnects;
    eprintln!(
        "bench-scale: {count} hosts: anchor CPU {:.2} % of a core over the idle window",
        100.0 * (after.ticks - before.ticks) as f64
            / ticks_per_second()
            / t0.elapsed().as_secs_f64()
    );
    let idle_cpu_percent = 100.0 * (after.ticks - before.ticks) as f64
        / ticks_per_second()
        / t0.elapsed().as_secs_f64();

    let download_bps = crate::bench::iperf3(
        &lab,
        &iperf.addr(Family::V4).ip().to_string(),
        options.iperf_seconds,
        true,
    )
    .context("iperf3 through upmt")?;
    let metrics = upmt.an_metrics()?;
    let last = swarm.progress().unwrap_or_default();
    Ok(Row {
        count,
        rss_configured_kib,
        rss_sessions_kib,
        rss_flows_kib,
        all_up_s,
        handshake_rate: count as f64 / all_up_s.max(1e-3),
        dh_operations: metric_sum(&metrics, "upmt_core_dh_operations"),
        cookies_sent: metric_sum(&metrics, "upmt_core_cookies_sent"),
        idle_cpu_percent,
        download_bps,
        flows_counted,
        lost_idle,
        lost_download: last.disconnects - lost_idle,
    })
}
