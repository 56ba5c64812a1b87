//! The rule layouts as data, with no IO: what [`RoutingKey`] installs ([`RoutingKey::rules`]),
//! what of a dump is ours ([`is_ours`]), and the conversions between [`RuleSpec`] and the
//! kernel's `RuleMessage`. See the parent module for both layouts.

use std::fmt;

use rtnetlink::packet_route::route::RouteHeader;
use rtnetlink::packet_route::rule::{
    RuleAction, RuleAttribute, RuleFlags, RuleMessage, RulePortRange, RuleUidRange,
};
use rtnetlink::packet_route::{AddressFamily, IpProtocol};

/// The kernel's main table.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;
/// netd's fwmark bit for traffic on an explicitly selected network (`include/Fwmark.h`).
pub const EXPLICITLY_SELECTED: u32 = 0x10000;
/// netd's fwmark bit for sockets protected from VPNs (a VPN's own tunnel sockets).
pub const PROTECTED_FROM_VPN: u32 = 0x20000;
/// In the android layout, the band's last priority is `priority + ANDROID_BAND_END`: the nop
/// rule every goto of the band lands on (14001 + 998 = 14999, just before netd's 15000).
pub const ANDROID_BAND_END: u32 = 998;
/// The metric of the unreachable defaults under the TUN's own (0 for IPv4, 1024 for IPv6).
pub const FAILSAFE_METRIC: u32 = u32::MAX;
/// DNS as the tunnel takes it: plain DNS over UDP and TCP, and DNS over TLS.
pub const DNS_PORTS: [(u8, u16); 3] = [(UDP, 53), (TCP, 53), (TCP, 853)];
const TCP: u8 = 6;
const UDP: u8 = 17;

/// Whose routing the host lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// A plain Linux host: wg-quick's layout, before the main table's rule.
    Linux,
    /// Android: a band between netd's VPN rules and its network rules.
    Android,
}

/// Where DNS from tunnelled apps goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsRoute {
    /// Into the tunnel, even to a resolver on a local subnet.
    Tunnel,
    /// To the local network's resolver when it is on a local subnet (it sees the names).
    Local,
}

/// What the routing scheme is keyed by; enough to install it and to find and remove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutingKey {
    pub platform: Platform,
    /// Table of the TUN's default routes (and of the unreachable defaults beneath them).
    pub table: u32,
    /// Mark of the daemon's own sockets.
    pub fwmark: u32,
    /// Linux: priority of the capture rule (the others sit just before it). Android: the
    /// band's first priority.
    pub priority: u32,
    pub dns: DnsRoute,
}

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Table(u32),
    Goto(u32),
    Nop,
}

/// One rule of one family, reduced to the selectors the layouts use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub v6: bool,
    pub priority: u32,
    pub invert: bool,
    /// `fwmark value/mask`.
    pub fwmark: Option<(u32, u32)>,
    /// `iif lo`: generated on this host, not forwarded.
    pub iif_lo: bool,
    pub uids: Option<(u32, u32)>,
    /// `ipproto` and `dport`, as the DNS rules use them.
    pub dport: Option<(u8, u16)>,
    pub suppress_prefixlength: Option<u32>,
    pub target: Target,
}

impl RuleSpec {
    fn new(priority: u32, target: Target) -> RuleSpec {
        RuleSpec {
            v6: false,
            priority,
            invert: false,
            fwmark: None,
            iif_lo: false,
            uids: None,
            dport: None,
            suppress_prefixlength: None,
            target,
        }
    }
}

impl RoutingKey {
    /// The priority of the bypass (uid) rules.
    pub fn bypass_priority(&self) -> u32 {
        match self.platform {
            Platform::Linux => self.priority - 3,
            Platform::Android => self.priority + 2,
        }
    }

    /// The rules of this key with `bypass` as the bypass uids, both families, in the order
    /// they are to be added: the android band's goto target first (a goto whose target does
    /// not exist yet is skipped by the kernel, which would send its traffic into the TUN),
    /// then by priority, the capture rule last.
    pub fn rules(&self, bypass: &[u32]) -> Vec<RuleSpec> {
        let mut v4 = self.rules_v4(bypass);
        let v6 = v4
            .iter()
            .map(|r| RuleSpec { v6: true, ..*r })
            .collect::<Vec<_>>();
        v4.extend(v6);
        v4
    }

