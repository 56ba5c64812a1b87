//! End to end: the anchor keeps its mobile hosts apart. With two mobile hosts connected, host A
//! tries three things through the tunnel: a listener on host B's virtual address, an "sshd" on
//! the anchor's own tunnel and public addresses, and a "metadata service" that only the
//! anchor's egress can reach (as in a cloud). The metadata address is 100.100.100.200 (one
//! cloud's, in the shared range 100.64/10): the mobile host never tunnels link-local
//! destinations, so 169.254.169.254 could only come from a modified peer, and the same rule
//! drops both (see the ruleset's unit tests). By default all of them are dropped
//! at the anchor, each by its counted nftables rule; with `allow_peer_to_peer`,
//! `allow_to_host` and `allow_private_egress` all of them answer. The anchor also runs as
//! `nobody` with CAP_NET_ADMIN alone. Every target is tried over IPv4 and IPv6. Needs root.

use std::collections::HashMap;
use std::time::Duration;

use upmt_tests::deploy::{AN_TUN, MH2_VIRTUAL_V4};
use upmt_tests::topology::{AN_V4, AN_V6};
use upmt_tests::{DeployOptions, Deployment, Host, Lab, ProcHandle, wait_for};

/// The port every listener of this test uses.
const PORT: &str = "2222";
const ANCHOR_TUNNEL: &str = "10.77.0.1";
const METADATA: &str = "100.100.100.200";
/// The IPv6 twins: B's, the anchor's tunnel address, and one cloud's IPv6 metadata service.
const B_V6: &str = "fd77::3";
const ANCHOR_TUNNEL_V6: &str = "fd77::1";
const METADATA_V6: &str = "fd00:ec2::254";
/// How long a connection attempt may take before it counts as dropped.
const CONNECT_TIMEOUT: &str = "2";

/// Accepts on every address given and greets each connection with the address it came to.
const LISTENER_PY: &str = r#"
import socket, sys, threading
port, addrs = int(sys.argv[1]), sys.argv[2:]
socks = []
for a in addrs:
    s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a, port))
    s.listen(16)
    socks.append((a, s))
def serve(a, s):
    while True:
        c, _ = s.accept()
        c.sendall(("hello from %s\n" % a).encode())
        c.close()
for a, s in socks[1:]:
    threading.Thread(target=serve, args=(a, s), daemon=True).start()
print("listening", flush=True)
serve(*socks[0])
"#;

/// Connects to every address at once; prints `ADDR REPLY` per address (`-` when nothing came).
const PROBE_PY: &str = r#"
import socket, sys, threading
timeout, port, addrs = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
got = {}
def probe(a):
    try:
        c = socket.create_connection((a, port), timeout=timeout)
        c.settimeout(timeout)
        got[a] = c.recv(100).decode().strip() or "-"
    except Exception:
        got[a] = "-"
ts = [threading.Thread(target=probe, args=(a,)) for a in addrs]
for t in ts: t.start()
for t in ts: t.join()
for a in addrs: print(a, got[a].replace(" ", "_"))
"#;

fn lab(name: &str) -> Lab {
    let mut lab = Lab::new(name).expect("build the lab (needs root, ip, nft)");
    lab.add_second_mh().expect("add the second mobile host");
    // The metadata service: an address of the internet router that answers only what comes
    // from the anchor's side, so the mobile host's own uplinks cannot reach it directly.
    let inet = lab.inet();
    inet.ip(&["addr", "add", &format!("{METADATA}/32"), "dev", "to-an"])
        .expect("metadata address");
    inet.ip(&[
        "addr",
        "add",
        &format!("{METADATA_V6}/128"),
        "dev",
        "to-an",
        "nodad",
    ])
    .expect("metadata IPv6 address");
    inet.run_input(
        &["nft", "-f", "-"],
        format!(
            "table inet upmt_isolation_metadata {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tip daddr {METADATA} iifname != \"to-an\" drop\n\
             \t\tip6 daddr {METADATA_V6} iifname != \"to-an\" drop\n\
             \t}}\n}}\n"
        )
        .as_bytes(),
    )
    .expect("metadata filter");
    lab
}

fn deploy<'a>(lab: &'a Lab, an_extra: &str) -> Deployment<'a> {
    let options = DeployOptions {
        uplinks: vec![("wifi".to_owned(), "wifi".to_owned())],
        an_extra: an_extra.to_owned(),
        second_mh: true,
        ..DeployOptions::default()
    };
    Deployment::start(lab, &options).expect("deploy upmt with two mobile hosts")
}

