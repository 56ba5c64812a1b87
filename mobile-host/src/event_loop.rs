//! The daemon's event loop: the IO around the pure core [`MobileHost`]. One tokio task owns the
//! core, the uplink sockets, the TUN, the routing and the app-lookup worker, and once per turn:
//!
//! 1. waits for one of: TUN readable, an uplink socket readable, the core's timer, a link event,
//!    the uplink re-check tick, an app-lookup answer, a control request, SIGHUP, shutdown;
//! 2. samples `now` (CLOCK_BOOTTIME) once;
//! 3. hands that source to the core, in a batch of about [`BATCH`] packets read until
//!    `WouldBlock` into buffers allocated once at start (no per-packet allocation); uplink
//!    sockets take many datagrams per syscall and send a TUN batch's datagrams of one uplink as
//!    GSO sends (`upmt_sys::batch`); a bad packet is dropped and counted, never aborts the batch;
//! 4. runs the core's timers if due, then drains its outputs (datagrams, TUN writes, lookups,
//!    routing intents, events) and re-arms the timer.
//!
//! Every decision (which uplink a flow takes, what is blocked, when an uplink counts as usable,
//! pins, the bypass set) is the core's. This module only moves bytes and applies intents.

use std::future::{Future, poll_fn};
use std::io;
use std::task::Poll;
use std::time::Duration;

use upmt_mh_core::api::{ErrorKind, ErrorReply, ReloadReply, Request, Response};
use upmt_mh_core::candidates::{Change, Family, InterfaceFacts};
use upmt_mh_core::{MobileHost, RoutingIntent, Uplinks};
use upmt_paft::UplinkId;
use upmt_proto::PathId;
use upmt_sys::batch::{self, BatchSocket, RxBatch, TxBatch};
use upmt_sys::display_chain;

use crate::appid::{self, Worker};
use crate::config::{Config, PolicyLoadError, UplinkConfig};
use crate::control::{ControlRequest, LoopEnd};
use crate::routing::{Netlink, RoutingError, RoutingKey, TunRoute, describe_rule};
use crate::setup::{self, HEADER_LEN, Instant, TAG_LEN};
use crate::tun::{Tun, TunError};
use crate::uplink::{self, LinkState, Lister};

/// Packets handled per source per loop turn, so one busy source cannot starve the others.
pub const BATCH: usize = 64;
/// How often uplinks and routing are looked at again while there is a reason: an uplink without
/// a socket (its interface is missing, down, or refused a socket), no link or rule events from
/// netlink, or a routing repair that failed. Otherwise the events cover it and nothing ticks.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(3);
/// Largest datagram or packet handled: a UDP payload's maximum, so GRO/GSO can come later.
const MAX_PACKET: usize = 65_535;

