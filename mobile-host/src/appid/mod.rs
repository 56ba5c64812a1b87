//! Which app owns a flow: the packet's 5-tuple -> its local socket's uid and inode
//! (NETLINK_SOCK_DIAG, [`diag`]) -> the process holding the inode -> its app name
//! (`/proc/PID/cmdline`, [`procfs`]). When the socket is gone before the lookup (short-lived
//! sockets) or its process cannot be found, the owner is the socket's uid, named through
//! Android's packages.list ([`android`]) when there is one.
//!
//! Lookups block (netlink round trips, /proc scans), so they run on a [`Worker`] thread and
//! never on the packet loop: requests go in through a bounded channel, answers come back
//! through a tokio channel the loop selects on. Nothing here decides policy or touches packets.

pub mod android;
pub mod diag;
pub mod procfs;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use upmt_paft::FlowKey;

use android::Packages;
use diag::{DiagError, SockDiag};
use procfs::ProcTable;

/// Requests waiting for the worker; beyond this, new flows get the default rule at once.
pub const QUEUE: usize = 256;

pub use upmt_mh_core::owner::{Owner, Source};

/// Where the resolver reads from; the defaults are the real system's.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// The procfs root.
    pub proc_root: PathBuf,
    /// Android's packages.list (absent on Linux: fine).
    pub packages_list: PathBuf,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            proc_root: PathBuf::from("/proc"),
            packages_list: PathBuf::from(android::PACKAGES_LIST),
        }
    }
}

/// The blocking lookup with its caches. One per thread.
pub struct Resolver {
    diag: SockDiag,
    procs: ProcTable,
    packages: Packages,
    last_refresh: Option<Instant>,
}

impl Resolver {
    /// Opens the sock_diag socket.
    pub fn new(config: &ResolverConfig) -> Result<Resolver, DiagError> {
        Ok(Resolver {
            diag: SockDiag::open()?,
            procs: ProcTable::new(&config.proc_root),
            packages: Packages::at(&config.packages_list),
            last_refresh: None,
        })
    }

    /// The owner of the local socket that sent a packet with `key`.
    pub fn lookup(&mut self, key: &FlowKey) -> Owner {
        let socket = match self.diag.find(key) {
            Ok(Some(s)) => s,
            Ok(None) => return Owner::unknown(),
            Err(e) => {
                tracing::debug!(error = %upmt_sys::display_chain(&e), ?key, "sock_diag lookup failed");
                return Owner::unknown();
            }
        };
        if let Some(p) = self
            .procs
            .owner_of(u64::from(socket.inode), Some(socket.uid))
        {
            return Owner {
                name: p.name,
                uid: Some(socket.uid),
                pid: Some(p.pid),
                source: Source::Process,
            };
        }
        Owner {
            name: self.package_of(socket.uid),
            uid: Some(socket.uid),
            pid: None,
            source: Source::Uid,
        }
    }

    /// The Android package owning `uid`, if any (packages.list is re-read when it changed,
    /// looked at no more than once a second).
    pub fn package_of(&mut self, uid: u32) -> Option<Arc<str>> {
        let now = Instant::now();
        if self
            .last_refresh
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(1))
        {
            self.last_refresh = Some(now);
            self.packages.refresh();
        }
        self.packages.name_of(uid)
    }

    /// The process caches' counters.
    pub fn proc_stats(&self) -> procfs::ProcStats {
        self.procs.stats()
    }
}

/// An answer from the worker.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The flow asked about.
    pub key: FlowKey,
    /// Its owner.
    pub owner: Owner,
    /// How long the lookup took (for the log and benchmarks).
    pub took: Duration,
}

/// A lookup thread. Dropping the worker closes its request channel; the thread then exits.
pub struct Worker {
    requests: SyncSender<FlowKey>,
    answers: tokio::sync::mpsc::Receiver<Answer>,
}

impl Worker {
    /// Starts the thread.
    pub fn spawn(config: ResolverConfig) -> Result<Worker, DiagError> {
        let mut resolver = Resolver::new(&config)?;
        let (requests, rx) = mpsc::sync_channel::<FlowKey>(QUEUE);
        let (tx, answers) = tokio::sync::mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("upmt-appid".into())
            .spawn(move || {
                while let Ok(key) = rx.recv() {
                    let started = Instant::now();
                    let owner = resolver.lookup(&key);
                    let answer = Answer {
                        key,
                        owner,
                        took: started.elapsed(),
                    };
                    if tx.blocking_send(answer).is_err() {
                        return;
                    }
                }
            })
            .map_err(DiagError::Open)?;
        Ok(Worker { requests, answers })
    }

    /// Asks for `key`'s owner without blocking; false when the queue is full (or the thread
    /// died), in which case the caller decides without an owner.
    pub fn request(&self, key: FlowKey) -> bool {
        match self.requests.try_send(key) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// The next answer.
    pub async fn recv(&mut self) -> Option<Answer> {
        self.answers.recv().await
    }

    /// An answer if one is ready.
    pub fn try_recv(&mut self) -> Option<Answer> {
        self.answers.try_recv().ok()
    }
}
