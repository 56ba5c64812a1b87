//! Batched UDP IO for the tunnel sockets of both daemons, over quinn-udp: many datagrams per
//! receive syscall (`recvmmsg`, and `UDP_GRO` super-datagrams split by their stride), and the
//! datagrams of one destination and size sent as one `UDP_SEGMENT` (GSO) send.
//!
//! quinn-udp probes the kernel and falls back on its own: without GRO a receive still takes up
//! to [`RX_SLOTS`] datagrams per syscall; without GSO (or once the kernel refused a GSO send) each
//! datagram is its own `sendmsg`, as before batching. What the kernel offers is logged once per
//! process; [`BatchSocket::stats`] counts what each socket did.
//!
//! Only the IO is batched: the callers still hand the pure cores one datagram at a time.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Deref;
use std::os::fd::AsRawFd as _;
use std::sync::Once;

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;

/// Datagram buffers of one receive call. Each slot holds the largest UDP payload, which is also
/// the largest super-datagram GRO hands over.
pub const RX_SLOTS: usize = 16;

/// Bytes of one receive slot.
pub const SLOT_BYTES: usize = 65_535;

/// Largest GSO send: the payload of one UDP datagram, less room for the IPv6 and UDP headers.
pub const GSO_MAX_BYTES: usize = 65_000;

/// Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS).
pub const GSO_MAX_SEGMENTS: usize = 64;

static OFFLOAD_LOGGED: Once = Once::new();

/// What one socket did, for the operator and the benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Receive syscalls that returned at least one datagram.
    pub recv_calls: u64,
    /// Datagrams received (GRO segments counted one by one).
    pub recv_datagrams: u64,
    /// Send syscalls made.
    pub send_calls: u64,
    /// Datagrams handed to those sends (GSO segments counted one by one).
    pub send_datagrams: u64,
    /// GSO sends the kernel refused, whose datagrams then went out one by one.
    pub gso_refused: u64,
}

/// A tokio UDP socket with quinn-udp's batched IO. Derefs to the socket for everything else
/// (readiness, addresses, socket options).
#[derive(Debug)]
pub struct BatchSocket {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    stats: BatchStats,
    peer: Option<SocketAddr>,
    /// After the kernel refused a GSO send as too big for the path (EMSGSIZE: the route's MTU
    /// shrank below the segment size), batches of segments at least this size go out one by
    /// one for the next [`GSO_TOO_BIG_SKIP`] flushes instead of failing a syscall each time.
    gso_too_big: Option<(usize, u32)>,
}

/// Flushes sent one by one after an EMSGSIZE refusal before GSO is tried again (the route's
/// MTU may grow back once its cached value expires).
const GSO_TOO_BIG_SKIP: u32 = 1024;

impl Deref for BatchSocket {
    type Target = tokio::net::UdpSocket;
    fn deref(&self) -> &tokio::net::UdpSocket {
        &self.socket
    }
}

impl std::os::fd::AsFd for BatchSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl BatchSocket {
    /// Sets the socket up for batched IO (GRO on where the kernel has it). The socket's path-MTU
    /// discovery mode is left as it was: quinn-udp would forbid fragmentation, which is a
    /// decision about the path, not about batching.
    pub fn new(socket: tokio::net::UdpSocket) -> io::Result<BatchSocket> {
        let saved = PmtuMode::save(&socket);
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        saved.restore(&socket);
        OFFLOAD_LOGGED.call_once(|| {
            let (gso, gro) = (state.max_gso_segments(), state.gro_segments());
            if gso > 1 && gro > 1 {
                tracing::info!(
                    gso_segments = gso,
                    gro_segments = gro,
                    "udp offload: GSO and GRO"
                );
            } else {
                tracing::warn!(
                    gso_segments = gso,
                    gro_segments = gro,
                    "udp offload missing in this kernel: one datagram per send without GSO, \
                     no coalesced receives without GRO (receives are still batched)"
                );
            }
        });
        Ok(BatchSocket {
            peer: socket.peer_addr().ok(),
            socket,
            state,
            stats: BatchStats::default(),
            gso_too_big: None,
        })
    }

