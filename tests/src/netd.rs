//! netd's policy routing rules (Android 13-15, AOSP `system/netd` `server/RouteController.cpp`),
//! as netd writes them for a set of physical networks: the rule lines to feed `ip -4 rule add`
//! and `ip -6 rule add`, in netd's order.
//!
//! Shared by the lab's android profile ([`crate::android`]) and the mobile host's
//! `routing_netns` test, which includes this file with `#[path]`: so it uses nothing but std.

/// One physical network as netd knows it: its interface, its routing table (ifindex + 1000 on a
/// phone) and its netId (the low 16 bits of netd's fwmark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network<'a> {
    /// The interface (`wlan0`, `rmnet_data0`).
    pub ifname: &'a str,
    /// Its table.
    pub table: u32,
    /// Its netId (100 and up on a phone).
    pub net_id: u32,
}

/// netd's rules for `networks` with `default` (an index into it) the default network and, when
/// given, a tethering downstream interface whose clients leave by `networks[upstream]`. Each item
/// is the argument list after `ip -4|-6 rule add`; the same rules exist in both families.
pub fn rules(
    networks: &[Network<'_>],
    default: usize,
    tethering: Option<(&str, usize)>,
) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut add = |words: &[&str]| out.push(words.iter().map(|w| (*w).to_owned()).collect());
    // VPN_LOCAL: traffic marked for a VPN's own local routes (fwmark bits netd uses for VPNs).
    add(&["pref", "10000", "fwmark", "0xc0000/0xd0000", "lookup", "99"]);
    // VPN_OVERRIDE_SYSTEM: root's sockets bound to an interface leave by it.
    for n in networks {
        let t = n.table.to_string();
        add(&[
            "pref", "11000", "iif", "lo", "oif", n.ifname, "uidrange", "0-0", "lookup", &t,
        ]);
    }
    // EXPLICIT_NETWORK: explicitly selected (0x10000) with the network's netId.
    for n in networks {
        let (t, mark) = (
            n.table.to_string(),
            format!("{:#x}/0x1ffff", 0x10000 | n.net_id),
        );
        add(&["pref", "16000", "fwmark", &mark, "iif", "lo", "lookup", &t]);
    }
    // OUTPUT_INTERFACE: sockets bound to the interface.
    for n in networks {
        let t = n.table.to_string();
        add(&["pref", "17000", "iif", "lo", "oif", n.ifname, "lookup", &t]);
    }
    // LEGACY_SYSTEM, LEGACY_NETWORK, LOCAL_NETWORK (tables 98, 99, 97).
    add(&["pref", "18000", "fwmark", "0x0/0x10000", "lookup", "98"]);
    add(&["pref", "19000", "fwmark", "0x0/0x10000", "lookup", "99"]);
    add(&["pref", "20000", "fwmark", "0x0/0x10000", "lookup", "97"]);
    // TETHERING: the downstream's clients leave by the upstream's table.
    if let Some((downstream, upstream)) = tethering
        && let Some(n) = networks.get(upstream)
    {
        let t = n.table.to_string();
        add(&["pref", "21000", "iif", downstream, "lookup", &t]);
    }
    // IMPLICIT_NETWORK: sockets whose mark names the network without the explicit bit.
    for n in networks {
        let (t, mark) = (n.table.to_string(), format!("{:#x}/0x1ffff", n.net_id));
        add(&["pref", "23000", "fwmark", &mark, "iif", "lo", "lookup", &t]);
    }
    // DEFAULT_NETWORK: everything else generated here.
    if let Some(n) = networks.get(default) {
        let t = n.table.to_string();
        add(&[
            "pref",
            "31000",
            "fwmark",
            "0x0/0xffff",
            "iif",
            "lo",
            "lookup",
            &t,
        ]);
    }
    // UNREACHABLE: nothing falls through to main.
    add(&["pref", "32000", "unreachable"]);
    out
}

/// The fwmark of a socket explicitly selected onto the network with `net_id`.
pub fn explicit_mark(net_id: u32) -> u32 {
    0x10000 | net_id
}

/// Whether a line of `ip rule` lies in the band the MH keeps its Android rules in (14001-14999,
/// between netd's VPN rules and its network rules).
pub fn in_mh_band(line: &str) -> bool {
    line.split(':')
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| (14001..=14999).contains(&p))
}