    fn rules_v4(&self, bypass: &[u32]) -> Vec<RuleSpec> {
        let mut rules = Vec::new();
        let (t, p, m) = (self.table, self.priority, self.fwmark);
        match self.platform {
            Platform::Linux => {
                for &uid in bypass {
                    rules.push(RuleSpec {
                        uids: Some((uid, uid)),
                        ..RuleSpec::new(p - 3, Target::Table(MAIN_TABLE))
                    });
                }
                if self.dns == DnsRoute::Tunnel {
                    for port in DNS_PORTS {
                        // `fwmark 0/M`: not the daemon's own sockets (an anchor on port 53 is
                        // allowed).
                        rules.push(RuleSpec {
                            fwmark: Some((0, m)),
                            dport: Some(port),
                            ..RuleSpec::new(p - 2, Target::Table(t))
                        });
                    }
                }
                rules.push(RuleSpec {
                    suppress_prefixlength: Some(0),
                    ..RuleSpec::new(p - 1, Target::Table(MAIN_TABLE))
                });
                rules.push(RuleSpec {
                    invert: true,
                    fwmark: Some((m, u32::MAX)),
                    ..RuleSpec::new(p, Target::Table(t))
                });
            }
            Platform::Android => {
                let end = p + ANDROID_BAND_END;
                rules.push(RuleSpec::new(end, Target::Nop));
                for (prio, bit) in [(p, EXPLICITLY_SELECTED), (p + 1, PROTECTED_FROM_VPN)] {
                    rules.push(RuleSpec {
                        fwmark: Some((bit, bit)),
                        ..RuleSpec::new(prio, Target::Goto(end))
                    });
                }
                for &uid in bypass {
                    rules.push(RuleSpec {
                        uids: Some((uid, uid)),
                        ..RuleSpec::new(p + 2, Target::Goto(end))
                    });
                }
                if self.dns == DnsRoute::Tunnel {
                    for port in DNS_PORTS {
                        rules.push(RuleSpec {
                            iif_lo: true,
                            dport: Some(port),
                            ..RuleSpec::new(p + 3, Target::Table(t))
                        });
                    }
                }
                rules.push(RuleSpec {
                    suppress_prefixlength: Some(0),
                    ..RuleSpec::new(p + 4, Target::Table(MAIN_TABLE))
                });
                rules.push(RuleSpec {
                    iif_lo: true,
                    ..RuleSpec::new(p + 5, Target::Table(t))
                });
            }
        }
        rules
    }
}

/// Whether `rule` is one this key's layout installs, for any bypass set and either DNS
/// setting (so a run with other settings is cleaned up too).
pub fn is_ours(rule: &RuleSpec, key: &RoutingKey) -> bool {
    let mut shape = RuleSpec { v6: false, ..*rule };
    if rule.priority == key.bypass_priority() && rule.uids.is_some() {
        shape.uids = Some((0, 0));
    }
    let all = RoutingKey {
        dns: DnsRoute::Tunnel,
        ..*key
    };
    all.rules_v4(&[0]).contains(&shape)
}

