//! Kernel setup around the TUN: IP forwarding and the anchor's own nftables table.
//!
//! The table `inet upmt_<tun>` masquerades the virtual subnets out of the egress interface and
//! clamps TCP MSS to the route MTU, and, when a resolver is configured, redirects DNS (udp and tcp
//! port 53) arriving from the TUN to it, so name resolution does not depend on whichever resolver
//! the mobile host's current access network handed out. It is installed atomically with `nft -f -` and left in place at
//! exit; nothing outside that one table is ever touched.
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

use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};

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
        format!(
            "table inet {table}\n\
             delete table inet {table}\n\
             table inet {table} {{\n\
             {dns}\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             {masq}\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority mangle; policy accept;\n\
             \t\t# Nothing from outside may open a connection into the virtual subnet.\n\
             \t\toifname \"{tun}\" iifname != \"{tun}\" ct state != {{ established, related }} drop\n\
             \t\t# Inner packets cross a smaller MTU than the endpoints think: clamp MSS both ways.\n\
             \t\tiifname \"{tun}\" tcp flags syn tcp option maxseg size set rt mtu\n\
             \t\toifname \"{tun}\" tcp flags syn tcp option maxseg size set rt mtu\n\
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
pub fn enable_forwarding(v6: bool) -> Result<(), NatError> {
    let mut knobs = vec!["/proc/sys/net/ipv4/ip_forward"];
    if v6 {
        knobs.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for path in knobs {
        std::fs::write(path, b"1").map_err(|source| NatError::Forwarding { path, source })?;
    }
    Ok(())
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
}
