//! Routing probe, run inside a throwaway network namespace (`ip netns exec NS route_probe SPEC`;
//! `tests/routing_netns.rs` includes this file and runs [`probe`] the same way): drives the
//! routing module against a real kernel and prints what netlink then reports, `ip rule` /
//! `ip route` style, one line each.
//!
//! SPEC is `MODE[,OPTION...]`. Modes: `full` (create TUN, install, print, remove, print),
//! `install` (install, print, exit without cleanup, as a crash would), `cleanup` (remove
//! leftovers, print), `keep` (install, print `ready`, put back deleted entries as the daemon
//! does, printing `restored N` each time, until stdin closes; then remove and print).
//! Options: `v6` (the session has IPv6), `android` (the android layout), `notun` (no TUN: the
//! fail-closed state before a session), `bypass=UID`.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use rtnetlink::IpVersion;
use upmt_mobile_host::routing::{
    DnsRoute, Netlink, Platform, RoutingKey, TunAddressing, TunRoute, describe_route,
    describe_rule, is_our_rule,
};
use upmt_mobile_host::tun::Tun;

/// The Linux key (the config's defaults).
pub const LINUX: RoutingKey = RoutingKey {
    platform: Platform::Linux,
    table: 5550,
    fwmark: 0x5550,
    priority: 5550,
    dns: DnsRoute::Tunnel,
};
/// The android key (the config's android defaults).
pub const ANDROID: RoutingKey = RoutingKey {
    platform: Platform::Android,
    table: 555,
    fwmark: 0x20000,
    priority: 14001,
    dns: DnsRoute::Tunnel,
};

async fn print_state(netlink: &Netlink, key: &RoutingKey, stage: &str) -> anyhow::Result<()> {
    for family in [IpVersion::V4, IpVersion::V6] {
        let name = if family == IpVersion::V4 { "v4" } else { "v6" };
        for rule in netlink.rules(family).await? {
            if is_our_rule(&rule, key) {
                println!("{stage} rule {name} {}", describe_rule(&rule));
            }
        }
    }
    for v6 in [false, true] {
        for route in netlink.routes_in_table(v6, key.table).await? {
            println!(
                "{stage} route {} {}",
                if v6 { "v6" } else { "v4" },
                describe_route(&route)
            );
        }
    }
    Ok(())
}

/// Runs one probe `spec` (see the module docs).
pub async fn probe(spec: &str) -> anyhow::Result<()> {
    let mut parts = spec.split(',');
    let mode = parts.next().unwrap_or_default();
    let (mut v6, mut key, mut with_tun, mut bypass) = (false, LINUX, true, Vec::new());
    for option in parts {
        match option {
            "v6" => v6 = true,
            "android" => key = ANDROID,
            "notun" => with_tun = false,
            o => match o.strip_prefix("bypass=") {
                Some(uid) => bypass.push(uid.parse().context("bypass uid")?),
                None => anyhow::bail!("unknown probe option {o}"),
            },
        }
    }
    let netlink = Netlink::new()?;
    if mode == "cleanup" {
        let removed = netlink.remove(&key).await?;
        println!("removed {removed}");
        return print_state(&netlink, &key, "after").await;
    }
    let addressing = TunAddressing {
        ipv4: Ipv4Addr::new(10, 99, 0, 2),
        prefix4: 24,
        ipv6: v6.then_some((Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 2), 64)),
        mtu: 1380,
    };
    let tun = match with_tun {
        true => Some(
            Tun::open(
                "upmtprobe0",
                addressing,
                upmt_sys::tunbatch::OffloadSetting::On,
                &netlink,
            )
            .await?,
        ),
        false => None,
    };
    if let Some(tun) = &tun {
        let mtu = netlink.link_mtu(tun.index).await?;
        println!(
            "tun {} index {} mtu {}",
            tun.name,
            tun.index,
            mtu.unwrap_or(0)
        );
    }
    let route = tun.as_ref().map(|t| TunRoute {
        index: t.index,
        ipv6: v6,
    });
    netlink.ensure(&key, &bypass, route).await?;
    print_state(&netlink, &key, "installed").await?;
    match mode {
        // Exit without cleanup, as a crashed daemon would.
        "install" => return Ok(()),
        "keep" => keep(&netlink, &key, &bypass, route).await?,
        _ => {}
    }
    let removed = netlink.remove(&key).await?;
    println!("removed {removed}");
    print_state(&netlink, &key, "after").await?;
    drop(tun);
    Ok(())
}

/// What the daemon's loop does with rule events, until stdin closes.
async fn keep(
    netlink: &Netlink,
    key: &RoutingKey,
    bypass: &[u32],
    route: Option<TunRoute>,
) -> anyhow::Result<()> {
    let mut watch = upmt_mobile_host::rulewatch::spawn(*key)?;
    println!("ready");
    let (closed, mut stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed.send(());
    });
    loop {
        tokio::select! {
            Some(()) = watch.recv() => {
                let done = netlink.ensure(key, bypass, route).await?;
                println!("restored {}", done.added);
            }
            _ = &mut stdin_closed => return Ok(()),
        }
    }
}

#[allow(dead_code)] // Unused when the integration test includes this file as a module.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let spec = std::env::args()
        .nth(1)
        .context("usage: route_probe MODE[,v6][,android][,notun][,bypass=UID]")?;
    probe(&spec).await
}
