//! A swarm of mobile hosts ([`crate::swarm`]) deployed in a [`Lab`]: the anchor's config with
//! every swarm host as a peer, the swarm's source addresses in the second MH's namespace, and
//! `upmt-swarm` started there and watched through its progress lines.
//!
//! The swarm lives in the `mh2` namespace ([`Lab::add_second_mh`]), on the internet side without
//! NAT; its source addresses are consecutive ones in 198.19.0.0/24 from [`SOURCE_BASE`] on, so the
//! anchor's per-source handshake limit applies per group of hosts as it would per carrier NAT.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::deploy::{AN_PORT, Deployment};
use crate::error::{LabError, Result};
use crate::lab::{Lab, Role};
use crate::process::ProcHandle;
use crate::swarm::{Progress, anchor_peers_toml};
use crate::topology::{AN_V4, CH_V4, UDP_ECHO_PORT};
use crate::{DeployOptions, bin_path};

/// The first of the swarm's source addresses.
pub const SOURCE_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// The most source addresses (the rest of 198.19.0.0/24).
pub const MAX_SOURCES: u32 = 240;
/// The anchor's virtual subnet when a swarm is deployed (room for 65,000 hosts).
pub const SUBNET: &str = "10.77.0.0/16";
/// The first swarm host's virtual address (the lab's own MHs keep 10.77.0.x).
pub const ADDRESS_BASE: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 0);
/// The seed of the swarm's keys.
pub const SEED: u64 = 0x5ca1e;

/// How a swarm runs in the lab.
#[derive(Clone, Debug)]
pub struct SwarmOptions {
    pub count: usize,
    pub sources: u32,
    pub flows: u16,
    /// Seconds between a host's trickle packets (0: none after each flow's first packet).
    pub trickle_s: u64,
    pub second_path_every: usize,
    pub start_rate: u32,
    pub duration: Duration,
    /// Flows only on [`RunningSwarm::open_flows`].
    pub flows_on_signal: bool,
}

impl SwarmOptions {
    /// `count` hosts with 10 flows each, a trickle every 30 s, every tenth with two paths.
    pub fn new(count: usize) -> Self {
        SwarmOptions {
            count,
            sources: 64,
            flows: 10,
            trickle_s: 30,
            second_path_every: 10,
            start_rate: 2000,
            duration: Duration::from_secs(60),
            flows_on_signal: false,
        }
    }
}

/// Deploy options with the swarm's hosts as peers of the anchor (in a /16) and `extra` lines
/// in the anchor's config (e.g. a short `session_timeout_s`).
pub fn deploy_options(count: usize, an_extra: &str) -> DeployOptions {
    DeployOptions {
        an_subnet: Some(SUBNET.to_owned()),
        an_extra: an_extra.to_owned(),
        an_extra_peers: anchor_peers_toml(SEED, count, ADDRESS_BASE),
        log: "info".to_owned(),
        ..DeployOptions::default()
    }
}

/// Builds the swarm's namespace (the lab's second MH) with `sources` addresses on its `eth0`.
pub fn add_swarm_host(lab: &mut Lab, sources: u32) -> Result<()> {
    if sources == 0 || sources > MAX_SOURCES {
        return Err(LabError::Deploy(format!(
            "between 1 and {MAX_SOURCES} swarm sources, not {sources}"
        )));
    }
    lab.add_second_mh()?;
    let batch: String = (0..sources)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(SOURCE_BASE) + i);
            format!("address add {ip}/24 dev eth0\n")
        })
        .collect();
    lab.mh2()
        .run_input(&["ip", "-batch", "-"], batch.as_bytes())?;
    Ok(())
}

/// A running `upmt-swarm`.
pub struct RunningSwarm {
    pub proc: ProcHandle,
}

impl RunningSwarm {
    /// Starts `upmt-swarm` in the swarm's namespace against the deployed anchor.
    pub fn start(lab: &Lab, upmt: &Deployment<'_>, options: &SwarmOptions) -> Result<Self> {
        let bin = bin_path("upmt-swarm")?;
        let args = [
            bin.display().to_string(),
            "--target".into(),
            SocketAddr::from((AN_V4, AN_PORT)).to_string(),
            "--anchor-public".into(),
            upmt.an_public.to_string(),
            "--seed".into(),
            SEED.to_string(),
            "--count".into(),
            options.count.to_string(),
            "--source-base".into(),
            SOURCE_BASE.to_string(),
            "--sources".into(),
            options.sources.to_string(),
            "--flows".into(),
            options.flows.to_string(),
            "--flow-dst".into(),
            SocketAddr::from((CH_V4, UDP_ECHO_PORT)).to_string(),
            "--trickle-s".into(),
            options.trickle_s.to_string(),
            "--second-path-every".into(),
            options.second_path_every.to_string(),
            "--start-rate".into(),
            options.start_rate.to_string(),
            "--duration-s".into(),
            options.duration.as_secs().max(1).to_string(),
            "--report-ms".into(),
            "250".into(),
        ];
        let mut args = args.to_vec();
        if options.flows_on_signal {
            args.push("--flows-on-signal".into());
        }
        let proc = lab
            .host(Role::Mh2)
            .command(&args)
            .label("upmt-swarm")
            .spawn()?;
        Ok(RunningSwarm { proc })
    }

    /// Has the hosts open their flows (with [`SwarmOptions::flows_on_signal`]).
    pub fn open_flows(&self) -> bool {
        self.proc.signal(libc::SIGUSR1)
    }

    /// The latest progress line, if any.
    pub fn progress(&self) -> Option<Progress> {
        self.proc.log().lines().rev().find_map(Progress::parse)
    }

    /// Waits until `done` holds for the latest progress line; fails when the swarm exits or
    /// `timeout` passes first.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Progress) -> bool,
    ) -> Result<Progress> {
        let start = Instant::now();
        loop {
            if let Some(p) = self.progress()
                && done(&p)
            {
                return Ok(p);
            }
            if !self.proc.is_running() || start.elapsed() > timeout {
                return Err(LabError::Deploy(format!(
                    "the swarm: {what} did not happen within {timeout:?} (last: {:?})\n{}",
                    self.progress(),
                    tail(&self.proc.log(), 20)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One process's counters from /proc: CPU ticks (utime + stime) and RSS in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStat {
    pub ticks: u64,
    pub rss_kib: u64,
}

/// Reads `pid`'s [`ProcStat`].
pub fn proc_stat(pid: u32) -> Result<ProcStat> {
    let read = |file: &str| {
        let path = std::path::PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::read_to_string(&path).map_err(|source| LabError::Io { path, source })
    };
    let bad = |what: &str| LabError::Parse {
        cmd: format!("/proc/{pid}/{what}"),
        detail: "unexpected format".into(),
    };
    let stat = read("stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .ok_or_else(|| bad("stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here (state is 3).
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let ticks = num(11).zip(num(12)).ok_or_else(|| bad("stat"))?;
    let rss_kib = read("status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| bad("status"))?;
    Ok(ProcStat {
        ticks: ticks.0 + ticks.1,
        rss_kib,
    })
}

/// Clock ticks per second of /proc's CPU times.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}
