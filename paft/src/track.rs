//! Connection tracking just deep enough to pick an idle timeout, in the spirit of
//! conntrack's "liberal" mode: flags only, no sequence-window checks.
//!
//! Because sequence numbers are not checked, a spoofed RST or FIN shortens a flow's idle
//! timeout to the closing one; the flow still lives while packets keep coming.

use std::time::Duration;

use crate::key::{proto, tcp_flags};

/// Which side of a flow a packet comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Sent by the flow's initiator: the packet's key equals the flow's key.
    Orig = 0,
    /// Sent by the responder: the packet's key equals the flow's key reversed.
    Reply = 1,
}

/// The coarse TCP state used to pick a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// No packet has been seen yet, or only the initiator's SYN.
    Opening,
    /// Data may flow: the responder answered, or the flow was picked up mid-stream.
    Established,
    /// One side sent FIN; the other may still send for a while.
    HalfClosed,
    /// FIN both ways, or an RST: the connection is over.
    Closing,
}

/// Idle timeouts per protocol and state. A flow expires once `now >= last_seen + timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP before the responder answered (conntrack's syn_sent is 120 s; 60 s is plenty
    /// for a handshake and frees scan garbage sooner).
    pub tcp_opening: Duration,
    /// TCP established: long, because idle TCP connections (push channels) are normal.
    pub tcp_established: Duration,
    /// TCP after one FIN.
    pub tcp_half_closed: Duration,
    /// TCP after FIN both ways or RST.
    pub tcp_closing: Duration,
    /// UDP seen in one direction only.
    pub udp: Duration,
    /// UDP seen in both directions.
    pub udp_stream: Duration,
    /// ICMP and ICMPv6.
    pub icmp: Duration,
    /// Any other protocol.
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_opening: Duration::from_secs(60),
            tcp_established: Duration::from_secs(2 * 3600),
            tcp_half_closed: Duration::from_secs(120),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
            udp_stream: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(600),
        }
    }
}

const SEEN_ORIG: u8 = 1 << 0;
const SEEN_REPLY: u8 = 1 << 1;
const SYN_ORIG: u8 = 1 << 2;
const FIN_ORIG: u8 = 1 << 3;
const FIN_REPLY: u8 = 1 << 4;
const RST: u8 = 1 << 5;

/// What has been seen of a flow, packed in one byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Track(u8);

impl Track {
    pub(crate) fn observe(&mut self, proto_num: u8, dir: Dir, flags: u8) {
        if proto_num == proto::TCP {
            let is_new_syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
            if dir == Dir::Orig && is_new_syn && self.tcp_state() == TcpState::Closing {
                // The tuple is being reused for a new connection (as conntrack does on a SYN
                // in TIME_WAIT/CLOSE): forget the old one's close.
                self.0 = 0;
            }
            if flags & tcp_flags::RST != 0 {
                self.0 |= RST;
            }
            if flags & tcp_flags::FIN != 0 {
                self.0 |= match dir {
                    Dir::Orig => FIN_ORIG,
                    Dir::Reply => FIN_REPLY,
                };
            }
            if dir == Dir::Orig && flags & tcp_flags::SYN != 0 {
                self.0 |= SYN_ORIG;
            }
        }
        self.0 |= match dir {
            Dir::Orig => SEEN_ORIG,
            Dir::Reply => SEEN_REPLY,
        };
    }

    pub(crate) fn tcp_state(self) -> TcpState {
        let b = self.0;
        if b & RST != 0 || b & (FIN_ORIG | FIN_REPLY) == FIN_ORIG | FIN_REPLY {
            TcpState::Closing
        } else if b & (FIN_ORIG | FIN_REPLY) != 0 {
            TcpState::HalfClosed
        } else if b & SEEN_REPLY != 0 || (b & SEEN_ORIG != 0 && b & SYN_ORIG == 0) {
            // A first packet without SYN means the connection predates us (daemon restart,
            // table full earlier): trust it as established rather than expire it in 60 s.
            TcpState::Established
        } else {
            TcpState::Opening
        }
    }

    pub(crate) fn replied(self) -> bool {
        self.0 & SEEN_REPLY != 0
    }

