//! Kernel setup around the TUN: IP forwarding and the anchor's own nftables table.
//!
//! The table `inet upmt_<tun>` masquerades the virtual subnets out of the egress interface and
//! clamps TCP MSS to the route MTU, and, when a resolver is configured, redirects DNS (udp and tcp
//! port 53) arriving from the TUN to it, so name resolution does not depend on whichever resolver
//! the mobile host's current access network handed out. It is installed atomically with `nft -f -` and left in place at
//! exit; nothing outside that one table is ever touched.
//!
//! The same table keeps the mobile hosts apart from each other and from the anchor's host, each
//! drop behind a named counter (`nft list counter inet upmt_<tun> NAME`):
//! - `peer_to_peer_dropped`: a packet from the TUN routed back into the TUN (one mobile host to
//!   another), unless `allow_peer_to_peer`;
//! - `to_host_dropped`: a packet from the TUN for the anchor's own stack (its tunnel address,
//!   its public address, any local or broadcast address), except the redirected DNS, echo
//!   requests to the anchor's tunnel addresses (the hosts' "is the tunnel up" check), replies to
//!   connections the host opened, and the ports in `allow_to_host`;
//! - `private_egress_dropped`: a packet from the TUN forwarded anywhere but the TUN toward a
//!   private, loopback, link-local, shared (CGNAT), multicast or reserved range (the cloud
//!   metadata service at 169.254.169.254 or fd00:ec2::254, the provider's internal network),
//!   unless `allow_private_egress`. The redirected DNS is exempt; replies toward the virtual
//!   subnets are never matched (they leave through the TUN).
//!
//! Why it stays: removing the table unregisters the last NAT and conntrack hooks in the network
//! namespace. Until a restarted daemon installs it again, a mobile host's established
//! connections are then neither tracked nor translated: a server's next segment to the
//! masqueraded port reaches this host's own TCP stack, which answers with a reset, and the
//! connection is lost although its conntrack entry survives. Replacing the table at start
//! happens in one nft transaction, so the hooks never go away then.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Destinations a mobile host may not reach through the anchor unless `allow_private_egress`:
/// "this network", private, shared (CGNAT, where some clouds put their metadata service),
/// loopback, link-local, IETF protocol assignments, multicast and reserved.
pub const PRIVATE_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "224.0.0.0/3",
];

/// The IPv6 twin of [`PRIVATE_V4`]: loopback, IPv4-mapped, local-use NAT64, unique local
/// (where fd00:ec2::254 lives), site-local, link-local and multicast.
pub const PRIVATE_V6: &[&str] = &[
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fec0::/10",
    "fe80::/10",
    "ff00::/8",
];

/// The isolation rules as metrics label them, with their counters' names.
pub const ISOLATION_COUNTERS: [(&str, &str); 3] = [
    ("peer_to_peer", PEER_TO_PEER_COUNTER),
    ("to_host", TO_HOST_COUNTER),
    ("private_egress", PRIVATE_EGRESS_COUNTER),
];

/// Names of the counters on the isolation drops.
pub const PEER_TO_PEER_COUNTER: &str = "peer_to_peer_dropped";
/// See [`PEER_TO_PEER_COUNTER`].
pub const TO_HOST_COUNTER: &str = "to_host_dropped";
/// See [`PEER_TO_PEER_COUNTER`].
pub const PRIVATE_EGRESS_COUNTER: &str = "private_egress_dropped";

