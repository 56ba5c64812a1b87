//! NETLINK_SOCK_DIAG by exact 5-tuple: which local socket a packet came from, as the socket's
//! owner uid and inode. The `inet_diag_req_v2` request and `inet_diag_msg` reply are encoded by
//! `netlink-packet-sock-diag` (pure Rust, beside the rtnetlink crates; as fast as the hand-rolled
//! codec it replaced, see classify_bench); which 4-tuples to ask, and in which field order, is
//! this module's own knowledge of the kernel.
//!
//! Only single-socket lookups (no dumps): the kernel answers one request with one message or an
//! `ENOENT` error, so a lookup costs one syscall pair whatever the number of sockets. It never
//! reads /proc; that is [`super::procfs`]'s job.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

use upmt_paft::{FlowKey, proto};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, SocketId as DiagSocketId, StateFlags,
};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `nlmsghdr` (16) + `inet_diag_req_v2` (56).
const REQ_LEN: usize = 16 + 56;
/// A lookup that takes longer than this means a wedged kernel path; give up on it.
const RECV_TIMEOUT: Duration = Duration::from_millis(200);

/// A socket as sock_diag describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketId {
    /// The uid that created the socket.
    pub uid: u32,
    /// The socket's inode (`socket:[inode]` in /proc/PID/fd); 0 for a socket being torn down.
    pub inode: u32,
}

/// A sock_diag failure other than "no such socket".
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// The netlink socket could not be opened (no NETLINK_SOCK_DIAG in this kernel?).
    #[error("cannot open a NETLINK_SOCK_DIAG socket")]
    Open(#[source] io::Error),
    /// Sending the request or reading the answer failed.
    #[error("sock_diag request failed")]
    Io(#[source] io::Error),
}

/// One NETLINK_SOCK_DIAG socket, used by one thread.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
    buf: Box<[u8]>,
}

/// The 4-tuple of one request, in the order the kernel reads it.
struct Query {
    family: u8,
    protocol: u8,
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
}

impl SockDiag {
    /// Opens the socket.
    pub fn open() -> Result<SockDiag, DiagError> {
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(DiagError::Open(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: RECV_TIMEOUT.as_micros() as _,
        };
        // SAFETY: valid fd and a correctly sized timeval.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(DiagError::Open(io::Error::last_os_error()));
        }
        Ok(SockDiag {
            fd,
            seq: 0,
            buf: vec![0; 8192].into_boxed_slice(),
        })
    }

    /// The local socket that sent a packet with key `key` (the packet's source is the local
    /// end). TCP: the exact connection. UDP: the connected socket, else the unconnected one
    /// bound to the local port; for both, an IPv6 socket carrying IPv4 (v4-mapped) too.
    /// `Ok(None)` when no socket matches (gone already, ICMP, other protocols).
    pub fn find(&mut self, key: &FlowKey) -> Result<Option<SocketId>, DiagError> {
        if key.proto != proto::TCP && key.proto != proto::UDP {
            return Ok(None);
        }
        for q in queries(key) {
            if let Some(found) = self.query(&q)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn query(&mut self, q: &Query) -> Result<Option<SocketId>, DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let req = encode_request(q, self.seq);
        // SAFETY: valid fd; req is a valid buffer of REQ_LEN bytes. The kernel is the default
        // destination of an unbound netlink socket's send.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            return Err(DiagError::Io(io::Error::last_os_error()));
        }
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DiagError::Io(e));
            }
            let msg = &self.buf[..n as usize];
            match decode_reply(msg, self.seq) {
                Reply::Stale => continue,
                Reply::Found(id) => return Ok(Some(id)),
                Reply::NotFound => return Ok(None),
                Reply::Error(errno) => {
                    return Err(DiagError::Io(io::Error::from_raw_os_error(errno)));
                }
            }
        }
    }
}

