//! The lab's android profile: the mobile host's namespace laid out as netd lays out a phone, so
//! `upmt-mh` with `platform = "android"` runs inside Android's routing with live traffic.
//!
//! On top of the ordinary [`Lab`] (same routers, anchor and CH):
//!
//! ```text
//!            wlan0 192.168.1.2 ─────── lan [rwifi NAT] ...
//!   [mh]     rmnet_data0 100.64.0.2 ── lan [rcell NAT] ...
//!   (phone)  rmnet_data1 100.65.0.2 ── ims [rcell]       forwards nothing (IMS-like)
//!            tether0 192.168.42.1 ──── eth0 192.168.42.2 [tether] (a tethered client)
//! ```
//!
//! - the MH's uplinks are renamed `wlan0` and `rmnet_data0`; `rmnet_data1` is up with a global
//!   address and a default route in its own table, but its router drops what it would forward,
//!   as an IMS network never reaches the anchor;
//! - every network's routes live only in its own table (ifindex + 1000), main has no default
//!   route, the `lookup main` / `lookup default` rules are gone, and netd's rules
//!   ([`crate::netd`]) sit at their priorities: wlan0 (netId 100) is the default network,
//!   rmnet_data0 (101) the tethering upstream, rmnet_data1 (102);
//! - `tether0` is a tethering downstream in table 97 (netd's local network), its clients leave by
//!   rmnet_data0's table (netd's 21000 rule) NATed on rmnet_data0, as a phone does;
//! - a packages.list gives apps ([`VIDEO`], [`STORE`], [`BROWSER`]) their own uids, and
//!   [`AndroidLab::app_command`] runs a program as one of them, named as Android names an app's
//!   process (`exec -a com.example.video:remote`).
//!
//! Like the rest of the lab, everything lives in the lab's namespaces and goes with them.

use std::ops::Deref;
use std::os::unix::fs::chown;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use crate::deploy::{DeployOptions, MH_TUN};
use crate::error::{LabError, Result};
use crate::lab::{Cmd, Host, Lab, Role};
use crate::measure::NftCounter;
use crate::netd;
use crate::process::ProcHandle;
use crate::topology::{Family, MH_CELL_IF, MH_WIFI_IF};

/// The phone's Wi-Fi interface.
pub const WLAN: &str = "wlan0";
/// The phone's cellular (internet) interface.
pub const RMNET: &str = "rmnet_data0";
/// The IMS-like cellular interface: up, routed in its own table, never reaching the anchor.
pub const IMS: &str = "rmnet_data1";
/// The tethering downstream.
pub const TETHER: &str = "tether0";
/// The tethered client's address.
pub const TETHER_CLIENT_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 168, 42, 2);

/// netd's netIds of wlan0, rmnet_data0 and rmnet_data1.
pub const NET_IDS: [u32; 3] = [100, 101, 102];

/// wlan0, rmnet_data0 and rmnet_data1 (netd's order): each with its (subnet, gateway) in
/// IPv4 and IPv6.
const NETWORKS: [(&str, [(&str, &str); 2]); 3] = [
    (
        WLAN,
        [
            ("192.168.1.0/24", "192.168.1.1"),
            ("fd00:1::/64", "fd00:1::1"),
        ],
    ),
    (
        RMNET,
        [
            ("100.64.0.0/24", "100.64.0.1"),
            ("fd00:2::/64", "fd00:2::1"),
        ],
    ),
    (
        IMS,
        [
            ("100.65.0.0/24", "100.65.0.1"),
            ("fd00:3::/64", "fd00:3::1"),
        ],
    ),
];

/// The IMS interface's peer on rcell, and the table that drops what comes from it.
const IMS_PEER: &str = "ims";
const IMS_DROP_TABLE: &str = "upmt-lab-ims";
/// netd's local network table, where tethering downstreams are routed.
const LOCAL_NETWORK_TABLE: &str = "97";
/// Counts tunnelled apps' packets leaving in clear ([`AndroidLab::count_clear_app_packets`]).
const CLEAR_TABLE: &str = "upmt-lab-clear";

