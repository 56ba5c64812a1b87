//! Checks of the kernel features the mobile-host daemon needs, so that a missing one is a clear
//! one-line error at start instead of a failure deep inside TUN setup. Reads the file system only.
//! The privilege check shared with the anchor lives in `upmt_sys::caps`.

use std::path::{Path, PathBuf};

/// A missing kernel feature.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// No TUN device node.
    #[error(
        "no TUN device: neither /dev/net/tun nor /dev/tun exists (load the tun module: modprobe tun)"
    )]
    NoTunDevice,
}

/// The TUN clone device: `/dev/net/tun` (Linux), else `/dev/tun` (some Android builds).
pub fn tun_device_path() -> Result<PathBuf, SysError> {
    ["/dev/net/tun", "/dev/tun"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_owned)
        .ok_or(SysError::NoTunDevice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_what_is_missing() {
        assert!(SysError::NoTunDevice.to_string().contains("/dev/net/tun"));
    }
}
