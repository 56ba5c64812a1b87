//! End-to-end tests of the lab itself: the topology routes and NATs as designed, the servers
//! serve what they claim, processes and namespaces are cleaned up (also on panic), and the
//! disturbance helpers really disturb. Needs root; each test builds its own lab.

use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use upmt_tests::topology::{
    CH_V4, MH_CELL_IF, MH_WIFI_IF, RCELL_WAN_V4, RCELL_WAN_V6, RWIFI_WAN_V4, RWIFI_WAN_V6,
};
use upmt_tests::{BIG_FILE_SIZE, Family, Lab, Role, list_namespaces, sweep_stale, wait_for};

fn lab(name: &str) -> Lab {
    match Lab::new(name) {
        Ok(lab) => lab,
        Err(e) => panic!("building the lab for {name}: {e}"),
    }
}

fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn wifi_traffic_reaches_the_ch_from_the_wifi_nat_address() {
    let lab = lab("wifi_whoami");
    assert_eq!(
        lab.whoami_via(Some(MH_WIFI_IF), Family::V4)
            .expect("whoami v4"),
        IpAddr::V4(RWIFI_WAN_V4)
    );
    assert_eq!(
        lab.whoami_via(Some(MH_WIFI_IF), Family::V6)
            .expect("whoami v6"),
        IpAddr::V6(RWIFI_WAN_V6)
    );
    // Wi-Fi has the lower metric, so unbound traffic takes it too.
    assert_eq!(
        lab.whoami_via(None, Family::V4).expect("whoami default"),
        IpAddr::V4(RWIFI_WAN_V4)
    );
}

#[test]
fn cell_traffic_reaches_the_ch_from_the_cell_nat_address() {
    let lab = lab("cell_whoami");
    assert_eq!(
        lab.whoami_via(Some(MH_CELL_IF), Family::V4)
            .expect("whoami v4"),
        IpAddr::V4(RCELL_WAN_V4)
    );
    assert_eq!(
        lab.whoami_via(Some(MH_CELL_IF), Family::V6)
            .expect("whoami v6"),
        IpAddr::V6(RCELL_WAN_V6)
    );
}

#[test]
fn big_file_downloads_intact_and_counters_show_the_uplink_that_carried_it() {
    let lab = lab("big_download");
    let http = lab.start_http_server().expect("http server");
    let want = http
        .sha256("big.bin")
        .expect("big.bin is served")
        .to_owned();
    let mh = lab.mh();
    for (uplink, other, family) in [
        (MH_CELL_IF, MH_WIFI_IF, Family::V4),
        (MH_WIFI_IF, MH_CELL_IF, Family::V6),
    ] {
        let got = mh
            .download("big.bin")
            .family(family)
            .interface(uplink)
            .max_time(Duration::from_secs(50))
            .count(uplink)
            .count(other)
            .run()
            .expect("download");
        assert!(got.success(), "download over {uplink}: {}", got.log);
        assert_eq!(got.sha256.as_deref(), Some(want.as_str()), "over {uplink}");
        let used = got.counters(uplink);
        let unused = got.counters(other);
        assert!(used.rx_bytes >= BIG_FILE_SIZE as u64, "{uplink}: {used:?}");
        assert!(unused.rx_bytes < 64 * 1024, "{other} carried {unused:?}");
    }
}

#[test]
fn dropping_a_lab_removes_its_namespaces_and_stops_its_processes() {
    let lab = lab("drop_cleanup");
    let http = lab.start_http_server().expect("http server");
    let sleeper = lab.an().spawn(&["sleep", "300"]).expect("spawn");
    let sleeper_pid = sleeper.pid();
    // The handle is forgotten on purpose: the lab alone must stop the process.
    std::mem::forget(sleeper);
    let names = lab.namespaces();
    let dir = lab.dir().to_owned();
    assert_eq!(names.len(), Role::ALL.len());
    let listed = list_namespaces().expect("ip netns list");
    assert!(
        names.iter().all(|n| listed.contains(n)),
        "{names:?} in {listed:?}"
    );
    assert!(pid_exists(http.pid) && pid_exists(sleeper_pid));

    drop(lab);

    let listed = list_namespaces().expect("ip netns list");
    for n in &names {
        assert!(!listed.contains(n), "{n} survived the drop");
    }
    assert!(!pid_exists(http.pid), "http server {} survived", http.pid);
    assert!(!pid_exists(sleeper_pid), "sleep {sleeper_pid} survived");
    assert!(!dir.exists(), "{} survived", dir.display());
}

#[test]
fn a_panic_inside_a_lab_still_removes_its_namespaces() {
    let names: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = lab("panic_cleanup");
        *names.lock().expect("not poisoned") = lab.namespaces();
        panic!("deliberate panic inside a lab");
    }));
    assert!(result.is_err(), "the closure panicked");
    let names = names.into_inner().expect("not poisoned");
    assert_eq!(names.len(), Role::ALL.len());
    let listed = list_namespaces().expect("ip netns list");
    for n in &names {
        assert!(!listed.contains(n), "{n} survived the panic");
    }
}