/// Why the kernel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("nft not found: install nftables")]
    NftMissing,
    #[error("cannot run nft")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the ruleset for table inet {table}: {stderr}")]
    Rejected { table: String, stderr: String },
    #[error("cannot enable forwarding in {path}")]
    Forwarding {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What the ruleset is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatSpec {
    pub tun: String,
    pub egress: String,
    pub subnet: Ipv4Net,
    pub subnet6: Option<Ipv6Net>,
    /// Resolver for tunnelled DNS (only queries of its address family are redirected).
    pub dns: Option<IpAddr>,
    /// The anchor's own tunnel addresses (echo requests to them are allowed).
    pub anchor4: Ipv4Addr,
    pub anchor6: Option<Ipv6Addr>,
    /// Isolation opt-outs (see the module docs).
    pub allow_peer_to_peer: bool,
    /// Ports (tcp and udp) of the anchor's host that mobile hosts may reach.
    pub allow_to_host: Vec<u16>,
    pub allow_private_egress: bool,
}

impl NatSpec {
    /// The name of the anchor's nftables table (family inet).
    pub fn table(&self) -> String {
        // nft identifiers take letters, digits, '_', '-', '.', '/' after a leading letter, and
        // config validation restricts interface names to a subset of that.
        format!("upmt_{}", self.tun)
    }

    /// The ruleset for `nft -f -`. It first creates and deletes the table so the load replaces
    /// a stale table from a crashed run in the same atomic transaction.
    pub fn ruleset(&self) -> String {
        let table = self.table();
        let NatSpec {
            tun,
            egress,
            subnet,
            ..
        } = self;
        let mut masq = format!("\t\toifname \"{egress}\" ip saddr {subnet} masquerade\n");
        if let Some(net6) = self.subnet6 {
            masq.push_str(&format!(
                "\t\toifname \"{egress}\" ip6 saddr {net6} masquerade\n"
            ));
        }
        let dns = match self.dns {
            None => String::new(),
            Some(ip) => {
                let (family, addr) = match ip {
                    IpAddr::V4(a) => ("ipv4", format!("ip to {a}")),
                    IpAddr::V6(a) => ("ipv6", format!("ip6 to [{a}]")),
                };
                format!(
                    "\tchain prerouting {{\n\
                     \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
                     \t\t# Tunnelled DNS goes to the configured resolver, whatever the host asked.\n\
                     \t\tiifname \"{tun}\" meta nfproto {family} meta l4proto {{ tcp, udp }} th dport 53 dnat {addr}\n\
                     \t}}\n"
                )
            }
        };
        // The redirected DNS, after the DNAT above: exempt from the host and egress drops.
        let dns_accept = match self.dns {
            None => String::new(),
            Some(IpAddr::V4(a)) => format!(
                "\t\tiifname \"{tun}\" ip daddr {a} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
            ),
            Some(IpAddr::V6(a)) => format!(
                "\t\tiifname \"{tun}\" ip6 daddr {a} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
            ),
        };
        let mut input = String::new();
        input.push_str(&format!(
            "\t\tiifname \"{tun}\" ct state {{ established, related }} accept\n\
             \t\tiifname \"{tun}\" ip daddr {} icmp type echo-request accept\n",
            self.anchor4
        ));
        if let Some(a6) = self.anchor6 {
            input.push_str(&format!(
                "\t\tiifname \"{tun}\" ip6 daddr {a6} icmpv6 type echo-request accept\n"
            ));
        }
        input.push_str(&dns_accept);
        if !self.allow_to_host.is_empty() {
            let ports: Vec<String> = self.allow_to_host.iter().map(u16::to_string).collect();
            input.push_str(&format!(
                "\t\tiifname \"{tun}\" meta l4proto {{ tcp, udp }} th dport {{ {} }} accept\n",
                ports.join(", ")
            ));
        }
        input.push_str(&format!(
            "\t\t# Everything else from the mobile hosts to this host's own addresses.\n\
             \t\tiifname \"{tun}\" counter name {TO_HOST_COUNTER} drop\n"
        ));
        let mut isolation = String::new();
        if !self.allow_peer_to_peer {
            isolation.push_str(&format!(
                "\t\t# One mobile host to another: hairpinned back into the tunnel.\n\
                 \t\tiifname \"{tun}\" oifname \"{tun}\" counter name {PEER_TO_PEER_COUNTER} drop\n"
            ));
        }
        if !self.allow_private_egress {
            isolation.push_str(&dns_accept);
            isolation.push_str(&format!(
                "\t\t# Private, link-local and metadata ranges on the anchor's side.\n\
                 \t\tiifname \"{tun}\" oifname != \"{tun}\" ip daddr {{ {} }} counter name {PRIVATE_EGRESS_COUNTER} drop\n\
                 \t\tiifname \"{tun}\" oifname != \"{tun}\" ip6 daddr {{ {} }} counter name {PRIVATE_EGRESS_COUNTER} drop\n",
                PRIVATE_V4.join(", "),
                PRIVATE_V6.join(", "),
            ));
        }
        format!(
            "table inet {table}\n\
             delete table inet {table}\n\
             table inet {table} {{\n\
             \tcounter {PEER_TO_PEER_COUNTER} {{ }}\n\
             \tcounter {TO_HOST_COUNTER} {{ }}\n\
             \tcounter {PRIVATE_EGRESS_COUNTER} {{ }}\n\
             {dns}\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             {masq}\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             {input}\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority mangle; policy accept;\n\
             \t\t# Nothing from outside may open a connection into the virtual subnet.\n\
             \t\toifname \"{tun}\" iifname != \"{tun}\" ct state != {{ established, related }} drop\n\
             \t\t# Inner packets cross a smaller MTU than the endpoints think: clamp MSS both ways.\n\
             \t\tiifname \"{tun}\" tcp flags syn tcp option maxseg size set rt mtu\n\
             \t\toifname \"{tun}\" tcp flags syn tcp option maxseg size set rt mtu\n\
             {isolation}\
             \t}}\n\
             }}\n"
        )
    }
}

/// Finds `nft` on PATH (and in the sbin directories, which a non-login root shell may lack).
pub fn find_nft() -> Result<PathBuf, NatError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
        .ok_or(NatError::NftMissing)
}

