//! Per-flow forwarding for the event loop: which uplink each packet from the TUN takes.
//!
//! A packet of a known flow costs one PAFT lookup (`touch`) and no allocation. The first packet
//! of a new flow is parsed, checked against the never-tunnelled destinations, and queued in a
//! small bounded per-flow queue ([`MAX_PENDING_PACKETS`], at most [`MAX_PENDING_FLOWS`] flows,
//! buffers from a pool) while the driver asks its app-lookup worker who owns it; other
//! flows keep moving meanwhile. [`Flows::classified`] takes the answer, decides with the policy,
//! records the flow and hands back its queued packets. Blocked flows (and flows held because
//! no uplink is up at all) are kept aside so their later packets are dropped (TCP: reset)
//! without a new lookup, and are decided again when uplinks or the policy change.
//!
//! This module never does IO: the loop reads, sends, writes resets and asks the worker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use upmt_paft::{
    AppId, Dir, Entry, FlowId, FlowKey, MAX_UPLINKS, NewFlow, Paft, UplinkId, parse_packet,
};
use upmt_policy::{AppIdentity, Placing, Policy, UplinkStatus, Verdict};

use crate::owner::Owner;
use crate::redundant::Redundancy;
use crate::select::{Selections, Switch};
use crate::uplinks::Uplinks;

/// Packets of one new flow kept while its owner is looked up; later ones are dropped.
pub const MAX_PENDING_PACKETS: usize = 16;
/// New flows waiting for their owner at once; beyond this new flows are dropped (their
/// senders retry) rather than given a rule that may not be theirs.
pub const MAX_PENDING_FLOWS: usize = 256;
/// A lookup that has not answered after this is given up; the flow starts over. The host
/// decides overdue flows long before ([`LOOKUP_BOUND`]); this is the backstop.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a new flow's first packet waits for its owner. Past it the flow is decided by
/// the policy's default rule and decided again when the late answer arrives. Owners are found
/// in well under a millisecond in the common cases (Android app uids, the Linux inode index);
/// this bounds the rare slow one (hundreds of processes starting at once) without moving flows
/// whose lookup is merely a little slow under load.
pub const LOOKUP_BOUND: Duration = Duration::from_millis(100);
/// Blocked and held flows remembered at once; past this the one idle longest is forgotten (its
/// next packet is looked up and decided again).
pub const MAX_HELD: usize = 4096;
/// Blocked and held flows are forgotten after this long without a packet.
pub const HELD_IDLE: Duration = Duration::from_secs(60);
/// Pooled buffers kept for reuse.
const POOL_MAX: usize = 1024;
/// Apps whose ended flows' bytes are remembered for [`Flows::app_totals`]; beyond this, ended
/// flows of further apps are summed under [`UNKNOWN_APP`] (the table cannot grow without bound).
pub const MAX_RETIRED_APPS: usize = 1024;
/// The name recorded for flows whose owner is unknown.
pub const UNKNOWN_APP: &str = "";

/// What the loop does with one packet from the TUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunAction {
    /// Encapsulate and send on this uplink.
    Send(UplinkId),
    /// A redundant flow's packet: send it on both uplinks (the first is the flow's own).
    Redundant {
        /// The flow's uplink, then its second one.
        uplinks: [UplinkId; 2],
        /// The flow, to count what the copy cost.
        flow: FlowId,
    },
    /// Queued while the flow's owner is looked up; `new`: ask the worker for `key`.
    Queued { key: FlowKey, new: bool },
    /// Dropped (counted).
    Drop,
    /// Dropped; answer a TCP segment with a reset.
    Reset,
}

/// What became of a classified flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A late answer for a flow already decided by the default rule: its owner is recorded;
    /// decide the flows again ([`Flows::redecide`]).
    Late,
    /// Tunnelled on this uplink: send the queued packets there.
    Tunnel(UplinkId),
    /// Blocked by the policy: reset TCP, drop the rest.
    Blocked,
    /// No uplink is up at all: dropped silently, decided again when one comes up.
    Held,
    /// The answer came for a flow no longer waiting.
    Stale,
}

/// Counters of the flow layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowCounters {
    /// Flows tunnelled.
    pub flows_tunnelled: u64,
    /// Flows blocked by the policy.
    pub flows_blocked: u64,
    /// Flows of bypass apps that reached the TUN anyway (tunnelled: bypass needs uid rules).
    pub bypass_in_tun: u64,
    /// Packets that are not IP or are truncated.
    pub unparsable: u64,
    /// Packets to never-tunnelled destinations (multicast, broadcast, link-local...).
    pub never_tunnelled: u64,
    /// Packets dropped because their flow's pending queue was full.
    pub pending_overflow: u64,
    /// Packets dropped because too many flows were pending, or the worker's queue was full.
    pub pending_flows_full: u64,
    /// Lookups given up after [`PENDING_TIMEOUT`].
    pub pending_timeouts: u64,
    /// Packets dropped on blocked flows.
    pub blocked_packets: u64,
    /// Packets dropped while no uplink was up.
    pub held_packets: u64,
    /// Flows refused by the full PAFT.
    pub table_full: u64,
    /// Flows moved to another uplink on an uplink or policy change.
    pub moved: u64,
    /// Flows decided by the default rule because their lookup passed [`LOOKUP_BOUND`].
    pub lookups_overdue: u64,
    /// Answers that came for such a flow after it was decided, and decided it again.
    pub late_answers: u64,
    /// Blocked or held flows forgotten because [`MAX_HELD`] were held.
    pub held_evicted: u64,
}

