//! Which app owns a flow: the packet's 5-tuple -> its local socket's uid and inode
//! (NETLINK_SOCK_DIAG, [`diag`]) -> the app, found the cheapest way that is right:
//! - On Android every installed app has its own uid: packages.list ([`android`]) names it from
//!   the uid alone, for every user, and an SDK sandbox uid names its app. No process is read.
//! - Otherwise (shared and system uids, isolated processes, Linux) the process that holds the
//!   inode, from an index kept up to date by process events ([`events`], [`procfs`]), and its
//!   name (`/proc/PID/cmdline`). Only that uid's processes are read on a miss.
//! - A socket whose process is not found is named by its uid; a socket gone before the lookup
//!   (or ICMP) has no owner, and the default rule applies.
//!
//! Lookups block (netlink round trips, /proc reads), so they run on a [`Worker`] thread and
//! never on the packet loop: requests go in through a bounded channel, answers come back
//! through a tokio channel the loop selects on. The worker primes its process index at start in
//! small steps between requests, and asks sock_diag for every queued request before reading any
//! process, so short-lived sockets (DNS) are still there to give their uid. [`LookupCounters`]
//! tell how each answer was found. Nothing here decides policy or touches packets.

pub mod android;
pub mod diag;
pub mod events;
pub mod procfs;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use upmt_paft::FlowKey;

use android::{Packages, UidKind};
use diag::{DiagError, SockDiag, SocketId};
use events::{ProcEvent, ProcEvents, ProcessWatch};
use procfs::{Found, ProcLimits, ProcTable};

/// Requests waiting for the worker; beyond this, new flows get the default rule at once.
pub const QUEUE: usize = 256;
/// How often an idle worker takes in process events, so the kernel's queue of them does not
/// overflow while no flow starts; while none come, the wait doubles up to [`IDLE_POLL_MAX`]
/// (a phone asleep starts few processes). Without process events the worker only wakes for
/// requests.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// The longest wait between two reads of process events while none come.
const IDLE_POLL_MAX: Duration = Duration::from_secs(8);
/// Processes the worker reads per step while it primes its index at start, between which it
/// answers waiting requests (a few milliseconds each).
const PRIME_STEP: usize = 32;

pub use upmt_mh_core::owner::{Owner, Source};

/// The name given to an isolated process's socket whose process is not found.
pub const ISOLATED: &str = "isolated";
/// The prefix of an SDK sandbox's name: `sdk_sandbox:<package>`.
pub const SDK_SANDBOX_PREFIX: &str = "sdk_sandbox:";

/// Where the resolver reads from; the defaults are the real system's.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// The procfs root.
    pub proc_root: PathBuf,
    /// Android's packages.list (absent on Linux: fine).
    pub packages_list: PathBuf,
    /// Bounds of the process index.
    pub limits: ProcLimits,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            proc_root: PathBuf::from("/proc"),
            packages_list: PathBuf::from(android::PACKAGES_LIST),
            limits: ProcLimits::default(),
        }
    }
}

/// How answers were found, shared with whoever shows them (the worker's thread counts).
#[derive(Debug, Default)]
pub struct LookupCounters {
    by_uid: AtomicU64,
    index_hits: AtomicU64,
    event_hits: AtomicU64,
    scans: AtomicU64,
    uid_fallback: AtomicU64,
    unknown: AtomicU64,
}

/// A reading of [`LookupCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Named from the uid alone (an Android app's own uid, or its SDK sandbox).
    pub by_uid: u64,
    /// The process came from the index (one fd link read back).
    pub index_hits: u64,
    /// The process was among those process events named new or changed, and only those were
    /// read (a just-started app).
    pub event_hits: u64,
    /// The process was found by reading processes.
    pub scans: u64,
    /// The socket was found but no process holding it: named by the uid.
    pub uid_fallback: u64,
    /// No socket (gone before the lookup, ICMP, or sock_diag failed).
    pub unknown: u64,
}

