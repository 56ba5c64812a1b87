//! The lab: six network namespaces wired as a mobile host with two NATed uplinks, an internet
//! router, an anchor node and a correspondent host (see [`crate::topology`] for the addresses).
//!
//! Namespaces are named `upmt-<pid>-<n>-<role>` (`n` counts labs within the process) so labs of
//! parallel tests never clash. Veths are created directly inside their namespaces: nothing is
//! ever created, routed or NATed in the root namespace. Dropping the [`Lab`] (also while
//! unwinding from a panic, and when construction fails half-way) stops every process it started
//! and deletes its namespaces, which removes their veths, routes and nftables tables with them.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::exec::{self, DEFAULT_TIMEOUT, display_cmd, which};
use crate::process::{ProcHandle, ProcInner, TERM_GRACE};
use crate::servers::Servers;

/// Counts labs built by this process, so each gets distinct namespace names.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Prefix of every namespace and temp dir the lab creates.
const PREFIX: &str = "upmt";

/// A machine of the lab, one network namespace each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The mobile host: uplinks `wifi` and `cell`.
    Mh,
    /// The Wi-Fi access router (NAT), `lan` toward the MH, `wan` toward the internet.
    Rwifi,
    /// The cellular gateway (NAT), `lan` toward the MH, `wan` toward the internet.
    Rcell,
    /// The internet router: no NAT, one interface per neighbour.
    Inet,
    /// The anchor node, `eth0`.
    An,
    /// The correspondent host, `eth0`; runs the servers.
    Ch,
    /// A second mobile host, built only on demand ([`Lab::add_second_mh`]): `eth0` straight on
    /// the internet router, no NAT.
    Mh2,
    /// A second anchor node, built only on demand ([`Lab::add_second_an`]): `eth0` straight on
    /// the internet router.
    An2,
    /// A client tethered to the phone, built only by the android profile
    /// ([`crate::android::AndroidLab`]): `eth0` on the MH's `tether0`.
    Tether,
}

impl Role {
    /// Every role, in creation order.
    pub const ALL: [Role; 6] = [
        Role::Mh,
        Role::Rwifi,
        Role::Rcell,
        Role::Inet,
        Role::An,
        Role::Ch,
    ];

    /// The role's short name, the last part of its namespace name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Mh => "mh",
            Role::Rwifi => "rwifi",
            Role::Rcell => "rcell",
            Role::Inet => "inet",
            Role::An => "an",
            Role::Ch => "ch",
            Role::Mh2 => "mh2",
            Role::An2 => "an2",
            Role::Tether => "tether",
        }
    }

    /// The role named `name`, if any (on-demand roles included).
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .chain([Role::Mh2, Role::An2, Role::Tether])
            .find(|r| r.name() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A veth pair: (role, interface) on each end.
const LINKS: [(Role, &str, Role, &str); 6] = [
    (Role::Mh, "wifi", Role::Rwifi, "lan"),
    (Role::Mh, "cell", Role::Rcell, "lan"),
    (Role::Rwifi, "wan", Role::Inet, "to-rwifi"),
    (Role::Rcell, "wan", Role::Inet, "to-rcell"),
    (Role::An, "eth0", Role::Inet, "to-an"),
    (Role::Ch, "eth0", Role::Inet, "to-ch"),
];

/// (role, interface, IPv4/len, IPv6/len).
const ADDRESSES: [(Role, &str, &str, &str); 12] = [
    (Role::Mh, "wifi", "192.168.1.2/24", "fd00:1::2/64"),
    (Role::Mh, "cell", "100.64.0.2/24", "fd00:2::2/64"),
    (Role::Rwifi, "lan", "192.168.1.1/24", "fd00:1::1/64"),
    (Role::Rwifi, "wan", "198.51.100.2/24", "2001:db8:1::2/64"),
    (Role::Rcell, "lan", "100.64.0.1/24", "fd00:2::1/64"),
    (Role::Rcell, "wan", "198.18.0.2/24", "2001:db8:2::2/64"),
    (
        Role::Inet,
        "to-rwifi",
        "198.51.100.1/24",
        "2001:db8:1::1/64",
    ),
    (Role::Inet, "to-rcell", "198.18.0.1/24", "2001:db8:2::1/64"),
    (Role::Inet, "to-an", "203.0.113.1/24", "2001:db8:3::1/64"),
    (Role::Inet, "to-ch", "192.0.2.1/24", "2001:db8:4::1/64"),
    (Role::An, "eth0", "203.0.113.2/24", "2001:db8:3::2/64"),
    (Role::Ch, "eth0", "192.0.2.2/24", "2001:db8:4::2/64"),
];

/// Default routes: (role, device, IPv4 gateway, IPv6 gateway, metric).
const DEFAULT_ROUTES: [(Role, &str, &str, &str, u32); 6] = [
    (Role::Mh, "wifi", "192.168.1.1", "fd00:1::1", 100),
    (Role::Mh, "cell", "100.64.0.1", "fd00:2::1", 200),
    (Role::Rwifi, "wan", "198.51.100.1", "2001:db8:1::1", 100),
    (Role::Rcell, "wan", "198.18.0.1", "2001:db8:2::1", 100),
    (Role::An, "eth0", "203.0.113.1", "2001:db8:3::1", 100),
    (Role::Ch, "eth0", "192.0.2.1", "2001:db8:4::1", 100),
];

/// The NAT routers' table: masquerade whatever leaves `wan`, both families.
const NAT_RULESET: &str = "table inet upmt-lab-nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"wan\" masquerade
    }
}
";