struct Pending {
    packets: Vec<Vec<u8>>,
    since: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum HoldReason {
    Blocked,
    NoUplink,
}

struct Held {
    app: AppId,
    uid: Option<u32>,
    reason: HoldReason,
    last_seen: Duration,
    packets: u64,
}

/// The flow table with its policy.
pub struct Flows {
    paft: Paft,
    policy: Policy,
    pending: HashMap<FlowKey, Pending>,
    /// Pending flows in the order they arrived, for their [`LOOKUP_BOUND`]; entries of flows no
    /// longer pending are skipped.
    arrivals: VecDeque<(Duration, FlowKey)>,
    /// Flows decided by the default rule while their lookup was overdue, and since when.
    provisional: HashMap<FlowKey, Duration>,
    held: HashMap<FlowKey, Held>,
    pool: Vec<Vec<u8>>,
    counters: FlowCounters,
    expired: Vec<(FlowKey, Entry)>,
    ids: Vec<FlowId>,
    keys: Vec<FlowKey>,
    /// Measured and spreading rules' choices.
    selections: Selections,
    /// Bytes of ended flows per app and uplink, so per-app totals never go down.
    retired: BTreeMap<AppId, AppBytes>,
    redundancy: Redundancy,
}

/// Bytes per uplink (index = [`UplinkId`]): `[sent, received]`.
pub type AppBytes = [[u64; 2]; MAX_UPLINKS];

fn identity<'a>(app: &'a AppId, uid: Option<u32>) -> AppIdentity<'a> {
    let name = app.as_str();
    AppIdentity {
        name: (name != UNKNOWN_APP).then_some(name),
        uid,
    }
}

impl Flows {
    /// An empty table deciding with `policy`.
    pub fn new(policy: Policy) -> Flows {
        Flows {
            paft: Paft::new(upmt_paft::Config::default()),
            policy,
            pending: HashMap::with_capacity(MAX_PENDING_FLOWS),
            arrivals: VecDeque::with_capacity(MAX_PENDING_FLOWS),
            provisional: HashMap::new(),
            held: HashMap::new(),
            pool: Vec::new(),
            counters: FlowCounters::default(),
            expired: Vec::new(),
            ids: Vec::new(),
            keys: Vec::new(),
            selections: Selections::new(),
            retired: BTreeMap::new(),
            redundancy: Redundancy::default(),
        }
    }

    /// Bytes each app sent and received per uplink since the start, ended flows included (so
    /// the sums only grow, as metrics counters must). Computed on call: O(flows + apps).
    pub fn app_totals(&self) -> BTreeMap<AppId, AppBytes> {
        let mut totals = self.retired.clone();
        for (_, e) in self.paft.iter() {
            add_entry(
                totals
                    .entry(e.app().clone())
                    .or_insert([[0; 2]; MAX_UPLINKS]),
                e,
            );
        }
        totals
    }

    /// Keeps an ending flow's bytes for [`Flows::app_totals`].
    fn retire(&mut self, e: &Entry) {
        let app = if self.retired.len() < MAX_RETIRED_APPS || self.retired.contains_key(e.app()) {
            e.app().clone()
        } else {
            AppId::from(UNKNOWN_APP)
        };
        add_entry(self.retired.entry(app).or_insert([[0; 2]; MAX_UPLINKS]), e);
    }

    /// The redundant flows and what their copies cost.
    pub fn redundancy(&self) -> &Redundancy {
        &self.redundancy
    }

    /// The redundant flows, to count copies and take changes.
    pub fn redundancy_mut(&mut self) -> &mut Redundancy {
        &mut self.redundancy
    }

    /// How a known flow's packet goes out: on its uplink, and on its second one if redundant.
    fn send_action(redundancy: &Redundancy, e: &Entry) -> TunAction {
        if !redundancy.is_empty()
            && let Some(second) = redundancy.second(e.id())
        {
            return TunAction::Redundant {
                uplinks: [e.uplink(), second],
                flow: e.id(),
            };
        }
        TunAction::Send(e.uplink())
    }

    /// Sets the second uplink of flow `id` from its rule (none unless redundant).
    fn place_second(&mut self, id: FlowId, uplinks: &[UplinkStatus]) {
        let Some((_, e)) = self.paft.by_id(id) else {
            return;
        };
        let app = e.app().clone();
        let first = Uplinks::index(e.uplink());
        let second = self
            .policy
            .redundant_uplink(&identity(&app, e.uid()), uplinks, first)
            .and_then(Uplinks::id_for_index);
        self.redundancy.set(id, &app, second);
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy; call [`Flows::redecide`] after.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
        self.selections.reset();
    }

    /// The measured and spreading rules' choices.
    pub fn selections(&self) -> &Selections {
        &self.selections
    }

    /// When [`Flows::tick_selections`] is due: while the policy has a measured or spreading
    /// rule and flows exist and move data.
    pub fn selections_deadline(&self) -> Option<Duration> {
        if self.paft.is_empty() {
            return None;
        }
        self.selections.deadline(&self.policy)
    }

    /// Looks at the measured rules' choices again ([`Selections::tick`]); the choices that
    /// changed go to `switches`. Flows of rules that move existing flows follow at the next
    /// [`Flows::redecide`].
    pub fn tick_selections(
        &mut self,
        uplinks: &[UplinkStatus],
        now: Duration,
        switches: &mut Vec<Switch>,
    ) {
        self.selections.tick(&self.policy, uplinks, now, switches);
    }

    /// The flow table (read only).
    pub fn paft(&self) -> &Paft {
        &self.paft
    }

    /// The flow table, for the control socket's moves (`upmt move` pins flows in it).
    pub fn paft_mut(&mut self) -> &mut Paft {
        &mut self.paft
    }