/// The requests to try for `key`, most precise first.
fn queries(key: &FlowKey) -> Vec<Query> {
    let mut out = Vec::with_capacity(4);
    let (local, remote) = (key.src, key.dst);
    let v4 = |a: Ipv4Addr| {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&a.octets());
        b
    };
    let (family, l, r) = match (local, remote) {
        (IpAddr::V4(l), IpAddr::V4(r)) => (libc::AF_INET as u8, v4(l), v4(r)),
        (IpAddr::V6(l), IpAddr::V6(r)) => (libc::AF_INET6 as u8, l.octets(), r.octets()),
        // A packet never mixes families; nothing to ask.
        _ => return out,
    };
    let mapped = match (local, remote) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            Some((l.to_ipv6_mapped().octets(), r.to_ipv6_mapped().octets()))
        }
        _ => None,
    };
    if key.proto == proto::TCP {
        // inet_diag_find_one_icsk: src = local, dst = remote; a dual-stack IPv6 socket's IPv4
        // connection is in the IPv4 hash, and found through the mapped form too.
        out.push(Query::new(family, key.proto, l, key.sport, r, key.dport));
        if let Some((ml, mr)) = mapped {
            out.push(Query::new(
                libc::AF_INET6 as u8,
                key.proto,
                ml,
                key.sport,
                mr,
                key.dport,
            ));
        }
    } else {
        // udp_dump_one reads src and dst swapped ("for historical reasons"): src = remote,
        // dst = local. The kernel's receive lookup also finds unconnected sockets bound to the
        // local port, and dual-stack IPv6 sockets for IPv4 traffic.
        out.push(Query::new(family, key.proto, r, key.dport, l, key.sport));
        if let Some((ml, mr)) = mapped {
            out.push(Query::new(
                libc::AF_INET6 as u8,
                key.proto,
                mr,
                key.dport,
                ml,
                key.sport,
            ));
        }
        // The unconnected form with the remote end unknown, and the other order, in case a
        // kernel reads the fields as named.
        out.push(Query::new(family, key.proto, [0; 16], 0, l, key.sport));
        out.push(Query::new(family, key.proto, l, key.sport, r, key.dport));
    }
    out
}

impl Query {
    fn new(
        family: u8,
        protocol: u8,
        src: [u8; 16],
        sport: u16,
        dst: [u8; 16],
        dport: u16,
    ) -> Query {
        Query {
            family,
            protocol,
            src,
            sport,
            dst,
            dport,
        }
    }
}

fn address(family: u8, b: [u8; 16]) -> IpAddr {
    if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

fn encode_request(q: &Query, seq: u32) -> [u8; REQ_LEN] {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = seq;
    // nlmsg_pid 0: the kernel.
    let mut m = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: q.family,
            protocol: q.protocol,
            extensions: ExtensionFlags::empty(),
            // Every state, as the bits the kernel reads (the type knows only TCP's).
            states: StateFlags::from_bits_retain(u32::MAX),
            socket_id: DiagSocketId {
                source_port: q.sport,
                destination_port: q.dport,
                source_address: address(q.family, q.src),
                destination_address: address(q.family, q.dst),
                interface_id: 0,
                // INET_DIAG_NOCOOKIE: match by addresses and ports.
                cookie: [0xff; 8],
            },
        })
        .into(),
    );
    m.finalize();
    let mut b = [0u8; REQ_LEN];
    if m.buffer_len() == REQ_LEN {
        m.serialize(&mut b);
    }
    b
}

enum Reply {
    Found(SocketId),
    NotFound,
    /// An answer to an earlier request (after a timeout): skip it.
    Stale,
    Error(i32),
}