/// Whether `rule` is ours (see [`is_ours`]); false for rules with selectors we never use.
pub fn is_our_rule(rule: &RuleMessage, key: &RoutingKey) -> bool {
    RuleSpec::from_message(rule).is_some_and(|s| is_ours(&s, key))
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

impl RuleSpec {
    /// The rule as the layouts see it; `None` when it uses selectors they never use
    /// (addresses, tos, oif, other input interfaces, port ranges, ...).
    pub fn from_message(rule: &RuleMessage) -> Option<RuleSpec> {
        let h = &rule.header;
        if h.dst_len != 0 || h.src_len != 0 || h.tos != 0 {
            return None;
        }
        let target = match h.action {
            RuleAction::ToTable => Target::Table(rule_table(rule)),
            RuleAction::Nop => Target::Nop,
            RuleAction::Goto => Target::Goto(rule.attributes.iter().find_map(|a| match a {
                RuleAttribute::Goto(g) => Some(*g),
                _ => None,
            })?),
            _ => return None,
        };
        let mut spec = RuleSpec::new(rule_priority(rule), target);
        spec.v6 = h.family == AddressFamily::Inet6;
        spec.invert = h.flags.contains(RuleFlags::Invert);
        let (mut mark, mut mask, mut proto) = (None, None, None);
        for a in &rule.attributes {
            match a {
                RuleAttribute::FwMark(m) => mark = Some(*m),
                RuleAttribute::FwMask(m) => mask = Some(*m),
                RuleAttribute::Iifname(n) if n == "lo" => spec.iif_lo = true,
                RuleAttribute::UidRange(r) => spec.uids = Some((r.start, r.end)),
                RuleAttribute::IpProtocol(p) => proto = Some(u8::from(*p)),
                RuleAttribute::DestinationPortRange(r) if r.start == r.end => {
                    spec.dport = Some((0, r.start));
                }
                // The kernel reports -1 for "not set".
                RuleAttribute::SuppressPrefixLen(p) if *p != u32::MAX => {
                    spec.suppress_prefixlength = Some(*p);
                }
                RuleAttribute::SuppressPrefixLen(_)
                | RuleAttribute::SuppressIfGroup(u32::MAX)
                | RuleAttribute::Priority(_)
                | RuleAttribute::Table(_)
                | RuleAttribute::Goto(_)
                | RuleAttribute::Protocol(_)
                | RuleAttribute::L3MDev(false)
                // Attributes this crate does not know (a newer kernel's): not a selector of
                // any rule we would mistake for ours.
                | RuleAttribute::Other(_) => {}
                _ => return None,
            }
        }
        // A mark without a mask means the whole mark (the kernel's own default); the kernel
        // leaves out a mark of 0 (`fwmark 0/M`) and reports the mask alone.
        spec.fwmark = match (mark.unwrap_or(0), mask) {
            (0, None | Some(0)) => None,
            (m, Some(k)) => Some((m, k)),
            (m, None) => Some((m, u32::MAX)),
        };
        spec.dport = match (spec.dport, proto) {
            (Some((_, port)), Some(p)) => Some((p, port)),
            (None, None) => None,
            _ => return None,
        };
        Some(spec)
    }

    /// The message that adds this rule.
    pub fn to_message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = if self.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        if self.invert {
            m.header.flags |= RuleFlags::Invert;
        }
        m.attributes.push(RuleAttribute::Priority(self.priority));
        match self.target {
            Target::Table(t) => {
                m.header.action = RuleAction::ToTable;
                m.header.table = u8::try_from(t).unwrap_or(0);
                m.attributes.push(RuleAttribute::Table(t));
            }
            Target::Goto(to) => {
                m.header.action = RuleAction::Goto;
                m.attributes.push(RuleAttribute::Goto(to));
            }
            Target::Nop => m.header.action = RuleAction::Nop,
        }
        if let Some((mark, mask)) = self.fwmark {
            m.attributes.push(RuleAttribute::FwMark(mark));
            m.attributes.push(RuleAttribute::FwMask(mask));
        }
        if self.iif_lo {
            m.attributes.push(RuleAttribute::Iifname("lo".into()));
        }
        if let Some((start, end)) = self.uids {
            m.attributes
                .push(RuleAttribute::UidRange(RuleUidRange { start, end }));
        }
        if let Some((proto, port)) = self.dport {
            m.attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::from(proto)));
            m.attributes
                .push(RuleAttribute::DestinationPortRange(RulePortRange {
                    start: port,
                    end: port,
                }));
        }
        if let Some(p) = self.suppress_prefixlength {
            m.attributes.push(RuleAttribute::SuppressPrefixLen(p));
        }
        m
    }
}

