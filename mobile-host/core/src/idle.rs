//! What each uplink's path sends while the session is idle, from the flows it carries.
//!
//! A keepalive exists to keep a NAT binding open for downlink that may come at any time. That
//! matters for a path that carries flows, and for every other path while any flow exists (a
//! handover moves flows onto it, and their downlink must find its binding open). With no flows
//! at all nothing can arrive (every flow starts at the phone), so the paths only check their
//! liveness now and then; a binding the NAT forgot meanwhile costs the next flow one round trip
//! (the anchor's path challenge). An uplink its owner put to sleep (`idle = "sleep"`, for a
//! metered or cellular link) sends nothing at all while it carries no flows.

use upmt_paft::{Paft, UplinkId};
use upmt_proto::client::Idle;

use crate::redundant::Redundancy;
use crate::uplinks::Uplinks;

/// The uplinks that carry flows now, one bit per uplink index: each flow's uplink, and the
/// second uplink of a redundant flow.
pub fn carrying(paft: &Paft, redundancy: &Redundancy) -> u8 {
    let mut mask = 0u8;
    for (_, e) in paft.iter() {
        mask |= bit(e.uplink());
        if !redundancy.is_empty()
            && let Some(second) = redundancy.second(e.id())
        {
            mask |= bit(second);
        }
        if mask == u8::MAX {
            break;
        }
    }
    mask
}

/// The bit of `uplink` in a mask.
pub fn bit(uplink: UplinkId) -> u8 {
    u32::try_from(Uplinks::index(uplink))
        .ok()
        .and_then(|i| 1u8.checked_shl(i))
        .unwrap_or(0)
}

/// The idle mode of the uplink with bit `me`, given the uplinks that carry flows and those
/// configured to sleep.
pub fn mode(me: u8, carrying: u8, sleepers: u8) -> Idle {
    if carrying & me != 0 {
        Idle::Keepalive
    } else if sleepers & me != 0 {
        Idle::Sleep
    } else if carrying == 0 {
        Idle::Check
    } else {
        Idle::Keepalive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_with_flows_keeps_its_binding_whatever_else_is_configured() {
        assert_eq!(mode(0b01, 0b01, 0b01), Idle::Keepalive);
        assert_eq!(mode(0b10, 0b11, 0b00), Idle::Keepalive);
    }

    #[test]
    fn a_path_without_flows_keeps_its_binding_for_a_handover_while_others_carry_flows() {
        assert_eq!(mode(0b10, 0b01, 0b00), Idle::Keepalive);
    }

    #[test]
    fn a_sleeper_without_flows_sleeps_even_while_others_carry_flows() {
        assert_eq!(mode(0b10, 0b01, 0b10), Idle::Sleep);
        assert_eq!(mode(0b10, 0b00, 0b10), Idle::Sleep);
    }

    #[test]
    fn without_any_flow_the_paths_only_check_their_liveness() {
        assert_eq!(mode(0b01, 0b00, 0b00), Idle::Check);
        assert_eq!(mode(0b10, 0b00, 0b01), Idle::Check);
    }
}
