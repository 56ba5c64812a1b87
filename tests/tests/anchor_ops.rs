//! End to end: operating the anchor. `upmt-an show --json`, run in the anchor's namespace, lists
//! both mobile hosts with the endpoints the test knows they come from; removing a peer from the
//! config and running `upmt-an reload` cuts that peer off at once while the other's download
//! goes on in the same TCP connection, and adding it back lets it in again; `upmt-an down`
//! removes the TUN and the nftables table a killed daemon left, after a restart that found them
//! said so. The anchor runs as `nobody` (the lab's default), so all of this goes through a
//! control socket bound before the privilege drop. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use upmt_tests::deploy::AN_TUN;
use upmt_tests::topology::{MH2_V4, RWIFI_WAN_V4};
use upmt_tests::{DeployOptions, Deployment, Host, Lab, bin_path, wait_for};

/// Rate of rwifi's LAN side toward the MH: `mid.bin` (2 MiB) takes about 8 s.
const SHAPED_BITS_PER_SEC: u64 = 2_000_000;

fn lab(name: &str) -> Lab {
    let mut lab = Lab::new(name).expect("build the lab (needs root, ip, nft)");
    lab.add_second_mh().expect("add the second mobile host");
    lab
}

fn deploy(lab: &Lab) -> Deployment<'_> {
    let options = DeployOptions {
        uplinks: vec![("wifi".to_owned(), "wifi".to_owned())],
        second_mh: true,
        ..DeployOptions::default()
    };
    Deployment::start(lab, &options).expect("deploy upmt with two mobile hosts")
}

