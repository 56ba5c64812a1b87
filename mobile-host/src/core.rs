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
    Instant::from_duration(crate::clock::boottime())
}

/// A client for `config`, created at `now`.
pub fn client(config: &Config, now: Instant) -> Client {
    let client_config = ClientConfig::new(
        StaticSecret::from_bytes(config.private_key),
        PublicKey::from_bytes(config.anchor_public_key),
    );
    Client::new(client_config, now, crate::clock::unix_nanos())
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