/// An Android app of the profile's packages.list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct App {
    /// Its package name.
    pub package: &'static str,
    /// Its uid (user 0).
    pub uid: u32,
    /// The process name its programs run under (what `/proc/PID/cmdline` shows).
    pub process: &'static str,
}

/// The video app, tunnelled over Wi-Fi ([`POLICY`]); runs in a `:remote` process.
pub const VIDEO: App = App {
    package: "com.example.video",
    uid: 10124,
    process: "com.example.video:remote",
};
/// The store, tunnelled over cellular.
pub const STORE: App = App {
    package: "com.example.store",
    uid: 10123,
    process: "com.example.store",
};
/// The browser, which bypasses the tunnel.
pub const BROWSER: App = App {
    package: "com.example.browser",
    uid: 10125,
    process: "com.example.browser",
};

/// The profile's packages.list (Android's format: name, uid, debuggable, data dir, seinfo,
/// gids, profileable, version).
pub const PACKAGES_LIST: &str = "\
com.example.store 10123 0 /data/user/0/com.example.store default:targetSdkVersion=34 3003 0 1
com.example.video 10124 0 /data/user/0/com.example.video default:targetSdkVersion=34 3003 0 1
com.example.browser 10125 0 /data/user/0/com.example.browser default:targetSdkVersion=34 3003 0 1
com.example.notes 10126 0 /data/user/0/com.example.notes default:targetSdkVersion=34 none 0 1
";

/// The MH's policy in the profile: video on wifi, the store on cell, the browser bypassed by
/// package name, the rest on wifi.
pub const POLICY: &str = "version = 1