    /// How many datagrams one send may carry now: 1 without GSO, or after the kernel refused it.
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments().min(GSO_MAX_SEGMENTS)
    }

    /// Whether the kernel coalesces received datagrams (UDP_GRO).
    pub fn gro(&self) -> bool {
        self.state.gro_segments() > 1
    }

    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    /// The address the socket is connected to, read once at setup (a connected uplink socket
    /// names its anchor in each send; the kernel accepts that on a connected UDP socket).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Receives one batch into `rx` (replacing what it held). `WouldBlock` when nothing waits;
    /// tokio's readiness is cleared then, so `readable()` waits for the next datagram.
    pub fn recv_batch(&mut self, rx: &mut RxBatch) -> io::Result<usize> {
        rx.count = 0;
        let mut slices: [IoSliceMut<'_>; RX_SLOTS] = {
            let mut chunks = rx.buf.chunks_mut(SLOT_BYTES);
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()))
        };
        let (socket, state) = (&self.socket, &self.state);
        let n = socket.try_io(Interest::READABLE, || {
            state.recv(UdpSockRef::from(socket), &mut slices, &mut rx.meta)
        })?;
        rx.count = n;
        self.stats.recv_calls += 1;
        self.stats.recv_datagrams += rx.datagram_count() as u64;
        Ok(n)
    }

    /// Sends what `tx` holds and empties it. Returns the datagrams that went out, or the
    /// datagrams lost with the error (a full send buffer drops them, as a congested link would).
    pub fn flush(&mut self, tx: &mut TxBatch) -> Result<usize, (usize, io::Error)> {
        let Some(dst) = tx.dst.take() else {
            return Ok(0);
        };
        let (len, segment, count) = (tx.len, tx.segment, tx.count);
        tx.len = 0;
        tx.count = 0;
        let contents = &tx.buf[..len];
        if count > 1
            && let Some((too_big, skips)) = self.gso_too_big
            && segment >= too_big
        {
            self.gso_too_big = skips.checked_sub(1).map(|left| (too_big, left));
            return self.send_singly(dst, contents, segment, count);
        }
        match self.send(dst, contents, (count > 1).then_some(segment), count) {
            Ok(()) => Ok(count),
            Err(e) if count > 1 && e.kind() != io::ErrorKind::WouldBlock => {
                // The kernel refused the GSO send (quinn-udp stops using GSO on this socket
                // after EIO/EINVAL): send the same datagrams one by one, so none is lost.
                self.stats.gso_refused += 1;
                if e.raw_os_error() == Some(libc::EMSGSIZE) {
                    // Too big for the path now, and so for a while: say it once, and do not
                    // fail a syscall per batch meanwhile.
                    if self.gso_too_big.is_none() {
                        tracing::info!(
                            segment,
                            "gso send too big for the path; sending one by one for a while"
                        );
                    }
                    self.gso_too_big = Some((segment, GSO_TOO_BIG_SKIP));
                } else {
                    tracing::info!(error = %e, segments = count, "gso send refused; sending one by one");
                }
                self.send_singly(dst, contents, segment, count)
            }
            Err(e) => Err((count, e)),
        }
    }

    /// Sends the `count` datagrams of `contents` (each `segment` long, the last maybe shorter)
    /// one syscall each.
    fn send_singly(
        &mut self,
        dst: SocketAddr,
        contents: &[u8],
        segment: usize,
        count: usize,
    ) -> Result<usize, (usize, io::Error)> {
        let (mut sent, mut last_err) = (0, None);
        for datagram in contents.chunks(segment) {
            match self.send(dst, datagram, None, 1) {
                Ok(()) => sent += 1,
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            None => Ok(sent),
            Some(e) => Err((count - sent, e)),
        }
    }

    /// Sends one datagram now, outside any batch.
    pub fn send_one(&mut self, dst: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        self.send(dst, datagram, None, 1)
    }

    /// Sends a path MTU probe: with the don't-fragment bit and never fragmented here, whatever
    /// the kernel learned of the path MTU (`IP_PMTUDISC_PROBE` for this send only), so only a
    /// path that carries the whole datagram delivers it. Other datagrams keep the socket's mode.
    pub fn send_probe(&mut self, dst: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        let saved = PmtuMode::save(&self.socket);
        let fd = self.socket.as_raw_fd();
        // The option of the other family fails harmlessly.
        let _ = setsockopt_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        );
        let _ = setsockopt_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        );
        let _ = setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1);
        let r = self.send_one(dst, datagram);
        saved.restore(&self.socket);
        r
    }

    fn send(
        &mut self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
        count: usize,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        self.stats.send_calls += 1;
        let (socket, state) = (&self.socket, &self.state);
        match socket.try_io(Interest::WRITABLE, || {
            state.try_send(UdpSockRef::from(socket), &transmit)
        }) {
            // tokio refuses without trying until its reactor has seen the socket writable, so
            // the first send on a socket opened this turn (a handshake on a new uplink) would
            // be lost; the kernel says itself when a UDP socket's buffer is full.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                state.try_send(UdpSockRef::from(socket), &transmit)?
            }
            result => result?,
        }
        self.stats.send_datagrams += count as u64;
        Ok(())
    }
}

