//! Benchmark: new-flow owner lookup latency (sock_diag + /proc) on a busy machine.
//!
//! Run as root: `cargo run --release -p upmt-mobile-host --example classify_bench [PROCS]
//! [SOCKETS] [FLOWS] [UIDS]` (defaults 1000, 10, 300, 1). It makes a throwaway network
//! namespace, forks PROCS sleeping children into it with SOCKETS UDP sockets each, all root
//! (UIDS 1) or spread over UIDS uids from 10000 on, as apps are on a phone (they die with the
//! benchmark: PR_SET_PDEATHSIG, and are killed and reaped at the end), then times owner lookups
//! in several cases and prints p50/p90/p99/max for each:
//! - warm: FLOWS times a random child, asked through a shared pipe, opens one more socket (a
//!   fresh flow of a long-running app), looked up by one long-lived resolver fed by process
//!   events and primed, as the daemon's worker does it;
//! - known socket: those sockets again (the index answers);
//! - sock_diag: the socket lookup alone;
//! - cold: a fresh resolver (empty caches) per lookup, as the very first flow after a start;
//! - just started: a process forked right before its first socket, looked up by the warm
//!   resolver.
//!
//! Asserts nothing about time, only that every lookup found the right process.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::process::Command;
use std::time::{Duration, Instant};

use upmt_mobile_host::appid::events::ProcEvents;
use upmt_mobile_host::appid::{Resolver, ResolverConfig, Source};
use upmt_paft::{FlowKey, proto};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn udp_socket(connect_to: Option<u16>) -> Option<(i32, u16)> {
    // SAFETY: plain socket calls on a fresh descriptor; the sockaddr is fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return None;
        }
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&raw const a).cast(), len) != 0 {
            return None;
        }
        if let Some(port) = connect_to {
            a.sin_addr.s_addr = u32::from(Ipv4Addr::new(127, 0, 0, 2)).to_be();
            a.sin_port = port.to_be();
            libc::connect(fd, (&raw const a).cast(), len);
        }
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut l = len;
        libc::getsockname(fd, (&raw mut got).cast(), &mut l);
        Some((fd, u16::from_be(got.sin_port)))
    }
}

/// Tells the parent (pid, port) of a new connected socket.
fn answer_new_socket(answers: i32) {
    // SAFETY: async-signal-safe calls only.
    unsafe {
        let pid = libc::getpid() as u32;
        let port = udp_socket(Some(9)).map_or(0, |(_, p)| p);
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&pid.to_ne_bytes());
        msg[4..6].copy_from_slice(&port.to_ne_bytes());
        libc::write(answers, msg.as_ptr().cast(), msg.len());
    }
}

/// The child: under `uid` when given, SOCKETS idle sockets, then on each request byte one
/// more connected socket, answered as (pid, port). Never returns.
fn child(sockets: usize, uid: Option<u32>, requests: i32, answers: i32) -> ! {
    // SAFETY: async-signal-safe calls only (the parent is single-threaded at fork anyway).
    unsafe {
        if let Some(uid) = uid {
            if libc::setresgid(uid, uid, uid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
                libc::_exit(1);
            }
            // A uid change makes /proc/PID root's; a program started under the uid (exec) is
            // its uid's, as this makes it.
            libc::prctl(libc::PR_SET_DUMPABLE, 1);
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        for _ in 0..sockets {
            udp_socket(None);
        }
        let mut b = [0u8; 1];
        loop {
            if libc::read(requests, b.as_mut_ptr().cast(), 1) != 1 {
                libc::_exit(0);
            }
            answer_new_socket(answers);
        }
    }
}

/// A process that has just started: one socket, answered, then it waits to be killed.
fn newborn(answers: i32) -> ! {
    // SAFETY: async-signal-safe calls only.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        answer_new_socket(answers);
        loop {
            libc::pause();
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut times: Vec<Duration>, wrong: usize) {
    times.sort_unstable();
    if times.is_empty() {
        return;
    }
    println!(
        "{what:<13} n={:<4} p50 {:>10.3?}  p90 {:>10.3?}  p99 {:>10.3?}  max {:>10.3?}  wrong {wrong}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or_default()
    );
}

fn key_for(port: u16) -> FlowKey {
    FlowKey {
        proto: proto::UDP,
        src: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dst: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        sport: port,
        dport: 9,
    }
}

fn read_answer(answers: &mut std::fs::File) -> (u32, u16) {
    let mut msg = [0u8; 8];
    answers.read_exact(&mut msg).expect("answer");
    (
        u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]),
        u16::from_ne_bytes([msg[4], msg[5]]),
    )
}

/// Times one lookup; true when it named `pid`.
fn timed(resolver: &mut Resolver, pid: u32, port: u16) -> (Duration, bool) {
    let t = Instant::now();
    let owner = resolver.lookup(&key_for(port));
    let took = t.elapsed();
    (
        took,
        owner.pid == Some(pid) && owner.source == Source::Process,
    )
}

