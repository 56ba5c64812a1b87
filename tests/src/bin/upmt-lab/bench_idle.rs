//! `upmt-lab bench-idle`: what an idle tunnel costs. For each number of idle flows (TCP
//! connections a client in the MH's namespace holds open to a server on the CH, sending nothing),
//! a fresh deployment settles, then over a window it counts, per idle minute:
//! - wake-ups of each daemon: voluntary + involuntary context switches summed over all its
//!   threads (`/proc/PID/task/*/status`);
//! - packets sent on each of the MH's uplinks (interface counters, so the kernel's ARP and
//!   neighbour discovery too), and of those the tunnel's own datagrams to the anchor;
//! - CPU ticks of each daemon (utime + stime from `/proc/PID/stat`);
//! - each daemon's RSS at the end of the window;
//! - each uplink's keepalive interval at the end of the window, as `upmt status` shows it
//!   (with `"auto"`, what the disposable-socket tests learned so far).
//!
//! `--nat-udp-timeout` sets how long the lab's NAT routers keep an idle UDP binding, so that
//! learning converges within a short settle.
//!
//! The idle flows are held by this same binary (`upmt-lab hold-tcp`), run in the namespaces.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use upmt_tests::topology::{CH_V4, MH_CELL_IF, MH_WIFI_IF};
use upmt_tests::{DeployOptions, Deployment, Lab, LinkCounters, deploy};

/// The port the CH's idle-flow server listens on.
const HOLD_PORT: u16 = 7070;

/// What the bench varies and how long it waits.
pub struct Options {
    pub flows: Vec<usize>,
    /// `idle_keepalive_s` values as TOML (`25`, `"auto"`); empty: the daemon's default.
    pub keepalives: Vec<Option<String>>,
    pub settle: Duration,
    pub window: Duration,
    /// The cell uplink's `idle` settings (`keepalive`, `sleep`), one run each.
    pub cell_idle: Vec<String>,
    /// `nf_conntrack_udp_timeout_stream` of both NAT routers, in seconds; `None`: the kernel's.
    pub nat_udp_timeout: Option<u64>,
}

/// A snapshot of one process's counters.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    switches: u64,
    ticks: u64,
    rss_kib: u64,
}

fn sample(pid: u32) -> Result<ProcSample> {
    let mut switches = 0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of pid {pid}"))?;
    for task in tasks {
        let Ok(task) = task else { continue };
        // A thread may exit between the listing and the read.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').context("malformed /proc/PID/stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here (state is 3).
    let num = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("malformed /proc/PID/stat")
    };
    let ticks = num(11)? + num(12)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        switches,
        ticks,
        rss_kib,
    })
}

/// One row of the table.
struct Row {
    flows: usize,
    keepalive: String,
    cell_idle: String,
    mh: (f64, f64, u64),
    an: (f64, f64, u64),
    wifi_tx: f64,
    cell_tx: f64,
    wifi_tun: f64,
    cell_tun: f64,
    /// Each uplink's keepalive at the end, from `upmt status`: seconds, and "learning" when
    /// its tests still run.
    keepalives: String,
}