/// The installed table; dropping it removes the table, unless [`NatGuard::keep`] was called
/// (what a clean exit does, so a restart keeps the NAT state working).
pub struct NatGuard {
    nft: PathBuf,
    table: String,
}

impl NatGuard {
    /// Whether a table of that name exists (from a previous run that did not clean up).
    pub fn exists(nft: &std::path::Path, table: &str) -> Result<bool, NatError> {
        let out = Command::new(nft)
            .args(["list", "table", "inet", table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(NatError::Spawn)?;
        Ok(out.success())
    }

    /// Installs the table described by `spec`, replacing a stale one.
    pub fn install(nft: PathBuf, spec: &NatSpec) -> Result<NatGuard, NatError> {
        let table = spec.table();
        run_nft(&nft, &table, &spec.ruleset())?;
        Ok(NatGuard { nft, table })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Leaves the table installed after this guard is gone (see the module docs for why).
    pub fn keep(mut self) -> String {
        std::mem::take(&mut self.table)
    }

    /// Removes the table `table` a stopped daemon left (`upmt-an down`).
    pub fn delete(nft: &std::path::Path, table: &str) -> Result<(), NatError> {
        run_nft(nft, table, &format!("delete table inet {table}\n"))
    }

    /// Removes the table now, reporting failure (drop does the same but can only log).
    pub fn remove(mut self) -> Result<(), NatError> {
        let table = std::mem::take(&mut self.table);
        run_nft(&self.nft, &table, &format!("delete table inet {table}\n"))
    }
}

impl Drop for NatGuard {
    fn drop(&mut self) {
        if self.table.is_empty() {
            return;
        }
        let table = std::mem::take(&mut self.table);
        if let Err(e) = run_nft(&self.nft, &table, &format!("delete table inet {table}\n")) {
            tracing::warn!(error = %e, "cannot remove nftables table inet {table}");
        }
    }
}

fn run_nft(nft: &std::path::Path, table: &str, script: &str) -> Result<(), NatError> {
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NatError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NatError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NatError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NatError::Rejected {
            table: table.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " | "),
        })
    }
}