fn decode_reply(msg: &[u8], seq: u32) -> Reply {
    let got_seq = msg
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes);
    if got_seq != Some(seq) {
        return Reply::Stale;
    }
    let Ok(m) = NetlinkMessage::<SockDiagMessage>::deserialize(msg) else {
        return Reply::NotFound;
    };
    match m.payload {
        NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
            None | Some(libc::ENOENT) => Reply::NotFound,
            Some(errno) => Reply::Error(errno),
        },
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => Reply::Found(SocketId {
            uid: r.header.uid,
            inode: r.header.inode,
        }),
        _ => Reply::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> FlowKey {
        FlowKey {
            proto,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
        }
    }

    #[test]
    fn a_tcp_request_puts_the_local_end_first_in_network_order() {
        let q = &queries(&key(proto::TCP, "10.0.0.2", 40000, "192.0.2.2", 80))[0];
        let b = encode_request(q, 7);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 20, "SOCK_DIAG_BY_FAMILY");
        assert_eq!(
            u16::from_ne_bytes([b[6], b[7]]),
            1,
            "NLM_F_REQUEST, no dump"
        );
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
        let r = &b[16..];
        assert_eq!((r[0], r[1]), (libc::AF_INET as u8, proto::TCP));
        assert_eq!(&r[8..10], &40000u16.to_be_bytes());
        assert_eq!(&r[10..12], &80u16.to_be_bytes());
        assert_eq!(&r[12..16], &[10, 0, 0, 2]);
        assert_eq!(&r[28..32], &[192, 0, 2, 2]);
        assert_eq!(&r[48..56], &[0xff; 8]);
        assert_eq!(&r[4..8], &u32::MAX.to_ne_bytes(), "every state");
    }

    #[test]
    fn an_ipv6_request_carries_the_whole_addresses() {
        let k = key(proto::TCP, "2001:db8::2", 40000, "2001:db8::9", 443);
        let b = encode_request(&queries(&k)[0], 1);
        let r = &b[16..];
        assert_eq!(r[0], libc::AF_INET6 as u8);
        let src: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
        assert_eq!(&r[12..28], &src.octets());
    }

    #[test]
    fn udp_queries_swap_the_ends_and_include_the_mapped_and_wildcard_forms() {
        let qs = queries(&key(proto::UDP, "10.0.0.2", 5353, "192.0.2.2", 53));
        assert_eq!(qs.len(), 4);
        assert_eq!((qs[0].sport, qs[0].dport), (53, 5353));
        assert_eq!(qs[1].family, libc::AF_INET6 as u8);
        assert_eq!(
            &qs[1].dst[..12],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
        );
        assert_eq!((qs[2].sport, qs[2].src), (0, [0; 16]));
    }

    #[test]
    fn mixed_families_ask_nothing() {
        let mut k = key(proto::UDP, "10.0.0.2", 1, "192.0.2.2", 1);
        k.dst = "2001:db8::1".parse().unwrap();
        assert!(queries(&k).is_empty());
    }

    /// A reply as the kernel writes it: `nlmsghdr` then `inet_diag_msg` (family, state,
    /// timer, retrans, sockid (48), expires, rqueue, wqueue, uid, inode).
    fn reply(seq: u32, uid: u32, inode: u32) -> Vec<u8> {
        let mut m = vec![0u8; 16 + 72];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&20u16.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m[16] = libc::AF_INET as u8;
        m[16 + 64..16 + 68].copy_from_slice(&uid.to_ne_bytes());
        m[16 + 68..16 + 72].copy_from_slice(&inode.to_ne_bytes());
        m
    }

    fn error(seq: u32, errno: i32) -> Vec<u8> {
        let mut e = vec![0u8; 36];
        e[0..4].copy_from_slice(&36u32.to_ne_bytes());
        e[4..6].copy_from_slice(&2u16.to_ne_bytes());
        e[8..12].copy_from_slice(&seq.to_ne_bytes());
        e[16..20].copy_from_slice(&(-errno).to_ne_bytes());
        e
    }

    #[test]
    fn replies_decode_to_uid_and_inode_and_errors_to_not_found() {
        assert!(matches!(
            decode_reply(&reply(3, 4242, 991), 3),
            Reply::Found(SocketId {
                uid: 4242,
                inode: 991
            })
        ));
        assert!(matches!(decode_reply(&reply(3, 1, 1), 4), Reply::Stale));
        assert!(matches!(
            decode_reply(&error(3, libc::ENOENT), 3),
            Reply::NotFound
        ));
        assert!(matches!(
            decode_reply(&error(3, libc::EPERM), 3),
            Reply::Error(libc::EPERM)
        ));
        assert!(matches!(decode_reply(&[1, 2], 3), Reply::Stale));
        // Our sequence number on a message too short to be a reply.
        assert!(matches!(
            decode_reply(&reply(3, 1, 1)[..40], 3),
            Reply::NotFound
        ));
    }
}