/// A lab network. See the module docs.
#[derive(Debug)]
pub struct Lab {
    name: String,
    id: String,
    /// Namespaces created so far, in creation order; only these are deleted on drop.
    namespaces: Vec<(Role, String)>,
    dir: PathBuf,
    procs: Mutex<Vec<Arc<ProcInner>>>,
    spawn_counter: AtomicU32,
    pub(crate) servers: Mutex<Servers>,
}

impl Lab {
    /// Builds a lab for the test or demo `name` (used for the temp dir, not for namespace
    /// names). Checks privileges and tools first, and sweeps namespaces left by dead processes.
    pub fn new(name: &str) -> Result<Lab> {
        check_environment()?;
        sweep_stale();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}-{}-{n}", std::process::id());
        let safe_name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "{PREFIX}-lab-{}-{n}-{safe_name}",
            std::process::id()
        ));
        fs::create_dir_all(dir.join("logs")).map_err(|source| LabError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut lab = Lab {
            name: name.to_owned(),
            id,
            namespaces: Vec::new(),
            dir,
            procs: Mutex::new(Vec::new()),
            spawn_counter: AtomicU32::new(0),
            servers: Mutex::new(Servers::default()),
        };
        // On error `lab` is dropped here, which removes whatever was built so far.
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        for role in Role::ALL {
            let ns = format!("{}-{}", self.id, role.name());
            exec::run(&["ip", "netns", "add", &ns], None, DEFAULT_TIMEOUT)?;
            self.namespaces.push((role, ns));
        }
        for role in Role::ALL {
            let host = self.host(role);
            host.ip(&["link", "set", "lo", "up"])?;
            // Sysctls first: `default` values apply to interfaces created afterwards.
            // keep_addr_on_down: a link cut and restored keeps its IPv6 address, as IPv4 does.
            let mut sysctls = vec![
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.keep_addr_on_down=1",
                "net.ipv6.conf.default.keep_addr_on_down=1",
            ];
            match role {
                Role::Rwifi | Role::Rcell | Role::Inet => {
                    sysctls.extend(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
                }
                // Replies to traffic sent from one uplink may arrive while the default route
                // points at the other: strict reverse-path filtering would drop them.
                Role::Mh | Role::Mh2 => sysctls.extend([
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ]),
                Role::An | Role::An2 | Role::Ch | Role::Tether => {}
            }
            let mut args = vec!["sysctl", "-q", "-w"];
            args.extend(sysctls);
            host.run(&args)?;
        }
        for (a, if_a, b, if_b) in LINKS {
            let ns_b = self.ns(b).to_owned();
            self.host(a).ip(&[
                "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", &ns_b,
            ])?;
        }
        for (role, ifname, v4, v6) in ADDRESSES {
            let host = self.host(role);
            host.ip(&["-4", "addr", "add", v4, "dev", ifname])?;
            host.ip(&["-6", "addr", "add", v6, "dev", ifname, "nodad"])?;
            host.ip(&["link", "set", ifname, "up"])?;
        }
        for role in Role::ALL {
            self.host(role).restore_default_routes(None)?;
        }
        for role in [Role::Rwifi, Role::Rcell] {
            self.host(role)
                .run_input(&["nft", "-f", "-"], NAT_RULESET.as_bytes())?;
        }
        Ok(())
    }

    /// The name this lab was built for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The common prefix of this lab's namespace names, `upmt-<pid>-<n>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace name of `role`.
    pub fn ns(&self, role: Role) -> &str {
        self.namespaces
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, ns)| ns.as_str())
            // Unreachable for a built lab (every role is created in `build`); an empty name
            // makes any command using it fail loudly rather than act on another namespace.
            .unwrap_or("")
    }

    /// All namespace names of this lab.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.iter().map(|(_, ns)| ns.clone()).collect()
    }

    /// The lab's temp dir (logs under `logs/`, served files under `www/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The machine playing `role`.
    pub fn host(&self, role: Role) -> Host<'_> {
        Host { lab: self, role }
    }

    /// The mobile host.
    pub fn mh(&self) -> Host<'_> {
        self.host(Role::Mh)
    }

    /// The anchor node.
    pub fn an(&self) -> Host<'_> {
        self.host(Role::An)
    }

    /// The correspondent host.
    pub fn ch(&self) -> Host<'_> {
        self.host(Role::Ch)
    }

    /// The Wi-Fi NAT router.
    pub fn rwifi(&self) -> Host<'_> {
        self.host(Role::Rwifi)
    }

    /// The cellular NAT router.
    pub fn rcell(&self) -> Host<'_> {
        self.host(Role::Rcell)
    }

    /// The internet router.
    pub fn inet(&self) -> Host<'_> {
        self.host(Role::Inet)
    }

    /// The second mobile host (after [`Lab::add_second_mh`]).
    pub fn mh2(&self) -> Host<'_> {
        self.host(Role::Mh2)
    }

    /// Adds a second mobile host: namespace `mh2`, its `eth0` (198.19.0.2/24, 2001:db8:5::2/64,
    /// see [`crate::topology::MH2_V4`]) wired to the internet router's `to-mh2`. Built on demand
    /// so the labs that do not need it pay nothing; removed with the lab like the others.
    pub fn add_second_mh(&mut self) -> Result<()> {
        let ns = format!("{}-{}", self.id, Role::Mh2.name());
        exec::run(&["ip", "netns", "add", &ns], None, DEFAULT_TIMEOUT)?;
        self.namespaces.push((Role::Mh2, ns.clone()));
        let mh2 = self.mh2();
        mh2.ip(&["link", "set", "lo", "up"])?;
        mh2.run(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ])?;
        let inet_ns = self.ns(Role::Inet).to_owned();
        mh2.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "to-mh2", "netns", &inet_ns,
        ])?;
        for (host, ifname, v4, v6) in [
            (mh2, "eth0", "198.19.0.2/24", "2001:db8:5::2/64"),
            (self.inet(), "to-mh2", "198.19.0.1/24", "2001:db8:5::1/64"),
        ] {
            host.ip(&["-4", "addr", "add", v4, "dev", ifname])?;
            host.ip(&["-6", "addr", "add", v6, "dev", ifname, "nodad"])?;
            host.ip(&["link", "set", ifname, "up"])?;
        }
        mh2.ip(&[
            "-4",
            "route",
            "replace",
            "default",
            "via",
            "198.19.0.1",
            "dev",
            "eth0",
        ])?;
        mh2.ip(&[
            "-6",
            "route",
            "replace",
            "default",
            "via",
            "2001:db8:5::1",
            "dev",
            "eth0",
        ])?;
        Ok(())
    }

    /// Adds a second anchor node: namespace `an2`, its `eth0` (see
    /// [`crate::topology::AN2_V4`]) wired to the internet router's `to-an2`, reachable from
    /// both uplinks and from the CH like the first. Built on demand; removed with the lab.
    pub fn add_second_an(&mut self) -> Result<()> {
        crate::second_an::build(self)
    }

    /// Records a namespace built on demand, so it is deleted with the lab.
    pub(crate) fn adopt_namespace(&mut self, role: Role) -> Result<()> {
        let ns = format!("{}-{}", self.id, role.name());
        exec::run(&["ip", "netns", "add", &ns], None, DEFAULT_TIMEOUT)?;
        self.namespaces.push((role, ns));
        Ok(())
    }

    fn procs(&self) -> MutexGuard<'_, Vec<Arc<ProcInner>>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every process started in this lab, with its label and log, for printing after a failure.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = fs::read_dir(self.dir.join("logs")) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let text = fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            out.push_str(&format!("===== {} =====\n{text}\n", path.display()));
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let procs: Vec<Arc<ProcInner>> = std::mem::take(&mut *self.procs());
        // SIGTERM everything first so the grace periods run concurrently, not one after another.
        let running: Vec<&Arc<ProcInner>> = procs.iter().filter(|p| p.term()).collect();
        let deadline = Instant::now() + TERM_GRACE;
        for p in &running {
            p.wait_until(deadline);
        }
        for p in &running {
            p.kill_now();
        }
        for (_, ns) in self.namespaces.iter().rev() {
            if let Err(e) = exec::run(&["ip", "netns", "del", ns], None, DEFAULT_TIMEOUT) {
                eprintln!(
                    "upmt lab {}: could not delete namespace {ns}: {e}",
                    self.name
                );
            }
        }
        let _ = fs::remove_dir_all(self.dir.join("www"));
        if std::thread::panicking() {
            eprintln!(
                "upmt lab {}: test failed; process logs kept in {}",
                self.name,
                self.dir.join("logs").display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// One machine of the lab: runs commands in its namespace.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    lab: &'a Lab,
    role: Role,
}

impl<'a> Host<'a> {
    /// The lab this machine belongs to.
    pub fn lab(&self) -> &'a Lab {
        self.lab
    }

    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Its namespace's name.
    pub fn ns(&self) -> &'a str {
        self.lab.ns(self.role)
    }

    /// A command to run in this namespace; configure it, then `.run()` or `.spawn()`.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Cmd<'a> {
        Cmd {
            host: Host {
                lab: self.lab,
                role: self.role,
            },
            args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
            argv0: None,
            env: Vec::new(),
            label: None,
            input: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Runs `args` here to completion (within [`DEFAULT_TIMEOUT`]); an error with its stderr
    /// if it fails.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        self.command(args).run()
    }

    /// Like [`Host::run`] with a timeout.
    pub fn run_timeout<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> Result<Output> {
        self.command(args).timeout(timeout).run()
    }

    /// Like [`Host::run`], feeding `input` on stdin.
    pub fn run_input<S: AsRef<OsStr>>(&self, args: &[S], input: &[u8]) -> Result<Output> {
        self.command(args).input(input).run()
    }

    /// Runs `args` here and returns its stdout as text.
    pub fn run_stdout<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = self.run(args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `args` here in the background (see [`Cmd::spawn`]).
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<ProcHandle> {
        self.command(args).spawn()
    }

    /// (Re)installs this host's default routes of the lab's plan, those through `dev` only when
    /// given. The kernel deletes a link's routes when it goes down; this plays the part of the
    /// DHCP client or router advertisement that brings them back.
    pub fn restore_default_routes(&self, dev: Option<&str>) -> Result<()> {
        for (role, route_dev, gw4, gw6, metric) in DEFAULT_ROUTES {
            if role != self.role || dev.is_some_and(|d| d != route_dev) {
                continue;
            }
            let metric = metric.to_string();
            for gw in [gw4, gw6] {
                let fam = if gw.contains(':') { "-6" } else { "-4" };
                self.ip(&[
                    fam, "route", "replace", "default", "via", gw, "dev", route_dev, "metric",
                    &metric,
                ])?;
            }
        }
        Ok(())
    }

    /// Runs `ip -n NS args...` (faster than `ip netns exec NS ip ...`).
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        let mut full: Vec<OsString> = vec!["ip".into(), "-n".into(), self.ns().into()];
        full.extend(args.iter().map(|a| a.as_ref().to_owned()));
        exec::run(&full, None, DEFAULT_TIMEOUT)
    }
}