/// A fatal error of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Netlink could not be used.
    #[error("routing setup failed")]
    Routing(#[from] RoutingError),
    /// The TUN could not be brought up.
    #[error("TUN setup failed")]
    Tun(#[from] TunError),
    /// The policy file named by the config is missing or invalid.
    #[error("cannot load the policy")]
    Policy(#[from] PolicyLoadError),
    /// The config names more uplinks than the data path carries.
    #[error("invalid uplinks")]
    Uplinks(#[from] upmt_mh_core::uplinks::TooManyUplinks),
    /// Reading the TUN failed in a way that is not a single bad packet.
    #[error("reading TUN {name} failed")]
    TunRead {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Counters of what the driver itself could not do (the core counts its own drops).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// Datagrams the kernel refused to send (buffer full, link gone).
    pub send_errors: u64,
    /// Receive errors on uplink sockets (ICMP errors reported on a connected socket, ...).
    pub recv_errors: u64,
    /// Inner packets the TUN refused, or that arrived before the TUN existed.
    pub tun_write_errors: u64,
    /// TCP resets written into the TUN for blocked flows.
    pub resets_sent: u64,
    /// Offloaded TUN reads that could not be split into packets (dropped).
    pub tun_bad_super_packets: u64,
}

struct Uplink {
    config: UplinkConfig,
    id: UplinkId,
    socket: Option<BatchSocket>,
}

/// The mobile host daemon: the core and its IO.
pub struct Daemon {
    config: Config,
    host: MobileHost,
    netlink: Netlink,
    key: RoutingKey,
    uplinks: Vec<Uplink>,
    tun: Option<Tun>,
    /// The bypass uids the core published last; the layout is kept complete with them.
    bypass: Vec<u32>,
    /// Uplink receive buffers, shared by the uplinks (read one at a time).
    rx: RxBatch,
    /// Encrypted TUN packets waiting to go out together on one uplink.
    uplink_tx: UplinkTx,
    tx_buf: Box<[u8]>,
    rst_buf: Box<[u8]>,
    /// Where the uplink readiness scan starts, rotated for fairness.
    next_uplink: usize,
    counters: DriverCounters,
    /// The app lookup thread; `None` when sock_diag is unavailable (every owner unknown).
    worker: Option<Worker>,
    packages: appid::android::Packages,
    /// The control socket's requests and watchers.
    control: Option<LoopEnd>,
    /// Lists the interfaces uplinks pick from; `None` when netlink refused (exact names are
    /// then looked at one by one).
    lister: Option<Lister>,
    /// The Prometheus endpoint's scrapes; `None` when it is off.
    metrics: Option<crate::metrics::LoopEnd>,
    /// The uplinks' disposable NAT-test sockets.
    tests: crate::natprobe::TestSockets,
    /// Hands freed heap back after a burst of flows ended.
    trim: crate::memory::Trim,
}

enum Wake {
    Shutdown,
    Recheck,
    Hangup,
    Timer,
    Tun,
    Uplink(usize),
    NatTest(PathId),
    Answer(appid::Answer),
    Control(ControlRequest),
    Scrape(crate::metrics::Scrape),
    Link(crate::linkwatch::LinkEvent),
    /// Entries of our routing were deleted (netd rewrote its rules, a flush).
    RulesLost,
}

impl Daemon {
    /// Prepares the daemon: a netlink connection, leftovers of a previous run removed, the
    /// core, and the routing layout installed at once, before any session, so that tunnelled
    /// apps fail closed until the TUN exists. Must run inside tokio. Opens no socket yet.
    pub async fn new(config: Config) -> Result<Daemon, DaemonError> {
        let netlink = Netlink::new()?;
        let key = setup::routing_key(&config);
        tracing::info!(platform = ?key.platform, dns = ?key.dns, table = key.table, fwmark = format_args!("{:#x}", key.fwmark), priority = key.priority, "routing layout");
        let stale = netlink.remove(&key).await?;
        if stale > 0 {
            tracing::warn!(
                entries = stale,
                "removed routing left behind by a previous run"
            );
        }
        let policy = config.load_policy()?;
        tracing::info!(path = ?config.policy, rules = policy.rules().len(), "policy loaded");
        let worker = match Worker::spawn(appid::ResolverConfig {
            proc_root: config.proc_root.clone(),
            packages_list: config.packages_list.clone(),
            ..appid::ResolverConfig::default()
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %display_chain(&e), "app lookup unavailable: every flow gets the default rule");
                None
            }
        };
        let lister = match Lister::new() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list interfaces over netlink: uplinks named by pattern stay unused");
                None
            }
        };
        let start = setup::now();
        let mut host = MobileHost::new(setup::host_config(&config, policy)?, start);
        setup::set_anchors(&mut host, &config, start);
        host.set_metered(&config.uplinks.iter().map(|u| u.metered).collect::<Vec<_>>());
        crate::usage_store::start(&mut host, &config, start);
        let packages = appid::android::Packages::at(&config.packages_list);
        host.set_packages(packages.uids_by_name());
        for (uplink, u) in host
            .uplinks()
            .ids()
            .zip(&config.uplinks)
            .collect::<Vec<_>>()
        {
            host.set_sleep(uplink, u.sleep);
        }
        let uplinks = config
            .uplinks
            .iter()
            .zip(host.uplinks().ids())
            .map(|(u, id)| Uplink {
                config: u.clone(),
                id,
                socket: None,
            })
            .collect();
        let mut daemon = Daemon {
            config,
            host,
            netlink,
            key,
            uplinks,
            tun: None,
            bypass: Vec::new(),
            rx: RxBatch::default(),
            uplink_tx: UplinkTx::default(),
            tx_buf: vec![0; HEADER_LEN + MAX_PACKET + TAG_LEN].into_boxed_slice(),
            rst_buf: vec![0; 128].into_boxed_slice(),
            next_uplink: 0,
            counters: DriverCounters::default(),
            worker,
            packages,
            control: None,
            lister,
            metrics: None,
            tests: crate::natprobe::TestSockets::default(),
            trim: crate::memory::Trim::default(),
        };
        // The core publishes the bypass set from the start: take it before the capture rules
        // go in, so bypass apps never lose their path.
        while let Some(intent) = daemon.host.poll_routing() {
            daemon.apply(intent, start).await?;
        }
        if let Err(e) = daemon.ensure_routing().await {
            // Half a layout would leave apps without a path after this process is gone.
            if let Err(undo) = daemon.netlink.remove(&daemon.key).await {
                tracing::error!(error = %display_chain(&undo), "cannot remove the partial routing; `upmt-mh stop` removes it");
            }
            return Err(e.into());
        }
        daemon.log_rules().await;
        Ok(daemon)
    }

    /// Serves the control socket's requests from this loop and publishes its events there.
    pub fn attach_control(&mut self, end: LoopEnd) {
        self.control = Some(end);
    }

    /// Answers the metrics endpoint's scrapes from this loop.
    pub fn attach_metrics(&mut self, scrapes: tokio::sync::mpsc::Receiver<crate::metrics::Scrape>) {
        self.metrics = Some(crate::metrics::LoopEnd {
            scrapes,
            recorder: crate::metrics::Recorder::default(),
        });
    }

    /// The core (read only), for queries.
    pub fn host(&self) -> &MobileHost {
        &self.host
    }

    /// The driver's own counters.
    pub fn counters(&self) -> DriverCounters {
        self.counters
    }

    /// Reads the policy file (and Android's package table) again. On success the new policy
    /// applies to new and existing flows; on error the old policy stays and the error
    /// (file:line:column) is returned.
    pub fn reload_policy(&mut self, now: Instant) -> Result<ReloadReply, PolicyLoadError> {
        let policy = self.config.load_policy()?;
        if self.packages.refresh() {
            self.host.set_packages(self.packages.uids_by_name());
        }
        Ok(self.host.reload_policy(policy, now))
    }

    /// Runs until `shutdown` completes or a fatal error, then removes the routing it installed.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let result = self.run_loop(shutdown).await;
        self.save_usage(setup::now(), true);
        let cleanup = self.cleanup().await;
        result.and(cleanup)
    }

    /// Saves the usage ledger when the core offers it (at most once a minute, and only when
    /// something new was counted), or now with `force` (at exit).
    fn save_usage(&mut self, now: Instant, force: bool) {
        if let Some(file) = self.host.poll_usage_save(now, force)
            && let Err(e) = crate::usage_store::save(&self.config.usage_file, &file)
        {
            tracing::warn!(error = %display_chain(&e), "usage not saved; it is tried again at the next save");
        }
    }

    async fn run_loop(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Link changes from netlink re-check the uplinks at once; the RECHECK_INTERVAL poll
        // runs only while an uplink is unavailable (a socket that failed to open gets no event
        // when it would work) or when netlink gives no events.
        let mut links = crate::linkwatch::spawn()
            .map_err(|e| tracing::warn!(error = %display_chain(&e), "no link events; uplinks are polled only"))
            .ok();
        // Deleted rules are put back at once; the RECHECK_INTERVAL tick checks them only
        // without rule events or after a repair failed.
        let mut rules = crate::rulewatch::spawn(self.key)
            .map_err(|e| tracing::warn!(error = %display_chain(&e), "no rule events; routing is checked every few seconds only"))
            .ok();
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: reload the policy through the control socket");
                None
            }
        };
        let mut routing_unrepaired = false;
        loop {
            let before = setup::now();
            let deadline = self.host.poll_timeout();
            let recheck_due = links.is_none()
                || rules.is_none()
                || routing_unrepaired
                || self.uplinks.iter().any(|u| u.socket.is_none());
            let wake = {
                let timer = async {
                    match deadline {
                        Some(at) => tokio::time::sleep(setup::until(at, before)).await,
                        None => std::future::pending().await,
                    }
                };
                let tun_ready = async {
                    match &self.tun {
                        Some(tun) => tun.device.readable().await,
                        None => std::future::pending().await,
                    }
                };
                let uplinks = &self.uplinks;
                let start = self.next_uplink;
                let uplink_ready = poll_fn(|cx| poll_uplinks(uplinks, start, cx));
                let tests = &self.tests;
                let test_ready = poll_fn(|cx| tests.poll_ready(cx));
                let answer = async {
                    match &mut self.worker {
                        Some(w) => w.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let control = next_control(&mut self.control);
                let scrape = crate::metrics::LoopEnd::next(&mut self.metrics);
                let link = async {
                    match &mut links {
                        Some(l) => l.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let rules_lost = async {
                    match &mut rules {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let hup = async {
                    match &mut hangup {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = &mut shutdown => Wake::Shutdown,
                    _ = recheck.tick(), if recheck_due => Wake::Recheck,
                    Some(()) = hup => Wake::Hangup,
                    Some(()) = rules_lost => Wake::RulesLost,
                    Some(e) = link => Wake::Link(e),
                    Some(a) = answer => Wake::Answer(a),
                    r = control => Wake::Control(r),
                    s = scrape => Wake::Scrape(s),
                    () = timer => Wake::Timer,
                    // An error here resurfaces from try_recv, where it is handled.
                    _ = tun_ready => Wake::Tun,
                    i = uplink_ready => Wake::Uplink(i),
                    p = test_ready => Wake::NatTest(p),
                }
            };
            let now = setup::now();
            match wake {
                Wake::Shutdown => {
                    tracing::info!("shutting down");
                    return Ok(());
                }
                Wake::Recheck => {
                    self.recheck_uplinks(now).await;
                    routing_unrepaired = !self.repair_routing().await;
                }
                Wake::RulesLost => routing_unrepaired = !self.repair_routing().await,
                Wake::Link(e) => {
                    // An uplink whose link or address went away loses its socket at once (a
                    // connected socket keeps a vanished source address); recheck reopens it.
                    if e.is_loss() {
                        tracing::info!(event = ?e, "link change");
                        for u in &mut self.uplinks {
                            if self.host.interface(u.id) == e.ifname() && u.socket.take().is_some()
                            {
                                tracing::warn!(uplink = %u.config.name, "uplink lost (netlink)");
                                self.host.handle_uplink_lost(u.id, now);
                            }
                        }
                    }
                    self.recheck_uplinks(now).await;
                }
                Wake::Hangup => {
                    tracing::info!("SIGHUP: reloading the policy");
                    if let Err(e) = self.reload(now) {
                        tracing::error!(error = %e.message, "policy reload refused; the old policy stays");
                    }
                }
                Wake::Answer(a) => {
                    self.classified(a, now);
                    // Answers come in bursts (a browser opening many connections): take the
                    // ones already there, bounded like any batch.
                    for _ in 1..BATCH {
                        let Some(a) = self.worker.as_mut().and_then(Worker::try_recv) else {
                            break;
                        };
                        self.classified(a, now);
                    }
                }
                Wake::Control(r) => self.answer_control(r, now),
                Wake::Scrape(reply) => {
                    if let Some(m) = &self.metrics {
                        let lookups = self.worker.as_ref().map(|w| w.counters().get());
                        let snapshot = crate::metrics::Snapshot::take(
                            &mut self.host,
                            self.counters,
                            lookups,
                            &m.recorder,
                            now,
                        );
                        let _ = reply.send(snapshot);
                    }
                }
                Wake::Timer => {}
                Wake::Tun => self.read_tun(now)?,
                Wake::Uplink(i) => {
                    self.next_uplink = (i + 1) % self.uplinks.len().max(1);
                    self.read_uplink(i, now);
                }
                Wake::NatTest(path) => {
                    while self.tests.recv(path, &mut self.rx) {
                        for (_, datagram) in self.rx.datagrams() {
                            self.host.handle_nat_datagram(path, datagram, now);
                        }
                    }
                }
            }
            // Due timers run on every turn, not only on the timer's wake: the tokio timer does
            // not count suspended time, CLOCK_BOOTTIME does.
            if self.host.poll_timeout().is_some_and(|at| at <= now) {
                let (unix, offset) = crate::usage_store::wall_clock();
                self.host.handle_wall_clock(unix, offset, now);
                // Read what already waits on the uplinks first: a loop that ran late under CPU
                // pressure must not call a path dead whose answers sit unread in its socket.
                for i in 0..self.uplinks.len() {
                    self.read_uplink(i, now);
                }
                let flows = self.host.flows().paft().len();
                self.host.handle_timeout(now);
                let left = self.host.flows().paft().len();
                self.trim.after_timers(flows, left, now);
            }
            self.drain(now).await?;
            self.save_usage(now, false);
        }
    }

    fn classified(&mut self, answer: appid::Answer, now: Instant) {
        tracing::trace!(key = ?answer.key, took_us = answer.took.as_micros() as u64, "owner found");
        if let Some(m) = &mut self.metrics {
            m.recorder.lookup(answer.took);
        }
        self.host.handle_owner(answer.key, &answer.owner, now);
    }

    fn answer_control(&mut self, request: ControlRequest, now: Instant) {
        tracing::debug!(request = request.request.name(), "control request");
        let response = match request.request {
            Request::ReloadPolicy => self
                .reload(now)
                .map_or_else(Response::Error, Response::Reloaded),
            other => self.host.answer(other, now),
        };
        let response = match (response, &self.worker) {
            (Response::Status(mut status), Some(worker)) => {
                let found = worker.counters().get();
                let owners = status.owners.get_or_insert_default();
                owners.by_uid = found.by_uid;
                owners.index_hits = found.index_hits;
                owners.event_hits = found.event_hits;
                owners.process_watch = Some(worker.process_watch());
                owners.scans = found.scans;
                owners.uid_fallback = found.uid_fallback;
                owners.unknown = found.unknown;
                Response::Status(status)
            }
            (response, _) => response,
        };
        // The client may have gone away meanwhile: nothing to do then.
        let _ = request.reply.send(response);
    }

    /// Reloads the policy; the error is the one line users see.
    fn reload(&mut self, now: Instant) -> Result<ReloadReply, ErrorReply> {
        self.reload_policy(now).map_err(|e| ErrorReply {
            kind: ErrorKind::InvalidPolicy,
            message: match e {
                // The policy's own message is "file:line:col: what"; the wrapper adds nothing.
                PolicyLoadError::Invalid(e) => e.to_string(),
                e => display_chain(&e),
            },
        })
    }

    /// Lists the interfaces for the core, which decides which uplink goes where; the sockets
    /// follow in [`Daemon::drain`].
    async fn recheck_uplinks(&mut self, now: Instant) {
        let facts = self.interface_facts().await;
        let families = self
            .host
            .anchor_endpoints()
            .iter()
            .map(|a| if a.is_ipv4() { Family::V4 } else { Family::V6 })
            .collect();
        self.host.handle_interfaces(facts, families, now);
        self.report_uplink_mtus(now);
    }

    /// Tells the core each open uplink's interface MTU; it searches the path MTU below it and
    /// starts again when it changed.
    fn report_uplink_mtus(&mut self, now: Instant) {
        for u in self.uplinks.iter().filter(|u| u.socket.is_some()) {
            if let Some(mtu) = self.host.interface(u.id).and_then(uplink::interface_mtu) {
                self.host.handle_uplink_mtu(u.id, mtu, now);
            }
        }
    }

    /// What the host's interfaces look like; without netlink, the uplinks' exact names looked
    /// up one by one (up or not).
    async fn interface_facts(&self) -> Vec<InterfaceFacts> {
        if let Some(lister) = &self.lister {
            match lister.list(&self.config.tun).await {
                Ok(facts) => return facts,
                Err(e) => tracing::warn!(error = %e, "listing interfaces failed"),
            }
        }
        self.config
            .uplinks
            .iter()
            .map(|u| InterfaceFacts {
                name: u.interface.clone(),
                up: uplink::link_state(&u.interface) == LinkState::Up,
                ..InterfaceFacts::default()
            })
            .collect()
    }

    /// Closes the uplink's socket, and opens the one the core asks for.
    fn change_uplink(&mut self, id: UplinkId, change: Change, now: Instant) {
        let fwmark = self.config.fwmark;
        let Some(u) = self.uplinks.iter_mut().find(|u| u.id == id) else {
            return;
        };
        // A new socket later picks the interface's new source address.
        self.tests.close(Uplinks::path(id));
        if u.socket.take().is_some() {
            tracing::warn!(uplink = %u.config.name, "uplink socket closed");
        }
        let Change::Attach(attempt) = change else {
            tracing::warn!(uplink = %u.config.name, "uplink lost: no interface for it");
            return;
        };
        let Some(anchor) = self
            .host
            .anchor_endpoints()
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == (attempt.family == Family::V4))
        else {
            self.host.handle_attach_failed(id, now);
            return;
        };
        match uplink::open(&attempt.interface, anchor, fwmark) {
            Ok(socket) => {
                tracing::info!(uplink = %u.config.name, interface = %attempt.interface, %anchor, path = %Uplinks::path(id), "uplink available");
                let local = socket.local_addr().ok();
                u.socket = Some(socket);
                self.host.handle_uplink_available(id, local, now);
                self.report_uplink_mtus(now);
            }
            Err(e) => {
                tracing::warn!(uplink = %u.config.name, interface = %attempt.interface, error = %display_chain(&e), "uplink not usable yet; retrying");
                self.host.handle_attach_failed(id, now);
            }
        }
    }

    /// Reads about BATCH packets from the TUN (an offloaded read gives a super-packet split
    /// into MTU packets); each goes through the core's per-packet flow lookup, so a moved
    /// flow's next packet takes its new uplink even within one read.
    fn read_tun(&mut self, now: Instant) -> Result<(), DaemonError> {
        let Some(tun) = &mut self.tun else {
            return Ok(());
        };
        let bad_before = tun.rx.stats().read_bad;
        let mut result = Ok(());
        let mut handled = 0;
        while handled < BATCH {
            let n = match tun.rx.recv(&tun.device) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    result = Err(DaemonError::TunRead {
                        name: tun.name.clone(),
                        source,
                    });
                    break;
                }
            };
            handled += n.max(1);
            for i in 0..n {
                let Some((buf, len)) = tun.rx.packet_mut(i) else {
                    break;
                };
                if len == 0 {
                    continue;
                }
                if let Some(t) = self.host.handle_tun_packet(buf, len, now) {
                    let lost = self
                        .uplink_tx
                        .queue(&mut self.uplinks, t.path, &buf[..t.len]);
                    self.counters.send_errors += lost;
                }
                if let Some((path, copy)) = self.host.take_copy() {
                    self.counters.send_errors +=
                        self.uplink_tx.queue(&mut self.uplinks, path, copy);
                }
            }
        }
        self.counters.tun_bad_super_packets += tun.rx.stats().read_bad - bad_before;
        self.counters.send_errors += self.uplink_tx.flush(&mut self.uplinks);
        result
    }

    /// Reads one uplink's datagrams and writes the packets they carry to the TUN together.
    fn read_uplink(&mut self, index: usize, now: Instant) {
        self.read_uplink_batches(index, now);
        if let Some(tun) = &mut self.tun {
            flush_tun(tun, &mut self.counters);
        }
    }

    fn read_uplink_batches(&mut self, index: usize, now: Instant) {
        let Some(u) = self.uplinks.get(index) else {
            return;
        };
        let path = Uplinks::path(u.id);
        for _ in 0..BATCH.div_ceil(batch::RX_SLOTS) {
            let Some(socket) = &mut self.uplinks[index].socket else {
                return;
            };
            match socket.recv_batch(&mut self.rx) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Connected UDP sockets report ICMP errors (port unreachable while the anchor
                    // restarts) here once; the socket stays usable.
                    self.counters.recv_errors += 1;
                    tracing::debug!(%path, error = %e, "uplink receive error");
                    continue;
                }
            }
            for (_, datagram) in self.rx.datagrams() {
                if let Some(range) = self.host.handle_datagram(path, datagram, now) {
                    match (&mut self.tun, datagram.get(range)) {
                        (Some(tun), Some(packet)) => {
                            if tun.tx.push(packet) {
                                flush_tun(tun, &mut self.counters);
                            }
                        }
                        _ => self.counters.tun_write_errors += 1,
                    }
                }
            }
        }
    }

    /// Drains the core's outputs until all are empty.
    async fn drain(&mut self, now: Instant) -> Result<(), DaemonError> {
        loop {
            while let Some((id, change)) = self.host.poll_uplink_change() {
                self.change_uplink(id, change, now);
            }
            while let Some(t) = self.host.poll_transmit(now, &mut self.tx_buf) {
                let sent = self
                    .tx_buf
                    .get(..t.len)
                    .is_some_and(|d| send_on(&mut self.uplinks, t.path, d));
                if !sent {
                    self.counters.send_errors += 1;
                }
            }
            while let Some(t) = self.host.poll_mtu_probe(now, &mut self.tx_buf) {
                let sent = self.tx_buf.get(..t.len).is_some_and(|d| {
                    let socket = self
                        .uplinks
                        .get_mut(usize::from(t.path.0))
                        .and_then(|u| u.socket.as_mut());
                    socket.is_some_and(|s| s.peer().is_some_and(|a| s.send_probe(a, d).is_ok()))
                });
                // Too big for the interface is a lost probe, which the search expects.
                if !sent {
                    tracing::debug!(path = %t.path, len = t.len, "mtu probe not sent");
                }
            }
            while let Some(t) = self.host.poll_nat_transmit(now, &mut self.tx_buf) {
                self.send_nat_test(t);
            }
            self.write_resets();
            while let Some(key) = self.host.poll_lookup() {
                match &self.worker {
                    Some(w) => {
                        if !w.request(key) {
                            self.host.handle_lookup_refused(&key);
                        }
                    }
                    // No lookup possible: decide at once with an unknown owner.
                    None => self.host.handle_owner(key, &appid::Owner::unknown(), now),
                }
            }
            let mut more = false;
            while let Some(intent) = self.host.poll_routing() {
                self.apply(intent, now).await?;
                more = true;
            }
            while let Some(event) = self.host.poll_event() {
                if let Some(m) = &mut self.metrics {
                    m.recorder.event(&event);
                }
                if let Some(end) = &self.control {
                    end.publish(event);
                }
            }
            // Released packets, resets and lookups can come from an unknown-owner decision
            // above; routing changes can make the core say more.
            if !more && !self.host.has_output() {
                return Ok(());
            }
        }
    }

    /// Sends a NAT test's datagram on its uplink's test socket, through the same interface,
    /// mark and anchor as the uplink socket.
    fn send_nat_test(&mut self, t: upmt_proto::client::NatTransmit) {
        let Some(u) = self.uplinks.get(usize::from(t.path.0)) else {
            return;
        };
        let (Some(anchor), Some(interface), Some(datagram)) = (
            u.socket.as_ref().and_then(BatchSocket::peer),
            self.host.interface(u.id),
            self.tx_buf.get(..t.len),
        ) else {
            return;
        };
        if !self
            .tests
            .send(t, datagram, interface, anchor, self.config.fwmark)
        {
            self.counters.send_errors += 1;
        }
    }

    async fn apply(&mut self, intent: RoutingIntent, now: Instant) -> Result<(), DaemonError> {
        match intent {
            RoutingIntent::Connect(params) => {
                let addressing = setup::tun_addressing(&params);
                if self.host.anchors().has_lost_flows()
                    && self
                        .tun
                        .as_ref()
                        .is_some_and(|t| t.addressing != addressing)
                {
                    self.reset_lost_flows(now)?;
                }
                self.bring_up(addressing).await?;
                if let Some(tun) = &self.tun {
                    self.host.handle_tun_ready(tun.name.clone());
                }
            }
            RoutingIntent::TunMtu(mtu) => {
                if let Some(tun) = &self.tun {
                    match self.netlink.set_mtu(tun.index, mtu).await {
                        Ok(()) => {
                            tracing::info!(tun = %tun.name, mtu, "TUN MTU follows the path MTU")
                        }
                        Err(e) => {
                            tracing::warn!(error = %display_chain(&e), "TUN MTU not changed")
                        }
                    }
                }
            }
            RoutingIntent::Bypass(uids) => {
                self.bypass = uids;
                let tun = self.tun_route();
                match self.netlink.ensure(&self.key, &self.bypass, tun).await {
                    Ok(done) => {
                        tracing::info!(uids = ?self.bypass, added = done.added, removed = done.removed, "bypass rules installed")
                    }
                    Err(e) => {
                        tracing::warn!(error = %display_chain(&e), "bypass rules not installed")
                    }
                }
            }
        }
        Ok(())
    }

    /// Apps whose flows were lost when the host moved to another anchor answered the core's
    /// ACKs through the old TUN: their resets must go out before a TUN with the new anchor's
    /// addresses replaces it, while the old addresses still exist.
    fn reset_lost_flows(&mut self, now: Instant) -> Result<(), DaemonError> {
        self.read_tun(now)?;
        self.write_resets();
        Ok(())
    }

    /// Writes the resets the core has for the TUN (dropped when there is no TUN).
    fn write_resets(&mut self) {
        while let Some(n) = self.host.poll_tun_write(&mut self.rst_buf) {
            if let Some(tun) = &mut self.tun {
                tun.tx.push(&self.rst_buf[..n]);
                if let (n, None) = tun.tx.flush(&tun.device) {
                    self.counters.resets_sent += n as u64;
                }
            }
        }
    }

    /// The TUN's default routes, once it exists.
    fn tun_route(&self) -> Option<TunRoute> {
        self.tun.as_ref().map(|t| TunRoute {
            index: t.index,
            ipv6: t.addressing.ipv6.is_some(),
        })
    }

    /// Adds whatever of the layout is missing (all of it at start).
    async fn ensure_routing(&mut self) -> Result<crate::routing::Ensured, RoutingError> {
        let tun = self.tun_route();
        self.netlink.ensure(&self.key, &self.bypass, tun).await
    }

    /// Puts back what someone deleted (netd rewriting its rules); the session and the flows
    /// are not touched. A failure is logged and retried on the next check.
    /// Puts back routing entries someone deleted; false when that failed (retried on the
    /// next recheck tick).
    async fn repair_routing(&mut self) -> bool {
        let started = std::time::Instant::now();
        match self.ensure_routing().await {
            Ok(done) => {
                if done.added > 0 {
                    tracing::warn!(
                        added = done.added,
                        took_ms = started.elapsed().as_millis() as u64,
                        "routing entries were deleted by someone else; put back"
                    );
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %display_chain(&e), "cannot repair routing");
                false
            }
        }
    }

    async fn log_rules(&self) {
        for family in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            for rule in self.netlink.rules(family).await.unwrap_or_default() {
                if crate::routing::is_our_rule(&rule, &self.key) {
                    tracing::info!(rule = %describe_rule(&rule), "routing rule installed");
                }
            }
        }
    }

    /// Creates and configures the TUN and routes through it; if a new session brings
    /// different addressing, starts over with the new one (meanwhile the unreachable defaults
    /// hold the captured traffic).
    async fn bring_up(
        &mut self,
        addressing: crate::routing::TunAddressing,
    ) -> Result<(), DaemonError> {
        if let Some(tun) = &self.tun {
            if tun.addressing == addressing {
                return Ok(());
            }
            tracing::warn!("the anchor assigned new addresses; recreating the TUN");
            // Closing the last fd of a non-persistent TUN deletes it and its routes.
            self.tun = None;
        }
        let tun = Tun::open(
            &self.config.tun,
            addressing,
            self.config.offload,
            &self.netlink,
        )
        .await?;
        let mtu = self.netlink.link_mtu(tun.index).await?;
        tracing::info!(tun = %tun.name, index = tun.index, ?mtu, offload = tun.offload.as_str(), "TUN up");
        enable_src_valid_mark();
        self.tun = Some(tun);
        let done = self.ensure_routing().await?;
        tracing::info!(added = done.added, "traffic routed through the TUN");
        Ok(())
    }

    /// Removes the routing and closes the TUN.
    async fn cleanup(&mut self) -> Result<(), DaemonError> {
        let removed = self.netlink.remove(&self.key).await?;
        tracing::info!(entries = removed, "routing restored");
        // Closing the last fd of a non-persistent TUN deletes the device.
        self.tun = None;
        Ok(())
    }
}

