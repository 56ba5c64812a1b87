//! The anchor's TUN device, created and configured through tun-rs (ioctls and netlink, no
//! shelling out to `ip`).
//!
//! Offload is deliberately off for now. tun-rs supports it on Linux (`offload(true)` sets
//! IFF_VNET_HDR and enables TSO/USO): reads then go through `recv_multiple` into a batch of
//! buffers after splitting a GSO super-packet, and writes through `send_multiple` with a
//! `GROTable` that coalesces. That fits this driver's shape: the event loop already reads a batch
//! per readiness event into preallocated buffers at offset HEADER_LEN, so switching means
//! replacing the per-packet `try_recv` with `try_recv_multiple` into the same buffers, and
//! collecting decapsulated packets for one `send_multiple` per batch instead of one `try_send`
//! each.

use std::net::{Ipv4Addr, Ipv6Addr};

use tun_rs::{AsyncDevice, DeviceBuilder};

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("cannot create tun device {name}")]
    Create {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// How the anchor's TUN is set up.
#[derive(Clone, Debug)]
pub struct TunSpec {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub address6: Option<(Ipv6Addr, u8)>,
    pub mtu: u16,
}

/// Creates the device with its addresses and MTU, and brings it up.
pub fn create(spec: &TunSpec) -> Result<AsyncDevice, TunError> {
    let mut builder = DeviceBuilder::new()
        .name(&spec.name)
        .mtu(spec.mtu)
        .ipv4(spec.address, spec.prefix, None)
        .enable(true);
    if let Some((addr6, prefix6)) = spec.address6 {
        builder = builder.ipv6(addr6, prefix6);
    }
    builder.build_async().map_err(|source| TunError::Create {
        name: spec.name.clone(),
        source,
    })
}
