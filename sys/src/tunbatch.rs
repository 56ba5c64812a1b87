//! Batched TUN IO for both daemons, with the kernel's TUN offloads where it has them.
//!
//! With offload on, the TUN is opened with `IFF_VNET_HDR` and TSO4/TSO6 (and USO where the
//! kernel has it, 6.2+). A read then hands over up to 64 KiB of one TCP flow (or one UDP socket's
//! GSO send) with a virtio header; tun-rs splits it into MTU-sized packets with their own IP
//! length, IPv4 id and header checksum, TCP sequence number and transport checksum, FIN and PSH
//! only on the last segment and CWR only on the first ([`TunRx`]). In the other direction the
//! packets of one receive batch are queued ([`TunTx`]) and written with tun-rs's GRO table,
//! which coalesces consecutive segments of one TCP flow (and of one UDP flow with USO) into one
//! write with a virtio header: the kernel then takes one 64 KiB packet instead of 45.
//!
//! Without offload (turned off, an older kernel, a TUN opened from an fd) the same two types do
//! one plain read or write per packet, so the event loops have one code path.
//!
//! Every packet handed to the caller is a complete IP packet: the caller's per-packet decisions
//! (flow lookup, uplink choice, encryption, counters) stay per packet; only the syscalls are
//! shared.

use std::io;
use std::sync::Once;

use tun_rs::{AsyncDevice, DeviceImpl, GROTable};

pub use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Largest packet the kernel hands over in one offloaded read (an IP packet's maximum).
pub const MAX_SUPER_PACKET: usize = 65_535;

/// Whether the TUN is opened with offload (the `offload` config key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OffloadSetting {
    /// Where the kernel supports it (the default).
    #[default]
    On,
    /// Never: one syscall per packet.
    Off,
}

impl OffloadSetting {
    /// `true`/`false` in a config file.
    pub fn from_bool(on: bool) -> Self {
        if on {
            OffloadSetting::On
        } else {
            OffloadSetting::Off
        }
    }
}

/// What the TUN ended up with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OffloadState {
    /// Turned off by the config.
    #[default]
    Off,
    /// Asked for, but the kernel (or the way the TUN was opened) refused it: plain IO.
    Unsupported,
    /// TCP segmentation and coalescing; `udp` when the kernel also segments UDP (USO).
    On { udp: bool },
}

impl OffloadState {
    /// For logs, status and metrics: `off`, `unsupported`, `tcp` or `tcp+udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            OffloadState::Off => "off",
            OffloadState::Unsupported => "unsupported",
            OffloadState::On { udp: false } => "tcp",
            OffloadState::On { udp: true } => "tcp+udp",
        }
    }

    /// Whether reads and writes carry a virtio header.
    pub fn is_on(self) -> bool {
        matches!(self, OffloadState::On { .. })
    }
}

static FALLBACK_LOGGED: Once = Once::new();
static ON_LOGGED: Once = Once::new();

/// Opens a TUN with `build(offload)`: with offload first when `setting` asks for it, and again
/// without when the kernel refuses (logged once per process). An error of the second attempt,
/// or of the only one, is returned as is.
pub fn open_with_offload<D>(
    setting: OffloadSetting,
    mut build: impl FnMut(bool) -> io::Result<D>,
    state_of: impl Fn(&D) -> OffloadState,
) -> io::Result<(D, OffloadState)> {
    if setting == OffloadSetting::Off {
        return build(false).map(|d| (d, OffloadState::Off));
    }
    match build(true) {
        Ok(d) => {
            let state = state_of(&d);
            ON_LOGGED.call_once(|| tracing::info!(offload = state.as_str(), "TUN offload"));
            Ok((d, state))
        }
        Err(e) => {
            let d = build(false)?;
            FALLBACK_LOGGED.call_once(|| {
                tracing::warn!(error = %e, "TUN offload unavailable: one syscall per packet on the TUN")
            });
            Ok((d, OffloadState::Unsupported))
        }
    }
}

/// What a device opened by tun-rs has: offload when it carries virtio headers.
pub fn device_state(device: &DeviceImpl) -> OffloadState {
    if device.tcp_gso() {
        OffloadState::On {
            udp: device.udp_gso(),
        }
    } else {
        OffloadState::Unsupported
    }
}