    /// The counters.
    pub fn counters(&self) -> FlowCounters {
        self.counters
    }

    /// Blocked and held flows: each one's app, uid, and whether its policy blocks it (rather
    /// than no uplink being up).
    pub fn held(&self) -> impl Iterator<Item = (&AppId, Option<u32>, bool)> {
        self.held
            .values()
            .map(|h| (&h.app, h.uid, h.reason == HoldReason::Blocked))
    }

    /// The flows the last [`Flows::housekeeping`] expired, with their final counters.
    pub fn expired(&self) -> &[(FlowKey, Entry)] {
        &self.expired
    }

    /// Flows waiting for their owner.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Where a packet read from the TUN goes. No allocation for known flows.
    pub fn on_tun_packet(&mut self, packet: &[u8], now: Duration) -> TunAction {
        let Ok(meta) = parse_packet(packet) else {
            self.counters.unparsable += 1;
            return TunAction::Drop;
        };
        let key = meta.key;
        if let Some(e) = self
            .paft
            .touch(&key, Dir::Orig, packet.len(), meta.tcp_flags, None, now)
        {
            self.selections
                .capacity_mut()
                .sent(Uplinks::index(e.uplink()), packet.len());
            return Self::send_action(&self.redundancy, e);
        }
        // An inbound flow's replies (the AN forwarded the first packet to us).
        if let Some(e) = self.paft.touch(
            &key.reversed(),
            Dir::Reply,
            packet.len(),
            meta.tcp_flags,
            None,
            now,
        ) {
            self.selections
                .capacity_mut()
                .sent(Uplinks::index(e.uplink()), packet.len());
            return Self::send_action(&self.redundancy, e);
        }
        if let Some(h) = self.held.get_mut(&key) {
            h.last_seen = now;
            h.packets += 1;
            return match h.reason {
                HoldReason::Blocked => {
                    self.counters.blocked_packets += 1;
                    TunAction::Reset
                }
                HoldReason::NoUplink => {
                    self.counters.held_packets += 1;
                    TunAction::Drop
                }
            };
        }
        if let Some(p) = self.pending.get_mut(&key) {
            if p.packets.len() >= MAX_PENDING_PACKETS {
                self.counters.pending_overflow += 1;
                return TunAction::Drop;
            }
            let buf = take_buf(&mut self.pool, packet);
            if let Some(p) = self.pending.get_mut(&key) {
                p.packets.push(buf);
            }
            return TunAction::Queued { key, new: false };
        }
        if upmt_policy::is_never_tunnelled(key.dst, &[]) {
            self.counters.never_tunnelled += 1;
            return TunAction::Drop;
        }
        if self.pending.len() >= MAX_PENDING_FLOWS {
            self.counters.pending_flows_full += 1;
            return TunAction::Drop;
        }
        let mut packets = Vec::with_capacity(MAX_PENDING_PACKETS);
        packets.push(take_buf(&mut self.pool, packet));
        self.pending.insert(
            key,
            Pending {
                packets,
                since: now,
            },
        );
        self.arrivals.push_back((now, key));
        TunAction::Queued { key, new: true }
    }

    /// The worker could not take the request for `key`: drop what waits for it.
    pub fn lookup_refused(&mut self, key: &FlowKey) {
        if let Some(p) = self.pending.remove(key) {
            self.counters.pending_flows_full += p.packets.len() as u64;
            self.recycle_all(p.packets);
        }
        self.trim_arrivals();
    }

    /// When the oldest pending flow's lookup passes [`LOOKUP_BOUND`].
    pub fn lookup_deadline(&self) -> Option<Duration> {
        self.arrivals
            .iter()
            .find(|(since, key)| self.is_pending_since(key, *since))
            .map(|(since, _)| *since + LOOKUP_BOUND)
    }

    /// A pending flow whose lookup passed [`LOOKUP_BOUND`] at `now`; decide it with
    /// [`Flows::decide_overdue`].
    pub fn next_overdue(&mut self, now: Duration) -> Option<FlowKey> {
        self.trim_arrivals();
        let &(since, key) = self.arrivals.front()?;
        (now.saturating_sub(since) >= LOOKUP_BOUND).then_some(key)
    }

    /// Decides the overdue flow `key` by the default rule (its owner unknown), like
    /// [`Flows::classified`]; the owner's answer, when it comes, decides it again.
    pub fn decide_overdue(
        &mut self,
        key: FlowKey,
        uplinks: &[UplinkStatus],
        now: Duration,
        out: &mut Vec<Vec<u8>>,
    ) -> Outcome {
        self.counters.lookups_overdue += 1;
        let outcome = self.classified(key, &Owner::unknown(), uplinks, now, out);
        if outcome != Outcome::Stale {
            self.provisional.insert(key, now);
        }
        outcome
    }

    fn is_pending_since(&self, key: &FlowKey, since: Duration) -> bool {
        self.pending.get(key).is_some_and(|p| p.since == since)
    }

    /// Drops arrivals of flows no longer pending from the front, so the oldest is first.
    fn trim_arrivals(&mut self) {
        while let Some(&(since, key)) = self.arrivals.front() {
            if self.is_pending_since(&key, since) {
                return;
            }
            self.arrivals.pop_front();
        }
    }

