//! `upmt-an down`: removes what a stopped daemon leaves on purpose (the persistent TUN and the
//! `inet upmt_<tun>` table, see [`crate::nat`] for why they stay) and a control socket file it
//! could not remove. Refused while a daemon answers on the control socket: taking the TUN and
//! the NAT from under a running anchor would cut every mobile host off.
//!
//! Only the named TUN device (and only when it is a TUN: an interface of that name of another
//! kind is left alone) and the daemon's own table are removed; forwarding stays on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::Config;
use crate::control::server;
use crate::nat::{NatError, NatGuard};

/// What a stopped anchor left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// The TUN device (name) exists.
    pub tun: Option<String>,
    /// The nftables table (name) exists.
    pub table: Option<String>,
    /// A socket file nobody serves is at the control socket's path.
    pub socket: Option<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.tun.is_none() && self.table.is_none() && self.socket.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownError {
    #[error(
        "an upmt-an is running on {}: stop it first (`upmt-an down` would cut its mobile hosts off)",
        path.display()
    )]
    Running { path: PathBuf },
    #[error("{name} is not a TUN device; leaving it alone")]
    NotATun { name: String },
    #[error(transparent)]
    Nat(#[from] NatError),
    #[error("cannot remove the tun device {name}: {stderr}")]
    Link { name: String, stderr: String },
    #[error("cannot run ip")]
    Spawn(#[source] std::io::Error),
    #[error("cannot remove the stale control socket {}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether the interface `name` exists, and whether it is a TUN/TAP device.
fn link(name: &str) -> Option<bool> {
    let dir = Path::new("/sys/class/net").join(name);
    dir.exists().then(|| dir.join("tun_flags").exists())
}

/// Whether a TUN device named `name` exists (one an earlier run left, before this one makes it).
pub fn tun_exists(name: &str) -> bool {
    link(name) == Some(true)
}

/// The table of the anchor whose TUN is `tun`.
pub fn table_of(tun: &str) -> String {
    format!("upmt_{tun}")
}

/// What an anchor with `config` left behind, seen from this network namespace.
pub fn leftovers(config: &Config, nft: &Path) -> Result<Leftovers, NatError> {
    let table = table_of(&config.tun);
    Ok(Leftovers {
        tun: link(&config.tun).map(|_| config.tun.clone()),
        table: NatGuard::exists(nft, &table)?.then_some(table),
        socket: (server::is_socket(&config.control_socket)
            && !server::is_served(&config.control_socket))
        .then(|| config.control_socket.clone()),
    })
}

/// Removes what [`leftovers`] finds, unless a daemon answers on the control socket; returns what
/// it removed.
pub fn down(config: &Config, nft: &Path) -> Result<Leftovers, DownError> {
    if server::is_served(&config.control_socket) {
        return Err(DownError::Running {
            path: config.control_socket.clone(),
        });
    }
    let found = leftovers(config, nft)?;
    if let Some(name) = &found.tun
        && link(name) != Some(true)
    {
        return Err(DownError::NotATun { name: name.clone() });
    }
    if let Some(table) = &found.table {
        NatGuard::delete(nft, table)?;
    }
    if let Some(name) = &found.tun {
        let out = Command::new("ip")
            .args(["link", "del", "dev", name])
            .stdin(Stdio::null())
            .output()
            .map_err(DownError::Spawn)?;
        if !out.status.success() {
            return Err(DownError::Link {
                name: name.clone(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    if let Some(path) = &found.socket {
        std::fs::remove_file(path).map_err(|source| DownError::Socket {
            path: path.clone(),
            source,
        })?;
    }
    Ok(found)
}
