//! The TUN device: opened once the session has given the host its virtual addresses, configured
//! over netlink (addresses, MTU = the session's MTU, up), read and written without the packet
//! information header (`IFF_NO_PI`), so a read lands as a bare IP packet wherever the caller
//! asks (the event loop reads at `HEADER_LEN` to encrypt in place).
//!
//! Uses tun-rs's builder when `/dev/net/tun` exists, with the kernel's offloads unless the
//! config turns them off (`upmt_sys::tunbatch`: TSO super-packets split on read, GRO-coalesced
//! writes); on Android builds that only have `/dev/tun`, opens that node itself and hands the
//! fd to tun-rs, without offload. Never shells out.

use std::io;
use std::os::fd::{FromRawFd as _, IntoRawFd as _, OwnedFd};
use std::path::Path;

use upmt_sys::tunbatch::{self, OffloadSetting, OffloadState, TunRx, TunTx};

use crate::routing::{Netlink, RoutingError, TunAddressing};
use crate::setup::{HEADER_LEN, TAG_LEN};
use crate::sys::{self, SysError};

/// Why the TUN could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// No TUN device node.
    #[error(transparent)]
    NoDevice(#[from] SysError),
    /// Creating the device failed.
    #[error("cannot create TUN {name} via {node}")]
    Create {
        name: String,
        node: String,
        #[source]
        source: io::Error,
    },
    /// The device was created but is not visible over netlink.
    #[error("TUN {0} was created but netlink does not list it")]
    Vanished(String),
    /// Addresses, MTU or link state could not be set.
    #[error("cannot configure TUN {name}")]
    Configure {
        name: String,
        #[source]
        source: RoutingError,
    },
}

/// An open, configured TUN.
pub struct Tun {
    /// The async device (nonblocking, registered with tokio).
    pub device: tun_rs::AsyncDevice,
    /// Its name.
    pub name: String,
    /// Its interface index.
    pub index: u32,
    /// What it was configured with.
    pub addressing: TunAddressing,
    /// What offload it got.
    pub offload: OffloadState,
    /// Read buffers: packets land at `HEADER_LEN` with room for the tag after them.
    pub rx: TunRx,
    /// Packets waiting to be written together.
    pub tx: TunTx,
}

impl Tun {
    /// Creates TUN `name`, gives it `addressing` and brings it up. Must run inside tokio.
    pub async fn open(
        name: &str,
        addressing: TunAddressing,
        offload: OffloadSetting,
        netlink: &Netlink,
    ) -> Result<Tun, TunError> {
        let node = sys::tun_device_path()?;
        let create = |source| TunError::Create {
            name: name.to_owned(),
            node: node.display().to_string(),
            source,
        };
        let (device, offload) = if node == Path::new("/dev/net/tun") {
            tunbatch::open_with_offload(
                offload,
                |offload| {
                    tun_rs::DeviceBuilder::new()
                        .name(name)
                        .mtu(addressing.mtu)
                        .offload(offload)
                        .build_async()
                },
                |d| tunbatch::device_state(d),
            )
            .map_err(create)?
        } else {
            let fd = open_tun_node(&node, name).map_err(create)?;
            // SAFETY: `fd` is an open TUN fd set up with IFF_TUN | IFF_NO_PI and no
            // IFF_VNET_HDR, as from_fd requires; ownership passes to the device.
            let device =
                unsafe { tun_rs::AsyncDevice::from_fd(fd.into_raw_fd()) }.map_err(create)?;
            let state = match offload {
                OffloadSetting::On => OffloadState::Unsupported,
                OffloadSetting::Off => OffloadState::Off,
            };
            (device, state)
        };
        let index = netlink
            .link_index(name)
            .await
            .map_err(|source| TunError::Configure {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| TunError::Vanished(name.to_owned()))?;
        netlink
            .configure_tun(index, &addressing)
            .await
            .map_err(|source| TunError::Configure {
                name: name.to_owned(),
                source,
            })?;
        let rx = TunRx::new(usize::from(addressing.mtu), HEADER_LEN, TAG_LEN);
        Ok(Tun {
            device,
            name: name.to_owned(),
            index,
            addressing,
            offload,
            rx,
            tx: TunTx::new(),
        })
    }
}

/// Opens a TUN clone node and attaches it to interface `name` (TUNSETIFF, IFF_TUN | IFF_NO_PI).
fn open_tun_node(node: &Path, name: &str) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(node.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the TUN node path"))?;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad TUN name"));
    }
    // SAFETY: plain open(2) of a NUL-terminated path.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // TUNSETIFF = _IOW('T', 202, int)
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    use std::os::fd::AsRawFd as _;
    // SAFETY: `fd` is an open TUN clone fd; `req` is a valid ifreq.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
