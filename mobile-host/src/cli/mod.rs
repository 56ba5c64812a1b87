//! The `upmt` command line, one module per subcommand (as in mullvad-cli). `genkey` and `pubkey`
//! work offline; the others talk to the running daemon over its control socket
//! ([`crate::control`]). Every command that reads state has `--json` for scripts; human output
//! is aligned tables with units ([`table`]). Each command's rendering is a pure function of the
//! daemon's reply, so tests check the text without a daemon.

pub mod apps;
pub mod flows;
pub mod genkey;
pub mod r#move;
pub mod policy;
pub mod pubkey;
pub mod status;
pub mod table;
pub mod top;
pub mod unpin;
pub mod usage;
pub mod watch;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::control::client::Client;

/// `/run/upmt/mh.sock`, or `/data/adb/upmt/mh.sock` on Android.
fn default_socket() -> PathBuf {
    PathBuf::from(crate::config::default_socket())
}

/// `upmt`'s arguments.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "upmt",
    version,
    about = "Inspect the upmt mobile host and move flows and apps between tunnels"
)]
pub struct Cli {
    /// The daemon's control socket (default: /run/upmt/mh.sock; /data/adb/upmt/mh.sock on
    /// Android).
    #[arg(long, global = true, value_name = "PATH", default_value_os_t = default_socket())]
    pub socket: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Show the session and each tunnel: uplink, interface, endpoints, RTT, loss, bytes.
    Status,
    /// Show each app seen: its rule, its current uplink, bytes per uplink.
    Apps,
    /// Show each flow: id, app, 5-tuple, uplink, static/dynamic, bytes, age.
    Flows {
        /// Only this app's flows.
        #[arg(long, value_name = "NAME")]
        app: Option<String>,
    },
    /// Move a flow or all of an app's flows to an uplink now, and pin them there.
    #[command(subcommand)]
    Move(r#move::Move),
    /// Hand pinned flows back to their policy.
    #[command(subcommand)]
    Unpin(unpin::Unpin),
    /// Manage the policy.
    #[command(subcommand)]
    Policy(policy::Policy),
    /// Print events as they happen (tunnel up/down, flow moved, app blocked) until interrupted.
    Watch,
    /// A live view: each uplink (state, RTT, loss, rate history), apps by current rate with
    /// their uplink, and events as they happen. `q` quits.
    Top {
        /// Seconds between two polls of the daemon.
        #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_interval)]
        interval: std::time::Duration,
        /// Print this many frames as plain text and exit, instead of the live view.
        #[arg(long, value_name = "N")]
        frames: Option<u32>,
    },
    /// Show data usage per app per uplink, kept across restarts, and what is left of each cap.
    Usage {
        /// Only this app.
        #[arg(long, value_name = "NAME")]
        app: Option<String>,
        /// From this day on (local time); default: every day kept.
        #[arg(long, value_name = "YYYY-MM-DD")]
        since: Option<String>,
    },
    /// Print a new private key (base64), like `wg genkey`.
    Genkey {
        /// Write the key to this new file, created with mode 0600, instead of standard output.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Read a private key on stdin, print its public key, like `wg pubkey`.
    Pubkey,
}

/// Runs one command, writing its output to `out`. Errors are complete one-line messages.
pub fn run(cli: Cli, out: &mut impl Write) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::Genkey { out: Some(path) } => return genkey::to_file(&path),
        Command::Genkey { out: None } => return genkey::run(out),
        Command::Pubkey => return pubkey::run(&mut std::io::stdin().lock(), out),
        command => command,
    };
    // One request at a time: a single-threaded runtime is plenty and starts fast.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = &mut Client::connect(&cli.socket).await?;
        let json = cli.json;
        match command {
            Command::Status => status::run(client, json, out).await,
            Command::Apps => apps::run(client, json, out).await,
            Command::Flows { app } => flows::run(client, app, json, out).await,
            Command::Move(what) => r#move::run(client, what, json, out).await,
            Command::Unpin(what) => unpin::run(client, what, json, out).await,
            Command::Policy(what) => policy::run(client, what, json, out).await,
            Command::Watch => watch::run(client, json, out).await,
            Command::Top { interval, frames } => {
                top::run(&cli.socket, client, interval, frames, out).await
            }
            Command::Usage { app, since } => usage::run(client, app, since, json, out).await,
            Command::Genkey { .. } | Command::Pubkey => Ok(()),
        }
    })
}

/// A poll interval: from a tenth of a second to an hour.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(std::time::Duration::from_secs_f64(v)),
        _ => Err(format!("expected seconds between 0.1 and 3600, got {s:?}")),
    }
}

/// Pretty JSON and a newline.
fn print_json(out: &mut impl Write, value: &impl serde::Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).context("cannot write JSON")?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let a = parse(&["upmt", "--socket", "/tmp/x.sock", "--json", "status"]);
        let b = parse(&["upmt", "status", "--json", "--socket", "/tmp/x.sock"]);
        for cli in [a, b] {
            assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
            assert!(cli.json);
            assert_eq!(cli.command, Command::Status);
        }
        assert_eq!(parse(&["upmt", "apps"]).socket, default_socket());
        if !crate::config::android_paths() {
            assert_eq!(
                default_socket(),
                PathBuf::from(crate::control::DEFAULT_SOCKET)
            );
        }
    }

    #[test]
    fn move_unpin_and_policy_take_their_operands() {
        assert_eq!(
            parse(&["upmt", "move", "flow", "42", "cell"]).command,
            Command::Move(r#move::Move::Flow {
                id: 42,
                uplink: "cell".into()
            })
        );
        assert_eq!(
            parse(&["upmt", "move", "app", "com.example.app", "wifi"]).command,
            Command::Move(r#move::Move::App {
                name: "com.example.app".into(),
                uplink: "wifi".into()
            })
        );
        assert_eq!(
            parse(&["upmt", "unpin", "flow", "7"]).command,
            Command::Unpin(unpin::Unpin::Flow { id: 7 })
        );
        assert_eq!(
            parse(&["upmt", "flows", "--app", "curl"]).command,
            Command::Flows {
                app: Some("curl".into())
            }
        );
        assert_eq!(
            parse(&["upmt", "policy", "reload"]).command,
            Command::Policy(policy::Policy::Reload)
        );
        assert!(Cli::try_parse_from(["upmt", "move", "flow", "forty-two", "cell"]).is_err());
        assert_eq!(
            parse(&["upmt", "top", "--frames", "2", "--interval", "0.5"]).command,
            Command::Top {
                interval: std::time::Duration::from_millis(500),
                frames: Some(2)
            }
        );
        assert_eq!(
            parse(&["upmt", "top"]).command,
            Command::Top {
                interval: std::time::Duration::from_secs(1),
                frames: None
            }
        );
        assert!(Cli::try_parse_from(["upmt", "top", "--interval", "0"]).is_err());
    }

    #[test]
    fn completions_and_man_pages_cover_every_subcommand() {
        use clap::CommandFactory as _;
        let cmd = Cli::command();
        let paths = upmt_sys::cli_assets::subcommand_paths(&cmd);
        assert!(paths.contains(&vec!["policy".to_owned(), "reload".to_owned()]));
        assert_eq!(
            upmt_sys::cli_assets::missing_from_assets(&cmd),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_missing_daemon_is_one_clear_line() {
        let cli = parse(&["upmt", "--socket", "/nonexistent/upmt-test.sock", "status"]);
        let err = run(cli, &mut Vec::new()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "upmt-mh not running (no socket at /nonexistent/upmt-test.sock)"
        );
    }
}
