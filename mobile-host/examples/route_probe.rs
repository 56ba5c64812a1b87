//! Routing probe, run inside a throwaway network namespace (`ip netns exec NS route_probe MODE`;
//! `tests/routing_netns.rs` includes this file and runs [`probe`] the same way): drives the routing module against a real TUN and prints
//! what netlink then reports, `ip rule` / `ip route` style, one line each.
//!
//! Modes: `full` (create TUN, install, print, remove, print), `install` (create TUN, install,
//! print, exit without cleanup, as a crash would), `cleanup` (remove leftovers, print).
//! A second argument `v6` gives the session an IPv6 address.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use rtnetlink::IpVersion;
use upmt_mobile_host::routing::{
    Netlink, RoutingKey, TunAddressing, describe_route, describe_rule, is_our_rule,
};
use upmt_mobile_host::tun::Tun;

const KEY: RoutingKey = RoutingKey {
    table: 5550,
    fwmark: 0x5550,
    priority: 5550,
};

async fn print_state(netlink: &Netlink, stage: &str) -> anyhow::Result<()> {
    for family in [IpVersion::V4, IpVersion::V6] {
        let name = if family == IpVersion::V4 { "v4" } else { "v6" };
        for rule in netlink.rules(family).await? {
            if is_our_rule(&rule, &KEY) {
                println!("{stage} rule {name} {}", describe_rule(&rule));
            }
        }
    }
    for v6 in [false, true] {
        for route in netlink.routes_in_table(v6, KEY.table).await? {
            println!(
                "{stage} route {} {}",
                if v6 { "v6" } else { "v4" },
                describe_route(&route)
            );
        }
    }
    Ok(())
}

/// Runs one probe `mode` (see the module docs); `v6` gives the session an IPv6 address.
pub async fn probe(mode: &str, v6: bool) -> anyhow::Result<()> {
    let netlink = Netlink::new()?;
    if mode == "cleanup" {
        let removed = netlink.remove(&KEY).await?;
        println!("removed {removed}");
        return print_state(&netlink, "after").await;
    }
    let addressing = TunAddressing {
        ipv4: Ipv4Addr::new(10, 99, 0, 2),
        prefix4: 24,
        ipv6: v6.then_some((Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 2), 64)),
        mtu: 1380,
    };
    let tun = Tun::open("upmtprobe0", addressing, &netlink).await?;
    let mtu = netlink.link_mtu(tun.index).await?;
    println!(
        "tun {} index {} mtu {}",
        tun.name,
        tun.index,
        mtu.unwrap_or(0)
    );
    netlink.install(&KEY, tun.index, v6).await?;
    print_state(&netlink, "installed").await?;
    if mode == "install" {
        // Exit without cleanup, as a crashed daemon would.
        return Ok(());
    }
    let removed = netlink.remove(&KEY).await?;
    println!("removed {removed}");
    print_state(&netlink, "after").await?;
    drop(tun);
    Ok(())
}

#[allow(dead_code)] // Unused when the integration test includes this file as a module.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .context("usage: route_probe full|install|cleanup [v6]")?;
    let v6 = args.next().as_deref() == Some("v6");
    probe(&mode, v6).await
}
