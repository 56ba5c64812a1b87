//! upmt mobile host: the `upmt-mh` daemon and the `upmt` CLI, a thin IO driver around the pure
//! core `upmt_mh_core::MobileHost` (flows, uplinks, policy decisions, pins, the protocol client).
//!
//! It owns everything the core must not do: the TUN device, one UDP socket per uplink (bound to
//! its interface and marked so it never loops into the TUN), rtnetlink routing (wg-quick's
//! scheme on Linux, a band between netd's rules on Android; fail closed, repaired when others
//! delete it: [`routing`], [`rulewatch`]), the app-lookup thread, the control socket, signals, and
//! the config file. It never parses or builds protocol messages and never decides anything: it
//! feeds the core and applies what the core asks for ([`event_loop`], [`setup`]). It needs no
//! shell tools and no nftables (Android has neither). An optional Prometheus endpoint serves
//! snapshots of the core's views ([`metrics`]).

pub mod appid;
pub mod cli;
pub mod config;
pub mod control;
pub mod event_loop;
pub mod linkwatch;
pub mod memory;
pub mod metrics;
pub mod natprobe;
pub mod routing;
pub mod rulewatch;
pub mod setup;
pub mod sys;
pub mod tun;
pub mod uplink;
pub mod usage_store;