impl LookupCounters {
    /// The counters now.
    pub fn get(&self) -> LookupStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LookupStats {
            by_uid: r(&self.by_uid),
            index_hits: r(&self.index_hits),
            event_hits: r(&self.event_hits),
            scans: r(&self.scans),
            uid_fallback: r(&self.uid_fallback),
            unknown: r(&self.unknown),
        }
    }

    fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// From a socket's uid and inode to its owner: packages.list and the process index. Reads
/// files only; no sockets (see [`Resolver`] for the sock_diag side).
pub struct Owners {
    procs: ProcTable,
    packages: Packages,
    last_refresh: Option<Instant>,
    counters: Arc<LookupCounters>,
}

impl Owners {
    /// Over the files `config` names.
    pub fn new(config: &ResolverConfig) -> Owners {
        Owners {
            procs: ProcTable::with_limits(&config.proc_root, config.limits),
            packages: Packages::at(&config.packages_list),
            last_refresh: None,
            counters: Arc::default(),
        }
    }

    /// The owner of socket `s`.
    pub fn of_socket(&mut self, s: SocketId) -> Owner {
        self.refresh_packages();
        let uid = Some(s.uid);
        let by_uid = |name: Arc<str>| Owner {
            name: Some(name),
            uid,
            pid: None,
            source: Source::Package,
        };
        let kind = self.packages.kind_of(s.uid);
        match kind {
            UidKind::App(name) => {
                LookupCounters::count(&self.counters.by_uid);
                return by_uid(name);
            }
            UidKind::SdkSandbox(name) => {
                LookupCounters::count(&self.counters.by_uid);
                return by_uid(format!("{SDK_SANDBOX_PREFIX}{name}").into());
            }
            UidKind::Isolated | UidKind::Shared | UidKind::Unlisted => {}
        }
        if let Some(p) = self.procs.owner_of(u64::from(s.inode), uid) {
            LookupCounters::count(match p.found {
                Found::Index => &self.counters.index_hits,
                Found::NewProcess => &self.counters.event_hits,
                Found::Scan => &self.counters.scans,
            });
            // A process not specialized yet (zygote's child) is better named by its uid.
            let name = match p.settled {
                true => p.name,
                false => self.packages.name_of(s.uid).or(p.name),
            };
            return Owner {
                name,
                uid,
                pid: Some(p.pid),
                source: Source::Process,
            };
        }
        LookupCounters::count(&self.counters.uid_fallback);
        let name = match kind {
            UidKind::Isolated => Some(ISOLATED.into()),
            _ => self.packages.name_of(s.uid),
        };
        Owner {
            name,
            uid,
            pid: None,
            source: Source::Uid,
        }
    }

    /// packages.list is re-read when it changed, looked at no more than once a second.
    fn refresh_packages(&mut self) {
        let now = Instant::now();
        if self
            .last_refresh
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(1))
        {
            self.last_refresh = Some(now);
            self.packages.refresh();
        }
    }

    /// The Android package owning `uid`, if any.
    pub fn package_of(&mut self, uid: u32) -> Option<Arc<str>> {
        self.refresh_packages();
        self.packages.name_of(uid)
    }

    /// The process index (for events, priming and its counters).
    pub fn procs(&mut self) -> &mut ProcTable {
        &mut self.procs
    }

    /// How answers were found.
    pub fn counters(&self) -> Arc<LookupCounters> {
        Arc::clone(&self.counters)
    }
}

/// The blocking lookup with its caches. One per thread.
pub struct Resolver {
    diag: SockDiag,
    owners: Owners,
    events: Option<ProcEvents>,
    event_buf: Vec<ProcEvent>,
}

impl Resolver {
    /// Opens the sock_diag socket. The process index learns of processes by listing `/proc`
    /// until [`Resolver::with_events`] gives it process events.
    pub fn new(config: &ResolverConfig) -> Result<Resolver, DiagError> {
        Ok(Resolver {
            diag: SockDiag::open()?,
            owners: Owners::new(config),
            events: None,
            event_buf: Vec::new(),
        })
    }

