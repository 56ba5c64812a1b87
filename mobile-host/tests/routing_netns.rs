//! Routing scheme against a real kernel, inside a network namespace made for each test (unique
//! name, deleted by a Drop guard, also on failure). Runs the `route_probe` example's code there —
//! this test binary re-executed with `ip netns exec`, so no other build step is needed — and
//! checks what it and `ip rule` / `ip route` report. Needs root; skipped with a message otherwise.

#[allow(dead_code)]
#[path = "../examples/route_probe.rs"]
mod route_probe;

/// netd's rules, shared with the lab's android profile (no dependencies of its own).
#[allow(dead_code)]
#[path = "../../tests/src/netd.rs"]
mod netd;

/// Set in the re-executed child: the probe's spec (`MODE[,OPTION...]`, see route_probe.rs).
const PROBE_ENV: &str = "UPMT_ROUTE_PROBE";

/// The child side: does nothing unless run by [`run_probe`] inside a namespace.
#[test]
#[ignore = "helper: run by the other tests inside a namespace"]
fn probe_child() {
    let Ok(spec) = std::env::var(PROBE_ENV) else {
        return;
    };
    // libtest prints "test probe_child ... " without a newline first.
    println!();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(route_probe::probe(&spec)).expect("probe");
}

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "upmt-mh-rt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?
            .success();
        ok.then_some(Netns(name))
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn setup() -> Option<Netns> {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return None;
    }
    Netns::new()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run_probe(ns: &Netns, spec: &str) -> String {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            "probe_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, spec)
        .output()
        .expect("run ip netns exec");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "route probe {spec} failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn routing_is_installed_then_removed_without_leftovers() {
    let Some(ns) = setup() else { return };
    let out = run_probe(&ns, "full");
    let lines: Vec<&str> = out.lines().collect();
    let has = |l: &str| lines.contains(&l);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("tun upmtprobe0 ") && l.ends_with(" mtu 1380")),
        "{out}"
    );
    for family in ["v4", "v6"] {
        assert!(
            has(&format!(
                "installed rule {family} 5549: from all suppress_prefixlength 0 lookup main"
            )),
            "{out}"
        );
        assert!(
            has(&format!(
                "installed rule {family} 5548: from all fwmark 0x0/0x5550 ipproto udp dport 53 lookup 5550"
            )),
            "{out}"
        );
        assert!(
            has(&format!(
                "installed rule {family} 5550: not from all fwmark 0x5550 lookup 5550"
            )),
            "{out}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("installed route v4 default dev #") && l.ends_with("table 5550")), "{out}");
    // No IPv6 in the session: IPv6 is unreachable in the table, not leaked; IPv4 has the
    // same beneath the TUN's route, for when the TUN is gone.
    assert!(
        has("installed route v6 unreachable default table 5550"),
        "{out}"
    );
    assert!(
        has("installed route v4 unreachable default table 5550"),
        "{out}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("after ")),
        "leftovers:\n{out}"
    );
    assert!(!ns.ip(&["rule"]).contains("5548"), "{}", ns.ip(&["rule"]));
    // Five rules per family, two unreachable defaults, the TUN's IPv4 default.
    assert!(has("removed 13"), "{out}");
    // The kernel agrees, independently of our own parsing.
    assert!(!ns.ip(&["rule"]).contains("5550"), "{}", ns.ip(&["rule"]));
    assert!(!ns.ip(&["-6", "rule"]).contains("5550"));
    assert_eq!(ns.ip(&["-6", "route", "show", "table", "5550"]).trim(), "");
}

#[test]
fn a_session_with_ipv6_routes_ipv6_into_the_tun() {
    let Some(ns) = setup() else { return };
    let out = run_probe(&ns, "full,v6");
    assert!(
        out.lines()
            .any(|l| l.starts_with("installed route v6 default dev #")),
        "{out}"
    );
    // The unreachable default stays beneath it, for when the TUN is gone.
    assert!(
        out.lines()
            .any(|l| l == "installed route v6 unreachable default table 5550"),
        "{out}"
    );
}

#[test]
fn leftovers_of_a_crashed_run_are_removed_by_the_next_start() {
    let Some(ns) = setup() else { return };
    ns.ip(&["link", "set", "lo", "up"]);
    veth(&ns, "wlan0", "192.168.1.5/24");
    ns.ip(&["route", "add", "default", "via", "192.168.1.1"]);
    assert!(route_get(&ns, &["203.0.113.9"]).is_ok(), "the clear path");
    run_probe(&ns, "install");
    // The probe exited without cleanup: its rules are still there (the TUN, and so the routes
    // through it, went away with its fd).
    let rules = ns.ip(&["rule"]);
    assert!(
        rules.contains("5550:\tnot from all fwmark 0x5550 lookup 5550"),
        "{rules}"
    );
    assert!(
        rules.contains("5549:\tfrom all lookup main suppress_prefixlength 0"),
        "{rules}"
    );
    assert!(
        ns.ip(&["-6", "route", "show", "table", "5550"])
            .contains("unreachable default")
    );
    // Fail closed: the TUN is gone, its route with it, and IPv4 finds no path either.
    assert!(
        ns.ip(&["route", "show", "table", "5550"])
            .contains("unreachable default"),
        "{}",
        ns.ip(&["route", "show", "table", "5550"])
    );
    assert!(route_get(&ns, &["203.0.113.9"]).is_err());

    let out = run_probe(&ns, "cleanup");
    assert!(
        out.lines()
            .any(|l| l.starts_with("removed ") && l != "removed 0"),
        "{out}"
    );
    assert!(!out.contains("after "), "{out}");
    assert!(!ns.ip(&["rule"]).contains("5550"));
    assert!(!ns.ip(&["-6", "rule"]).contains("5550"));
    assert_eq!(ns.ip(&["-6", "route", "show", "table", "5550"]).trim(), "");
    assert!(
        route_get(&ns, &["203.0.113.9"]).is_ok(),
        "the clear path is back"
    );
}

/// `ip route get ARGS` in the namespace: its output, or the kernel's refusal.
fn route_get(ns: &Netns, args: &[&str]) -> Result<String, String> {
    route_get_family(ns, "-4", args)
}

fn route_get_family(ns: &Netns, family: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["-n", &ns.0, family, "route", "get"])
        .args(args)
        .output()
        .expect("run ip");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A veth `name` with `addr`, up with carrier (its peer stays in the namespace, unaddressed).
/// Returns its interface index.
fn veth(ns: &Netns, name: &str, addr: &str) -> u32 {
    let peer = format!("{name}p");
    ns.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ns.ip(&["addr", "add", addr, "dev", name]);
    ns.ip(&["link", "set", &peer, "up"]);
    ns.ip(&["link", "set", name, "up"]);
    let index = ns.ip(&["-o", "link", "show", name]);
    index
        .split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .expect("ifindex")
}

/// An Android-shaped namespace, as netd lays it out (DESIGN.md, "Android facts"): wlan0 (the
/// default network, netId 100) and rmnet_data0 (netId 101) with their routes only in their own
/// tables (ifindex + 1000), a tethering downstream tether0 whose clients leave by cellular,
/// netd's rules at their priorities, and no `lookup main` / `lookup default`.
struct Android {
    ns: Netns,
    wlan: u32,
    rmnet: u32,
}

const APP_UID: &str = "10100";
const BYPASS_UID: &str = "10123";

impl Android {
    fn new() -> Option<Android> {
        let ns = setup()?;
        ns.ip(&["link", "set", "lo", "up"]);
        let wlan = veth(&ns, "wlan0", "192.168.1.5/24") + 1000;
        let rmnet = veth(&ns, "rmnet_data0", "10.20.0.5/24") + 1000;
        veth(&ns, "tether0", "192.168.42.1/24");
        ns.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:1::5/64",
            "dev",
            "wlan0",
            "nodad",
        ]);
        for (table, dev, net, gw) in [
            (wlan, "wlan0", "192.168.1.0/24", "192.168.1.1"),
            (rmnet, "rmnet_data0", "10.20.0.0/24", "10.20.0.1"),
        ] {
            let t = table.to_string();
            ns.ip(&["route", "add", net, "dev", dev, "table", &t]);
            ns.ip(&[
                "route", "add", "default", "via", gw, "dev", dev, "table", &t,
            ]);
        }
        let t = wlan.to_string();
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:1::1",
            "dev",
            "wlan0",
            "table",
            &t,
        ]);
        // Forwarding, so a tethered client's packet can be looked up as netd routes it.
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .expect("sysctl")
            .success();
        assert!(ok, "ip_forward");
        let a = Android { ns, wlan, rmnet };
        for family in ["-4", "-6"] {
            a.ns.ip(&[family, "rule", "del", "pref", "32766"]);
        }
        // IPv6 has no `lookup default` rule to begin with.
        a.ns.ip(&["-4", "rule", "del", "pref", "32767"]);
        a.netd_rules();
        Some(a)
    }

    fn netd_rules(&self) {
        netd_rules(&self.ns.0, self.wlan, self.rmnet);
    }

    /// Where an app's packet to the internet goes (`uid`, optional extra selectors).
    fn get(&self, args: &[&str]) -> Result<String, String> {
        route_get(&self.ns, args)
    }

    /// Our rules in `ip rule` (one family), as the kernel lists them.
    fn ours(&self, family: &str) -> Vec<String> {
        self.ns
            .ip(&[family, "rule"])
            .lines()
            .filter(|l| netd::in_mh_band(l))
            .map(str::to_owned)
            .collect()
    }
}