/// The uplinks' keepalives as `upmt status --json` shows them, e.g. `wifi 55 cell 50*` (`*`:
/// still learning).
fn keepalives(lab: &Lab) -> String {
    let Ok(status) = deploy::mh_status(lab) else {
        return "?".to_owned();
    };
    let Some(tunnels) = status["tunnels"].as_array() else {
        return "?".to_owned();
    };
    tunnels
        .iter()
        .map(|t| {
            let k = t["keepalive_s"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |k| k.to_string());
            let learning = if t["keepalive_learning"].as_bool() == Some(true) {
                "*"
            } else {
                ""
            };
            format!("{} {k}{learning}", t["uplink"].as_str().unwrap_or("?"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(lab: &Lab, options: &Options) -> Result<()> {
    let exe = std::env::current_exe().context("locating upmt-lab")?;
    if let Some(t) = options.nat_udp_timeout {
        // Per network namespace: only the lab's routers change. A binding that never carried
        // traffic both ways keeps the kernel's 30 s, or `t` when shorter.
        for router in [lab.rwifi(), lab.rcell()] {
            for (name, v) in [
                ("net.netfilter.nf_conntrack_udp_timeout_stream", t),
                ("net.netfilter.nf_conntrack_udp_timeout", t.min(30)),
            ] {
                router
                    .run(&["sysctl", "-q", "-w", &format!("{name}={v}")])
                    .with_context(|| format!("setting {name} in {}", router.ns()))?;
            }
        }
    }
    let server = lab
        .ch()
        .command(&[
            exe.as_os_str(),
            "hold-tcp".as_ref(),
            "--listen".as_ref(),
            format!("0.0.0.0:{HOLD_PORT}").as_ref(),
        ])
        .label("hold-tcp-server")
        .spawn()
        .context("starting the CH's idle-flow server")?;
    let mut rows = Vec::new();
    for cell_idle in &options.cell_idle {
        for keepalive in &options.keepalives {
            for &flows in &options.flows {
                let row = one(lab, &exe, flows, keepalive.as_deref(), cell_idle, options)
                    .with_context(|| {
                        format!("{flows} flows, keepalive {keepalive:?}, cell idle {cell_idle}")
                    })?;
                rows.push(row);
            }
        }
    }
    drop(server);
    let minutes = options.window.as_secs_f64() / 60.0;
    println!(
        "per idle minute, after a {} s settle, over {} s:",
        options.settle.as_secs(),
        options.window.as_secs()
    );
    println!(
        "{:>5} {:>9} {:>9} | {:>9} {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>8} {:>8} | {:>8} {:>8} | keepalive s (*: learning)",
        "flows",
        "keepalive",
        "cell idle",
        "MH wakes",
        "MH tick",
        "MH RSS",
        "AN wakes",
        "AN tick",
        "AN RSS",
        "wifi tx",
        "cell tx",
        "wifi tun",
        "cell tun"
    );
    for r in rows {
        println!(
            "{:>5} {:>9} {:>9} | {:>9.1} {:>8.1} {:>5} MB | {:>9.1} {:>8.1} {:>5} MB | {:>8.1} {:>8.1} | {:>8.1} {:>8.1} | {}",
            r.flows,
            r.keepalive,
            r.cell_idle,
            r.mh.0 / minutes,
            r.mh.1 / minutes,
            r.mh.2 / 1024,
            r.an.0 / minutes,
            r.an.1 / minutes,
            r.an.2 / 1024,
            r.wifi_tx / minutes,
            r.cell_tx / minutes,
            r.wifi_tun / minutes,
            r.cell_tun / minutes,
            r.keepalives
        );
    }
    Ok(())
}

fn one(
    lab: &Lab,
    exe: &std::path::Path,
    flows: usize,
    keepalive: Option<&str>,
    cell_idle: &str,
    options: &Options,
) -> Result<Row> {
    let mh_extra = match keepalive {
        Some(k) => format!("[probe]\nidle_keepalive_s = {k}\n"),
        None => String::new(),
    };
    let deploy = DeployOptions {
        mh_extra,
        log: "info".to_owned(),
        uplink_extra: vec![("cell".to_owned(), format!("idle = \"{cell_idle}\""))],
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(lab, &deploy)?;
    deploy::count_tunnel_datagrams(lab)?;
    let holder = if flows > 0 {
        let h = lab
            .mh()
            .command(&[
                exe.as_os_str(),
                "hold-tcp".as_ref(),
                "--connect".as_ref(),
                format!("{CH_V4}:{HOLD_PORT}").as_ref(),
                "--count".as_ref(),
                flows.to_string().as_ref(),
            ])
            .label("hold-tcp-client")
            .spawn()?;
        let t0 = Instant::now();
        while !h.log().contains("holding") {
            if !h.is_running() || t0.elapsed() > Duration::from_secs(20) {
                bail!("the idle flows did not open: {}", h.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(h)
    } else {
        None
    };
    std::thread::sleep(options.settle);
    let mh = lab.mh();
    let counters = || -> Result<(LinkCounters, LinkCounters)> {
        Ok((mh.link_counters(MH_WIFI_IF)?, mh.link_counters(MH_CELL_IF)?))
    };
    let (mh0, an0, links0) = (sample(upmt.mh.pid())?, sample(upmt.an.pid())?, counters()?);
    let tun0 = deploy::tunnel_datagrams(lab)?;
    std::thread::sleep(options.window);
    let (mh1, an1, links1) = (sample(upmt.mh.pid())?, sample(upmt.an.pid())?, counters()?);
    let tun1 = deploy::tunnel_datagrams(lab)?;
    let learned = keepalives(lab);
    if let Some(h) = &holder
        && !h.is_running()
    {
        bail!("the idle flows closed during the window: {}", h.log());
    }
    drop(holder);
    drop(upmt);
    let diff = |a: ProcSample, b: ProcSample| {
        (
            b.switches.saturating_sub(a.switches) as f64,
            b.ticks.saturating_sub(a.ticks) as f64,
            b.rss_kib,
        )
    };
    Ok(Row {
        flows,
        keepalive: keepalive.unwrap_or("default").to_owned(),
        cell_idle: cell_idle.to_owned(),
        mh: diff(mh0, mh1),
        an: diff(an0, an1),
        wifi_tx: links1.0.since(&links0.0).tx_packets as f64,
        cell_tx: links1.1.since(&links0.1).tx_packets as f64,
        wifi_tun: tun1.0.saturating_sub(tun0.0) as f64,
        cell_tun: tun1.1.saturating_sub(tun0.1) as f64,
        keepalives: learned,
    })
}

/// `upmt-lab hold-tcp`: with `listen`, accepts TCP connections and keeps them open, reading
/// nothing; with `connect`, opens `count` connections and keeps them open. Runs until killed.
pub fn hold_tcp(
    listen: Option<SocketAddr>,
    connect: Option<SocketAddr>,
    count: usize,
) -> Result<()> {
    let mut held = Vec::new();
    if let Some(addr) = listen {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        println!("listening on {addr}");
        for stream in listener.incoming() {
            held.push(stream.context("accepting")?);
        }
    } else if let Some(addr) = connect
        && count > 0
    {
        for i in 0..count {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connection {} to {addr}", i + 1))?;
            held.push(s);
        }
        println!("holding {count} connections to {addr}");
        // Blocks until the peer closes the first one (it never does while the lab is up).
        let mut buf = [0u8; 1];
        let _ = held[0].read(&mut buf);
    } else {
        bail!("hold-tcp needs --listen, or --connect and a --count of at least 1");
    }
    Ok(())
}
