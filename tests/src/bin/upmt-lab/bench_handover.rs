//! `upmt-lab bench-handover`: the receiver-side gap of a TCP download through upmt across a
//! Wi-Fi link cut, a Wi-Fi blackhole (the link stays up, only probes can notice), and the return
//! of the preferred uplink (Wi-Fi back after the download moved to cell). Each event is measured
//! `runs` times, each run in a fresh deployment; prints median and max.
//!
//! The gap is the longest time the downloaded file did not grow (polled every 5 ms) between the
//! event and the end of the download: it includes TCP's own recovery (retransmission timeouts),
//! which is what an application sees. Alongside, a paced UDP stream from the CH to the MH
//! (iperf3 -u -R, 1250 datagrams/s of 200 bytes) runs across the same event; its lost
//! datagrams, counted by iperf3's receiver, are printed as a count and as milliseconds of stream.
//!
//! Each event runs under three policies: `order` (every app on wifi, else cell: today's
//! default), `lowest_rtt` (the same uplinks chosen by probe RTT, running flows moved too) and
//! `redundant` (`order` with `redundant = true`: every packet on both uplinks), printed as one
//! table of event x policy. Below each row, every run's figures and the bytes resent after the
//! move: by the anchor (downlink) and by the MH (uplink), see docs/architecture.md.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use upmt_tests::topology::MH_WIFI_IF;
use upmt_tests::{DeployOptions, Deployment, Lab, iperf3_udp_lost};

/// Each uplink's rate, so the download lasts several seconds.
const SHAPED_BITS_PER_SEC: u64 = 50_000_000;
/// When the event happens after the download started.
const EVENT_AFTER: Duration = Duration::from_millis(1500);
/// The paced UDP stream: datagrams per second (2 Mbit/s of 200-byte payloads) and its length.
const UDP_PPS: u64 = 1250;
const UDP_SECS: u64 = 7;

/// What one run measured.
struct Measured {
    gap: Duration,
    udp_lost: u64,
    /// Bytes resent after the move by the anchor (downlink) and the MH (uplink).
    resent: (u64, u64),
}

/// The policy of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Order,
    LowestRtt,
    Redundant,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Order => "order",
            Mode::LowestRtt => "lowest_rtt",
            Mode::Redundant => "redundant",
        }
    }

    fn policy(self) -> String {
        let extra = match self {
            Mode::Order => "",
            Mode::LowestRtt => "select = \"lowest_rtt\"\nmove_existing = true\n",
            Mode::Redundant => "redundant = true\n",
        };
        format!(
            "version = 1\n[[rule]]\napp = \"*\"\nuplinks = [\"wifi\", \"cell\"]\nwhen_none = \"any\"\n{extra}"
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    LinkDown,
    Blackhole,
    PreferredReturns,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::LinkDown => "link down",
            Kind::Blackhole => "blackhole",
            Kind::PreferredReturns => "preferred returns",
        }
    }
}

pub fn run(lab: &Lab, runs: usize) -> Result<()> {
    let http = lab.start_http_server().context("http server")?;
    lab.start_iperf3_server().context("iperf3 server")?;
    for router in [lab.rwifi(), lab.rcell()] {
        router.tbf("lan", SHAPED_BITS_PER_SEC)?;
    }
    let want = http.sha256("big.bin").context("big.bin served")?.to_owned();
    println!(
        "{:<18} {:<10} {:>5} {:>12} {:>12} {:>22} {:>22}",
        "event", "policy", "runs", "median gap", "max gap", "median UDP lost", "max UDP lost"
    );
    let events = [Kind::LinkDown, Kind::Blackhole, Kind::PreferredReturns];
    for (kind, mode) in events
        .into_iter()
        .flat_map(|k| [(k, Mode::Order), (k, Mode::LowestRtt), (k, Mode::Redundant)])
    {
        let mut gaps = Vec::with_capacity(runs);
        let mut lost = Vec::with_capacity(runs);
        let mut resent = Vec::with_capacity(runs);
        for i in 0..runs {
            let m = one_run(lab, kind, mode, &want)
                .with_context(|| format!("{} ({}) run {}", kind.name(), mode.name(), i + 1))?;
            resent.push(format!(
                "run {}: gap {:.0} ms, UDP lost {}, resent {} B by the anchor, {} B by the MH",
                i + 1,
                m.gap.as_secs_f64() * 1e3,
                m.udp_lost,
                m.resent.0,
                m.resent.1
            ));
            gaps.push(m.gap);
            lost.push(m.udp_lost);
        }
        gaps.sort();
        lost.sort();
        let ms = |n: u64| n as f64 * 1e3 / UDP_PPS as f64;
        let (mid, max) = (lost[lost.len() / 2], lost[lost.len() - 1]);
        println!(
            "{:<18} {:<10} {:>5} {:>9.0} ms {:>9.0} ms {:>7} ({:>6.0} ms) {:>7} ({:>6.0} ms)",
            kind.name(),
            mode.name(),
            runs,
            gaps[gaps.len() / 2].as_secs_f64() * 1e3,
            gaps[gaps.len() - 1].as_secs_f64() * 1e3,
            mid,
            ms(mid),
            max,
            ms(max)
        );
        for line in resent {
            println!("    {line}");
        }
    }
    Ok(())
}

