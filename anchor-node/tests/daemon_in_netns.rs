//! Runs the real `upmt-an` binary inside a network namespace this test creates: the TUN, the
//! forwarding knob, the nftables table, the counters on the metrics endpoint, a clear error
//! for a port in use, the drop to an unprivileged user with only CAP_NET_ADMIN, the refusal of
//! a world-readable key, and cleanup at SIGTERM.
//!
//! Needs root (it creates namespaces); skipped with a message otherwise. Everything happens in a
//! namespace named after this process, deleted by a guard even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_upmt-an");
const PEER_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const AN_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// A network namespace deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("upmtan-{tag}-{}", std::process::id());
        // A namespace left by an earlier crashed run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(out.status.success(), "ip netns add: {}", stderr(&out));
        Netns { name }
    }

    /// Runs `argv` inside the namespace and returns its output.
    fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("run ip netns exec")
    }

    fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(out.status.success(), "{argv:?} failed: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A daemon process killed (by its pid) on drop if still running.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(ns: &Netns, config: &Path, log: PathBuf) -> Daemon {
        let log_file = std::fs::File::create(&log).expect("create log");
        // `ip netns exec` execs the command, so the child's pid is the daemon's.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, BIN, "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn upmt-an");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "upmt-an exited ({status}) before {needle:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no {needle:?} in the log within 20 s:\n{}", self.log());
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "upmt-an still running after {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill failed");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("upmt-an-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write_config(dir: &Path, name: &str, tun: &str, metrics: bool) -> PathBuf {
    let path = dir.join(name);
    let metrics = if metrics {
        "metrics = \"127.0.0.1:9100\"\n"
    } else {
        ""
    };
    let text = format!(
        "listen = \"0.0.0.0:51900\"\nprivate_key = \"{AN_KEY}\"\ntun = \"{tun}\"\n\
         subnet = \"10.77.0.0/24\"\nsubnet6 = \"fd77::/64\"\negress = \"eg0\"\nmtu = 1400\n{metrics}\n\
         control_socket = \"{name}.sock\"\n\
         [[peer]]\nname = \"phone\"\npublic_key = \"{PEER_KEY}\"\naddress = \"10.77.0.2\"\n"
    );
    write_private(&path, &text);
    path
}

/// Writes `text` readable by its owner only, as a file holding a private key must be.
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("write config");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// `Name:\tvalue` lines of `/proc/<pid>/status` (or of one of its threads).
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .trim()
        .to_owned()
}

/// Sends each hex-encoded payload as one UDP datagram to the daemon, from inside the namespace.
fn send_datagrams(ns: &Netns, payloads_hex: &[&str]) {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for p in {payloads_hex:?}:\n    s.sendto(bytes.fromhex(p), ('192.0.2.1', 51900))\n"
    );
    ns.exec_ok(&["python3", "-c", &script]);
}