/// Receive buffers allocated once: [`RX_SLOTS`] slots of [`SLOT_BYTES`] and their metadata.
pub struct RxBatch {
    buf: Box<[u8]>,
    meta: [RecvMeta; RX_SLOTS],
    count: usize,
}

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch {
            buf: vec![0; RX_SLOTS * SLOT_BYTES].into_boxed_slice(),
            meta: [RecvMeta::default(); RX_SLOTS],
            count: 0,
        }
    }
}

impl std::fmt::Debug for RxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBatch")
            .field("count", &self.count)
            .finish()
    }
}

impl RxBatch {
    /// The datagrams of the last receive, each with its sender, writable in place (the cores
    /// decrypt in place). A GRO super-datagram is split by its stride; its last segment may be
    /// shorter. An empty datagram is yielded as an empty slice.
    pub fn datagrams(&mut self) -> impl Iterator<Item = (SocketAddr, &mut [u8])> {
        let metas = &self.meta[..self.count];
        metas
            .iter()
            .zip(self.buf.chunks_mut(SLOT_BYTES))
            .flat_map(|(meta, slot)| {
                let len = meta.len.min(slot.len());
                let stride = if meta.stride == 0 {
                    len.max(1)
                } else {
                    meta.stride
                };
                let from = meta.addr;
                let slot = &mut slot[..len];
                let empty = len == 0;
                slot.chunks_mut(stride)
                    .chain(empty.then_some(&mut [][..]))
                    .map(move |d| (from, d))
            })
    }

    fn datagram_count(&self) -> usize {
        self.meta[..self.count]
            .iter()
            .map(|m| match (m.len, m.stride) {
                (0, _) | (_, 0) => 1,
                (len, stride) => len.div_ceil(stride),
            })
            .sum()
    }
}

/// Datagrams waiting to go out together: one destination, every datagram the size of the first
/// except the last, which may be shorter (the GSO rule). The buffer is allocated once.
pub struct TxBatch {
    buf: Box<[u8]>,
    len: usize,
    segment: usize,
    count: usize,
    dst: Option<SocketAddr>,
}

impl Default for TxBatch {
    fn default() -> Self {
        TxBatch {
            buf: vec![0; SLOT_BYTES].into_boxed_slice(),
            len: 0,
            segment: 0,
            count: 0,
            dst: None,
        }
    }
}

impl std::fmt::Debug for TxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxBatch")
            .field("dst", &self.dst)
            .field("count", &self.count)
            .field("segment", &self.segment)
            .finish()
    }
}

/// What [`TxBatch::push`] asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// The datagram joined the batch.
    Queued,
    /// The datagram joined the batch and closed it (it was shorter, or the batch is full):
    /// flush now.
    QueuedFlush,
    /// The datagram cannot join: flush, then push it again.
    FlushFirst,
}

impl TxBatch {
    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Drops what waits (its socket went away); returns how many datagrams that was.
    pub fn discard(&mut self) -> usize {
        let n = self.count;
        self.len = 0;
        self.count = 0;
        self.dst = None;
        n
    }

