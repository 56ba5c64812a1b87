//! The control socket file both daemons serve on: bound before a daemon drops its privileges,
//! with its mode set before it listens, and removed at exit.
//!
//! The socket file is mode 0600 (root only), or 0660 and owned by the access's group; the
//! servers check every peer's credentials again ([`crate::peer`]), so a mode loosened by hand
//! serves nobody new. A stale socket (its daemon died) is replaced; a live one or a path that is
//! not a socket is refused.
//!
//! After a privilege drop a daemon keeps serving on the listener it bound as root, but removing
//! the file at exit needs write access to its directory: a directory created here can be given
//! to the account the daemon drops to ([`BindOptions::dir_owner`]). In a directory the daemon
//! cannot write the file stays behind at exit; clients then say "not running", and the next
//! start (or the daemon's `down`) removes it.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::peer::Access;

/// How a daemon wants its socket bound.
#[derive(Clone, Copy, Debug)]
pub struct BindOptions {
    /// The program, for messages (`upmt-an`, `upmt-mh`).
    pub daemon: &'static str,
    /// Who owns a directory created for the socket (uid, gid): the account the daemon drops to.
    pub dir_owner: Option<(u32, u32)>,
    /// The listen backlog.
    pub backlog: i32,
}

/// What went wrong setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the control socket's directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("another {daemon} is already serving {path}")]
    AlreadyRunning { daemon: &'static str, path: PathBuf },
    #[error("cannot remove the stale control socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the owner and mode of the control socket {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The socket file; removed when dropped (when the directory lets the daemon).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    daemon: &'static str,
}

impl SocketFile {
    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if is_socket(&self.path)
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::info!(
                path = %self.path.display(),
                error = %e,
                "cannot remove the control socket; the next start or `{} down` does",
                self.daemon
            );
        }
    }
}

/// Whether `path` is a socket file.
pub fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Whether a daemon answers on the socket at `path`.
pub fn is_served(path: &Path) -> bool {
    is_socket(path) && std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Binds the control socket at `path`: creates its directory (mode 0755, owned by
/// [`BindOptions::dir_owner`] when given), removes a stale socket (but refuses when a live
/// daemon answers there, or when the path is not a socket), and sets the mode before listening,
/// so no connection is accepted with looser permissions. Must run inside tokio.
pub fn bind(
    path: &Path,
    access: &Access,
    options: BindOptions,
) -> Result<(UnixListener, SocketFile), ServerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        let dir_err = |source| ServerError::CreateDir {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(dir_err)?;
        if let Some((uid, gid)) = options.dir_owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(dir_err)?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket {
                path: path.to_owned(),
            });
        }
        if is_served(path) {
            return Err(ServerError::AlreadyRunning {
                daemon: options.daemon,
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
            path: path.to_owned(),
            source,
        })?;
        tracing::info!(path = %path.display(), "removed a stale control socket");
    }
    let bind_err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .map_err(bind_err)?;
    let addr = socket2::SockAddr::unix(path).map_err(bind_err)?;
    socket.bind(&addr).map_err(bind_err)?;
    // From here on the file exists: the guard removes it if anything below fails.
    let file = SocketFile {
        path: path.to_owned(),
        daemon: options.daemon,
    };
    let perm_err = |source| ServerError::Permissions {
        path: path.to_owned(),
        source,
    };
    let mode = match &access.group {
        Some((_, gid)) => {
            std::os::unix::fs::chown(path, None, Some(*gid)).map_err(perm_err)?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(perm_err)?;
    socket.listen(options.backlog).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(
        std::os::fd::OwnedFd::from(socket),
    ))
    .map_err(bind_err)?;
    Ok((listener, file))
}

/// Why a client could not reach a daemon's control socket: the one-line errors users see.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{daemon} not running (no socket at {})", path.display())]
    NotRunning { daemon: &'static str, path: PathBuf },
    #[error("{daemon} not running (nothing listens on {})", path.display())]
    Refused { daemon: &'static str, path: PathBuf },
    #[error("permission denied: cannot connect to {} (root, {daemon}'s user or its control_group only)", path.display())]
    NoAccess { daemon: &'static str, path: PathBuf },
    #[error("cannot connect to {}", path.display())]
    Other {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Connects to `daemon`'s control socket at `path`.
pub async fn connect(
    path: &Path,
    daemon: &'static str,
) -> Result<tokio::net::UnixStream, ConnectError> {
    tokio::net::UnixStream::connect(path).await.map_err(|e| {
        let path = path.to_owned();
        match e.kind() {
            io::ErrorKind::NotFound => ConnectError::NotRunning { daemon, path },
            io::ErrorKind::ConnectionRefused => ConnectError::Refused { daemon, path },
            io::ErrorKind::PermissionDenied => ConnectError::NoAccess { daemon, path },
            _ => ConnectError::Other { path, source: e },
        }
    })
}

/// The `version` field of a reply that did not parse as this program's frame: a daemon of
/// another version says more than "invalid JSON".
pub fn version_of(body: &[u8]) -> Option<u32> {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let version = value.get("version")?.as_u64()?;
    Some(u32::try_from(version).unwrap_or(u32::MAX))
}