    /// Feeds the process index from `events` (opened in the initial network namespace).
    pub fn with_events(mut self, events: ProcEvents) -> Resolver {
        self.events = Some(events);
        self.owners.procs.set_events(true);
        self
    }

    /// Reads every process now, so later lookups start from a full index.
    pub fn prime(&mut self) {
        while !self.prime_step(usize::MAX) {}
    }

    /// Reads up to `max` processes of [`Resolver::prime`]; true when it is done.
    pub fn prime_step(&mut self, max: usize) -> bool {
        self.poll_events();
        self.owners.procs.prime_step(max)
    }

    /// Takes in the process events the kernel queued.
    /// Takes in the process events waiting; returns how many there were.
    pub fn poll_events(&mut self) -> usize {
        let Some(events) = &mut self.events else {
            return 0;
        };
        events.drain(&mut self.event_buf);
        let n = self.event_buf.len();
        for e in self.event_buf.drain(..) {
            self.owners.procs.apply(e);
        }
        n
    }

    /// Whether process events keep the index fresh (then they must be read now and then).
    pub fn has_events(&self) -> bool {
        self.events.is_some()
    }

    /// The owner of the local socket that sent a packet with `key`.
    pub fn lookup(&mut self, key: &FlowKey) -> Owner {
        self.poll_events();
        let socket = self.socket_of(key);
        self.owner_of(socket)
    }

    /// The local socket that sent a packet with `key`, if it is still there.
    pub fn socket_of(&mut self, key: &FlowKey) -> Option<SocketId> {
        match self.diag.find(key) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %upmt_sys::display_chain(&e), ?key, "sock_diag lookup failed");
                None
            }
        }
    }

    /// The owner of `socket` (see [`Resolver::socket_of`]).
    pub fn owner_of(&mut self, socket: Option<SocketId>) -> Owner {
        match socket {
            Some(s) => self.owners.of_socket(s),
            None => {
                LookupCounters::count(&self.owners.counters.unknown);
                Owner::unknown()
            }
        }
    }

    /// The Android package owning `uid`, if any.
    pub fn package_of(&mut self, uid: u32) -> Option<Arc<str>> {
        self.owners.package_of(uid)
    }

    /// The process index's counters.
    pub fn proc_stats(&self) -> procfs::ProcStats {
        self.owners.procs.stats()
    }

    /// How answers were found.
    pub fn counters(&self) -> Arc<LookupCounters> {
        self.owners.counters()
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
    counters: Arc<LookupCounters>,
    watch: ProcessWatch,
}