/// Turns on IPv4 forwarding, and IPv6 forwarding when `v6`. Left on at exit: other services on
/// the host may rely on it, and turning it off is not this daemon's call.
///
/// IPv6 forwarding on `all` makes every interface a router, and a router ignores router
/// advertisements (`accept_ra = 1`): a VPS that learns its default route by SLAAC would lose it
/// when the route expires. So before turning it on, an `egress` that accepts advertisements
/// (`accept_ra = 1`) is set to `accept_ra = 2` (accept them even when forwarding); one where the
/// operator turned them off (0) is left alone.
pub fn enable_forwarding(v6: bool, egress: &str) -> Result<(), NatError> {
    std::fs::write(IPV4_FORWARD, b"1").map_err(|source| NatError::Forwarding {
        path: IPV4_FORWARD,
        source,
    })?;
    if !v6 {
        return Ok(());
    }
    let accept_ra = format!("/proc/sys/net/ipv6/conf/{egress}/accept_ra");
    match std::fs::read_to_string(&accept_ra).map(|v| v.trim().to_owned()) {
        Ok(v) if v == "1" => match std::fs::write(&accept_ra, b"2") {
            Ok(()) => tracing::info!(
                %egress,
                "set accept_ra = 2 on the egress so it keeps accepting router advertisements \
                 (and a SLAAC default route) once IPv6 forwarding is on"
            ),
            Err(e) => tracing::warn!(
                %egress,
                error = %e,
                "cannot set accept_ra = 2 on the egress: with IPv6 forwarding on, a default \
                 route learnt from router advertisements will expire"
            ),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(%egress, error = %e, "cannot read accept_ra of the egress"),
    }
    std::fs::write(IPV6_FORWARD, b"1").map_err(|source| NatError::Forwarding {
        path: IPV6_FORWARD,
        source,
    })
}

const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Packets and bytes of one named nftables counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Reads the table's named counters over nfnetlink (NFT_MSG_GETOBJ), for the metrics endpoint.
/// The socket is opened at setup; the requests need CAP_NET_ADMIN, which the daemon keeps after
/// dropping to its unprivileged account (running `nft` would not work then: a child of a
/// non-root process starts without capabilities).
pub struct CounterReader {
    fd: std::os::fd::OwnedFd,
    table: String,
    seq: std::cell::Cell<u32>,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFT_MSG_GETOBJ: u16 = 19;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;

impl CounterReader {
    /// A netlink socket for the counters of `inet table`.
    pub fn open(table: &str) -> std::io::Result<CounterReader> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: socket(2) with constant arguments; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a valid fd and a pointer to a live timeval of its exact size. A counter read
        // never blocks the event loop for long, even if the kernel did not answer.
        unsafe {
            use std::os::fd::AsRawFd as _;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(CounterReader {
            fd,
            table: table.to_owned(),
            seq: std::cell::Cell::new(0),
        })
    }

    /// The current value of counter `name`.
    pub fn read(&self, name: &str) -> std::io::Result<CounterValue> {
        use std::os::fd::AsRawFd as _;
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        let request = getobj_request(&self.table, name, seq);
        // SAFETY: a valid fd and a live buffer of the given length.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: a valid fd and a live buffer of the given length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            match parse_getobj_reply(&buf[..n as usize], seq)? {
                Some(value) => return Ok(value),
                None => continue, // an answer to an earlier, timed-out request
            }
        }
    }
}

fn push_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn getobj_request(table: &str, name: &str, seq: u32) -> Vec<u8> {
    let mut msg = vec![0u8; 16];
    // nfgenmsg: family inet, version 0, resource id 0.
    msg.extend_from_slice(&[libc::NFPROTO_INET as u8, 0, 0, 0]);
    let cstr = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    };
    push_attr(&mut msg, NFTA_OBJ_TABLE, &cstr(table));
    push_attr(&mut msg, NFTA_OBJ_NAME, &cstr(name));
    push_attr(&mut msg, NFTA_OBJ_TYPE, &NFT_OBJECT_COUNTER.to_be_bytes());
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETOBJ).to_ne_bytes());
    msg[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    msg
}

/// The counter in a reply to request `seq`; `None` for a message of another request.
fn parse_getobj_reply(buf: &[u8], seq: u32) -> std::io::Result<Option<CounterValue>> {
    let bad = |what: &str| std::io::Error::other(format!("nfnetlink reply: {what}"));
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
    };
    let len = u32_at(buf, 0).ok_or_else(|| bad("truncated header"))? as usize;
    let kind = u16_at(buf, 4).ok_or_else(|| bad("truncated header"))?;
    let msg = buf.get(..len).ok_or_else(|| bad("truncated message"))?;
    if u32_at(msg, 8) != Some(seq) {
        return Ok(None);
    }
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = u32_at(msg, 16).ok_or_else(|| bad("truncated error"))? as i32;
        return Err(std::io::Error::from_raw_os_error(-errno));
    }
    if kind != (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWOBJ) {
        return Err(bad("unexpected message type"));
    }
    let data = attrs(&msg[20..])
        .find(|(t, _)| *t == NFTA_OBJ_DATA)
        .ok_or_else(|| bad("no object data"))?
        .1;
    let mut value = CounterValue::default();
    for (t, payload) in attrs(data) {
        let be64 = || {
            payload
                .get(..8)
                .map(|x| u64::from_be_bytes(x.try_into().unwrap_or([0; 8])))
        };
        match t {
            NFTA_COUNTER_PACKETS => value.packets = be64().ok_or_else(|| bad("short packets"))?,
            NFTA_COUNTER_BYTES => value.bytes = be64().ok_or_else(|| bad("short bytes"))?,
            _ => {}
        }
    }
    Ok(Some(value))
}