/// What the batched TUN IO did, for the operator and the benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunStats {
    /// Read syscalls that returned a packet.
    pub read_calls: u64,
    /// Packets those reads gave, after splitting.
    pub read_packets: u64,
    /// Offloaded reads that could not be split (malformed, or more segments than buffers):
    /// dropped, the sender's transport recovers.
    pub read_bad: u64,
    /// Batches written (each one or more write syscalls).
    pub write_batches: u64,
    /// Packets handed to those batches.
    pub write_packets: u64,
    /// Batches in which the kernel refused a write.
    pub write_errors: u64,
}

/// Receive buffers for one TUN read: the raw read (virtio header and super-packet) and one
/// buffer per segment, each with `headroom` bytes before the packet (where the caller writes
/// its tunnel header) and `tailroom` after it (the AEAD tag).
pub struct TunRx {
    raw: Box<[u8]>,
    bufs: Vec<Slot>,
    sizes: Vec<usize>,
    headroom: usize,
    count: usize,
    stats: TunStats,
}

impl TunRx {
    /// Buffers for packets of at most `mtu` bytes, [`IDEAL_BATCH_SIZE`] of them (a 64 KiB
    /// super-packet of 536-byte segments still fits).
    pub fn new(mtu: usize, headroom: usize, tailroom: usize) -> TunRx {
        let slot = headroom + mtu + tailroom;
        TunRx {
            raw: vec![0; VIRTIO_NET_HDR_LEN + MAX_SUPER_PACKET].into_boxed_slice(),
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| Slot {
                    buf: vec![0; slot].into_boxed_slice(),
                    visible: headroom + mtu,
                })
                .collect(),
            sizes: vec![0; IDEAL_BATCH_SIZE],
            headroom,
            count: 0,
            stats: TunStats::default(),
        }
    }

    /// One read from `device` (nonblocking). Returns how many packets it gave: 0 for a
    /// super-packet that could not be split (counted in [`TunStats::read_bad`], logged at
    /// debug). `WouldBlock` and the device's own errors come back as errors.
    pub fn recv(&mut self, device: &AsyncDevice) -> io::Result<usize> {
        self.count = 0;
        let result = device.try_recv_multiple(
            &mut self.raw,
            &mut self.bufs,
            &mut self.sizes,
            self.headroom,
        );
        self.take(result)
    }

    fn take(&mut self, result: io::Result<usize>) -> io::Result<usize> {
        match result {
            Ok(n) => {
                self.count = n;
                self.stats.read_calls += 1;
                self.stats.read_packets += n as u64;
                Ok(n)
            }
            // tun-rs reports a packet it cannot split as an error without an OS error code.
            Err(e) if e.raw_os_error().is_none() && e.kind() != io::ErrorKind::WouldBlock => {
                self.stats.read_calls += 1;
                self.stats.read_bad += 1;
                tracing::debug!(error = %e, "TUN super-packet dropped");
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// The packets of the last read.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last read gave no packet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Packet `i` of the last read: its whole buffer (the packet at `headroom`) and its
    /// length. `None` past the last.
    pub fn packet_mut(&mut self, i: usize) -> Option<(&mut [u8], usize)> {
        if i >= self.count {
            return None;
        }
        Some((&mut self.bufs[i].buf, self.sizes[i]))
    }

    /// Packet `i` of the last read, without the room around it.
    pub fn packet(&self, i: usize) -> Option<&[u8]> {
        if i >= self.count {
            return None;
        }
        self.bufs[i]
            .buf
            .get(self.headroom..self.headroom + self.sizes[i])
    }

    pub fn stats(&self) -> TunStats {
        self.stats
    }
}

/// One segment buffer. tun-rs sees it without the tailroom, so a packet longer than the MTU is
/// refused there instead of taking the room the caller needs after it.
struct Slot {
    buf: Box<[u8]>,
    visible: usize,
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.visible]
    }
}

impl AsMut<[u8]> for Slot {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.visible]
    }
}

/// Packets waiting to be written to the TUN together. With offload on, the write coalesces
/// consecutive packets of one flow; without, it writes them one by one. Buffers are kept
/// across batches, so a steady flow allocates nothing.
pub struct TunTx {
    bufs: Vec<Vec<u8>>,
    count: usize,
    gro: GROTable,
    stats: TunStats,
}

impl Default for TunTx {
    fn default() -> Self {
        TunTx::new()
    }
}

impl TunTx {
    pub fn new() -> TunTx {
        TunTx {
            bufs: Vec::with_capacity(IDEAL_BATCH_SIZE),
            count: 0,
            gro: GROTable::new(),
            stats: TunStats::default(),
        }
    }

