//! Measuring and disturbing the lab: interface counters, nftables counters, conntrack, link
//! up/down, blackholes and random loss (nftables drop rules, each in its own table), rate limits
//! (tc tbf), polling and hashing.
//!
//! Every change is made inside one namespace of the lab and disappears with it.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{LabError, Result};
use crate::lab::Host;

/// Byte and packet counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

impl LinkCounters {
    /// What was counted between `earlier` and `self` (saturating, in case of a reset).
    pub fn since(&self, earlier: &LinkCounters) -> LinkCounters {
        LinkCounters {
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
        }
    }
}

/// Packets and bytes of an nftables named counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NftCounter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
}

/// Prefix of the nftables tables the lab adds to disturb traffic; one table per name.
const DISTURB_TABLE_PREFIX: &str = "upmt-lab-";

/// Lost datagrams of a finished `iperf3 -u -R -J` client, from its JSON output (iperf3 may
/// print other lines around it); `None` when there is no such report.
pub fn iperf3_udp_lost(log: &str) -> Option<u64> {
    let json: serde_json::Value =
        serde_json::from_str(&log[log.find('{')?..=log.rfind('}')?]).ok()?;
    json["end"]["sum"]["lost_packets"].as_u64()
}

impl<'a> Host<'a> {
    /// Starts an `iperf3 -u -R -J` client here: the CH's iperf3 server (which the caller
    /// started) sends `pps` datagrams of `len` bytes per second for `secs` seconds; read what
    /// was lost with [`iperf3_udp_lost`] on its log.
    pub fn paced_udp_from_ch(
        &self,
        pps: u64,
        len: u64,
        secs: u64,
        label: &str,
    ) -> Result<crate::ProcHandle> {
        let rate = (pps * len * 8).to_string();
        let (secs, len) = (secs.to_string(), len.to_string());
        let ch = crate::topology::CH_V4.to_string();
        self.command(&[
            "iperf3", "-c", &ch, "-u", "-R", "-b", &rate, "-l", &len, "-t", &secs, "-J",
        ])
        .label(label)
        .spawn()
    }
}

