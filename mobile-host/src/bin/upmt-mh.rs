//! `upmt-mh`: the upmt mobile-host daemon. `run` handshakes with the anchor, brings up the TUN
//! and routes the host's traffic through it until SIGINT/SIGTERM, then restores routing, and
//! serves the control socket `upmt` talks to meanwhile; `check` validates a config file and
//! exits; `stop` removes the routing a killed daemon left behind (its capture rules keep
//! tunnelled apps without a path until then, by design).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use upmt_mobile_host::config::Config;
use upmt_mobile_host::control::{self, server};
use upmt_mobile_host::event_loop::Daemon;
use upmt_mobile_host::{sys, uplink};

/// `/etc/upmt/mh.toml`, or `/data/adb/upmt/mh.toml` on Android.
fn default_config() -> PathBuf {
    PathBuf::from(upmt_mobile_host::config::default_config())
}

#[derive(Parser)]
#[command(name = "upmt-mh", version, about = "upmt mobile-host daemon")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value_os_t = default_config())]
        config: PathBuf,
    },
    /// Remove the routing a killed daemon left behind (a running daemon removes its own on
    /// SIGTERM; `run` also removes leftovers when it starts).
    #[command(alias = "down")]
    Stop {
        /// Configuration file.
        #[arg(long, short, default_value_os_t = default_config())]
        config: PathBuf,
    },
    /// Validate a configuration file and print what it sets up.
    Check {
        /// Configuration file.
        #[arg(long, short, default_value_os_t = default_config())]
        config: PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `completions` and `man` (hidden) are answered here; see upmt_sys::cli_assets.
    let args: Args = upmt_sys::cli_assets::parse();
    let result = match args.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Stop { config } => stop(&config),
    };
    if let Err(e) = result {
        eprintln!("upmt-mh: {e:#}");
        std::process::exit(1);
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let public = config.private_key.public_key();
    println!("{}: ok", path.display());
    for anchor in &config.anchors {
        println!("anchor        {anchor}");
    }
    println!("platform      {:?}", config.platform);
    println!("public key    {public}");
    println!("tun           {}", config.tun);
    let key = upmt_mobile_host::setup::routing_key(&config);
    println!(
        "routing       {:?} layout, fwmark {:#x}, table {}, DNS {:?}",
        key.platform, key.fwmark, key.table, key.dns
    );
    for rule in key.rules(&[]).iter().filter(|r| !r.v6) {
        println!("rule          {rule}");
    }
    println!(
        "control       {} ({})",
        config.control_socket.display(),
        config
            .control_group
            .as_deref()
            .map_or_else(|| "root only".to_owned(), |g| format!("root and group {g}"))
    );
    for u in &config.uplinks {
        let now = if u.interface.ends_with('*') {
            "a pattern: the daemon picks among the interfaces it matches".to_owned()
        } else {
            format!("{:?} now", uplink::link_state(&u.interface))
        };
        println!(
            "uplink        path {} {} on {} ({now})",
            u.path_index, u.name, u.interface,
        );
    }
    Ok(())
}

fn stop(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    upmt_sys::caps::require_net_admin("upmt-mh")?;
    // A daemon that answers on its socket would lose its routing under its feet.
    if std::os::unix::net::UnixStream::connect(&config.control_socket).is_ok() {
        anyhow::bail!(
            "a daemon is running on {}: stop it with SIGTERM (it removes its routing itself)",
            config.control_socket.display()
        );
    }
    let key = upmt_mobile_host::setup::routing_key(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let removed = runtime.block_on(async {
        let netlink = upmt_mobile_host::routing::Netlink::new()?;
        netlink.remove(&key).await
    })?;
    println!(
        "removed {removed} routing entries (rules and routes of table {})",
        key.table
    );
    Ok(())
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    upmt_sys::caps::require_net_admin("upmt-mh")?;
    sys::tun_device_path()?;
    // One thread: the loop is a single task, and netlink's connection task is light.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // The control socket first: a second daemon must fail here, before it touches the
        // running one's routing.
        let access = match &config.control_group {
            Some(group) => server::Access::with_group(group)?,
            None => server::Access::root_only(),
        };
        let (listener, socket_file) = server::bind(&config.control_socket, &access)?;
        tracing::info!(path = %socket_file.path().display(), group = ?config.control_group, "control socket ready");
        let (handle, end) = control::channel();
        let mut daemon = Daemon::new(config).await?;
        daemon.attach_control(end);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server::serve(listener, access, handle, async {
            let _ = stopped.await;
        }));
        let result = daemon.run(shutdown_signal()?).await;
        let _ = stop.send(());
        let _ = serving.await;
        drop(socket_file);
        result?;
        anyhow::Ok(())
    })
}

/// Completes on the first SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn completions_and_man_pages_cover_every_subcommand() {
        let cmd = Args::command();
        assert!(upmt_sys::cli_assets::subcommand_paths(&cmd).contains(&vec!["stop".to_owned()]));
        assert_eq!(
            upmt_sys::cli_assets::missing_from_assets(&cmd),
            Vec::<String>::new()
        );
    }
}
