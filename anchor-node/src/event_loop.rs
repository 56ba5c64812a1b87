//! The anchor's event loop: one task that owns the core and feeds it packets, time and timer
//! expiries, and hands the core's output to the socket and the TUN.
//!
//! One turn: wait for one wake-up (UDP readable, TUN readable, the core's timer, a metrics
//! scrape, a control request, SIGUSR1, SIGHUP, the stats tick, shutdown), sample CLOCK_BOOTTIME once, handle a batch of at
//! most [`BATCH`] inputs into buffers allocated once at start, then drain `poll_transmit`, drain
//! `poll_event` and re-arm the one timer from `poll_timeout`. A bad packet is logged at debug
//! and the batch goes on: the core counts the drop, this loop never counts it again.
//!
//! The loop holds no per-packet heap allocation. The UDP side is batched (`upmt_sys::batch`):
//! one receive syscall takes many datagrams (recvmmsg, GRO), and the datagrams a TUN batch
//! produces for one peer go out as one GSO send. The core still sees one datagram per call. The
//! TUN side is batched too (`upmt_sys::tunbatch`): with offload a read hands over a TCP
//! super-packet split into MTU packets, each encapsulated on its own, and the packets decrypted
//! from one UDP receive batch are written together, coalesced per flow.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tun_rs::AsyncDevice;
use upmt_proto::anchor::{Anchor, Event};
use upmt_proto::time::Instant;
use upmt_proto::{DropReason, HEADER_LEN, TAG_LEN};
use upmt_sys::batch::{self, BatchSocket, RxBatch, TxBatch};
use upmt_sys::clock;
use upmt_sys::tunbatch::{OffloadState, TunRx, TunTx};

use crate::control::ControlRequest;
use crate::metrics::{self, CoreStats, PeerSnapshot, Snapshot};
use crate::nat;
use crate::ops::Ops;

/// Inputs handled per readiness event before the loop looks at other sources again.
pub const BATCH: usize = 64;

/// UDP receive calls per readiness event: [`BATCH`] datagrams without GRO (more with it).
const RECV_CALLS: usize = BATCH.div_ceil(batch::RX_SLOTS);

/// Largest UDP payload; also the largest TUN packet once offload hands over 64 KiB packets.
const MAX_PACKET: usize = 65_535;

/// How often the counters are logged at debug level without SIGUSR1.
const STATS_EVERY: Duration = Duration::from_secs(60);

/// At most one warning per this interval when a bound is reached (a flood would otherwise turn
/// into a log flood).
const BOUND_WARN_EVERY: Duration = Duration::from_secs(10);