/// The (type, payload) netlink attributes in `b`.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes([*b.first()?, *b.get(1)?]));
        let kind = u16::from_ne_bytes([*b.get(2)?, *b.get(3)?]) & NLA_TYPE_MASK;
        let payload = b.get(4..len)?;
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v6: bool) -> NatSpec {
        NatSpec {
            tun: "upmt0".into(),
            egress: "eth0".into(),
            subnet: "10.77.0.0/24".parse().unwrap(),
            subnet6: v6.then(|| "fd77::/64".parse().unwrap()),
            dns: None,
            anchor4: "10.77.0.1".parse().unwrap(),
            anchor6: v6.then(|| "fd77::1".parse().unwrap()),
            allow_peer_to_peer: false,
            allow_to_host: Vec::new(),
            allow_private_egress: false,
        }
    }

    #[test]
    fn dns_redirect_rules_appear_only_with_a_resolver_and_match_its_family() {
        assert!(!spec(false).ruleset().contains("dport 53"));
        let mut s = spec(true);
        s.dns = Some("192.0.2.53".parse().unwrap());
        let r = s.ruleset();
        assert!(r.contains("type nat hook prerouting priority dstnat"));
        assert!(r.contains(
            "iifname \"upmt0\" meta nfproto ipv4 meta l4proto { tcp, udp } th dport 53 dnat ip to 192.0.2.53"
        ));
        s.dns = Some("2001:db8::53".parse().unwrap());
        assert!(s.ruleset().contains(
            "meta nfproto ipv6 meta l4proto { tcp, udp } th dport 53 dnat ip6 to [2001:db8::53]"
        ));
    }

    #[test]
    fn the_table_is_named_after_the_tun() {
        assert_eq!(spec(false).table(), "upmt_upmt0");
    }

    #[test]
    fn the_ruleset_replaces_a_stale_table_atomically() {
        let r = spec(false).ruleset();
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[0], "table inet upmt_upmt0");
        assert_eq!(lines[1], "delete table inet upmt_upmt0");
        assert_eq!(lines[2], "table inet upmt_upmt0 {");
    }

    #[test]
    fn the_ruleset_masquerades_the_subnet_out_of_egress_only() {
        let r = spec(false).ruleset();
        assert!(r.contains("type nat hook postrouting priority srcnat; policy accept;"));
        assert!(r.contains("oifname \"eth0\" ip saddr 10.77.0.0/24 masquerade"));
        assert!(!r.contains("ip6 saddr"), "no v6 rule without subnet6:\n{r}");
    }

    #[test]
    fn the_ruleset_masquerades_subnet6_when_configured() {
        let r = spec(true).ruleset();
        assert!(r.contains("oifname \"eth0\" ip6 saddr fd77::/64 masquerade"));
    }

    #[test]
    fn the_ruleset_clamps_mss_to_the_route_mtu_both_ways() {
        let r = spec(false).ruleset();
        assert!(r.contains("iifname \"upmt0\" tcp flags syn tcp option maxseg size set rt mtu"));
        assert!(r.contains("oifname \"upmt0\" tcp flags syn tcp option maxseg size set rt mtu"));
    }

    #[test]
    fn the_ruleset_refuses_new_connections_into_the_virtual_subnet() {
        let r = spec(false).ruleset();
        assert!(r.contains(
            "oifname \"upmt0\" iifname != \"upmt0\" ct state != { established, related } drop"
        ));
    }

    #[test]
    fn the_ruleset_braces_balance() {
        let r = spec(true).ruleset();
        assert_eq!(r.matches('{').count(), r.matches('}').count());
    }

    #[test]
    fn by_default_peers_are_isolated_from_each_other_the_host_and_private_ranges() {
        let r = spec(true).ruleset();
        assert!(r.contains("type filter hook input priority filter; policy accept;"));
        assert!(r.contains(
            "iifname \"upmt0\" oifname \"upmt0\" counter name peer_to_peer_dropped drop"
        ));
        assert!(r.contains("iifname \"upmt0\" counter name to_host_dropped drop"));
        assert!(r.contains(
            "iifname \"upmt0\" oifname != \"upmt0\" ip daddr { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10"
        ));
        assert!(r.contains("169.254.0.0/16"), "{r}");
        assert!(r.contains("fc00::/7, fec0::/10, fe80::/10"), "{r}");
        for counter in [
            PEER_TO_PEER_COUNTER,
            TO_HOST_COUNTER,
            PRIVATE_EGRESS_COUNTER,
        ] {
            assert!(r.contains(&format!("\tcounter {counter} {{ }}\n")), "{r}");
        }
        // Only pings to the anchor's tunnel addresses get through to the host.
        assert!(r.contains("iifname \"upmt0\" ip daddr 10.77.0.1 icmp type echo-request accept"));
        assert!(r.contains("iifname \"upmt0\" ip6 daddr fd77::1 icmpv6 type echo-request accept"));
        assert!(
            !r.contains("th dport {"),
            "no host port open by default:\n{r}"
        );
    }

    #[test]
    fn each_isolation_is_lifted_by_its_own_option() {
        let mut s = spec(true);
        s.allow_peer_to_peer = true;
        let r = s.ruleset();
        assert!(!r.contains("name peer_to_peer_dropped drop"));
        assert!(r.contains("name to_host_dropped drop"));
        assert!(r.contains("name private_egress_dropped drop"));

        let mut s = spec(true);
        s.allow_private_egress = true;
        let r = s.ruleset();
        assert!(r.contains("name peer_to_peer_dropped drop"));
        assert!(!r.contains("name private_egress_dropped drop"));

        let mut s = spec(true);
        s.allow_to_host = vec![22, 8080];
        let r = s.ruleset();
        let open = "iifname \"upmt0\" meta l4proto { tcp, udp } th dport { 22, 8080 } accept";
        let pos = |needle: &str| r.find(needle).unwrap_or_else(|| panic!("{needle}:\n{r}"));
        assert!(pos(open) < pos("name to_host_dropped drop"), "{r}");
    }

    #[test]
    fn the_redirected_dns_passes_the_host_and_egress_drops() {
        let mut s = spec(false);
        s.dns = Some("10.0.0.2".parse().unwrap());
        let r = s.ruleset();
        let accept =
            "iifname \"upmt0\" ip daddr 10.0.0.2 meta l4proto { tcp, udp } th dport 53 accept";
        assert_eq!(r.matches(accept).count(), 2, "{r}");
        let pos = |needle: &str| r.find(needle).unwrap_or_else(|| panic!("{needle}:\n{r}"));
        assert!(pos(accept) < pos("name to_host_dropped drop"));
        assert!(r.rfind(accept).unwrap() < pos("name private_egress_dropped drop"));
    }

    #[test]
    fn replies_toward_the_virtual_subnets_are_never_matched_by_the_egress_drop() {
        let r = spec(true).ruleset();
        for line in r
            .lines()
            .filter(|l| l.contains("private_egress_dropped drop"))
        {
            assert!(line.contains("oifname != \"upmt0\""), "{line}");
            assert!(line.contains("iifname \"upmt0\""), "{line}");
        }
    }

    #[test]
    fn a_counter_request_names_the_table_and_the_counter_and_a_reply_is_decoded() {
        let req = getobj_request("upmt_upmt0", "to_host_dropped", 7);
        assert_eq!(
            u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize,
            req.len()
        );
        let found: Vec<(u16, Vec<u8>)> = attrs(&req[20..]).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(found[0], (NFTA_OBJ_TABLE, b"upmt_upmt0\0".to_vec()));
        assert_eq!(found[1], (NFTA_OBJ_NAME, b"to_host_dropped\0".to_vec()));
        assert_eq!(found[2], (NFTA_OBJ_TYPE, 1u32.to_be_bytes().to_vec()));

        let mut inner = Vec::new();
        push_attr(&mut inner, NFTA_COUNTER_BYTES, &300u64.to_be_bytes());
        push_attr(&mut inner, NFTA_COUNTER_PACKETS, &5u64.to_be_bytes());
        let mut reply = vec![0u8; 16];
        reply.extend_from_slice(&[1, 0, 0, 0]);
        push_attr(&mut reply, NFTA_OBJ_DATA | 0x8000, &inner);
        let len = reply.len() as u32;
        reply[0..4].copy_from_slice(&len.to_ne_bytes());
        reply[4..6].copy_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWOBJ).to_ne_bytes());
        reply[8..12].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(
            parse_getobj_reply(&reply, 7).unwrap(),
            Some(CounterValue {
                packets: 5,
                bytes: 300
            })
        );
        assert_eq!(parse_getobj_reply(&reply, 8).unwrap(), None);
    }
}