#[test]
fn namespaces_left_by_a_dead_process_are_swept() {
    // A pid that surely belongs to no live process: a child we started and reaped.
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead = child.id();
    child.wait().expect("reap");
    let stale = format!("upmt-{dead}-0-mh");
    let unrelated = format!("upmt-probe-{}-keep", std::process::id());
    for ns in [&stale, &unrelated] {
        upmt_tests::exec::run(&["ip", "netns", "add", ns], None, Duration::from_secs(10))
            .expect("ip netns add");
    }
    sweep_stale();
    let listed = list_namespaces().expect("ip netns list");
    let _ = upmt_tests::exec::run(
        &["ip", "netns", "del", &unrelated],
        None,
        Duration::from_secs(10),
    );
    assert!(!listed.contains(&stale), "{stale} was not swept");
    assert!(
        listed.contains(&unrelated),
        "{unrelated} is not the lab's and must be kept"
    );
}

#[test]
fn spawned_processes_get_their_argv0_env_and_log() {
    let lab = lab("spawn_options");
    let app = lab
        .mh()
        .command(&["sleep", "300"])
        .argv0("com.example.app")
        .spawn()
        .expect("spawn");
    // `ip netns exec` and bash exec in turn; wait for the last exec to land.
    let cmdline_path = format!("/proc/{}/cmdline", app.pid());
    let read_cmdline = || std::fs::read(&cmdline_path).unwrap_or_default();
    let seen = wait_for(
        "argv[0] to be com.example.app",
        Duration::from_secs(5),
        || read_cmdline().starts_with(b"com.example.app\0"),
    );
    assert!(
        seen.is_ok(),
        "{:?}",
        String::from_utf8_lossy(&read_cmdline())
    );
    // It runs in the MH's namespace: its network namespace is not ours.
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", app.pid())).expect("ns link");
    let ours = std::fs::read_link("/proc/self/ns/net").expect("ns link");
    assert_ne!(theirs, ours);
    let started = Instant::now();
    assert!(app.kill().is_some());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "sleep obeys SIGTERM"
    );
    assert!(!app.is_running());

    let talker = lab
        .mh()
        .command(&[
            "sh",
            "-c",
            "echo \"out=$UPMT_LAB_TEST\"; echo to-stderr >&2",
        ])
        .env("UPMT_LAB_TEST", "hello")
        .spawn()
        .expect("spawn");
    talker
        .wait_success(Duration::from_secs(10))
        .expect("exits 0");
    let log = talker.log();
    assert!(
        log.contains("out=hello") && log.contains("to-stderr"),
        "{log}"
    );
}

#[test]
fn a_failing_command_reports_its_stderr_and_a_missing_program_is_named() {
    let lab = lab("run_errors");
    let err = lab
        .ch()
        .run(&["sh", "-c", "echo no-such-thing >&2; exit 4"])
        .expect_err("exit 4");
    assert!(err.to_string().contains("no-such-thing"), "{err}");
    let err = lab
        .ch()
        .run(&["upmt-no-such-program"])
        .expect_err("missing");
    assert!(err.to_string().contains("upmt-no-such-program"), "{err}");
}

#[test]
fn link_down_cuts_the_uplink_and_link_up_restores_it() {
    let lab = lab("link_down_up");
    let mh = lab.mh();
    lab.start_http_server().expect("http server");
    mh.set_link(MH_WIFI_IF, false).expect("down");
    assert!(lab.whoami_via(Some(MH_WIFI_IF), Family::V4).is_err());
    // With Wi-Fi down, the default route is the cellular one.
    assert_eq!(
        lab.whoami_via(None, Family::V4).expect("fallback to cell"),
        IpAddr::V4(RCELL_WAN_V4)
    );
    mh.set_link(MH_WIFI_IF, true).expect("up");
    assert_eq!(
        lab.whoami_via(None, Family::V6).expect("wifi back, v6"),
        IpAddr::V6(RWIFI_WAN_V6)
    );
    assert_eq!(
        lab.whoami_via(Some(MH_WIFI_IF), Family::V4)
            .expect("wifi back"),
        IpAddr::V4(RWIFI_WAN_V4)
    );
}

#[test]
fn a_blackhole_drops_silently_and_its_removal_restores_traffic() {
    let lab = lab("blackhole");
    let mh = lab.mh();
    lab.start_http_server().expect("http server");
    let rwifi = lab.rwifi();
    rwifi.blackhole("wan").expect("blackhole");
    let before = mh.link_counters(MH_WIFI_IF).expect("counters");
    let url = lab.http().expect("started").url(Family::V4, "whoami");
    let cut = mh.run(&[
        "curl",
        "-sS",
        "--interface",
        MH_WIFI_IF,
        "--max-time",
        "1",
        &url,
    ]);
    assert!(cut.is_err(), "{cut:?}");
    // The MH still sends (the link is up), nothing comes back from the CH.
    let after = mh
        .link_counters(MH_WIFI_IF)
        .expect("counters")
        .since(&before);
    assert!(after.tx_packets > 0, "{after:?}");
    rwifi.conntrack_flush().expect("conntrack flush");
    rwifi.remove_disturbance("wan").expect("remove");
    assert_eq!(
        lab.whoami_via(Some(MH_WIFI_IF), Family::V4)
            .expect("restored"),
        IpAddr::V4(RWIFI_WAN_V4)
    );
}

