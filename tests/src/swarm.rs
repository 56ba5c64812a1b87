//! A swarm of simulated mobile hosts for load on one anchor: N real `upmt_proto::client::Client`
//! cores, each with its own static key, in one process on a few UDP sockets.
//!
//! Each mobile host handshakes for real (cookies and retries included), keeps its session with
//! the core's keepalives and rekeys, opens `flows` inner UDP flows toward a host in the lab once
//! connected (one small packet each) and then sends a trickle: one packet on one of its flows
//! every `trickle` (jittered). Every `second_path_every`-th host also has a second path from
//! another source address, and its trickle alternates between the two paths, so its flows move
//! between paths at the anchor as they would on a phone changing networks.
//!
//! No thread per host: one loop waits on the sockets and on a deadline heap of the cores'
//! `poll_timeout`s (one live entry per host, stale ones skipped), so an idle swarm of 10,000
//! sleeps between keepalives. Datagrams from the anchor are handed to the host whose session
//! index they carry (learnt from each host's handshake inits).
//!
//! Keys are derived from a seed, so whoever writes the anchor's config
//! ([`anchor_peers_toml`]) and the swarm agree on them without exchanging files.
//!
//! What it never does: send to a target outside the lab's ranges ([`crate::guard`]), aim inner
//! packets outside private or documentation ranges, or run without a count and a time bound.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use upmt_proto::client::{Client, ClientConfig, Event};
use upmt_proto::keys::{PublicKey, StaticSecret};
use upmt_proto::time::Instant;
use upmt_proto::wire::{self, Kind};
use upmt_proto::{HEADER_LEN, PathId, TAG_LEN};

use crate::guard::{inner_allowed, target_allowed};

/// The most mobile hosts one swarm plays.
pub const MAX_HOSTS: usize = 65_536;
/// The longest one run may last.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The most flows per host.
pub const MAX_FLOWS: u16 = 256;
/// Datagrams read from one socket per loop turn before the others get their turn.
const RECV_BURST: usize = 256;
/// Session indices remembered per host (the current, previous and next session, and a few
/// retried inits whose answers may still be on their way).
const INDICES_PER_HOST: usize = 8;
/// Hosts started, and due hosts run, per loop turn: the sockets are read in between, so a slow
/// turn (10,000 handshakes to create) never leaves the anchor's answers waiting for seconds.
const WORK_PER_TURN: usize = 128;
/// Hosts per second that open their flows once released by [`OPEN_FLOWS`].
const FLOW_OPEN_RATE: u32 = 1000;
/// First local port of a host's flows.
const FLOW_PORT_BASE: u16 = 20_000;

/// What the swarm plays.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// The anchor's UDP address (only the lab's ranges).
    pub target: SocketAddr,
    /// The anchor's public key.
    pub anchor_public: PublicKey,
    /// The keys' seed (see [`secret`]).
    pub seed: u64,
    /// Mobile hosts.
    pub count: usize,
    /// Local addresses, one socket each (already on an interface of the swarm's namespace).
    pub sources: Vec<IpAddr>,
    /// Inner UDP flows per host.
    pub flows: u16,
    /// Where inner packets go (a host in the lab; private or documentation range).
    pub flow_dst: SocketAddrV4,
    /// Each host sends one packet on one of its flows this often (jittered); `None`: only the
    /// first packet of each flow.
    pub trickle: Option<Duration>,
    /// Every this-many-th host also has a second path (0: none).
    pub second_path_every: usize,
    /// Hosts started per second (0: all at once).
    pub start_rate: u32,
    /// The run stops after this long.
    pub duration: Duration,
    /// A progress line this often.
    pub report_every: Duration,
    /// Hosts open their flows only once [`OPEN_FLOWS`] is set (e.g. by a signal), so a bench
    /// can measure the anchor's memory with sessions only, then with flows.
    pub flows_on_signal: bool,
}

/// Set (by the binary's SIGUSR1 handler) to have the hosts open their flows when
/// [`SwarmConfig::flows_on_signal`] holds them back.
pub static OPEN_FLOWS: AtomicBool = AtomicBool::new(false);