/// The next control request, or never when no control socket is attached (or it closed).
async fn next_control(control: &mut Option<LoopEnd>) -> ControlRequest {
    if let Some(end) = control
        && let Some(request) = end.requests.recv().await
    {
        return request;
    }
    std::future::pending().await
}

/// Writes the packets waiting for the TUN. A refused write drops its packets, as a full queue
/// would; the tunnelled transport recovers.
fn flush_tun(tun: &mut Tun, counters: &mut DriverCounters) {
    if let (_, Some(e)) = tun.tx.flush(&tun.device) {
        counters.tun_write_errors += 1;
        tracing::debug!(tun = %tun.name, error = %e, "TUN write failed");
    }
}

/// Sends `datagram` on `path`'s socket; false when there is no socket or the kernel refused.
/// UDP: a full buffer drops the datagram, as a router would.
fn send_on(uplinks: &mut [Uplink], path: PathId, datagram: &[u8]) -> bool {
    let Some(socket) = uplinks
        .get_mut(usize::from(path.0))
        .and_then(|u| u.socket.as_mut())
    else {
        return false;
    };
    let Some(anchor) = socket.peer() else {
        return false;
    };
    match socket.send_one(anchor, datagram) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(%path, error = %e, "send failed");
            false
        }
    }
}

/// Datagrams of one uplink waiting to go out together. A batch never spans two uplinks: a
/// datagram for another path (a moved flow) first sends what waits on the old one.
#[derive(Debug, Default)]
struct UplinkTx {
    batch: TxBatch,
    path: Option<PathId>,
}

