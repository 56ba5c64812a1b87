//! upmt-swarm: plays N real mobile hosts against an anchor in the lab, bounded in count and
//! time (see `upmt_tests::swarm`). Prints one JSON progress line per `--report-ms` on stdout.
//!
//! `--print-peers` prints the anchor's `[[peer]]` tables for the same `--seed` and `--count`
//! instead, for an anchor config written by hand.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use upmt_proto::keys::PublicKey;
use upmt_tests::swarm::{OPEN_FLOWS, Swarm, SwarmConfig, anchor_peers_toml};

/// N simulated mobile hosts against an upmt anchor in the lab.
#[derive(Debug, Parser)]
#[command(name = "upmt-swarm", version)]
struct Args {
    /// The anchor's UDP address (only 203.0.113.0/24 or 2001:db8::/32).
    #[arg(long)]
    target: Option<SocketAddr>,
    /// The anchor's public key (base64).
    #[arg(long)]
    anchor_public: Option<PublicKey>,
    /// Seed of the hosts' keys (the anchor's config must list the same ones).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mobile hosts to play.
    #[arg(long)]
    count: usize,
    /// First of the local source addresses (consecutive, already on an interface).
    #[arg(long)]
    source_base: Option<Ipv4Addr>,
    /// How many source addresses, one socket each.
    #[arg(long, default_value_t = 1)]
    sources: u32,
    /// Inner UDP flows per host.
    #[arg(long, default_value_t = 10)]
    flows: u16,
    /// Where inner packets go (the lab's CH echo server).
    #[arg(long, default_value = "192.0.2.2:7777")]
    flow_dst: SocketAddrV4,
    /// Each host sends one packet on one of its flows about this often (0: only each flow's
    /// first packet).
    #[arg(long, default_value_t = 30)]
    trickle_s: u64,
    /// Every this-many-th host also has a second path from another source (0: none).
    #[arg(long, default_value_t = 10)]
    second_path_every: usize,
    /// Hosts started per second (0: all at once).
    #[arg(long, default_value_t = 2000)]
    start_rate: u32,
    /// Hard stop after this many seconds (at most 3600).
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// A progress line this often.
    #[arg(long, default_value_t = 1000)]
    report_ms: u64,
    /// First virtual address, for `--print-peers`.
    #[arg(long, default_value = "10.77.1.0")]
    address_base: Ipv4Addr,
    /// Hosts open their flows only on SIGUSR1 (sessions first, flows later).
    #[arg(long)]
    flows_on_signal: bool,
    /// Print the anchor's `[[peer]]` tables and exit.
    #[arg(long)]
    print_peers: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("upmt-swarm: {e:#}");
        std::process::exit(1);
    }
}

extern "C" fn on_usr1(_: libc::c_int) {
    OPEN_FLOWS.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.print_peers {
        print!(
            "{}",
            anchor_peers_toml(args.seed, args.count, args.address_base)
        );
        return Ok(());
    }
    let target = args.target.context("--target is required")?;
    let sources: Vec<IpAddr> = match args.source_base {
        Some(base) => (0..args.sources)
            .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(base).wrapping_add(i))))
            .collect(),
        None if args.sources == 1 => vec![match target {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        }],
        None => bail!("--sources above 1 needs --source-base"),
    };
    let config = SwarmConfig {
        target,
        anchor_public: args.anchor_public.context("--anchor-public is required")?,
        seed: args.seed,
        count: args.count,
        sources,
        flows: args.flows,
        flow_dst: args.flow_dst,
        trickle: (args.trickle_s > 0).then(|| Duration::from_secs(args.trickle_s)),
        second_path_every: args.second_path_every,
        start_rate: args.start_rate,
        duration: Duration::from_secs(args.duration_s),
        report_every: Duration::from_millis(args.report_ms.max(10)),
        flows_on_signal: args.flows_on_signal,
    };
    if args.flows_on_signal {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let prev =
            unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error()).context("installing the SIGUSR1 handler");
        }
    }
    let mut swarm = Swarm::new(config)?;
    let last = swarm.run(|p| println!("{}", p.json()))?;
    eprintln!(
        "upmt-swarm: {} of {} hosts up at the end, {} handshakes, {} sessions lost, all up after {}",
        last.up,
        args.count,
        last.handshakes,
        last.disconnects,
        last.all_up_at
            .map_or_else(|| "never".to_owned(), |t| format!("{t:.2} s"))
    );
    Ok(())
}
