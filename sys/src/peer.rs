//! Who may use a daemon's control socket: root, the daemon's own user, and members of one
//! configured group, checked on every connection from the peer's credentials (`SO_PEERCRED`,
//! and the supplementary groups from `SO_PEERGROUPS`). Both daemons' control servers use it.

use std::os::fd::RawFd;

/// Supplementary groups read per peer; more than any real user has.
const MAX_PEER_GROUPS: usize = 1024;
/// `SO_PEERGROUPS` (Linux 4.13): 59 on every architecture upmt targets (x86, arm, aarch64,
/// riscv); not all libc versions export it.
const SO_PEERGROUPS: libc::c_int = 59;

/// A `control_group` that is not a group on this system.
#[derive(Debug, thiserror::Error)]
#[error("control_group {name:?} is not a group on this system")]
pub struct UnknownGroup {
    /// The name as configured.
    pub name: String,
}

/// Who may use the socket besides root and the daemon's own user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Members of this group (name, gid) may connect too.
    pub group: Option<(String, u32)>,
}

impl Access {
    /// Root (and the daemon's own user) only.
    pub fn root_only() -> Access {
        Access { group: None }
    }

    /// Root and members of the group `name` (a name from the group database, or a gid).
    pub fn with_group(name: &str) -> Result<Access, UnknownGroup> {
        let gid = group_id(name).ok_or_else(|| UnknownGroup {
            name: name.to_owned(),
        })?;
        Ok(Access {
            group: Some((name.to_owned(), gid)),
        })
    }

    /// Whether a peer with these credentials may use the socket; the refusal says why, in one
    /// line.
    pub fn check(&self, uid: u32, gid: u32, groups: &[u32]) -> Result<(), String> {
        // SAFETY: geteuid cannot fail and touches no memory.
        let own = unsafe { libc::geteuid() };
        if uid == 0 || uid == own {
            return Ok(());
        }
        match &self.group {
            Some((_, g)) if gid == *g || groups.contains(g) => Ok(()),
            Some((name, _)) => Err(format!(
                "permission denied: uid {uid} is not root and not in group {name}"
            )),
            None => Err(format!(
                "permission denied: uid {uid} is not root (set control_group in the daemon's config to allow a group)"
            )),
        }
    }
}

/// The supplementary groups of the peer of the connected Unix socket `fd`; empty on a kernel
/// without `SO_PEERGROUPS` (only the primary group, checked separately, counts then).
pub fn peer_groups(fd: RawFd) -> Vec<u32> {
    let mut groups = vec![0 as libc::gid_t; MAX_PEER_GROUPS];
    let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: the buffer is valid for `len` bytes and the kernel writes at most that many.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
    groups
}

/// The gid of the group `name`; a number is a gid as it is.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed `group` is a valid out-parameter; getgrnam_r writes strings into `buf`
    // (of the length given) and a pointer to `grp` into `result`.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
    }
}
