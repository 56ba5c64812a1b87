//! `upmt-lab`: builds the upmt test network in network namespaces for a person to explore
//! (`up`), or runs a scripted demonstration through it (`demo`). Needs root. It never touches
//! the root namespace, and everything it built is removed when it exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use upmt_tests::topology::{MH_CELL_IF, MH_WIFI_IF};
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
            run_demo(&lab)?;
            if keep {
                println!("\nPress Ctrl-C to tear the lab down.");
                wait_for_stop();
            }
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

// ============================================================================================
// DEMO — extend here. For now it shows the direct path (no upmt yet): the MH downloads from the
// CH over each uplink; we print the bytes, the interface that carried them (counters) and the
// address the CH saw (the uplink's NAT). Going through upmt means starting `upmt-an` on the AN
// and `upmt-mh` on the MH (`upmt_tests::bin_path`, `Host::spawn`) and routing the app into the
// tunnel instead of binding it to an interface.
// ============================================================================================
fn run_demo(lab: &Lab) -> Result<()> {
    let http = lab
        .start_http_server()
        .context("starting the CH's HTTP server")?;
    let url = http.url(Family::V4, "big.bin");
    let want = http
        .sha256("big.bin")
        .context("the HTTP server serves big.bin")?
        .to_owned();
    let mh = lab.mh();
    println!("\n== direct path, no upmt: the MH downloads {url} over each uplink ==");
    for uplink in [MH_WIFI_IF, MH_CELL_IF] {
        let before_wifi = mh.link_counters(MH_WIFI_IF)?;
        let before_cell = mh.link_counters(MH_CELL_IF)?;
        let started = std::time::Instant::now();
        let out = mh
            .command(&[
                "curl",
                "-sS",
                "--fail",
                "--interface",
                uplink,
                "-o",
                "-",
                &url,
            ])
            .timeout(Duration::from_secs(60))
            .run()
            .with_context(|| format!("downloading over {uplink}"))?;
        let elapsed = started.elapsed();
        let got = upmt_tests::sha256_bytes(&out.stdout);
        let wifi = mh.link_counters(MH_WIFI_IF)?.since(&before_wifi);
        let cell = mh.link_counters(MH_CELL_IF)?.since(&before_cell);
        let seen = lab.whoami_via(Some(uplink), Family::V4)?;
        println!(
            "over {uplink:<4}: {} bytes in {:.2?}, sha256 {}",
            out.stdout.len(),
            elapsed,
            if got == want { "ok" } else { "MISMATCH" }
        );
        println!(
            "           received on wifi {} B, on cell {} B; the CH saw {seen}",
            wifi.rx_bytes, cell.rx_bytes
        );
        if got != want {
            bail!("download over {uplink} is corrupt: sha256 {got}, expected {want}");
        }
    }
    Ok(())
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
