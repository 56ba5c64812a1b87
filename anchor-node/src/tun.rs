//! The anchor's TUN device, created and configured through tun-rs (ioctls and netlink, no
//! shelling out to `ip`).
//!
//! The device is made persistent, so it outlives the daemon: across a restart the route to the
//! virtual subnet stays in place, and packets the kernel forwards to a mobile host meanwhile are
//! dropped at the readerless TUN instead of following the default route out of the egress (and
//! leaking un-NATed, or being answered by this host's own stack with a reset). A restarted daemon
//! attaches to the same device. Removing it is the operator's call (`ip link del <tun>`).
//!
//! Offload (`offload`, on by default) opens it with IFF_VNET_HDR and TSO/USO, falling back to
//! plain IO where the kernel refuses (see `upmt_sys::tunbatch`). The offload mask is device-wide
//! state that tun-rs sets (or clears) on every attach, so a restart with another setting is
//! safe.

use std::net::{Ipv4Addr, Ipv6Addr};

use tun_rs::{AsyncDevice, DeviceBuilder};
use upmt_sys::tunbatch::{self, OffloadSetting, OffloadState};

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
    pub offload: OffloadSetting,
}

/// Creates the device (or attaches to the persistent one an earlier run left) with its addresses
/// and MTU, brings it up and makes it persistent; says what offload it got.
pub fn create(spec: &TunSpec) -> Result<(AsyncDevice, OffloadState), TunError> {
    let err = |source| TunError::Create {
        name: spec.name.clone(),
        source,
    };
    let (device, offload) = tunbatch::open_with_offload(
        spec.offload,
        |offload| {
            DeviceBuilder::new()
                .name(&spec.name)
                .mtu(spec.mtu)
                .ipv4(spec.address, spec.prefix, None)
                .offload(offload)
                .enable(true)
                .build_async()
        },
        |d| tunbatch::device_state(d),
    )
    .map_err(err)?;
    if let Some((addr6, prefix6)) = spec.address6 {
        // Added after the build because an attached persistent device may already carry it,
        // which is not an error here (the IPv4 address is set, not added, so it cannot clash).
        match device.add_address_v6(addr6, prefix6) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(err(e)),
            _ => {}
        }
    }
    device.persist().map_err(err)?;
    Ok((device, offload))
}
