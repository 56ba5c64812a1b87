//! Link and address changes, seen at once through an rtnetlink subscription.
//!
//! [`spawn`] opens a netlink socket bound to the link, IPv4/IPv6 address and IPv4/IPv6 route
//! multicast groups and turns what the kernel announces into [`LinkEvent`]s on a tokio channel:
//! an interface going up or down (administratively or by losing carrier), appearing or
//! vanishing, an address added or removed, a route changed (a default route often comes back a
//! moment after its link). After a link or address comes up it also sends [`LinkEvent::Retry`]
//! a few times, shortly after, because the route an uplink socket needs may lag behind.
//!
//! The event loop re-checks its uplinks on every event, so a cut link costs the time of one
//! netlink message instead of a polling interval. This module only reports; it never opens
//! sockets, never changes links, addresses or routes, and never decides about paths.

use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use rtnetlink::constants::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::sync::mpsc;

/// Events buffered between the watcher and the event loop; past it, events are dropped (the
/// loop re-checks every uplink on any event, and still polls, so one is as good as many).
const CHANNEL: usize = 256;
/// When to send [`LinkEvent::Retry`] after a link or address came up.
const RETRIES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1500),
];

/// Something changed on the host's links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The interface is up with carrier (also: a new interface appeared up).
    LinkUp { ifname: String },
    /// The interface is down, lost carrier, or was removed.
    LinkDown { ifname: String },
    /// An address was added to the interface.
    AddrAdded { ifname: String, addr: IpAddr },
    /// An address was removed from the interface.
    AddrRemoved { ifname: String, addr: IpAddr },
    /// A route was added or removed somewhere.
    RouteChanged,
    /// A moment after a link or address came up: look again (the route may be back now).
    Retry,
}

impl LinkEvent {
    /// The interface concerned, if one.
    pub fn ifname(&self) -> Option<&str> {
        match self {
            LinkEvent::LinkUp { ifname }
            | LinkEvent::LinkDown { ifname }
            | LinkEvent::AddrAdded { ifname, .. }
            | LinkEvent::AddrRemoved { ifname, .. } => Some(ifname),
            LinkEvent::RouteChanged | LinkEvent::Retry => None,
        }
    }

