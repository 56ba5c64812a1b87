//! The one place that knows how the daemon's types map onto the protocol core's
//! (`upmt_proto`): building the [`Client`] from the config, the clock reading it is given, and
//! the TUN addressing a session implies. The event loop drives the client through its documented
//! calling order; nothing here does IO.

use std::time::Duration;

pub use upmt_proto::client::{Client, ClientConfig, Event, PathState};
pub use upmt_proto::keys::{PublicKey, StaticSecret};
pub use upmt_proto::time::Instant;
pub use upmt_proto::{DropReason, HEADER_LEN, PathId, SessionParams, TAG_LEN, Transmit};

use crate::config::Config;
use crate::routing::TunAddressing;

/// The core's clock reading: CLOCK_BOOTTIME, so time spent suspended counts.
pub fn now() -> Instant {
    Instant::from_duration(upmt_sys::clock::boottime())
}

/// A client for `config`, created at `now`.
pub fn client(config: &Config, now: Instant) -> Client {
    Client::new(client_config(config), now, upmt_sys::clock::unix_nanos())
}

/// The core's config for `config`: keys and the `[probe]` timings.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new(config.private_key.clone(), config.anchor_public_key);
    c.probe_interval = config.probe.active_interval;
    c.keepalive = config.probe.idle_keepalive;
    c.path_timeout = config.probe.path_timeout;
    c.hold_down = config.probe.hold_down;
    c
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
