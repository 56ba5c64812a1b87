//! The kernel's process events connector (NETLINK_CONNECTOR, `CN_IDX_PROC`): which processes
//! were forked, exec'd, changed uid or exited, so the process table reads only those instead
//! of rescanning `/proc`. Needs CAP_NET_ADMIN and a kernel with CONFIG_PROC_EVENTS; the kernel
//! sends these events only to sockets of the initial network namespace.
//!
//! A daemon in another network namespace (the lab's, a container's) opens its socket in the
//! initial one ([`open_watch`]): a short-lived thread enters pid 1's network namespace (or,
//! when pid 1's cannot be read, a parent process's), makes and subscribes the socket, and
//! exits; the socket keeps its namespace. Only this netlink
//! socket is made there: nothing is sent on any network, no route or rule is touched.
//!
//! Hand-rolled like [`super::diag`]: a subscribe message (`nlmsghdr` + `cn_msg` + op) and the
//! fixed `proc_event` layout. The socket is non-blocking; [`ProcEvents::drain`] reads what is
//! queued. A full receive buffer (the kernel drops events) is reported as [`ProcEvent::Lost`]:
//! the table then trusts nothing it learnt from events and lists `/proc` again.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;

pub use upmt_mh_core::api::ProcessWatch;

const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
/// The socket's receive buffer.
const RECV_BUFFER: libc::c_int = 4 << 20;
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;
/// `proc_event`: what, cpu, timestamp_ns, then the event's data.
const EVENT_AT: usize = NLMSG_HDRLEN + CN_MSG_LEN;
const DATA_AT: usize = EVENT_AT + 16;

const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_UID: u32 = 0x0000_0004;
const PROC_EVENT_COMM: u32 = 0x0000_0200;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// A process event that matters to the owner lookup. Threads are left out: they share their
/// process's fds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcEvent {
    /// A new process (it inherited its parent's fds).
    Fork {
        /// The new process.
        pid: u32,
        /// Its parent.
        parent: u32,
    },
    /// A process ran a new program (new name; close-on-exec fds are gone), changed its uid or
    /// renamed itself (Android's app processes set their name after zygote's fork).
    Changed {
        /// The process.
        pid: u32,
    },
    /// A process exited: its pid may come back as another process.
    Exit {
        /// The process.
        pid: u32,
    },
    /// The kernel dropped events: what was learnt from them is no longer complete.
    Lost,
}

