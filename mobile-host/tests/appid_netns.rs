//! App lookup against a real kernel, in a network namespace made for the test (unique name,
//! deleted by a Drop guard). A child process started as `exec -a com.example.x python3 ...`
//! opens a TCP connection, an unconnected UDP socket and a dual-stack IPv6 UDP socket; another
//! child runs as uid 4242. The resolver, on a thread moved into the namespace (a plain thread,
//! never a tokio worker), must name them; a process started after the index was primed is found
//! through process events. Needs root; skipped with a message otherwise.

use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::process::{Child, Command, Stdio};

use upmt_mobile_host::appid::events::{self, ProcEvents};
use upmt_mobile_host::appid::{Resolver, ResolverConfig, Source};
use upmt_paft::{FlowKey, proto};

struct Netns(String);

impl Netns {
    /// A new namespace `name` with its loopback up, removed again on drop.
    fn create(name: String) -> Netns {
        let ns = Netns(name);
        for args in [
            &["netns", "add", &ns.0][..],
            &["-n", &ns.0, "link", "set", "lo", "up"][..],
        ] {
            assert!(
                Command::new("ip")
                    .args(args)
                    .status()
                    .expect("ip")
                    .success()
            );
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SCRIPT: &str = r#"
import socket, sys, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.socket(); c.connect(l.getsockname()); a, _ = l.accept()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 0))
d = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
d.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); d.bind(("::", 0))
print(c.getsockname()[1], l.getsockname()[1], u.getsockname()[1], d.getsockname()[1], flush=True)
time.sleep(60)
"#;

fn spawn_in(ns: &str, prefix: &[&str], argv0: &str) -> (Kill, Vec<u16>) {
    // The real interpreter, not a version manager's shim script (which would exec it again
    // under its own name).
    let exec = format!("exec -a {argv0} {} -c '{SCRIPT}'", python());
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(prefix);
    cmd.args(["bash", "-c", &exec]).stdout(Stdio::piped());
    let mut child = Kill(cmd.spawn().expect("spawn python3"));
    let out = child.0.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("ports");
    let ports = line
        .split_whitespace()
        .map(|p| p.parse().expect("port"))
        .collect::<Vec<u16>>();
    assert_eq!(ports.len(), 4, "child printed {line:?}");
    (child, ports)
}

fn python() -> String {
    // uid 4242 cannot enter /root, where version managers keep theirs.
    if std::path::Path::new("/usr/bin/python3").exists() {
        return "/usr/bin/python3".into();
    }
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn key(proto: u8, sport: u16, dst: &str, dport: u16) -> FlowKey {
    FlowKey {
        proto,
        src: IpAddr::from([127, 0, 0, 1]),
        dst: dst.parse().expect("addr"),
        sport,
        dport,
    }
}

#[test]
fn sockets_of_a_renamed_process_and_of_another_uid_are_named() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let ns = Netns::create(format!("upmt-appid-{}", std::process::id()));
    let (app, p) = spawn_in(&ns.0, &[], "com.example.x");
    let (other, q) = spawn_in(
        &ns.0,
        &[
            "setpriv",
            "--reuid",
            "4242",
            "--regid",
            "4242",
            "--clear-groups",
        ],
        "com.example.other:remote",
    );
    let app_pid = app.0.id();

    let nspath = format!("/run/netns/{}", ns.0);
    let results = std::thread::spawn(move || {
        let f = std::fs::File::open(&nspath).expect("open netns");
        // SAFETY: a valid netns fd; this plain thread is ours alone and ends after the lookups.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let mut r = Resolver::new(&ResolverConfig::default()).expect("resolver");
        let tcp = r.lookup(&key(proto::TCP, p[0], "127.0.0.1", p[1]));
        let udp = r.lookup(&key(proto::UDP, p[2], "192.0.2.9", 53));
        let mapped = r.lookup(&key(proto::UDP, p[3], "192.0.2.9", 53));
        let other = r.lookup(&key(proto::UDP, q[2], "192.0.2.9", 53));
        let missing = r.lookup(&key(proto::TCP, 1, "127.0.0.1", 2));
        (tcp, udp, mapped, other, missing)
    })
    .join()
    .expect("lookup thread");
    let (tcp, udp, mapped, other_owner, missing) = results;

    for (what, o) in [
        ("tcp", &tcp),
        ("unconnected udp", &udp),
        ("v4-mapped udp", &mapped),
    ] {
        assert_eq!(o.source, Source::Process, "{what}: {o:?}");
        assert_eq!(o.name.as_deref(), Some("com.example.x"), "{what}: {o:?}");
        assert_eq!(o.uid, Some(0), "{what}: {o:?}");
    }
    // `ip netns exec` execs bash, which execs python3: the same pid.
    assert_eq!(tcp.pid, Some(app_pid));
    assert_eq!(
        other_owner.name.as_deref(),
        Some("com.example.other"),
        "{other_owner:?}"
    );
    assert_eq!(other_owner.uid, Some(4242));
    assert_eq!(missing.source, Source::Unknown);
    drop(other);
}

