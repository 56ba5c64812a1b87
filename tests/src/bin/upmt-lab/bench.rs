//! Benchmarks that print figures (never asserted): throughput of the direct path against the
//! same path through upmt, in one lab and one run.

use std::time::Duration;

use anyhow::{Context, Result};
use upmt_tests::{DeployOptions, Deployment, Family, Lab};

/// iperf3 TCP from the MH to the CH, `seconds` long: first the lab's direct path (the Wi-Fi NAT),
/// then the same path through upmt (TUN, tunnel over Wi-Fi, the anchor's NAT), once per entry
/// of `offloads` (the daemons' `offload` key). Upload and download (`-R`) each. Prints Gbit/s,
/// the ratio, and each daemon's CPU seconds per GB moved (from /proc).
pub fn throughput(lab: &Lab, seconds: u32, offloads: &[bool]) -> Result<()> {
    let server = lab
        .start_iperf3_server()
        .context("starting iperf3 on the CH")?;
    let ch = server.addr(Family::V4).ip().to_string();
    let directions = [("upload (MH -> CH)", false), ("download (CH -> MH)", true)];
    let mut direct = Vec::new();
    for (_, reverse) in directions {
        let (bps, _) =
            iperf3_run(lab, &ch, seconds, reverse).context("iperf3 on the direct path")?;
        direct.push(bps);
    }
    println!(
        "\nthroughput, iperf3 TCP, {seconds} s each, one stream, 2 cores shared by everything:"
    );
    println!(
        "  {:<22} {:<8} {:>12} {:>12} {:>8} {:>14} {:>14}",
        "direction", "offload", "direct", "upmt", "ratio", "MH cpu s/GB", "AN cpu s/GB"
    );
    for &offload in offloads {
        let setting = format!("offload = {offload}\n");
        let upmt = Deployment::start(
            lab,
            &DeployOptions {
                log: "warn".to_owned(),
                mh_extra: setting.clone(),
                an_extra: setting,
                ..DeployOptions::default()
            },
        )
        .context("starting upmt")?;
        for ((label, reverse), direct) in directions.iter().zip(&direct) {
            let (mh0, an0) = (cpu_seconds(upmt.mh.pid()), cpu_seconds(upmt.an.pid()));
            let (through, bytes) = iperf3_run(lab, &ch, seconds, *reverse)
                .with_context(|| format!("iperf3 through upmt\n{}", upmt.logs()))?;
            let (mh1, an1) = (cpu_seconds(upmt.mh.pid()), cpu_seconds(upmt.an.pid()));
            let gb = bytes / 1e9;
            println!(
                "  {:<22} {:<8} {:>7.2} Gbps {:>7.2} Gbps {:>7.1}% {:>14.2} {:>14.2}",
                label,
                if offload { "on" } else { "off" },
                direct / 1e9,
                through / 1e9,
                100.0 * through / direct,
                (mh1 - mh0) / gb,
                (an1 - an0) / gb,
            );
        }
        drop(upmt);
    }
    Ok(())
}

/// User plus system CPU seconds of process `pid` so far (0 when it cannot be read).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start at the state, field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Runs one iperf3 client in the MH namespace and returns the received bits per second.
pub fn iperf3(lab: &Lab, server: &str, seconds: u32, reverse: bool) -> Result<f64> {
    iperf3_run(lab, server, seconds, reverse).map(|(bps, _)| bps)
}

/// Runs one iperf3 client in the MH namespace and returns the received bits per second and
/// bytes.
/// Runs one iperf3 client in the MH namespace and returns the received bits per second.
fn iperf3_run(lab: &Lab, server: &str, seconds: u32, reverse: bool) -> Result<(f64, f64)> {
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
    let received = &json["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .context("iperf3's JSON has no end.sum_received.bits_per_second")?;
    let bytes = received["bytes"]
        .as_f64()
        .context("iperf3's JSON has no end.sum_received.bytes")?;
    Ok((bps, bytes))
}
