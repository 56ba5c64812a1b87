//! upmt deployed in a [`Lab`]: keys, configs and the two real daemons, started in their
//! namespaces and waited for until the mobile host's tunnel carries traffic.
//!
//! The anchor listens on the AN's public addresses and NATs out of its `eth0`; the mobile host
//! has one uplink per lab interface (`wifi` = path 0, `cell` = path 1). Configs are written to
//! the lab's directory so a failing test can show them with its logs.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use upmt_proto::keys::{PublicKey, StaticSecret};

use crate::bin_path;
use crate::error::{LabError, Result};
use crate::lab::{Host, Lab, Role};
use crate::measure::wait_for;
use crate::process::ProcHandle;
use crate::topology::{AN_V4, MH_CELL_IF, MH_WIFI_IF};

/// The anchor's UDP port in the lab.
pub const AN_PORT: u16 = 51900;
/// The anchor's metrics endpoint in its namespace.
pub const AN_METRICS: &str = "127.0.0.1:9100";
/// The mobile host's virtual address, handed out by the anchor.
pub const MH_VIRTUAL_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The second mobile host's virtual address ([`DeployOptions::second_mh`]).
pub const MH2_VIRTUAL_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
/// The TUN device of the mobile host.
pub const MH_TUN: &str = "upmt0";
/// The TUN device of the anchor.
pub const AN_TUN: &str = "upmtan0";

/// How upmt is deployed in the lab.
#[derive(Clone, Debug)]
pub struct DeployOptions {
    /// The MH's uplinks in path order, as (uplink name, lab interface).
    pub uplinks: Vec<(String, String)>,
    /// Extra lines appended to the MH's config (before its `[[uplink]]` tables).
    pub mh_extra: String,
    /// Extra lines appended to the AN's config (before its `[[peer]]` table).
    pub an_extra: String,
    /// More `[[peer]]` tables appended after the AN's own (e.g. a load generator's peer).
    pub an_extra_peers: String,
    /// The AN's virtual IPv4 subnet; `None`: 10.77.0.0/24 (a swarm of thousands of peers needs
    /// a wider one, e.g. a /16).
    pub an_subnet: Option<String>,
    /// `RUST_LOG` for both daemons.
    pub log: String,
    /// A policy file for the MH, written as `policy.toml` next to its config and named by it.
    pub mh_policy: Option<String>,
    /// Also run a second mobile host (peer `phone2`, [`MH2_VIRTUAL_V4`]) in the lab's `mh2`
    /// namespace, which [`Lab::add_second_mh`] must have built.
    pub second_mh: bool,
    /// The MH's `anchor` value as TOML (e.g. a list of an IPv4 and an IPv6 endpoint); `None`:
    /// the AN's IPv4 endpoint.
    pub mh_anchor: Option<String>,
    /// Names of the MH's uplinks marked `metered = true`.
    pub metered: Vec<String>,
    /// Extra lines for the `[[uplink]]` table of the named uplink (e.g. `idle = "sleep"`).
    pub uplink_extra: Vec<(String, String)>,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            uplinks: vec![
                ("wifi".to_owned(), MH_WIFI_IF.to_owned()),
                ("cell".to_owned(), MH_CELL_IF.to_owned()),
            ],
            mh_extra: String::new(),
            an_extra: String::new(),
            an_extra_peers: String::new(),
            an_subnet: None,
            log: "info,upmt=debug".to_owned(),
            mh_policy: None,
            second_mh: false,
            mh_anchor: None,
            metered: Vec::new(),
            uplink_extra: Vec::new(),
        }
    }
}

/// The two daemons running in a lab.
pub struct Deployment<'a> {
    lab: &'a Lab,
    /// The anchor daemon in the `an` namespace.
    pub an: ProcHandle,
    /// The mobile-host daemon in the `mh` namespace.
    pub mh: ProcHandle,
    /// The second mobile-host daemon, in the `mh2` namespace, when asked for.
    pub mh2: Option<ProcHandle>,
    /// The anchor's config file.
    pub an_config: PathBuf,
    /// The mobile host's config file.
    pub mh_config: PathBuf,
    /// The anchor's public key (what load generators handshake with).
    pub an_public: PublicKey,
}