impl UplinkTx {
    /// Queues `datagram` on `path`; returns the datagrams lost meanwhile (no socket, refused).
    fn queue(&mut self, uplinks: &mut [Uplink], path: PathId, datagram: &[u8]) -> u64 {
        let mut lost = 0;
        if self.path != Some(path) {
            lost += self.flush(uplinks);
            self.path = Some(path);
        }
        let Some(socket) = uplinks
            .get_mut(usize::from(path.0))
            .and_then(|u| u.socket.as_mut())
        else {
            return lost + 1;
        };
        let Some(anchor) = socket.peer() else {
            return lost + 1;
        };
        let flushed = batch::queue(socket, &mut self.batch, anchor, datagram);
        if let Some(e) = &flushed.error {
            tracing::debug!(%path, error = %e, lost = flushed.lost, "send failed");
        }
        lost + flushed.lost as u64
    }

    /// Sends what waits; returns the datagrams lost.
    fn flush(&mut self, uplinks: &mut [Uplink]) -> u64 {
        let Some(path) = self.path else {
            return 0;
        };
        if self.batch.is_empty() {
            return 0;
        }
        let Some(socket) = uplinks
            .get_mut(usize::from(path.0))
            .and_then(|u| u.socket.as_mut())
        else {
            return self.batch.discard() as u64;
        };
        match socket.flush(&mut self.batch) {
            Ok(_) => 0,
            Err((lost, e)) => {
                tracing::debug!(%path, error = %e, lost, "send failed");
                lost as u64
            }
        }
    }
}