    /// Queues a copy of `packet`; returns true when the batch is full and should be flushed
    /// before the next push.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        if self.count == self.bufs.len() {
            // Room for a whole coalesced packet: tun-rs coalesces only into a buffer that
            // holds it without growing. Pages nothing writes to are never touched.
            self.bufs.push(Vec::with_capacity(
                2 * VIRTIO_NET_HDR_LEN + MAX_SUPER_PACKET,
            ));
        }
        let buf = &mut self.bufs[self.count];
        buf.clear();
        buf.resize(VIRTIO_NET_HDR_LEN, 0);
        buf.extend_from_slice(packet);
        self.count += 1;
        self.count >= IDEAL_BATCH_SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// Writes what waits to `device`; returns the packets queued and the error of the
    /// batch (a refused write drops that packet, as a full queue would).
    pub fn flush(&mut self, device: &DeviceImpl) -> (usize, Option<io::Error>) {
        if self.count == 0 {
            return (0, None);
        }
        let n = self.count;
        self.count = 0;
        self.stats.write_batches += 1;
        self.stats.write_packets += n as u64;
        let result = device.send_multiple(&mut self.gro, &mut self.bufs[..n], VIRTIO_NET_HDR_LEN);
        match result {
            Ok(_) => (n, None),
            Err(e) => {
                self.stats.write_errors += 1;
                (n, Some(e))
            }
        }
    }

    pub fn stats(&self) -> TunStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tun_rs::{VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VirtioNetHdr};

    const HEADROOM: usize = 16;
    const TAILROOM: usize = 16;
    const MTU: usize = 1420;

    impl TunRx {
        /// The split a read of an offloaded TUN does, on a hand-built super-packet.
        fn split_for_test(&mut self, hdr: VirtioNetHdr, mut input: Vec<u8>) -> usize {
            self.count = 0;
            let is_v6 = input[0] >> 4 == 6;
            let result = tun_rs::gso_split(
                &mut input,
                hdr,
                &mut self.bufs,
                &mut self.sizes,
                self.headroom,
                is_v6,
            );
            self.take(result)
                .expect("a split never fails with an os error")
        }
    }

    fn sum(data: &[u8], mut acc: u32) -> u32 {
        for pair in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        acc
    }

    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn pseudo(packet: &[u8], proto: u8, l4_len: usize) -> u32 {
        let (addrs, _) = if packet[0] >> 4 == 4 {
            (&packet[12..20], 20)
        } else {
            (&packet[8..40], 40)
        };
        sum(addrs, 0) + u32::from(proto) + l4_len as u32
    }

    fn ip_header_len(packet: &[u8]) -> usize {
        if packet[0] >> 4 == 4 {
            usize::from(packet[0] & 0xf) * 4
        } else {
            40
        }
    }

    /// Whether the IP (v4) header checksum and the transport checksum verify.
    fn checksums_verify(packet: &[u8]) -> bool {
        let ihl = ip_header_len(packet);
        if packet[0] >> 4 == 4 && fold(sum(&packet[..ihl], 0)) != 0 {
            return false;
        }
        let proto = if packet[0] >> 4 == 4 {
            packet[9]
        } else {
            packet[6]
        };
        let l4 = &packet[ihl..];
        fold(sum(l4, pseudo(packet, proto, l4.len()))) == 0
    }

    /// A TCP packet (IPv4 with `id`, or IPv6) of `payload`, sequence `seq`, `flags`, with
    /// valid checksums.
    fn tcp(v6: bool, id: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = ip_header(v6, 6, id, 20 + payload.len());
        let ihl = p.len();
        p.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]); // ports 40000 -> 443
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes()); // ack
        p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        finish(&mut p, ihl, 6);
        p
    }

    fn udp(v6: bool, id: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = ip_header(v6, 17, id, 8 + payload.len());
        let ihl = p.len();
        p.extend_from_slice(&[0x9c, 0x41, 0x00, 0x35]);
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        finish(&mut p, ihl, 17);
        p
    }

    fn ip_header(v6: bool, proto: u8, id: u16, l4_len: usize) -> Vec<u8> {
        if v6 {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(l4_len as u16).to_be_bytes());
            h.extend_from_slice(&[proto, 64]);
            h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            h.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
            h
        } else {
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            h.extend_from_slice(&id.to_be_bytes());
            h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0, 10, 7, 0, 2, 192, 0, 2, 9]);
            let c = fold(sum(&h, 0));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
    }

    fn finish(p: &mut [u8], ihl: usize, proto: u8) {
        let at = ihl + if proto == 6 { 16 } else { 6 };
        let c = fold(sum(&p[ihl..], pseudo(p, proto, p.len() - ihl)));
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// A super-packet as the kernel hands it over: one header, all the payload, and the virtio
    /// header that says how to cut it.
    fn super_packet(
        v6: bool,
        seq: u32,
        flags: u8,
        payload: &[u8],
        mss: u16,
    ) -> (VirtioNetHdr, Vec<u8>) {
        let p = tcp(v6, 100, seq, flags, payload);
        let ihl = ip_header_len(&p) as u16;
        let hdr = VirtioNetHdr {
            flags: 1, // VIRTIO_NET_HDR_F_NEEDS_CSUM
            gso_type: if v6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            },
            hdr_len: ihl + 20,
            gso_size: mss,
            csum_start: ihl,
            csum_offset: 16,
        };
        (hdr, p)
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    const FIN: u8 = 0x01;
    const PSH: u8 = 0x08;
    const ACK: u8 = 0x10;

    fn a_super_packet_splits_into_mtu_packets(v6: bool) {
        let ihl = if v6 { 40 } else { 20 };
        let mss = MTU - ihl - 20;
        let data = payload(3 * mss + 100);
        let (hdr, input) = super_packet(v6, 1_000, ACK | PSH | FIN, &data, mss as u16);
        let mut rx = TunRx::new(MTU, HEADROOM, TAILROOM);
        assert_eq!(rx.split_for_test(hdr, input), 4);
        let mut rebuilt = Vec::new();
        for i in 0..4 {
            let (buf, len) = rx.packet_mut(i).unwrap();
            assert_eq!(
                buf.len(),
                HEADROOM + MTU + TAILROOM,
                "room for the header and tag"
            );
            assert_eq!(len, if i < 3 { MTU } else { ihl + 20 + 100 }, "segment {i}");
            let p = rx.packet(i).unwrap();
            assert!(checksums_verify(p), "segment {i} checksums");
            let seq = u32::from_be_bytes(p[ihl + 4..ihl + 8].try_into().unwrap());
            assert_eq!(seq, 1_000 + (i * mss) as u32);
            let flags = p[ihl + 13];
            if i < 3 {
                assert_eq!(flags, ACK, "FIN and PSH only on the last segment");
            } else {
                assert_eq!(flags, ACK | PSH | FIN);
            }
            if v6 {
                assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), len - 40);
            } else {
                assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), len);
                assert_eq!(
                    u16::from_be_bytes([p[4], p[5]]),
                    100 + i as u16,
                    "ids count up"
                );
            }
            rebuilt.extend_from_slice(&p[ihl + 20..]);
        }
        assert_eq!(rebuilt, data, "the payload arrives whole and in order");
        assert!(rx.packet(4).is_none());
        assert_eq!(rx.stats().read_packets, 4);
    }

    #[test]
    fn an_ipv4_tcp_super_packet_splits_into_mtu_packets_with_valid_checksums() {
        a_super_packet_splits_into_mtu_packets(false);
    }

    #[test]
    fn an_ipv6_tcp_super_packet_splits_into_mtu_packets_with_valid_checksums() {
        a_super_packet_splits_into_mtu_packets(true);
    }

    #[test]
    fn a_udp_super_packet_splits_into_datagrams_with_their_own_length_and_checksum() {
        // USO: one UDP socket's GSO send, as the kernel hands it to an offloaded TUN.
        let seg = 1000;
        let data = payload(2 * seg + 10);
        let p = udp(false, 50, &data);
        let hdr = VirtioNetHdr {
            flags: 1,
            gso_type: tun_rs::VIRTIO_NET_HDR_GSO_UDP_L4,
            hdr_len: 28,
            gso_size: seg as u16,
            csum_start: 20,
            csum_offset: 6,
        };
        let mut rx = TunRx::new(MTU, HEADROOM, TAILROOM);
        assert_eq!(rx.split_for_test(hdr, p), 3);
        let mut rebuilt = Vec::new();
        for i in 0..3 {
            let d = rx.packet(i).unwrap();
            let len = if i < 2 { seg } else { 10 };
            assert_eq!(d.len(), 28 + len);
            assert_eq!(usize::from(u16::from_be_bytes([d[24], d[25]])), 8 + len);
            assert!(checksums_verify(d), "datagram {i} checksums");
            rebuilt.extend_from_slice(&d[28..]);
        }
        assert_eq!(rebuilt, data);
    }

    #[test]
    fn a_super_packet_with_more_segments_than_buffers_is_counted_and_dropped() {
        let data = payload(IDEAL_BATCH_SIZE * 100 + 1);
        let (hdr, input) = super_packet(false, 0, ACK, &data, 100);
        let mut rx = TunRx::new(MTU, HEADROOM, TAILROOM);
        assert_eq!(rx.split_for_test(hdr, input), 0);
        assert!(rx.is_empty());
        assert_eq!(rx.stats().read_bad, 1);
    }

    #[test]
    fn segments_one_byte_over_the_mtu_do_not_fit_and_are_counted() {
        let mss = MTU - 40 + 1;
        let (hdr, input) = super_packet(false, 0, ACK, &payload(2 * mss), mss as u16);
        let mut rx = TunRx::new(MTU, HEADROOM, TAILROOM);
        assert_eq!(rx.split_for_test(hdr, input), 0);
        assert_eq!(rx.stats().read_bad, 1);
    }

    fn tx_with(packets: &[Vec<u8>]) -> TunTx {
        let mut tx = TunTx::new();
        for p in packets {
            assert!(!tx.push(p));
        }
        tx
    }

    fn coalesced_round_trip(v6: bool) {
        let ihl = if v6 { 40 } else { 20 };
        let mss = MTU - ihl - 20;
        let segs: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                tcp(
                    v6,
                    100 + i as u16,
                    1_000 + (i * mss) as u32,
                    ACK,
                    &payload(mss),
                )
            })
            .collect();
        let dns = udp(v6, 7, b"a datagram between the segments");
        let mut tx = tx_with(&[
            segs[0].clone(),
            dns.clone(),
            segs[1].clone(),
            segs[2].clone(),
        ]);
        tx.gro
            .apply_gro(&mut tx.bufs[..4], VIRTIO_NET_HDR_LEN, false)
            .expect("coalescing");
        let head = &tx.bufs[0];
        assert_eq!(
            head.len(),
            VIRTIO_NET_HDR_LEN + ihl + 20 + 3 * mss,
            "one write, three segments"
        );
        let hdr = VirtioNetHdr::decode(&head[..VIRTIO_NET_HDR_LEN]).unwrap();
        assert_eq!(usize::from(hdr.gso_size), mss);
        assert_eq!(
            &tx.bufs[1][VIRTIO_NET_HDR_LEN..],
            &dns[..],
            "the UDP packet is left alone"
        );
        // The kernel segments the head as a TUN read would: the same three packets come out.
        let mut rx = TunRx::new(MTU, HEADROOM, TAILROOM);
        let mut hdr = hdr;
        hdr.hdr_len = (ihl + 20) as u16;
        assert_eq!(
            rx.split_for_test(hdr, head[VIRTIO_NET_HDR_LEN..].to_vec()),
            3
        );
        for (i, seg) in segs.iter().enumerate() {
            assert_eq!(rx.packet(i).unwrap(), &seg[..], "segment {i}");
        }
    }

    #[test]
    fn ipv4_segments_of_one_flow_coalesce_around_a_udp_packet_and_split_back_unchanged() {
        coalesced_round_trip(false);
    }

    #[test]
    fn ipv6_segments_of_one_flow_coalesce_around_a_udp_packet_and_split_back_unchanged() {
        coalesced_round_trip(true);
    }

    #[test]
    fn a_full_batch_asks_for_a_flush() {
        let mut tx = TunTx::new();
        let p = udp(false, 1, b"x");
        for _ in 0..IDEAL_BATCH_SIZE - 1 {
            assert!(!tx.push(&p));
        }
        assert!(tx.push(&p));
        assert_eq!(tx.len(), IDEAL_BATCH_SIZE);
    }

    #[test]
    fn offload_falls_back_to_plain_io_when_the_kernel_refuses_it() {
        let (d, state) = open_with_offload(
            OffloadSetting::On,
            |offload| {
                if offload {
                    Err(io::Error::from_raw_os_error(libc::EINVAL))
                } else {
                    Ok("plain")
                }
            },
            |_| OffloadState::On { udp: true },
        )
        .unwrap();
        assert_eq!((d, state), ("plain", OffloadState::Unsupported));
        let mut asked = Vec::new();
        let (_, state) = open_with_offload(
            OffloadSetting::Off,
            |offload| {
                asked.push(offload);
                Ok(())
            },
            |_| OffloadState::On { udp: false },
        )
        .unwrap();
        assert_eq!(state, OffloadState::Off);
        assert_eq!(asked, [false], "off never tries offload");
    }
}
