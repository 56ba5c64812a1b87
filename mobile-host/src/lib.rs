//! upmt mobile host: the `upmt-mh` daemon and the `upmt` CLI, a thin IO driver around the pure
//! protocol core `upmt_proto::client::Client`.
//!
//! It owns everything the core must not do: the TUN device, one UDP socket per uplink (bound to
//! its interface and marked so it never loops into the TUN), rtnetlink routing (wg-quick's
//! scheme), signals, and the config file. It never parses or builds
//! protocol messages itself and never decides protocol timing: that is the core's job, reached
//! only through [`core`]. It needs no shell tools and no nftables (Android has neither).

pub mod appid;
pub mod cli;
pub mod config;
pub mod control;
pub mod core;
pub mod event_loop;
pub mod flows;
pub mod linkwatch;
pub mod routing;
pub mod rst;
pub mod sys;
pub mod tun;
pub mod uplink;