/// The swarm's counters, printed as one JSON line per report.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    /// Seconds since the start.
    pub t: f64,
    /// Hosts started.
    pub started: usize,
    /// Hosts with a session now.
    pub up: usize,
    /// Sessions established (first ones and re-established ones).
    pub handshakes: u64,
    /// Sessions lost (`Disconnected`).
    pub disconnects: u64,
    /// Seconds from the start until every host had a session for the first time.
    pub all_up_at: Option<f64>,
    /// Hosts whose flows were all opened (first packet sent on each).
    pub flows_opened: usize,
    /// Datagrams sent and received.
    pub tx: u64,
    pub rx: u64,
    /// Inner packets sent, and inner packets that came back (the echo server's answers).
    pub inner_tx: u64,
    pub inner_rx: u64,
    /// Datagrams no host claimed, and sends that failed.
    pub unclaimed: u64,
    pub send_errors: u64,
}

impl Progress {
    /// The JSON line.
    pub fn json(&self) -> String {
        serde_json::json!({
            "t": (self.t * 1000.0).round() / 1000.0,
            "started": self.started,
            "up": self.up,
            "handshakes": self.handshakes,
            "disconnects": self.disconnects,
            "all_up_at": self.all_up_at,
            "flows_opened": self.flows_opened,
            "tx": self.tx,
            "rx": self.rx,
            "inner_tx": self.inner_tx,
            "inner_rx": self.inner_rx,
            "unclaimed": self.unclaimed,
            "send_errors": self.send_errors,
        })
        .to_string()
    }

    /// Parses a line [`Progress::json`] wrote.
    pub fn parse(line: &str) -> Option<Progress> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        Some(Progress {
            t: v.get("t")?.as_f64()?,
            started: n("started")? as usize,
            up: n("up")? as usize,
            handshakes: n("handshakes")?,
            disconnects: n("disconnects")?,
            all_up_at: v.get("all_up_at").and_then(serde_json::Value::as_f64),
            flows_opened: n("flows_opened")? as usize,
            tx: n("tx")?,
            rx: n("rx")?,
            inner_tx: n("inner_tx")?,
            inner_rx: n("inner_rx")?,
            unclaimed: n("unclaimed")?,
            send_errors: n("send_errors")?,
        })
    }
}

/// Host `i`'s static key for `seed`.
pub fn secret(seed: u64, i: usize) -> StaticSecret {
    let mut h = Sha256::new();
    h.update(b"upmt-swarm key");
    h.update(seed.to_be_bytes());
    h.update((i as u64).to_be_bytes());
    StaticSecret::from_bytes(h.finalize().into())
}

/// Host `i`'s virtual address: `base + i`.
pub fn virtual_v4(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(i as u32))
}

/// The anchor's `[[peer]]` tables for `count` hosts of `seed`, named `swarm{i}`, with virtual
/// addresses from `base` on.
pub fn anchor_peers_toml(seed: u64, count: usize, base: Ipv4Addr) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(count * 120);
    for i in 0..count {
        let _ = write!(
            out,
            "\n[[peer]]\nname = \"swarm{i}\"\npublic_key = \"{}\"\naddress = \"{}\"\n",
            secret(seed, i).public_key(),
            virtual_v4(base, i)
        );
    }
    out
}

/// Why a swarm cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("refusing target {0}: only 203.0.113.0/24 and 2001:db8::/32 (the lab) are allowed")]
    Target(SocketAddr),
    #[error("refusing inner destination {0}: only private or documentation ranges")]
    Inner(Ipv4Addr),
    #[error("{0}")]
    Bounds(String),
    #[error("cannot open a socket on {addr}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("waiting on the sockets failed")]
    Poll(#[source] io::Error),
}

impl SwarmConfig {
    /// Refuses targets outside the lab and unbounded runs.
    pub fn check(&self) -> Result<(), SwarmError> {
        if !target_allowed(self.target.ip()) {
            return Err(SwarmError::Target(self.target));
        }
        if !inner_allowed(*self.flow_dst.ip()) {
            return Err(SwarmError::Inner(*self.flow_dst.ip()));
        }
        if self.count == 0 || self.count > MAX_HOSTS {
            return Err(SwarmError::Bounds(format!(
                "the host count must be between 1 and {MAX_HOSTS}"
            )));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(SwarmError::Bounds(format!(
                "the duration must be between 1 s and {} s",
                MAX_DURATION.as_secs()
            )));
        }
        if self.sources.is_empty() || self.sources.len() > 1024 {
            return Err(SwarmError::Bounds(
                "between 1 and 1024 source addresses are needed".into(),
            ));
        }
        if self.flows > MAX_FLOWS {
            return Err(SwarmError::Bounds(format!(
                "at most {MAX_FLOWS} flows per host"
            )));
        }
        Ok(())
    }
}

