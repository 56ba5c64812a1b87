//! The drop to an unprivileged account once setup is done (the check that the daemon holds
//! CAP_NET_ADMIN at all is `upmt_sys::caps`).
//!
//! After setup the daemon reads and writes file descriptors it already holds (the TUN, the
//! tunnel socket, the metrics listener) and leaves the TUN and the nftables table in place at
//! exit (a restart starts as root again). The one privileged thing it still does is read its
//! table's drop counters over nfnetlink for the metrics, which needs CAP_NET_ADMIN: that, and
//! CAP_NET_BIND_SERVICE for a port below 1024, is all it keeps, as boringtun does. The drop follows
//! boringtun: PR_SET_KEEPCAPS, setgroups, setgid, setuid, then capset to exactly the kept set,
//! with no inheritable or ambient capabilities and PR_SET_NO_NEW_PRIVS, so nothing it could
//! exec regains more. glibc applies set*id to every thread; capset only to the calling one, so
//! the drop runs while the daemon has one thread.

use std::ffi::CString;

/// Bit of CAP_NET_BIND_SERVICE in the capability sets (linux/capability.h).
pub const CAP_NET_BIND_SERVICE: u32 = 10;
/// Bit of CAP_NET_ADMIN in the capability sets (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;

/// The account name that keeps the daemon's privileges.
pub const KEEP_ROOT: &str = "root";

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "no user {0:?} to drop privileges to: create it (useradd --system {0}) or set user = \"root\" to keep root"
    )]
    NoSuchUser(String),
    #[error("cannot drop privileges: {step} failed")]
    Drop {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot drop privileges safely: {0} threads run, capabilities are per thread")]
    Threads(usize),
}

/// An account to run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

impl Account {
    /// Looks `name` up in the password database.
    pub fn lookup(name: &str) -> Result<Account, PrivilegeError> {
        let missing = || PrivilegeError::NoSuchUser(name.to_owned());
        let c_name = CString::new(name).map_err(|_| missing())?;
        let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives the read of `pwd` below
        // (only its uid and gid, plain integers, are read).
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                pwd.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return Err(missing());
        }
        // SAFETY: getpwnam_r succeeded and `result` points at `pwd`, now initialised.
        let pwd = unsafe { pwd.assume_init() };
        Ok(Account {
            name: name.to_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// The capabilities kept after the drop for a tunnel port `port`.
pub fn kept_capabilities(port: u16) -> Vec<u32> {
    let mut caps = vec![CAP_NET_ADMIN];
    if port < 1024 {
        caps.push(CAP_NET_BIND_SERVICE);
    }
    caps
}

/// The bits of `caps` as the low word of a capability set (all of ours are below 32).
pub fn capability_mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

/// Switches to `account` (unless the daemon does not run as root, when only the capabilities are
/// reduced) and keeps exactly `caps`; true when it switched accounts. Must run while the
/// process has a single thread.
pub fn drop_to(account: &Account, caps: &[u32]) -> Result<bool, PrivilegeError> {
    let threads = thread_count();
    if threads > 1 {
        return Err(PrivilegeError::Threads(threads));
    }
    let step = |step: &'static str| move |source| PrivilegeError::Drop { step, source };
    // SAFETY: geteuid has no preconditions.
    let switch = unsafe { libc::geteuid() } == 0;
    // SAFETY (all calls below): plain syscalls with valid arguments; the pointers passed are to
    // live locals of the sizes the kernel expects.
    unsafe {
        if switch {
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))
                .map_err(step("PR_SET_KEEPCAPS"))?;
            check(libc::setgroups(0, std::ptr::null())).map_err(step("setgroups"))?;
            check(libc::setgid(account.gid)).map_err(step("setgid"))?;
            check(libc::setuid(account.uid)).map_err(step("setuid"))?;
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0))
                .map_err(step("PR_SET_KEEPCAPS"))?;
        }
        let mask = capability_mask(caps) as u32;
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: mask,
                permitted: mask,
                inheritable: 0,
            },
            CapData::default(),
        ];
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)
            .map_err(step("capset"))?;
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ))
        .map_err(step("PR_CAP_AMBIENT_CLEAR_ALL"))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
            .map_err(step("PR_SET_NO_NEW_PRIVS"))?;
    }
    Ok(switch)
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_net_admin_is_kept_unless_the_port_is_privileged() {
        assert_eq!(capability_mask(&kept_capabilities(51900)), 0x1000);
        assert_eq!(capability_mask(&kept_capabilities(443)), 0x1400);
        assert_eq!(capability_mask(&kept_capabilities(1024)), 0x1000);
    }

    #[test]
    fn root_and_nobody_are_found_and_a_missing_user_is_named() {
        assert_eq!(Account::lookup("root").unwrap().uid, 0);
        let nobody = Account::lookup("nobody").expect("nobody exists on Debian");
        assert_ne!(nobody.uid, 0);
        let err = Account::lookup("upmt-no-such-user")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no user \"upmt-no-such-user\""), "{err}");
        assert!(err.contains("user = \"root\""), "{err}");
    }
}