/// A command to run in a namespace, built by [`Host::command`].
#[derive(Debug)]
#[must_use = "a Cmd does nothing until .run() or .spawn()"]
pub struct Cmd<'a> {
    host: Host<'a>,
    args: Vec<OsString>,
    argv0: Option<OsString>,
    env: Vec<(OsString, OsString)>,
    label: Option<String>,
    input: Option<Vec<u8>>,
    timeout: Duration,
}

impl<'a> Cmd<'a> {
    /// Runs the program with this `argv[0]` (what `/proc/PID/cmdline` shows, so the MH daemon
    /// attributes its flows to this "app").
    pub fn argv0(mut self, name: impl AsRef<OsStr>) -> Self {
        self.argv0 = Some(name.as_ref().to_owned());
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Names the log file of a spawned process (default: the program's name).
    pub fn label(mut self, label: &str) -> Self {
        self.label = Some(label.to_owned());
        self
    }

    /// Feeds `input` on stdin ([`Cmd::run`] only).
    pub fn input(mut self, input: &[u8]) -> Self {
        self.input = Some(input.to_vec());
        self
    }

    /// Timeout of [`Cmd::run`] (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The full command line: `ip netns exec NS [bash -c 'exec -a "$0" "$@"' ARGV0] args...`.
    fn full_args(&self) -> Result<Vec<OsString>> {
        let program = self
            .args
            .first()
            .ok_or_else(|| LabError::Invalid("empty command line".into()))?;
        let program_str = program.to_string_lossy();
        if which(&program_str).is_none() {
            return Err(LabError::Missing {
                what: format!("the program `{program_str}`"),
                hint: "install it or put it on PATH".into(),
            });
        }
        let mut full: Vec<OsString> = vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.host.ns().into(),
        ];
        if let Some(argv0) = &self.argv0 {
            // `ip netns exec` execs its argument in place, so argv[0] must be set by a shell
            // that execs the program again; bash's `exec -a` does exactly that, keeping the pid.
            full.extend(
                ["bash", "-c", "exec -a \"$0\" \"$@\""]
                    .iter()
                    .map(OsString::from),
            );
            full.push(argv0.clone());
        }
        full.extend(self.args.iter().cloned());
        Ok(full)
    }

    /// Runs it to completion; an error carrying its stderr when it fails or times out.
    pub fn run(self) -> Result<Output> {
        let args = self.run_args()?;
        exec::run(&args, self.input.as_deref(), self.timeout)
    }

    /// Runs it to completion and returns its output whatever its exit status.
    pub fn run_unchecked(self) -> Result<Output> {
        let args = self.run_args()?;
        exec::run_unchecked(&args, self.input.as_deref(), self.timeout)
    }

    fn run_args(&self) -> Result<Vec<OsString>> {
        let full = self.full_args()?;
        if self.env.is_empty() {
            return Ok(full);
        }
        // `env` keeps the environment and adds ours; `ip netns exec` passes it through.
        let mut with_env: Vec<OsString> = vec!["env".into()];
        for (k, v) in &self.env {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            with_env.push(kv);
        }
        with_env.extend(full);
        Ok(with_env)
    }

    /// Starts it in the background in its own process group, stdout and stderr appended to
    /// `logs/<n>-<role>-<label>.log` in the lab's dir. The lab stops it when the lab is dropped
    /// if the handle has not already.
    pub fn spawn(self) -> Result<ProcHandle> {
        use std::os::unix::process::CommandExt;
        let full = self.full_args()?;
        let lab = self.host.lab;
        let label = self.label.clone().unwrap_or_else(|| {
            let name = self.argv0.as_ref().unwrap_or(&self.args[0]);
            Path::new(name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "proc".into())
        });
        let safe_label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let n = lab.spawn_counter.fetch_add(1, Ordering::Relaxed);
        let log_path = lab
            .dir
            .join("logs")
            .join(format!("{n:03}-{}-{safe_label}.log", self.host.role.name()));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| LabError::Io {
                path: log_path.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| LabError::Io {
            path: log_path.clone(),
            source,
        })?;
        let mut cmd = Command::new(&full[0]);
        cmd.args(&full[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own group: Ctrl-C in a terminal does not reach it before the lab can stop it
            // in order, and stopping it also stops anything it forked.
            .process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let cmdline = display_cmd(&full);
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            cmd: cmdline.clone(),
            source,
        })?;
        let inner = Arc::new(ProcInner::new(child, label, cmdline, log_path));
        lab.procs().push(Arc::clone(&inner));
        Ok(ProcHandle::new(inner))
    }
}

/// Checks that this machine can host a lab: root, `ip`, `nft`, `/dev/net/tun`.
pub fn check_environment() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::Missing {
            what: "root privileges".into(),
            hint: "network namespaces need CAP_NET_ADMIN: run as root (e.g. sudo -E)".into(),
        });
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if which(tool).is_none() {
            return Err(LabError::Missing {
                what: format!("the `{tool}` command"),
                hint: format!("install the {package} package"),
            });
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(LabError::Missing {
            what: "/dev/net/tun".into(),
            hint: "load the tun kernel module (modprobe tun)".into(),
        });
    }
    Ok(())
}