/// Why the loop stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("udp socket failed")]
    Udp(#[source] io::Error),
    #[error("tun device failed")]
    Tun(#[source] io::Error),
    #[error("cannot install the SIGUSR1 handler")]
    Signal(#[source] io::Error),
    #[error("cannot install the SIGHUP handler")]
    SignalHup(#[source] io::Error),
}

/// Counters the driver keeps itself (the core keeps drops and per-peer traffic).
#[derive(Clone, Copy, Debug, Default)]
struct DriverCounters {
    udp_rx: u64,
    udp_tx: u64,
    tun_rx: u64,
    tun_tx: u64,
    io_errors: u64,
}

enum Wake {
    Udp,
    Tun,
    Timer,
    Scrape(metrics::Request),
    Control(ControlRequest),
    Usr1,
    Hup,
    StatsTick,
    Shutdown,
}

/// The driver: the core, its IO handles, and buffers allocated once.
pub struct EventLoop {
    anchor: Anchor,
    udp: BatchSocket,
    tun: AsyncDevice,
    /// UDP receive buffers: datagrams are decrypted in place and written to the TUN from here.
    rx: RxBatch,
    /// Encapsulated TUN packets waiting to go out together (one peer, one size).
    udp_tx: TxBatch,
    /// TUN receive buffers: packets land at HEADER_LEN so `encapsulate` works in place.
    tun_rx: TunRx,
    /// Decrypted packets of one UDP receive batch, written to the TUN together.
    tun_tx: TunTx,
    offload: OffloadState,
    /// The second copy of a redundant flow's packet (see `Anchor::encapsulate_with_copy`).
    copy_buf: Box<[u8]>,
    /// Where `poll_transmit` writes handshake responses, probe acks and keepalives.
    tx: Box<[u8]>,
    counters: DriverCounters,
    scrapes: Option<mpsc::Receiver<metrics::Request>>,
    bounds: BoundWatch,
    isolation: Option<nat::CounterReader>,
    ops: Option<Ops>,
}

/// The bound-related counters as of the last warning, to warn about what grew since.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bounds {
    rate_limit_table_full: u64,
    queue_overflows: u64,
    event_overflows: u64,
    queue_full_drops: u64,
    cookies_sent: u64,
    rate_limited: u64,
}

/// Rate-limits the "bound reached" warning to one per [`BOUND_WARN_EVERY`].
#[derive(Debug)]
struct BoundWatch {
    warned: Bounds,
    next_check: Option<tokio::time::Instant>,
}

impl BoundWatch {
    fn new() -> Self {
        BoundWatch {
            warned: Bounds::default(),
            next_check: None,
        }
    }

    /// Returns the counters' growth since the last warning when it is time to warn and some
    /// bound was reached (or the anchor went into cookie mode); remembers them as warned.
    fn check(&mut self, now: Bounds, tnow: tokio::time::Instant) -> Option<Bounds> {
        if self.next_check.is_some_and(|at| tnow < at) || now == self.warned {
            return None;
        }
        let d = Bounds {
            rate_limit_table_full: now.rate_limit_table_full - self.warned.rate_limit_table_full,
            queue_overflows: now.queue_overflows - self.warned.queue_overflows,
            event_overflows: now.event_overflows - self.warned.event_overflows,
            queue_full_drops: now.queue_full_drops - self.warned.queue_full_drops,
            cookies_sent: now.cookies_sent - self.warned.cookies_sent,
            rate_limited: now.rate_limited - self.warned.rate_limited,
        };
        self.warned = now;
        self.next_check = Some(tnow + BOUND_WARN_EVERY);
        Some(d)
    }
}

impl EventLoop {
    pub fn new(
        anchor: Anchor,
        udp: BatchSocket,
        tun: AsyncDevice,
        mtu: u16,
        scrapes: Option<mpsc::Receiver<metrics::Request>>,
    ) -> Self {
        EventLoop {
            anchor,
            udp,
            tun,
            rx: RxBatch::default(),
            udp_tx: TxBatch::default(),
            tun_rx: TunRx::new(usize::from(mtu), HEADER_LEN, TAG_LEN),
            tun_tx: TunTx::new(),
            offload: OffloadState::Off,
            copy_buf: vec![0; HEADER_LEN + MAX_PACKET + TAG_LEN].into_boxed_slice(),
            tx: vec![0; MAX_PACKET].into_boxed_slice(),
            counters: DriverCounters::default(),
            scrapes,
            bounds: BoundWatch::new(),
            isolation: None,
            ops: None,
        }
    }

    /// What offload the TUN was opened with (for the snapshot).
    pub fn with_offload(mut self, offload: OffloadState) -> Self {
        self.offload = offload;
        self
    }

    /// Answers control requests and reloads on SIGHUP (see [`crate::ops`]).
    pub fn with_ops(mut self, ops: Ops) -> Self {
        self.ops = Some(ops);
        self
    }

    /// Reports the nftables isolation counters in snapshots.
    pub fn with_isolation_counters(mut self, reader: nat::CounterReader) -> Self {
        self.isolation = Some(reader);
        self
    }

    /// Runs until `shutdown` resolves (Ok) or the socket or TUN fails (Err).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), LoopError> {
        let mut usr1 = signal(SignalKind::user_defined1()).map_err(LoopError::Signal)?;
        let mut hup = signal(SignalKind::hangup()).map_err(LoopError::SignalHup)?;
        let mut stats = tokio::time::interval(STATS_EVERY);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        stats.tick().await; // the first tick is immediate
        tokio::pin!(shutdown);

        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let mut timer_armed = false;
        let mut timer_reason = "";
        let (now, tnow) = (clock::now(), tokio::time::Instant::now());
        self.arm(&mut timer, &mut timer_armed, &mut timer_reason, now, tnow);

        loop {
            let wake = tokio::select! {
                () = &mut shutdown => Wake::Shutdown,
                r = self.udp.readable() => { r.map_err(LoopError::Udp)?; Wake::Udp }
                r = self.tun.readable() => { r.map_err(LoopError::Tun)?; Wake::Tun }
                () = &mut timer, if timer_armed => Wake::Timer,
                req = next_scrape(&mut self.scrapes) => match req {
                    Some(req) => Wake::Scrape(req),
                    None => { self.scrapes = None; continue; }
                },
                req = next_request(&mut self.ops) => Wake::Control(req),
                _ = usr1.recv() => Wake::Usr1,
                _ = hup.recv() => Wake::Hup,
                _ = stats.tick() => Wake::StatsTick,
            };
            // The one clock sample of this turn; everything below uses it.
            let (now, tnow) = (clock::now(), tokio::time::Instant::now());
            match wake {
                Wake::Shutdown => return Ok(()),
                Wake::Udp => self.read_udp(now),
                Wake::Tun => self.read_tun(now),
                Wake::Timer => {
                    tracing::trace!(reason = timer_reason, "core timer fired");
                    timer_armed = false;
                    self.anchor.handle_timeout(now);
                }
                Wake::Scrape(reply) => {
                    // The scraper may have gone away; nothing to do then.
                    let _ = reply.send(self.snapshot());
                }
                Wake::Control(req) => {
                    if let Some(ops) = &self.ops {
                        // The client may have gone away; nothing to do then.
                        let _ = req
                            .reply
                            .send(ops.answer(&mut self.anchor, req.request, now));
                    }
                }
                Wake::Hup => match &self.ops {
                    Some(ops) => ops.hup(&mut self.anchor),
                    None => tracing::info!("SIGHUP: nothing to reload"),
                },
                Wake::Usr1 => tracing::info!("counters: {}", self.snapshot().summary()),
                Wake::StatsTick => tracing::debug!("counters: {}", self.snapshot().summary()),
            }
            self.flush(now);
            self.arm(&mut timer, &mut timer_armed, &mut timer_reason, now, tnow);
            self.warn_on_bounds(tnow);
        }
    }

    /// Warns (at most once per [`BOUND_WARN_EVERY`]) when a memory or queue bound was reached
    /// or the handshake defences kicked in: these are expected under a flood and are counted,
    /// but an operator should see them without scraping.
    fn warn_on_bounds(&mut self, tnow: tokio::time::Instant) {
        let stats = self.anchor.stats();
        let drops = self.anchor.drops();
        let now = Bounds {
            rate_limit_table_full: stats.rate_limit_table_full,
            queue_overflows: stats.queue_overflows,
            event_overflows: stats.event_overflows,
            queue_full_drops: drops.get(DropReason::QueueFull),
            cookies_sent: stats.cookies_sent,
            rate_limited: drops.get(DropReason::RateLimited),
        };
        if let Some(d) = self.bounds.check(now, tnow) {
            if d.rate_limit_table_full + d.queue_overflows + d.event_overflows + d.queue_full_drops
                > 0
            {
                tracing::warn!(
                    rate_limit_table_full = d.rate_limit_table_full,
                    queue_overflows = d.queue_overflows,
                    event_overflows = d.event_overflows,
                    queue_full_drops = d.queue_full_drops,
                    "a bound was reached: work was refused and counted (see metrics)"
                );
            }
            if d.cookies_sent + d.rate_limited > 0 {
                tracing::warn!(
                    cookies_sent = d.cookies_sent,
                    rate_limited = d.rate_limited,
                    "handshake load: answering inits with cookies and rate limiting sources"
                );
            }
        }
    }

    /// Reads about BATCH datagrams, a receive batch at a time, and feeds each to the core;
    /// the inner packets go to the TUN together at the end.
    fn read_udp(&mut self, now: Instant) {
        self.read_udp_batches(now);
        flush_tun(&mut self.tun_tx, &self.tun, &mut self.counters);
    }

    fn read_udp_batches(&mut self, now: Instant) {
        for _ in 0..RECV_CALLS {
            match self.udp.recv_batch(&mut self.rx) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.counters.io_errors += 1;
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            }
            for (from, datagram) in self.rx.datagrams() {
                self.counters.udp_rx += 1;
                let n = datagram.len();
                match self.anchor.handle_datagram(from, datagram, now) {
                    Ok(Some((peer, range))) => match datagram.get(range) {
                        Some(inner) => {
                            if self.tun_tx.push(inner) {
                                flush_tun(&mut self.tun_tx, &self.tun, &mut self.counters);
                            }
                        }
                        None => {
                            tracing::debug!(%peer, "core returned a range outside the datagram")
                        }
                    },
                    Ok(None) => {}
                    Err(reason) => {
                        tracing::debug!(%from, len = n, reason = reason.as_str(), "dropped datagram");
                    }
                }
                // Handshake responses and probe acks queue up in the core; send them as they
                // come so a burst of handshakes cannot grow that queue past one batch.
                drain_transmits(
                    &mut self.anchor,
                    &mut self.udp,
                    &mut self.tx,
                    &mut self.counters,
                    now,
                );
            }
        }
    }

    /// Reads about BATCH packets from the TUN (an offloaded read gives many), encapsulates
    /// each in place and queues it; the queued datagrams go out as GSO sends (one peer and size
    /// each), the rest at the end.
    fn read_tun(&mut self, now: Instant) {
        let mut handled = 0;
        while handled < BATCH {
            let n = match self.tun_rx.recv(&self.tun) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.counters.io_errors += 1;
                    tracing::debug!(error = %e, "tun read failed");
                    break;
                }
            };
            handled += n.max(1);
            for i in 0..n {
                let Some((buf, len)) = self.tun_rx.packet_mut(i) else {
                    break;
                };
                self.counters.tun_rx += 1;
                match self
                    .anchor
                    .encapsulate_with_copy(buf, len, &mut self.copy_buf, now)
                {
                    Ok((t, copy)) => {
                        if let Some(c) = copy
                            && let (Some(dst), Some(datagram)) = (c.dst, self.copy_buf.get(..c.len))
                        {
                            count_sent(
                                &mut self.counters,
                                batch::queue(&mut self.udp, &mut self.udp_tx, dst, datagram),
                            );
                        }
                        let Some(dst) = t.dst else {
                            tracing::debug!("core gave an anchor transmit without destination");
                            continue;
                        };
                        match buf.get(..t.len) {
                            Some(datagram) => count_sent(
                                &mut self.counters,
                                batch::queue(&mut self.udp, &mut self.udp_tx, dst, datagram),
                            ),
                            None => tracing::debug!("core returned a length past the buffer"),
                        }
                    }
                    Err(reason) => {
                        tracing::debug!(len, reason = reason.as_str(), "dropped tun packet");
                    }
                }
            }
        }
        let mut flushed = batch::Flushed::default();
        flushed.add(self.udp.flush(&mut self.udp_tx));
        count_sent(&mut self.counters, flushed);
    }

    /// Sends everything the core has queued, then logs its events.
    fn flush(&mut self, now: Instant) {
        drain_transmits(
            &mut self.anchor,
            &mut self.udp,
            &mut self.tx,
            &mut self.counters,
            now,
        );
        while let Some(event) = self.anchor.poll_event() {
            match event {
                Event::PeerConnected {
                    peer,
                    name,
                    endpoint,
                } => {
                    let cipher = self.anchor.peer_cipher(peer).map_or("none", |c| c.as_str());
                    tracing::info!(%peer, %name, %endpoint, cipher, "peer connected")
                }
                Event::PeerDisconnected { peer, name } => {
                    tracing::info!(%peer, %name, "peer disconnected")
                }
                Event::PathEndpointChanged {
                    peer,
                    path,
                    endpoint,
                } => tracing::info!(%peer, %path, %endpoint, "path endpoint changed"),
                Event::PathStatusChanged { peer, path, down } => {
                    if down {
                        tracing::info!(%peer, %path, "peer says path down; its flows move to a live path");
                    } else {
                        tracing::info!(%peer, %path, "peer says path up again");
                    }
                }
                Event::FlowMoved { peer, flow, path } => tracing::info!(
                    %peer,
                    %path,
                    protocol = flow.protocol,
                    remote = %std::net::SocketAddr::new(flow.remote, flow.remote_port),
                    local_port = flow.local_port,
                    "peer moved a flow"
                ),
            }
        }
    }

    fn arm(
        &self,
        timer: &mut std::pin::Pin<&mut tokio::time::Sleep>,
        armed: &mut bool,
        reason: &mut &'static str,
        now: Instant,
        tnow: tokio::time::Instant,
    ) {
        match self.anchor.poll_timeout() {
            Some((at, why)) => {
                timer.as_mut().reset(clock::to_tokio(at, now, tnow));
                *armed = true;
                *reason = why.as_str();
            }
            None => *armed = false,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            drops: self
                .anchor
                .drops()
                .iter()
                .map(|(r, n)| (r.as_str(), n))
                .collect(),
            peers: self
                .anchor
                .peers()
                .map(|p| PeerSnapshot {
                    name: p.name,
                    connected: p.connected,
                    paths: p.paths.len() as u64,
                    flows: p.flows as u64,
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                    rx_packets: p.rx_packets,
                    tx_packets: p.tx_packets,
                })
                .collect(),
            udp_rx_datagrams: self.counters.udp_rx,
            udp_tx_datagrams: self.counters.udp_tx,
            tun_rx_packets: self.counters.tun_rx,
            tun_tx_packets: self.counters.tun_tx,
            io_errors: self.counters.io_errors,
            tun_offload: self.offload.as_str(),
            tun: {
                let (rx, tx) = (self.tun_rx.stats(), self.tun_tx.stats());
                metrics::TunSnapshot {
                    read_calls: rx.read_calls,
                    bad_super_packets: rx.read_bad,
                    write_batches: tx.write_batches,
                }
            },
            core: CoreStats::from_core(&self.anchor.stats(), self.anchor.rate_limited_sources()),
            isolation_drops: self.isolation.as_ref().map_or_else(Vec::new, |reader| {
                nat::ISOLATION_COUNTERS
                    .iter()
                    .filter_map(|(rule, counter)| match reader.read(counter) {
                        Ok(v) => Some((*rule, v.packets)),
                        Err(e) => {
                            tracing::debug!(counter, error = %e, "cannot read an nftables counter");
                            None
                        }
                    })
                    .collect()
            }),
        }
    }
}