impl<'a> Deployment<'a> {
    /// Writes keys and configs, starts `upmt-an` and `upmt-mh`, and waits until the MH's TUN has
    /// its virtual address and a ping through the tunnel to the anchor answers.
    pub fn start(lab: &'a Lab, options: &DeployOptions) -> Result<Deployment<'a>> {
        let key = |who: &str| {
            StaticSecret::generate()
                .map_err(|e| LabError::Deploy(format!("generating the {who} key: {e}")))
        };
        let an_secret = key("anchor")?;
        let mh_secret = key("mobile host")?;
        let mh2_secret = key("second mobile host")?;
        let dir = lab.dir().to_path_buf();
        if options.second_mh && lab.namespaces().iter().all(|ns| !ns.ends_with("-mh2")) {
            return Err(LabError::Deploy(
                "second_mh needs Lab::add_second_mh first".into(),
            ));
        }
        let second_peer = if options.second_mh {
            format!(
                "\n[[peer]]\nname = \"phone2\"\npublic_key = \"{}\"\naddress = \"{MH2_VIRTUAL_V4}\"\n\
                 address6 = \"fd77::3\"\n",
                mh2_secret.public_key()
            )
        } else {
            String::new()
        };

        let mut an_toml = String::new();
        // Each lab's AN gets its own control socket (`an.sock` in the lab's directory), for the
        // same reason as the MH's below.
        if !options.an_extra.contains("control_socket") {
            an_toml.push_str("control_socket = \"an.sock\"\n");
        }
        let _ = write!(
            an_toml,
            "listen = \"[::]:{AN_PORT}\"\nprivate_key = \"{an_secret}\"\ntun = \"{AN_TUN}\"\n\
             subnet = \"{}\"\nsubnet6 = \"fd77::/64\"\negress = \"eth0\"\n\
             metrics = \"{AN_METRICS}\"\n{}\n\
             [[peer]]\nname = \"phone\"\npublic_key = \"{}\"\naddress = \"{MH_VIRTUAL_V4}\"\n\
             address6 = \"fd77::2\"\n{}{second_peer}",
            options.an_subnet.as_deref().unwrap_or("10.77.0.0/24"),
            options.an_extra,
            mh_secret.public_key(),
            options.an_extra_peers,
        );
        let mut mh_toml = String::new();
        if let Some(policy) = &options.mh_policy {
            write_private(&dir.join("policy.toml"), policy)?;
            mh_toml.push_str("policy = \"policy.toml\"\n");
        }
        // Each lab's MH gets its own control socket, so that tests running in parallel never
        // meet at the default /run/upmt/mh.sock.
        if !options.mh_extra.contains("control_socket") {
            mh_toml.push_str("control_socket = \"mh.sock\"\n");
        }
        // Nor at the default usage file, which would also outlive the lab.
        if !options.mh_extra.contains("usage_file") {
            mh_toml.push_str("usage_file = \"usage.json\"\n");
        }
        let _ = write!(
            mh_toml,
            "anchor = {}\nanchor_public_key = \"{}\"\nprivate_key = \"{mh_secret}\"\n\
             tun = \"{MH_TUN}\"\n{}\n",
            options
                .mh_anchor
                .clone()
                .unwrap_or_else(|| format!("\"{AN_V4}:{AN_PORT}\"")),
            an_secret.public_key(),
            options.mh_extra,
        );
        for (name, interface) in &options.uplinks {
            let _ = write!(
                mh_toml,
                "[[uplink]]\nname = \"{name}\"\ninterface = \"{interface}\"\n"
            );
            if options.metered.contains(name) {
                mh_toml.push_str("metered = true\n");
            }
            for (_, extra) in options.uplink_extra.iter().filter(|(u, _)| u == name) {
                let _ = writeln!(mh_toml, "{extra}");
            }
        }
        let an_config = dir.join("an.toml");
        let mh_config = dir.join("mh.toml");
        write_private(&an_config, &an_toml)?;
        write_private(&mh_config, &mh_toml)?;

        let an = lab
            .an()
            .command(&[
                bin_path("upmt-an")?.as_os_str(),
                "run".as_ref(),
                "--config".as_ref(),
                an_config.as_os_str(),
            ])
            .env("RUST_LOG", &options.log)
            .label("upmt-an")
            .spawn()?;
        wait_for("upmt-an's TUN", Duration::from_secs(10), || {
            lab.an().run(&["ip", "link", "show", "dev", AN_TUN]).is_ok() || !an.is_running()
        })?;
        if !an.is_running() {
            return Err(LabError::Deploy(format!(
                "upmt-an exited at start:\n{}",
                an.log()
            )));
        }
        let mh = lab
            .mh()
            .command(&[
                bin_path("upmt-mh")?.as_os_str(),
                "run".as_ref(),
                "--config".as_ref(),
                mh_config.as_os_str(),
            ])
            .env("RUST_LOG", &options.log)
            .label("upmt-mh")
            .spawn()?;
        let mh2 = if options.second_mh {
            let mh2_config = dir.join("mh2.toml");
            write_private(
                &mh2_config,
                &format!(
                    "control_socket = \"mh2.sock\"\nusage_file = \"usage2.json\"\nanchor = \"{AN_V4}:{AN_PORT}\"\n\
                     anchor_public_key = \"{}\"\nprivate_key = \"{mh2_secret}\"\ntun = \"{MH_TUN}\"\n\
                     [[uplink]]\nname = \"wan\"\ninterface = \"eth0\"\n",
                    an_secret.public_key(),
                ),
            )?;
            Some(
                lab.host(Role::Mh2)
                    .command(&[
                        bin_path("upmt-mh")?.as_os_str(),
                        "run".as_ref(),
                        "--config".as_ref(),
                        mh2_config.as_os_str(),
                    ])
                    .env("RUST_LOG", &options.log)
                    .label("upmt-mh2")
                    .spawn()?,
            )
        } else {
            None
        };
        let deployment = Deployment {
            lab,
            an,
            mh,
            mh2,
            an_config,
            mh_config,
            an_public: an_secret.public_key(),
        };
        deployment.wait_connected(Duration::from_secs(15))?;
        if let Some(mh2) = &deployment.mh2 {
            deployment.wait_tunnel(
                lab.host(Role::Mh2),
                mh2,
                MH2_VIRTUAL_V4,
                Duration::from_secs(15),
            )?;
        }
        Ok(deployment)
    }

    /// Waits until the MH's TUN carries its virtual address and the AN answers a ping through it.
    pub fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.wait_tunnel(self.lab.mh(), &self.mh, MH_VIRTUAL_V4, timeout)
    }

