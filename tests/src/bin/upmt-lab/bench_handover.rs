//! `upmt-lab bench-handover`: the receiver-side gap of a TCP download through upmt across a
//! Wi-Fi link cut, a Wi-Fi blackhole (the link stays up, only probes can notice), and the return
//! of the preferred uplink (Wi-Fi back after the download moved to cell). Each event is measured
//! `runs` times, each run in a fresh deployment; prints median and max.
//!
//! The gap is the longest time the downloaded file did not grow (polled every 5 ms) between the
//! event and the end of the download: it includes TCP's own recovery (retransmission timeouts),
//! which is what an application sees. Not measured yet: the loss of a paced UDP stream.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use upmt_tests::topology::MH_WIFI_IF;
use upmt_tests::{DeployOptions, Deployment, Family, Lab};

/// Each uplink's rate, so the download lasts several seconds.
const SHAPED_BITS_PER_SEC: u64 = 50_000_000;
/// When the event happens after the download started.
const EVENT_AFTER: Duration = Duration::from_millis(1500);

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
    for router in [lab.rwifi(), lab.rcell()] {
        router.tbf("lan", SHAPED_BITS_PER_SEC)?;
    }
    let url = http.url(Family::V4, "big.bin");
    let want = http.sha256("big.bin").context("big.bin served")?.to_owned();
    println!(
        "{:<18} {:>5} {:>12} {:>12}",
        "event", "runs", "median gap", "max gap"
    );
    for kind in [Kind::LinkDown, Kind::Blackhole, Kind::PreferredReturns] {
        let mut gaps = Vec::with_capacity(runs);
        for i in 0..runs {
            let gap = one_run(lab, kind, &url, &want)
                .with_context(|| format!("{} run {}", kind.name(), i + 1))?;
            gaps.push(gap);
        }
        gaps.sort();
        println!(
            "{:<18} {:>5} {:>9.0} ms {:>9.0} ms",
            kind.name(),
            runs,
            gaps[gaps.len() / 2].as_secs_f64() * 1e3,
            gaps[gaps.len() - 1].as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn one_run(lab: &Lab, kind: Kind, url: &str, want: &str) -> Result<Duration> {
    let options = DeployOptions {
        mh_extra: format!(
            "control_socket = \"{}\"",
            lab.dir().join("bench-mh.sock").display()
        ),
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
    let out = lab.dir().join("bench-handover.bin");
    let _ = std::fs::remove_file(&out);
    let curl = mh
        .command(&[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "60",
            "-o",
            out.to_str().context("utf-8 dir")?,
            url,
        ])
        .label("bench-curl")
        .spawn()?;
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
        let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        if size > last_size {
            if done {
                gap = gap.max(now - last_growth);
            }
            last_size = size;
            last_growth = now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = curl.wait_with_timeout(Duration::from_secs(5));
    let sha = upmt_tests::sha256_file(&out)?;
    // Undo the event for the next run's deployment.
    let _ = mh.remove_disturbance(MH_WIFI_IF);
    mh.set_link(MH_WIFI_IF, true)?;
    let _ = mh.restore_default_routes(Some(MH_WIFI_IF));
    drop(upmt);
    if !status.is_some_and(|s| s.success()) || sha != want {
        bail!(
            "the download did not survive: curl {status:?}, sha256 ok {}",
            sha == want
        );
    }
    Ok(gap)
}
