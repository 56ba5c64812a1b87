//! The table itself: a slab of flows, a keyed hash index over it, an id index, and a
//! lazily cleaned min-heap of expiry deadlines.
//!
//! Layout and why:
//! - `index: FlowKey -> slot` is the only structure touched per packet. Its buckets are
//!   small (44 bytes), so the power-of-two growth of the hash table wastes little; the big
//!   entries live once in `slots`, whose growth is capped at `max_flows`.
//! - The hasher is foldhash with a per-table random seed: flow keys on the AN come from the
//!   network, and an unkeyed hash (FxHash) would let a peer build collision chains.
//! - Expiry: each flow has at least one timer `(deadline, slot, generation)` in the heap,
//!   never later than its real deadline. `touch` pushes a timer only when a state change
//!   makes the deadline earlier (a FIN, an RST); a popped timer whose flow was touched since
//!   is pushed back with the real deadline. So `expire` costs O(log n) per expired or
//!   re-armed flow and the per-packet path never scans.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::RandomState;

use crate::key::FlowKey;
use crate::track::{Dir, TcpState, Timeouts, Track};

/// Below this many slots the table never shrinks: the saving would not pay for the rebuild.
const SHRINK_MIN_SLOTS: usize = 1024;

/// How many uplinks a flow keeps counters for; [`UplinkId`]s are below this.
pub const MAX_UPLINKS: usize = 8;

/// An uplink, numbered like the protocol's path id. Always below [`MAX_UPLINKS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UplinkId(u8);

impl UplinkId {
    /// The uplink numbered `n`, if `n < MAX_UPLINKS`.
    pub const fn new(n: u8) -> Option<UplinkId> {
        if (n as usize) < MAX_UPLINKS {
            Some(UplinkId(n))
        } else {
            None
        }
    }

    /// The number, as used for the protocol's path id.
    pub const fn get(self) -> u8 {
        self.0
    }

    fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for UplinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The stable id of a flow, shown to users (`upmt move flow ID UPLINK`). Ids are handed out
/// in increasing order by one table and never reused by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The name of the app that owns a flow (Android package, Linux program name). Cloning is a
/// reference-count increment: intern one per app in the caller, not one per flow.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(Arc<str>);

impl AppId {
    /// The app's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for AppId {
    fn from(s: &str) -> Self {
        AppId(Arc::from(s))
    }
}

impl From<Arc<str>> for AppId {
    fn from(s: Arc<str>) -> Self {
        AppId(s)
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Packets and bytes of one flow on one uplink, indexed by [`Dir`] (`[Orig, Reply]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets per direction.
    pub packets: [u64; 2],
    /// Bytes per direction (IP packet length as the caller reports it).
    pub bytes: [u64; 2],
}

/// A flow's [`Counters`] per uplink. Most flows only ever use one uplink, so that one's
/// counters are kept inline (40 bytes instead of 256 for all [`MAX_UPLINKS`]); the first
/// packet on a second uplink (a move, a redundant copy) spills them to a boxed array.
#[derive(Clone, Debug)]
pub struct UplinkCounters(PerUplink);

#[derive(Clone, Debug)]
enum PerUplink {
    /// Only this uplink has counted anything (or nothing has been counted yet).
    One(UplinkId, Counters),
    /// Indexed by [`UplinkId`].
    Many(Box<[Counters; MAX_UPLINKS]>),
}

static NO_COUNTERS: Counters = Counters {
    packets: [0; 2],
    bytes: [0; 2],
};

impl Default for UplinkCounters {
    fn default() -> Self {
        UplinkCounters(PerUplink::One(UplinkId(0), Counters::default()))
    }
}

impl UplinkCounters {
    /// Nothing counted yet; `likely` is the uplink expected to carry the flow.
    pub fn new(likely: UplinkId) -> UplinkCounters {
        UplinkCounters(PerUplink::One(likely, Counters::default()))
    }

    /// The counters of `uplink` (zero if it never carried anything).
    pub fn get(&self, uplink: UplinkId) -> &Counters {
        match &self.0 {
            PerUplink::One(u, c) if *u == uplink => c,
            PerUplink::One(..) => &NO_COUNTERS,
            PerUplink::Many(all) => &all[uplink.index()],
        }
    }

    /// The counters of `uplink`, to count into. Allocates once, the first time a second
    /// uplink counts something.
    pub fn get_mut(&mut self, uplink: UplinkId) -> &mut Counters {
        if let PerUplink::One(u, c) = &mut self.0
            && *u != uplink
        {
            if *c == Counters::default() {
                *u = uplink;
            } else {
                let mut all = Box::new([Counters::default(); MAX_UPLINKS]);
                all[u.index()] = *c;
                self.0 = PerUplink::Many(all);
            }
        }
        match &mut self.0 {
            PerUplink::One(_, c) => c,
            PerUplink::Many(all) => &mut all[uplink.index()],
        }
    }

    /// Counters summed over all uplinks.
    pub fn total(&self) -> Counters {
        match &self.0 {
            PerUplink::One(_, c) => *c,
            PerUplink::Many(all) => {
                let mut t = Counters::default();
                for c in all.iter() {
                    for d in 0..2 {
                        t.packets[d] += c.packets[d];
                        t.bytes[d] += c.bytes[d];
                    }
                }
                t
            }
        }
    }
}

/// The attributes a new flow starts with.
#[derive(Clone, Debug)]
pub struct NewFlow {
    /// The owning app.
    pub app: AppId,
    /// The owning uid, when known.
    pub uid: Option<u32>,
    /// The uplink the flow is sent on.
    pub uplink: UplinkId,
    /// Pinned flows stay on their uplink until unpinned (or until it goes down: the
    /// caller's business).
    pub pinned: bool,
}

/// One flow. Times are `Duration`s since the epoch the caller picked for `now`.
#[derive(Clone, Debug)]
pub struct Entry {
    id: FlowId,
    app: AppId,
    uid: Option<u32>,
    counters: UplinkCounters,
    created: u64,
    last_seen: u64,
    heap_deadline: u64,
    uplink: UplinkId,
    pinned: bool,
    track: Track,
}

impl Entry {
    /// The flow's stable id.
    pub fn id(&self) -> FlowId {
        self.id
    }
    /// The owning app.
    pub fn app(&self) -> &AppId {
        &self.app
    }
    /// The owning uid, when known.
    pub fn uid(&self) -> Option<u32> {
        self.uid
    }
    /// The uplink the flow is sent on.
    pub fn uplink(&self) -> UplinkId {
        self.uplink
    }
    /// Whether the flow is pinned to its uplink (static) rather than placed by policy.
    pub fn pinned(&self) -> bool {
        self.pinned
    }
    /// Counters of this flow on `uplink`.
    pub fn counters(&self, uplink: UplinkId) -> &Counters {
        self.counters.get(uplink)
    }
    /// Counters summed over all uplinks.
    pub fn total(&self) -> Counters {
        self.counters.total()
    }
    /// When the flow was inserted.
    pub fn created(&self) -> Duration {
        from_nanos(self.created)
    }
    /// When the flow last saw a packet (or was inserted).
    pub fn last_seen(&self) -> Duration {
        from_nanos(self.last_seen)
    }
    /// The TCP state (meaningless for other protocols).
    pub fn tcp_state(&self) -> TcpState {
        self.track.tcp_state()
    }
    /// Whether a packet of the reply direction has been seen.
    pub fn replied(&self) -> bool {
        self.track.replied()
    }
    /// Moves the flow to `uplink`; `pinned` makes it static.
    pub fn set_uplink(&mut self, uplink: UplinkId, pinned: bool) {
        self.uplink = uplink;
        self.pinned = pinned;
    }
    /// Re-attributes the flow (e.g. the owner lookup finished after the first packet).
    pub fn set_app(&mut self, app: AppId, uid: Option<u32>) {
        self.app = app;
        self.uid = uid;
    }
}

/// Table limits and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The most flows the table holds; at most `u32::MAX - 1`.
    pub max_flows: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_flows: 65_536,
            timeouts: Timeouts::default(),
        }
    }
}

/// Why a flow was not inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The table holds `max_flows` live flows and none has expired.
    #[error("flow table full ({0} flows)")]
    Full(usize),
    /// A flow with this key exists already.
    #[error("flow already exists as flow {0}")]
    Exists(FlowId),
}

/// A flow id that names no flow in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no flow with id {0}")]
pub struct UnknownFlow(pub FlowId);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    deadline: u64,
    slot: u32,
    generation: u32,
}

struct Slot {
    generation: u32,
    key: FlowKey,
    entry: Option<Entry>,
}

/// The per-application forwarding table. See the crate docs for the calling protocol.
pub struct Paft {
    config: Config,
    index: HashMap<FlowKey, u32, RandomState>,
    ids: HashMap<FlowId, u32, RandomState>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    timers: BinaryHeap<Reverse<Timer>>,
    evicted: Vec<(FlowKey, Entry)>,
    next_id: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn from_nanos(n: u64) -> Duration {
    Duration::from_nanos(n)
}

impl Paft {
    /// An empty table.
    pub fn new(mut config: Config) -> Paft {
        config.max_flows = config.max_flows.min(u32::MAX as usize - 1);
        Paft {
            config,
            index: HashMap::with_hasher(RandomState::default()),
            ids: HashMap::with_hasher(RandomState::default()),
            slots: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            evicted: Vec::new(),
            next_id: 1,
        }
    }

    /// The table's limits and timeouts.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Live flows (expired flows count until `expire` or an insert at the limit drops them).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the table holds no flow.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The flow stored under `key` (the initiator's direction).
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<&Entry> {
        let slot = *self.index.get(key)?;
        self.slots.get(slot as usize)?.entry.as_ref()
    }

    /// The flow stored under `key`, to change its uplink or app.
    #[inline]
    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Entry> {
        let slot = *self.index.get(key)?;
        self.slots.get_mut(slot as usize)?.entry.as_mut()
    }

    /// The flow with id `id`, and its key.
    pub fn by_id(&self, id: FlowId) -> Option<(&FlowKey, &Entry)> {
        let slot = self.slots.get(*self.ids.get(&id)? as usize)?;
        Some((&slot.key, slot.entry.as_ref()?))
    }

    /// The flow with id `id`, to change its uplink or app.
    pub fn by_id_mut(&mut self, id: FlowId) -> Option<&mut Entry> {
        let slot = *self.ids.get(&id)?;
        self.slots.get_mut(slot as usize)?.entry.as_mut()
    }

    /// Moves flow `id` to `uplink`; `pinned` makes it static (CLI `move flow`) or dynamic.
    pub fn set_uplink(
        &mut self,
        id: FlowId,
        uplink: UplinkId,
        pinned: bool,
    ) -> Result<(), UnknownFlow> {
        let e = self.by_id_mut(id).ok_or(UnknownFlow(id))?;
        e.set_uplink(uplink, pinned);
        Ok(())
    }

    /// Adds a flow under `key` (the initiator's direction). Call [`Paft::touch`] for the
    /// packet that created it afterwards, so it is counted and tracked.
    ///
    /// At the limit, expired flows are dropped first (they are handed out by the next
    /// [`Paft::expire`]); if none has expired the flow is refused.
    pub fn insert(
        &mut self,
        key: FlowKey,
        flow: NewFlow,
        now: Duration,
    ) -> Result<FlowId, InsertError> {
        if let Some(e) = self.lookup(&key) {
            return Err(InsertError::Exists(e.id));
        }
        if self.len() >= self.config.max_flows {
            let mut ev = std::mem::take(&mut self.evicted);
            self.expire_inner(now, &mut ev);
            self.evicted = ev;
            if self.len() >= self.config.max_flows {
                return Err(InsertError::Full(self.config.max_flows));
            }
        }
        let now = nanos(now);
        let id = FlowId(self.next_id);
        self.next_id += 1;
        let track = Track::default();
        let deadline = now.saturating_add(nanos(track.timeout(key.proto, &self.config.timeouts)));
        let entry = Entry {
            id,
            app: flow.app,
            uid: flow.uid,
            counters: UplinkCounters::new(flow.uplink),
            created: now,
            last_seen: now,
            heap_deadline: deadline,
            uplink: flow.uplink,
            pinned: flow.pinned,
            track,
        };
        let slot = self.alloc_slot(key, entry);
        let generation = self.slots[slot as usize].generation;
        self.index.insert(key, slot);
        self.ids.insert(id, slot);
        self.timers.push(Reverse(Timer {
            deadline,
            slot,
            generation,
        }));
        Ok(id)
    }

    fn alloc_slot(&mut self, key: FlowKey, entry: Entry) -> u32 {
        if let Some(i) = self.free.pop()
            && let Some(s) = self.slots.get_mut(i as usize)
        {
            s.key = key;
            s.entry = Some(entry);
            return i;
        }
        if self.slots.len() == self.slots.capacity() {
            // Double, but never past max_flows: at 1M flows a plain doubling would leave
            // hundreds of megabytes of capacity that can never be used.
            let want = (self.slots.capacity() * 2)
                .max(64)
                .min(self.config.max_flows.max(1));
            self.slots
                .reserve_exact(want.saturating_sub(self.slots.len()).max(1));
        }
        self.slots.push(Slot {
            generation: 0,
            key,
            entry: Some(entry),
        });
        (self.slots.len() - 1) as u32
    }

    /// Accounts one packet of `len` bytes to the flow stored under `key`, in direction
    /// `dir`, carried on `uplink` (`None`: the flow's own uplink). Updates the TCP state
    /// from `tcp_flags` (0 for other protocols) and the idle timer, and returns the flow.
    ///
    /// One hash lookup; no allocation except, on a state change that shortens the
    /// timeout, an amortised push onto the timer heap, and once per flow that is counted on
    /// a second uplink.
    #[inline]
    pub fn touch(
        &mut self,
        key: &FlowKey,
        dir: Dir,
        len: usize,
        tcp_flags: u8,
        uplink: Option<UplinkId>,
        now: Duration,
    ) -> Option<&mut Entry> {
        let slot_no = *self.index.get(key)?;
        let slot = self.slots.get_mut(slot_no as usize)?;
        let generation = slot.generation;
        let e = slot.entry.as_mut()?;
        let now = nanos(now);
        let c = e.counters.get_mut(uplink.unwrap_or(e.uplink));
        let d = dir as usize;
        c.packets[d] += 1;
        c.bytes[d] += len as u64;
        e.last_seen = e.last_seen.max(now);
        e.track.observe(key.proto, dir, tcp_flags);
        let deadline = e
            .last_seen
            .saturating_add(nanos(e.track.timeout(key.proto, &self.config.timeouts)));
        if deadline < e.heap_deadline {
            e.heap_deadline = deadline;
            self.timers.push(Reverse(Timer {
                deadline,
                slot: slot_no,
                generation,
            }));
        }
        Some(e)
    }

    /// Removes flow `id` (e.g. a blocked flow) and returns it.
    pub fn remove(&mut self, id: FlowId) -> Option<(FlowKey, Entry)> {
        let slot = *self.ids.get(&id)?;
        let removed = self.remove_slot(slot);
        self.maybe_compact_timers();
        self.maybe_shrink();
        removed
    }

    fn remove_slot(&mut self, slot_no: u32) -> Option<(FlowKey, Entry)> {
        let slot = self.slots.get_mut(slot_no as usize)?;
        let entry = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        let key = slot.key;
        self.index.remove(&key);
        self.ids.remove(&entry.id);
        self.free.push(slot_no);
        Some((key, entry))
    }

    /// Removes every flow idle past its timeout at `now` and appends them to `out` (a Vec
    /// the caller reuses), together with flows dropped by inserts at the limit.
    pub fn expire(&mut self, now: Duration, out: &mut Vec<(FlowKey, Entry)>) {
        self.expire_inner(now, out);
        out.append(&mut self.evicted);
    }

    fn expire_inner(&mut self, now: Duration, out: &mut Vec<(FlowKey, Entry)>) {
        let now = nanos(now);
        while let Some(&Reverse(t)) = self.timers.peek() {
            if t.deadline > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get_mut(t.slot as usize) else {
                continue;
            };
            if slot.generation != t.generation {
                continue;
            }
            let proto = slot.key.proto;
            let Some(e) = slot.entry.as_mut() else {
                continue;
            };
            if e.heap_deadline != t.deadline {
                // A superseded timer: the flow's live timer is earlier and was handled.
                continue;
            }
            let deadline = e
                .last_seen
                .saturating_add(nanos(e.track.timeout(proto, &self.config.timeouts)));
            if deadline <= now {
                if let Some(r) = self.remove_slot(t.slot) {
                    out.push(r);
                }
            } else {
                e.heap_deadline = deadline;
                self.timers.push(Reverse(Timer { deadline, ..t }));
            }
        }
        self.maybe_compact_timers();
        self.maybe_shrink();
    }

    /// Superseded timers and timers of removed flows stay in the heap until they come due;
    /// rebuild it when they outnumber the live ones, so it stays O(flows).
    fn maybe_compact_timers(&mut self) {
        if self.timers.len() <= 2 * self.len() + 1024 {
            return;
        }
        let mut v = std::mem::take(&mut self.timers).into_vec();
        v.clear();
        v.shrink_to(2 * self.len() + 1024);
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(e) = &s.entry {
                v.push(Reverse(Timer {
                    deadline: e.heap_deadline,
                    slot: i as u32,
                    generation: s.generation,
                }));
            }
        }
        self.timers = BinaryHeap::from(v);
    }

    /// Freed slots stay allocated and hash maps never shrink by themselves, so after a burst
    /// (tens of thousands of short flows) the table would keep the burst's memory for good.
    /// Once live flows fill under a quarter of the slots, move them into a slab sized for
    /// them and shrink the indexes and the timer heap. O(slots), but only after three
    /// quarters of the flows have gone since the slab last grew or shrank: amortised O(1) per
    /// removal, and never on the per-packet path.
    fn maybe_shrink(&mut self) {
        if self.slots.len() < SHRINK_MIN_SLOTS || self.len() * 4 > self.slots.len() {
            return;
        }
        let live = self.len();
        let mut slots = Vec::with_capacity((2 * live).clamp(64, self.config.max_flows.max(64)));
        let mut timers = Vec::with_capacity(live);
        self.index.clear();
        self.index.shrink_to(live);
        self.ids.clear();
        self.ids.shrink_to(live);
        for s in std::mem::take(&mut self.slots) {
            let Some(e) = s.entry else {
                continue;
            };
            // Every timer is rebuilt below, so generations can start over.
            let slot = slots.len() as u32;
            self.index.insert(s.key, slot);
            self.ids.insert(e.id, slot);
            timers.push(Reverse(Timer {
                deadline: e.heap_deadline,
                slot,
                generation: 0,
            }));
            slots.push(Slot {
                generation: 0,
                key: s.key,
                entry: Some(e),
            });
        }
        self.slots = slots;
        self.timers = BinaryHeap::from(timers);
        self.free = Vec::new();
        if self.evicted.is_empty() {
            self.evicted = Vec::new();
        }
    }

    /// Bytes the table holds on the heap: its slab, indexes, timer heap and free list
    /// (estimated from their capacities; boxed per-uplink counters not included).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        // hashbrown: one control byte per bucket besides the entry; buckets are a power of
        // two at least capacity * 8 / 7.
        fn map<K, V>(cap: usize) -> usize {
            if cap == 0 {
                return 0;
            }
            let buckets = (cap * 8 / 7).next_power_of_two();
            buckets * (size_of::<(K, V)>() + 1)
        }
        self.slots.capacity() * size_of::<Slot>()
            + map::<FlowKey, u32>(self.index.capacity())
            + map::<FlowId, u32>(self.ids.capacity())
            + self.timers.capacity() * size_of::<Reverse<Timer>>()
            + self.free.capacity() * size_of::<u32>()
            + self.evicted.capacity() * size_of::<(FlowKey, Entry)>()
    }

    /// When [`Paft::expire`] should next be called: never later than the next flow's
    /// expiry, possibly earlier (a timer whose flow was touched since). `None`: no flows.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.peek().map(|Reverse(t)| from_nanos(t.deadline))
    }

    /// Every flow, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &Entry)> + '_ {
        self.slots
            .iter()
            .filter_map(|s| Some((&s.key, s.entry.as_ref()?)))
    }

    /// The flows of one app. Scans the table: for the CLI and policy reloads, not per packet.
    pub fn flows_of_app<'a>(
        &'a self,
        app: &'a str,
    ) -> impl Iterator<Item = (&'a FlowKey, &'a Entry)> + 'a {
        self.iter().filter(move |(_, e)| e.app.as_str() == app)
    }

    /// The flows sent on `uplink`. Scans the table: for uplink events, not per packet.
    pub fn flows_on_uplink(
        &self,
        uplink: UplinkId,
    ) -> impl Iterator<Item = (&FlowKey, &Entry)> + '_ {
        self.iter().filter(move |(_, e)| e.uplink == uplink)
    }

    /// The ids of the flows on `uplink`, into a Vec the caller reuses; for moving them,
    /// which needs `&mut self` while iterating is impossible.
    pub fn ids_on_uplink(&self, uplink: UplinkId, out: &mut Vec<FlowId>) {
        out.extend(self.flows_on_uplink(uplink).map(|(_, e)| e.id));
    }

    #[cfg(test)]
    pub(crate) fn timer_count(&self) -> usize {
        self.timers.len()
    }
}

impl fmt::Debug for Paft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paft")
            .field("len", &self.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