/// netd's rules (Android 13-15), as it writes them again after a restart: wlan0 (netId 100) the
/// default network, rmnet_data0 (netId 101) the upstream of tether0.
fn netd_rules(ns: &str, wlan: u32, rmnet: u32) {
    let networks = [
        netd::Network {
            ifname: "wlan0",
            table: wlan,
            net_id: 100,
        },
        netd::Network {
            ifname: "rmnet_data0",
            table: rmnet,
            net_id: 101,
        },
    ];
    let rules = netd::rules(&networks, 0, Some(("tether0", 1)));
    for family in ["-4", "-6"] {
        for rule in &rules {
            let mut args = vec![family, "rule", "add"];
            args.extend(rule.iter().map(String::as_str));
            ns_ip(ns, &args);
        }
    }
}

fn ns_ip(ns: &str, args: &[&str]) {
    let ok = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .status()
        .expect("run ip")
        .success();
    assert!(ok, "ip {args:?}");
}

/// The probe in `keep` mode, killed by closing its stdin (it then removes its routing).
struct Keeper {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Keeper {
    fn start(ns: &Netns, spec: &str) -> Keeper {
        use std::io::BufRead as _;
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(exe)
            .args([
                "--ignored",
                "--exact",
                "probe_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PROBE_ENV, spec)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the probe");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let k = Keeper { child, lines };
        k.wait_for(|l| l == "ready", "ready");
        k
    }

    fn wait_for(&self, want: impl Fn(&str) -> bool, what: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = want(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "the probe never printed {what}; it printed:\n{}",
            seen.join("\n")
        );
    }

    /// Closes stdin: the probe removes its routing and exits; its remaining output.
    fn stop(mut self) -> Vec<String> {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait");
        let rest: Vec<String> = self.lines.try_iter().collect();
        assert!(status.success(), "probe failed:\n{}", rest.join("\n"));
        rest
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Only when a test failed before stop(): this child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn android_app_traffic_enters_the_tun_and_netds_own_traffic_does_not() {
    let Some(a) = Android::new() else { return };
    let before = a.ns.ip(&["rule"]);
    let keeper = Keeper::start(&a.ns, &format!("keep,android,bypass={BYPASS_UID}"));
    println!(
        "ip rule before:\n{before}\nip rule after:\n{}",
        a.ns.ip(&["rule"])
    );
    let w = format!("table {}", a.wlan);
    let into_tun = |out: &Result<String, String>| {
        out.as_ref()
            .is_ok_and(|o| o.contains("dev upmtprobe0") && o.contains("table 555"))
    };
    // An app, unmarked or with the default network's implicit mark.
    for extra in [vec![], vec!["mark", "0x64"]] {
        let mut args = vec!["8.8.8.8", "uid", APP_UID];
        args.extend(extra);
        let out = a.get(&args);
        assert!(into_tun(&out), "{args:?}: {out:?}");
    }
    // Explicitly selected and protected traffic (our own sockets too) goes by netd's rules.
    for mark in ["0x10064", "0x10000", "0x20000"] {
        let out = a.get(&["8.8.8.8", "uid", APP_UID, "mark", mark]);
        assert!(
            out.as_ref()
                .is_ok_and(|o| o.contains("dev wlan0") && o.contains(&w)),
            "mark {mark}: {out:?}"
        );
    }
    let out = a.get(&[
        "8.8.8.8",
        "uid",
        "0",
        "mark",
        "0x20000",
        "oif",
        "rmnet_data0",
    ]);
    assert!(
        out.as_ref().is_ok_and(|o| o.contains("dev rmnet_data0")),
        "{out:?}"
    );
    // A bypass app leaves by netd's default network, not by an empty main table.
    let out = a.get(&["8.8.8.8", "uid", BYPASS_UID]);
    assert!(
        out.as_ref()
            .is_ok_and(|o| o.contains("dev wlan0") && o.contains(&w)),
        "{out:?}"
    );
    // A tethered client's packet goes by netd's tethering rule.
    let out = a.get(&["8.8.8.8", "from", "192.168.42.7", "iif", "tether0"]);
    assert!(
        out.as_ref().is_ok_and(|o| o.contains("dev rmnet_data0")),
        "{out:?}"
    );
    // The local subnet stays direct...
    let out = a.get(&["192.168.1.20", "uid", APP_UID]);
    assert!(
        out.as_ref()
            .is_ok_and(|o| o.contains("dev wlan0") && !o.contains("upmtprobe0")),
        "{out:?}"
    );
    // ...but DNS to the on-link resolver goes into the tunnel.
    for proto in ["udp", "tcp"] {
        let out = a.get(&[
            "192.168.1.1",
            "uid",
            APP_UID,
            "ipproto",
            proto,
            "dport",
            "53",
        ]);
        assert!(into_tun(&out), "{proto} 53: {out:?}");
    }
    let out = a.get(&[
        "192.168.1.1",
        "uid",
        APP_UID,
        "ipproto",
        "tcp",
        "dport",
        "853",
    ]);
    assert!(into_tun(&out), "tcp 853: {out:?}");
    // IPv6 without an address in the session: no path, not the clear one.
    let out = route_get_family(&a.ns, "-6", &["2001:db8:ff::1", "uid", APP_UID]);
    assert!(out.is_err(), "{out:?}");

    // netd restarts: every rule flushed, its own written again; ours come back by themselves.
    let expected = (a.ours("-4"), a.ours("-6"));
    assert_eq!(expected.0.len(), 9, "{:?}", expected.0);
    // Measured from the end of the flush; netd writes its own rules back meanwhile.
    for family in ["-4", "-6"] {
        a.ns.ip(&[family, "rule", "flush"]);
    }
    let flushed = std::time::Instant::now();
    let netd = {
        let ns = a.ns.0.clone();
        let (wlan, rmnet) = (a.wlan, a.rmnet);
        std::thread::spawn(move || netd_rules(&ns, wlan, rmnet))
    };
    let mut back = None;
    while flushed.elapsed() < std::time::Duration::from_secs(3) {
        if (a.ours("-4"), a.ours("-6")) == expected {
            back = Some(flushed.elapsed());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let back = back.unwrap_or_else(|| panic!("not restored:\n{}", a.ns.ip(&["rule"])));
    println!("rules restored {} ms after the flush", back.as_millis());
    assert!(back < std::time::Duration::from_secs(1), "{back:?}");
    netd.join().expect("netd's rules");
    assert_eq!((a.ours("-4"), a.ours("-6")), expected);
    let out = a.get(&["8.8.8.8", "uid", APP_UID]);
    assert!(into_tun(&out), "after the repair: {out:?}");
    let out = a.get(&["8.8.8.8", "uid", BYPASS_UID]);
    assert!(
        out.as_ref().is_ok_and(|o| o.contains(&w)),
        "after the repair: {out:?}"
    );

    // A clean stop removes every rule and route.
    let rest = keeper.stop();
    assert!(rest.iter().any(|l| l.starts_with("removed ")), "{rest:?}");
    assert!(!rest.iter().any(|l| l.starts_with("after ")), "{rest:?}");
    assert_eq!(a.ours("-4"), Vec::<String>::new());
    assert_eq!(a.ours("-6"), Vec::<String>::new());
    for family in ["-4", "-6"] {
        assert_eq!(
            a.ns.ip(&[family, "route", "show", "table", "555"]).trim(),
            ""
        );
    }
    assert_eq!(a.ns.ip(&["rule"]), before, "netd's rules are as they were");
}

#[test]
fn android_without_a_tun_fails_closed_until_stop_removes_the_leftovers() {
    let Some(a) = Android::new() else { return };
    let w = format!("table {}", a.wlan);
    assert!(
        a.get(&["8.8.8.8", "uid", APP_UID])
            .is_ok_and(|o| o.contains(&w)),
        "the clear path"
    );
    // Installed at start, then killed before any session (no TUN ever).
    run_probe(&a.ns, &format!("install,android,notun,bypass={BYPASS_UID}"));
    // The unreachable default answers (EHOSTUNREACH), not netd's default network.
    let out = a.get(&["8.8.8.8", "uid", APP_UID]);
    assert!(
        out.as_ref().is_err_and(|e| e.contains("No route to host")),
        "{out:?}"
    );
    let out = a.get(&[
        "192.168.1.1",
        "uid",
        APP_UID,
        "ipproto",
        "udp",
        "dport",
        "53",
    ]);
    assert!(out.is_err(), "DNS to the hotspot: {out:?}");
    // Bypass apps, the local subnet and protected sockets keep their path.
    for args in [
        vec!["8.8.8.8", "uid", BYPASS_UID],
        vec!["192.168.1.20", "uid", APP_UID],
        vec!["8.8.8.8", "uid", APP_UID, "mark", "0x20000"],
    ] {
        let out = a.get(&args);
        assert!(
            out.as_ref().is_ok_and(|o| o.contains("dev wlan0")),
            "{args:?}: {out:?}"
        );
    }

    // `upmt-mh stop` with an android config removes what the killed run left.
    let dir = std::env::temp_dir().join(format!("upmt-rt-stop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("mh.toml");
    std::fs::write(
        &config,
        "platform = \"android\"\nanchor = \"192.0.2.1:51900\"\n\
         anchor_public_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n\
         private_key = \"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\"\n\
         control_socket = \"mh.sock\"\n[[uplink]]\nname = \"wifi\"\ninterface = \"wlan0\"\n",
    )
    .expect("config");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a.ns.0,
            env!("CARGO_BIN_EXE_upmt-mh"),
            "stop",
            "--config",
        ])
        .arg(&config)
        .output()
        .expect("upmt-mh stop");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nine rules and one unreachable default per family (no TUN, one bypass uid).
    assert!(stdout.contains("removed 20 "), "{stdout}");
    assert_eq!(a.ours("-4"), Vec::<String>::new());
    assert_eq!(a.ours("-6"), Vec::<String>::new());
    assert!(
        a.get(&["8.8.8.8", "uid", APP_UID])
            .is_ok_and(|o| o.contains(&w)),
        "the clear path is back"
    );
}