    /// The owner of a flow decided by the default rule arrived: record it so the next
    /// re-decision places the flow by its own rule.
    fn late_answer(&mut self, key: FlowKey, app: AppId, uid: Option<u32>) -> Outcome {
        if self.provisional.remove(&key).is_none() {
            return Outcome::Stale;
        }
        self.counters.late_answers += 1;
        if let Some(e) = self.paft.get_mut(&key) {
            e.set_app(app, uid);
        } else if let Some(h) = self.held.get_mut(&key) {
            h.app = app;
            h.uid = uid;
        } else {
            return Outcome::Stale;
        }
        Outcome::Late
    }

    /// Accounts a packet that came down `path` (its flow's reply direction), so the table
    /// sees both directions and their counters. Unknown flows are left alone.
    pub fn on_downlink(&mut self, packet: &[u8], uplink: UplinkId, now: Duration) {
        self.selections
            .capacity_mut()
            .received(Uplinks::index(uplink), packet.len());
        if let Ok(meta) = parse_packet(packet) {
            let _ = self.paft.touch(
                &meta.key.reversed(),
                Dir::Reply,
                packet.len(),
                meta.tcp_flags,
                Some(uplink),
                now,
            );
        }
    }

    /// The owner of `key` is known: decide, record the flow, and move its queued packets into
    /// `out` (return them with [`Flows::recycle`] once sent).
    pub fn classified(
        &mut self,
        key: FlowKey,
        owner: &Owner,
        uplinks: &[UplinkStatus],
        now: Duration,
        out: &mut Vec<Vec<u8>>,
    ) -> Outcome {
        let app: AppId = match &owner.name {
            Some(n) => AppId::from(Arc::clone(n)),
            None => AppId::from(UNKNOWN_APP),
        };
        let Some(pending) = self.pending.remove(&key) else {
            return self.late_answer(key, app, owner.uid);
        };
        self.trim_arrivals();
        self.selections.at(now);
        let decision = self.policy.decide_with(
            &identity(&app, owner.uid),
            uplinks,
            Placing::New,
            &mut self.selections,
        );
        let outcome = match decision.verdict {
            Verdict::Tunnel(i) => self.admit(key, &app, owner.uid, i, uplinks, now),
            Verdict::Bypass => {
                // Bypass works through uid routing rules, before the TUN; a bypass app whose
                // uid has no rule lands here, and is tunnelled rather than cut off.
                self.counters.bypass_in_tun += 1;
                tracing::info!(app = %app, uid = ?owner.uid, "bypass app's flow reached the TUN (its uid has no bypass rule); tunnelling it");
                match uplinks.iter().position(|s| s.up) {
                    Some(i) => self.admit(key, &app, owner.uid, i, uplinks, now),
                    None => self.hold(key, app.clone(), owner.uid, HoldReason::NoUplink, now),
                }
            }
            Verdict::Block => {
                self.counters.flows_blocked += 1;
                tracing::info!(app = %app, uid = ?owner.uid, flow = ?key, rule = ?decision.matched, "flow blocked by the policy");
                self.hold(key, app.clone(), owner.uid, HoldReason::Blocked, now)
            }
            Verdict::NoUplinkUp => {
                self.hold(key, app.clone(), owner.uid, HoldReason::NoUplink, now)
            }
        };
        if let Outcome::Tunnel(path) = outcome {
            tracing::debug!(app = %app, uid = ?owner.uid, pid = ?owner.pid, source = ?owner.source, flow = ?key, %path, rule = ?decision.matched, "new flow");
            for p in &pending.packets {
                if let Ok(meta) = parse_packet(p) {
                    let _ = self
                        .paft
                        .touch(&key, Dir::Orig, p.len(), meta.tcp_flags, None, now);
                }
            }
        }
        out.extend(pending.packets);
        outcome
    }

    fn admit(
        &mut self,
        key: FlowKey,
        app: &AppId,
        uid: Option<u32>,
        index: usize,
        uplinks: &[UplinkStatus],
        now: Duration,
    ) -> Outcome {
        let Some(uplink) = Uplinks::id_for_index(index) else {
            return self.hold(key, app.clone(), uid, HoldReason::NoUplink, now);
        };
        let flow = NewFlow {
            app: app.clone(),
            uid,
            uplink,
            pinned: false,
        };
        match self.paft.insert(key, flow, now) {
            Ok(_) | Err(upmt_paft::InsertError::Exists(_)) => {
                self.counters.flows_tunnelled += 1;
                if let Some(id) = self.paft.lookup(&key).map(|e| e.id()) {
                    self.place_second(id, uplinks);
                }
                Outcome::Tunnel(uplink)
            }
            Err(upmt_paft::InsertError::Full(_)) => {
                self.counters.table_full += 1;
                Outcome::Stale
            }
        }
    }