fn listen(host: Host<'_>, addrs: &[&str]) -> ProcHandle {
    let script = host.lab().dir().join("listener.py");
    std::fs::write(&script, LISTENER_PY).expect("write the listener");
    let mut args = vec!["python3", "-u", script.to_str().expect("utf-8 path"), PORT];
    args.extend(addrs);
    let proc = host
        .command(&args)
        .label("listener")
        .spawn()
        .expect("start a listener");
    wait_for("a listener", Duration::from_secs(10), || {
        proc.log().contains("listening") || !proc.is_running()
    })
    .expect("listener up");
    assert!(proc.is_running(), "listener died:\n{}", proc.log());
    proc
}

/// Every address host A tries, both families: B, the anchor's tunnel and public addresses, the
/// metadata service.
fn targets() -> Vec<String> {
    [
        MH2_VIRTUAL_V4.to_string(),
        B_V6.to_owned(),
        ANCHOR_TUNNEL.to_owned(),
        ANCHOR_TUNNEL_V6.to_owned(),
        AN_V4.to_string(),
        AN_V6.to_string(),
        METADATA.to_owned(),
        METADATA_V6.to_owned(),
    ]
    .into()
}

/// Starts the three kinds of listener and returns what host A reaches through the tunnel:
/// address -> greeting (`-` for nothing).
fn probe_from_a(lab: &Lab) -> HashMap<String, String> {
    let b = MH2_VIRTUAL_V4.to_string();
    let (an_public, an_public6) = (AN_V4.to_string(), AN_V6.to_string());
    let _b = listen(lab.mh2(), &[&b, B_V6]);
    let _an = listen(
        lab.an(),
        &[ANCHOR_TUNNEL, ANCHOR_TUNNEL_V6, &an_public, &an_public6],
    );
    let _metadata = listen(lab.inet(), &[METADATA, METADATA_V6]);
    let script = lab.dir().join("probe.py");
    std::fs::write(&script, PROBE_PY).expect("write the probe");
    let mut args = vec![
        "python3".to_owned(),
        script.to_str().expect("utf-8 path").to_owned(),
        CONNECT_TIMEOUT.to_owned(),
        PORT.to_owned(),
    ];
    args.extend(targets());
    let out = lab.mh().run_stdout(&args).expect("run the probe");
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, r)| (a.to_owned(), r.to_owned()))
        .collect()
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.an()
        .nft_counter("inet", &format!("upmt_{AN_TUN}"), name)
        .unwrap_or_else(|e| panic!("counter {name}: {e}"))
        .packets
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .trim()
        .to_owned()
}

#[test]
fn by_default_a_mobile_host_reaches_neither_another_host_nor_the_anchors_services_nor_metadata() {
    let lab = lab("isolation_default");
    let upmt = deploy(&lab, "");

    // The anchor dropped its privileges once set up.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", upmt.an.pid())).expect("status");
    let uids = status_field(&status, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u != "0"),
        "upmt-an still runs as root: Uid {uids}"
    );
    assert_eq!(
        status_field(&status, "CapEff"),
        "0000000000001000",
        "CapEff is not CAP_NET_ADMIN alone"
    );

    let reached = probe_from_a(&lab);
    for target in &targets() {
        assert_eq!(
            reached.get(target).map(String::as_str),
            Some("-"),
            "{target} answered host A: {reached:?}\n{}",
            upmt.logs()
        );
    }
    // Each attempt reached the anchor and was dropped there by its own rule (a SYN and its
    // retransmissions), not lost on the way.
    assert!(counter(&lab, "peer_to_peer_dropped") >= 2);
    assert!(counter(&lab, "to_host_dropped") >= 4);
    assert!(counter(&lab, "private_egress_dropped") >= 2);
    // The unprivileged anchor reads the same counters for its metrics.
    let metric = |rule: &str| {
        upmt.an_metric(&format!(
            "upmt_isolation_dropped_packets_total{{rule=\"{rule}\"}}"
        ))
        .expect("anchor metrics")
    };
    assert_eq!(
        metric("peer_to_peer"),
        counter(&lab, "peer_to_peer_dropped")
    );
    assert!(metric("to_host") >= 4);
    assert!(metric("private_egress") >= 2);
    // The tunnel itself still works for both hosts (the deployment pinged the anchor through
    // each), and host B is still connected.
    assert!(upmt.mh2.as_ref().is_some_and(ProcHandle::is_running));
}

#[test]
fn with_the_opt_ins_the_other_host_the_anchors_services_and_metadata_answer() {
    let lab = lab("isolation_opt_in");
    let upmt = deploy(
        &lab,
        &format!(
            "allow_peer_to_peer = true\nallow_to_host = [{PORT}]\nallow_private_egress = true\n"
        ),
    );
    let reached = probe_from_a(&lab);
    for target in &targets() {
        assert_eq!(
            reached.get(target).map(String::as_str),
            Some(format!("hello_from_{target}").as_str()),
            "{target} did not answer host A: {reached:?}\n{}",
            upmt.logs()
        );
    }
}
