//! Routing through the TUN, over rtnetlink only (no `ip`, no nftables: Android has neither for us).
//!
//! The scheme is WireGuard's `wg-quick`, with table `T`, mark `M` and priority `P` from the config:
//!
//! ```text
//! P-1: from all lookup main suppress_prefixlength 0   # main's specific routes (local subnets) win,
//!                                                      # main's default route is ignored
//! P:   not from all fwmark M lookup T                  # everything else, except the daemon's own
//!                                                      # marked tunnel sockets, goes to table T
//! table T: default dev <tun>                           # IPv4, always
//!          default dev <tun>        (IPv6, when the session has an IPv6 address)
//!          unreachable default      (IPv6, when it has none: v6 traffic must not leak out of
//!                                    a physical uplink, so it fails fast instead)
//! ```
//!
//! Apps whose policy says `bypass` and whose uid is known get, per uid `U`, at `P-2`:
//! `uidrange U-U lookup main` (both families), so their traffic goes straight out a physical
//! interface and never reaches the TUN (see [`Netlink::install_bypass`]).
//!
//! The daemon's sockets carry mark `M`, skip rule `P`, and use the main table; they are also bound
//! to their uplink's device, so they can never loop into the TUN. Both families get both rules.
//!
//! [`Netlink::remove`] deletes exactly what this scheme installs (the two rules at `P` and `P-1`
//! matching its shape, every route in table `T`, which is ours alone), so the same call cleans up
//! at exit and after a crash. This module also sets the TUN's addresses, MTU and state, since
//! those are netlink calls too. It never opens a TUN and never decides per-packet routing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::address::AddressFlags;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::packet_route::rule::{
    RuleAction, RuleAttribute, RuleFlags, RuleMessage, RuleUidRange,
};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

/// The kernel's main table.
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// What the routing scheme is keyed by; enough to find and remove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutingKey {
    /// Table of the TUN's default routes.
    pub table: u32,
    /// Mark of the daemon's own sockets.
    pub fwmark: u32,
    /// Priority of the `not fwmark` rule; the suppress rule is at `priority - 1`.
    pub priority: u32,
}

/// The addresses and MTU a TUN gets from the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunAddressing {
    pub ipv4: Ipv4Addr,
    pub prefix4: u8,
    pub ipv6: Option<(Ipv6Addr, u8)>,
    pub mtu: u16,
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

/// A rule's table: the `FRA_TABLE` attribute when present, else the header's.
pub fn rule_table(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}