/// `ip rule` style, e.g. `14001: from all fwmark 0x10000/0x10000 goto 14999`.
impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.priority)?;
        if self.invert {
            f.write_str(" not")?;
        }
        f.write_str(" from all")?;
        match self.fwmark {
            Some((m, u32::MAX)) => write!(f, " fwmark {m:#x}")?,
            Some((m, k)) => write!(f, " fwmark {m:#x}/{k:#x}")?,
            None => {}
        }
        if self.iif_lo {
            f.write_str(" iif lo")?;
        }
        if let Some((a, b)) = self.uids {
            write!(f, " uidrange {a}-{b}")?;
        }
        if let Some((proto, port)) = self.dport {
            match proto {
                TCP => f.write_str(" ipproto tcp")?,
                UDP => f.write_str(" ipproto udp")?,
                p => write!(f, " ipproto {p}")?,
            }
            write!(f, " dport {port}")?;
        }
        if let Some(p) = self.suppress_prefixlength {
            write!(f, " suppress_prefixlength {p}")?;
        }
        match self.target {
            Target::Table(254) => f.write_str(" lookup main"),
            Target::Table(255) => f.write_str(" lookup local"),
            Target::Table(253) => f.write_str(" lookup default"),
            Target::Table(t) => write!(f, " lookup {t}"),
            Target::Goto(to) => write!(f, " goto {to}"),
            Target::Nop => f.write_str(" nop"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux() -> RoutingKey {
        RoutingKey {
            platform: Platform::Linux,
            table: 5550,
            fwmark: 0x5550,
            priority: 5550,
            dns: DnsRoute::Tunnel,
        }
    }

    fn android() -> RoutingKey {
        RoutingKey {
            platform: Platform::Android,
            table: 555,
            fwmark: PROTECTED_FROM_VPN,
            priority: 14001,
            dns: DnsRoute::Tunnel,
        }
    }

    fn listing(key: &RoutingKey, bypass: &[u32]) -> Vec<String> {
        key.rules(bypass)
            .iter()
            .filter(|r| !r.v6)
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_linux_layout_is_wg_quicks_with_bypass_and_dns_before_it() {
        assert_eq!(
            listing(&linux(), &[10_100]),
            [
                "5547: from all uidrange 10100-10100 lookup main",
                "5548: from all fwmark 0x0/0x5550 ipproto udp dport 53 lookup 5550",
                "5548: from all fwmark 0x0/0x5550 ipproto tcp dport 53 lookup 5550",
                "5548: from all fwmark 0x0/0x5550 ipproto tcp dport 853 lookup 5550",
                "5549: from all suppress_prefixlength 0 lookup main",
                "5550: not from all fwmark 0x5550 lookup 5550",
            ]
        );
    }

    #[test]
    fn the_android_layout_jumps_to_a_nop_added_before_any_goto() {
        assert_eq!(
            listing(&android(), &[10_100]),
            [
                "14999: from all nop",
                "14001: from all fwmark 0x10000/0x10000 goto 14999",
                "14002: from all fwmark 0x20000/0x20000 goto 14999",
                "14003: from all uidrange 10100-10100 goto 14999",
                "14004: from all iif lo ipproto udp dport 53 lookup 555",
                "14004: from all iif lo ipproto tcp dport 53 lookup 555",
                "14004: from all iif lo ipproto tcp dport 853 lookup 555",
                "14005: from all suppress_prefixlength 0 lookup main",
                "14006: from all iif lo lookup 555",
            ]
        );
    }

    #[test]
    fn dns_left_local_drops_only_the_dns_rules() {
        for key in [linux(), android()] {
            let local = RoutingKey {
                dns: DnsRoute::Local,
                ..key
            };
            let all = key.rules(&[]);
            let without: Vec<_> = all.iter().filter(|r| r.dport.is_none()).copied().collect();
            assert_eq!(local.rules(&[]), without);
            assert_eq!(all.len() - without.len(), 6, "three per family");
        }
    }

    #[test]
    fn every_installed_rule_survives_the_round_trip_and_is_recognised_as_ours() {
        for key in [linux(), android()] {
            for spec in key.rules(&[42, 10_100]) {
                let back = RuleSpec::from_message(&spec.to_message());
                assert_eq!(back, Some(spec));
                assert!(is_ours(&spec, &key), "{spec}");
                // A rule of the other DNS setting or another bypass set is ours too.
                let other = RoutingKey {
                    dns: DnsRoute::Local,
                    ..key
                };
                assert!(is_ours(&spec, &other), "{spec}");
            }
        }
    }

    #[test]
    fn rules_of_other_shapes_or_priorities_are_not_ours() {
        let k = linux();
        let capture = k.rules(&[])[4];
        assert_eq!(
            capture.to_string(),
            "5550: not from all fwmark 0x5550 lookup 5550"
        );
        for other in [
            RuleSpec {
                invert: false,
                ..capture
            },
            RuleSpec {
                fwmark: Some((1, u32::MAX)),
                ..capture
            },
            RuleSpec {
                target: Target::Table(100),
                ..capture
            },
            RuleSpec {
                priority: 5551,
                ..capture
            },
            // The kernel's main rule.
            RuleSpec::new(32766, Target::Table(MAIN_TABLE)),
        ] {
            assert!(!is_ours(&other, &k), "{other}");
        }
        // netd's rules next to the android band.
        let a = android();
        let netd = RuleSpec {
            fwmark: Some((0x10064, 0x1ffff)),
            iif_lo: true,
            ..RuleSpec::new(16000, Target::Table(1002))
        };
        assert!(!is_ours(&netd, &a));
        assert!(!is_ours(&RuleSpec::new(14000, Target::Table(1002)), &a));
    }

    #[test]
    fn a_mark_without_a_mask_means_the_whole_mark() {
        let mut m = RuleMessage::default();
        m.header.action = RuleAction::ToTable;
        m.header.flags |= RuleFlags::Invert;
        m.attributes.push(RuleAttribute::Priority(5550));
        m.attributes.push(RuleAttribute::Table(5550));
        m.attributes.push(RuleAttribute::FwMark(0x5550));
        assert!(is_our_rule(&m, &linux()));
        // `fwmark 0/M` comes back as the mask alone.
        let dns = linux().rules(&[])[0];
        let mut reported = dns.to_message();
        reported
            .attributes
            .retain(|a| !matches!(a, RuleAttribute::FwMark(0)));
        assert_eq!(RuleSpec::from_message(&reported), Some(dns));
        // A selector the layouts never use makes the rule someone else's.
        m.attributes.push(RuleAttribute::Oifname("wlan0".into()));
        assert_eq!(RuleSpec::from_message(&m), None);
    }

    #[test]
    fn tables_come_from_the_attribute_before_the_header() {
        let mut rl = RuleMessage::default();
        rl.header.table = 100;
        assert_eq!(rule_table(&rl), 100);
        rl.attributes.push(RuleAttribute::Table(5550));
        assert_eq!(rule_table(&rl), 5550);
    }
}