/// `upmt-an ARGS...` in the anchor's namespace; (success, stdout, stderr).
fn upmt_an(lab: &Lab, args: &[&str]) -> (bool, String, String) {
    let bin = bin_path("upmt-an").expect("upmt-an");
    let mut argv = vec![bin.to_str().expect("utf-8 path")];
    argv.extend(args);
    let out = lab
        .an()
        .command(&argv)
        .timeout(Duration::from_secs(20))
        .run_unchecked()
        .expect("run upmt-an");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn show_json(lab: &Lab) -> serde_json::Value {
    let socket = lab.dir().join("an.sock");
    let (ok, out, err) = upmt_an(
        lab,
        &[
            "show",
            "--json",
            "--socket",
            socket.to_str().expect("utf-8"),
        ],
    );
    assert!(ok, "upmt-an show failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("show --json is not JSON ({e}): {out}"))
}

fn peer<'v>(show: &'v serde_json::Value, name: &str) -> Option<&'v serde_json::Value> {
    show["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["name"] == name)
}

/// The IP of path 0's validated endpoint (an IPv4-mapped address is shown as IPv4).
fn endpoint_ip(peer: &serde_json::Value) -> Option<IpAddr> {
    let text = peer["paths"][0]["endpoint"].as_str()?;
    let addr: SocketAddr = text.parse().ok()?;
    Some(addr.ip().to_canonical())
}

/// Whether a ping through `host`'s tunnel to the anchor's tunnel address answers.
fn tunnel_answers(host: Host<'_>) -> bool {
    host.run_timeout(
        &["ping", "-c", "1", "-W", "1", "-I", "upmt0", "10.77.0.1"],
        Duration::from_secs(3),
    )
    .is_ok()
}

fn config_path(config: &Path) -> &str {
    config.to_str().expect("utf-8 path")
}

#[test]
fn show_lists_both_mobile_hosts_with_their_validated_endpoints() {
    let lab = lab("anchor_show");
    let upmt = deploy(&lab);
    assert!(
        upmt.an.log().contains("dropped privileges"),
        "the anchor must run unprivileged here:\n{}",
        upmt.an.log()
    );
    let show = show_json(&lab);
    let phone = peer(&show, "phone").unwrap_or_else(|| panic!("no phone: {show}"));
    let phone2 = peer(&show, "phone2").unwrap_or_else(|| panic!("no phone2: {show}"));
    for (p, seen_from) in [
        (phone, IpAddr::V4(RWIFI_WAN_V4)),
        (phone2, IpAddr::V4(MH2_V4)),
    ] {
        assert_eq!(p["connected"], true, "{p}");
        assert_eq!(endpoint_ip(p), Some(seen_from), "{p}");
        assert!(p["last_handshake_ms_ago"].as_u64().is_some(), "{p}");
        assert!(p["rx_bytes"].as_u64().unwrap_or(0) > 0, "{p}");
        assert!(
            p["paths"][0]["last_packet_ms_ago"].as_u64().is_some(),
            "{p}"
        );
    }
    assert_eq!(phone["address"], "10.77.0.2");
    assert_eq!(phone2["address"], "10.77.0.3");

    let socket = lab.dir().join("an.sock");
    let (ok, table, err) = upmt_an(&lab, &["show", "--socket", config_path(&socket)]);
    assert!(ok, "{err}");
    assert!(table.contains("peer phone: connected"), "{table}");
    assert!(table.contains("peer phone2: connected"), "{table}");
}

#[test]
fn reload_cuts_a_removed_peer_off_at_once_and_the_other_download_goes_on() {
    let lab = lab("anchor_reload");
    let upmt = deploy(&lab);
    let http = lab.start_http_server().expect("http server");
    lab.rwifi().tbf("lan", SHAPED_BITS_PER_SEC).expect("tc tbf");
    let curl = lab
        .download("mid.bin")
        .max_time(Duration::from_secs(30))
        .label("curl-phone")
        .start()
        .expect("start the download");
    wait_for("the download to start", Duration::from_secs(10), || {
        curl.bytes_so_far() > 64 * 1024 || !curl.is_running()
    })
    .expect("the download started");
    assert!(
        curl.is_running(),
        "the download ended too soon:\n{}",
        curl.log()
    );

    let config = upmt.an_config.clone();
    let text = std::fs::read_to_string(&config).expect("read the anchor's config");

    // A broken config is refused with its position and changes nothing.
    std::fs::write(
        &config,
        text.replace("address = \"10.77.0.3\"", "address = \"nope\""),
    )
    .expect("write");
    let (ok, _, err) = upmt_an(&lab, &["reload", "--config", config_path(&config)]);
    assert!(!ok, "a bad config was accepted");
    assert!(err.contains("an.toml:") && err.contains("nope"), "{err}");
    assert!(
        tunnel_answers(lab.mh2()),
        "phone2 was cut off by a refused reload"
    );

    // Without phone2: it is cut off at once, phone's download goes on.
    let start = text
        .find("\n[[peer]]\nname = \"phone2\"")
        .unwrap_or_else(|| panic!("no phone2 block in:\n{text}"));
    std::fs::write(&config, &text[..start]).expect("write");
    let (ok, out, err) = upmt_an(&lab, &["reload", "--config", config_path(&config)]);
    assert!(ok, "reload failed: {err}");
    assert!(out.contains("0 added, 1 removed, 1 unchanged"), "{out}");
    assert!(out.contains("removed  phone2"), "{out}");
    let cut = Instant::now();
    assert!(
        !tunnel_answers(lab.mh2()),
        "phone2's tunnel still answers after its removal"
    );
    let show = show_json(&lab);
    assert!(peer(&show, "phone2").is_none(), "{show}");
    assert_eq!(peer(&show, "phone").expect("phone")["connected"], true);
    assert!(
        curl.is_running(),
        "the download should still be running {:?} after the cut",
        cut.elapsed()
    );

    let got = curl.wait(Duration::from_secs(40)).expect("curl's result");
    assert!(got.success(), "curl: {}\n{}", got.log, upmt.logs());
    assert_eq!(got.num_connects, Some(1), "{}", got.log);
    assert_eq!(got.sha256.as_deref(), http.sha256("mid.bin"));

    // Back in the config, phone2 handshakes again on its own.
    std::fs::write(&config, &text).expect("write");
    let (ok, out, err) = upmt_an(&lab, &["reload", "--config", config_path(&config)]);
    assert!(ok, "reload failed: {err}");
    assert!(out.contains("1 added, 0 removed, 1 unchanged"), "{out}");
    wait_for("phone2 back", Duration::from_secs(30), || {
        tunnel_answers(lab.mh2())
    })
    .unwrap_or_else(|_| panic!("phone2 did not come back:\n{}", upmt.logs()));
}

#[test]
fn down_removes_what_a_killed_anchor_left_and_a_restart_hints_at_it() {
    let lab = Lab::new("anchor_down").expect("build the lab (needs root, ip, nft)");
    let mut upmt = Deployment::start(&lab, &DeployOptions::default()).expect("deploy upmt");
    let config = upmt.an_config.clone();
    // A restart finds the TUN and the table of the first run, says so, and reuses them.
    upmt.restart_an("info").expect("restart the anchor");
    assert!(
        upmt.an
            .log()
            .contains("`upmt-an down` removes it after a stop"),
        "{}",
        upmt.an.log()
    );
    let (ok, _, err) = upmt_an(&lab, &["down", "--config", config_path(&config)]);
    assert!(!ok, "down ran under a live anchor");
    assert!(err.contains("an upmt-an is running on"), "{err}");
    assert!(lab.an().run(&["ip", "link", "show", "dev", AN_TUN]).is_ok());

    upmt.an.kill();
    let table = format!("upmt_{AN_TUN}");
    assert!(
        lab.an()
            .run(&["nft", "list", "table", "inet", &table])
            .is_ok(),
        "a killed anchor leaves its table"
    );
    let (ok, out, err) = upmt_an(&lab, &["down", "--config", config_path(&config)]);
    assert!(ok, "down failed: {err}");
    assert!(
        out.contains(&format!("removed nftables table inet {table}")),
        "{out}"
    );
    assert!(out.contains(&format!("removed tun {AN_TUN}")), "{out}");
    assert!(
        lab.an()
            .run(&["ip", "link", "show", "dev", AN_TUN])
            .is_err()
    );
    assert!(
        lab.an()
            .run(&["nft", "list", "table", "inet", &table])
            .is_err()
    );
    assert!(
        !lab.dir().join("an.sock").exists(),
        "the stale socket is gone"
    );
    let (ok, out, _) = upmt_an(&lab, &["down", "--config", config_path(&config)]);
    assert!(ok && out.starts_with("nothing to remove"), "{out}");
}