fn scrape(ns: &Netns) -> String {
    let script = "import urllib.request\n\
                  print(urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=5).read().decode())";
    ns.exec_ok(&["python3", "-c", script])
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn the_daemon_sets_up_its_tun_and_nat_receives_and_cleans_up_at_sigterm() {
    if !is_root() {
        eprintln!("skipped: needs root to create network namespaces");
        return;
    }
    let ns = Netns::new("main");
    ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
    // No dummy module on every kernel: a veth pair with both ends in the namespace.
    ns.exec_ok(&[
        "ip", "link", "add", "eg0", "type", "veth", "peer", "name", "eg1",
    ]);
    ns.exec_ok(&["ip", "addr", "add", "192.0.2.1/24", "dev", "eg0"]);
    ns.exec_ok(&["ip", "link", "set", "eg0", "up"]);

    let dir = temp_dir("main");
    let config = write_config(&dir, "an.toml", "upmtt0", true);
    let mut daemon = Daemon::start(&ns, &config, dir.join("an.log"));
    daemon.wait_for_log("anchor node up");

    // The TUN exists, is up, and has the anchor's addresses and the configured MTU.
    let link = ns.exec_ok(&["ip", "-o", "link", "show", "dev", "upmtt0"]);
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains(",UP"), "{link}");
    let addrs = ns.exec_ok(&["ip", "-o", "addr", "show", "dev", "upmtt0"]);
    assert!(addrs.contains("inet 10.77.0.1/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd77::1/64"), "{addrs}");

    // Forwarding is on and the NAT table is installed, in this namespace only.
    assert_eq!(
        ns.exec_ok(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    assert_eq!(
        ns.exec_ok(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
            .trim(),
        "1"
    );
    // The egress keeps accepting router advertisements (a SLAAC default route) although IPv6
    // forwarding is on, and the log says so.
    assert_eq!(
        ns.exec_ok(&["cat", "/proc/sys/net/ipv6/conf/eg0/accept_ra"])
            .trim(),
        "2"
    );
    assert!(daemon.log().contains("set accept_ra = 2 on the egress"));
    let table = ns.exec_ok(&["nft", "list", "table", "inet", "upmt_upmtt0"]);
    assert!(
        table.contains("oifname \"eg0\" ip saddr 10.77.0.0/24 masquerade"),
        "{table}"
    );
    assert!(table.contains("maxseg size set rt mtu"), "{table}");

    // Setup done, every thread runs as nobody with exactly CAP_NET_ADMIN (the port is not
    // privileged), nothing inheritable or ambient.
    assert!(
        daemon.log().contains("dropped privileges"),
        "{}",
        daemon.log()
    );
    let tasks = std::fs::read_dir(format!("/proc/{}/task", daemon.child.id())).expect("tasks");
    for task in tasks {
        let status = std::fs::read_to_string(task.expect("task").path().join("status"))
            .expect("task status");
        let uids = status_field(&status, "Uid");
        assert!(uids.split_whitespace().all(|u| u == "65534"), "uids {uids}");
        let gids = status_field(&status, "Gid");
        assert!(gids.split_whitespace().all(|g| g != "0"), "gids {gids}");
        assert_eq!(status_field(&status, "Groups"), "");
        assert_eq!(status_field(&status, "CapEff"), "0000000000001000");
        assert_eq!(status_field(&status, "CapPrm"), "0000000000001000");
        assert_eq!(status_field(&status, "CapInh"), "0000000000000000");
        assert_eq!(status_field(&status, "CapAmb"), "0000000000000000");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    }

    // The control socket, bound before the drop, still answers root afterwards.
    let socket = dir.join("an.toml.sock");
    let show = ns.exec_ok(&[
        BIN,
        "show",
        "--socket",
        socket.to_str().expect("utf-8 path"),
    ]);
    assert!(show.contains("peer phone: not connected"), "{show}");
    assert!(
        show.contains("anchor upmtt0: listening on 0.0.0.0:51900"),
        "{show}"
    );
    // SIGHUP makes the daemon read its config itself, which nobody cannot (0600, root's): it
    // says so and keeps running; `upmt-an reload`, run by root, reads it and applies it.
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("SIGHUP: cannot reload");
    let reloaded = ns.exec_ok(&[
        BIN,
        "reload",
        "--config",
        config.to_str().expect("utf-8 path"),
    ]);
    assert!(
        reloaded.contains("0 added, 0 removed, 1 unchanged"),
        "{reloaded}"
    );
    // `down` refuses while the daemon runs and touches nothing.
    let refused = ns.exec(&[
        BIN,
        "down",
        "--config",
        config.to_str().expect("utf-8 path"),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("an upmt-an is running on"),
        "{}",
        stderr(&refused)
    );

    // The tunnel socket's buffers were forced to 8 MiB (the kernel reports twice that).
    let sockets = ns.exec_ok(&["ss", "-uamn", "sport = :51900"]);
    assert!(sockets.contains("rb16777216"), "{sockets}");
    assert!(sockets.contains("tb16777216"), "{sockets}");

    // A second daemon on the same port fails with one clear line and leaves the first alone.
    let config2 = write_config(&dir, "an2.toml", "upmtt1", false);
    let second = ns.exec(&[
        BIN,
        "run",
        "--config",
        config2.to_str().expect("utf-8 path"),
    ]);
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(
        err.contains("udp port 0.0.0.0:51900 is already in use"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "expected one line, got:\n{err}");

    // Garbage (version 15) and a truncated data packet (version 1, kind 3, nothing else).
    send_datagrams(&ns, &["ffffffffffffffffffffffffffffffffffff", "13"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape(&ns);
        if metric(&text, "upmt_udp_rx_datagrams_total") == Some(2) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        metric(&text, "upmt_udp_rx_datagrams_total"),
        Some(2),
        "{text}"
    );
    assert_eq!(
        metric(&text, "upmt_peer_connected{peer=\"phone\"}"),
        Some(0),
        "{text}"
    );
    // The isolation counters are read over netlink by the unprivileged daemon.
    for rule in ["peer_to_peer", "to_host", "private_egress"] {
        assert_eq!(
            metric(
                &text,
                &format!("upmt_isolation_dropped_packets_total{{rule=\"{rule}\"}}")
            ),
            Some(0),
            "{text}"
        );
    }
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "daemon died:\n{}",
        daemon.log()
    );

    // SIGTERM: clean exit; the table and the TUN stay, so a restart keeps the NAT state.
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status}:\n{}", daemon.log());
    let kept = ns.exec(&["nft", "list", "table", "inet", "upmt_upmtt0"]);
    assert!(kept.status.success(), "table removed at SIGTERM");
    let tun = ns.exec(&["ip", "link", "show", "dev", "upmtt0"]);
    assert!(tun.status.success(), "tun removed at SIGTERM");
    // After the stop, `down` removes both (and the socket file nobody could not remove from
    // root's directory).
    let down = ns.exec_ok(&[
        BIN,
        "down",
        "--config",
        config.to_str().expect("utf-8 path"),
    ]);
    assert!(
        down.contains("removed nftables table inet upmt_upmtt0"),
        "{down}"
    );
    assert!(down.contains("removed tun upmtt0"), "{down}");
    assert!(
        !ns.exec(&["ip", "link", "show", "dev", "upmtt0"])
            .status
            .success()
    );
    assert!(
        !ns.exec(&["nft", "list", "table", "inet", "upmt_upmtt0"])
            .status
            .success()
    );
    assert!(!socket.exists(), "the control socket is gone");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_and_truncated_datagrams_are_counted_by_reason() {
    if !is_root() {
        eprintln!("skipped: needs root to create network namespaces");
        return;
    }
    let ns = Netns::new("drops");
    ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
    ns.exec_ok(&[
        "ip", "link", "add", "eg0", "type", "veth", "peer", "name", "eg1",
    ]);
    ns.exec_ok(&["ip", "addr", "add", "192.0.2.1/24", "dev", "eg0"]);
    ns.exec_ok(&["ip", "link", "set", "eg0", "up"]);
    let dir = temp_dir("drops");
    let config = write_config(&dir, "an.toml", "upmtt0", true);
    let mut daemon = Daemon::start(&ns, &config, dir.join("an.log"));
    daemon.wait_for_log("anchor node up");

    // Version 15 garbage, a truncated data packet (version 1, kind 3, nothing else) and an
    // empty datagram.
    send_datagrams(&ns, &["ffffffffffffffffffffffffffffffffffff", "13", ""]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape(&ns);
        if metric(&text, "upmt_udp_rx_datagrams_total") == Some(3) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        metric(&text, "upmt_drops_total{reason=\"bad_version\"}"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(&text, "upmt_drops_total{reason=\"truncated\"}"),
        Some(2),
        "{text}"
    );
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("dropped datagram"),
        "{}",
        daemon.log()
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stale_table_from_a_crashed_run_is_replaced_at_start() {
    if !is_root() {
        eprintln!("skipped: needs root to create network namespaces");
        return;
    }
    let ns = Netns::new("stale");
    ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
    // No dummy module on every kernel: a veth pair with both ends in the namespace.
    ns.exec_ok(&[
        "ip", "link", "add", "eg0", "type", "veth", "peer", "name", "eg1",
    ]);
    ns.exec_ok(&["ip", "link", "set", "eg0", "up"]);
    ns.exec_ok(&[
        "nft",
        "add table inet upmt_upmtt0; add chain inet upmt_upmtt0 leftover",
    ]);

    let dir = temp_dir("stale");
    let config = write_config(&dir, "an.toml", "upmtt0", false);
    let mut daemon = Daemon::start(&ns, &config, dir.join("an.log"));
    daemon.wait_for_log("anchor node up");
    assert!(daemon.log().contains("replacing a stale nftables table"));
    let table = ns.exec_ok(&["nft", "list", "table", "inet", "upmt_upmtt0"]);
    assert!(!table.contains("leftover"), "{table}");
    assert!(table.contains("masquerade"), "{table}");

    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    // A second run attaches to the persistent TUN (with its IPv6 address already there) and
    // replaces the table it finds.
    let mut again = Daemon::start(&ns, &config, dir.join("an2.log"));
    again.wait_for_log("anchor node up");
    let table = ns.exec_ok(&["nft", "list", "table", "inet", "upmt_upmtt0"]);
    assert!(table.contains("masquerade"), "{table}");
    again.signal(libc::SIGINT);
    assert!(again.wait_exit(Duration::from_secs(10)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unprivileged_run_fails_with_one_line_naming_the_privilege() {
    if !is_root() || Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and setpriv to drop privileges");
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            BIN,
            "run",
            "--config",
            "/nonexistent.toml",
        ])
        .output()
        .expect("run setpriv");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("missing privilege: CAP_NET_ADMIN"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_world_readable_key_is_refused_in_one_line_before_anything_is_set_up() {
    if !is_root() {
        eprintln!("skipped: needs root to create network namespaces");
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let ns = Netns::new("keymode");
    let dir = temp_dir("keymode");
    let config = write_config(&dir, "an.toml", "upmtt0", false);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = ns.exec(&[BIN, "run", "--config", config.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "is open to group or others (mode 0644), so the key may be known: run `chmod 600 {}`",
            config.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        !ns.exec(&["ip", "link", "show", "dev", "upmtt0"])
            .status
            .success()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
