//! upmt anchor node: the thin driver around `upmt_proto::anchor::Anchor` behind the `upmt-an`
//! daemon.
//!
//! It reads the TOML config ([`config`]), creates the TUN ([`tun`]), binds the tunnel socket
//! ([`udp`]), turns on forwarding and installs its own nftables table ([`nat`]), and runs one
//! event loop ([`event_loop`]) that feeds the core packets and `upmt_sys::clock` readings and sends what
//! the core hands back. Counters are served by [`metrics`]; the operator's `upmt-an show` and
//! `reload` reach the loop through the [`control`] socket ([`ops`], [`show`], [`reload`]), and
//! `upmt-an down` ([`down`]) removes what a stopped daemon left.
//!
//! It is restart-safe: the TUN is persistent and the nftables table stays at exit, so a restarted
//! daemon finds the route and the kernel's NAT state as the last one left them and the mobile
//! hosts' connections survive (see [`nat`] for what goes wrong otherwise).
//!
//! It never implements protocol logic (handshakes, crypto, replay, path choice live in the
//! core) and never touches nftables state outside its own `inet upmt_<tun>` table.

pub mod config;
pub mod control;
pub mod down;
pub mod event_loop;
pub mod metrics;
pub mod nat;
pub mod ops;
pub mod privilege;
pub mod reload;
pub mod show;
pub mod tun;
pub mod udp;

use upmt_proto::anchor::{AnchorConfig, PeerConfig};

/// The core's settings for a validated config.
pub fn anchor_config(config: &config::Config) -> AnchorConfig {
    let peers = config
        .peers
        .iter()
        .map(|p| PeerConfig {
            name: p.name.clone(),
            public: p.public_key,
            virtual_ipv4: p.address,
            virtual_ipv6: p.address6,
        })
        .collect();
    let mut core = AnchorConfig::new(config.private_key.clone(), peers);
    core.prefix4 = config.subnet.prefix_len();
    if let Some(net6) = config.subnet6 {
        core.prefix6 = net6.prefix_len();
    }
    core.mtu = config.mtu;
    core.path_stale_after = config.path_stale_after;
    if let Some(t) = config.session_timeout {
        core.session_timeout = t;
    }
    core.fast_aes = config.cipher.fast_aes();
    core
}
