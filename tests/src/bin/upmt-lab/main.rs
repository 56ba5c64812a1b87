//! `upmt-lab`: builds the upmt test network in network namespaces for a person to explore
//! (`up`), runs the demonstration through it (`demo`), or benchmarks upmt in it (`bench-*`).
//! Needs root. It never touches the root namespace, and everything it built is removed when it
//! exits.

mod bench;
mod bench_connect;
mod bench_handover;
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
    },
    /// Print the receiver-side gap of a TCP download across a link cut, a blackhole and the
    /// return of the preferred uplink (median and max over several runs).
    BenchHandover {
        /// Runs per event.
        #[arg(long, default_value_t = 5)]
        runs: usize,
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
        Command::BenchThroughput { seconds } => {
            let lab = Lab::new("upmt-lab-bench").context("building the lab")?;
            bench::throughput(&lab, seconds)?;
        }
        Command::BenchHandover { runs } => {
            if runs == 0 {
                anyhow::bail!("--runs must be at least 1");
            }
            let lab = Lab::new("upmt-lab-bench-ho").context("building the lab")?;
            bench_handover::run(&lab, runs)?;
        }
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