    fn wait_tunnel(
        &self,
        host: Host<'_>,
        mh: &ProcHandle,
        virtual_v4: Ipv4Addr,
        timeout: Duration,
    ) -> Result<()> {
        let outcome = wait_for("the MH's tunnel", timeout, || {
            if !mh.is_running() || !self.an.is_running() {
                return true;
            }
            let Ok(addrs) = host.run_stdout(&["ip", "-4", "-o", "addr", "show", "dev", MH_TUN])
            else {
                return false;
            };
            addrs.contains(&virtual_v4.to_string())
                && host
                    .run_timeout(
                        &["ping", "-c", "1", "-W", "1", "-I", MH_TUN, "10.77.0.1"],
                        Duration::from_secs(3),
                    )
                    .is_ok()
        });
        if outcome.is_err() || !mh.is_running() || !self.an.is_running() {
            return Err(LabError::Deploy(format!(
                "the tunnel of {} did not come up\n--- upmt-an ---\n{}\n--- {} ---\n{}",
                host.role(),
                self.an.log(),
                mh.label(),
                mh.log()
            )));
        }
        Ok(())
    }

    /// Stops `upmt-an` with SIGTERM (it leaves its nft table and TUN) and starts a new one with
    /// the same config, as an operator restarting the daemon would; returns once the new one
    /// is up (its TUN persists across the restart, so that alone says nothing). The kernel's
    /// conntrack/NAT state is not touched. The old process's log
    /// stays in the lab's log directory.
    pub fn restart_an(&mut self, log: &str) -> Result<()> {
        let lab = self.lab;
        self.an.signal(libc::SIGTERM);
        if self.an.wait_with_timeout(Duration::from_secs(10)).is_none() {
            return Err(LabError::Deploy(format!(
                "upmt-an did not stop on SIGTERM
{}",
                self.an.log()
            )));
        }
        let an = lab
            .an()
            .command(&[
                bin_path("upmt-an")?.as_os_str(),
                "run".as_ref(),
                "--config".as_ref(),
                self.an_config.as_os_str(),
            ])
            .env("RUST_LOG", log)
            .label("upmt-an-restarted")
            .spawn()?;
        wait_for("the restarted upmt-an", Duration::from_secs(10), || {
            an.log().contains("anchor node up") || !an.is_running()
        })?;
        if !an.is_running() {
            return Err(LabError::Deploy(format!(
                "the restarted upmt-an exited at start:\n{}",
                an.log()
            )));
        }
        self.an = an;
        Ok(())
    }

    /// Stops `upmt-mh` with SIGTERM (it restores its routing and saves its usage) and starts a
    /// new one with the same config; returns once its tunnel is up again. The old process's
    /// log stays in the lab's log directory.
    pub fn restart_mh(&mut self, log: &str) -> Result<()> {
        let lab = self.lab;
        self.mh.signal(libc::SIGTERM);
        if self.mh.wait_with_timeout(Duration::from_secs(10)).is_none() {
            return Err(LabError::Deploy(format!(
                "upmt-mh did not stop on SIGTERM\n{}",
                self.mh.log()
            )));
        }
        self.mh = lab
            .mh()
            .command(&[
                bin_path("upmt-mh")?.as_os_str(),
                "run".as_ref(),
                "--config".as_ref(),
                self.mh_config.as_os_str(),
            ])
            .env("RUST_LOG", log)
            .label("upmt-mh-restarted")
            .spawn()?;
        self.wait_connected(Duration::from_secs(20))
    }