/// Why process events are not used.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The connector socket could not be made or subscribed (no CAP_NET_ADMIN, no
    /// CONFIG_PROC_EVENTS, or a network namespace other than the initial one: refused).
    #[error("cannot open a process events socket")]
    Open(#[source] io::Error),
    /// The daemon runs outside the initial network namespace and could not enter it (no
    /// CAP_SYS_ADMIN, no access to the namespace of pid 1 or of a parent process).
    #[error("cannot enter the network namespace of pid {pid}")]
    Enter {
        /// Whose namespace.
        pid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A network namespace: the (device, inode) of a `/proc/PID/ns/net`.
type NsId = (u64, u64);

/// Where to try opening the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// In the calling thread's own network namespace.
    Here,
    /// In the network namespace of process `pid`.
    Of(u32),
}

/// Where to try, in order, from the calling thread's network namespace, pid 1's, and those of
/// its parent processes (nearest first). pid 1's is the initial one when the daemon shares its
/// pid namespace. When pid 1's cannot be read (no ptrace access to it, hidepid), try here, then
/// the parents' other namespaces: the one the daemon was started from (`ip netns exec`) is
/// the initial one in the usual case, and a wrong one refuses the subscription.
fn places(own: Option<NsId>, initial: Option<NsId>, parents: &[(u32, Option<NsId>)]) -> Vec<Place> {
    match (own, initial) {
        (Some(own), Some(initial)) if own == initial => vec![Place::Here],
        (Some(_), Some(_)) => vec![Place::Of(1)],
        _ => {
            let mut seen: Vec<NsId> = own.into_iter().collect();
            let mut out = vec![Place::Here];
            for &(pid, ns) in parents {
                if let Some(ns) = ns
                    && !seen.contains(&ns)
                {
                    seen.push(ns);
                    out.push(Place::Of(pid));
                }
            }
            out
        }
    }
}

fn netns_id(pid: &str) -> Option<NsId> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The parent pid in a `/proc/PID/stat` (the field after the state, after the name's `)`).
fn ppid_from_stat(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// This process's parents, nearest first, up to pid 1 (at most a few).
fn parents() -> Vec<u32> {
    let mut out = Vec::new();
    let mut pid = std::process::id();
    while out.len() < 8 {
        let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| ppid_from_stat(&s))
        else {
            break;
        };
        if ppid <= 1 {
            break;
        }
        out.push(ppid);
        pid = ppid;
    }
    out
}

/// Opens process events where the kernel sends them (the initial network namespace), and says
/// how the lookup then learns of new processes. Call before the process index is primed, so no
/// process falls in between.
pub fn open_watch() -> Result<(ProcEvents, ProcessWatch), EventsError> {
    let own = netns_id("thread-self");
    let initial = netns_id("1");
    let parents: Vec<(u32, Option<NsId>)> = match (own, initial) {
        (Some(_), Some(_)) => Vec::new(),
        _ => parents()
            .into_iter()
            .map(|p| (p, netns_id(&p.to_string())))
            .collect(),
    };
    let mut last = None;
    for place in places(own, initial, &parents) {
        let opened = match place {
            Place::Here => ProcEvents::open()
                .map(|e| (e, ProcessWatch::Events))
                .map_err(EventsError::Open),
            Place::Of(pid) => {
                ProcEvents::open_in(pid).map(|e| (e, ProcessWatch::EventsFromInitialNetns))
            }
        };
        match opened {
            Ok(found) => return Ok(found),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| EventsError::Open(io::ErrorKind::NotFound.into())))
}

/// A subscribed process events socket.
pub struct ProcEvents {
    fd: OwnedFd,
    buf: Box<[u8]>,
}

impl ProcEvents {
    /// Opens the connector socket and subscribes to process events.
    pub fn open() -> io::Result<ProcEvents> {
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: valid fd and a correctly sized sockaddr_nl.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Room for a burst (hundreds of apps starting at boot make thousands of events, each
        // taking about a kilobyte of buffer); past it the kernel drops them and the table lists
        // /proc. FORCE passes rmem_max as root; the plain option is the fallback.
        let size: libc::c_int = RECV_BUFFER;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: valid fd and a correctly sized int.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const size).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
        let msg = subscribe_message();
        // SAFETY: valid fd and buffer; the kernel is the default destination.
        let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ProcEvents {
            fd,
            buf: vec![0; 16 * 1024].into_boxed_slice(),
        })
    }

    /// Opens the socket in process `pid`'s network namespace, from a thread of its own that
    /// enters it and ends: the caller's threads stay where they are.
    pub fn open_in(pid: u32) -> Result<ProcEvents, EventsError> {
        let enter = move |source| EventsError::Enter { pid, source };
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(enter)?;
        std::thread::Builder::new()
            .name("upmt-procev".into())
            .spawn(move || {
                // SAFETY: a valid namespace fd; setns moves this thread alone, which ends below.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(enter(io::Error::last_os_error()));
                }
                ProcEvents::open().map_err(EventsError::Open)
            })
            .map_err(EventsError::Open)?
            .join()
            .unwrap_or_else(|_| {
                Err(EventsError::Open(io::Error::other(
                    "the process events thread panicked",
                )))
            })
    }

    /// Appends every queued event to `out` without blocking.
    pub fn drain(&mut self, out: &mut Vec<ProcEvent>) {
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        out.push(ProcEvent::Lost);
                        continue;
                    }
                    _ => return,
                }
            }
            decode(&self.buf[..n as usize], out);
        }
    }
}

fn subscribe_message() -> [u8; NLMSG_HDRLEN + CN_MSG_LEN + 4] {
    let mut b = [0u8; NLMSG_HDRLEN + CN_MSG_LEN + 4];
    let len = b.len() as u32;
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    b[12..16].copy_from_slice(&pid.to_ne_bytes());
    let c = &mut b[NLMSG_HDRLEN..];
    c[0..4].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
    c[4..8].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
    // seq, ack 0; len of the op; flags 0.
    c[16..18].copy_from_slice(&4u16.to_ne_bytes());
    c[20..24].copy_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    b
}