    /// Adds `datagram` for `dst` when it fits the batch. `max_segments` is the socket's
    /// [`BatchSocket::max_gso_segments`]; with 1 every datagram is its own send.
    pub fn push(&mut self, dst: SocketAddr, datagram: &[u8], max_segments: usize) -> Push {
        let n = datagram.len();
        let max_segments = max_segments.clamp(1, GSO_MAX_SEGMENTS);
        if self.count > 0 {
            let fits = self.dst == Some(dst)
                && n <= self.segment
                && n > 0
                && self.len + n <= GSO_MAX_BYTES
                && self.count < max_segments;
            if !fits {
                return Push::FlushFirst;
            }
        }
        if n > self.buf.len() {
            // Larger than any UDP payload: let the send fail and be counted like any other.
            return self.start_alone(dst, &datagram[..self.buf.len()]);
        }
        if self.count == 0 {
            self.dst = Some(dst);
            self.segment = n;
        }
        self.buf[self.len..self.len + n].copy_from_slice(datagram);
        self.len += n;
        self.count += 1;
        let closed = n < self.segment
            || n == 0
            || self.count >= max_segments
            || self.len + self.segment > GSO_MAX_BYTES;
        if closed {
            Push::QueuedFlush
        } else {
            Push::Queued
        }
    }

    fn start_alone(&mut self, dst: SocketAddr, datagram: &[u8]) -> Push {
        self.buf[..datagram.len()].copy_from_slice(datagram);
        self.len = datagram.len();
        self.segment = datagram.len();
        self.count = 1;
        self.dst = Some(dst);
        Push::QueuedFlush
    }
}

/// Sends `datagram` to `dst` through `tx`, flushing as the batch rules ask. Returns the
/// datagrams sent and the datagrams lost (with the last error) by the flushes it made.
pub fn queue(
    socket: &mut BatchSocket,
    tx: &mut TxBatch,
    dst: SocketAddr,
    datagram: &[u8],
) -> Flushed {
    let mut out = Flushed::default();
    let max = socket.max_gso_segments();
    let mut push = tx.push(dst, datagram, max);
    if push == Push::FlushFirst {
        out.add(socket.flush(tx));
        push = tx.push(dst, datagram, max);
    }
    if push != Push::Queued {
        out.add(socket.flush(tx));
    }
    out
}

/// The outcome of one or more flushes.
#[derive(Debug, Default)]
pub struct Flushed {
    pub sent: usize,
    pub lost: usize,
    pub error: Option<io::Error>,
}

impl Flushed {
    pub fn add(&mut self, result: Result<usize, (usize, io::Error)>) {
        match result {
            Ok(n) => self.sent += n,
            Err((n, e)) => {
                self.lost += n;
                self.error = Some(e);
            }
        }
    }
}

/// The socket's path-MTU discovery settings, saved around quinn-udp's setup.
struct PmtuMode {
    v4: Option<libc::c_int>,
    v6: Option<libc::c_int>,
    v6_dontfrag: Option<libc::c_int>,
}

impl PmtuMode {
    fn save(socket: &tokio::net::UdpSocket) -> PmtuMode {
        let fd = socket.as_raw_fd();
        PmtuMode {
            v4: getsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            v6: getsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
            v6_dontfrag: getsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG),
        }
    }

    fn restore(&self, socket: &tokio::net::UdpSocket) {
        let fd = socket.as_raw_fd();
        for (level, name, value) in [
            (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, self.v4),
            (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, self.v6),
            (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, self.v6_dontfrag),
        ] {
            if let Some(value) = value {
                // An option the socket's family lacks was not read either; nothing to undo.
                let _ = setsockopt_int(fd, level, name, value);
            }
        }
    }
}

fn getsockopt_int(fd: i32, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket; value and len point to a live c_int and its size.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    (rc == 0).then_some(value)
}