impl Host<'_> {
    /// The counters of interface `ifname` in this namespace.
    pub fn link_counters(&self, ifname: &str) -> Result<LinkCounters> {
        let args = ["-s", "-j", "link", "show", "dev", ifname];
        let out = self.ip(&args)?;
        let cmd = format!("ip -n {} {}", self.ns(), args.join(" "));
        parse_link_counters(&out.stdout).map_err(|detail| LabError::Parse { cmd, detail })
    }

    /// Brings interface `ifname` up or down (a link cut the daemon sees through netlink).
    /// Down also deletes the default routes through it (the kernel does); up puts the lab's
    /// default routes through it back, as a DHCP client would on reconnecting.
    pub fn set_link(&self, ifname: &str, up: bool) -> Result<()> {
        self.ip(&["link", "set", "dev", ifname, if up { "up" } else { "down" }])?;
        if up {
            self.restore_default_routes(Some(ifname))?;
        }
        Ok(())
    }

    /// Silently drops every packet in and out of `ifname` (link stays up: only probes notice).
    /// Undo with [`Host::remove_disturbance`] and the same `ifname`.
    pub fn blackhole(&self, ifname: &str) -> Result<()> {
        self.add_drop_table(
            ifname,
            &format!("iifname \"{ifname}\" drop"),
            &format!("oifname \"{ifname}\" drop"),
        )
    }

    /// Drops `percent` % of the packets in and out of `ifname`, at random (nftables `numgen`).
    /// Undo with [`Host::remove_disturbance`] and the same `ifname`.
    pub fn random_loss(&self, ifname: &str, percent: u32) -> Result<()> {
        if percent > 100 {
            return Err(LabError::Invalid(format!("loss of {percent} % (max 100)")));
        }
        // numgen's range is 0..=99, so the ends are written without it.
        let matcher = match percent {
            0 => "accept".to_owned(),
            100 => "drop".to_owned(),
            p => format!("numgen random mod 100 < {p} drop"),
        };
        self.add_drop_table(
            ifname,
            &format!("iifname \"{ifname}\" {matcher}"),
            &format!("oifname \"{ifname}\" {matcher}"),
        )
    }

    /// Adds a table `upmt-lab-<name>` with drop rules: `ingress_rule` at prerouting (before
    /// conntrack and routing) and `egress_rule` at postrouting (after everything, also for
    /// locally generated packets). Replaces an earlier table of the same name.
    pub fn add_drop_table(&self, name: &str, ingress_rule: &str, egress_rule: &str) -> Result<()> {
        let table = format!("{DISTURB_TABLE_PREFIX}{name}");
        let ruleset = format!(
            "table inet {table} {{}}\ndelete table inet {table}\n\
             table inet {table} {{\n\
               chain pre {{ type filter hook prerouting priority -400; policy accept; {ingress_rule}; }}\n\
               chain post {{ type filter hook postrouting priority 400; policy accept; {egress_rule}; }}\n\
             }}\n"
        );
        self.run_input(&["nft", "-f", "-"], ruleset.as_bytes())?;
        Ok(())
    }

    /// Removes the table added by [`Host::blackhole`], [`Host::random_loss`] or
    /// [`Host::add_drop_table`] under `name`; no error if there is none.
    pub fn remove_disturbance(&self, name: &str) -> Result<()> {
        let table = format!("{DISTURB_TABLE_PREFIX}{name}");
        let ruleset = format!("table inet {table} {{}}\ndelete table inet {table}\n");
        self.run_input(&["nft", "-f", "-"], ruleset.as_bytes())?;
        Ok(())
    }

    /// Limits what `ifname` sends to `rate_bits_per_sec` with a token bucket (tc tbf). Apply it
    /// on both ends of a link to limit both directions.
    pub fn tbf(&self, ifname: &str, rate_bits_per_sec: u64) -> Result<()> {
        // The bucket must hold at least one timer tick of traffic, or tbf cannot reach its rate.
        let burst_bytes = (rate_bits_per_sec / 8 / 100).max(16 * 1024);
        let rate = format!("{rate_bits_per_sec}bit");
        let burst = format!("{burst_bytes}b");
        self.run(&[
            "tc", "qdisc", "replace", "dev", ifname, "root", "tbf", "rate", &rate, "burst", &burst,
            "latency", "100ms",
        ])?;
        Ok(())
    }

    /// Removes a root qdisc set by [`Host::tbf`]; no error if there is none.
    pub fn clear_qdisc(&self, ifname: &str) -> Result<()> {
        let out = self
            .command(&["tc", "qdisc", "del", "dev", ifname, "root"])
            .run();
        match out {
            Ok(_) => Ok(()),
            // Deleting the default qdisc fails with ENOENT: nothing to remove.
            Err(LabError::Command { stderr, .. })
                if stderr.contains("No such file")
                    || stderr.contains("Cannot delete qdisc with handle of zero") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Flushes this namespace's conntrack table (so NAT mappings are rebuilt: a NAT rebinding).
    pub fn conntrack_flush(&self) -> Result<()> {
        let out = self.command(&["conntrack", "-F"]).run_unchecked()?;
        // conntrack exits 1 with "0 flow entries" on an empty table on some versions.
        if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("0 flow entries") {
            Ok(())
        } else {
            Err(LabError::Command {
                cmd: format!("ip netns exec {} conntrack -F", self.ns()),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Reads the named nftables counter `name` of table `family table` (e.g. `inet`, `upmt`).
    pub fn nft_counter(&self, family: &str, table: &str, name: &str) -> Result<NftCounter> {
        let args = ["nft", "-j", "list", "counter", family, table, name];
        let out = self.run(&args)?;
        parse_nft_counter(&out.stdout).map_err(|detail| LabError::Parse {
            cmd: args.join(" "),
            detail,
        })
    }
}

fn parse_link_counters(json: &[u8]) -> std::result::Result<LinkCounters, String> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let stats = v
        .get(0)
        .and_then(|l| l.get("stats64"))
        .ok_or("no stats64 in the output")?;
    let field = |dir: &str, name: &str| {
        stats
            .get(dir)
            .and_then(|d| d.get(name))
            .and_then(serde_json::Value::as_u64)
            .ok_or(format!("no stats64.{dir}.{name}"))
    };
    Ok(LinkCounters {
        rx_bytes: field("rx", "bytes")?,
        rx_packets: field("rx", "packets")?,
        tx_bytes: field("tx", "bytes")?,
        tx_packets: field("tx", "packets")?,
    })
}

fn parse_nft_counter(json: &[u8]) -> std::result::Result<NftCounter, String> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let counter = v
        .get("nftables")
        .and_then(serde_json::Value::as_array)
        .and_then(|items| items.iter().find_map(|i| i.get("counter")))
        .ok_or("no counter object in the output")?;
    let field = |name: &str| {
        counter
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .ok_or(format!("no counter.{name}"))
    };
    Ok(NftCounter {
        packets: field("packets")?,
        bytes: field("bytes")?,
    })
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; `what` names the condition
/// in the error.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::WaitTimeout {
                what: what.to_owned(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io_err = |source| LabError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The sha256 of `data`, lowercase hex.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_counters_are_read_from_ip_json() {
        let json = br#"[{"ifname":"wifi","stats64":{"rx":{"bytes":10,"packets":2,"errors":0},"tx":{"bytes":30,"packets":4}}}]"#;
        let c = parse_link_counters(json).expect("parses");
        assert_eq!(
            c,
            LinkCounters {
                rx_bytes: 10,
                rx_packets: 2,
                tx_bytes: 30,
                tx_packets: 4
            }
        );
    }

    #[test]
    fn link_counters_without_stats_are_an_error() {
        assert!(parse_link_counters(br#"[{"ifname":"wifi"}]"#).is_err());
        assert!(parse_link_counters(b"not json").is_err());
    }

    #[test]
    fn counter_deltas_saturate() {
        let a = LinkCounters {
            rx_bytes: 5,
            ..Default::default()
        };
        let b = LinkCounters {
            rx_bytes: 12,
            tx_bytes: 3,
            ..Default::default()
        };
        assert_eq!(b.since(&a).rx_bytes, 7);
        assert_eq!(a.since(&b).rx_bytes, 0);
    }

    #[test]
    fn nft_counters_are_read_from_nft_json() {
        let json = br#"{"nftables":[{"metainfo":{"version":"1.0.6"}},{"counter":{"family":"inet","name":"rx","table":"upmt","handle":3,"packets":7,"bytes":900}}]}"#;
        assert_eq!(
            parse_nft_counter(json).expect("parses"),
            NftCounter {
                packets: 7,
                bytes: 900
            }
        );
    }

    #[test]
    fn wait_for_gives_up_after_its_timeout() {
        let err = wait_for("never", Duration::from_millis(50), || false).expect_err("times out");
        assert!(err.to_string().contains("never"));
        let mut n = 0;
        wait_for("third poll", Duration::from_secs(5), || {
            n += 1;
            n >= 3
        })
        .expect("becomes true");
    }

    #[test]
    fn sha256_of_empty_input_is_the_known_value() {
        assert_eq!(
            sha256_bytes(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
