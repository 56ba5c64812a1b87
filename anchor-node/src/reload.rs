//! `upmt-an reload` and SIGHUP: a new config's peers take effect without a restart.
//!
//! The peers are applied through the core's `Anchor::set_peers` (unchanged peers keep their
//! sessions; removed ones are cut off at once). Every other setting is compared as text with
//! the one the daemon started with; one that differs (listen, tun, prefixes, NAT and isolation
//! settings, the key...) is reported as needing a restart and not applied, since it is built
//! into the socket, the TUN or the nftables table.
//!
//! Two ways in, one [`Reloader::apply`]: `upmt-an reload` reads and validates the file as the
//! operator (root) and sends the result over the control socket, which works whoever the daemon
//! runs as; SIGHUP makes the daemon read the file itself, which after the privilege drop works
//! only when its account can read the file (a `private_key_file` is never re-read).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use upmt_proto::anchor::{Anchor, PeerConfig};
use upmt_proto::keys::PublicKey;

use crate::config::{self, Config, ConfigError};
use crate::control::{PeerEntry, ReloadConfig, ReloadReport};

/// What the reload module sends for `config`: its peers and its other settings as text.
pub fn reload_config(config: &Config) -> ReloadConfig {
    ReloadConfig {
        peers: config
            .peers
            .iter()
            .map(|p| PeerEntry {
                name: p.name.clone(),
                public_key: p.public_key.to_string(),
                address: p.address,
                address6: p.address6,
            })
            .collect(),
        settings: restart_settings(config),
    }
}

