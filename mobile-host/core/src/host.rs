//! [`MobileHost`]: every decision the mobile host makes, as a state machine with no IO.
//!
//! It owns the protocol client ([`Client`]), the flow table and its policy ([`Flows`]), what is
//! known of each uplink (the driver has a socket on it; the protocol reports its path up; the
//! hold-down has passed), the pins the user set, and the bypass set. The driver (`upmt-mh`'s
//! event loop) owns the TUN, the sockets, netlink and the app-lookup thread, and talks to the
//! host only through the calls below, passing the `now` it sampled once for the loop turn.
//!
//! Inputs:
//! - [`MobileHost::handle_tun_packet`]: a packet an app sent; encapsulated in place when its
//!   flow is known, else queued while its owner is looked up.
//! - [`MobileHost::handle_datagram`]: a datagram from an uplink; the inner packet to write to the
//!   TUN, if any.
//! - [`MobileHost::handle_owner`] / [`MobileHost::handle_lookup_refused`]: the app lookup's answer.
//! - [`MobileHost::handle_interfaces`]: what the host's interfaces look like now; each uplink
//!   picks its (interface, family) from them ([`crate::candidates`]).
//! - [`MobileHost::handle_uplink_available`] / [`MobileHost::handle_uplink_lost`] /
//!   [`MobileHost::handle_attach_failed`]: the driver opened, lost, or could not open an
//!   uplink's socket.
//! - [`MobileHost::handle_tun_ready`]: the TUN and its routing exist.
//! - [`MobileHost::handle_timeout`]: the deadline of [`MobileHost::poll_timeout`] passed; it
//!   may move the host to the next anchor ([`crate::anchors`]): the uplinks then ask for new
//!   sockets toward [`MobileHost::anchor_endpoints`].
//! - [`MobileHost::answer`], [`MobileHost::reload_policy`], [`MobileHost::set_packages`]: the
//!   control socket's requests, a new policy, Android's uid table.
//!
//! Outputs, drained after every input until each returns `None`: [`MobileHost::poll_transmit`]
//! (datagrams per uplink), [`MobileHost::poll_tun_write`] (TCP resets for blocked flows),
//! [`MobileHost::poll_lookup`] (flows whose owner the driver should look up),
//! [`MobileHost::poll_routing`] (the bypass uids, from the start; bring the TUN up),
//! [`MobileHost::poll_uplink_change`] (open an uplink's socket on another interface or family,
//! or close it) and
//! [`MobileHost::poll_event`] (what the control socket's watchers see). Then arm one timer at
//! [`MobileHost::poll_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use upmt_paft::{AppId, FlowId, FlowKey, UplinkId};
use upmt_policy::{AppIdentity, Matcher, Policy, Route, UplinkStatus};
use upmt_proto::client::{Client, ClientConfig, Event as ClientEvent};
use upmt_proto::time::Instant;
use upmt_proto::{HEADER_LEN, PathId, SessionParams, Transmit};

use crate::anchors::{self, AnchorConfig, Anchors};
use crate::answer;
use crate::api::{
    ActiveAnchor, ErrorKind, ErrorReply, Event, MoveReason, OwnerLookups, ReloadReply, Request,
    Response, SessionState, SessionStatus, StatusReply,
};
use crate::candidates::{Change, Family, InterfaceFacts, Pattern, Selector};
use crate::describe;
use crate::flows::{Flows, Outcome, TunAction, UNKNOWN_APP};
use crate::owner::Owner;
use crate::uplinks::Uplinks;
use crate::usage::{CapChange, Day, Ledger, Meter, UsageFile};

mod released;
mod resend;

/// How often stalled lookups are given up, held flows forgotten and a returning uplink's
/// hold-down looked at, while there are any; idle flows expire at their own deadline, and with
/// none of these the host sets no timer of its own.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// Resets waiting to be written into the TUN; beyond this a blocked flow's segment gets none
/// (the app retries and gets one then).
const MAX_RESETS: usize = 256;
/// A TCP reset is at most an IPv6 header and a bare TCP header.
const RESET_LEN: usize = 64;
/// An uplink's candidate gets this many of the longer of the path timeout and the down-path
/// probe interval (plus a handshake round over every uplink) to bring its path up before the
/// next candidate is tried.
pub const CANDIDATE_TRIAL_ROUNDS: u32 = 3;

/// Room for the copy of one redundant packet: the largest inner packet with header and tag.
const COPY_BUF_LEN: usize = HEADER_LEN + 65_535 + upmt_proto::TAG_LEN;

/// The second copy of a redundant packet, sealed, waiting for the driver.
#[derive(Default)]
struct CopyBuf {
    /// Made at the first redundant packet.
    buf: Option<Vec<u8>>,
    /// Its path and length, until taken.
    ready: Option<(PathId, usize)>,
}

/// What the host needs to start.
pub struct HostConfig {
    /// The protocol client's keys and timings.
    pub client: ClientConfig,
    /// Random bits for the client's session ids, from the driver.
    pub client_seed: u64,
    /// The first anchor's preferred endpoint; [`MobileHost::set_anchors`] gives all of its
    /// endpoints and the anchors after it.
    pub anchor: SocketAddr,
    /// The uplinks, in config order.
    pub uplinks: Uplinks,
    /// Each uplink's interface as configured, in the same order: a name (`wlan0`) or a
    /// prefix pattern (`rmnet_data*`, see [`crate::candidates::Pattern`]).
    pub interfaces: Vec<String>,
    /// The policy in force at start.
    pub policy: Policy,
    /// Where the policy came from, as users see it (`"(built-in)"` without a file).
    pub policy_source: String,
}

/// Something the driver must change in the host's routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutingIntent {
    /// A session is up with this addressing: bring up the TUN and route the host's traffic
    /// through it (or redo both when the addressing changed). Call
    /// [`MobileHost::handle_tun_ready`] when done.
    Connect(SessionParams),
    /// Traffic of these uids bypasses the tunnel (replaces the previous set).
    Bypass(Vec<u32>),
    /// Give the TUN this MTU: the smallest live path's MTU changed (see [`crate::pmtu`]).
    TunMtu(u16),
}

/// Counters of what the host itself dropped or answered (the protocol client counts its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounters {
    /// TUN packets whose uplink has no socket now.
    pub tun_no_path: u64,
    /// TCP resets produced for blocked flows.
    pub resets: u64,
    /// Resets not produced because the queue was full.
    pub resets_dropped: u64,
}

struct Link {
    /// As configured: one name or a pattern.
    pattern: Pattern,
    /// The real interface its socket is on, or the configured name while it has none.
    interface: String,
    /// Picks the interface and family among the candidates.
    selector: Selector,
    /// The driver has a socket on it, bound from `local`.
    available: bool,
    local: Option<SocketAddr>,
    /// The protocol reports its path up.
    live: bool,
    /// Its data costs (config `metered = true`).
    metered: bool,
}