/// Sends everything the core has queued (handshake responses, probe acks, keepalives), one
/// datagram at a time: they are few and not of one size.
fn drain_transmits(
    anchor: &mut Anchor,
    udp: &mut BatchSocket,
    tx: &mut [u8],
    counters: &mut DriverCounters,
    now: Instant,
) {
    while let Some(t) = anchor.poll_transmit(now, tx) {
        match (t.dst, tx.get(..t.len)) {
            (Some(dst), Some(datagram)) => match udp.send_one(dst, datagram) {
                Ok(()) => counters.udp_tx += 1,
                // A full send buffer drops the datagram like a congested link would; the
                // tunnelled transport above recovers.
                Err(e) => {
                    counters.io_errors += 1;
                    tracing::debug!(%dst, error = %e, "udp send failed");
                }
            },
            _ => tracing::debug!(?t, "core returned an unusable transmit"),
        }
    }
}

/// Writes the queued inner packets to the TUN. A refused write drops its packets, as a full
/// queue would; the tunnelled transport recovers.
fn flush_tun(tun_tx: &mut TunTx, tun: &AsyncDevice, c: &mut DriverCounters) {
    let (n, error) = tun_tx.flush(tun);
    c.tun_tx += n as u64;
    if let Some(e) = error {
        c.io_errors += 1;
        tracing::debug!(error = %e, "tun write failed");
    }
}