/// Every setting but the peers, as text: what a reload cannot change.
pub fn restart_settings(c: &Config) -> BTreeMap<String, String> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
    let key = match &c.private_key_file {
        Some(file) => format!("file {file}"),
        None => format!("inline, public key {}", c.private_key.public_key()),
    };
    [
        ("listen", c.listen.to_string()),
        ("private_key", key),
        ("tun", c.tun.clone()),
        ("subnet", c.subnet.to_string()),
        ("subnet6", opt(c.subnet6.map(|n| n.to_string()))),
        ("egress", c.egress.clone()),
        ("mtu", c.mtu.to_string()),
        ("metrics", opt(c.metrics.map(|m| m.to_string()))),
        ("dns", opt(c.dns.map(|d| d.to_string()))),
        (
            "path_stale_after_ms",
            c.path_stale_after.as_millis().to_string(),
        ),
        ("allow_peer_to_peer", c.allow_peer_to_peer.to_string()),
        ("allow_to_host", format!("{:?}", c.allow_to_host)),
        ("allow_private_egress", c.allow_private_egress.to_string()),
        ("user", c.user.clone()),
        ("control_socket", c.control_socket.display().to_string()),
        ("control_group", opt(c.control_group.clone())),
        (
            "offload",
            (c.offload == upmt_sys::tunbatch::OffloadSetting::On).to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The daemon's side of a reload: the settings it started with, and its config file.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    settings: BTreeMap<String, String>,
    subnet: Ipv4Net,
    subnet6: Option<Ipv6Net>,
}

impl Reloader {
    /// For a daemon started with `config`.
    pub fn new(config: &Config) -> Reloader {
        Reloader {
            path: config.path.clone(),
            settings: restart_settings(config),
            subnet: config.subnet,
            subnet6: config.subnet6,
        }
    }

    /// The config file the daemon runs with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the daemon's config file again (SIGHUP).
    pub fn read(&self) -> Result<ReloadConfig, ConfigError> {
        config::load_without_key_file(&self.path).map(|c| reload_config(&c))
    }

    /// Applies `new`'s peers to `anchor` and lists the settings that need a restart. A peer
    /// list the config validation would refuse (a bad key, a duplicate, an address outside the
    /// subnet) changes nothing.
    pub fn apply(&self, anchor: &mut Anchor, new: &ReloadConfig) -> Result<ReloadReport, String> {
        let peers = self.peers(&new.peers)?;
        let needs_restart = self
            .settings
            .iter()
            .filter(|(k, v)| new.settings.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        let changes = anchor.set_peers(peers);
        Ok(ReloadReport {
            added: changes.added,
            removed: changes.removed,
            unchanged: changes.unchanged,
            needs_restart,
        })
    }

    fn peers(&self, entries: &[PeerEntry]) -> Result<Vec<PeerConfig>, String> {
        let mut keys = HashSet::new();
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let anchor4 = self.subnet.hosts().next();
        let mut peers = Vec::with_capacity(entries.len());
        for p in entries {
            let public: PublicKey = p
                .public_key
                .parse()
                .map_err(|_| format!("peer {:?}: public_key is not a base64 key", p.name))?;
            let v4_ok = self.subnet.contains(&p.address)
                && Some(p.address) != anchor4
                && p.address != self.subnet.network()
                && p.address != self.subnet.broadcast();
            let v6_ok = p
                .address6
                .is_none_or(|a| self.subnet6.is_some_and(|n| n.contains(&a)));
            if !v4_ok || !v6_ok {
                return Err(format!(
                    "peer {:?}: address outside the running subnet (a new subnet needs a restart)",
                    p.name
                ));
            }
            let fresh_addrs = addrs.insert(IpAddr::V4(p.address))
                && p.address6.is_none_or(|a| addrs.insert(IpAddr::V6(a)));
            if !keys.insert(public) || !names.insert(p.name.clone()) || !fresh_addrs {
                return Err(format!("peer {:?}: duplicate name, key or address", p.name));
            }
            peers.push(PeerConfig {
                name: p.name.clone(),
                public,
                virtual_ipv4: p.address,
                virtual_ipv6: p.address6,
            });
        }
        Ok(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upmt_proto::time::Instant;

    const KEY_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const KEY_B: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const KEY_C: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    fn config(tun: &str, extra: &str, peers: &[(&str, &str, &str)]) -> Config {
        let mut text = format!(
            "listen = \"0.0.0.0:51900\"\nprivate_key = \"{KEY_A}\"\ntun = \"{tun}\"\n\
             subnet = \"10.77.0.0/24\"\negress = \"eth0\"\n{extra}\n"
        );
        for (name, key, addr) in peers {
            text.push_str(&format!(
                "[[peer]]\nname = \"{name}\"\npublic_key = \"{key}\"\naddress = \"{addr}\"\n"
            ));
        }
        config::parse(Path::new("/etc/upmt/an.toml"), &text).unwrap()
    }

    #[test]
    fn peers_are_applied_and_other_changes_are_reported_as_needing_a_restart() {
        let old = config("upmt0", "", &[("phone", KEY_B, "10.77.0.2")]);
        let mut anchor = Anchor::new(crate::anchor_config(&old), Instant::ZERO);
        let reloader = Reloader::new(&old);

        let same = reloader.apply(&mut anchor, &reload_config(&old)).unwrap();
        assert_eq!(same.unchanged, 1);
        assert!(same.added.is_empty() && same.removed.is_empty());
        assert!(same.needs_restart.is_empty(), "{:?}", same.needs_restart);

        let new = config("upmt1", "mtu = 1400", &[("laptop", KEY_C, "10.77.0.3")]);
        let report = reloader.apply(&mut anchor, &reload_config(&new)).unwrap();
        assert_eq!(report.added, vec!["laptop".to_owned()]);
        assert_eq!(report.removed, vec!["phone".to_owned()]);
        assert_eq!(
            report.needs_restart,
            vec!["mtu".to_owned(), "tun".to_owned()]
        );
        assert_eq!(
            anchor.peers().map(|p| p.name).collect::<Vec<_>>(),
            vec!["laptop".to_owned()]
        );
    }

    #[test]
    fn a_peer_list_the_config_would_refuse_changes_nothing() {
        let old = config("upmt0", "", &[("phone", KEY_B, "10.77.0.2")]);
        let mut anchor = Anchor::new(crate::anchor_config(&old), Instant::ZERO);
        let reloader = Reloader::new(&old);
        let mut bad = reload_config(&old);
        bad.peers[0].address = "10.78.0.2".parse().unwrap();
        let err = reloader.apply(&mut anchor, &bad).unwrap_err();
        assert!(err.contains("outside the running subnet"), "{err}");
        let mut dup = reload_config(&old);
        dup.peers.push(dup.peers[0].clone());
        assert!(
            reloader
                .apply(&mut anchor, &dup)
                .unwrap_err()
                .contains("duplicate")
        );
        assert_eq!(anchor.peers().count(), 1);
    }
}