/// The mobile host's state. See the module docs for the calling order.
pub struct MobileHost {
    client: Client,
    /// The client's config and seed, for a fresh client when the host moves to another anchor.
    client_config: ClientConfig,
    client_seed: u64,
    started: Instant,
    /// The anchors in order and which one the client talks to.
    anchors: Anchors,
    uplinks: Uplinks,
    links: Vec<Link>,
    /// The uplinks as the policy sees them, refreshed before each decision.
    statuses: Vec<UplinkStatus>,
    flows: Flows,
    policy_source: String,
    /// Android package name -> uid, for bypass rules that name apps.
    packages: BTreeMap<String, u32>,
    /// The bypass uids last handed to the driver; `None` until the first is published.
    bypass: Option<Vec<u32>>,
    tun: Option<String>,
    uplinks_changed: bool,
    /// The TUN MTU last asked for; `None`: the session's, as `Connect` set it.
    tun_mtu: Option<u16>,
    next_housekeeping: Instant,
    released: VecDeque<(UplinkId, Vec<u8>)>,
    scratch: Vec<Vec<u8>>,
    resets: VecDeque<([u8; RESET_LEN], usize)>,
    lookups: VecDeque<FlowKey>,
    routing: VecDeque<RoutingIntent>,
    events: VecDeque<Event>,
    counters: HostCounters,
    /// The host's interfaces as last listed, and the anchor's families in preference order.
    interface_facts: Vec<InterfaceFacts>,
    anchor_families: Vec<Family>,
    uplink_changes: VecDeque<(UplinkId, Change)>,
    /// The second copy of a redundant flow's packet, for [`MobileHost::take_copy`].
    copy: CopyBuf,
    /// Uplinks that sleep while they carry no flows (`idle = "sleep"`), one bit each.
    sleepers: u8,
    /// Uplinks that carried flows when the paths' idle modes were last set.
    carrying: u8,
    /// Flows may have left an uplink since: the idle modes are set again on the next pump.
    idle_stale: bool,
    /// Usage kept apart from flows, and the uplinks' data caps.
    usage: Meter,
    /// Paths that went down since the flows were last decided: their recent packets follow
    /// the flows (see `host/resend.rs`).
    moved_off: Vec<PathId>,
}

impl MobileHost {
    /// A host that starts handshaking at `now`.
    pub fn new(config: HostConfig, now: Instant) -> MobileHost {
        let c = &config.client;
        let trial = c.path_timeout.max(c.down_probe_interval) * CANDIDATE_TRIAL_ROUNDS
            + c.handshake_retry * u32::try_from(config.uplinks.len()).unwrap_or(u32::MAX);
        let links = config
            .interfaces
            .into_iter()
            .map(|interface| Link {
                pattern: Pattern::parse(&interface)
                    .unwrap_or_else(|_| Pattern::Exact(interface.clone())),
                interface,
                selector: Selector::new(trial),
                available: false,
                local: None,
                live: false,
                metered: false,
            })
            .collect();
        let usage = Meter::new(
            config.uplinks.names().to_vec(),
            vec![None; config.uplinks.len()],
            now,
        );
        let first = AnchorConfig {
            endpoints: vec![config.anchor],
            public_key: config.client.anchor_public,
        };
        let mut host = MobileHost {
            usage,
            moved_off: Vec::new(),
            client_config: config.client.clone(),
            client: Client::new(config.client, now, config.client_seed),
            client_seed: config.client_seed,
            started: now,
            anchors: Anchors::new(first, Vec::new(), anchors::DEFAULT_FAILOVER_AFTER, now),
            statuses: vec![UplinkStatus::default(); config.uplinks.len()],
            uplinks: config.uplinks,
            links,
            flows: Flows::new(config.policy),
            policy_source: config.policy_source,
            packages: BTreeMap::new(),
            bypass: None,
            tun: None,
            uplinks_changed: false,
            tun_mtu: None,
            next_housekeeping: now + HOUSEKEEPING_INTERVAL,
            released: VecDeque::new(),
            scratch: Vec::with_capacity(crate::flows::MAX_PENDING_PACKETS),
            resets: VecDeque::new(),
            lookups: VecDeque::new(),
            routing: VecDeque::new(),
            events: VecDeque::new(),
            counters: HostCounters::default(),
            interface_facts: Vec::new(),
            anchor_families: vec![if config.anchor.is_ipv4() {
                Family::V4
            } else {
                Family::V6
            }],
            uplink_changes: VecDeque::new(),
            copy: CopyBuf::default(),
            sleepers: 0,
            carrying: 0,
            idle_stale: true,
        };
        // The driver installs its fail-closed capture rules at start, before any session: the
        // bypass set must be there from the start too, or bypass apps lose their path until
        // the first handshake.
        host.publish_bypass();
        host
    }

    /// Replaces the anchors the host knows: the first is the one it starts with (every endpoint
    /// of it; its key is the client's), the others are tried in order when it is gone for
    /// `failover_after`. Call before the first input.
    pub fn set_anchors(
        &mut self,
        first: Vec<SocketAddr>,
        fallbacks: Vec<AnchorConfig>,
        failover_after: Duration,
        now: Instant,
    ) {
        let first = AnchorConfig {
            endpoints: if first.is_empty() {
                self.anchors.current().endpoints.clone()
            } else {
                first
            },
            public_key: self.client_config.anchor_public,
        };
        self.anchors = Anchors::new(first, fallbacks, failover_after, now);
    }

    /// The anchors and which one is in use.
    pub fn anchors(&self) -> &Anchors {
        &self.anchors
    }

    /// The endpoints of the anchor in use, preferred first: where uplink sockets connect.
    pub fn anchor_endpoints(&self) -> &[SocketAddr] {
        &self.anchors.current().endpoints
    }

    /// Puts `uplink` to sleep while it carries no flows (`idle = "sleep"`): no keepalives; the
    /// first packet of a flow on it wakes it (see [`crate::idle`]).
    pub fn set_sleep(&mut self, uplink: UplinkId, sleep: bool) {
        let bit = crate::idle::bit(uplink);
        if sleep {
            self.sleepers |= bit;
        } else {
            self.sleepers &= !bit;
        }
        self.idle_stale = true;
    }

    /// The uplink registry.
    pub fn uplinks(&self) -> &Uplinks {
        &self.uplinks
    }

    /// The flow layer (read only).
    pub fn flows(&self) -> &Flows {
        &self.flows
    }

    /// The protocol client (read only).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The host's own counters.
    pub fn counters(&self) -> HostCounters {
        self.counters
    }

    /// The uplinks as the policy sees them now.
    pub fn statuses(&self) -> &[UplinkStatus] {
        &self.statuses
    }

    /// Marks the uplinks whose data costs (the config's `metered = true`), in config order;
    /// rules with `avoid_metered` use them only as a last resort.
    pub fn set_metered(&mut self, metered: &[bool]) {
        for (link, &m) in self.links.iter_mut().zip(metered) {
            link.metered = m;
        }
    }

    /// Whether `uplink` is metered.
    pub fn is_metered(&self, uplink: UplinkId) -> bool {
        self.link(uplink).is_some_and(|l| l.metered)
    }

    /// The usage meter (read only).
    pub fn usage(&self) -> &Meter {
        &self.usage
    }

    /// Whether `uplink` has a socket now.
    pub fn is_available(&self, uplink: UplinkId) -> bool {
        self.link(uplink).is_some_and(|l| l.available)
    }

