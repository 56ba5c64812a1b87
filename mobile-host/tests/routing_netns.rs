//! Routing scheme against a real kernel, inside a network namespace made for each test (unique
//! name, deleted by a Drop guard, also on failure). Runs the `route_probe` example's code there —
//! this test binary re-executed with `ip netns exec`, so no other build step is needed — and
//! checks what it and `ip rule` / `ip route` report. Needs root; skipped with a message otherwise.

#[allow(dead_code)]
#[path = "../examples/route_probe.rs"]
mod route_probe;

/// Set in the re-executed child: the probe mode, and `,v6` for a session with IPv6.
const PROBE_ENV: &str = "UPMT_ROUTE_PROBE";

/// The child side: does nothing unless run by [`run_probe`] inside a namespace.
#[test]
#[ignore = "helper: run by the other tests inside a namespace"]
fn probe_child() {
    let Ok(spec) = std::env::var(PROBE_ENV) else {
        return;
    };
    let (mode, v6) = match spec.split_once(',') {
        Some((m, f)) => (m.to_owned(), f == "v6"),
        None => (spec.clone(), false),
    };
    // libtest prints "test probe_child ... " without a newline first.
    println!();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(route_probe::probe(&mode, v6)).expect("probe");
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
                "installed rule {family} 5550: not from all fwmark 0x5550 lookup 5550"
            )),
            "{out}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("installed route v4 default dev #") && l.ends_with("table 5550")), "{out}");
    // No IPv6 in the session: IPv6 is unreachable in the table, not leaked.
    assert!(
        has("installed route v6 unreachable default table 5550"),
        "{out}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("after ")),
        "leftovers:\n{out}"
    );
    assert!(has("removed 6"), "{out}");
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
    assert!(!out.contains("unreachable"), "{out}");
}

#[test]
fn leftovers_of_a_crashed_run_are_removed_by_the_next_start() {
    let Some(ns) = setup() else { return };
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
}