impl Worker {
    /// Starts the thread. Process events are used when the kernel gives them (root; a daemon
    /// outside the initial network namespace also needs to enter it, see
    /// [`events::open_watch`]); otherwise each miss lists `/proc`.
    pub fn spawn(config: ResolverConfig) -> Result<Worker, DiagError> {
        let mut resolver = Resolver::new(&config)?;
        let watch = match events::open_watch() {
            Ok((events, watch)) => {
                tracing::info!(?watch, "process events keep the process index");
                resolver = resolver.with_events(events);
                watch
            }
            Err(e) => {
                tracing::info!(error = %upmt_sys::display_chain(&e), "process events unavailable: a missed socket lists /proc");
                ProcessWatch::Scans
            }
        };
        let counters = resolver.counters();
        let (requests, rx) = mpsc::sync_channel::<FlowKey>(QUEUE);
        let (tx, answers) = tokio::sync::mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("upmt-appid".into())
            .spawn(move || {
                // The index is primed in steps, so flows that start meanwhile are not held
                // behind a read of every process.
                let mut priming = true;
                let mut batch = Vec::with_capacity(QUEUE);
                let mut idle_poll = IDLE_POLL;
                loop {
                    let received = if priming {
                        rx.recv_timeout(Duration::ZERO)
                    } else if resolver.has_events() {
                        rx.recv_timeout(idle_poll)
                    } else {
                        rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    };
                    match received {
                        Ok(key) => {
                            idle_poll = IDLE_POLL;
                            batch.push((key, Instant::now()));
                        }
                        Err(RecvTimeoutError::Timeout) if priming => {
                            priming = !resolver.prime_step(PRIME_STEP);
                            continue;
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            idle_poll = next_idle_poll(idle_poll, resolver.poll_events());
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    while batch.len() < QUEUE
                        && let Ok(key) = rx.try_recv()
                    {
                        batch.push((key, Instant::now()));
                    }
                    resolver.poll_events();
                    // Every socket first: a short-lived one may be gone after a process read.
                    let sockets: Vec<_> = batch
                        .iter()
                        .map(|(key, _)| resolver.socket_of(key))
                        .collect();
                    for ((key, asked), socket) in batch.drain(..).zip(sockets) {
                        let owner = resolver.owner_of(socket);
                        let answer = Answer {
                            key,
                            owner,
                            took: asked.elapsed(),
                        };
                        if tx.blocking_send(answer).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(DiagError::Open)?;
        Ok(Worker {
            requests,
            answers,
            counters,
            watch,
        })
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

    /// How the worker's answers were found (live: it counts as it answers).
    pub fn counters(&self) -> Arc<LookupCounters> {
        Arc::clone(&self.counters)
    }

    /// How the worker learns of new processes.
    pub fn process_watch(&self) -> ProcessWatch {
        self.watch
    }
}

/// The wait before the next idle read of process events, after a read that found `seen`:
/// back to [`IDLE_POLL`] when some came, else twice the last, at most [`IDLE_POLL_MAX`].
fn next_idle_poll(last: Duration, seen: usize) -> Duration {
    if seen > 0 {
        IDLE_POLL
    } else {
        (last * 2).min(IDLE_POLL_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::procfs::tests::FakeProc;
    use super::*;

    #[test]
    fn the_idle_poll_backs_off_while_no_process_events_come_and_resets_when_some_do() {
        let mut wait = IDLE_POLL;
        for _ in 0..10 {
            wait = next_idle_poll(wait, 0);
        }
        assert_eq!(wait, IDLE_POLL_MAX);
        assert_eq!(next_idle_poll(IDLE_POLL, 0), IDLE_POLL * 2);
        assert_eq!(next_idle_poll(wait, 3), IDLE_POLL);
    }

    /// A fake /proc with a packages.list beside it.
    fn setup(tag: &str, packages: &str) -> (FakeProc, Owners) {
        let fake = FakeProc::new(tag);
        let list = fake.root().join("packages.list");
        std::fs::write(&list, packages).unwrap();
        let config = ResolverConfig {
            proc_root: fake.root().to_owned(),
            packages_list: list,
            limits: ProcLimits::default(),
        };
        let owners = Owners::new(&config);
        (fake, owners)
    }

    const SHARED: &str = "com.shared.one 10300 0 /d default none\n\
                          com.shared.two 10300 0 /d default none\n\
                          com.example.video 10200 0 /d default none\n";

    fn socket(uid: u32, inode: u32) -> SocketId {
        SocketId { uid, inode }
    }

    #[test]
    fn an_android_app_with_its_own_uid_is_named_without_reading_proc() {
        let (fake, mut owners) = setup(
            "android",
            "com.example.video 10200 0 /d default none\n\
             com.android.chrome 10123 0 /d default none\n",
        );
        fake.add(100, 5, "com.example.video", &[11]);
        for (uid, want) in [
            (10_200, "com.example.video"),
            (1_010_123, "com.android.chrome"),
            (20_200, "sdk_sandbox:com.example.video"),
        ] {
            let o = owners.of_socket(socket(uid, 11));
            assert_eq!(o.name.as_deref(), Some(want), "{uid}");
            assert_eq!((o.source, o.uid, o.pid), (Source::Package, Some(uid), None));
        }
        let stats = owners.procs().stats();
        assert_eq!((stats.listings, stats.processes_read), (0, 0), "{stats:?}");
        assert_eq!(
            owners.counters().get(),
            LookupStats {
                by_uid: 3,
                ..LookupStats::default()
            }
        );
    }

    #[test]
    fn a_shared_uid_is_resolved_through_the_processes() {
        // Two packages under one uid (sharedUserId): only the process tells which.
        let (fake, mut owners) = setup("shared", SHARED);
        fake.add(100, 5, "com.shared.two:sync", &[11]);
        fake.add(101, 6, "com.shared.one", &[12]);
        let o = owners.of_socket(socket(10_300, 11));
        assert_eq!(
            (o.name.as_deref(), o.pid, o.source),
            (Some("com.shared.two"), Some(100), Source::Process)
        );
        let o = owners.of_socket(socket(1_010_300, 12));
        assert_eq!(o.name.as_deref(), Some("com.shared.one"));
        let c = owners.counters().get();
        assert_eq!((c.by_uid, c.scans, c.index_hits), (0, 1, 1), "{c:?}");
        assert!(owners.procs().stats().processes_read > 0);
    }

    #[test]
    fn a_socket_whose_process_is_gone_is_named_by_its_uid() {
        let (fake, mut owners) = setup("gone", SHARED);
        fake.add(100, 5, "other", &[12]);
        let o = owners.of_socket(socket(10_300, 11));
        assert_eq!(
            (o.name.as_deref(), o.uid, o.pid, o.source),
            (Some("com.shared.one"), Some(10_300), None, Source::Uid)
        );
        assert_eq!(owners.counters().get().uid_fallback, 1);
    }

    #[test]
    fn an_isolated_process_is_named_by_its_process_or_as_isolated() {
        let (fake, mut owners) = setup("isolated", SHARED);
        fake.add(100, 5, "com.android.chrome:sandboxed_process0", &[11]);
        let o = owners.of_socket(socket(99_123, 11));
        assert_eq!(
            (o.name.as_deref(), o.source),
            (Some("com.android.chrome"), Source::Process)
        );
        let o = owners.of_socket(socket(1_099_123, 77));
        assert_eq!((o.name.as_deref(), o.source), (Some(ISOLATED), Source::Uid));
    }

    #[test]
    fn an_unsettled_process_is_named_by_its_uid() {
        let (fake, mut owners) = setup("usap", SHARED);
        fake.add(100, 5, "usap64", &[11]);
        let o = owners.of_socket(socket(10_300, 11));
        assert_eq!(
            (o.name.as_deref(), o.pid),
            (Some("com.shared.one"), Some(100))
        );
    }

    #[test]
    fn linux_without_packages_list_reads_the_process() {
        let (fake, mut owners) = setup("linux", "");
        fake.add(100, 5, "/usr/bin/curl -sS", &[11]);
        let o = owners.of_socket(socket(1000, 11));
        assert_eq!(
            (o.name.as_deref(), o.source),
            (Some("curl"), Source::Process)
        );
    }

    #[test]
    fn the_worker_names_this_process_for_its_own_socket_and_counts_it() {
        // A bound, unconnected loopback socket: nothing is sent.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let Ok(mut worker) = Worker::spawn(ResolverConfig::default()) else {
            return;
        };
        let key = FlowKey {
            proto: upmt_paft::proto::UDP,
            src: std::net::Ipv4Addr::LOCALHOST.into(),
            dst: std::net::Ipv4Addr::new(127, 0, 0, 9).into(),
            sport: port,
            dport: 53,
        };
        assert!(worker.request(key));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), worker.recv()).await })
            .expect("an answer in time")
            .expect("the worker is alive");
        assert_eq!(answer.key, key);
        assert_eq!(answer.owner.pid, Some(std::process::id()), "{answer:?}");
        assert_eq!(answer.owner.source, Source::Process);
        let c = worker.counters().get();
        assert_eq!(c.index_hits + c.scans, 1, "{c:?}");
        drop(sock);
    }

    #[test]
    fn no_socket_is_an_unknown_owner_and_counted() {
        let Ok(mut r) = Resolver::new(&ResolverConfig::default()) else {
            return;
        };
        assert_eq!(r.owner_of(None), Owner::unknown());
        assert_eq!(r.counters().get().unknown, 1);
    }
}
