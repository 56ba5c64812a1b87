//! The demo: upmt in the lab, with real programs, and a handover a person can watch.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use upmt_tests::deploy::{AN_PORT, MH_TUN, MH_VIRTUAL_V4};
use upmt_tests::topology::{AN_V4, MH_CELL_IF, MH_WIFI_IF};
use upmt_tests::{BIG_FILE_SIZE, DeployOptions, Deployment, Family, Lab};

/// Download rate of each uplink during the handover part, so the download lasts a few seconds.
const SHAPED_BITS_PER_SEC: u64 = 60_000_000;
/// When the Wi-Fi link is cut, after the download started.
const CUT_AFTER: Duration = Duration::from_millis(1500);

pub fn run(lab: &Lab) -> Result<()> {
    let http = lab
        .start_http_server()
        .context("starting the CH's HTTP server")?;

    println!("\n== 1. without upmt: the correspondent sees each uplink's NAT ==");
    for uplink in [MH_WIFI_IF, MH_CELL_IF] {
        let seen = lab.whoami_via(Some(uplink), Family::V4)?;
        println!("  curl over {uplink:<4} -> the CH saw {seen}");
    }

    println!("\n== 2. upmt up: upmt-an on the AN, upmt-mh on the MH (uplinks wifi, cell) ==");
    let started = Instant::now();
    let upmt = Deployment::start(lab, &DeployOptions::default()).context("starting upmt")?;
    println!(
        "  session up in {:.1?}: anchor {AN_V4}:{AN_PORT}, virtual address {MH_VIRTUAL_V4} on {MH_TUN}",
        started.elapsed()
    );
    let seen = lab.whoami_via(None, Family::V4)?;
    println!("  curl through upmt -> the CH saw {seen} (the anchor's NAT, on either uplink)");
    if seen != AN_V4 {
        bail!("the CH saw {seen}, not the anchor {AN_V4}\n{}", upmt.logs());
    }

    println!(
        "\n== 3. a {} MiB download through upmt; Wi-Fi is cut after {:.1?} ==",
        BIG_FILE_SIZE >> 20,
        CUT_AFTER
    );
    for (router, ifname) in [(lab.rwifi(), "lan"), (lab.rcell(), "lan")] {
        router.tbf(ifname, SHAPED_BITS_PER_SEC)?;
    }
    println!(
        "  (each uplink shaped to {} Mbit/s so it lasts; one TCP connection, curl)",
        SHAPED_BITS_PER_SEC / 1_000_000
    );
    let mh = lab.mh();
    let curl = lab
        .download("big.bin")
        .label("demo-curl")
        .count(MH_WIFI_IF)
        .count(MH_CELL_IF)
        .start()?;
    println!(
        "  {:>6}  {:>10}  {:>10}  {:>12}",
        "t", "wifi rx", "cell rx", "downloaded"
    );
    let t0 = Instant::now();
    let mut cut = false;
    let mut last_size = 0u64;
    let mut last_progress = t0;
    let mut longest_gap = Duration::ZERO;
    let mut next_line = t0;
    while curl.is_running() && t0.elapsed() < Duration::from_secs(120) {
        let now = Instant::now();
        let size = curl.bytes_so_far();
        if size > last_size {
            longest_gap = longest_gap.max(now - last_progress);
            last_size = size;
            last_progress = now;
        }
        if !cut && now - t0 >= CUT_AFTER {
            mh.set_link(MH_WIFI_IF, false)?;
            cut = true;
            println!(
                "  {:>5.1}s  -- wifi link cut (ip link set wifi down) --",
                (now - t0).as_secs_f64()
            );
        }
        if now >= next_line {
            let wifi = curl.counters_so_far(MH_WIFI_IF)?;
            let cell = curl.counters_so_far(MH_CELL_IF)?;
            println!(
                "  {:>5.1}s  {:>10}  {:>10}  {:>12}",
                (now - t0).as_secs_f64(),
                mib(wifi.rx_bytes),
                mib(cell.rx_bytes),
                mib(size)
            );
            next_line = now + Duration::from_millis(500);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = curl.wait(Duration::from_secs(5))?;
    let status = got.status.context("curl did not finish")?;
    let elapsed = t0.elapsed();
    let want = http.sha256("big.bin").context("big.bin is served")?;
    let intact = got.sha256.as_deref() == Some(want);
    println!(
        "  done in {:.1?}: curl {status}, {} bytes, sha256 {}",
        elapsed,
        got.size,
        if intact { "ok" } else { "MISMATCH" }
    );
    let connections = match got.num_connects {
        Some(1) => "one TCP connection throughout".to_owned(),
        Some(n) => format!("{n} TCP connections"),
        None => "TCP connections not reported".to_owned(),
    };
    println!(
        "  received over wifi {}, over cell {}; longest stall {:.2?}; {connections}",
        mib(got.counters(MH_WIFI_IF).rx_bytes),
        mib(got.counters(MH_CELL_IF).rx_bytes),
        longest_gap,
    );
    if !status.success() || !intact {
        bail!("the download did not survive the handover\n{}", upmt.logs());
    }
    mh.set_link(MH_WIFI_IF, true)?;
    println!("\n== 4. tearing down: daemons stopped, namespaces removed ==");
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
