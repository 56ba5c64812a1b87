//! How long a new connection waits for upmt to name its app: curl's `time_connect` and
//! `time_starttransfer` of short HTTP requests, each a new process and a new TCP connection,
//! through upmt and over the direct path (a uid the policy bypasses), interleaved so both see
//! the same load. Under a crowd of processes holding sockets on the MH, with processes starting
//! steadily and in bursts. Then, optionally, the MH's memory before and after many short flows.
//! Figures are printed, never asserted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use upmt_tests::crowd::{self, Connect, percentile};
use upmt_tests::exec::python;
use upmt_tests::topology::CH_V4;
use upmt_tests::{Crowd, CrowdOptions, DeployOptions, Deployment, Family, Lab};

/// Video on wifi (the direct path's uplink too), uid 4242 bypassed.
const POLICY: &str =
    include_str!("../../../../mobile-host/core/tests/fixtures/two-apps-policy.toml");
const DIRECT: [&str; 7] = [
    "setpriv",
    "--reuid",
    "4242",
    "--regid",
    "4242",
    "--clear-groups",
    "--",
];
/// The app whose connections go through upmt.
const APP: &str = "com.example.video";

/// Sends `COUNT` UDP datagrams to `ADDR`, each to another port (or from another socket once the
/// ports run out), about `RATE` per second: that many new flows.
const FLOWS_PY: &str = r#"
import socket, sys, time
addr, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ports = range(1024, 65024)
sent, start, sock = 0, time.monotonic(), None
while sent < count:
    if sent % len(ports) == 0:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(b"x", (addr, ports[sent % len(ports)]))
    sent += 1
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
"#;

/// Runs every condition with `requests` requests per path, then `flows` short flows.
pub fn run(lab: &Lab, requests: usize, idle: usize, flows: usize) -> Result<()> {
    let upmt = Deployment::start(
        lab,
        &DeployOptions {
            mh_policy: Some(POLICY.to_owned()),
            log: "warn".to_owned(),
            ..DeployOptions::default()
        },
    )
    .context("starting upmt")?;
    let http = lab
        .start_http_server()
        .context("starting the CH's HTTP server")?;
    let url = http.url(Family::V4, "small.txt");
    let conditions = [
        (format!("{idle} idle processes"), CrowdOptions::idle(idle)),
        (
            format!("{idle} idle, 10 new/s (3 s each)"),
            CrowdOptions {
                rate: 10.0,
                lifetime: Duration::from_secs(3),
                ..CrowdOptions::idle(idle)
            },
        ),
        (
            format!("{idle} idle, 300 at once every 3 s"),
            CrowdOptions {
                burst: 300,
                every: Duration::from_secs(3),
                lifetime: Duration::from_millis(1500),
                ..CrowdOptions::idle(idle)
            },
        ),
    ];
    println!(
        "\nconnect latency: {requests} sequential HTTP requests per path, a new curl and TCP \
         connection each, direct (bypass uid) and through upmt ({APP}) interleaved; \
         ms, 5 UDP sockets per crowd process, 2 cores shared by everything"
    );
    println!(
        "  {:<36} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8}",
        "condition",
        "conn p50",
        "+upmt",
        "conn p99",
        "+upmt",
        "1st p50",
        "+upmt",
        "1st p99",
        "+upmt"
    );
    let mh = lab.mh();
    for (label, options) in conditions {
        let crowd = Crowd::start(&mh, &options).with_context(|| format!("crowd for {label}"))?;
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..requests {
            direct.push(
                crowd::connect(&mh, &DIRECT, None, &url)
                    .with_context(|| format!("direct request\n{}", upmt.logs()))?,
            );
            through.push(
                crowd::connect(&mh, &[], Some(APP), &url)
                    .with_context(|| format!("request through upmt\n{}", upmt.logs()))?,
            );
        }
        if !crowd.is_running() {
            anyhow::bail!("the crowd for {label} ended early");
        }
        drop(crowd);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let cell = |f: fn(&Connect) -> Duration, p: f64| {
            let d = percentile(&direct.iter().map(f).collect::<Vec<_>>(), p);
            let t = percentile(&through.iter().map(f).collect::<Vec<_>>(), p);
            format!("{:>8.2} {:>+8.2}", ms(d), ms(t) - ms(d))
        };
        let connect = |c: &Connect| c.connect;
        let first = |c: &Connect| c.first_byte;
        println!(
            "  {label:<36} {} {} | {} {}",
            cell(connect, 50.0),
            cell(connect, 99.0),
            cell(first, 50.0),
            cell(first, 99.0)
        );
    }
    println!(
        "  (conn: time_connect, 1st: time_starttransfer; direct figure, then upmt minus direct)"
    );
    println!("\nowners after the run: {}", owners(lab)?);

    if flows > 0 {
        memory(lab, &upmt, flows)?;
    }
    Ok(())
}

/// `upmt status --json`'s owner counts, as JSON text.
fn owners(lab: &Lab) -> Result<String> {
    let status = upmt_tests::deploy::mh_status(lab).context("upmt status --json")?;
    Ok(status["owners"].to_string())
}

/// The MH daemon's resident memory, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// The MH's RSS before `flows` one-datagram UDP flows, right after, and once they expired; twice,
/// so a second round shows whether memory grows or stays at the first round's high-water mark.
fn memory(lab: &Lab, upmt: &Deployment<'_>, flows: usize) -> Result<()> {
    let pid = upmt.mh.pid();
    let rate = 5000.0;
    // UDP flows expire after 60 s idle; the expiry timer runs every few seconds.
    let expiry = Duration::from_secs(75);
    println!(
        "\nMH memory, rounds of {flows} one-datagram UDP flows to the CH (RSS in KiB: before, \
         right after, {} s later when the flows expired):",
        expiry.as_secs()
    );
    for round in 1..=2 {
        let before = rss_kib(pid)?;
        let started = Instant::now();
        lab.mh()
            .command(&[
                python(),
                "-c".to_owned(),
                FLOWS_PY.to_owned(),
                CH_V4.to_string(),
                flows.to_string(),
                rate.to_string(),
            ])
            .timeout(Duration::from_secs_f64(flows as f64 / rate + 60.0))
            .run()
            .context("sending the short flows")?;
        let sent = started.elapsed();
        let after = rss_kib(pid)?;
        std::thread::sleep(expiry);
        let expired = rss_kib(pid)?;
        println!(
            "  round {round}: sent in {:.1} s; RSS {before} -> {after} -> {expired}",
            sent.as_secs_f64()
        );
    }
    println!("owners after the flows: {}", owners(lab)?);
    Ok(())
}