    /// Whether the uplink on this interface lost what its socket was using (the link, or an
    /// address, which a connected socket may have as its source).
    pub fn is_loss(&self) -> bool {
        matches!(
            self,
            LinkEvent::LinkDown { .. } | LinkEvent::AddrRemoved { .. }
        )
    }
}

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkWatchError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Open(#[source] std::io::Error),
    /// Joining the multicast groups failed.
    #[error("cannot subscribe to link and address changes")]
    Bind(#[source] std::io::Error),
}

/// The receiving end; dropping it stops the watcher.
pub struct LinkWatch {
    rx: mpsc::Receiver<LinkEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkWatch {
    /// The next event; `None` once the watcher stopped (netlink socket closed).
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        self.rx.recv().await
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to link, address and route changes. Must run inside tokio.
pub fn spawn() -> Result<LinkWatch, LinkWatchError> {
    let (mut connection, _handle, mut messages) =
        rtnetlink::new_connection().map_err(LinkWatchError::Open)?;
    let groups = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_ROUTE;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .map_err(LinkWatchError::Bind)?;
    let (tx, rx) = mpsc::channel(CHANNEL);
    let task = tokio::spawn(async move {
        let conn = tokio::spawn(connection);
        while let Some((message, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(inner) = message.payload else {
                continue;
            };
            let Some(event) = translate(&inner, ifname_of) else {
                continue;
            };
            tracing::debug!(?event, "link change");
            let comes_up = matches!(
                event,
                LinkEvent::LinkUp { .. } | LinkEvent::AddrAdded { .. }
            );
            if tx.try_send(event).is_err() && tx.is_closed() {
                break;
            }
            if comes_up {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut waited = Duration::ZERO;
                    for at in RETRIES {
                        tokio::time::sleep(at - waited).await;
                        waited = at;
                        if tx.send(LinkEvent::Retry).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
        conn.abort();
    });
    Ok(LinkWatch { rx, task })
}

/// The event a kernel announcement means, if any. `name_of` maps an interface index to its
/// name (the kernel names links in link messages but not in IPv6 address messages).
fn translate(
    msg: &RouteNetlinkMessage,
    name_of: impl Fn(u32) -> Option<String>,
) -> Option<LinkEvent> {
    match msg {
        RouteNetlinkMessage::NewLink(link) => {
            let ifname = link_name(link).or_else(|| name_of(link.header.index))?;
            let flags = link.header.flags;
            Some(
                if flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running) {
                    LinkEvent::LinkUp { ifname }
                } else {
                    LinkEvent::LinkDown { ifname }
                },
            )
        }
        RouteNetlinkMessage::DelLink(link) => Some(LinkEvent::LinkDown {
            ifname: link_name(link).or_else(|| name_of(link.header.index))?,
        }),
        RouteNetlinkMessage::NewAddress(a) => {
            let (ifname, addr) = address(a, &name_of)?;
            Some(LinkEvent::AddrAdded { ifname, addr })
        }
        RouteNetlinkMessage::DelAddress(a) => {
            let (ifname, addr) = address(a, &name_of)?;
            Some(LinkEvent::AddrRemoved { ifname, addr })
        }
        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
            Some(LinkEvent::RouteChanged)
        }
        _ => None,
    }
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn address(
    a: &AddressMessage,
    name_of: &impl Fn(u32) -> Option<String>,
) -> Option<(String, IpAddr)> {
    // IFA_LOCAL is the host's own address on point-to-point links; IFA_ADDRESS elsewhere.
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    Some((name_of(a.header.index)?, addr))
}

/// The name of interface `index` now (if_indextoname).
fn ifname_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires; it writes a
    // NUL-terminated name there or returns NULL.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::address::AddressMessage;

    fn link(name: &str, flags: LinkFlags) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.flags = flags;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m
    }

    fn no_names(_: u32) -> Option<String> {
        None
    }

    #[test]
    fn a_link_is_up_only_when_up_and_running() {
        let up = link("wlan0", LinkFlags::Up | LinkFlags::Running);
        assert_eq!(
            translate(&RouteNetlinkMessage::NewLink(up), no_names),
            Some(LinkEvent::LinkUp {
                ifname: "wlan0".into()
            })
        );
        // Administratively up but no carrier: not usable.
        let no_carrier = link("wlan0", LinkFlags::Up);
        assert_eq!(
            translate(&RouteNetlinkMessage::NewLink(no_carrier), no_names),
            Some(LinkEvent::LinkDown {
                ifname: "wlan0".into()
            })
        );
        let gone = link("rmnet0", LinkFlags::Up | LinkFlags::Running);
        assert_eq!(
            translate(&RouteNetlinkMessage::DelLink(gone), no_names),
            Some(LinkEvent::LinkDown {
                ifname: "rmnet0".into()
            })
        );
    }

    #[test]
    fn address_changes_are_named_through_the_interface_index() {
        let mut a = AddressMessage::default();
        a.header.index = 3;
        a.attributes
            .push(AddressAttribute::Address("2001:db8::5".parse().unwrap()));
        let names = |i: u32| (i == 3).then(|| "rmnet0".to_string());
        assert_eq!(
            translate(&RouteNetlinkMessage::DelAddress(a.clone()), names),
            Some(LinkEvent::AddrRemoved {
                ifname: "rmnet0".into(),
                addr: "2001:db8::5".parse().unwrap()
            })
        );
        let e = translate(&RouteNetlinkMessage::NewAddress(a.clone()), names).unwrap();
        assert!(!e.is_loss());
        assert_eq!(e.ifname(), Some("rmnet0"));
        // An interface that vanished before we could name it yields nothing.
        assert_eq!(
            translate(&RouteNetlinkMessage::NewAddress(a), no_names),
            None
        );
    }

    #[test]
    fn the_loopback_index_has_a_name() {
        assert_eq!(ifname_of(1).as_deref(), Some("lo"));
    }
}
