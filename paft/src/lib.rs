//! upmt-paft: the per-application forwarding table (PAFT) of the mobile host. It maps a flow's
//! 5-tuple to its app, owner uid, uplink, pinning, per-uplink counters and conntrack-like expiry
//! state. The anchor node keeps no PAFT (its per-flow downlink path lives in `upmt-proto`'s
//! anchor core), but the packet parser here is the workspace's only one: `upmt-proto` uses
//! [`parse_ip`] and [`parse_key_lenient`] for the anchor's flow key and spoofing check.
//!
//! It is a pure data structure: it never does IO, never reads a clock and never spawns.
//! Time comes in as `now: Duration` since an epoch the caller picks (the daemons use their
//! CLOCK_BOOTTIME-based monotonic clock); all `now`s given to one table must share it.
//!
//! # Calling protocol
//! Per packet (one hash lookup, no allocation):
//! 1. [`parse_packet`] gives the packet's key and TCP flags.
//! 2. [`Paft::touch`] with the key in the flow's direction: for a packet from the flow's
//!    initiator the packet's key and [`Dir::Orig`]; for a packet toward it (the reply
//!    direction) `key.reversed()` and [`Dir::Reply`]. It counts the packet and returns the
//!    entry (its uplink).
//! 3. On `None` the flow is new: classify it (owner app, policy) and [`Paft::insert`], then
//!    `touch` again. A [`InsertError::Full`] is for the caller to count and drop.
//!
//! Timers: arm one timer at [`Paft::poll_timeout`]; when it fires call [`Paft::expire`] and
//! handle the flows it returns. `expire` also hands out flows dropped by an insert at the
//! limit, so every removal but an explicit [`Paft::remove`] is reported there.
//!
//! Designed for, not built here: lowest-RTT and redundant strategies are a policy matter
//! ([`Entry::set_uplink`] is all the table needs); per-flow pinning is [`Paft::set_uplink`]
//! with `pinned = true`; a hold-down before moving back belongs to the daemon, which can
//! keep its per-app timers beside the table.

mod key;
mod table;
mod track;

pub use key::{
    FlowKey, IpHeader, PacketMeta, ParseError, parse_ip, parse_key_lenient, parse_packet, proto,
    tcp_flags,
};
pub use table::{
    AppId, Config, Counters, Entry, FlowId, InsertError, MAX_UPLINKS, NewFlow, Paft, UnknownFlow,
    UplinkCounters, UplinkId,
};
pub use track::{Dir, TcpState, Timeouts};

#[cfg(test)]
mod tests;