/// Lost datagrams of a finished `iperf3 -u -R -J` client, from its JSON log.
fn udp_lost(log: &str) -> Result<u64> {
    iperf3_udp_lost(log).with_context(|| format!("iperf3 reported no lost datagrams: {log}"))
}

fn one_run(lab: &Lab, kind: Kind, mode: Mode, want: &str) -> Result<Measured> {
    let options = DeployOptions {
        mh_policy: Some(mode.policy()),
        log: "info".to_owned(),
        ..DeployOptions::default()
    };
    let mh = lab.mh();
    let upmt = Deployment::start(lab, &options)?;
    if kind == Kind::PreferredReturns {
        // Start on cell: wifi is down, comes back mid-download.
        mh.set_link(MH_WIFI_IF, false)?;
        std::thread::sleep(Duration::from_secs(2));
    }
    let udp = mh.paced_udp_from_ch(UDP_PPS, 200, UDP_SECS, "bench-udp")?;
    let curl = lab
        .download("big.bin")
        .max_time(Duration::from_secs(60))
        .label("bench-curl")
        .start()?;
    let t0 = Instant::now();
    let (mut done, mut last_size, mut last_growth, mut gap) = (false, 0u64, t0, Duration::ZERO);
    while curl.is_running() && t0.elapsed() < Duration::from_secs(60) {
        let now = Instant::now();
        if !done && now - t0 >= EVENT_AFTER {
            done = true;
            match kind {
                Kind::LinkDown => mh.set_link(MH_WIFI_IF, false)?,
                Kind::Blackhole => mh.blackhole(MH_WIFI_IF)?,
                Kind::PreferredReturns => {
                    mh.set_link(MH_WIFI_IF, true)?;
                    mh.restore_default_routes(Some(MH_WIFI_IF))?;
                }
            }
            last_growth = now;
        }
        let size = curl.bytes_so_far();
        if size > last_size {
            if done {
                gap = gap.max(now - last_growth);
            }
            last_size = size;
            last_growth = now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = curl.wait(Duration::from_secs(5))?;
    // 32 MiB per run: not kept until the lab goes.
    if let Some(path) = &got.path {
        let _ = std::fs::remove_file(path);
    }
    udp.wait_with_timeout(Duration::from_secs(UDP_SECS + 10))
        .context("iperf3 UDP did not finish")?;
    let udp_lost = udp_lost(&udp.log())?;
    let resent = (
        upmt.an_metric("upmt_core_resent_bytes").unwrap_or(0),
        mh_resent_bytes(lab).unwrap_or(0),
    );
    // Undo the event for the next run's deployment.
    let _ = mh.remove_disturbance(MH_WIFI_IF);
    mh.set_link(MH_WIFI_IF, true)?;
    let _ = mh.restore_default_routes(Some(MH_WIFI_IF));
    drop(upmt);
    let intact = got.sha256.as_deref() == Some(want);
    if !got.success() || !intact {
        bail!(
            "the download did not survive: curl {:?}, sha256 ok {intact}",
            got.status
        );
    }
    Ok(Measured {
        gap,
        udp_lost,
        resent,
    })
}

/// The bytes the MH resent on any of its tunnels, from `upmt status --json`.
fn mh_resent_bytes(lab: &Lab) -> Result<u64> {
    let status = upmt_tests::deploy::mh_status(lab)?;
    Ok(status["tunnels"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["resent_bytes"].as_u64()).sum())
        .unwrap_or(0))
}