    fn hold(
        &mut self,
        key: FlowKey,
        app: AppId,
        uid: Option<u32>,
        reason: HoldReason,
        now: Duration,
    ) -> Outcome {
        if self.held.len() >= MAX_HELD && !self.held.contains_key(&key) {
            // Rare (thousands of blocked flows at once): a scan is fine.
            let oldest = self
                .held
                .iter()
                .min_by_key(|(_, h)| h.last_seen)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.held.remove(&k);
                self.counters.held_evicted += 1;
            }
        }
        self.held.insert(
            key,
            Held {
                app,
                uid,
                reason,
                last_seen: now,
                packets: 0,
            },
        );
        match reason {
            HoldReason::Blocked => Outcome::Blocked,
            HoldReason::NoUplink => Outcome::Held,
        }
    }

    /// Returns buffers handed out by [`Flows::classified`].
    pub fn recycle(&mut self, bufs: &mut Vec<Vec<u8>>) {
        for b in bufs.drain(..) {
            if self.pool.len() < POOL_MAX {
                self.pool.push(b);
            }
        }
    }

    /// Returns one buffer handed out by [`Flows::classified`].
    pub fn recycle_one(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX {
            self.pool.push(buf);
        }
    }

    fn recycle_all(&mut self, mut bufs: Vec<Vec<u8>>) {
        self.recycle(&mut bufs);
    }

    /// Decides every flow again (uplinks or the policy changed): flows move to the uplink
    /// their rule now picks, flows whose rule forbids every uplink that is up are blocked,
    /// and blocked or held flows that are now allowed are let through. Pinned flows stay.
    /// Returns how many flows changed.
    pub fn redecide(&mut self, uplinks: &[UplinkStatus], now: Duration) -> usize {
        let mut changed = 0;
        self.selections.at(now);
        self.ids.clear();
        self.ids.extend(self.paft.iter().map(|(_, e)| e.id()));
        let ids = std::mem::take(&mut self.ids);
        for &id in &ids {
            let Some((key, e)) = self.paft.by_id(id) else {
                continue;
            };
            if e.pinned() {
                continue;
            }
            let key = *key;
            let current = e.uplink();
            let verdict = self
                .policy
                .decide_with(
                    &identity(e.app(), e.uid()),
                    uplinks,
                    Placing::Existing(Uplinks::index(current)),
                    &mut self.selections,
                )
                .verdict;
            match verdict {
                Verdict::Tunnel(i) => {
                    if let Some(u) = Uplinks::id_for_index(i)
                        && u != current
                    {
                        let _ = self.paft.set_uplink(id, u, false);
                        self.counters.moved += 1;
                        changed += 1;
                        tracing::info!(flow = %id, app = %self.paft.by_id(id).map(|(_, e)| e.app().to_string()).unwrap_or_default(), from = %current, to = %u, "flow moved");
                    }
                }
                Verdict::Block => {
                    if let Some((_, e)) = self.paft.remove(id) {
                        self.retire(&e);
                        tracing::info!(flow = %id, app = %e.app(), "flow blocked: its policy forbids every uplink that is up");
                        self.counters.flows_blocked += 1;
                        self.hold(key, e.app().clone(), e.uid(), HoldReason::Blocked, now);
                        changed += 1;
                    }
                }
                // Nothing is up: keep the flow where it is; its packets fail to send (counted)
                // until an uplink returns, and the connection survives a short outage.
                Verdict::NoUplinkUp | Verdict::Bypass => {}
            }
            self.place_second(id, uplinks);
        }
        self.ids = ids;
        let paft = &self.paft;
        self.redundancy.retain(|id| paft.by_id(id).is_some());
        self.keys.clear();
        self.keys.extend(self.held.keys().copied());
        let keys = std::mem::take(&mut self.keys);
        for key in &keys {
            let Some(h) = self.held.get(key) else {
                continue;
            };
            let verdict = self
                .policy
                .decide_with(
                    &identity(&h.app, h.uid),
                    uplinks,
                    Placing::New,
                    &mut self.selections,
                )
                .verdict;
            let target = match verdict {
                Verdict::Tunnel(i) => Some(i),
                Verdict::Bypass => uplinks.iter().position(|s| s.up),
                Verdict::Block => {
                    if let Some(h) = self.held.get_mut(key) {
                        h.reason = HoldReason::Blocked;
                    }
                    None
                }
                Verdict::NoUplinkUp => None,
            };
            if let Some(i) = target
                && let Some(h) = self.held.remove(key)
            {
                self.admit(*key, &h.app, h.uid, i, uplinks, now);
                changed += 1;
            }
        }
        self.keys = keys;
        changed
    }

    /// When [`Flows::housekeeping`] must run next: at the next flow expiry, or on the caller's
    /// regular tick (`tick`) while lookups are pending or flows are held or provisional (those
    /// live seconds). `None`: nothing to expire, no need to wake.
    pub fn housekeeping_deadline(&self, tick: Duration) -> Option<Duration> {
        let transient =
            !(self.pending.is_empty() && self.held.is_empty() && self.provisional.is_empty());
        match (self.paft.poll_timeout(), transient) {
            (Some(expiry), true) => Some(expiry.min(tick)),
            (Some(expiry), false) => Some(expiry),
            (None, true) => Some(tick),
            (None, false) => None,
        }
    }

    /// Timers: expires idle flows, gives up lookups older than [`PENDING_TIMEOUT`], forgets
    /// held flows idle for [`HELD_IDLE`]. Call when [`Flows::housekeeping_deadline`] says.
    pub fn housekeeping(&mut self, now: Duration) {
        self.expired.clear();
        self.paft.expire(now, &mut self.expired);
        // The list grows to the largest expiry burst; give that back once a round needs a
        // quarter of it or less.
        shrink_after_burst(&mut self.expired);
        if !self.expired.is_empty() && !self.redundancy.is_empty() {
            let paft = &self.paft;
            self.redundancy.retain(|id| paft.by_id(id).is_some());
        }
        let expired = std::mem::take(&mut self.expired);
        for (key, e) in &expired {
            let t = e.total();
            tracing::debug!(flow = %e.id(), app = %e.app(), ?key, up = t.bytes[0], down = t.bytes[1], "flow expired");
            self.retire(e);
        }
        self.expired = expired;
        self.keys.clear();
        self.keys.extend(
            self.pending
                .iter()
                .filter(|(_, p)| now.saturating_sub(p.since) > PENDING_TIMEOUT)
                .map(|(k, _)| *k),
        );
        let keys = std::mem::take(&mut self.keys);
        for k in &keys {
            if let Some(p) = self.pending.remove(k) {
                self.counters.pending_timeouts += 1;
                self.recycle_all(p.packets);
            }
        }
        self.keys = keys;
        self.trim_arrivals();
        self.held
            .retain(|_, h| now.saturating_sub(h.last_seen) <= HELD_IDLE);
        // An answer later than this is not coming (the worker gave up long before).
        self.provisional
            .retain(|_, since| now.saturating_sub(*since) <= PENDING_TIMEOUT);
        // Hash maps never shrink by themselves: after a burst of blocked flows or slow
        // lookups, give the memory back once they are mostly empty.
        if self.held.capacity() > 4 * self.held.len() + 256 {
            self.held.shrink_to(2 * self.held.len());
        }
        if self.provisional.capacity() > 4 * self.provisional.len() + 256 {
            self.provisional.shrink_to(2 * self.provisional.len());
        }
    }

    /// What the table holds now, for the control socket and logs. `uplink_names` are the
    /// config's, in path order.
    pub fn snapshot(&self, uplink_names: &[String], now: Duration) -> FlowsSnapshot {
        let name_of = |u: UplinkId| uplink_names.get(Uplinks::index(u)).cloned();
        let mut flows = Vec::with_capacity(self.paft.len() + self.held.len());
        let mut apps: HashMap<(String, Option<u32>), AppInfo> = HashMap::new();
        for (key, e) in self.paft.iter() {
            let t = e.total();
            let info = FlowInfo {
                id: Some(e.id().0),
                protocol: key.proto,
                src: key.src,
                sport: key.sport,
                dst: key.dst,
                dport: key.dport,
                app: e.app().to_string(),
                uid: e.uid(),
                uplink: name_of(e.uplink()),
                state: "tunnel",
                pinned: e.pinned(),
                packets_up: t.packets[0],
                packets_down: t.packets[1],
                bytes_up: t.bytes[0],
                bytes_down: t.bytes[1],
                idle_ms: now.saturating_sub(e.last_seen()).as_millis() as u64,
            };
            let a = apps
                .entry((info.app.clone(), info.uid))
                .or_insert_with(|| AppInfo::new(&info.app, info.uid));
            a.flows += 1;
            a.bytes_up += t.bytes[0];
            a.bytes_down += t.bytes[1];
            if let Some(u) = &info.uplink
                && !a.uplinks.contains(u)
            {
                a.uplinks.push(u.clone());
            }
            flows.push(info);
        }
        for (key, h) in &self.held {
            let info = FlowInfo {
                id: None,
                protocol: key.proto,
                src: key.src,
                sport: key.sport,
                dst: key.dst,
                dport: key.dport,
                app: h.app.to_string(),
                uid: h.uid,
                uplink: None,
                state: match h.reason {
                    HoldReason::Blocked => "blocked",
                    HoldReason::NoUplink => "no-uplink",
                },
                pinned: false,
                packets_up: h.packets,
                packets_down: 0,
                bytes_up: 0,
                bytes_down: 0,
                idle_ms: now.saturating_sub(h.last_seen).as_millis() as u64,
            };
            let a = apps
                .entry((info.app.clone(), info.uid))
                .or_insert_with(|| AppInfo::new(&info.app, info.uid));
            a.flows += 1;
            a.blocked_flows += 1;
            flows.push(info);
        }
        flows.sort_by_key(|f| f.id.unwrap_or(u64::MAX));
        let mut apps: Vec<AppInfo> = apps.into_values().collect();
        apps.sort_by(|a, b| (&a.name, a.uid).cmp(&(&b.name, b.uid)));
        FlowsSnapshot {
            flows,
            apps,
            pending: self.pending.len(),
            counters: self.counters,
        }
    }
}

