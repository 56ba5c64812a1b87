//! Routing through the TUN, over rtnetlink only (no `ip`, no nftables: Android has neither for
//! us). Two layouts, chosen by [`Platform`]; both fail closed and both are installed at start,
//! before the first handshake. The layouts themselves are data ([`layout`]); this module adds,
//! checks and removes them.
//!
//! **Linux** is WireGuard's `wg-quick` scheme, with table `T`, mark `M` and priority `P` from
//! the config (defaults 5550, 0x5550, 5550):
//!
//! ```text
//! P-3: from all uidrange U-U lookup main                       # each bypass uid: the clear path
//! P-2: from all fwmark 0/M ipproto udp dport 53 lookup T       # DNS into the tunnel, even to an
//! P-2: from all fwmark 0/M ipproto tcp dport 53 lookup T       #  on-link resolver (dns = "tunnel";
//! P-2: from all fwmark 0/M ipproto tcp dport 853 lookup T      #  absent with dns = "local")
//! P-1: from all lookup main suppress_prefixlength 0            # local subnets stay direct
//! P:   not from all fwmark M lookup T                          # the rest, but the daemon's own
//!                                                              #  marked sockets, to table T
//! ```
//!
//! **Android** lives between netd's rules (see docs/android.md and DESIGN.md, "Android facts"):
//! a band `B..B+998` (default 14001..14999) after netd's VPN rules (10000-14000) and before its
//! network rules (15000-32000), table `T` below netd's per-interface tables (default 555), and
//! the daemon's sockets marked 0x20000 (protectedFromVpn) and bound to their interface. netd
//! removes `lookup main` and keeps each network's default route in table ifindex + 1000, so
//! traffic that is not ours must go on to netd's rules, never to `lookup main`: it jumps to a
//! nop at the band's end (a goto whose target priority has no rule is skipped by the kernel,
//! "unresolved", which would send it on into the capture rule):
//!
//! ```text
//! B:     from all fwmark 0x10000/0x10000 goto B+998            # explicitly selected network: netd's
//! B+1:   from all fwmark 0x20000/0x20000 goto B+998            # protected (VPNs' and our sockets)
//! B+2:   from all uidrange U-U goto B+998                      # each bypass uid: netd routes it
//! B+3:   from all iif lo ipproto udp dport 53 lookup T         # DNS into the tunnel (also tcp 53,
//!                                                              #  tcp 853; absent with dns = "local")
//! B+4:   from all lookup main suppress_prefixlength 0          # local subnets (kernel prefix routes)
//! B+5:   from all iif lo lookup T                              # generated here: the TUN; forwarded
//!                                                              #  (tethered) traffic goes on to netd
//! B+998: from all nop                                          # back to netd's rules
//! ```
//!
//! With netd's rules around it (the netd-shaped namespace of `tests/routing_netns.rs`: wlan0
//! is the default network with table 1003, rmnet_data0 has table 1005, tether0 is a tethering
//! downstream; uid 10123 bypasses), `ip rule` before and after:
//!
//! ```text
//! 0:     from all lookup local                                  (same)
//! 10000: from all fwmark 0xc0000/0xd0000 lookup 99              (same)
//! 11000: from all iif lo oif wlan0 uidrange 0-0 lookup 1003     (same)
//! 11000: from all iif lo oif rmnet_data0 uidrange 0-0 lookup 1005
//!                                                               14001: from all fwmark 0x10000/0x10000 goto 14999
//!                                                               14002: from all fwmark 0x20000/0x20000 goto 14999
//!                                                               14003: from all uidrange 10123-10123 goto 14999
//!                                                               14004: from all iif lo ipproto udp dport 53 lookup 555
//!                                                               14004: from all iif lo ipproto tcp dport 53 lookup 555
//!                                                               14004: from all iif lo ipproto tcp dport 853 lookup 555
//!                                                               14005: from all lookup main suppress_prefixlength 0
//!                                                               14006: from all iif lo lookup 555
//!                                                               14999: from all nop
//! 16000: from all fwmark 0x10064/0x1ffff iif lo lookup 1003     (same from here on)
//! 16000: from all fwmark 0x10065/0x1ffff iif lo lookup 1005
//! 17000: from all iif lo oif wlan0 lookup 1003
//! 17000: from all iif lo oif rmnet_data0 lookup 1005
//! 18000: from all fwmark 0/0x10000 lookup 98
//! 19000: from all fwmark 0/0x10000 lookup 99
//! 20000: from all fwmark 0/0x10000 lookup 97
//! 21000: from all iif tether0 lookup 1005
//! 23000: from all fwmark 0x64/0x1ffff iif lo lookup 1003
//! 23000: from all fwmark 0x65/0x1ffff iif lo lookup 1005
//! 31000: from all fwmark 0/0xffff iif lo lookup 1003
//! 32000: from all unreachable
//! ```
//!
//! Table 555 holds `default dev upmt0` while the TUN exists and `unreachable default metric
//! 4294967295` always (IPv4 and IPv6).
//!
//! **Fail closed**, both layouts: table `T` always holds `unreachable default` (IPv4 and IPv6)
//! at metric [`FAILSAFE_METRIC`], beneath the TUN's own default route (metric 0 / 1024) which
//! exists only while the TUN does. Before the session, and after a SIGKILL (the TUN and its
//! routes vanish with the process), captured traffic finds no path instead of the clear one.
//! Bypass uids, local subnets and the daemon's own sockets are decided before the capture
//! rule, so they keep working throughout. IPv6 without an IPv6 address in the session is
//! unreachable the same way.
//!
//! [`Netlink::ensure`] adds what is missing of the layout (and drops bypass rules of uids no
//! longer in the set); it is the install, the bypass update and the repair after netd rewrote
//! the rules (see `rulewatch`). [`Netlink::remove`] deletes every rule of the layout's shapes
//! at its priorities and every route in table `T` (ours alone), so the same call cleans up at
//! exit, after a crash at the next start, and in `upmt-mh stop`. This module also sets the
//! TUN's addresses, MTU and state, since those are netlink calls too. It never opens a TUN and
//! never decides per-packet routing.