/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// Parses `upmt-<pid>-<n>-<role>` into the pid, for this crate's namespace names only.
fn lab_ns_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
    let mut parts = rest.splitn(3, '-');
    let pid: i32 = parts.next()?.parse().ok()?;
    let n = parts.next()?;
    let role = parts.next()?;
    (n.parse::<u32>().is_ok() && Role::from_name(role).is_some() && pid > 0).then_some(pid)
}

/// Parses `upmt-lab-<pid>-<n>-<name>` (a lab temp dir) into the pid.
fn lab_dir_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix("-lab-")?;
    let mut parts = rest.splitn(3, '-');
    let pid: i32 = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    (pid > 0).then_some(pid)
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission; it sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Deletes lab namespaces (`upmt-<pid>-<n>-<role>`) and lab temp dirs whose creating process is
/// gone, left by runs that crashed or were killed before their cleanup ran. Touches nothing
/// else. Returns the names removed.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = lab_ns_pid(&name)
                && pid != me
                && !pid_alive(pid)
                && exec::run(&["ip", "netns", "del", &name], None, DEFAULT_TIMEOUT).is_ok()
            {
                removed.push(name);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = lab_dir_pid(&name)
                && pid != me
                && !pid_alive(pid)
                && fs::remove_dir_all(entry.path()).is_ok()
            {
                removed.push(name);
            }
        }
    }
    removed
}

