//! Our routing entries going away, seen at once through an rtnetlink subscription.
//!
//! netd deletes and adds its rules whenever a network comes or goes, and rewrites all of them
//! (after `ip rule flush`) when it restarts; other tools flush rules too. [`spawn`] listens to
//! the IPv4/IPv6 rule and route multicast groups and, when a rule of the layout or a route of
//! its table is deleted, waits [`SETTLE`] for the rest of the burst and then says so once on a
//! channel. The event loop answers with `Netlink::ensure`, which adds back what is missing;
//! nothing else is touched, so the session and its flows do not notice. This module only
//! reports; it never changes rules or routes.

use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use rtnetlink::constants::{RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_IPV6_ROUTE};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::sync::mpsc;

use crate::routing::{RoutingKey, is_our_rule, route_table};

/// RTNLGRP_IPV6_RULE (19) as a legacy group bit; the crate names no constant for it.
const RTMGRP_IPV6_RULE: u32 = 1 << (19 - 1);
/// How long a burst of deletions (a flush deletes rule after rule) is let settle before one
/// repair; well inside the second a repair may take.
pub const SETTLE: Duration = Duration::from_millis(20);

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuleWatchError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Open(#[source] std::io::Error),
    /// Joining the multicast groups failed.
    #[error("cannot subscribe to rule and route changes")]
    Bind(#[source] std::io::Error),
}

/// The receiving end; dropping it stops the watcher.
pub struct RuleWatch {
    rx: mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RuleWatch {
    /// Completes when entries of the layout were deleted since the last call; `None` once the
    /// watcher stopped. Cancel-safe.
    pub async fn recv(&mut self) -> Option<()> {
        self.rx.recv().await
    }
}

impl Drop for RuleWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches for deletions of `key`'s rules and of routes in its table. Must run inside tokio.
pub fn spawn(key: RoutingKey) -> Result<RuleWatch, RuleWatchError> {
    let (mut connection, _handle, mut messages) =
        rtnetlink::new_connection().map_err(RuleWatchError::Open)?;
    let groups = RTMGRP_IPV4_RULE | RTMGRP_IPV6_RULE | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .map_err(RuleWatchError::Bind)?;
    // One pending notice is enough: the repair looks at everything.
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        let conn = tokio::spawn(connection);
        while let Some((message, _)) = messages.next().await {
            if !touches(&message.payload, &key) {
                continue;
            }
            tokio::time::sleep(SETTLE).await;
            // The rest of the burst is covered by the one repair.
            while let Some(Some(_)) = messages.next().now_or_never() {}
            if tx.try_send(()).is_err() && tx.is_closed() {
                break;
            }
        }
        conn.abort();
    });
    Ok(RuleWatch { rx, task })
}

/// Whether a kernel announcement deletes one of `key`'s rules or a route of its table.
fn touches(payload: &NetlinkPayload<RouteNetlinkMessage>, key: &RoutingKey) -> bool {
    match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRule(rule)) => is_our_rule(rule, key),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(route)) => {
            route_table(route) == key.table
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{DnsRoute, Platform};
    use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};

    const KEY: RoutingKey = RoutingKey {
        platform: Platform::Android,
        table: 555,
        fwmark: 0x20000,
        priority: 14001,
        dns: DnsRoute::Tunnel,
    };

    #[test]
    fn only_deletions_of_our_rules_and_our_tables_routes_count() {
        let ours = KEY.rules(&[10_100]);
        for spec in &ours {
            let del = RouteNetlinkMessage::DelRule(spec.to_message());
            assert!(touches(&NetlinkPayload::InnerMessage(del), &KEY), "{spec}");
            let add = RouteNetlinkMessage::NewRule(spec.to_message());
            assert!(!touches(&NetlinkPayload::InnerMessage(add), &KEY), "{spec}");
        }
        // netd deleting its own rule is netd's business.
        let mut netd = ours[0].to_message();
        netd.attributes
            .retain(|a| !matches!(a, rtnetlink::packet_route::rule::RuleAttribute::Priority(_)));
        netd.attributes
            .push(rtnetlink::packet_route::rule::RuleAttribute::Priority(
                31000,
            ));
        let del = RouteNetlinkMessage::DelRule(netd);
        assert!(!touches(&NetlinkPayload::InnerMessage(del), &KEY));

        let mut route = RouteMessage::default();
        route.attributes.push(RouteAttribute::Table(555));
        let del = RouteNetlinkMessage::DelRoute(route.clone());
        assert!(touches(&NetlinkPayload::InnerMessage(del), &KEY));
        route.attributes = vec![RouteAttribute::Table(1002)];
        let del = RouteNetlinkMessage::DelRoute(route);
        assert!(!touches(&NetlinkPayload::InnerMessage(del), &KEY));
    }
}