#[test]
fn tbf_limits_the_download_rate() {
    let lab = lab("tbf");
    lab.start_http_server().expect("http server");
    // 8 Mbit/s on the router's side of the cellular link: mid.bin (2 MiB) needs about 2 s.
    lab.rcell().tbf("lan", 8_000_000).expect("tbf");
    let started = Instant::now();
    let got = lab
        .mh()
        .download("mid.bin")
        .interface(MH_CELL_IF)
        .max_time(Duration::from_secs(50))
        .discard()
        .run()
        .expect("download");
    assert!(got.success(), "download: {}", got.log);
    let elapsed = started.elapsed();
    assert!(
        elapsed > Duration::from_millis(1500),
        "took only {elapsed:?}"
    );
    lab.rcell().clear_qdisc("lan").expect("clear");
}

#[test]
fn iperf3_and_udp_echo_servers_answer_the_mh() {
    let lab = lab("iperf3_udp");
    let iperf = lab.start_iperf3_server().expect("iperf3");
    let out = lab
        .mh()
        .run_timeout(
            &[
                "iperf3",
                "-c",
                &iperf.v4.ip().to_string(),
                "-p",
                &iperf.v4.port().to_string(),
                "-t",
                "1",
                "-J",
            ],
            Duration::from_secs(30),
        )
        .expect("iperf3 client");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 0, "iperf3 moved no bytes");
    // A second client works too: the server is not one-off.
    lab.mh()
        .run_timeout(
            &["iperf3", "-c", &CH_V4.to_string(), "-t", "1"],
            Duration::from_secs(30),
        )
        .expect("second iperf3 client");

    let echo = lab.start_udp_echo().expect("udp echo");
    let script = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); \
         s.sendto(b'ping-upmt', ('{}', {})); print(s.recvfrom(100)[0].decode())",
        echo.ip(),
        echo.port()
    );
    let reply = lab
        .mh()
        .run_stdout(&[upmt_tests::exec::python().as_str(), "-c", &script])
        .expect("udp echo");
    assert_eq!(reply.trim(), "ping-upmt");
}

#[test]
fn the_demo_shows_each_uplink_with_its_nat_address() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upmt-lab"))
        .arg("demo")
        .output()
        .expect("run upmt-lab demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the CH saw 198.51.100.2"), "{stdout}");
    assert!(stdout.contains("the CH saw 198.18.0.2"), "{stdout}");
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
}

#[test]
fn nft_counters_count_forwarded_packets_and_full_random_loss_cuts_the_uplink() {
    let lab = lab("nft_counter_loss");
    let rwifi = lab.rwifi();
    rwifi
        .run_input(
            &["nft", "-f", "-"],
            b"table inet upmt-lab-count {\n\
                counter forwarded {}\n\
                chain f { type filter hook forward priority 0; policy accept; counter name \"forwarded\"; }\n\
              }\n",
        )
        .expect("counter table");
    let before = rwifi
        .nft_counter("inet", "upmt-lab-count", "forwarded")
        .expect("read counter");
    assert_eq!(before.packets, 0);
    lab.whoami_via(Some(MH_WIFI_IF), Family::V4)
        .expect("whoami");
    let after = rwifi
        .nft_counter("inet", "upmt-lab-count", "forwarded")
        .expect("read counter");
    assert!(after.packets >= 6 && after.bytes > 300, "{after:?}");

    let mh = lab.mh();
    mh.random_loss(MH_WIFI_IF, 100).expect("loss");
    let url = lab.http().expect("started").url(Family::V4, "whoami");
    let lost = mh.run(&[
        "curl",
        "-sS",
        "--interface",
        MH_WIFI_IF,
        "--max-time",
        "1",
        &url,
    ]);
    assert!(lost.is_err(), "{lost:?}");
    mh.remove_disturbance(MH_WIFI_IF).expect("remove");
    assert_eq!(
        lab.whoami_via(Some(MH_WIFI_IF), Family::V4)
            .expect("restored"),
        IpAddr::V4(RWIFI_WAN_V4)
    );
    assert!(mh.random_loss(MH_WIFI_IF, 101).is_err());
    // A partial loss installs (and replaces the table of the same name); whoami with its
    // retransmissions still gets through 30 % loss.
    mh.random_loss(MH_WIFI_IF, 30).expect("30 % loss");
    mh.random_loss(MH_WIFI_IF, 20)
        .expect("replaced by 20 % loss");
    mh.remove_disturbance(MH_WIFI_IF).expect("remove");
    mh.remove_disturbance(MH_WIFI_IF)
        .expect("removing twice is fine");
}
