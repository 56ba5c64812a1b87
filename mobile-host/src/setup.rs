//! The one place that knows how the daemon's config maps onto the pure core's types
//! (`upmt_mh_core`, `upmt_proto`): the [`HostConfig`] built from the config, the clock reading
//! the core is given, the routing layout, and the TUN addressing a session implies. Nothing here does IO but read
//! the clock.

use std::time::Duration;

pub use upmt_proto::client::ClientConfig;
pub use upmt_proto::keys::{PublicKey, StaticSecret};
pub use upmt_proto::time::Instant;
pub use upmt_proto::{HEADER_LEN, SessionParams, TAG_LEN};

use upmt_mh_core::anchors::AnchorConfig;
use upmt_mh_core::uplinks::TooManyUplinks;
use upmt_mh_core::{HostConfig, MobileHost, Uplinks};
use upmt_policy::Policy;

use crate::config::Config;
use crate::routing::{RoutingKey, TunAddressing};

/// The core's clock reading: CLOCK_BOOTTIME, so time spent suspended counts.
pub fn now() -> Instant {
    Instant::from_duration(upmt_sys::clock::boottime())
}

/// The core's start for `config` deciding with `policy`.
pub fn host_config(config: &Config, policy: Policy) -> Result<HostConfig, TooManyUplinks> {
    let client = client_config(config);
    tracing::info!(
        cipher = config.cipher.as_str(),
        aes_hardware = upmt_sys::cipher::aes_hardware(),
        offers_aes256gcm = client.fast_aes,
        "transport cipher setting"
    );
    Ok(HostConfig {
        client,
        client_seed: upmt_sys::clock::unix_nanos(),
        anchor: config.anchor,
        uplinks: Uplinks::new(config.uplinks.iter().map(|u| u.name.clone()).collect())?,
        interfaces: config.uplinks.iter().map(|u| u.interface.clone()).collect(),
        policy,
        policy_source: config
            .policy
            .as_ref()
            .map_or_else(|| "(built-in)".to_owned(), |p| p.display().to_string()),
    })
}

/// Hands the core every anchor of `config`: the first with all its endpoints, then the
/// `[[fallback_anchor]]`s in order.
pub fn set_anchors(host: &mut MobileHost, config: &Config, now: Instant) {
    let fallbacks = config
        .fallback_anchors
        .iter()
        .map(|f| AnchorConfig {
            endpoints: f.endpoints.clone(),
            public_key: f.public_key,
        })
        .collect();
    host.set_anchors(
        config.anchors.clone(),
        fallbacks,
        config.probe.failover_after,
        now,
    );
}

/// The core's config for `config`: keys and the `[probe]` timings.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new(config.private_key.clone(), config.anchor_public_key);
    c.probe_interval = config.probe.active_interval;
    c.keepalive = config.probe.idle_keepalive;
    c.keepalive_max = config.probe.idle_keepalive_max;
    // This driver opens the disposable NAT-test sockets (`crate::natprobe`).
    c.nat_probe = true;
    c.path_timeout = config.probe.path_timeout;
    c.hold_down = config.probe.hold_down;
    c.fast_aes = config.cipher.fast_aes();
    c
}

/// The routing layout `config` asks for.
pub fn routing_key(config: &Config) -> RoutingKey {
    RoutingKey {
        platform: config.platform,
        table: config.table,
        fwmark: config.fwmark,
        priority: config.rule_priority,
        dns: config.dns,
    }
}

/// How far `deadline` is from `now` (zero when already due).
pub fn until(deadline: Instant, now: Instant) -> Duration {
    deadline.saturating_duration_since(now)
}

/// The TUN addressing a session gives the host.
pub fn tun_addressing(params: &SessionParams) -> TunAddressing {
    TunAddressing {
        ipv4: params.virtual_ipv4,
        prefix4: params.prefix4,
        ipv6: params.virtual_ipv6.map(|v6| (v6, params.prefix6)),
        mtu: params.mtu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const BASE: &str = "anchor = \"192.0.2.1:51900\"\n\
        anchor_public_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n\
        private_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n\
        [[uplink]]\nname = \"wifi\"\ninterface = \"wlan0\"\n";

    #[test]
    fn without_a_probe_table_the_client_keeps_the_cores_default_timings() {
        let config = Config::parse(BASE, std::path::Path::new("mh.toml")).expect("valid");
        let ours = client_config(&config);
        let core = ClientConfig::new(
            StaticSecret::from_bytes([0; 32]),
            PublicKey::from_bytes([0; 32]),
        );
        assert_eq!(ours.probe_interval, core.probe_interval);
        assert_eq!(ours.keepalive, core.keepalive);
        assert_eq!(ours.path_timeout, core.path_timeout);
        assert_eq!(ours.hold_down, core.hold_down);
        // Except learning the keepalive, on the test sockets this driver opens.
        assert_eq!(
            ours.keepalive_max,
            Some(crate::config::DEFAULT_KEEPALIVE_MAX)
        );
        assert!(ours.nat_probe);
    }

    #[test]
    fn the_probe_table_sets_the_matching_client_fields() {
        let text = format!(
            "{BASE}[probe]\nactive_interval_ms = 100\nidle_keepalive_s = 10\n\
             path_timeout_ms = 400\nhold_down_ms = 1500\n"
        );
        let config = Config::parse(&text, std::path::Path::new("mh.toml")).expect("valid");
        let c = client_config(&config);
        assert_eq!(c.probe_interval, Duration::from_millis(100));
        assert_eq!(c.keepalive, Duration::from_secs(10));
        assert_eq!(c.path_timeout, Duration::from_millis(400));
        assert_eq!(c.hold_down, Duration::from_millis(1500));
        // Untouched fields stay the core's.
        assert_eq!(c.down_probe_interval, Duration::from_secs(1));
    }

    #[test]
    fn session_params_map_to_tun_addressing_with_the_session_mtu() {
        let mut p = SessionParams {
            virtual_ipv4: Ipv4Addr::new(10, 77, 0, 2),
            prefix4: 24,
            virtual_ipv6: None,
            prefix6: 64,
            mtu: 1380,
            cipher: Default::default(),
        };
        let a = tun_addressing(&p);
        assert_eq!(
            (a.ipv4, a.prefix4, a.ipv6, a.mtu),
            (p.virtual_ipv4, 24, None, 1380)
        );
        p.virtual_ipv6 = Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
        assert_eq!(
            tun_addressing(&p).ipv6,
            Some((Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2), 64))
        );
    }

    #[test]
    fn the_clock_reading_advances() {
        let a = now();
        let b = now();
        assert!(b >= a);
        assert_eq!(until(a, b), Duration::ZERO);
    }
}
