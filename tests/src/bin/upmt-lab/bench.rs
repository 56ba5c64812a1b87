//! Benchmarks that print figures (never asserted): throughput of the direct path against the
//! same path through upmt, in one lab and one run.

use std::time::Duration;

use anyhow::{Context, Result};
use upmt_tests::{DeployOptions, Deployment, Family, Lab};

/// iperf3 TCP from the MH to the CH, `seconds` long: first the lab's direct path (the Wi-Fi NAT),
/// then the same path through upmt (TUN, tunnel over Wi-Fi, the anchor's NAT). Upload and
/// download (`-R`) each. Prints Gbit/s and the ratio.
pub fn throughput(lab: &Lab, seconds: u32) -> Result<()> {
    let server = lab
        .start_iperf3_server()
        .context("starting iperf3 on the CH")?;
    let ch = server.addr(Family::V4).ip().to_string();
    let mut rows = Vec::new();
    for (label, reverse) in [("upload (MH -> CH)", false), ("download (CH -> MH)", true)] {
        let direct = iperf3(lab, &ch, seconds, reverse).context("iperf3 on the direct path")?;
        rows.push((label, direct));
    }
    let upmt = Deployment::start(
        lab,
        &DeployOptions {
            log: "warn".to_owned(),
            ..DeployOptions::default()
        },
    )
    .context("starting upmt")?;
    println!(
        "\nthroughput, iperf3 TCP, {seconds} s each, one stream, 2 cores shared by everything:"
    );
    println!(
        "  {:<22} {:>12} {:>12} {:>8}",
        "direction", "direct", "upmt", "ratio"
    );
    for (label, direct) in rows {
        let reverse = label.starts_with("download");
        let through = iperf3(lab, &ch, seconds, reverse)
            .with_context(|| format!("iperf3 through upmt\n{}", upmt.logs()))?;
        println!(
            "  {:<22} {:>7.2} Gbps {:>7.2} Gbps {:>7.1}%",
            label,
            direct / 1e9,
            through / 1e9,
            100.0 * through / direct
        );
    }
    Ok(())
}

/// Runs one iperf3 client in the MH namespace and returns the received bits per second.
pub fn iperf3(lab: &Lab, server: &str, seconds: u32, reverse: bool) -> Result<f64> {
    let secs = seconds.to_string();
    let mut args = vec!["iperf3", "-c", server, "-t", &secs, "-J"];
    if reverse {
        args.push("-R");
    }
    let out = lab
        .mh()
        .command(&args)
        .timeout(Duration::from_secs(u64::from(seconds) + 30))
        .run()?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3's JSON")?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3's JSON has no end.sum_received.bits_per_second")
}