/// Ready when one of the uplink sockets is readable (or has an error to report); scans from
/// `start` so a busy uplink cannot hide the others.
fn poll_uplinks(uplinks: &[Uplink], start: usize, cx: &mut std::task::Context<'_>) -> Poll<usize> {
    let n = uplinks.len();
    for k in 0..n {
        let i = (start + k) % n;
        if let Some(socket) = &uplinks[i].socket
            && socket.poll_recv_ready(cx).is_ready()
        {
            return Poll::Ready(i);
        }
    }
    Poll::Pending
}

/// wg-quick sets `net.ipv4.conf.all.src_valid_mark=1` so reverse-path checks see marks; best
/// effort (written through /proc, no shell).
fn enable_src_valid_mark() {
    let path = "/proc/sys/net/ipv4/conf/all/src_valid_mark";
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    if let Err(e) = std::fs::write(path, "1") {
        tracing::debug!(error = %e, "could not set src_valid_mark");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An uplink whose socket is connected to a fresh receiver; returns both.
    async fn uplink_to_receiver(index: u8) -> (Uplink, tokio::net::UdpSocket) {
        let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket
            .connect(receiver.local_addr().unwrap())
            .await
            .unwrap();
        socket.writable().await.unwrap();
        let uplink = Uplink {
            config: UplinkConfig {
                name: format!("u{index}"),
                interface: format!("if{index}"),
                path_index: index,
                metered: false,
                sleep: false,
                cap: None,
            },
            id: UplinkId::new(index).unwrap(),
            socket: Some(BatchSocket::new(socket).unwrap()),
        };
        (uplink, receiver)
    }

    async fn received(r: &tokio::net::UdpSocket, count: usize) -> Vec<u8> {
        let mut firsts = Vec::new();
        let mut buf = vec![0u8; 65_535];
        for _ in 0..count {
            let n = tokio::time::timeout(Duration::from_secs(2), r.recv(&mut buf))
                .await
                .expect("a datagram in time")
                .unwrap();
            assert_eq!(n, 1200, "datagrams arrive one by one, never merged");
            firsts.push(buf[0]);
        }
        firsts
    }

    #[tokio::test]
    async fn a_tun_batch_split_across_two_uplinks_sends_each_datagram_on_its_own_uplink() {
        let (wifi, wifi_rx) = uplink_to_receiver(0).await;
        let (cell, cell_rx) = uplink_to_receiver(1).await;
        let mut uplinks = vec![wifi, cell];
        let mut tx = UplinkTx::default();
        // The segments of one read, their flow moved to cell after the second, then back.
        let paths = [0u8, 0, 1, 1, 0];
        let mut lost = 0;
        for (i, path) in paths.iter().enumerate() {
            lost += tx.queue(&mut uplinks, PathId(*path), &[i as u8; 1200]);
        }
        lost += tx.flush(&mut uplinks);
        assert_eq!(lost, 0);
        assert_eq!(received(&wifi_rx, 3).await, [0, 1, 4]);
        assert_eq!(received(&cell_rx, 2).await, [2, 3]);
    }
}