    fn link(&self, uplink: UplinkId) -> Option<&Link> {
        self.links.get(Uplinks::index(uplink))
    }

    // ---- inputs ----

    /// A packet an app sent: `buf[HEADER_LEN..HEADER_LEN + len]`. When its flow is known it is
    /// encapsulated in place and the datagram to send is returned (at the start of `buf`);
    /// otherwise it is queued, answered with a reset, or dropped (all counted).
    pub fn handle_tun_packet(
        &mut self,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<Transmit> {
        let packet = buf.get(HEADER_LEN..HEADER_LEN + len)?;
        if self.anchors.has_lost_flows() && self.lost_to_failover(packet) {
            queue_reset(&mut self.resets, &mut self.counters, packet);
            return None;
        }
        match self.flows.on_tun_packet(packet, now.as_duration()) {
            TunAction::Send(uplink) => self.encapsulate(uplink, buf, len, now),
            TunAction::Redundant { uplinks, flow } => {
                self.encapsulate_redundant(uplinks, flow, buf, len, now)
            }
            TunAction::Queued { key, new: true } => {
                self.lookups.push_back(key);
                None
            }
            TunAction::Queued { new: false, .. } | TunAction::Drop => None,
            TunAction::Reset => {
                if let Some(packet) = buf.get(HEADER_LEN..HEADER_LEN + len) {
                    queue_reset(&mut self.resets, &mut self.counters, packet);
                }
                None
            }
        }
    }

    /// A datagram that arrived on `path`'s socket, decrypted in place. Returns where the inner
    /// packet for the TUN is, if there is one.
    pub fn handle_datagram(
        &mut self,
        path: PathId,
        datagram: &mut [u8],
        now: Instant,
    ) -> Option<Range<usize>> {
        let result = self.client.handle_datagram(path, datagram, now);
        let range = match result {
            Ok(Some(range)) => range,
            Ok(None) => {
                // A handshake answer or a control message: what it changed (connected, a path
                // up) is acted on now, not at the next timer.
                self.pump(now);
                None?
            }
            Err(reason) => {
                // The client counted it.
                tracing::debug!(%path, reason = reason.as_str(), "datagram dropped");
                None?
            }
        };
        if let (Some(uplink), Some(packet)) =
            (self.uplinks.by_path(path), datagram.get(range.clone()))
        {
            self.flows.on_downlink(packet, uplink, now.as_duration());
            self.usage.note(Uplinks::index(uplink), packet.len());
        }
        self.pump(now);
        Some(range)
    }

    /// The app lookup answered for `key`: decide, then release (or reset) what waited for it.
    pub fn handle_owner(&mut self, key: FlowKey, owner: &Owner, now: Instant) {
        self.refresh_statuses(now);
        let mut released = std::mem::take(&mut self.scratch);
        let outcome =
            self.flows
                .classified(key, owner, &self.statuses, now.as_duration(), &mut released);
        tracing::trace!(?key, ?outcome, "classified");
        self.settle(outcome, released, now);
    }

    /// Sends, resets or keeps what waited for a flow just decided.
    fn settle(&mut self, outcome: Outcome, mut released: Vec<Vec<u8>>, now: Instant) {
        match outcome {
            Outcome::Tunnel(uplink) => {
                self.released
                    .extend(released.drain(..).map(|packet| (uplink, packet)));
                self.carry(uplink, now);
            }
            Outcome::Blocked => {
                for packet in &released {
                    queue_reset(&mut self.resets, &mut self.counters, packet);
                }
            }
            Outcome::Late => {
                let changed = self.redecide(now);
                tracing::debug!(flows = changed, "a late owner answer placed its flow");
            }
            Outcome::Held | Outcome::Stale => {}
        }
        self.flows.recycle(&mut released);
        self.scratch = released;
        self.signal_redundancy(now);
    }

    /// Decides flows whose owner lookup passed its bound by the default rule.
    fn decide_overdue(&mut self, now: Instant) {
        let mut refreshed = false;
        while let Some(key) = self.flows.next_overdue(now.as_duration()) {
            if !refreshed {
                self.refresh_statuses(now);
                refreshed = true;
            }
            let mut released = std::mem::take(&mut self.scratch);
            let outcome =
                self.flows
                    .decide_overdue(key, &self.statuses, now.as_duration(), &mut released);
            tracing::debug!(
                ?key,
                ?outcome,
                "owner lookup overdue: the default rule decides"
            );
            self.settle(outcome, released, now);
        }
    }

    /// The lookup for `key` could not be started (its queue is full): drop what waits for it.
    pub fn handle_lookup_refused(&mut self, key: &FlowKey) {
        self.flows.lookup_refused(key);
    }

    /// The driver opened a socket on `uplink` (bound to `local`): its path may carry traffic
    /// once the protocol has validated it.
    pub fn handle_uplink_available(
        &mut self,
        uplink: UplinkId,
        local: Option<SocketAddr>,
        now: Instant,
    ) {
        let Some(link) = self.links.get_mut(Uplinks::index(uplink)) else {
            return;
        };
        link.available = true;
        link.local = local;
        self.usage
            .set_ipv6(Uplinks::index(uplink), local.is_some_and(|a| a.is_ipv6()));
        self.client.handle_path_up(Uplinks::path(uplink), now);
        self.idle_stale = true;
        self.pump(now);
    }

    /// `uplink`'s interface has MTU `link_mtu`: its path MTU is searched below it (see
    /// `upmt_proto::client::pmtu`), again whenever it changes.
    pub fn handle_uplink_mtu(&mut self, uplink: UplinkId, link_mtu: u16, now: Instant) {
        let Some(link) = self.links.get(Uplinks::index(uplink)) else {
            return;
        };
        let headers = if link.local.is_some_and(|a| a.is_ipv6()) {
            40 + 8
        } else {
            20 + 8
        };
        self.client
            .set_path_link_mtu(Uplinks::path(uplink), link_mtu, headers, now);
        self.pump(now);
    }

    /// The driver closed `uplink`'s socket (its link or address went away). Its flows go where
    /// their policy says next.
    pub fn handle_uplink_lost(&mut self, uplink: UplinkId, now: Instant) {
        let Some(link) = self.links.get_mut(Uplinks::index(uplink)) else {
            return;
        };
        link.selector.lost();
        self.drop_link(uplink, now);
    }

    /// The driver could not open the socket of the last [`Change::Attach`] for `uplink`: the
    /// next listing tries the next candidate (or the same one, when it is the only one).
    pub fn handle_attach_failed(&mut self, uplink: UplinkId, now: Instant) {
        let Some(link) = self.links.get_mut(Uplinks::index(uplink)) else {
            return;
        };
        link.selector.attach_failed(now);
        link.interface = link.pattern.to_string();
        // The next listing tries again: at once here, a socket that cannot be opened (the only
        // candidate, say) would be retried in a busy loop.
        self.drop_link(uplink, now);
        self.observe_anchor(now);
    }

    /// What the host's interfaces look like now, and the families the anchor has endpoints
    /// in (preferred first). Each uplink keeps its interface or moves to another candidate;
    /// changes come out of [`MobileHost::poll_uplink_change`].
    pub fn handle_interfaces(
        &mut self,
        interfaces: Vec<InterfaceFacts>,
        anchor: Vec<Family>,
        now: Instant,
    ) {
        self.interface_facts = interfaces;
        self.anchor_families = anchor;
        self.select(now);
        self.observe_anchor(now);
    }

    /// Runs every uplink's selector on the last listing.
    fn select(&mut self, now: Instant) {
        let taken: Vec<String> = self
            .links
            .iter()
            .filter_map(|l| match &l.pattern {
                Pattern::Exact(n) => Some(n.clone()),
                Pattern::Prefix(_) => None,
            })
            .collect();
        let taken: Vec<&str> = taken.iter().map(String::as_str).collect();
        for (i, uplink) in self.uplinks.ids().enumerate().collect::<Vec<_>>() {
            let Some(link) = self.links.get_mut(i) else {
                continue;
            };
            let listed = crate::candidates::eligible(
                &link.pattern,
                &self.interface_facts,
                &self.anchor_families,
                &taken,
            );
            let Some(change) = link.selector.update(&listed, link.live, now) else {
                continue;
            };
            match &change {
                Change::Attach(a) => {
                    tracing::info!(uplink = %self.uplinks.name(uplink).unwrap_or_default(), attempt = %a, "uplink tries a candidate");
                    link.interface = a.interface.clone();
                }
                Change::Detach => link.interface = link.pattern.to_string(),
            }
            // Whatever socket it had goes; an Attach brings a new one.
            self.drop_link(uplink, now);
            self.uplink_changes.push_back((uplink, change));
        }
    }

    /// Forgets `uplink`'s socket: its path is down for the protocol, its flows move.
    fn drop_link(&mut self, uplink: UplinkId, now: Instant) {
        let Some(link) = self.links.get_mut(Uplinks::index(uplink)) else {
            return;
        };
        if !link.available {
            return;
        }
        link.available = false;
        link.local = None;
        link.live = false;
        self.uplinks_changed = true;
        self.client.handle_path_down(Uplinks::path(uplink), now);
        self.pump(now);
    }

    /// The TUN (named `name`) and the routing through it are in place.
    pub fn handle_tun_ready(&mut self, name: String) {
        self.tun = Some(name);
    }

    /// The deadline of [`MobileHost::poll_timeout`] passed (or may have: calling it early is
    /// harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.client.poll_timeout().is_some_and(|(at, _)| at <= now) {
            self.client.handle_timeout(now);
        }
        self.decide_overdue(now);
        if self
            .flows
            .selections_deadline()
            .is_some_and(|at| at <= now.as_duration())
        {
            self.tick_selections(now);
        }
        if self.selector_deadline().is_some_and(|at| at <= now) {
            self.select(now);
        }
        self.anchors.housekeeping(now);
        if self.anchors.failover_due(now) {
            self.fail_over(now);
        }
        if self.housekeeping_deadline().is_some_and(|at| at <= now) {
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            self.flows.housekeeping(now.as_duration());
            self.idle_stale = true;
            self.usage.harvest_removed(self.flows.expired(), now);
            // A returning uplink's hold-down ends without an event of its own.
            if self.statuses_stale(now) {
                self.uplinks_changed = true;
            }
        }
        if self.usage.deadline().is_some_and(|at| at <= now)
            && self.usage.on_timeout(self.flows.paft(), now)
        {
            self.caps_changed();
        }
        self.pump(now);
    }

    /// The uplinks' data caps, in config order (`None`: no cap). Checked at once when the date
    /// is known.
    pub fn set_caps(&mut self, caps: Vec<Option<crate::usage::Cap>>, now: Instant) {
        self.usage = Meter::new(self.uplinks.names().to_vec(), caps, now);
    }

    /// The wall clock at `now` (seconds since 1970 UTC, and the local offset east of UTC): the
    /// usage ledger's days and the caps' periods follow it. Call at start and now and then
    /// (every timer turn is fine): a new period lifts a reached cap.
    pub fn handle_wall_clock(&mut self, unix_secs: i64, utc_offset_secs: i32, now: Instant) {
        self.usage.set_clock(unix_secs, utc_offset_secs, now);
        self.caps_changed();
        self.pump(now);
    }

    /// The usage saved by an earlier run.
    pub fn load_usage(&mut self, ledger: Ledger, now: Instant) {
        self.usage.load(ledger, now);
        self.caps_changed();
        self.pump(now);
    }

    /// The usage ledger to save now, when something new was counted and a save interval
    /// passed since the last (see [`crate::usage::SAVE_INTERVAL`]); `force` at exit.
    pub fn poll_usage_save(&mut self, now: Instant, force: bool) -> Option<UsageFile> {
        if force {
            self.usage.harvest(self.flows.paft(), now);
        }
        self.usage.take_save(now, force)
    }

    /// Publishes cap changes: events, a log line, and the flows decided again at the next pump.
    fn caps_changed(&mut self) {
        while let Some(change) = self.usage.poll_change() {
            self.uplinks_changed = true;
            match change {
                CapChange::Reached {
                    uplink,
                    used,
                    limit,
                    resets,
                } => {
                    tracing::warn!(%uplink, used, cap = limit, %resets, "data cap reached: only essential apps use this uplink until the period ends");
                    self.events.push_back(Event::CapReached {
                        uplink,
                        used_bytes: used,
                        cap_bytes: limit,
                        resets: resets.to_string(),
                    });
                }
                CapChange::Restored { uplink } => {
                    tracing::info!(%uplink, "a new data cap period began: every app may use this uplink again");
                    self.events.push_back(Event::CapRestored { uplink });
                }
            }
        }
    }

    /// Replaces Android's package table (name -> uid), used for bypass rules that name apps.
    pub fn set_packages(&mut self, packages: BTreeMap<String, u32>) {
        self.packages = packages;
        self.publish_bypass();
    }

    /// Makes `policy` the one in force: every flow is decided again (moves and blocks are
    /// published) and the bypass set follows.
    pub fn reload_policy(&mut self, policy: Policy, now: Instant) -> ReloadReply {
        let rules = policy.rules().len();
        self.flows.set_policy(policy);
        let moved = self.redecide(now);
        tracing::info!(rules, flows_changed = moved, "policy reloaded");
        self.publish_bypass();
        let path = self.policy_source.clone();
        self.events.push_back(Event::PolicyReloaded {
            path: path.clone(),
            rules: rules as u64,
        });
        ReloadReply {
            path,
            rules: rules as u64,
            reevaluated: self.flows.paft().len() as u64,
            moved: moved as u64,
        }
    }

    /// Answers a control request. [`Request::ReloadPolicy`] (the driver reads the file and calls
    /// [`MobileHost::reload_policy`]) and [`Request::Watch`] (the server streams events) are
    /// not answered here.
    pub fn answer(&mut self, request: Request, now: Instant) -> Response {
        self.refresh_statuses(now);
        let names = self.uplinks.names().to_vec();
        let statuses = &self.statuses;
        let usable = |u: UplinkId| statuses.get(Uplinks::index(u)).is_some_and(|s| s.up);
        let mut events = Vec::new();
        let paft_now = now.as_duration();
        let result = match request {
            Request::Status => Ok(Response::Status(self.status_reply(now))),
            Request::Apps => {
                let (policy, statuses) = (self.flows.policy(), &self.statuses);
                let rule_of = |app: &AppId, uid| {
                    let who = identity(app, uid);
                    describe::matched_rule(policy, policy.decide(&who, statuses).matched)
                };
                let mut reply = answer::apps(self.flows.paft(), &names, rule_of);
                answer::add_blocked(&mut reply, self.flows.held(), rule_of);
                describe::choices(&mut reply, policy, self.flows.paft(), self.flows.held());
                crate::redundant::fill_costs(self.flows.redundancy(), &mut reply);
                Ok(Response::Apps(reply))
            }
            Request::Flows { app } => Ok(Response::Flows(answer::flows(
                self.flows.paft(),
                &names,
                paft_now,
                app.as_deref(),
            ))),
            Request::MoveFlow { flow, uplink } => answer::move_flow(
                self.flows.paft_mut(),
                &names,
                flow,
                &uplink,
                usable,
                &mut events,
            )
            .map(Response::Moved),
            Request::MoveApp { app, uplink } => answer::move_app(
                self.flows.paft_mut(),
                &names,
                &app,
                &uplink,
                usable,
                &mut events,
            )
            .map(Response::Moved),
            Request::UnpinFlow { flow } => {
                answer::unpin_flow(self.flows.paft_mut(), flow, &mut events).map(Response::Unpinned)
            }
            Request::UnpinApp { app } => {
                answer::unpin_app(self.flows.paft_mut(), &app, &mut events).map(Response::Unpinned)
            }
            Request::Usage { app, since } => {
                self.usage_reply(app.as_deref(), since.as_deref(), now)
            }
            Request::ReloadPolicy | Request::Watch => Err(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: format!("{} is served by the daemon, not the core", request.name()),
            }),
        };
        let unpinned = matches!(result, Ok(Response::Unpinned(ref r)) if !r.flows.is_empty());
        self.idle_stale |= !events.is_empty();
        self.publish(events, now);
        if unpinned {
            // Unpinned flows go back to their policy at once.
            self.redecide(now);
        }
        result.unwrap_or_else(Response::Error)
    }

    // ---- outputs ----

    /// The next path MTU probe, written like [`MobileHost::poll_transmit`]'s datagrams: the
    /// driver sends it with the don't-fragment bit forced and no local fragmentation, so the
    /// probe measures the path.
    pub fn poll_mtu_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.client.poll_mtu_probe(now, buf)
    }

    /// The next datagram to send, written at the start of `buf` (which must have room for a
    /// whole packet plus [`HEADER_LEN`] and the tag): the protocol's own (handshakes, probes,
    /// signals) first, then the packets that waited for their flow's owner (and, for a redundant
    /// flow, each one's copy on its second uplink).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self.client.poll_transmit(now, buf) {
            return Some(t);
        }
        if let Some(t) = self.pending_copy(buf) {
            return Some(t);
        }
        while let Some((uplink, packet)) = self.released.pop_front() {
            let n = packet.len();
            let copied = match buf.get_mut(HEADER_LEN..HEADER_LEN + n) {
                Some(slot) => {
                    slot.copy_from_slice(&packet);
                    true
                }
                None => false,
            };
            self.flows.recycle_one(packet);
            if copied && let Some(t) = self.encapsulate_released(uplink, buf, n, now) {
                return Some(t);
            }
        }
        None
    }

    /// The next datagram for an uplink's disposable NAT-test socket (see
    /// [`upmt_proto::client::natlearn`]), written at the start of `buf`.
    pub fn poll_nat_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<upmt_proto::client::NatTransmit> {
        self.client.poll_nat_transmit(now, buf)
    }

    /// A datagram that arrived on `path`'s NAT-test socket.
    pub fn handle_nat_datagram(&mut self, path: PathId, datagram: &mut [u8], now: Instant) {
        if let Err(reason) = self.client.handle_nat_datagram(path, datagram, now) {
            tracing::debug!(%path, reason = reason.as_str(), "test socket datagram dropped");
        }
    }

    /// The next TCP reset to write into the TUN, copied into `buf`; its length.
    pub fn poll_tun_write(&mut self, buf: &mut [u8]) -> Option<usize> {
        let (packet, len) = self.resets.pop_front()?;
        let out = buf.get_mut(..len)?;
        out.copy_from_slice(&packet[..len]);
        Some(len)
    }

    /// The next flow whose owner the driver should look up (answer with
    /// [`MobileHost::handle_owner`], or [`MobileHost::handle_lookup_refused`]).
    pub fn poll_lookup(&mut self) -> Option<FlowKey> {
        self.lookups.pop_front()
    }

    /// The next routing change for the driver.
    pub fn poll_routing(&mut self) -> Option<RoutingIntent> {
        self.routing.pop_front()
    }

    /// The next change of an uplink's socket: [`Change::Attach`] (close the old socket, open
    /// one on that interface toward the anchor's endpoint of that family, then call
    /// [`MobileHost::handle_uplink_available`] or [`MobileHost::handle_attach_failed`]) or
    /// [`Change::Detach`] (close it). The host has already counted the old socket gone.
    pub fn poll_uplink_change(&mut self) -> Option<(UplinkId, Change)> {
        self.uplink_changes.pop_front()
    }

    /// The real interface `uplink` is on now (its configured name while it has no socket).
    pub fn interface(&self, uplink: UplinkId) -> Option<&str> {
        self.link(uplink).map(|l| l.interface.as_str())
    }

    fn selector_deadline(&self) -> Option<Instant> {
        self.links
            .iter()
            .filter_map(|l| l.selector.deadline())
            .min()
    }

    /// Whether any output other than the protocol's own datagrams waits.
    pub fn has_output(&self) -> bool {
        !(self.released.is_empty()
            && self.uplink_changes.is_empty()
            && self.resets.is_empty()
            && self.lookups.is_empty()
            && self.routing.is_empty()
            && self.events.is_empty())
    }

    /// The next event for the control socket's watchers.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`MobileHost::handle_timeout`] must run next.
    /// `None`: nothing is due until an input arrives.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.housekeeping_deadline(),
            self.client.poll_timeout().map(|(at, _)| at),
            self.flows.lookup_deadline().map(Instant::from_duration),
            self.selector_deadline(),
            self.flows.selections_deadline().map(Instant::from_duration),
            self.anchors.deadline(),
            self.usage.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- internals ----

    /// When the flows need housekeeping (see [`Flows::housekeeping_deadline`]), or a returning
    /// uplink's hold-down is looked at (on the regular tick while one runs).
    fn housekeeping_deadline(&self) -> Option<Instant> {
        let tick = self.next_housekeeping;
        let flows = self
            .flows
            .housekeeping_deadline(tick.as_duration())
            .map(Instant::from_duration);
        let holding_down = self
            .links
            .iter()
            .zip(&self.statuses)
            .any(|(l, s)| l.live && l.available && !s.up);
        match (flows, holding_down) {
            (Some(at), true) => Some(at.min(tick)),
            (Some(at), false) => Some(at),
            (None, true) => Some(tick),
            (None, false) => None,
        }
    }

    fn encapsulate(
        &mut self,
        uplink: UplinkId,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<Transmit> {
        if !self.is_available(uplink) {
            self.counters.tun_no_path += 1;
            return None;
        }
        let path = Uplinks::path(uplink);
        match self.client.encapsulate(path, buf, len, now) {
            Ok(sealed) => {
                self.usage.note(Uplinks::index(uplink), len);
                Some(Transmit {
                    path,
                    dst: None,
                    len: sealed,
                })
            }
            Err(reason) => {
                // The client counted it (no session yet, too big, ...).
                tracing::debug!(reason = reason.as_str(), "TUN packet dropped");
                None
            }
        }
    }

    /// A redundant flow's packet: sealed in place for its first uplink, and a copy for the
    /// second one sealed into the host's copy buffer ([`MobileHost::take_copy`]). With only one
    /// of the two uplinks open, it goes on that one.
    fn encapsulate_redundant(
        &mut self,
        uplinks: [UplinkId; 2],
        flow: FlowId,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<Transmit> {
        match uplinks.map(|u| self.is_available(u)) {
            [true, true] => {}
            [false, true] => return self.encapsulate(uplinks[1], buf, len, now),
            _ => return self.encapsulate(uplinks[0], buf, len, now),
        }
        let paths = uplinks.map(Uplinks::path);
        let copy = self.copy.buf.get_or_insert_with(|| vec![0; COPY_BUF_LEN]);
        match self
            .client
            .encapsulate_redundant(paths, buf, len, copy, now)
        {
            Ok((n, second)) => {
                if let Some(m) = second {
                    self.copy.ready = Some((paths[1], m));
                    self.flows.redundancy_mut().count_copy(flow, m);
                }
                Some(Transmit {
                    path: paths[0],
                    dst: None,
                    len: n,
                })
            }
            Err(reason) => {
                tracing::debug!(reason = reason.as_str(), "TUN packet dropped");
                None
            }
        }
    }

    /// The second copy of the packet [`MobileHost::handle_tun_packet`] just encapsulated, if
    /// its flow is redundant: send it on the returned path too.
    pub fn take_copy(&mut self) -> Option<(PathId, &[u8])> {
        let (path, len) = self.copy.ready.take()?;
        Some((path, self.copy.buf.as_deref()?.get(..len)?))
    }

    /// Tells the anchor about every flow whose second uplink changed (new redundant flows
    /// too), so it duplicates their downlink.
    fn signal_redundancy(&mut self, now: Instant) {
        let mut changed = Vec::new();
        self.flows.redundancy_mut().take_changed(&mut changed);
        for id in changed {
            self.signal_move(id, now);
        }
    }

    /// Takes in the protocol client's events, then decides flows again if uplinks changed.
    fn pump(&mut self, now: Instant) {
        while let Some(event) = self.client.poll_event() {
            self.client_event(event, now);
        }
        if std::mem::take(&mut self.uplinks_changed) {
            let changed = self.redecide(now);
            if changed > 0 {
                tracing::info!(
                    flows = changed,
                    "flows decided again after an uplink change"
                );
            }
            self.resend_moved(now);
        }
        if std::mem::take(&mut self.idle_stale) {
            self.carrying = crate::idle::carrying(self.flows.paft(), self.flows.redundancy());
            self.set_idle_modes(now);
        }
        self.observe_anchor(now);
        self.follow_path_mtu();
    }

    /// Asks for a new TUN MTU when the live paths' MTUs call for another one.
    fn follow_path_mtu(&mut self) {
        let Some(session_mtu) = self.client.session().map(|p| p.mtu) else {
            return;
        };
        let paths = self.links.iter().enumerate().filter(|(_, l)| l.live);
        let mtus = paths.filter_map(|(i, l)| {
            let mtu = self
                .client
                .path_mtu(PathId(u8::try_from(i).unwrap_or(u8::MAX)))?;
            Some((mtu, l.local.is_some_and(|a| a.is_ipv6())))
        });
        let wanted = crate::pmtu::inner_mtu(session_mtu, mtus);
        if wanted != self.tun_mtu.unwrap_or(session_mtu) {
            tracing::info!(mtu = wanted, "inner MTU follows the path MTU");
            self.tun_mtu = Some(wanted);
            self.routing.push_back(RoutingIntent::TunMtu(wanted));
        }
    }

    /// Tells the anchors whether a path is up and whether the phone has a network.
    fn observe_anchor(&mut self, now: Instant) {
        let any_live = self.links.iter().any(|l| l.live);
        let any_network = any_live || self.any_network();
        self.anchors.observe(any_live, any_network, now);
    }

    /// Whether the phone has a network: an uplink with a socket, or an interface of an uplink
    /// that is up (its socket toward this anchor may fail: no route, not the anchor's family).
    fn any_network(&self) -> bool {
        self.links.iter().any(|l| l.available)
            || self.interface_facts.iter().any(|f| {
                f.up && (f.global_v4 || f.global_v6)
                    && self.links.iter().any(|l| l.pattern.matches(&f.name))
            })
    }

    fn client_event(&mut self, event: ClientEvent, now: Instant) {
        match event {
            ClientEvent::Connected(params) => {
                self.events.push_back(Event::SessionUp);
                tracing::info!(
                    virtual_ipv4 = %format_args!("{}/{}", params.virtual_ipv4, params.prefix4),
                    virtual_ipv6 = ?params.virtual_ipv6,
                    mtu = params.mtu,
                    cipher = %params.cipher,
                    "connected to the anchor"
                );
                self.routing.push_back(RoutingIntent::Connect(params));
                self.tun_mtu = None;
            }
            ClientEvent::Disconnected => {
                // TUN and routes stay: traffic is dropped rather than leaked while re-handshaking.
                tracing::warn!("session lost; handshaking again");
                self.events.push_back(Event::SessionDown);
            }
            ClientEvent::PathUp(path) | ClientEvent::PathDown(path) => {
                let up = matches!(event, ClientEvent::PathUp(_));
                self.uplinks_changed = true;
                let Some(uplink) = self.uplinks.by_path(path) else {
                    return;
                };
                let name = self.uplinks.name(uplink).unwrap_or_default().to_owned();
                if let Some(link) = self.links.get_mut(Uplinks::index(uplink)) {
                    link.live = up;
                    link.selector.path_changed(up, now);
                }
                if up {
                    tracing::info!(%path, uplink = %name, "path up");
                    self.events.push_back(Event::TunnelUp { uplink: name });
                } else {
                    self.moved_off.push(path);
                    tracing::warn!(%path, uplink = %name, "path down");
                    self.events.push_back(Event::TunnelDown { uplink: name });
                }
            }
            ClientEvent::Rekeyed => tracing::info!("session rekeyed"),
        }
    }

    /// The anchor in use is gone: a fresh client for the next one, every flow forgotten (TCP
    /// ones reset, see [`crate::anchors`]) and every uplink's socket replaced by one toward the
    /// new anchor.
    fn fail_over(&mut self, now: Instant) {
        let from = self.anchors.current().endpoints[0];
        let local: Vec<std::net::IpAddr> = self
            .client
            .session()
            .map(|p| {
                std::iter::once(std::net::IpAddr::V4(p.virtual_ipv4))
                    .chain(p.virtual_ipv6.map(std::net::IpAddr::V6))
                    .collect()
            })
            .unwrap_or_default();
        let policy = self.flows.policy().clone();
        let old = std::mem::replace(&mut self.flows, Flows::new(policy));
        let (tcp, other): (Vec<FlowKey>, Vec<FlowKey>) = old
            .paft()
            .iter()
            .map(|(k, _)| *k)
            .partition(|k| k.proto == upmt_paft::proto::TCP);
        for key in &tcp {
            self.ask_for_a_segment(key, &local);
        }
        let next = self.anchors.fail_over(tcp, other.len(), now).clone();
        tracing::warn!(
            from = %from,
            to = %next.endpoints[0],
            waited_ms = self.anchors.failover_after().as_millis() as u64,
            flows_reset = self.anchors.last_failover().map_or(0, |f| f.flows_reset),
            flows_forgotten = other.len(),
            "no answer from the anchor on any uplink: failing over to the next anchor; its flows are lost"
        );
        let mut config = self.client_config.clone();
        config.anchor_public = next.public_key;
        // The client's signal sequence numbers and handshake timestamps follow the unix clock.
        let elapsed = now.saturating_duration_since(self.started).as_nanos();
        let seed = self
            .client_seed
            .wrapping_add(u64::try_from(elapsed).unwrap_or(u64::MAX));
        self.client = Client::new(config, now, seed);
        self.events.push_back(Event::SessionDown);
        self.anchor_families = next
            .endpoints
            .iter()
            .map(|e| if e.is_ipv4() { Family::V4 } else { Family::V6 })
            .collect();
        for link in &mut self.links {
            link.selector.lost();
            link.available = false;
            link.local = None;
            link.live = false;
            link.interface = link.pattern.to_string();
        }
        self.uplinks_changed = true;
        // Every uplink attaches again, now toward the new anchor's endpoints.
        self.select(now);
    }

    /// Two ACKs to the app's end of the lost TCP flow `key`, half the sequence space apart:
    /// its TCP answers one with a segment that is then reset.
    fn ask_for_a_segment(&mut self, key: &FlowKey, local: &[std::net::IpAddr]) {
        let (app, peer) = if local.contains(&key.src) {
            ((key.src, key.sport), (key.dst, key.dport))
        } else if local.contains(&key.dst) {
            ((key.dst, key.dport), (key.src, key.sport))
        } else {
            return;
        };
        for seq in [0, 1 << 31] {
            if self.resets.len() >= MAX_RESETS {
                self.counters.resets_dropped += 1;
                return;
            }
            let mut out = [0u8; RESET_LEN];
            if let Some(n) = crate::rst::tcp_ack_probe(peer.into(), app.into(), seq, &mut out) {
                self.resets.push_back((out, n));
            }
        }
    }

    /// Whether `packet` belongs to a TCP flow lost when the host moved to another anchor.
    fn lost_to_failover(&self, packet: &[u8]) -> bool {
        upmt_paft::parse_packet(packet).is_ok_and(|m| self.anchors.is_lost(&m.key))
    }

    /// Which anchor is in use, when there is more than one.
    fn active_anchor(&self, now: Instant) -> Option<Box<ActiveAnchor>> {
        if self.anchors.len() < 2 {
            return None;
        }
        let a = self.anchors.current();
        let failover = self.anchors.last_failover();
        let from = failover.and_then(|f| self.anchors.get(f.from));
        Some(Box::new(ActiveAnchor {
            index: self.anchors.index() as u64,
            anchors: self.anchors.len() as u64,
            endpoints: a.endpoints.clone(),
            public_key: a.public_key.to_string(),
            since_s: now
                .saturating_duration_since(self.anchors.since())
                .as_secs(),
            failed_over_from: from.map(|f| f.endpoints[0]),
            flows_reset: failover.map_or(0, |f| (f.flows_reset + f.flows_forgotten) as u64),
            note: failover.zip(from).map(|(f, from)| {
                format!(
                    "failed over from {} {}s ago: {} flows reset",
                    from.endpoints[0],
                    now.saturating_duration_since(f.at).as_secs(),
                    f.flows_reset + f.flows_forgotten
                )
            }),
        }))
    }

    fn usable(&self, index: usize, link: &Link, now: Instant) -> bool {
        let path = PathId(u8::try_from(index).unwrap_or(u8::MAX));
        // The protocol's hold-down keeps a returning uplink out until it proved stable.
        link.live && link.available && self.client.path_usable(path, now)
    }

    fn statuses_stale(&self, now: Instant) -> bool {
        self.links
            .iter()
            .enumerate()
            .zip(&self.statuses)
            .any(|((i, l), s)| s.up != self.usable(i, l, now))
    }

    /// Refreshes the policy's view of the uplinks in place (runs for every new flow).
    fn refresh_statuses(&mut self, now: Instant) {
        let mut statuses = std::mem::take(&mut self.statuses);
        for (i, (status, link)) in statuses.iter_mut().zip(&self.links).enumerate() {
            let stats = self
                .client
                .path_stats(PathId(u8::try_from(i).unwrap_or(u8::MAX)));
            let rtt = stats.as_ref().and_then(|p| p.rtt);
            *status = UplinkStatus {
                up: self.usable(i, link, now),
                rtt,
                // Loss counts once a probe was answered: before, 0 % means nothing.
                loss: stats.filter(|_| rtt.is_some()).map(|p| p.loss),
                metered: link.metered,
                capped: self.usage.is_capped(i),
            };
        }
        self.statuses = statuses;
    }

    /// Looks at the measured rules' choices again; when one that moves existing flows
    /// changed, its flows follow.
    fn tick_selections(&mut self, now: Instant) {
        self.refresh_statuses(now);
        let mut switches = Vec::new();
        self.flows
            .tick_selections(&self.statuses, now.as_duration(), &mut switches);
        let names = self.uplinks.names();
        let name = |i: Option<usize>| i.and_then(|i| names.get(i)).map_or("none", String::as_str);
        for s in &switches {
            let rule = describe::matched_rule(self.flows.policy(), s.rule);
            if s.from.is_some() {
                tracing::info!(%rule, from = name(s.from), to = name(Some(s.to)), "select: the rule's choice changed");
            } else {
                tracing::debug!(%rule, to = name(Some(s.to)), "select: the rule's first choice");
            }
        }
        if switches.iter().any(|s| s.move_existing && s.from.is_some()) {
            self.redecide_because(now, MoveReason::Measured);
        }
    }

    /// Decides every flow again: flows pinned to an uplink that is no longer usable are
    /// unpinned first, and every move and block is published (and moves signalled to the
    /// anchor). Returns how many flows changed.
    fn redecide(&mut self, now: Instant) -> usize {
        self.redecide_because(now, MoveReason::Policy)
    }

    /// [`MobileHost::redecide`], moves published with `reason`.
    fn redecide_because(&mut self, now: Instant, reason: MoveReason) -> usize {
        self.refresh_statuses(now);
        let mut events = Vec::new();
        for (i, status) in self.statuses.iter().enumerate() {
            if !status.up
                && let Some(u) = self.uplinks.at(i)
            {
                answer::unpin_on_uplink_down(self.flows.paft_mut(), u, &mut events);
            }
        }
        self.publish(events, now);
        let mut before = Vec::new();
        answer::placements(self.flows.paft(), &mut before);
        let changed = self.flows.redecide(&self.statuses, now.as_duration());
        self.idle_stale = true;
        let mut events = Vec::new();
        answer::placement_events(
            &before,
            self.flows.paft(),
            self.uplinks.names(),
            &mut events,
        );
        for e in &mut events {
            if let Event::FlowMoved { reason: r, .. } = e {
                *r = reason;
            }
        }
        self.publish(events, now);
        self.signal_redundancy(now);
        changed
    }

    /// A flow was placed on `uplink`: its path (and, for a session's first flow, every path)
    /// keeps its NAT binding from now on. No scan: flows only ever leave an uplink in the
    /// places that mark the modes stale.
    fn carry(&mut self, uplink: UplinkId, now: Instant) {
        let bit = crate::idle::bit(uplink);
        if self.carrying & bit == 0 {
            self.carrying |= bit;
            self.set_idle_modes(now);
        }
    }

    /// Tells the client what each path sends while idle.
    fn set_idle_modes(&mut self, now: Instant) {
        for i in 0..self.uplinks.len() {
            let Some(uplink) = self.uplinks.at(i) else {
                continue;
            };
            let mode = crate::idle::mode(crate::idle::bit(uplink), self.carrying, self.sleepers);
            self.client.set_path_idle(Uplinks::path(uplink), mode, now);
        }
    }

    /// Queues events for watchers, and tells the anchor about every flow that moved.
    fn publish(&mut self, events: Vec<Event>, now: Instant) {
        for e in events {
            if let Event::FlowMoved { flow, .. } = &e {
                self.signal_move(FlowId(*flow), now);
            }
            self.events.push_back(e);
        }
    }

    /// Signals a moved flow's new path to the anchor (acked and retransmitted by the client),
    /// so its downlink follows at once instead of after the flow's next uplink packet: a
    /// download may send nothing upstream for a while.
    fn signal_move(&mut self, id: FlowId, now: Instant) {
        let Some((key, entry)) = self.flows.paft().by_id(id) else {
            return;
        };
        // The PAFT keys flows in the direction of their first packet, which on the mobile host
        // leaves through the TUN: the source is ours, the destination is the correspondent.
        let flow = upmt_proto::control::FlowKey {
            protocol: key.proto,
            remote: key.dst,
            remote_port: key.dport,
            local_port: key.sport,
        };
        let redundant = self.flows.redundancy().second(id).map(Uplinks::path);
        self.client
            .move_flows_redundant(&[flow], Uplinks::path(entry.uplink()), redundant, now);
    }

    fn usage_reply(
        &mut self,
        app: Option<&str>,
        since: Option<&str>,
        now: Instant,
    ) -> Result<Response, ErrorReply> {
        let since = match since {
            None => None,
            Some(text) => Some(Day::parse(text).ok_or_else(|| ErrorReply {
                kind: ErrorKind::BadRequest,
                message: format!("invalid date {text:?}: expected YYYY-MM-DD"),
            })?),
        };
        self.usage.harvest(self.flows.paft(), now);
        self.usage
            .reply(app, since, now)
            .map(Response::Usage)
            .map_err(|message| ErrorReply {
                kind: ErrorKind::Unavailable,
                message,
            })
    }

    /// The uids whose traffic bypasses the tunnel: `uid = N` bypass rules, and bypass rules by
    /// app name whose uid the package table gives.
    pub fn bypass_uids(&self) -> Vec<u32> {
        let mut uids: Vec<u32> = self
            .flows
            .policy()
            .rules()
            .iter()
            .filter(|r| r.route == Route::Bypass)
            .filter_map(|r| match &r.matcher {
                Matcher::Uid(u) => Some(*u),
                Matcher::App(name) => self.packages.get(name).copied(),
                Matcher::Glob(..) => None,
            })
            .collect();
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    /// Hands the bypass set to the driver when it changed (and once at start, session or not).
    fn publish_bypass(&mut self) {
        let uids = self.bypass_uids();
        if self.bypass.as_ref() != Some(&uids) {
            self.bypass = Some(uids.clone());
            self.routing.push_back(RoutingIntent::Bypass(uids));
        }
    }

    fn status_reply(&self, now: Instant) -> StatusReply {
        let anchor = self.anchor_endpoints()[0];
        let session = match self.client.session() {
            Some(params) => SessionStatus {
                state: SessionState::Connected,
                anchor,
                virtual_addresses: std::iter::once(std::net::IpAddr::V4(params.virtual_ipv4))
                    .chain(params.virtual_ipv6.map(std::net::IpAddr::V6))
                    .collect(),
                tun: self.tun.clone(),
                active_anchor: None,
                cipher: Some(params.cipher.into()),
            },
            None => SessionStatus {
                state: SessionState::Handshaking,
                anchor,
                virtual_addresses: Vec::new(),
                tun: None,
                active_anchor: None,
                cipher: None,
            },
        };
        let mut session = session;
        session.active_anchor = self.active_anchor(now);
        // Bytes per tunnel: the inner bytes of the live flows it carried.
        let mut bytes = vec![(0u64, 0u64); self.links.len()];
        for (_, e) in self.flows.paft().iter() {
            for (u, b) in self.uplinks.ids().zip(bytes.iter_mut()) {
                let c = e.counters(u);
                b.0 += c.bytes[0];
                b.1 += c.bytes[1];
            }
        }
        let tunnels = self
            .uplinks
            .ids()
            .zip(&self.links)
            .zip(bytes)
            .map(|((u, link), b)| {
                let mut t = answer::tunnel(
                    self.uplinks.name(u).unwrap_or_default(),
                    &link.interface,
                    link.local.filter(|_| link.available),
                    self.client.path_stats(Uplinks::path(u)),
                    self.client.path_idle_interval(Uplinks::path(u)),
                    b,
                );
                t.metered = link.metered;
                t.keepalive_learning = self.client.path_keepalive_learning(Uplinks::path(u));
                t.resent_bytes = self.resent_bytes(Uplinks::path(u));
                t
            })
            .collect();
        let c = self.flows.counters();
        StatusReply {
            session,
            tunnels,
            // The lookup's own counts are the driver's to fill in.
            owners: Some(Box::new(OwnerLookups {
                lookups_overdue: c.lookups_overdue,
                late_answers: c.late_answers,
                ..OwnerLookups::default()
            })),
        }
    }
}

fn identity(app: &AppId, uid: Option<u32>) -> AppIdentity<'_> {
    AppIdentity {
        name: (app.as_str() != UNKNOWN_APP).then_some(app.as_str()),
        uid,
    }
}

fn queue_reset(
    resets: &mut VecDeque<([u8; RESET_LEN], usize)>,
    counters: &mut HostCounters,
    packet: &[u8],
) {
    if resets.len() >= MAX_RESETS {
        counters.resets_dropped += 1;
        return;
    }
    let mut out = [0u8; RESET_LEN];
    if let Some(n) = crate::rst::tcp_reset(packet, &mut out) {
        counters.resets += 1;
        resets.push_back((out, n));
    }
}