pub mod layout;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::address::AddressFlags;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::packet_route::rule::RuleMessage;
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

pub use layout::{
    DnsRoute, FAILSAFE_METRIC, Platform, RoutingKey, RuleSpec, Target, is_our_rule, is_ours,
    rule_priority, rule_table,
};

/// The addresses and MTU a TUN gets from the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunAddressing {
    pub ipv4: Ipv4Addr,
    pub prefix4: u8,
    pub ipv6: Option<(Ipv6Addr, u8)>,
    pub mtu: u16,
}

/// The TUN's default routes: its index, and whether the session has IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunRoute {
    pub index: u32,
    pub ipv6: bool,
}

/// What [`Netlink::ensure`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ensured {
    /// Rules and routes added (missing ones).
    pub added: usize,
    /// Bypass rules removed (uids no longer in the set).
    pub removed: usize,
}

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    /// A request failed; `what` names it.
    #[error("netlink: {what} failed")]
    Request {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// No such link.
    #[error("interface {0} not found")]
    NoSuchLink(String),
}

fn to_io(e: rtnetlink::Error) -> std::io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    }
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> RoutingError {
    let what = what.into();
    move |e| RoutingError::Request {
        what,
        source: to_io(e),
    }
}

/// A route's table: the `RTA_TABLE` attribute when present (tables > 255), else the header's.
pub fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// A kernel without IPv6 (ipv6.disable=1) refuses IPv6 rules and routes: it has no v6 to leak.
fn no_ipv6(v6: bool, e: &std::io::Error) -> bool {
    v6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT)
}

