//! The daemon's event loop: one tokio task that owns the protocol core, the uplink sockets, the
//! TUN and the routing, and feeds the core in its documented order once per turn:
//!
//! 1. wait for one of: TUN readable, an uplink socket readable, the core's timer, the uplink
//!    re-check tick, shutdown;
//! 2. sample `now` (CLOCK_BOOTTIME) once;
//! 3. handle that source in a batch of at most [`BATCH`] packets, reading with `try_recv` until
//!    `WouldBlock` into buffers allocated once at start (no per-packet allocation); a bad packet
//!    is dropped and counted, never aborts the batch;
//! 4. run the core's timers if due, drain `poll_transmit` (sent on the path's socket) and
//!    `poll_event` (the TUN and routing come up on `Connected`), re-arm the timer.
//!
//! Uplinks whose interface is missing or down are reported down to the core and re-checked every
//! [`RECHECK_INTERVAL`]. Path choice for TUN traffic is per flow ([`crate::flows`]): a known
//! flow's packets go on its uplink; a new flow's first packets wait while the
//! [`crate::appid`] worker thread finds its app (its answers are one more wake source), then the
//! policy decides. Flows are decided again when an uplink comes or goes and when the policy is
//! reloaded (SIGHUP, or [`Daemon::reload_policy`]). This module never parses protocol messages.

use std::future::{Future, poll_fn};
use std::io;
use std::task::Poll;
use std::time::Duration;

use serde::Serialize;
use upmt_policy::{Policy, Route, UplinkStatus};
use upmt_sys::display_chain;

mod control;

use crate::appid::{self, Worker};
use crate::config::{Config, PolicyLoadError, UplinkConfig};
use crate::control::proto::Event as ControlEvent;
use crate::control::{ControlRequest, LoopEnd};
use crate::core::{self, Client, Event, HEADER_LEN, Instant, PathId, TAG_LEN};
use crate::flows::{Flows, FlowsSnapshot, Outcome, TunAction};
use crate::routing::{Netlink, RoutingError, RoutingKey, describe_rule};
use crate::tun::{Tun, TunError};
use crate::uplink::{self, LinkState};

/// Packets handled per source per loop turn, so one busy source cannot starve the others.
pub const BATCH: usize = 64;
/// How often uplinks that are down are looked at again (until link events come from netlink).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(3);
/// Largest datagram or packet handled: a UDP payload's maximum, so GRO/GSO can come later.
const MAX_PACKET: usize = 65_535;
/// How often flows expire and stalled lookups are given up.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Reading the TUN failed in a way that is not a single bad packet.
    #[error("reading TUN {name} failed")]
    TunRead {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Counters of packets the driver itself dropped (the core counts its own drops).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// TUN packets with no usable path.
    pub tun_no_path: u64,
    /// Datagrams the kernel refused to send (buffer full, link gone).
    pub send_errors: u64,
    /// Receive errors on uplink sockets (ICMP errors reported on a connected socket, ...).
    pub recv_errors: u64,
    /// Inner packets the TUN refused, or that arrived before the TUN existed.
    pub tun_write_errors: u64,
    /// TCP resets written into the TUN for blocked flows.
    pub resets_sent: u64,
}

struct Uplink {
    config: UplinkConfig,
    path: PathId,
    socket: Option<tokio::net::UdpSocket>,
    /// The core's view (PathUp/PathDown events).
    live: bool,
}

/// The mobile host daemon's state.
pub struct Daemon {
    config: Config,
    client: Client,
    netlink: Netlink,
    key: RoutingKey,
    uplinks: Vec<Uplink>,
    tun: Option<Tun>,
    routing_installed: bool,
    /// TUN reads land at `HEADER_LEN` so the core encrypts in place.
    tun_buf: Box<[u8]>,
    rx_buf: Box<[u8]>,
    tx_buf: Box<[u8]>,
    /// Where the uplink readiness scan starts, rotated for fairness.
    next_uplink: usize,
    counters: DriverCounters,
    flows: Flows,
    /// The app lookup thread; `None` when sock_diag is unavailable (every owner unknown).
    worker: Option<Worker>,
    /// The uplinks as the policy sees them, refreshed before each decision.
    statuses: Vec<UplinkStatus>,
    uplinks_changed: bool,
    /// Queued packets of a flow just classified (pooled buffers, returned to the flow layer).
    released: Vec<Vec<u8>>,
    rst_buf: Box<[u8]>,
    bypass_uids: Vec<u32>,
    /// The control socket's requests and watchers (see the `control` child module).
    control: Option<LoopEnd>,
}