/// The events in one datagram (the kernel sends one per message; several messages may share a
/// datagram).
fn decode(mut datagram: &[u8], out: &mut Vec<ProcEvent>) {
    while datagram.len() >= NLMSG_HDRLEN {
        let len = u32_at(datagram, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || len > datagram.len() {
            return;
        }
        if let Some(e) = decode_event(&datagram[..len]) {
            out.push(e);
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        datagram = datagram.get(next..).unwrap_or_default();
    }
}

fn decode_event(msg: &[u8]) -> Option<ProcEvent> {
    let what = u32_at(msg, EVENT_AT)?;
    let data = |i: usize| u32_at(msg, DATA_AT + 4 * i);
    match what {
        // fork: parent_pid, parent_tgid, child_pid, child_tgid.
        PROC_EVENT_FORK => {
            let (parent, child, tgid) = (data(1)?, data(2)?, data(3)?);
            (child == tgid).then_some(ProcEvent::Fork { pid: child, parent })
        }
        // exec, uid, comm: process_pid, process_tgid, ...
        PROC_EVENT_EXEC | PROC_EVENT_UID | PROC_EVENT_COMM => {
            let (pid, tgid) = (data(0)?, data(1)?);
            (pid == tgid).then_some(ProcEvent::Changed { pid })
        }
        PROC_EVENT_EXIT => {
            let (pid, tgid) = (data(0)?, data(1)?);
            (pid == tgid).then_some(ProcEvent::Exit { pid })
        }
        _ => None,
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, data: &[u32]) -> Vec<u8> {
        let mut m = vec![0u8; DATA_AT + 4 * data.len()];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[EVENT_AT..EVENT_AT + 4].copy_from_slice(&what.to_ne_bytes());
        for (i, d) in data.iter().enumerate() {
            m[DATA_AT + 4 * i..DATA_AT + 4 * i + 4].copy_from_slice(&d.to_ne_bytes());
        }
        m
    }

    #[test]
    fn process_events_decode_and_thread_events_are_left_out() {
        let mut out = Vec::new();
        let mut d = message(PROC_EVENT_FORK, &[10, 10, 11, 11]);
        d.extend(message(PROC_EVENT_FORK, &[10, 10, 12, 10]));
        d.extend(message(PROC_EVENT_EXEC, &[11, 11]));
        d.extend(message(PROC_EVENT_EXIT, &[12, 10, 0, 0, 10, 10]));
        d.extend(message(PROC_EVENT_EXIT, &[11, 11, 0, 17, 10, 10]));
        d.extend(message(0x40, &[11, 11]));
        decode(&d, &mut out);
        assert_eq!(
            out,
            vec![
                ProcEvent::Fork {
                    pid: 11,
                    parent: 10
                },
                ProcEvent::Changed { pid: 11 },
                ProcEvent::Exit { pid: 11 },
            ]
        );
    }

    #[test]
    fn truncated_datagrams_decode_to_nothing() {
        let mut out = Vec::new();
        let d = message(PROC_EVENT_EXEC, &[11, 11]);
        decode(&d[..d.len() - 2], &mut out);
        decode(&[1, 0, 0], &mut out);
        let mut short = message(PROC_EVENT_EXEC, &[11]);
        let len = short.len() as u32;
        short[0..4].copy_from_slice(&len.to_ne_bytes());
        decode(&short, &mut out);
        assert_eq!(out, vec![]);
    }

    #[test]
    fn the_socket_goes_to_the_initial_namespace_only_when_the_daemon_is_elsewhere() {
        assert_eq!(places(Some((4, 10)), Some((4, 10)), &[]), vec![Place::Here]);
        assert_eq!(
            places(Some((4, 11)), Some((4, 10)), &[]),
            vec![Place::Of(1)]
        );
        // Same inode on another device: another namespace.
        assert_eq!(
            places(Some((5, 10)), Some((4, 10)), &[]),
            vec![Place::Of(1)]
        );
        // pid 1 unreadable: here, then the parents' namespaces, each once, none of ours.
        let parents = [
            (40, Some((4, 11))),
            (30, None),
            (20, Some((4, 10))),
            (10, Some((4, 10))),
        ];
        assert_eq!(
            places(Some((4, 11)), None, &parents),
            vec![Place::Here, Place::Of(20)]
        );
        assert_eq!(places(None, None, &[]), vec![Place::Here]);
    }

    #[test]
    fn the_parent_pid_is_read_past_a_name_with_spaces_and_parentheses() {
        assert_eq!(ppid_from_stat("123 (a) b) S 77 123 1 0"), Some(77));
        assert_eq!(ppid_from_stat("1 (init) S 0 1 1"), Some(0));
        assert_eq!(ppid_from_stat("garbage"), None);
    }

    #[test]
    fn the_subscribe_message_names_the_proc_connector_and_listens() {
        let m = subscribe_message();
        assert_eq!(u32_at(&m, 0), Some(40));
        assert_eq!(u32_at(&m, NLMSG_HDRLEN), Some(CN_IDX_PROC));
        assert_eq!(u32_at(&m, NLMSG_HDRLEN + 4), Some(CN_VAL_PROC));
        assert_eq!(u32_at(&m, NLMSG_HDRLEN + CN_MSG_LEN), Some(1));
    }
}