/// An rtnetlink connection, driven by a task on the current tokio runtime.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection; must run inside a tokio runtime.
    pub fn new() -> Result<Netlink, RoutingError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RoutingError::Connect)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The index of the link called `name`, `None` when it does not exist.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, RoutingError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) => match to_io(e) {
                e if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
                source => Err(RoutingError::Request {
                    what: format!("looking up link {name}"),
                    source,
                }),
            },
        }
    }

    /// The MTU of link `index`.
    pub async fn link_mtu(&self, index: u32) -> Result<Option<u32>, RoutingError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links
            .try_next()
            .await
            .map_err(request(format!("reading link {index}")))?;
        Ok(link.and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        }))
    }

    /// Sets the MTU of link `index`.
    pub async fn set_mtu(&self, index: u32, mtu: u16) -> Result<(), RoutingError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(u32::from(mtu))
                    .build(),
            )
            .execute()
            .await
            .map_err(request(format!("setting MTU {mtu} on link {index}")))
    }

    /// Gives link `index` the session's addresses and MTU and brings it up.
    pub async fn configure_tun(
        &self,
        index: u32,
        addressing: &TunAddressing,
    ) -> Result<(), RoutingError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(u32::from(addressing.mtu))
                    .build(),
            )
            .execute()
            .await
            .map_err(request(format!(
                "setting MTU {} on the TUN",
                addressing.mtu
            )))?;
        self.handle
            .address()
            .add(index, IpAddr::V4(addressing.ipv4), addressing.prefix4)
            .replace()
            .execute()
            .await
            .map_err(request(format!(
                "adding {}/{} to the TUN",
                addressing.ipv4, addressing.prefix4
            )))?;
        if let Some((v6, prefix6)) = addressing.ipv6 {
            let mut add = self
                .handle
                .address()
                .add(index, IpAddr::V6(v6), prefix6)
                .replace();
            // The anchor hands out unique addresses: duplicate address detection would only
            // delay the first packets.
            add.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            add.execute()
                .await
                .map_err(request(format!("adding {v6}/{prefix6} to the TUN")))?;
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(request("bringing the TUN up"))?;
        Ok(())
    }

    /// Makes the layout of `key` complete: adds its missing rules (with `bypass` as the bypass
    /// uids) in install order, removes bypass rules of other uids, and adds the missing routes
    /// of table `T`: the unreachable defaults always, the TUN's defaults when `tun` is given.
    /// Present entries are left as they are, so calling it again is cheap and changes nothing;
    /// traffic never sees a partial layout that is looser than the complete one.
    pub async fn ensure(
        &self,
        key: &RoutingKey,
        bypass: &[u32],
        tun: Option<TunRoute>,
    ) -> Result<Ensured, RoutingError> {
        let mut done = Ensured::default();
        // Routes first: the capture rules must never point at an empty table.
        for v6 in [false, true] {
            let present = match self.routes_in_table(v6, key.table).await {
                Ok(r) => r,
                Err(RoutingError::Request { source, .. }) if no_ipv6(v6, &source) => continue,
                Err(e) => return Err(e),
            };
            let has = |kind: RouteType, oif: Option<u32>| {
                present.iter().any(|r| {
                    r.header.destination_prefix_length == 0
                        && r.header.kind == kind
                        && oif.is_none_or(|i| r.attributes.contains(&RouteAttribute::Oif(i)))
                })
            };
            if !has(RouteType::Unreachable, None) {
                let route = default_route(v6, key.table)
                    .kind(RouteType::Unreachable)
                    .priority(FAILSAFE_METRIC)
                    .build();
                if self.add_route(route, v6, "the unreachable default").await? {
                    done.added += 1;
                }
            }
            if let Some(t) = tun
                && (t.ipv6 || !v6)
                && !has(RouteType::Unicast, Some(t.index))
            {
                let route = default_route(v6, key.table)
                    .output_interface(t.index)
                    .build();
                if self
                    .add_route(route, v6, "the default route through the TUN")
                    .await?
                {
                    done.added += 1;
                }
            }
        }
        let want = key.rules(bypass);
        let bypass_prio = key.bypass_priority();
        let mut present = Vec::new();
        for family in [IpVersion::V4, IpVersion::V6] {
            for rule in self.rules(family).await? {
                let Some(spec) = RuleSpec::from_message(&rule) else {
                    continue;
                };
                if spec.priority == bypass_prio
                    && spec.uids.is_some()
                    && is_ours(&spec, key)
                    && !want.contains(&spec)
                {
                    if self.del_rule(rule).await? {
                        done.removed += 1;
                    }
                    continue;
                }
                present.push(spec);
            }
        }
        for spec in want.iter().filter(|s| !present.contains(s)) {
            let mut add = self.handle.rule().add();
            *add.message_mut() = spec.to_message();
            match add.execute().await.map_err(to_io) {
                Ok(()) => done.added += 1,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) if no_ipv6(spec.v6, &e) => {}
                Err(source) => {
                    return Err(RoutingError::Request {
                        what: format!(
                            "adding the {} rule `{spec}`",
                            if spec.v6 { "IPv6" } else { "IPv4" }
                        ),
                        source,
                    });
                }
            }
        }
        Ok(done)
    }

    /// Adds `route`; false when it was there already or the kernel has no IPv6.
    async fn add_route(
        &self,
        route: RouteMessage,
        v6: bool,
        what: &str,
    ) -> Result<bool, RoutingError> {
        let table = route_table(&route);
        match self
            .handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(to_io)
        {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) if no_ipv6(v6, &e) => {
                tracing::warn!("IPv6 is disabled in this kernel; routing IPv4 only");
                Ok(false)
            }
            Err(source) => Err(RoutingError::Request {
                what: format!(
                    "adding {what} ({}) to table {table}",
                    if v6 { "IPv6" } else { "IPv4" }
                ),
                source,
            }),
        }
    }

    /// Deletes `rule`; false when it was gone already.
    async fn del_rule(&self, rule: RuleMessage) -> Result<bool, RoutingError> {
        match self.handle.rule().del(rule).execute().await.map_err(to_io) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(RoutingError::Request {
                what: "deleting a rule".into(),
                source,
            }),
        }
    }

    /// The rules of one family.
    pub async fn rules(&self, family: IpVersion) -> Result<Vec<RuleMessage>, RoutingError> {
        let want = match family {
            IpVersion::V4 => AddressFamily::Inet,
            IpVersion::V6 => AddressFamily::Inet6,
        };
        let v6 = family == IpVersion::V6;
        let rules: Vec<RuleMessage> = match self
            .handle
            .rule()
            .get(family)
            .execute()
            .try_collect()
            .await
            .map_err(to_io)
        {
            Ok(rules) => rules,
            Err(e) if no_ipv6(v6, &e) => Vec::new(),
            Err(source) => {
                return Err(RoutingError::Request {
                    what: "listing rules".into(),
                    source,
                });
            }
        };
        // Without strict checking the kernel may answer a dump with every family.
        Ok(rules
            .into_iter()
            .filter(|r| r.header.family == want)
            .collect())
    }

    /// The routes of one family in `table`.
    pub async fn routes_in_table(
        &self,
        v6: bool,
        table: u32,
    ) -> Result<Vec<RouteMessage>, RoutingError> {
        let query = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(request("listing routes"))?;
        Ok(routes
            .into_iter()
            .filter(|r| route_table(r) == table)
            .collect())
    }

    /// Removes everything the layout of `key` installs (any bypass set, either DNS setting);
    /// returns how many entries it deleted. Absent entries are not an error, so this is the
    /// start-up cleanup and `upmt-mh stop` too.
    pub async fn remove(&self, key: &RoutingKey) -> Result<usize, RoutingError> {
        let mut removed = 0;
        for family in [IpVersion::V4, IpVersion::V6] {
            // The reverse of the install order: the capture rule first, so traffic is never
            // captured without its exemptions, and the gotos' nop last, so no goto is ever
            // unresolved (skipped) while the capture rule is there.
            let mut ours: Vec<RuleMessage> = self
                .rules(family)
                .await?
                .into_iter()
                .filter(|r| is_our_rule(r, key))
                .collect();
            ours.sort_by_key(|r| {
                let nop = RuleSpec::from_message(r).is_some_and(|s| s.target == Target::Nop);
                std::cmp::Reverse(if nop { 0 } else { rule_priority(r) })
            });
            for rule in ours {
                if self.del_rule(rule).await? {
                    removed += 1;
                }
            }
        }
        for v6 in [false, true] {
            for route in self.routes_in_table(v6, key.table).await? {
                match self
                    .handle
                    .route()
                    .del(route)
                    .execute()
                    .await
                    .map_err(to_io)
                {
                    Ok(()) => removed += 1,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => {}
                    Err(source) => {
                        return Err(RoutingError::Request {
                            what: format!("deleting a route of table {}", key.table),
                            source,
                        });
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// A default route of one family in `table`, to be completed.
fn default_route(v6: bool, table: u32) -> RouteMessageBuilder<IpAddr> {
    let b = RouteMessageBuilder::<IpAddr>::new();
    let b = if v6 {
        b.destination_prefix(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        b.destination_prefix(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    };
    // Only fails for a prefix longer than the address.
    b.unwrap_or_default().table_id(table)
}

/// `ip rule`-style text of one rule (for logs and the route probe).
pub fn describe_rule(rule: &RuleMessage) -> String {
    match RuleSpec::from_message(rule) {
        Some(spec) => spec.to_string(),
        None => format!("{}: (a rule of another shape)", rule_priority(rule)),
    }
}

/// `ip route`-style text of one route (for logs and the route probe).
pub fn describe_route(route: &RouteMessage) -> String {
    let mut s = String::new();
    if route.header.kind == RouteType::Unreachable {
        s.push_str("unreachable ");
    }
    let dst = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(a.to_string()),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(a.to_string()),
        RouteAttribute::Destination(other) => Some(format!("{other:?}")),
        _ => None,
    });
    // A /0 is `default` whether or not the message spells out 0.0.0.0 (the kernel does not).
    match dst {
        _ if route.header.destination_prefix_length == 0 => s.push_str("default"),
        Some(d) => s.push_str(&format!("{d}/{}", route.header.destination_prefix_length)),
        None => s.push('?'),
    }
    for a in &route.attributes {
        // Unreachable routes sit on lo in the kernel's view; `ip route` does not show it.
        if let (RouteAttribute::Oif(i), RouteType::Unicast) = (a, route.header.kind) {
            s.push_str(&format!(" dev #{i}"));
        }
    }
    s.push_str(&format!(" table {}", route_table(route)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_tables_come_from_the_attribute_before_the_header() {
        let mut r = RouteMessage::default();
        r.header.table = 254;
        assert_eq!(route_table(&r), 254);
        r.attributes.push(RouteAttribute::Table(5550));
        assert_eq!(route_table(&r), 5550);
    }

    #[test]
    fn unreachable_routes_are_described_with_their_table() {
        let r = default_route(false, 555)
            .kind(RouteType::Unreachable)
            .priority(FAILSAFE_METRIC)
            .build();
        assert_eq!(describe_route(&r), "unreachable default table 555");
    }
}