enum Wake {
    Shutdown,
    Recheck,
    Housekeeping,
    Hangup,
    Timer,
    Tun,
    Uplink(usize),
    Answer(appid::Answer),
    Control(ControlRequest),
    Link(crate::linkwatch::LinkEvent),
}

/// One tunnel (uplink) as the control socket shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TunnelInfo {
    /// Uplink name.
    pub name: String,
    /// Its interface.
    pub interface: String,
    /// The protocol path id.
    pub path: u8,
    /// Has a socket (interface up).
    pub available: bool,
    /// The core reports the path up.
    pub up: bool,
    /// Smoothed RTT.
    pub rtt_ms: Option<f64>,
    /// Smoothed probe loss, 0..=1.
    pub loss: Option<f32>,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// Authenticated datagrams received.
    pub rx_packets: u64,
}

/// The daemon's state at one moment: tunnels, flows, apps, counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// Every uplink, in config order.
    pub tunnels: Vec<TunnelInfo>,
    /// Flows and apps.
    pub flows: FlowsSnapshot,
}

impl Daemon {
    /// Prepares the daemon: a netlink connection, leftovers of a previous run removed, the
    /// protocol core. Must run inside tokio. Opens no socket yet.
    pub async fn new(config: Config) -> Result<Daemon, DaemonError> {
        let netlink = Netlink::new()?;
        let key = RoutingKey {
            table: config.table,
            fwmark: config.fwmark,
            priority: config.rule_priority,
        };
        let stale = netlink.remove(&key).await?;
        if stale > 0 {
            tracing::warn!(
                entries = stale,
                "removed routing left behind by a previous run"
            );
        }
        let policy = config.load_policy()?;
        tracing::info!(path = ?config.policy, rules = policy.rules().len(), "policy loaded");
        let worker = match Worker::spawn(appid::ResolverConfig::default()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %display_chain(&e), "app lookup unavailable: every flow gets the default rule");
                None
            }
        };
        let statuses = vec![UplinkStatus::default(); config.uplinks.len()];
        let client = core::client(&config, core::now());
        let uplinks = config
            .uplinks
            .iter()
            .map(|u| Uplink {
                config: u.clone(),
                path: PathId(u.path_index),
                socket: None,
                live: false,
            })
            .collect();
        Ok(Daemon {
            config,
            client,
            netlink,
            key,
            uplinks,
            tun: None,
            routing_installed: false,
            tun_buf: vec![0; HEADER_LEN + MAX_PACKET + TAG_LEN].into_boxed_slice(),
            rx_buf: vec![0; MAX_PACKET].into_boxed_slice(),
            tx_buf: vec![0; MAX_PACKET].into_boxed_slice(),
            next_uplink: 0,
            counters: DriverCounters::default(),
            statuses,
            flows: Flows::new(policy),
            worker,
            uplinks_changed: false,
            released: Vec::with_capacity(crate::flows::MAX_PENDING_PACKETS),
            rst_buf: vec![0; 128].into_boxed_slice(),
            bypass_uids: Vec::new(),
            control: None,
        })
    }

    /// Reads the policy file again. On success the new policy applies to new and existing
    /// flows (returns how many flows changed) and the bypass rules are redone; on error the old
    /// policy stays and the error (file:line:column) is returned.
    pub async fn reload_policy(&mut self) -> Result<usize, PolicyLoadError> {
        let policy = self.config.load_policy()?;
        let rules = policy.rules().len();
        self.flows.set_policy(policy);
        self.refresh_statuses();
        let changed = self
            .flows
            .redecide(&self.statuses, core::now().as_duration());
        tracing::info!(rules, flows_changed = changed, "policy reloaded");
        if self.routing_installed {
            self.install_bypass().await;
        }
        Ok(changed)
    }

    /// The flow layer (read only), for queries.
    pub fn flows(&self) -> &Flows {
        &self.flows
    }

    /// Tunnels, flows and apps now.
    pub fn snapshot(&self) -> Snapshot {
        let names: Vec<String> = self.uplinks.iter().map(|u| u.config.name.clone()).collect();
        let tunnels = self
            .uplinks
            .iter()
            .map(|u| {
                let stats = self.client.path_stats(u.path);
                TunnelInfo {
                    name: u.config.name.clone(),
                    interface: u.config.interface.clone(),
                    path: u.path.0,
                    available: u.socket.is_some(),
                    up: u.live,
                    rtt_ms: stats.and_then(|s| s.rtt).map(|r| r.as_secs_f64() * 1e3),
                    loss: stats.map(|s| s.loss),
                    tx_packets: stats.map_or(0, |s| s.tx_packets),
                    rx_packets: stats.map_or(0, |s| s.rx_packets),
                }
            })
            .collect();
        Snapshot {
            tunnels,
            flows: self.flows.snapshot(&names, core::now().as_duration()),
        }
    }

    /// The uids whose traffic bypasses the tunnel: `uid = N` bypass rules, and bypass rules by
    /// app name whose uid Android's packages.list gives.
    fn bypass_uids(policy: &Policy) -> Vec<u32> {
        let packages = appid::android::Packages::at(appid::android::PACKAGES_LIST);
        let mut uids: Vec<u32> = policy
            .rules()
            .iter()
            .filter(|r| r.route == Route::Bypass)
            .filter_map(|r| match &r.matcher {
                upmt_policy::Matcher::Uid(u) => Some(*u),
                upmt_policy::Matcher::App(name) => packages.uid_of(name),
                upmt_policy::Matcher::Glob(..) => None,
            })
            .collect();
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    async fn install_bypass(&mut self) {
        let uids = Self::bypass_uids(self.flows.policy());
        match self.netlink.install_bypass(&self.key, &uids).await {
            Ok(n) => {
                if !uids.is_empty() || !self.bypass_uids.is_empty() {
                    tracing::info!(?uids, rules = n, "bypass rules installed");
                }
                self.bypass_uids = uids;
            }
            Err(e) => tracing::warn!(error = %display_chain(&e), "bypass rules not installed"),
        }
    }

    fn refresh_statuses(&mut self) {
        for (s, u) in self.statuses.iter_mut().zip(&self.uplinks) {
            // The core's hold-down keeps a returning uplink out until it proved stable.
            s.up = u.live && u.socket.is_some() && self.client.path_usable(u.path, core::now());
            s.rtt = self.client.path_stats(u.path).and_then(|p| p.rtt);
        }
    }

    /// The driver's own drop counters.
    pub fn counters(&self) -> DriverCounters {
        self.counters
    }

    /// Runs until `shutdown` completes or a fatal error, then removes the routing it installed.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let result = self.run_loop(shutdown).await;
        let cleanup = self.cleanup().await;
        result.and(cleanup)
    }

    async fn run_loop(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Link changes from netlink re-check the uplinks at once; the RECHECK_INTERVAL poll
        // stays as a safety net (and the only source if netlink is unavailable).
        let mut links = crate::linkwatch::spawn()
            .map_err(|e| tracing::warn!(error = %display_chain(&e), "no link events; uplinks are polled only"))
            .ok();
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: reload the policy through the control socket");
                None
            }
        };
        loop {
            let before = core::now();
            let deadline = self.client.poll_timeout().map(|(at, _why)| at);
            let wake = {
                let timer = async {
                    match deadline {
                        Some(at) => tokio::time::sleep(core::until(at, before)).await,
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
                let answer = async {
                    match &mut self.worker {
                        Some(w) => w.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let control = Self::next_control(&mut self.control);
                let link = async {
                    match &mut links {
                        Some(l) => l.recv().await,
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
                    _ = recheck.tick() => Wake::Recheck,
                    _ = housekeeping.tick() => Wake::Housekeeping,
                    Some(()) = hup => Wake::Hangup,
                    Some(e) = link => Wake::Link(e),
                    Some(a) = answer => Wake::Answer(a),
                    r = control => Wake::Control(r),
                    () = timer => Wake::Timer,
                    // An error here resurfaces from try_recv, where it is handled.
                    _ = tun_ready => Wake::Tun,
                    i = uplink_ready => Wake::Uplink(i),
                }
            };
            let now = core::now();
            match wake {
                Wake::Shutdown => {
                    tracing::info!("shutting down");
                    return Ok(());
                }
                Wake::Recheck => self.recheck_uplinks(now),
                Wake::Link(e) => {
                    // An uplink whose link or address went away loses its socket at once (a
                    // connected socket keeps a vanished source address); recheck reopens it.
                    if e.is_loss() {
                        tracing::info!(event = ?e, "link change");
                        for u in &mut self.uplinks {
                            if Some(u.config.interface.as_str()) == e.ifname()
                                && u.socket.take().is_some()
                            {
                                tracing::warn!(uplink = %u.config.name, "uplink lost (netlink)");
                                u.live = false;
                                self.uplinks_changed = true;
                                self.client.handle_path_down(u.path, now);
                            }
                        }
                    }
                    self.recheck_uplinks(now);
                }
                Wake::Housekeeping => {
                    self.flows.housekeeping(now.as_duration());
                    // A returning uplink's hold-down ends without an event of its own.
                    let client = &self.client;
                    if self.uplinks.iter().zip(&self.statuses).any(|(u, s)| {
                        s.up != (u.live && u.socket.is_some() && client.path_usable(u.path, now))
                    }) {
                        self.uplinks_changed = true;
                    }
                }
                Wake::Hangup => {
                    tracing::info!("SIGHUP: reloading the policy");
                    if let Err(e) = self.reload_and_publish().await {
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
                Wake::Control(r) => self.answer_control(r, now).await,
                Wake::Timer => {}
                Wake::Tun => self.read_tun(now)?,
                Wake::Uplink(i) => {
                    self.next_uplink = (i + 1) % self.uplinks.len().max(1);
                    self.read_uplink(i, now);
                }
            }
            // Due timers run on every turn, not only on the timer's wake: the tokio timer does
            // not count suspended time, CLOCK_BOOTTIME does.
            if self.client.poll_timeout().is_some_and(|(at, _)| at <= now) {
                // Read what already waits on the uplinks first: a loop that ran late under CPU
                // pressure must not call a path dead whose answers sit unread in its socket.
                for i in 0..self.uplinks.len() {
                    self.read_uplink(i, now);
                }
                self.client.handle_timeout(now);
            }
            self.drain(now).await?;
            if std::mem::take(&mut self.uplinks_changed) {
                self.refresh_statuses();
                let before = self.before_redecide();
                let changed = self.flows.redecide(&self.statuses, now.as_duration());
                self.after_redecide(before);
                if changed > 0 {
                    tracing::info!(
                        flows = changed,
                        "flows decided again after an uplink change"
                    );
                }
            }
        }
    }

    /// A flow's owner is known: decide, then send (or reset) the packets that waited for it.
    fn classified(&mut self, answer: appid::Answer, now: Instant) {
        self.refresh_statuses();
        let mut released = std::mem::take(&mut self.released);
        let outcome = self.flows.classified(
            answer.key,
            &answer.owner,
            &self.statuses,
            now.as_duration(),
            &mut released,
        );
        tracing::trace!(key = ?answer.key, took_us = answer.took.as_micros() as u64, ?outcome, "classified");
        for packet in &released {
            match outcome {
                Outcome::Tunnel(path) => self.send_packet(path, packet, now),
                Outcome::Blocked => self.reset(packet),
                Outcome::Held | Outcome::Stale => {}
            }
        }
        self.flows.recycle(&mut released);
        self.released = released;
    }

    /// Encapsulates one queued packet on `path` and sends it.
    fn send_packet(&mut self, path: PathId, packet: &[u8], now: Instant) {
        let n = packet.len();
        let Some(slot) = self.tun_buf.get_mut(HEADER_LEN..HEADER_LEN + n) else {
            return;
        };
        slot.copy_from_slice(packet);
        self.encapsulate_and_send(path, n, now);
    }

    /// Encapsulates the packet at `tun_buf[HEADER_LEN..HEADER_LEN + n]` on `path` and sends it.
    fn encapsulate_and_send(&mut self, path: PathId, n: usize, now: Instant) {
        if self
            .uplinks
            .get(usize::from(path.0))
            .is_none_or(|u| u.socket.is_none())
        {
            self.counters.tun_no_path += 1;
            return;
        }
        match self.client.encapsulate(path, &mut self.tun_buf, n, now) {
            Ok(len) => {
                if !send_on(&self.uplinks, path, &self.tun_buf[..len]) {
                    self.counters.send_errors += 1;
                }
            }
            // The core counted it (no session yet, too big, ...).
            Err(reason) => tracing::debug!(reason = reason.as_str(), "TUN packet dropped"),
        }
    }

    /// Answers a TCP segment of a blocked flow with a reset written into the TUN.
    fn reset(&mut self, packet: &[u8]) {
        let Some(tun) = &self.tun else { return };
        if let Some(n) = crate::rst::tcp_reset(packet, &mut self.rst_buf)
            && tun.device.try_send(&self.rst_buf[..n]).is_ok()
        {
            self.counters.resets_sent += 1;
        }
    }

    /// Opens sockets for uplinks whose interface came up, closes those whose interface went away,
    /// and tells the core.
    fn recheck_uplinks(&mut self, now: Instant) {
        let (anchor, fwmark) = (self.config.anchor, self.config.fwmark);
        for u in &mut self.uplinks {
            let state = uplink::link_state(&u.config.interface);
            match (&u.socket, state) {
                (None, LinkState::Up) => match uplink::open(&u.config.interface, anchor, fwmark) {
                    Ok(socket) => {
                        tracing::info!(uplink = %u.config.name, interface = %u.config.interface, path = %u.path, "uplink available");
                        u.socket = Some(socket);
                        self.client.handle_path_up(u.path, now);
                    }
                    Err(e) => {
                        tracing::warn!(uplink = %u.config.name, error = %display_chain(&e), "uplink not usable yet; retrying");
                    }
                },
                (Some(_), LinkState::Missing | LinkState::Down) => {
                    tracing::warn!(uplink = %u.config.name, interface = %u.config.interface, ?state, "uplink lost");
                    // A new socket later picks the interface's new source address.
                    u.socket = None;
                    u.live = false;
                    self.uplinks_changed = true;
                    self.client.handle_path_down(u.path, now);
                }
                (None, LinkState::Missing | LinkState::Down) => {
                    tracing::debug!(uplink = %u.config.name, ?state, "uplink still unavailable");
                }
                (Some(_), LinkState::Up) => {}
            }
        }
    }

    fn read_tun(&mut self, now: Instant) -> Result<(), DaemonError> {
        for _ in 0..BATCH {
            let Some(tun) = &self.tun else { return Ok(()) };
            let n = match tun
                .device
                .try_recv(&mut self.tun_buf[HEADER_LEN..HEADER_LEN + MAX_PACKET])
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(DaemonError::TunRead {
                        name: tun.name.clone(),
                        source,
                    });
                }
            };
            if n == 0 {
                continue;
            }
            let action = self
                .flows
                .on_tun_packet(&self.tun_buf[HEADER_LEN..HEADER_LEN + n], now.as_duration());
            match action {
                TunAction::Send(path) => self.encapsulate_and_send(path, n, now),
                TunAction::Queued { key, new: true } => match &self.worker {
                    Some(w) => {
                        if !w.request(key) {
                            self.flows.lookup_refused(&key);
                        }
                    }
                    // No lookup possible: decide at once with an unknown owner.
                    None => self.classified(
                        appid::Answer {
                            key,
                            owner: appid::Owner::unknown(),
                            took: Duration::ZERO,
                        },
                        now,
                    ),
                },
                TunAction::Queued { new: false, .. } | TunAction::Drop => {}
                TunAction::Reset => {
                    let Some(tun) = &self.tun else { continue };
                    if let Some(len) = crate::rst::tcp_reset(
                        &self.tun_buf[HEADER_LEN..HEADER_LEN + n],
                        &mut self.rst_buf,
                    ) && tun.device.try_send(&self.rst_buf[..len]).is_ok()
                    {
                        self.counters.resets_sent += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn read_uplink(&mut self, index: usize, now: Instant) {
        let Some(u) = self.uplinks.get(index) else {
            return;
        };
        let path = u.path;
        for _ in 0..BATCH {
            let Some(socket) = &self.uplinks[index].socket else {
                return;
            };
            let n = match socket.try_recv(&mut self.rx_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Connected UDP sockets report ICMP errors (port unreachable while the anchor
                    // restarts) here once; the socket stays usable.
                    self.counters.recv_errors += 1;
                    tracing::debug!(%path, error = %e, "uplink receive error");
                    continue;
                }
            };
            match self
                .client
                .handle_datagram(path, &mut self.rx_buf[..n], now)
            {
                Ok(Some(range)) => {
                    let written = match (&self.tun, self.rx_buf.get(range)) {
                        (Some(tun), Some(packet)) => {
                            self.flows.on_downlink(packet, path, now.as_duration());
                            tun.device.try_send(packet).is_ok()
                        }
                        _ => false,
                    };
                    if !written {
                        self.counters.tun_write_errors += 1;
                    }
                }
                Ok(None) => {}
                Err(reason) => tracing::debug!(%path, reason = reason.as_str(), "datagram dropped"),
            }
        }
    }

    /// Drains the core's outputs: datagrams to send, then events, until both are empty.
    async fn drain(&mut self, now: Instant) -> Result<(), DaemonError> {
        loop {
            while let Some(t) = self.client.poll_transmit(now, &mut self.tx_buf) {
                let sent = self
                    .tx_buf
                    .get(..t.len)
                    .is_some_and(|d| send_on(&self.uplinks, t.path, d));
                if !sent {
                    self.counters.send_errors += 1;
                }
            }
            let Some(event) = self.client.poll_event() else {
                return Ok(());
            };
            if matches!(event, Event::PathUp(_) | Event::PathDown(_)) {
                self.uplinks_changed = true;
            }
            self.handle_event(event).await?;
        }
    }

    async fn handle_event(&mut self, event: Event) -> Result<(), DaemonError> {
        match event {
            Event::Connected(params) => {
                self.publish([ControlEvent::SessionUp]);
                tracing::info!(
                    virtual_ipv4 = %format_args!("{}/{}", params.virtual_ipv4, params.prefix4),
                    virtual_ipv6 = ?params.virtual_ipv6,
                    mtu = params.mtu,
                    "connected to the anchor"
                );
                self.bring_up(core::tun_addressing(&params)).await?;
            }
            Event::Disconnected => {
                // TUN and routes stay: traffic is dropped rather than leaked while re-handshaking.
                tracing::warn!("session lost; handshaking again");
                self.publish([ControlEvent::SessionDown]);
            }
            Event::PathUp(path) => {
                if let Some(u) = self.uplinks.iter_mut().find(|u| u.path == path) {
                    u.live = true;
                    tracing::info!(%path, uplink = %u.config.name, "path up");
                    let uplink = u.config.name.clone();
                    self.publish([ControlEvent::TunnelUp { uplink }]);
                }
            }
            Event::PathDown(path) => {
                if let Some(u) = self.uplinks.iter_mut().find(|u| u.path == path) {
                    u.live = false;
                    tracing::warn!(%path, uplink = %u.config.name, "path down");
                    let uplink = u.config.name.clone();
                    self.publish([ControlEvent::TunnelDown { uplink }]);
                }
            }
            Event::Rekeyed => tracing::info!("session rekeyed"),
        }
        Ok(())
    }

    /// Creates and configures the TUN and installs routing; if a new session brings different
    /// addressing, starts over with the new one.
    async fn bring_up(
        &mut self,
        addressing: crate::routing::TunAddressing,
    ) -> Result<(), DaemonError> {
        if let Some(tun) = &self.tun {
            if tun.addressing == addressing {
                return Ok(());
            }
            tracing::warn!("the anchor assigned new addresses; recreating the TUN");
            self.cleanup().await?;
        }
        let tun = Tun::open(&self.config.tun, addressing, &self.netlink).await?;
        let mtu = self.netlink.link_mtu(tun.index).await?;
        tracing::info!(tun = %tun.name, index = tun.index, ?mtu, "TUN up");
        enable_src_valid_mark();
        self.netlink
            .install(&self.key, tun.index, addressing.ipv6.is_some())
            .await?;
        self.routing_installed = true;
        self.install_bypass().await;
        for family in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            for rule in self.netlink.rules(family).await.unwrap_or_default() {
                if crate::routing::is_our_rule(&rule, &self.key) {
                    tracing::info!(rule = %describe_rule(&rule), "routing rule installed");
                }
            }
        }
        self.tun = Some(tun);
        Ok(())
    }

    /// Removes the routing and closes the TUN.
    async fn cleanup(&mut self) -> Result<(), DaemonError> {
        if self.routing_installed || self.tun.is_some() {
            let removed = self.netlink.remove(&self.key).await?;
            tracing::info!(entries = removed, "routing restored");
            self.routing_installed = false;
        }
        // Closing the last fd of a non-persistent TUN deletes the device.
        self.tun = None;
        Ok(())
    }
}

/// Sends `datagram` on `path`'s socket; false when there is no socket or the kernel refused.
/// UDP: a full buffer drops the datagram, as a router would.
fn send_on(uplinks: &[Uplink], path: PathId, datagram: &[u8]) -> bool {
    let Some(socket) = uplinks
        .get(usize::from(path.0))
        .and_then(|u| u.socket.as_ref())
    else {
        return false;
    };
    match socket.try_send(datagram) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(%path, error = %e, "send failed");
            false
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