fn setsockopt_int(fd: i32, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: `fd` is an open socket; the value is a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn datagrams_of_one_size_and_destination_join_until_a_shorter_one_closes_the_batch() {
        let mut tx = TxBatch::default();
        assert_eq!(tx.push(addr(1), &[1; 100], 64), Push::Queued);
        assert_eq!(tx.push(addr(1), &[2; 100], 64), Push::Queued);
        assert_eq!(tx.push(addr(1), &[3; 40], 64), Push::QueuedFlush);
        assert_eq!((tx.count, tx.len, tx.segment), (3, 240, 100));
    }

    #[test]
    fn another_destination_or_a_larger_datagram_must_wait_for_a_flush() {
        let mut tx = TxBatch::default();
        assert_eq!(tx.push(addr(1), &[0; 100], 64), Push::Queued);
        assert_eq!(tx.push(addr(2), &[0; 100], 64), Push::FlushFirst);
        assert_eq!(tx.push(addr(1), &[0; 101], 64), Push::FlushFirst);
        assert_eq!(tx.count, 1, "refused datagrams are not queued");
    }

    #[test]
    fn without_gso_every_datagram_closes_its_own_batch() {
        let mut tx = TxBatch::default();
        assert_eq!(tx.push(addr(1), &[0; 100], 1), Push::QueuedFlush);
    }

    #[test]
    fn a_batch_closes_at_the_segment_limit_and_before_passing_the_gso_byte_limit() {
        let mut tx = TxBatch::default();
        for _ in 0..3 {
            assert_eq!(tx.push(addr(1), &[0; 10], 4), Push::Queued);
        }
        assert_eq!(tx.push(addr(1), &[0; 10], 4), Push::QueuedFlush);

        let mut tx = TxBatch::default();
        let big = [0u8; 1500];
        let fit = GSO_MAX_BYTES / big.len();
        for _ in 0..fit - 1 {
            assert_eq!(tx.push(addr(1), &big, 64), Push::Queued);
        }
        assert_eq!(tx.push(addr(1), &big, 64), Push::QueuedFlush);
        assert!(tx.len <= GSO_MAX_BYTES);
    }

    #[tokio::test]
    async fn a_socket_sends_at_once_before_the_reactor_has_seen_it() {
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut a = BatchSocket::new(a).unwrap();
        a.send_one(b.local_addr().unwrap(), b"first").unwrap();
        let mut buf = [0u8; 16];
        let n = b.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first");
    }

    #[tokio::test]
    async fn a_batch_sent_with_gso_arrives_as_the_same_datagrams_in_order() {
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = b.local_addr().unwrap();
        let mut a = BatchSocket::new(a).unwrap();
        let mut b = BatchSocket::new(b).unwrap();
        let mut tx = TxBatch::default();
        let sizes = [1200usize, 1200, 1200, 1200, 700, 1200, 1300, 5];
        // tokio knows the socket is writable once its reactor has seen it.
        a.writable().await.unwrap();
        let mut flushed = Flushed::default();
        for (i, &n) in sizes.iter().enumerate() {
            let f = queue(&mut a, &mut tx, to, &vec![i as u8; n]);
            flushed.sent += f.sent;
            flushed.lost += f.lost;
            flushed.error = f.error.or(flushed.error);
        }
        flushed.add(a.flush(&mut tx));
        assert_eq!(
            (flushed.sent, flushed.lost),
            (sizes.len(), 0),
            "{:?}",
            flushed.error
        );
        if a.max_gso_segments() > 1 {
            assert!(a.stats().send_calls < sizes.len() as u64, "{:?}", a.stats());
        }

        let mut rx = RxBatch::default();
        let mut got = Vec::new();
        while got.len() < sizes.len() {
            b.readable().await.unwrap();
            match b.recv_batch(&mut rx) {
                Ok(_) => got.extend(rx.datagrams().map(|(from, d)| (from, d.to_vec()))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        let from = a.local_addr().unwrap();
        for (i, (&n, (src, d))) in sizes.iter().zip(&got).enumerate() {
            assert_eq!(*src, from);
            assert_eq!(d.len(), n, "datagram {i}");
            assert!(d.iter().all(|&x| x == i as u8), "datagram {i}");
        }
        assert_eq!(got.len(), sizes.len());
        assert_eq!(b.stats().recv_datagrams, sizes.len() as u64);
    }

    #[tokio::test]
    async fn batching_leaves_the_sockets_path_mtu_discovery_mode_alone() {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let fd = s.as_raw_fd();
        assert!(setsockopt_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT
        ));
        let s = BatchSocket::new(s).unwrap();
        assert_eq!(
            getsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            Some(libc::IP_PMTUDISC_DONT)
        );
    }
}