    /// The anchor's metrics (Prometheus text), fetched inside its namespace.
    pub fn an_metrics(&self) -> Result<String> {
        self.lab.an().run_stdout(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            &format!("http://{AN_METRICS}/metrics"),
        ])
    }

    /// One value from the anchor's metrics: the sum of every sample whose name and labels start
    /// with `prefix` (e.g. `upmt_drops_total{reason="truncated"}`).
    pub fn an_metric(&self, prefix: &str) -> Result<u64> {
        Ok(metric_sum(&self.an_metrics()?, prefix))
    }

    /// The MH's virtual address.
    pub fn mh_virtual(&self) -> IpAddr {
        IpAddr::V4(MH_VIRTUAL_V4)
    }

    /// Runs `upmt-mh stop` with this deployment's config in the MH's namespace (what a user
    /// runs after the daemon was killed) and returns what it printed.
    pub fn mh_stop(&self) -> Result<String> {
        self.lab.mh().run_stdout(&[
            bin_path("upmt-mh")?.as_os_str(),
            "stop".as_ref(),
            "--config".as_ref(),
            self.mh_config.as_os_str(),
        ])
    }

    /// Downloads `file` over IPv4 from the CH's HTTP server through the tunnel (counting
    /// `MH_TUN`), and panics unless it arrived whole: what a test that only needs "the tunnel
    /// carries a download intact" runs.
    pub fn download_whole(&self, file: &str) {
        let http = self.lab.start_http_server().expect("http server");
        let got = self
            .lab
            .download(file)
            .family(crate::topology::Family::V4)
            .count(MH_TUN)
            .run()
            .unwrap_or_else(|e| panic!("curl {file}: {e}\n{}", self.logs()));
        assert!(got.success(), "curl {file}: {}\n{}", got.log, self.logs());
        assert_eq!(got.sha256.as_deref(), http.sha256(file));
    }

    /// The daemons' logs, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut logs = format!(
            "--- upmt-an ---\n{}\n--- upmt-mh ---\n{}",
            self.an.log(),
            self.mh.log()
        );
        if let Some(mh2) = &self.mh2 {
            logs.push_str(&format!("\n--- upmt-mh2 ---\n{}", mh2.log()));
        }
        logs
    }
}

/// The sum of every Prometheus sample whose `name{labels}` starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|line| !line.starts_with('#') && line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

pub(crate) fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|source| LabError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Counts the MH's datagrams to the anchor leaving each uplink (an nftables counter per uplink
/// in its namespace: the kernel's own ARP and neighbour discovery are not counted).
pub fn count_tunnel_datagrams(lab: &Lab) -> Result<()> {
    // Replaces the table a previous deployment in the same lab made: adding its rules again
    // would count every datagram once more.
    let ruleset = format!(
        "table inet upmt-lab-tunnel-tx {{}}\ndelete table inet upmt-lab-tunnel-tx\n\
         table inet upmt-lab-tunnel-tx {{\n\
         counter wifi {{}}\n counter cell {{}}\n\
         chain out {{ type filter hook output priority 0; \
         oifname \"{MH_WIFI_IF}\" udp dport {AN_PORT} counter name wifi; \
         oifname \"{MH_CELL_IF}\" udp dport {AN_PORT} counter name cell; }}\n}}\n"
    );
    lab.mh()
        .run_input(&["nft", "-f", "-"], ruleset.as_bytes())?;
    Ok(())
}

/// The MH's datagrams to the anchor so far on (wifi, cell), counted since
/// [`count_tunnel_datagrams`].
pub fn tunnel_datagrams(lab: &Lab) -> Result<(u64, u64)> {
    let read = |name| -> Result<u64> {
        Ok(lab
            .mh()
            .nft_counter("inet", "upmt-lab-tunnel-tx", name)?
            .packets)
    };
    Ok((read("wifi")?, read("cell")?))
}

/// The tunnel of `uplink` in a status reply ([`mh_status`]).
pub fn tunnel<'v>(status: &'v serde_json::Value, uplink: &str) -> Option<&'v serde_json::Value> {
    status["tunnels"]
        .as_array()?
        .iter()
        .find(|t| t["uplink"] == uplink)
}

/// `upmt status --json` of the lab's MH, through the control socket [`Deployment::start`] gives
/// it (`mh.sock` in the lab's directory).
pub fn mh_status(lab: &Lab) -> Result<serde_json::Value> {
    let bin = bin_path("upmt")?;
    let socket = lab.dir().join("mh.sock");
    let out = lab
        .mh()
        .command(&[
            bin.as_os_str(),
            "--socket".as_ref(),
            socket.as_os_str(),
            "status".as_ref(),
            "--json".as_ref(),
        ])
        .run()?;
    serde_json::from_slice(&out.stdout).map_err(|e| LabError::Parse {
        cmd: "upmt status --json".to_owned(),
        detail: e.to_string(),
    })
}
