//! `upmt-lab`: builds the upmt test network in network namespaces for a person to explore
//! (`up`), runs the demonstration through it (`demo`), or benchmarks upmt in it (`bench-*`).
//! Needs root. It never touches the root namespace, and everything it built is removed when it
//! exits.

mod bench;
mod bench_connect;
mod bench_handover;
mod bench_idle;
mod bench_scale;
mod demo;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use upmt_tests::{Family, Lab, Role};

#[derive(Parser)]
#[command(
    version,
    about = "The upmt lab: a mobile host, two NAT uplinks, an anchor node and a correspondent host in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the lab, start the CH's servers, print how to enter it, and wait for Ctrl-C.
    Up,
    /// Build the lab, run the demonstration, tear it down.
    Demo {
        /// Keep the lab up after the demo until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Print iperf3 TCP throughput of the direct path and through upmt, and their ratio.
    BenchThroughput {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// The daemons' TUN offload: on, off, or both (two upmt runs, off first).
        #[arg(long, default_value = "both", value_parser = ["on", "off", "both"])]
        offload: String,
    },
    /// Print the receiver-side gap of a TCP download across a link cut, a blackhole and the
    /// return of the preferred uplink (median and max over several runs).
    BenchHandover {
        /// Runs per event.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Print what an idle tunnel costs per minute: each daemon's wake-ups, CPU ticks and RSS,
    /// and the packets sent on each of the MH's uplinks, with 0, 1 and 50 idle TCP flows.
    BenchIdle {
        /// Numbers of idle flows, one deployment each.
        #[arg(long, value_delimiter = ',', default_value = "0,1,50")]
        flows: Vec<usize>,
        /// `idle_keepalive_s` settings as TOML values (`25`, `'"auto"'`), or `default`.
        #[arg(long, value_delimiter = ',', default_value = "default")]
        keepalive: Vec<String>,
        /// Seconds the tunnel settles before measuring (the deployment's connect ping is a flow
        /// for 30 s).
        #[arg(long, default_value_t = 40)]
        settle: u64,
        /// Seconds measured.
        #[arg(long, default_value_t = 60)]
        window: u64,
        /// The cell uplink's `idle` settings, one run each: `keepalive` (the default), `sleep`.
        #[arg(long, value_delimiter = ',', default_value = "keepalive")]
        cell_idle: Vec<String>,
        /// Seconds the lab's NAT routers keep an idle UDP binding that carried traffic both
        /// ways (conntrack's `nf_conntrack_udp_timeout_stream`, per router namespace); unset:
        /// the kernel's default (120 or 180 s).
        #[arg(long)]
        nat_udp_timeout: Option<u64>,
    },
    /// Print what one anchor costs per mobile host: RSS per MH and per flow, the handshake rate
    /// it sustains, its CPU with only keepalives, and one real MH's download while N simulated
    /// MHs (`upmt-swarm`) idle.
    BenchScale {
        /// Numbers of simulated mobile hosts, one lab each.
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        counts: Vec<usize>,
        /// Flows per simulated host.
        #[arg(long, default_value_t = 10)]
        flows: u16,
        /// Source addresses of the swarm (the anchor limits handshakes per source).
        #[arg(long, default_value_t = 64)]
        sources: u32,
        /// Seconds after the flows opened before the idle window.
        #[arg(long, default_value_t = 10)]
        settle: u64,
        /// Seconds of the idle CPU window.
        #[arg(long, default_value_t = 30)]
        window: u64,
        /// Seconds of the real MH's iperf3 download.
        #[arg(long, default_value_t = 5)]
        iperf_seconds: u32,
    },
    /// Holds idle TCP connections open (the bench's idle flows; runs inside a namespace).
    #[command(hide = true)]
    HoldTcp {
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[arg(long)]
        connect: Option<std::net::SocketAddr>,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Print the time to connect and to the first byte of short HTTP requests through upmt
    /// and over the direct path (median and p99), under a crowd of processes holding sockets,
    /// with processes starting steadily and in bursts; then the MH's memory across many
    /// short flows.
    BenchConnect {
        /// Requests per path and condition.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Idle processes holding sockets on the MH.
        #[arg(long, default_value_t = 1000)]
        idle: usize,
        /// Short UDP flows sent for the memory figure (0: skip it).
        #[arg(long, default_value_t = 100_000)]
        flows: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::HoldTcp {
        listen,
        connect,
        count,
    } = cli.command
    {
        // Stopped by SIGTERM's default action: it holds nothing to clean up.
        return bench_idle::hold_tcp(listen, connect, count);
    }
    install_stop_handler()?;
    match cli.command {
        Command::Up => {
            let lab = Lab::new("upmt-lab-up").context("building the lab")?;
            let http = lab
                .start_http_server()
                .context("starting the CH's HTTP server")?;
            lab.start_iperf3_server()
                .context("starting the CH's iperf3 servers")?;
            lab.start_udp_echo()
                .context("starting the CH's UDP echo server")?;
            print_lab(&lab);
            println!(
                "\nCH servers: HTTP {} (also /whoami), iperf3 on port 5201, UDP echo on port 7777",
                http.url(Family::V4, "big.bin")
            );
            println!("Press Ctrl-C to tear the lab down.");
            wait_for_stop();
            println!("tearing down...");
        }
        Command::Demo { keep } => {
            let lab = Lab::new("upmt-lab-demo").context("building the lab")?;
            print_lab(&lab);
            demo::run(&lab)?;
            if keep {
                println!("\nPress Ctrl-C to tear the lab down.");
                wait_for_stop();
            }
        }
        Command::BenchThroughput { seconds, offload } => {
            let offloads: &[bool] = match offload.as_str() {
                "on" => &[true],
                "off" => &[false],
                _ => &[false, true],
            };
            let lab = Lab::new("upmt-lab-bench").context("building the lab")?;
            bench::throughput(&lab, seconds, offloads)?;
        }
        Command::BenchHandover { runs } => {
            if runs == 0 {
                anyhow::bail!("--runs must be at least 1");
            }
            let lab = Lab::new("upmt-lab-bench-ho").context("building the lab")?;
            bench_handover::run(&lab, runs)?;
        }
        Command::BenchIdle {
            flows,
            keepalive,
            settle,
            window,
            cell_idle,
            nat_udp_timeout,
        } => {
            if window == 0 {
                anyhow::bail!("--window must be at least 1");
            }
            let keepalives = keepalive
                .into_iter()
                .map(|k| (k != "default").then_some(k))
                .collect();
            let lab = Lab::new("upmt-lab-bench-idle").context("building the lab")?;
            let options = bench_idle::Options {
                flows,
                keepalives,
                settle: Duration::from_secs(settle),
                window: Duration::from_secs(window),
                cell_idle,
                nat_udp_timeout,
            };
            bench_idle::run(&lab, &options)?;
        }
        Command::BenchScale {
            counts,
            flows,
            sources,
            settle,
            window,
            iperf_seconds,
        } => {
            if window == 0 || counts.contains(&0) {
                anyhow::bail!("--window and every count must be at least 1");
            }
            bench_scale::run(&bench_scale::Options {
                counts,
                flows,
                sources,
                settle: Duration::from_secs(settle),
                window: Duration::from_secs(window),
                iperf_seconds,
            })?;
        }
        Command::HoldTcp { .. } => unreachable!("handled before the stop handler"),
        Command::BenchConnect {
            requests,
            idle,
            flows,
        } => {
            if requests == 0 {
                anyhow::bail!("--requests must be at least 1");
            }
            let lab = Lab::new("upmt-lab-bench-conn").context("building the lab")?;
            bench_connect::run(&lab, requests, idle, flows)?;
        }
    }
    Ok(())
}

fn print_lab(lab: &Lab) {
    println!("upmt lab {} is up. Namespaces:", lab.id());
    for role in Role::ALL {
        println!("  {:<6} {}", role.name(), lab.ns(role));
    }
    println!(
        "\nEnter one with: sudo ip netns exec {} bash   (logs in {})",
        lab.ns(Role::Mh),
        lab.dir().join("logs").display()
    );
}

/// Set by the SIGINT/SIGTERM handler.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM so that Ctrl-C tears the lab down instead of killing us with the
/// namespaces left behind. A caught (not blocked or ignored) signal is reset to its default in
/// the programs the lab starts, so they stay stoppable with SIGTERM.
fn install_stop_handler() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let prev = unsafe { libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error()).context("installing the Ctrl-C handler");
        }
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
fn wait_for_stop() {
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}