/// Adds one flow's bytes per uplink to `bytes`.
fn add_entry(bytes: &mut AppBytes, e: &Entry) {
    for (i, b) in bytes.iter_mut().enumerate() {
        if let Some(u) = Uplinks::id_for_index(i) {
            let c = e.counters(u);
            b[0] += c.bytes[0];
            b[1] += c.bytes[1];
        }
    }
}

/// Shrinks `v` to twice its length when its capacity passed four times that: memory comes
/// back after a burst without reallocating on every round.
fn shrink_after_burst<T>(v: &mut Vec<T>) {
    let used = v.len().max(64);
    if v.capacity() > 4 * used {
        v.shrink_to(2 * used);
    }
}

fn take_buf(pool: &mut Vec<Vec<u8>>, packet: &[u8]) -> Vec<u8> {
    let mut b = pool.pop().unwrap_or_default();
    b.clear();
    b.extend_from_slice(packet);
    b
}

/// One flow, as the control socket shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowInfo {
    /// The PAFT id (`None` for blocked or held flows, which are not in the table).
    pub id: Option<u64>,
    /// IP protocol number.
    pub protocol: u8,
    /// Local address.
    pub src: IpAddr,
    /// Local port (ICMP: echo id).
    pub sport: u16,
    /// Remote address.
    pub dst: IpAddr,
    /// Remote port.
    pub dport: u16,
    /// Owning app (empty: unknown).
    pub app: String,
    /// Owning uid.
    pub uid: Option<u32>,
    /// The uplink carrying it.
    pub uplink: Option<String>,
    /// `tunnel`, `blocked` or `no-uplink`.
    pub state: &'static str,
    /// Pinned by the user.
    pub pinned: bool,
    /// Packets sent.
    pub packets_up: u64,
    /// Packets received.
    pub packets_down: u64,
    /// Bytes sent.
    pub bytes_up: u64,
    /// Bytes received.
    pub bytes_down: u64,
    /// Time since its last packet.
    pub idle_ms: u64,
}