/// One simulated mobile host.
struct Host {
    client: Client,
    /// The socket of each path (path 1 only for some hosts).
    sockets: [Option<usize>; 2],
    virtual_v4: Option<Ipv4Addr>,
    up: bool,
    flows_opened: bool,
    next_trickle: Option<Instant>,
    trickle_turn: u32,
    /// The time of this host's live entry in the deadline heap.
    scheduled: Option<Instant>,
    /// Its latest session indices (to forget the oldest from the index map).
    indices: [u32; INDICES_PER_HOST],
    next_index_slot: usize,
}

/// The running swarm.
pub struct Swarm {
    config: SwarmConfig,
    sockets: Vec<UdpSocket>,
    hosts: Vec<Host>,
    by_index: HashMap<u32, usize>,
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    clock: StdInstant,
    progress: Progress,
    buf: Vec<u8>,
    rng: u64,
}

impl Swarm {
    /// Opens one socket per source address toward the target.
    pub fn new(config: SwarmConfig) -> Result<Swarm, SwarmError> {
        config.check()?;
        let sockets = config
            .sources
            .iter()
            .map(|ip| open_socket(SocketAddr::new(*ip, 0), config.target))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Swarm {
            rng: config.seed | 1,
            hosts: Vec::with_capacity(config.count),
            by_index: HashMap::with_capacity(config.count * 2),
            heap: BinaryHeap::with_capacity(config.count * 2),
            config,
            sockets,
            clock: StdInstant::now(),
            progress: Progress::default(),
            buf: vec![0; 65_536],
        })
    }

    fn now(&self) -> Instant {
        Instant::from_duration(self.clock.elapsed())
    }

    /// Runs for the configured duration, calling `report` with the counters every
    /// `report_every` and once at the end.
    pub fn run(&mut self, mut report: impl FnMut(&Progress)) -> Result<Progress, SwarmError> {
        self.clock = StdInstant::now();
        let end = self.now() + self.config.duration;
        let mut next_report = self.now() + self.config.report_every;
        let mut fds: Vec<libc::pollfd> = self
            .sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // With `flows_on_signal`: when the signal came, and how many hosts were looked at since.
        let mut released: Option<(Instant, usize)> = None;
        loop {
            let now = self.now();
            if now >= end {
                break;
            }
            if self.config.flows_on_signal && OPEN_FLOWS.load(Ordering::Relaxed) {
                let (since, cursor) = released.get_or_insert((now, 0));
                // Paced, like the starts: a burst of every host's flows would overflow the
                // anchor's socket and the lost first packets would never be sent again.
                let due = ((now.saturating_duration_since(*since).as_secs_f64()
                    * f64::from(FLOW_OPEN_RATE)) as usize
                    + 1)
                .min(self.hosts.len())
                .min(*cursor + WORK_PER_TURN);
                while *cursor < due {
                    let i = *cursor;
                    *cursor += 1;
                    if self.hosts[i].up && !self.hosts[i].flows_opened {
                        self.open_flows(i, now);
                        self.flush(i, now);
                    }
                }
            }
            self.start_hosts(now);
            self.run_due(now);
            if now >= next_report {
                self.snapshot(now);
                report(&self.progress);
                next_report = now + self.config.report_every;
            }
            // Sleep until the next deadline, a start, a report or a datagram.
            let mut wake = next_report.min(end);
            if let Some(Reverse((t, _))) = self.heap.peek() {
                wake = wake.min(*t);
            }
            if self.hosts.len() < self.config.count
                || released.is_some_and(|(_, c)| c < self.hosts.len())
            {
                wake = wake.min(now + Duration::from_millis(5));
            }
            let ms = wake
                .saturating_duration_since(self.now())
                .as_millis()
                .min(1000) as libc::c_int;
            for f in &mut fds {
                f.revents = 0;
            }
            // SAFETY: `fds` is a live, correctly sized array of pollfd.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(SwarmError::Poll(e));
                }
                continue;
            }
            for (s, f) in fds.iter().enumerate() {
                if f.revents != 0 {
                    self.receive(s);
                }
            }
        }
        self.snapshot(self.now());
        report(&self.progress);
        Ok(self.progress)
    }

    /// Starts the hosts due by the start rate.
    fn start_hosts(&mut self, now: Instant) {
        let due = match self.config.start_rate {
            0 => self.config.count,
            rate => {
                let secs = now.as_duration().as_secs_f64();
                ((secs * f64::from(rate)) as usize + 1).min(self.config.count)
            }
        };
        let due = due.min(self.hosts.len() + WORK_PER_TURN);
        while self.hosts.len() < due {
            let i = self.hosts.len();
            let mut cc = ClientConfig::new(secret(self.config.seed, i), self.config.anchor_public);
            // The default; named because the idle figures depend on it.
            cc.keepalive = Duration::from_secs(25);
            // One process plays thousands of phones on a shared machine: its own scheduling
            // delays must not read as dead paths. Real phones probe more often while active;
            // the idle load (keepalives) is the same.
            cc.probe_interval = Duration::from_secs(1);
            cc.path_timeout = Duration::from_secs(5);
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let mut client = Client::new(cc, now, unix);
            let n = self.sockets.len();
            let second = self.config.second_path_every > 0
                && i.is_multiple_of(self.config.second_path_every)
                && n > 1;
            let sockets = [
                Some(i % n),
                second
                    .then_some((i + n / 2 + 1) % n)
                    .filter(|s| *s != i % n),
            ];
            client.handle_path_up(PathId(0), now);
            if sockets[1].is_some() {
                client.handle_path_up(PathId(1), now);
            }
            self.hosts.push(Host {
                client,
                sockets,
                virtual_v4: None,
                up: false,
                flows_opened: false,
                next_trickle: None,
                trickle_turn: 0,
                scheduled: None,
                indices: [0; INDICES_PER_HOST],
                next_index_slot: 0,
            });
            self.flush(i, now);
        }
    }

    /// Runs every host whose heap entry is due.
    fn run_due(&mut self, now: Instant) {
        let mut ran = 0;
        while let Some(Reverse((t, i))) = self.heap.peek().copied() {
            if t > now || ran == WORK_PER_TURN {
                break;
            }
            ran += 1;
            self.heap.pop();
            if self.hosts[i].scheduled != Some(t) {
                continue; // superseded by an earlier or later entry
            }
            self.hosts[i].scheduled = None;
            let h = &mut self.hosts[i];
            if h.client.poll_timeout().is_some_and(|(d, _)| d <= now) {
                h.client.handle_timeout(now);
            }
            if h.next_trickle.is_some_and(|d| d <= now) {
                self.trickle(i, now);
            }
            self.flush(i, now);
        }
    }

    /// One packet on one of host `i`'s flows, alternating paths when it has two.
    fn trickle(&mut self, i: usize, now: Instant) {
        let flows = self.config.flows.max(1);
        let jitter = self.jitter();
        let h = &mut self.hosts[i];
        h.next_trickle = self.config.trickle.map(|d| now + d.mul_f64(jitter));
        let turn = h.trickle_turn;
        h.trickle_turn = h.trickle_turn.wrapping_add(1);
        let path = if h.sockets[1].is_some() && turn % 2 == 1 {
            PathId(1)
        } else {
            PathId(0)
        };
        self.send_inner(i, path, (turn % u32::from(flows)) as u16, now);
    }

    /// A factor in [0.5, 1.5).
    fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        0.5 + (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Sends one inner UDP packet of flow `flow` of host `i` on `path`.
    fn send_inner(&mut self, i: usize, path: PathId, flow: u16, now: Instant) {
        let Some(src) = self.hosts[i].virtual_v4 else {
            return;
        };
        let dst = self.config.flow_dst;
        let len = udp_packet(
            src,
            FLOW_PORT_BASE + flow,
            dst,
            &mut self.buf[HEADER_LEN..HEADER_LEN + 64],
        );
        let h = &mut self.hosts[i];
        let Ok(n) = h.client.encapsulate(path, &mut self.buf, len, now) else {
            return;
        };
        let Some(s) = h.sockets[usize::from(path.0)].or(h.sockets[0]) else {
            return;
        };
        self.progress.inner_tx += 1;
        match self.sockets[s].send(&self.buf[..n]) {
            Ok(_) => self.progress.tx += 1,
            Err(_) => self.progress.send_errors += 1,
        }
    }

    /// Sends what host `i`'s core has queued, handles its events, re-files its deadline.
    fn flush(&mut self, i: usize, now: Instant) {
        loop {
            let h = &mut self.hosts[i];
            let Some(t) = h.client.poll_transmit(now, &mut self.buf) else {
                break;
            };
            let datagram = &self.buf[..t.len];
            if wire::peek_kind(datagram) == Ok(Kind::HandshakeInit)
                && let Ok(init) = wire::HandshakeInit::new_checked(datagram)
            {
                let index = init.sender_index().0;
                let old = h.indices[h.next_index_slot];
                h.indices[h.next_index_slot] = index;
                h.next_index_slot = (h.next_index_slot + 1) % INDICES_PER_HOST;
                if old != 0 && old != index && self.by_index.get(&old) == Some(&i) {
                    self.by_index.remove(&old);
                }
                self.by_index.insert(index, i);
            }
            let Some(s) = h.sockets[usize::from(t.path.0)].or(h.sockets[0]) else {
                continue;
            };
            match self.sockets[s].send(datagram) {
                Ok(_) => self.progress.tx += 1,
                Err(_) => self.progress.send_errors += 1,
            }
        }
        let mut open_flows = false;
        while let Some(event) = self.hosts[i].client.poll_event() {
            let h = &mut self.hosts[i];
            match event {
                Event::Connected(params) => {
                    if !h.up {
                        h.up = true;
                        self.progress.up += 1;
                    }
                    self.progress.handshakes += 1;
                    h.virtual_v4 = Some(params.virtual_ipv4);
                    open_flows = !h.flows_opened;
                }
                Event::Disconnected => {
                    if h.up {
                        h.up = false;
                        self.progress.up -= 1;
                    }
                    self.progress.disconnects += 1;
                }
                Event::PathUp(_) | Event::PathDown(_) | Event::Rekeyed => {}
            }
        }
        if self.progress.up == self.config.count && self.progress.all_up_at.is_none() {
            self.progress.all_up_at = Some(now.as_duration().as_secs_f64());
        }
        if open_flows && (!self.config.flows_on_signal || OPEN_FLOWS.load(Ordering::Relaxed)) {
            self.open_flows(i, now);
            // Sealing may have queued a rekey; send it now.
            return self.flush(i, now);
        }
        self.reschedule(i);
    }

    /// Sends the first packet of each of host `i`'s flows and starts its trickle.
    fn open_flows(&mut self, i: usize, now: Instant) {
        for f in 0..self.config.flows {
            let path = if self.hosts[i].sockets[1].is_some() && f % 2 == 1 {
                PathId(1)
            } else {
                PathId(0)
            };
            self.send_inner(i, path, f, now);
        }
        let jitter = self.jitter();
        let h = &mut self.hosts[i];
        h.flows_opened = true;
        h.next_trickle = self.config.trickle.map(|d| now + d.mul_f64(jitter));
        self.progress.flows_opened += 1;
    }

    /// Files host `i` in the heap at its next deadline (one live entry per host).
    fn reschedule(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        let next = [h.client.poll_timeout().map(|(t, _)| t), h.next_trickle]
            .into_iter()
            .flatten()
            .min();
        if next != h.scheduled {
            h.scheduled = next;
            if let Some(t) = next {
                self.heap.push(Reverse((t, i)));
            }
        }
    }

    /// Reads what socket `s` has, up to a burst, and hands each datagram to its host.
    fn receive(&mut self, s: usize) {
        for _ in 0..RECV_BURST {
            let n = match self.sockets[s].recv(&mut self.buf) {
                Ok(n) => n,
                // WouldBlock; or the anchor's ICMP errors, which a connected socket reports.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            self.progress.rx += 1;
            let now = self.now();
            let Some(i) = receiver_index(&self.buf[..n]).and_then(|x| self.by_index.get(&x)) else {
                self.progress.unclaimed += 1;
                continue;
            };
            let i = *i;
            let h = &mut self.hosts[i];
            let path = if h.sockets[1] == Some(s) {
                PathId(1)
            } else {
                PathId(0)
            };
            if let Ok(Some(_)) = h.client.handle_datagram(path, &mut self.buf[..n], now) {
                self.progress.inner_rx += 1;
            }
            self.flush(i, now);
        }
    }

    fn snapshot(&mut self, now: Instant) {
        self.progress.t = now.as_duration().as_secs_f64();
        self.progress.started = self.hosts.len();
    }
}

/// The session index a datagram from the anchor is addressed to.
fn receiver_index(d: &[u8]) -> Option<u32> {
    match wire::peek_kind(d).ok()? {
        Kind::HandshakeResp => Some(wire::HandshakeResp::new_checked(d).ok()?.receiver_index().0),
        Kind::Data | Kind::Control => Some(
            wire::TransportHeader::new_checked(d)
                .ok()?
                .receiver_index()
                .0,
        ),
        // Header: kind, path, two reserved bytes, then the init's sender index.
        Kind::CookieReply => Some(u32::from_be_bytes(d.get(4..8)?.try_into().ok()?)),
        Kind::HandshakeInit => None,
    }
}

fn open_socket(local: SocketAddr, target: SocketAddr) -> Result<UdpSocket, SwarmError> {
    let err = |source| SwarmError::Socket {
        addr: local,
        source,
    };
    let socket = UdpSocket::bind(local).map_err(err)?;
    socket.connect(target).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    // Room for a burst of answers to thousands of handshakes; the forced variant needs
    // CAP_NET_ADMIN (the lab runs as root), the plain one is capped by rmem_max.
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let size: libc::c_int = 8 << 20;
        for opt in [force, plain] {
            // SAFETY: a valid socket, an int option of the right size.
            let r = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
    Ok(socket)
}

/// Writes an IPv4/UDP packet `src:sport -> dst` with a 16-byte payload (UDP checksum 0, valid
/// over IPv4); returns its length.
fn udp_packet(src: Ipv4Addr, sport: u16, dst: SocketAddrV4, out: &mut [u8]) -> usize {
    const LEN: usize = 20 + 8 + 16;
    let p = &mut out[..LEN];
    p.fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((LEN - 20) as u16).to_be_bytes());
    p[28..].copy_from_slice(b"upmt-swarm trick");
    LEN
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// Inner packets and their seal fit in the swarm's buffer.
const _: () = assert!(HEADER_LEN + 64 + TAG_LEN < 65_536);

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SwarmConfig {
        SwarmConfig {
            target: "203.0.113.2:51900".parse().unwrap(),
            anchor_public: PublicKey::from_bytes([9; 32]),
            seed: 1,
            count: 10,
            sources: vec!["198.19.0.10".parse().unwrap()],
            flows: 10,
            flow_dst: "192.0.2.2:7777".parse().unwrap(),
            trickle: None,
            second_path_every: 0,
            start_rate: 0,
            duration: Duration::from_secs(5),
            report_every: Duration::from_secs(1),
            flows_on_signal: false,
        }
    }

    #[test]
    fn keys_are_the_same_for_a_seed_and_differ_between_hosts_and_seeds() {
        assert_eq!(secret(7, 3).as_bytes(), secret(7, 3).as_bytes());
        assert_ne!(secret(7, 3).as_bytes(), secret(7, 4).as_bytes());
        assert_ne!(secret(7, 3).as_bytes(), secret(8, 3).as_bytes());
    }

    #[test]
    fn the_anchor_peers_name_each_hosts_public_key_and_address() {
        let toml = anchor_peers_toml(5, 3, Ipv4Addr::new(10, 77, 1, 254));
        assert_eq!(toml.matches("[[peer]]").count(), 3);
        assert!(toml.contains(&secret(5, 2).public_key().to_string()));
        assert!(toml.contains("address = \"10.77.2.0\""), "{toml}");
    }

    #[test]
    fn targets_and_inner_destinations_outside_the_lab_and_unbounded_runs_are_refused() {
        assert!(config().check().is_ok());
        let mut c = config();
        c.target = "8.8.8.8:51900".parse().unwrap();
        assert!(matches!(c.check(), Err(SwarmError::Target(_))));
        let mut c = config();
        c.flow_dst = "1.1.1.1:53".parse().unwrap();
        assert!(matches!(c.check(), Err(SwarmError::Inner(_))));
        for bad in [
            SwarmConfig {
                count: 0,
                ..config()
            },
            SwarmConfig {
                duration: Duration::ZERO,
                ..config()
            },
            SwarmConfig {
                sources: vec![],
                ..config()
            },
        ] {
            assert!(matches!(bad.check(), Err(SwarmError::Bounds(_))));
        }
    }

    #[test]
    fn a_progress_line_reads_back() {
        let p = Progress {
            t: 1.5,
            started: 3,
            up: 2,
            handshakes: 2,
            all_up_at: Some(1.25),
            tx: 9,
            ..Progress::default()
        };
        assert_eq!(Progress::parse(&p.json()), Some(p));
    }

    #[test]
    fn inner_packets_are_valid_ipv4_udp() {
        let mut buf = [0u8; 64];
        let len = udp_packet(
            Ipv4Addr::new(10, 77, 1, 3),
            20_001,
            "192.0.2.2:7777".parse().unwrap(),
            &mut buf,
        );
        assert_eq!(len, 44);
        assert_eq!(checksum(&buf[..20]), 0, "a valid header sums to zero");
        assert_eq!(u16::from_be_bytes([buf[22], buf[23]]), 7777);
        assert_eq!(u16::from_be_bytes([buf[24], buf[25]]) as usize, len - 20);
    }
}