#[test]
fn a_process_started_after_priming_is_found_through_process_events() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for network namespaces and process events");
        return;
    }
    // The kernel sends process events only to sockets of the initial network namespace.
    let events = match ProcEvents::open() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skipped: no process events connector here ({e})");
            return;
        }
    };
    let ns = Netns::create(format!("upmt-appid-ev-{}", std::process::id()));
    let name = ns.0.clone();
    let (owner, pid, stats) = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
        // SAFETY: a valid netns fd; this plain thread is ours alone and ends after the lookup.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let mut r = Resolver::new(&ResolverConfig::default())
            .expect("resolver")
            .with_events(events);
        r.prime();
        let (app, p) = spawn_in(&name, &[], "com.example.late");
        let owner = r.lookup(&key(proto::TCP, p[0], "127.0.0.1", p[1]));
        let pid = app.0.id();
        (owner, pid, r.proc_stats())
    })
    .join()
    .expect("lookup thread");
    assert_eq!(owner.source, Source::Process, "{owner:?}");
    assert_eq!(owner.name.as_deref(), Some("com.example.late"));
    assert_eq!(owner.pid, Some(pid));
    // Events told of the new process: no listing of /proc beyond priming's.
    assert_eq!(stats.listings, 1, "{stats:?}");
}

#[test]
fn a_resolver_in_a_child_namespace_gets_process_events_from_the_initial_one() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for network namespaces and process events");
        return;
    }
    if let Err(e) = ProcEvents::open() {
        eprintln!("skipped: no process events connector here ({e})");
        return;
    }
    let ns = Netns::create(format!("upmt-appid-watch-{}", std::process::id()));
    let name = ns.0.clone();
    let (watch, owner, pid, stats) = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
        // SAFETY: a valid netns fd; this plain thread is ours alone and ends after the lookup.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        // As the daemon in the lab: it finds itself outside the initial namespace.
        let (events, watch) = events::open_watch().expect("process events");
        let mut r = Resolver::new(&ResolverConfig::default())
            .expect("resolver")
            .with_events(events);
        r.prime();
        let (app, p) = spawn_in(&name, &[], "com.example.late");
        let owner = r.lookup(&key(proto::TCP, p[0], "127.0.0.1", p[1]));
        let pid = app.0.id();
        (watch, owner, pid, r.proc_stats())
    })
    .join()
    .expect("lookup thread");
    assert_eq!(watch, events::ProcessWatch::EventsFromInitialNetns);
    assert_eq!(owner.name.as_deref(), Some("com.example.late"));
    assert_eq!(owner.pid, Some(pid));
    // The new process came from the events alone: no listing beyond priming's, no scan.
    assert_eq!(
        (stats.listings, stats.event_hits, stats.scans),
        (1, 1, 0),
        "{stats:?}"
    );
}