/// A rule's priority (0 when absent, as the kernel reports rule 0).
pub fn rule_priority(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

/// Whether `rule` is one of the rules the scheme installs for `key` (the two TUN rules and
/// the bypass rules).
pub fn is_our_rule(rule: &RuleMessage, key: &RoutingKey) -> bool {
    let prio = rule_priority(rule);
    let has = |want: &RuleAttribute| rule.attributes.iter().any(|a| a == want);
    if prio + 2 == key.priority {
        return is_bypass_rule(rule);
    }
    if prio == key.priority {
        rule_table(rule) == key.table
            && has(&RuleAttribute::FwMark(key.fwmark))
            && rule.header.flags.contains(RuleFlags::Invert)
    } else if prio + 1 == key.priority {
        rule_table(rule) == MAIN_TABLE && has(&RuleAttribute::SuppressPrefixLen(0))
    } else {
        false
    }
}

/// Whether `rule` is a bypass rule: `uidrange U-U lookup main`.
fn is_bypass_rule(rule: &RuleMessage) -> bool {
    rule_table(rule) == MAIN_TABLE
        && rule
            .attributes
            .iter()
            .any(|a| matches!(a, RuleAttribute::UidRange(_)))
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

    /// Installs the scheme for `key` through the TUN at `tun_index`. `ipv6_via_tun` says whether
    /// the session has an IPv6 address (else IPv6 is made unreachable rather than leaked).
    /// Call [`Netlink::remove`] first to clear leftovers of a previous run.
    pub async fn install(
        &self,
        key: &RoutingKey,
        tun_index: u32,
        ipv6_via_tun: bool,
    ) -> Result<(), RoutingError> {
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(tun_index)
            .table_id(key.table)
            .build();
        self.handle
            .route()
            .add(v4)
            .replace()
            .execute()
            .await
            .map_err(request(format!(
                "adding default dev TUN to table {}",
                key.table
            )))?;

        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .table_id(key.table);
        let v6 = if ipv6_via_tun {
            v6.output_interface(tun_index).build()
        } else {
            v6.kind(RouteType::Unreachable).build()
        };
        if let Err(e) = self.handle.route().add(v6).replace().execute().await {
            let e = to_io(e);
            // A kernel without IPv6 (ipv6.disable=1) has no v6 to leak.
            if e.raw_os_error() != Some(libc::EAFNOSUPPORT) {
                return Err(RoutingError::Request {
                    what: format!("adding the IPv6 default route to table {}", key.table),
                    source: e,
                });
            }
            tracing::warn!("IPv6 is disabled in this kernel; installing IPv4 routing only");
        }

        for family in [IpVersion::V4, IpVersion::V6] {
            let name = if family == IpVersion::V4 {
                "IPv4"
            } else {
                "IPv6"
            };
            let suppress = self
                .rule_add(&family)
                .table_id(MAIN_TABLE)
                .priority(key.priority - 1);
            let mut suppress = suppress.action(RuleAction::ToTable);
            suppress
                .message_mut()
                .attributes
                .push(RuleAttribute::SuppressPrefixLen(0));
            match suppress.execute().await.map_err(to_io) {
                Ok(()) => {}
                Err(e)
                    if family == IpVersion::V6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
                {
                    continue;
                }
                Err(source) => {
                    return Err(RoutingError::Request {
                        what: format!(
                            "adding the {name} rule `lookup main suppress_prefixlength 0`"
                        ),
                        source,
                    });
                }
            }

            let mut not_marked = self
                .rule_add(&family)
                .table_id(key.table)
                .fw_mark(key.fwmark)
                .priority(key.priority)
                .action(RuleAction::ToTable);
            not_marked.message_mut().header.flags |= RuleFlags::Invert;
            not_marked
                .execute()
                .await
                .map_err(|e| RoutingError::Request {
                    what: format!(
                        "adding the {name} rule `not fwmark {:#x} lookup {}`",
                        key.fwmark, key.table
                    ),
                    source: to_io(e),
                })?;
        }
        Ok(())
    }

    /// Replaces the bypass rules of `key` by one `uidrange U-U lookup main` per uid in
    /// `uids`, at priority `key.priority - 2`, for both families (IPv6 skipped when the kernel
    /// has none). Returns how many rules it added.
    pub async fn install_bypass(
        &self,
        key: &RoutingKey,
        uids: &[u32],
    ) -> Result<usize, RoutingError> {
        let prio = key.priority.saturating_sub(2);
        for family in [IpVersion::V4, IpVersion::V6] {
            for rule in self.rules(family).await? {
                if rule_priority(&rule) == prio && is_bypass_rule(&rule) {
                    match self.handle.rule().del(rule).execute().await.map_err(to_io) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(source) => {
                            return Err(RoutingError::Request {
                                what: "deleting a bypass rule".into(),
                                source,
                            });
                        }
                    }
                }
            }
        }
        let mut added = 0;
        for &uid in uids {
            for family in [IpVersion::V4, IpVersion::V6] {
                let mut add = self
                    .rule_add(&family)
                    .table_id(MAIN_TABLE)
                    .priority(prio)
                    .action(RuleAction::ToTable);
                add.message_mut()
                    .attributes
                    .push(RuleAttribute::UidRange(RuleUidRange {
                        start: uid,
                        end: uid,
                    }));
                match add.execute().await.map_err(to_io) {
                    Ok(()) => added += 1,
                    Err(e)
                        if family == IpVersion::V6
                            && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                    Err(source) => {
                        return Err(RoutingError::Request {
                            what: format!(
                                "adding the bypass rule `uidrange {uid}-{uid} lookup main`"
                            ),
                            source,
                        });
                    }
                }
            }
        }
        Ok(added)
    }

    fn rule_add(&self, family: &IpVersion) -> rtnetlink::RuleAddRequest {
        let add = self.handle.rule().add();
        // The typed builders only differ in their address methods, which are not used here.
        let mut add = add;
        add.message_mut().header.family = match family {
            IpVersion::V4 => AddressFamily::Inet,
            IpVersion::V6 => AddressFamily::Inet6,
        };
        add
    }

    /// The rules of one family.
    pub async fn rules(&self, family: IpVersion) -> Result<Vec<RuleMessage>, RoutingError> {
        let want = match family {
            IpVersion::V4 => AddressFamily::Inet,
            IpVersion::V6 => AddressFamily::Inet6,
        };
        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(family)
            .execute()
            .try_collect()
            .await
            .map_err(request("listing rules"))?;
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

    /// Removes everything the scheme for `key` installs; returns how many entries it deleted.
    /// Absent entries are not an error, so this is the start-up cleanup too.
    pub async fn remove(&self, key: &RoutingKey) -> Result<usize, RoutingError> {
        let mut removed = 0;
        for family in [IpVersion::V4, IpVersion::V6] {
            for rule in self.rules(family).await? {
                if is_our_rule(&rule, key) {
                    match self.handle.rule().del(rule).execute().await.map_err(to_io) {
                        Ok(()) => removed += 1,
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(source) => {
                            return Err(RoutingError::Request {
                                what: "deleting a rule".into(),
                                source,
                            });
                        }
                    }
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

/// `ip rule`-style text of one rule (for logs and the route probe).
pub fn describe_rule(rule: &RuleMessage) -> String {
    let mut s = format!("{}:", rule_priority(rule));
    if rule.header.flags.contains(RuleFlags::Invert) {
        s.push_str(" not");
    }
    s.push_str(" from all");
    for a in &rule.attributes {
        match a {
            RuleAttribute::FwMark(m) => s.push_str(&format!(" fwmark {m:#x}")),
            RuleAttribute::UidRange(r) => s.push_str(&format!(" uidrange {}-{}", r.start, r.end)),
            // The kernel reports u32::MAX (-1) for "not set".
            RuleAttribute::SuppressPrefixLen(p) if *p != u32::MAX => {
                s.push_str(&format!(" suppress_prefixlength {p}"))
            }
            _ => {}
        }
    }
    let table = rule_table(rule);
    match table {
        254 => s.push_str(" lookup main"),
        255 => s.push_str(" lookup local"),
        253 => s.push_str(" lookup default"),
        t => s.push_str(&format!(" lookup {t}")),
    }
    s
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
    match dst {
        Some(d) => s.push_str(&format!("{d}/{}", route.header.destination_prefix_length)),
        None if route.header.destination_prefix_length == 0 => s.push_str("default"),
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

    fn key() -> RoutingKey {
        RoutingKey {
            table: 5550,
            fwmark: 0x5550,
            priority: 5550,
        }
    }

    fn rule(prio: u32, table: u32, attrs: Vec<RuleAttribute>, invert: bool) -> RuleMessage {
        let mut r = RuleMessage::default();
        r.attributes.push(RuleAttribute::Priority(prio));
        r.attributes.push(RuleAttribute::Table(table));
        r.attributes.extend(attrs);
        if invert {
            r.header.flags |= RuleFlags::Invert;
        }
        r
    }

    #[test]
    fn the_two_installed_rules_are_recognised_as_ours() {
        let k = key();
        assert!(is_our_rule(
            &rule(5550, 5550, vec![RuleAttribute::FwMark(0x5550)], true),
            &k
        ));
        assert!(is_our_rule(
            &rule(5549, 254, vec![RuleAttribute::SuppressPrefixLen(0)], false),
            &k
        ));
    }

    #[test]
    fn other_rules_at_our_priorities_are_left_alone() {
        let k = key();
        // Not inverted: someone else's rule.
        assert!(!is_our_rule(
            &rule(5550, 5550, vec![RuleAttribute::FwMark(0x5550)], false),
            &k
        ));
        // Other mark or table.
        assert!(!is_our_rule(
            &rule(5550, 5550, vec![RuleAttribute::FwMark(0x1)], true),
            &k
        ));
        assert!(!is_our_rule(
            &rule(5550, 100, vec![RuleAttribute::FwMark(0x5550)], true),
            &k
        ));
        // A main lookup without suppress.
        assert!(!is_our_rule(&rule(5549, 254, vec![], false), &k));
        // Other priorities, including the kernel's main rule.
        assert!(!is_our_rule(&rule(32766, 254, vec![], false), &k));
        assert!(!is_our_rule(
            &rule(5548, 254, vec![RuleAttribute::SuppressPrefixLen(0)], false),
            &k
        ));
    }

    #[test]
    fn tables_come_from_the_attribute_before_the_header() {
        let mut r = RouteMessage::default();
        r.header.table = 254;
        assert_eq!(route_table(&r), 254);
        r.attributes.push(RouteAttribute::Table(5550));
        assert_eq!(route_table(&r), 5550);
        let mut rl = RuleMessage::default();
        rl.header.table = 100;
        assert_eq!(rule_table(&rl), 100);
    }

    #[test]
    fn rules_are_described_like_ip_rule() {
        let r = rule(5550, 5550, vec![RuleAttribute::FwMark(0x5550)], true);
        assert_eq!(
            describe_rule(&r),
            "5550: not from all fwmark 0x5550 lookup 5550"
        );
        let r = rule(5549, 254, vec![RuleAttribute::SuppressPrefixLen(0)], false);
        assert_eq!(
            describe_rule(&r),
            "5549: from all suppress_prefixlength 0 lookup main"
        );
    }
}
