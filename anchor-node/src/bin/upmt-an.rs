//! `upmt-an`: the upmt anchor-node daemon and its key tools.
//!
//! `run` wires the library's pieces together in the order that gives the clearest error first
//! (privilege, nft, config, key file mode, account, socket, metrics, TUN, forwarding, NAT), then
//! drops to the configured account with only CAP_NET_ADMIN (see `privilege`). At exit it leaves
//! the persistent TUN and the NAT table in place, so a restart (an upgrade, a crash and systemd's
//! `Restart=`) keeps the mobile hosts' connections: the kernel's NAT state outlives the daemon.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;
use upmt_anchor_node::config::{self, Config};
use upmt_anchor_node::control::{self, Request, Response};
use upmt_anchor_node::event_loop::EventLoop;
use upmt_anchor_node::ops::Ops;
use upmt_anchor_node::{anchor_config, metrics, nat, privilege, tun, udp};
use upmt_proto::anchor::Anchor;
use upmt_proto::keys::StaticSecret;
use upmt_sys::{caps, clock};

#[derive(Parser)]
#[command(name = "upmt-an", version, about = "upmt anchor node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the anchor node.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a config and print a summary.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Print a new base64 private key.
    Genkey {
        /// Write the key to this new file, created with mode 0600, instead of standard output.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Read a base64 private key on stdin, print its public key.
    Pubkey,
    /// Show the running anchor's peers: paths, handshakes, traffic, flows.
    Show {
        /// Print JSON (fields documented in docs/anchor.md) instead of a table.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket.
        #[arg(long, value_name = "PATH", default_value = config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Apply the config's peers to the running anchor: added peers can connect, removed ones
    /// are cut off, unchanged ones keep their sessions (as SIGHUP does).
    Reload {
        /// The configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The daemon's control socket (default: the config's control_socket).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Remove the TUN and the nftables table a stopped anchor left (refused while one runs).
    Down {
        /// The configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    // `completions` and `man` (hidden) are answered here; see upmt_sys::cli_assets.
    let cli: Cli = upmt_sys::cli_assets::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Genkey { out } => genkey(out.as_deref()),
        Command::Pubkey => pubkey(),
        Command::Show { json, socket } => show(&socket, json),
        Command::Reload { config, socket } => reload(&config, socket.as_deref()),
        Command::Down { config } => down(&config),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context, then each cause.
            eprintln!("upmt-an: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints a new key, or writes it to a new file of mode 0600 (`genkey > an.key` would leave it
/// as the umask says, often readable by all, and `run` refuses such a key file).
fn genkey(out: Option<&std::path::Path>) -> Result<()> {
    let key = StaticSecret::generate().context("cannot generate a key")?;
    match out {
        Some(path) => upmt_sys::keys::write_private_key(path, &key)
            .with_context(|| format!("cannot write a new key file {}", path.display()))?,
        None => println!("{key}"),
    }
    Ok(())
}

fn pubkey() -> Result<()> {
    let mut text = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut text)
        .context("cannot read the private key from stdin")?;
    let key: StaticSecret = text
        .trim()
        .parse()
        .context("stdin does not hold a base64 private key")?;
    println!("{}", key.public_key());
    Ok(())
}

fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn show(socket: &std::path::Path, json: bool) -> Result<()> {
    let response = client_runtime()?.block_on(control::client::request(socket, Request::Show))?;
    let Response::Show(show) = response else {
        anyhow::bail!("unexpected answer from upmt-an: {response:?}");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&show)?);
    } else {
        print!("{}", upmt_anchor_node::show::render(&show));
    }
    Ok(())
}

fn reload(path: &std::path::Path, socket: Option<&std::path::Path>) -> Result<()> {
    // Read here, as the operator: the daemon may no longer be able to read its own config
    // after dropping privileges. The key file is never needed for a reload.
    let config = config::load_without_key_file(path)?;
    let socket = socket.unwrap_or(&config.control_socket);
    let request = Request::Reload {
        config: upmt_anchor_node::reload::reload_config(&config),
    };
    let response = client_runtime()?.block_on(control::client::request(socket, request))?;
    let Response::Reloaded(report) = response else {
        anyhow::bail!("unexpected answer from upmt-an: {response:?}");
    };
    println!(
        "{}: peers reloaded: {} added, {} removed, {} unchanged",
        path.display(),
        report.added.len(),
        report.removed.len(),
        report.unchanged
    );
    for name in &report.added {
        println!("  added    {name}");
    }
    for name in &report.removed {
        println!("  removed  {name} (cut off)");
    }
    if !report.needs_restart.is_empty() {
        println!(
            "  needs a restart, not applied: {}",
            report.needs_restart.join(", ")
        );
    }
    Ok(())
}

fn down(path: &std::path::Path) -> Result<()> {
    caps::require_net_admin("upmt-an")?;
    let nft = nat::find_nft()?;
    let config = config::load_without_key_file(path)?;
    let removed = upmt_anchor_node::down::down(&config, &nft)?;
    if removed.is_empty() {
        println!(
            "nothing to remove: no tun {}, no nftables table inet {}",
            config.tun,
            upmt_anchor_node::down::table_of(&config.tun)
        );
    }
    if let Some(table) = &removed.table {
        println!("removed nftables table inet {table}");
    }
    if let Some(tun) = &removed.tun {
        println!("removed tun {tun}");
    }
    if let Some(socket) = &removed.socket {
        println!("removed stale control socket {}", socket.display());
    }
    Ok(())
}

fn check(path: &std::path::Path) -> Result<()> {
    let c = config::load(path)?;
    println!("{}: ok", path.display());
    println!("  listen      {}", c.listen);
    println!("  public key  {}", c.private_key.public_key());
    println!("  tun         {} mtu {}", c.tun, c.mtu);
    print!("  subnet      {} (anchor {})", c.subnet, c.anchor_address());
    if let (Some(net6), Some(a6)) = (c.subnet6, c.anchor_address6()) {
        print!(", {net6} (anchor {a6})");
    }
    println!();
    println!("  egress      {} (nft table inet upmt_{})", c.egress, c.tun);
    if let Some(m) = c.metrics {
        println!("  metrics     http://{m}/metrics");
    }
    let open = |allowed: bool| if allowed { "allowed" } else { "dropped" };
    println!(
        "  isolation   peer to peer {}, to this host {}, private egress {}",
        open(c.allow_peer_to_peer),
        if c.allow_to_host.is_empty() {
            "dropped".to_owned()
        } else {
            format!("ports {:?}", c.allow_to_host)
        },
        open(c.allow_private_egress)
    );
    println!("  user        {}", c.user);
    println!("  peers       {}", c.peers.len());
    for p in &c.peers {
        print!("    {:<16} {} {}", p.name, p.public_key, p.address);
        if let Some(a6) = p.address6 {
            print!(" {a6}");
        }
        println!();
    }
    Ok(())
}

fn run(path: &std::path::Path) -> Result<()> {
    caps::require_net_admin("upmt-an")?;
    let nft = nat::find_nft()?;
    let config = config::load(path)?;
    config::check_key_file_mode(&config)?;
    let account = match config.user.as_str() {
        privilege::KEEP_ROOT => None,
        name => Some(privilege::Account::lookup(name)?),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, nft, account))
}

async fn serve(config: Config, nft: PathBuf, account: Option<privilege::Account>) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let udp = udp::bind(config.listen)?;
    // Bound now, as root: the drop below keeps the listener working, and a directory made here
    // goes to the account so the socket can be removed at exit.
    let access = match &config.control_group {
        Some(group) => control::server::Access::with_group(group)?,
        None => control::server::Access::root_only(),
    };
    let (control_listener, control_file) = control::server::bind(
        &config.control_socket,
        &access,
        account.as_ref().map(|a| (a.uid, a.gid)),
    )?;
    let metrics_listener = match config.metrics {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    let tun_spec = tun::TunSpec {
        name: config.tun.clone(),
        address: config.anchor_address(),
        prefix: config.subnet.prefix_len(),
        address6: config
            .anchor_address6()
            .zip(config.subnet6.map(|n| n.prefix_len())),
        mtu: config.mtu,
        offload: config.offload,
    };
    if upmt_anchor_node::down::tun_exists(&config.tun) {
        // The normal case after a restart (the TUN is persistent), so not a warning.
        tracing::info!(tun = %config.tun, "attaching to the TUN an earlier run left (`upmt-an down` removes it after a stop)");
    }
    let (device, offload) = tun::create(&tun_spec)?;
    tracing::info!(tun = %config.tun, offload = offload.as_str(), "TUN ready");
    nat::enable_forwarding(config.subnet6.is_some(), &config.egress)?;
    let spec = nat::NatSpec {
        tun: config.tun.clone(),
        egress: config.egress.clone(),
        subnet: config.subnet,
        subnet6: config.subnet6,
        dns: config.dns,
        anchor4: config.anchor_address(),
        anchor6: config.anchor_address6(),
        allow_peer_to_peer: config.allow_peer_to_peer,
        allow_to_host: config.allow_to_host.clone(),
        allow_private_egress: config.allow_private_egress,
    };
    if let Some(dns) = config.dns {
        tracing::info!(%dns, "tunnelled DNS is redirected to this resolver");
    }
    if nat::NatGuard::exists(&nft, &spec.table())? {
        // The normal case after a restart (the table is left in place at exit), so not a warning.
        tracing::info!(table = %spec.table(), "replacing a stale nftables table from an earlier run (`upmt-an down` removes it after a stop)");
    }
    let guard = nat::NatGuard::install(nft, &spec)?;
    let counters = nat::CounterReader::open(guard.table())
        .context("cannot open a netlink socket for the nftables counters")?;
    let isolation = |allowed: bool| if allowed { "allowed" } else { "dropped" };
    tracing::info!(
        peer_to_peer = isolation(config.allow_peer_to_peer),
        to_host = %if config.allow_to_host.is_empty() {
            "dropped".to_owned()
        } else {
            format!("ports {:?} allowed", config.allow_to_host)
        },
        private_egress = isolation(config.allow_private_egress),
        "mobile hosts' isolation"
    );
    match &account {
        Some(account) => {
            let caps = privilege::kept_capabilities(config.listen.port());
            let capabilities = format!("{:#x}", privilege::capability_mask(&caps));
            if privilege::drop_to(account, &caps)? {
                tracing::info!(user = %account.name, uid = account.uid, %capabilities, "dropped privileges");
            } else {
                // Started without root (file capabilities): no account to switch from.
                tracing::info!(%capabilities, "dropped privileges: kept only these capabilities");
            }
        }
        None => tracing::warn!("user = \"root\": keeping every privilege"),
    }
    tracing::info!(
        listen = %config.listen,
        tun = %config.tun,
        table = %guard.table(),
        peers = config.peers.len(),
        public_key = %config.private_key.public_key(),
        control_socket = %control_file.path().display(),
        "anchor node up"
    );

    let scrapes = metrics_listener.map(|listener| {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(metrics::serve(listener, tx));
        rx
    });
    let (handle, requests) = control::channel();
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_server = tokio::spawn(control::server::serve(
        control_listener,
        access,
        handle,
        async {
            let _ = control_stopped.await;
        },
    ));
    let core_config = anchor_config(&config);
    tracing::info!(
        cipher = config.cipher.as_str(),
        aes_hardware = upmt_sys::cipher::aes_hardware(),
        aes256gcm = core_config.fast_aes,
        "transport cipher setting"
    );
    let anchor = Anchor::new(core_config, clock::now());
    let event_loop = EventLoop::new(anchor, udp, device, config.mtu, scrapes)
        .with_offload(offload)
        .with_isolation_counters(counters)
        .with_ops(Ops::new(&config, Some(requests)));
    let result = event_loop.run(shutdown).await;
    let _ = stop_control.send(());
    let _ = control_server.await;
    drop(control_file);

    // The table and the TUN stay whatever ended the loop: removing them would reset every
    // connection still in flight through a restart (see nat's module docs).
    let table = guard.keep();
    result.context("event loop stopped")?;
    tracing::info!(
        %table,
        tun = %config.tun,
        "anchor node stopped; the TUN and the nftables table stay for the next run"
    );
    Ok(())
}

/// A future that resolves at the first SIGINT or SIGTERM. The handlers are installed now, so a
/// signal that arrives during setup is not lost and still leads to cleanup.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn completions_and_man_pages_cover_every_subcommand() {
        let cmd = Cli::command();
        assert!(upmt_sys::cli_assets::subcommand_paths(&cmd).contains(&vec!["run".to_owned()]));
        assert_eq!(
            upmt_sys::cli_assets::missing_from_assets(&cmd),
            Vec::<String>::new()
        );
    }
}