/// One app's flows, summed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppInfo {
    /// App name (empty: unknown).
    pub name: String,
    /// Its uid.
    pub uid: Option<u32>,
    /// Flows it has.
    pub flows: usize,
    /// Of which blocked or held.
    pub blocked_flows: usize,
    /// Bytes sent.
    pub bytes_up: u64,
    /// Bytes received.
    pub bytes_down: u64,
    /// Uplinks its flows use.
    pub uplinks: Vec<String>,
}

impl AppInfo {
    fn new(name: &str, uid: Option<u32>) -> AppInfo {
        AppInfo {
            name: name.to_owned(),
            uid,
            flows: 0,
            blocked_flows: 0,
            bytes_up: 0,
            bytes_down: 0,
            uplinks: Vec::new(),
        }
    }
}

/// The flow layer's state at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowsSnapshot {
    /// Every flow, by id (blocked and held ones last).
    pub flows: Vec<FlowInfo>,
    /// Every app with flows.
    pub apps: Vec<AppInfo>,
    /// Flows waiting for their owner.
    pub pending: usize,
    /// The counters.
    pub counters: FlowCounters,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::Source;

    /// Video on wifi, the store on cell, uid 4242 bypassed, the rest on wifi.
    const POLICY: &str = include_str!("../tests/fixtures/two-apps-policy.toml");

    fn up(n: u8) -> UplinkId {
        UplinkId::new(n).expect("below MAX_UPLINKS")
    }

    fn flows() -> Flows {
        Flows::new(Policy::parse(POLICY, "policy.toml", &["wifi", "cell"]).unwrap())
    }

    fn udp(sport: u16, dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 77, 0, 2]);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&53u16.to_be_bytes());
        p[24..26].copy_from_slice(&8u16.to_be_bytes());
        p
    }

    fn owner(name: &str) -> Owner {
        Owner {
            name: Some(name.into()),
            uid: Some(0),
            pid: Some(1),
            source: Source::Process,
        }
    }

    const UP: UplinkStatus = UplinkStatus {
        up: true,
        rtt: None,
        loss: None,
        metered: false,
        capped: false,
    };
    const BOTH_UP: [UplinkStatus; 2] = [UP, UP];
    const T: Duration = Duration::from_secs(10);

    #[test]
    fn a_new_flow_waits_for_its_owner_then_goes_where_the_policy_says() {
        let mut f = flows();
        let p = udp(1000, [192, 0, 2, 2]);
        let TunAction::Queued { key, new: true } = f.on_tun_packet(&p, T) else {
            panic!("first packet must be queued as new");
        };
        assert_eq!(
            f.on_tun_packet(&p, T),
            TunAction::Queued { key, new: false }
        );
        let mut out = Vec::new();
        let o = f.classified(key, &owner("com.example.store"), &BOTH_UP, T, &mut out);
        assert_eq!(o, Outcome::Tunnel(up(1)));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], p);
        f.recycle(&mut out);
        // Known now: straight to its path, and the queued packets were counted.
        assert_eq!(f.on_tun_packet(&p, T), TunAction::Send(up(1)));
        let e = f.paft().lookup(&key).unwrap();
        assert_eq!(e.app().as_str(), "com.example.store");
        assert_eq!(e.total().packets[0], 3);
    }

    #[test]
    fn app_totals_keep_the_bytes_of_flows_that_ended() {
        let mut f = flows();
        let p = udp(1000, [192, 0, 2, 2]);
        let TunAction::Queued { key, .. } = f.on_tun_packet(&p, T) else {
            panic!("first packet must be queued");
        };
        let mut out = Vec::new();
        f.classified(key, &owner("com.example.store"), &BOTH_UP, T, &mut out);
        f.recycle(&mut out);
        assert_eq!(f.on_tun_packet(&p, T), TunAction::Send(up(1)));
        let live = f.app_totals();
        let store = AppId::from("com.example.store");
        assert_eq!(
            live[&store][1],
            [56, 0],
            "two packets of 28 bytes sent on cell"
        );
        assert_eq!(live[&store][0], [0, 0]);
        // Long idle: the flow expires, its bytes stay with the app.
        f.housekeeping(T + Duration::from_secs(3600));
        assert_eq!(f.paft().len(), 0);
        assert_eq!(f.app_totals(), live);
        // A new flow of the same app adds to them.
        let q = udp(1001, [192, 0, 2, 2]);
        let TunAction::Queued { key, .. } = f.on_tun_packet(&q, T) else {
            panic!()
        };
        f.classified(key, &owner("com.example.store"), &BOTH_UP, T, &mut out);
        assert_eq!(f.app_totals()[&store][1], [84, 0]);
    }

    #[test]
    fn the_pending_queue_is_bounded_per_flow_and_in_flows() {
        let mut f = flows();
        let p = udp(1000, [192, 0, 2, 2]);
        for _ in 0..MAX_PENDING_PACKETS {
            assert!(matches!(f.on_tun_packet(&p, T), TunAction::Queued { .. }));
        }
        assert_eq!(f.on_tun_packet(&p, T), TunAction::Drop);
        assert_eq!(f.counters().pending_overflow, 1);
        for port in 1..MAX_PENDING_FLOWS as u16 {
            assert!(matches!(
                f.on_tun_packet(&udp(1000 + port, [192, 0, 2, 2]), T),
                TunAction::Queued { new: true, .. }
            ));
        }
        assert_eq!(f.pending_len(), MAX_PENDING_FLOWS);
        assert_eq!(f.on_tun_packet(&udp(9, [192, 0, 2, 2]), T), TunAction::Drop);
        assert_eq!(f.counters().pending_flows_full, 1);
        // Lookups that never answer are given up, freeing the queue.
        f.housekeeping(T + PENDING_TIMEOUT + Duration::from_secs(1));
        assert_eq!(f.pending_len(), 0);
        assert_eq!(f.counters().pending_timeouts, MAX_PENDING_FLOWS as u64);
    }

    #[test]
    fn a_flow_whose_only_uplink_is_down_is_blocked_and_reset_never_sent_elsewhere() {
        let mut f = flows();
        let p = udp(1000, [192, 0, 2, 2]);
        let TunAction::Queued { key, .. } = f.on_tun_packet(&p, T) else {
            panic!()
        };
        let cell_down = [
            UplinkStatus {
                up: true,
                rtt: None,
                ..UplinkStatus::default()
            },
            UplinkStatus::default(),
        ];
        let mut out = Vec::new();
        let o = f.classified(key, &owner("com.example.store"), &cell_down, T, &mut out);
        assert_eq!(o, Outcome::Blocked);
        assert_eq!(f.on_tun_packet(&p, T), TunAction::Reset);
        assert_eq!(f.counters().blocked_packets, 1);
        // Cell comes back: the flow is let through on cell.
        assert_eq!(f.redecide(&BOTH_UP, T), 1);
        assert_eq!(f.on_tun_packet(&p, T), TunAction::Send(up(1)));
    }

    #[test]
    fn flows_move_when_their_uplink_goes_down_or_are_blocked_when_nothing_allowed_is_up() {
        let mut f = flows();
        let mut out = Vec::new();
        let unknown = udp(2000, [192, 0, 2, 2]);
        let video = udp(2001, [192, 0, 2, 2]);
        for (p, who) in [
            (&unknown, Owner::unknown()),
            (&video, owner("com.example.video")),
        ] {
            let TunAction::Queued { key, .. } = f.on_tun_packet(p, T) else {
                panic!()
            };
            f.classified(key, &who, &BOTH_UP, T, &mut out);
        }
        assert_eq!(f.on_tun_packet(&unknown, T), TunAction::Send(up(0)));
        let wifi_down = [
            UplinkStatus::default(),
            UplinkStatus {
                up: true,
                rtt: None,
                ..UplinkStatus::default()
            },
        ];
        assert_eq!(f.redecide(&wifi_down, T), 2);
        assert_eq!(f.on_tun_packet(&unknown, T), TunAction::Send(up(1)));
        assert_eq!(f.on_tun_packet(&video, T), TunAction::Reset);
        let snap = f.snapshot(&["wifi".into(), "cell".into()], T);
        assert_eq!(snap.flows.len(), 2);
        let v = snap
            .apps
            .iter()
            .find(|a| a.name == "com.example.video")
            .unwrap();
        assert_eq!(v.blocked_flows, 1);
    }

    #[test]
    fn the_held_flows_are_bounded_and_the_longest_idle_is_forgotten_first() {
        let mut f = flows();
        let cell_down = [
            UplinkStatus {
                up: true,
                rtt: None,
                ..UplinkStatus::default()
            },
            UplinkStatus::default(),
        ];
        let mut out = Vec::new();
        for i in 0..=MAX_HELD {
            let port = 10_000 + i as u16;
            let p = udp(port, [192, 0, 2, 2]);
            let TunAction::Queued { key, .. } =
                f.on_tun_packet(&p, T + Duration::from_millis(i as u64))
            else {
                panic!("new flow {i} must be queued")
            };
            let o = f.classified(key, &owner("com.example.store"), &cell_down, T, &mut out);
            assert_eq!(o, Outcome::Blocked);
            f.recycle(&mut out);
        }
        let snap = f.snapshot(&["wifi".into(), "cell".into()], T);
        assert_eq!(snap.flows.len(), MAX_HELD);
        assert_eq!(f.counters().held_evicted, 1);
    }

    #[test]
    fn multicast_broadcast_and_garbage_never_enter_the_tunnel() {
        let mut f = flows();
        assert_eq!(
            f.on_tun_packet(&udp(1, [224, 0, 0, 251]), T),
            TunAction::Drop
        );
        assert_eq!(
            f.on_tun_packet(&udp(1, [255, 255, 255, 255]), T),
            TunAction::Drop
        );
        assert_eq!(f.counters().never_tunnelled, 2);
        assert_eq!(f.on_tun_packet(&[0x45, 1, 2], T), TunAction::Drop);
        assert_eq!(f.counters().unparsable, 1);
        assert_eq!(f.pending_len(), 0);
    }

    #[test]
    fn downlink_packets_count_on_the_path_they_came_on() {
        let mut f = flows();
        let p = udp(3000, [192, 0, 2, 2]);
        let TunAction::Queued { key, .. } = f.on_tun_packet(&p, T) else {
            panic!()
        };
        let mut out = Vec::new();
        f.classified(key, &owner("com.example.video"), &BOTH_UP, T, &mut out);
        let mut reply = p.clone();
        reply[12..16].copy_from_slice(&[192, 0, 2, 2]);
        reply[16..20].copy_from_slice(&[10, 77, 0, 2]);
        reply[20..22].copy_from_slice(&53u16.to_be_bytes());
        reply[22..24].copy_from_slice(&3000u16.to_be_bytes());
        f.on_downlink(&reply, up(1), T);
        let e = f.paft().lookup(&key).unwrap();
        assert_eq!(e.counters(UplinkId::new(1).unwrap()).packets[1], 1);
        assert_eq!(e.counters(UplinkId::new(0).unwrap()).packets[0], 1);
    }
}