/// The namespaces that currently exist (`ip netns list`, names only).
pub fn list_namespaces() -> Result<Vec<String>> {
    let out = exec::run(&["ip", "netns", "list"], None, DEFAULT_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_namespace_names_are_recognised_and_others_are_not() {
        assert_eq!(lab_ns_pid("upmt-1234-0-mh"), Some(1234));
        assert_eq!(lab_ns_pid("upmt-1234-12-rwifi"), Some(1234));
        assert_eq!(lab_ns_pid("upmt-1234-0-mh2"), Some(1234));
        assert_eq!(lab_ns_pid("upmt-1234-0-other"), None);
        assert_eq!(lab_ns_pid("upmt-x-0-mh"), None);
        assert_eq!(lab_ns_pid("upmt-1234-mh"), None);
        assert_eq!(lab_ns_pid("someone-else-1234-0-mh"), None);
    }

    #[test]
    fn lab_dir_names_are_recognised_and_others_are_not() {
        assert_eq!(lab_dir_pid("upmt-lab-77-3-curl_download"), Some(77));
        assert_eq!(lab_dir_pid("upmt-lab-77-x-curl"), None);
        assert_eq!(lab_dir_pid("upmt-77-3-mh"), None);
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        for (_, a, _, b) in LINKS {
            assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        }
    }

    #[test]
    fn every_role_round_trips_through_its_name() {
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
    }
}