    pub(crate) fn timeout(self, proto_num: u8, t: &Timeouts) -> Duration {
        match proto_num {
            proto::TCP => match self.tcp_state() {
                TcpState::Opening => t.tcp_opening,
                TcpState::Established => t.tcp_established,
                TcpState::HalfClosed => t.tcp_half_closed,
                TcpState::Closing => t.tcp_closing,
            },
            proto::UDP | proto::UDPLITE => {
                if self.replied() {
                    t.udp_stream
                } else {
                    t.udp
                }
            }
            proto::ICMP | proto::ICMPV6 => t.icmp,
            _ => t.other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tcp_flags::{ACK, FIN, RST, SYN};

    fn run(steps: &[(Dir, u8)]) -> Track {
        let mut t = Track::default();
        for &(d, f) in steps {
            t.observe(proto::TCP, d, f);
        }
        t
    }

    #[test]
    fn a_three_way_handshake_reaches_established() {
        assert_eq!(run(&[(Dir::Orig, SYN)]).tcp_state(), TcpState::Opening);
        assert_eq!(
            run(&[(Dir::Orig, SYN), (Dir::Reply, SYN | ACK)]).tcp_state(),
            TcpState::Established
        );
    }

    #[test]
    fn a_flow_picked_up_mid_stream_is_established() {
        assert_eq!(run(&[(Dir::Orig, ACK)]).tcp_state(), TcpState::Established);
    }

    #[test]
    fn one_fin_half_closes_and_fins_both_ways_close() {
        let open = [(Dir::Orig, SYN), (Dir::Reply, SYN | ACK), (Dir::Orig, ACK)];
        let mut t = run(&open);
        t.observe(proto::TCP, Dir::Reply, FIN | ACK);
        assert_eq!(t.tcp_state(), TcpState::HalfClosed);
        t.observe(proto::TCP, Dir::Reply, ACK);
        assert_eq!(
            t.tcp_state(),
            TcpState::HalfClosed,
            "a second fin from the same side is not a close"
        );
        t.observe(proto::TCP, Dir::Orig, FIN | ACK);
        assert_eq!(t.tcp_state(), TcpState::Closing);
    }

    #[test]
    fn an_rst_from_either_side_closes() {
        assert_eq!(
            run(&[(Dir::Orig, SYN), (Dir::Reply, RST | ACK)]).tcp_state(),
            TcpState::Closing
        );
        assert_eq!(
            run(&[(Dir::Orig, ACK), (Dir::Orig, RST)]).tcp_state(),
            TcpState::Closing
        );
    }

    #[test]
    fn a_new_syn_on_a_closed_tuple_starts_a_new_connection() {
        let mut t = run(&[(Dir::Orig, ACK), (Dir::Orig, FIN), (Dir::Reply, FIN)]);
        assert_eq!(t.tcp_state(), TcpState::Closing);
        t.observe(proto::TCP, Dir::Orig, SYN);
        assert_eq!(t.tcp_state(), TcpState::Opening);
        t.observe(proto::TCP, Dir::Reply, SYN | ACK);
        assert_eq!(t.tcp_state(), TcpState::Established);
    }

    #[test]
    fn a_syn_ack_on_a_closed_tuple_does_not_reopen_it() {
        let mut t = run(&[(Dir::Orig, ACK), (Dir::Reply, RST)]);
        t.observe(proto::TCP, Dir::Orig, SYN | ACK);
        assert_eq!(t.tcp_state(), TcpState::Closing);
    }

    #[test]
    fn timeouts_follow_the_state_and_protocol() {
        let to = Timeouts::default();
        let mut t = Track::default();
        assert_eq!(t.timeout(proto::TCP, &to), to.tcp_opening);
        assert_eq!(t.timeout(proto::UDP, &to), to.udp);
        t.observe(proto::UDP, Dir::Reply, 0);
        assert_eq!(t.timeout(proto::UDP, &to), to.udp_stream);
        assert_eq!(t.timeout(proto::ICMP, &to), to.icmp);
        assert_eq!(t.timeout(47, &to), to.other);
        let closed = run(&[(Dir::Orig, ACK), (Dir::Orig, RST)]);
        assert_eq!(closed.timeout(proto::TCP, &to), to.tcp_closing);
    }
}
