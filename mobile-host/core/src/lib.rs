//! The upmt mobile host's pure core: every decision `upmt-mh` makes, with no IO and no clock.
//!
//! - [`host::MobileHost`]: the state machine. It owns the protocol client, the flow table and
//!   its policy, the uplinks' state (socket open, path up, hold-down), the user's pins and the
//!   bypass set; it takes inputs with the `now` the driver sampled once per loop turn and hands
//!   back datagrams, TUN writes, lookups to make, routing intents and events to poll.
//! - [`anchors`]: several anchors in order, and when the host fails over to the next.
//! - [`flows`]: which uplink each packet from the TUN takes, and what waits for an owner.
//! - [`flows`]: which uplink each packet from the TUN takes, and what waits for an owner;
//!   [`redundant`]: the flows that go over two uplinks, and what their copies cost.
//! - [`uplinks`]: the one registry of uplink names and ids.
//! - [`api`]: the control vocabulary (requests, replies, events) `upmt` and the daemon share;
//!   [`answer`] and [`describe`] compute replies from the tables.
//! - [`select`]: the policy's choices that keep state: measured `select` with hysteresis,
//!   `spread` by weighted round robin.
//! - [`usage`]: bytes per app per uplink per day, kept apart from flows, and data caps.
//! - [`owner`], [`rst`]: a flow's owner as the lookup found it; TCP resets for blocked flows.
//!
//! This crate never opens a socket or a file, never reads a clock, and never spawns anything:
//! its manifest has no tokio, libc or netlink, so scenario tests drive it on virtual time.

pub mod anchors;
pub mod answer;
pub mod api;
pub mod candidates;
pub mod describe;
pub mod flows;
pub mod host;
pub mod idle;
pub mod owner;
pub mod pmtu;
pub mod redundant;
pub mod rst;
pub mod select;
pub mod uplinks;
pub mod usage;

pub use host::{HostConfig, HostCounters, MobileHost, RoutingIntent};
pub use owner::{Owner, Source};
pub use uplinks::{MAX_UPLINKS, Uplinks};