fn kill(pid: i32) {
    // SAFETY: our own child, by pid.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (procs, sockets, flows) = (arg(1, 1000).min(4000), arg(2, 10).min(50), arg(3, 300));
    let uids = arg(4, 1).clamp(1, 10_000);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("classify_bench needs root (network namespace, /proc of every process)");
        std::process::exit(2);
    }
    let ns = Netns(format!("upmt-bench-{}", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .expect("ip")
            .success()
    );
    assert!(
        Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .expect("ip")
            .success()
    );
    // The kernel sends process events only to sockets of the initial network namespace.
    let events = ProcEvents::open();
    if let Err(e) = &events {
        println!("no process events ({e}): misses list /proc");
    }
    let f = std::fs::File::open(format!("/run/netns/{}", ns.0)).expect("netns");
    // SAFETY: a valid netns fd; this program has a single thread here.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    // 3000 processes x 10 sockets need more than the default 28232 ephemeral ports (the
    // setting is this namespace's own).
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535").expect("port range");
    // SAFETY: rlimit struct fully initialised.
    unsafe {
        let lim = libc::rlimit {
            rlim_cur: 65_536,
            rlim_max: 65_536,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }

    let mut req = [0i32; 2];
    let mut ans = [0i32; 2];
    // SAFETY: valid arrays of two fds.
    unsafe {
        assert_eq!(libc::pipe(req.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(ans.as_mut_ptr()), 0);
    }
    let mut children = Vec::with_capacity(procs);
    let started = Instant::now();
    for i in 0..procs {
        let uid = (uids > 1).then(|| 10_000 + (i % uids) as u32);
        // SAFETY: single-threaded; the child only makes async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            child(sockets, uid, req[0], ans[1]);
        }
        assert!(pid > 0, "fork failed after {} children", children.len());
        children.push(pid);
    }
    // Let the children open their sockets.
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "{procs} processes with {sockets} sockets each, under {uids} uid(s), forked in {:?}",
        started.elapsed()
    );

    // SAFETY: the fds are ours; File takes ownership of one end each.
    let mut requests = unsafe { std::fs::File::from_raw_fd(req[1]) };
    let mut answers = unsafe { std::fs::File::from_raw_fd(ans[0]) };
    let mut ask = || {
        requests.write_all(&[1]).expect("request");
    };

    // Cold: every lookup by a resolver that has seen nothing yet.
    let (mut cold, mut wrong) = (Vec::new(), 0);
    for _ in 0..flows.min(30) {
        ask();
        let (pid, port) = read_answer(&mut answers);
        let mut fresh = Resolver::new(&ResolverConfig::default()).expect("sock_diag");
        let (took, right) = timed(&mut fresh, pid, port);
        cold.push(took);
        wrong += usize::from(!right);
    }
    report("cold", cold, wrong);

    // Warm: one resolver fed by process events, primed as the daemon's worker is at start.
    let mut resolver = Resolver::new(&ResolverConfig::default()).expect("sock_diag");
    if let Ok(events) = events {
        resolver = resolver.with_events(events);
    }
    let t = Instant::now();
    resolver.prime();
    println!("priming the index took {:?}", t.elapsed());
    let (mut warm, mut wrong_warm) = (Vec::new(), 0);
    let mut seen = Vec::with_capacity(flows);
    for i in 0..=flows {
        ask();
        let (pid, port) = read_answer(&mut answers);
        let (took, right) = timed(&mut resolver, pid, port);
        wrong_warm += usize::from(!right);
        if i > 0 {
            warm.push(took);
        }
        seen.push((pid, port));
    }
    report("warm", warm, wrong_warm);

    // A socket looked up before (an unconnected UDP socket's next destination, a flow
    // re-decided): the index answers.
    let (mut again, mut wrong_again) = (Vec::new(), 0);
    for &(pid, port) in &seen {
        let (took, right) = timed(&mut resolver, pid, port);
        again.push(took);
        wrong_again += usize::from(!right);
    }
    report("known socket", again, wrong_again);

    // The sock_diag part alone (the socket of a fresh flow: uid and inode).
    let mut diag = Vec::new();
    for _ in 0..flows {
        ask();
        let (_, port) = read_answer(&mut answers);
        let t = Instant::now();
        let found = resolver.socket_of(&key_for(port));
        diag.push(t.elapsed());
        assert!(found.is_some(), "sock_diag found no socket");
    }
    report("sock_diag", diag, 0);

    // Just started: a new process's first socket, looked up by the warm resolver.
    let (mut newborns, mut wrong_new) = (Vec::new(), 0);
    for _ in 0..flows.min(100) {
        // SAFETY: single-threaded; the child only makes async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            newborn(ans[1]);
        }
        assert!(pid > 0, "fork failed");
        let (got, port) = read_answer(&mut answers);
        let (took, right) = timed(&mut resolver, got, port);
        newborns.push(took);
        wrong_new += usize::from(!right);
        kill(pid);
    }
    report("just started", newborns, wrong_new);
    println!("{}", counters(&resolver));

    for pid in children {
        kill(pid);
    }
    assert_eq!(
        wrong + wrong_warm + wrong_again + wrong_new,
        0,
        "some lookups named the wrong process"
    );
}

fn counters(resolver: &Resolver) -> String {
    let s = resolver.proc_stats();
    let c = resolver.counters().get();
    format!(
        "warm resolver: {} index hits, {} scans, {} processes read, {} listings, {} invalidated, {} resets; \
         answers: {c:?}",
        s.index_hits, s.scans, s.processes_read, s.listings, s.invalidated, s.resets
    )
}