[[rule]]
app = \"com.example.video\"
uplinks = [\"wifi\"]

[[rule]]
app = \"com.example.store\"
uplinks = [\"cell\"]

[[rule]]
app = \"com.example.browser\"
action = \"bypass\"

[default]
uplinks = [\"wifi\"]
when_none = \"any\"
";

/// A lab in the android profile. Dereferences to its [`Lab`].
#[derive(Debug)]
pub struct AndroidLab {
    lab: Lab,
    /// The tables of wlan0, rmnet_data0 and rmnet_data1 (ifindex + 1000).
    pub tables: [u32; 3],
    /// The fake packages.list the MH's config names.
    pub packages_list: PathBuf,
}

impl Deref for AndroidLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl AndroidLab {
    /// Builds a lab for `name` and lays its MH out as netd would (see the module docs).
    pub fn new(name: &str) -> Result<AndroidLab> {
        let mut lab = Lab::new(name)?;
        // On error the lab is dropped, which removes whatever was built so far.
        let tables = build(&mut lab)?;
        let packages_list = lab.dir().join("packages.list");
        std::fs::write(&packages_list, PACKAGES_LIST).map_err(|source| LabError::Io {
            path: packages_list.clone(),
            source,
        })?;
        let android = AndroidLab {
            lab,
            tables,
            packages_list,
        };
        android.write_netd_rules()?;
        Ok(android)
    }

    /// The tethered client.
    pub fn tether(&self) -> Host<'_> {
        self.host(Role::Tether)
    }

    /// netd's view of the phone's networks.
    pub fn networks(&self) -> [netd::Network<'static>; 3] {
        let [w, r, i] = self.tables;
        [
            netd::Network {
                ifname: WLAN,
                table: w,
                net_id: NET_IDS[0],
            },
            netd::Network {
                ifname: RMNET,
                table: r,
                net_id: NET_IDS[1],
            },
            netd::Network {
                ifname: IMS,
                table: i,
                net_id: NET_IDS[2],
            },
        ]
    }

    /// Adds (`true`) or deletes the default routes of network `i` (0 wlan0, 1 rmnet_data0,
    /// 2 rmnet_data1) in its table, as netd does when the network connects or disconnects.
    pub fn set_default_routes(&self, i: usize, present: bool) -> Result<()> {
        let (Some((ifname, nets)), Some(table)) = (NETWORKS.get(i), self.tables.get(i)) else {
            return Err(LabError::Invalid(format!(
                "no network {i} in the android profile"
            )));
        };
        let t = table.to_string();
        for (_, gw) in nets {
            let verb = if present { "replace" } else { "del" };
            self.mh().ip(&[
                "route", verb, "default", "via", gw, "dev", ifname, "table", &t,
            ])?;
        }
        Ok(())
    }

    /// Adds netd's rules (both families), as netd does at start and again after a restart.
    pub fn write_netd_rules(&self) -> Result<()> {
        let rules = netd::rules(&self.networks(), 0, Some((TETHER, 1)));
        let mh = self.mh();
        for family in ["-4", "-6"] {
            for rule in &rules {
                let mut args = vec![family, "rule", "add"];
                args.extend(rule.iter().map(String::as_str));
                mh.ip(&args)?;
            }
        }
        Ok(())
    }

    /// Deletes every rule of both families but the local table's (what a restarting netd does
    /// before writing its own again).
    pub fn flush_rules(&self) -> Result<()> {
        for family in ["-4", "-6"] {
            self.mh().ip(&[family, "rule", "flush"])?;
        }
        Ok(())
    }

    /// `ip -4 rule` then `ip -6 rule` of the MH.
    pub fn rules(&self) -> Result<String> {
        let mut out = String::new();
        for family in ["-4", "-6"] {
            out.push_str(&String::from_utf8_lossy(
                &self.mh().ip(&[family, "rule"])?.stdout,
            ));
        }
        Ok(out)
    }

    /// The MH daemon's rules (its band, 14001-14999) in both families, as the kernel lists them.
    pub fn band_rules(&self) -> Result<Vec<String>> {
        Ok(self
            .rules()?
            .lines()
            .filter(|l| netd::in_mh_band(l))
            .map(str::to_owned)
            .collect())
    }

    /// How to deploy upmt here: `platform = "android"`, the fake packages.list, [`POLICY`], the
    /// `wifi` uplink on wlan0 and the `cell` uplink on whatever `rmnet_data*` reaches the anchor.
    pub fn deploy_options(&self) -> DeployOptions {
        DeployOptions {
            uplinks: vec![
                ("wifi".to_owned(), WLAN.to_owned()),
                ("cell".to_owned(), "rmnet_data*".to_owned()),
            ],
            mh_extra: format!(
                "platform = \"android\"\npackages_list = \"{}\"\n",
                self.packages_list.display()
            ),
            mh_policy: Some(POLICY.to_owned()),
            ..DeployOptions::default()
        }
    }

    /// `args` run on the MH as `app`: under its uid, in a process named [`App::process`].
    pub fn app_command(&self, app: &App, args: &[&str]) -> Cmd<'_> {
        let uid = app.uid.to_string();
        let mut full = vec![
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--clear-groups",
            "--",
            // `exec -a` keeps the pid and sets argv[0], as Android names an app's process.
            "bash",
            "-c",
            "exec -a \"$0\" \"$@\"",
            app.process,
        ];
        full.extend(args);
        self.mh().command(&full).label(app.package)
    }

    /// What the CH sees as the address of `app`'s request (IPv4): the anchor's when tunnelled,
    /// the Wi-Fi NAT's when netd routes it.
    pub fn app_whoami(&self, app: &App) -> Result<std::net::IpAddr> {
        let http = self.start_http_server()?;
        let url = http.url(Family::V4, "whoami");
        let out = self
            .app_command(
                app,
                &[
                    "curl",
                    "-sS",
                    "--fail",
                    "--connect-timeout",
                    "2",
                    "--max-time",
                    "5",
                    &url,
                ],
            )
            .run()?;
        let body = String::from_utf8_lossy(&out.stdout);
        body.trim().parse().map_err(|_| LabError::Parse {
            cmd: format!("curl {url} as {}", app.package),
            detail: format!("expected an IP address, got {body:?}"),
        })
    }

    /// Downloads the served `file` as `app` to the end, body discarded; curl's output (its
    /// exit status says whether it worked).
    pub fn app_download(&self, app: &App, file: &str) -> Result<Output> {
        let http = self.start_http_server()?;
        let url = http.url(Family::V4, file);
        self.app_command(
            app,
            &[
                "curl",
                "-sS",
                "--fail",
                "--connect-timeout",
                "3",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                &url,
            ],
        )
        .timeout(Duration::from_secs(30))
        .run_unchecked()
    }

    /// Starts a download of `file` as `app` in the background, saved to a file the app owns;
    /// follow it with [`AppDownload::bytes`], end it with [`AppDownload::wait`].
    pub fn start_app_download(&self, app: &App, file: &str) -> Result<AppDownload> {
        let http = self.start_http_server()?;
        let url = http.url(Family::V4, file);
        let path = self.dir().join(format!("{}-{file}", app.package));
        let io = |source| LabError::Io {
            path: path.clone(),
            source,
        };
        std::fs::write(&path, b"").map_err(io)?;
        chown(&path, Some(app.uid), Some(app.uid)).map_err(io)?;
        let path_text = path.to_string_lossy().into_owned();
        let proc = self
            .app_command(
                app,
                &[
                    "curl",
                    "-sS",
                    "--fail",
                    "--max-time",
                    "30",
                    "-w",
                    "\nnum_connects=%{num_connects}\n",
                    "-o",
                    &path_text,
                    &url,
                ],
            )
            .spawn()?;
        Ok(AppDownload {
            proc,
            path,
            sha256: http.sha256(file).map(str::to_owned),
        })
    }

    /// Counts, from now on, the packets of the tunnelled apps ([`VIDEO`], [`STORE`]) that leave
    /// the MH on wlan0 or rmnet_data0 themselves (not through the tunnel's socket, which is
    /// root's); read with [`AndroidLab::clear_app_packets`].
    pub fn count_clear_app_packets(&self) -> Result<()> {
        let ruleset = format!(
            "table inet {CLEAR_TABLE} {{\n counter clear {{}}\n\
             chain out {{ type filter hook output priority 0; \
             meta skuid {{ {}, {} }} oifname {{ \"{WLAN}\", \"{RMNET}\" }} counter name clear; }}\n}}\n",
            VIDEO.uid, STORE.uid
        );
        self.mh()
            .run_input(&["nft", "-f", "-"], ruleset.as_bytes())?;
        Ok(())
    }

    /// Packets counted since [`AndroidLab::count_clear_app_packets`].
    pub fn clear_app_packets(&self) -> Result<NftCounter> {
        self.mh().nft_counter("inet", CLEAR_TABLE, "clear")
    }

    /// Packets the MH's kernel has routed into the TUN so far (0 when there is no TUN).
    pub fn tun_packets(&self) -> u64 {
        self.mh()
            .link_counters(MH_TUN)
            .map(|c| c.tx_packets)
            .unwrap_or(0)
    }
}

/// A download started by [`AndroidLab::start_app_download`]. The lab stops curl if the test
/// ends first.
#[derive(Debug)]
pub struct AppDownload {
    proc: ProcHandle,
    path: PathBuf,
    sha256: Option<String>,
}

/// How an [`AppDownload`] ended.
#[derive(Debug)]
pub struct AppDownloaded {
    /// curl exited with success.
    pub success: bool,
    /// Connections curl opened (curl's `num_connects`).
    pub num_connects: Option<u32>,
    /// The body's sha256 equals the served file's.
    pub intact: bool,
    /// curl's output.
    pub log: String,
}

impl AppDownload {
    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Whether curl still runs.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Waits for curl to end (within `timeout`) and checks what arrived.
    pub fn wait(self, timeout: Duration) -> Result<AppDownloaded> {
        let status = self.proc.wait_with_timeout(timeout);
        let log = self.proc.log();
        let num_connects = log
            .lines()
            .find_map(|l| l.strip_prefix("num_connects="))
            .and_then(|n| n.trim().parse().ok());
        let intact = match (&self.sha256, crate::measure::sha256_file(&self.path)) {
            (Some(want), Ok(got)) => *want == got,
            _ => false,
        };
        Ok(AppDownloaded {
            success: status.is_some_and(|s| s.success()),
            num_connects,
            intact,
            log,
        })
    }
}

/// Lays the MH of `lab` out as netd would; returns the tables of wlan0, rmnet_data0 and
/// rmnet_data1.
fn build(lab: &mut Lab) -> Result<[u32; 3]> {
    lab.adopt_namespace(Role::Tether)?;
    let mh = lab.mh();
    for (old, new) in [(MH_WIFI_IF, WLAN), (MH_CELL_IF, RMNET)] {
        // A link is renamed only while down; the kernel deletes its routes meanwhile, which
        // is what we want: netd keeps them in the interface's own table.
        mh.ip(&["link", "set", old, "down"])?;
        mh.ip(&["link", "set", old, "name", new])?;
        mh.ip(&["link", "set", new, "up"])?;
    }
    // The IMS-like interface: its peer on rcell, whose forward chain drops all it sends.
    let rcell_ns = lab.ns(Role::Rcell).to_owned();
    mh.ip(&[
        "link", "add", IMS, "type", "veth", "peer", "name", IMS_PEER, "netns", &rcell_ns,
    ])?;
    // The tethered client.
    let tether_ns = lab.ns(Role::Tether).to_owned();
    mh.ip(&[
        "link", "add", TETHER, "type", "veth", "peer", "name", "eth0", "netns", &tether_ns,
    ])?;
    let tether = lab.host(Role::Tether);
    tether.ip(&["link", "set", "lo", "up"])?;
    for (host, ifname, v4, v6) in [
        (mh, IMS, "100.65.0.2/24", Some("fd00:3::2/64")),
        (lab.rcell(), IMS_PEER, "100.65.0.1/24", Some("fd00:3::1/64")),
        (mh, TETHER, "192.168.42.1/24", None),
        (tether, "eth0", "192.168.42.2/24", None),
    ] {
        host.ip(&["-4", "addr", "add", v4, "dev", ifname])?;
        if let Some(v6) = v6 {
            host.ip(&["-6", "addr", "add", v6, "dev", ifname, "nodad"])?;
        }
        host.ip(&["link", "set", ifname, "up"])?;
    }
    tether.ip(&["route", "add", "default", "via", "192.168.42.1"])?;
    lab.rcell().run_input(
        &["nft", "-f", "-"],
        format!(
            "table inet {IMS_DROP_TABLE} {{ chain forward {{ type filter hook forward priority 0; \
             iifname \"{IMS_PEER}\" drop; }}\n}}\n"
        )
        .as_bytes(),
    )?;
    // The phone forwards for its tethered clients and NATs them on the upstream.
    mh.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    mh.run_input(
        &["nft", "-f", "-"],
        format!(
            "table ip upmt-lab-tether {{ chain postrouting {{ type nat hook postrouting priority srcnat; \
             oifname \"{RMNET}\" ip saddr 192.168.42.0/24 masquerade; }}\n}}\n"
        )
        .as_bytes(),
    )?;

    // No default route in main: each network's routes are in its own table.
    for family in ["-4", "-6"] {
        while mh.ip(&[family, "route", "del", "default"]).is_ok() {}
    }
    let mut tables = [0u32; 3];
    for (i, (ifname, nets)) in NETWORKS.into_iter().enumerate() {
        let table = ifindex(&mh, ifname)? + 1000;
        tables[i] = table;
        let t = table.to_string();
        for (net, gw) in nets {
            mh.ip(&["route", "add", net, "dev", ifname, "table", &t])?;
            mh.ip(&[
                "route", "add", "default", "via", gw, "dev", ifname, "table", &t,
            ])?;
        }
    }
    mh.ip(&[
        "route",
        "add",
        "192.168.42.0/24",
        "dev",
        TETHER,
        "table",
        LOCAL_NETWORK_TABLE,
    ])?;
    // netd deletes `lookup main` (both families) and `lookup default` (IPv4 only has one).
    for family in ["-4", "-6"] {
        mh.ip(&[family, "rule", "del", "pref", "32766"])?;
    }
    mh.ip(&["-4", "rule", "del", "pref", "32767"])?;
    Ok(tables)
}

/// The ifindex of `ifname` on `host`.
fn ifindex(host: &Host<'_>, ifname: &str) -> Result<u32> {
    let out = host.ip(&["-o", "link", "show", "dev", ifname])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .ok_or_else(|| LabError::Parse {
            cmd: format!("ip -o link show dev {ifname}"),
            detail: format!("no ifindex in {text:?}"),
        })
}