/// Counts what batched sends did: each datagram sent, each datagram lost.
fn count_sent(c: &mut DriverCounters, flushed: batch::Flushed) {
    c.udp_tx += flushed.sent as u64;
    c.io_errors += flushed.lost as u64;
    if let Some(e) = flushed.error {
        tracing::debug!(error = %e, lost = flushed.lost, "udp send failed");
    }
}

async fn next_request(ops: &mut Option<Ops>) -> ControlRequest {
    match ops {
        Some(ops) => ops.next_request().await,
        None => std::future::pending().await,
    }
}

async fn next_scrape(
    scrapes: &mut Option<mpsc::Receiver<metrics::Request>>,
) -> Option<metrics::Request> {
    match scrapes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_warning_comes_at_most_once_per_interval_with_the_growth_since_the_last() {
        let mut watch = BoundWatch::new();
        let t0 = tokio::time::Instant::now();
        assert_eq!(watch.check(Bounds::default(), t0), None, "nothing grew");
        let first = Bounds {
            queue_overflows: 3,
            ..Bounds::default()
        };
        assert_eq!(watch.check(first, t0), Some(first));
        let second = Bounds {
            queue_overflows: 10,
            rate_limit_table_full: 1,
            ..Bounds::default()
        };
        assert_eq!(watch.check(second, t0 + Duration::from_secs(1)), None);
        let grown = watch
            .check(second, t0 + BOUND_WARN_EVERY)
            .expect("a warning after the interval");
        assert_eq!(grown.queue_overflows, 7);
        assert_eq!(grown.rate_limit_table_full, 1);
        assert_eq!(
            watch.check(second, t0 + BOUND_WARN_EVERY * 3),
            None,
            "nothing grew since"
        );
    }
}
