//! End to end: the `upmt` CLI against a real `upmt-mh` in the lab, through the daemon's control
//! socket (placed in the lab's directory with `control_socket`). A download moved from wifi to
//! cell mid-way finishes intact in the same connection while the cell interface's counters grow;
//! `upmt move app` moves all of an app's flows; a broken policy reload is refused with
//! file:line:col and the old policy stays; a non-root user is refused. Needs root; each test
//! builds its own lab.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use upmt_tests::topology::{MH_CELL_IF, MH_WIFI_IF};
use upmt_tests::{
    BIG_FILE_SIZE, DeployOptions, Deployment, Downloaded, Lab, MID_FILE_SIZE, RunningDownload,
    bin_path,
};

/// The app name the downloads run under (argv[0], as `exec -a` sets it).
const APP: &str = "com.example.dl";

/// A policy that sends [`APP`] over wifi only and everything else wifi first.
const POLICY: &str = r#"version = 1

[[rule]]
app = "com.example.dl"
uplinks = ["wifi"]

[default]
uplinks = ["wifi"]
when_none = "any"
"#;

/// The same policy with an unknown uplink on line 5.
const BROKEN_POLICY: &str = r#"version = 1

[[rule]]
app = "com.example.dl"
uplinks = ["lte"]
"#;

struct Setup<'a> {
    lab: &'a Lab,
    upmt: Deployment<'a>,
    socket: PathBuf,
    policy: PathBuf,
}

fn lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"))
}

/// Deploys upmt with its control socket and policy file in the lab's directory.
fn deploy(lab: &Lab) -> Setup<'_> {
    let socket = lab.dir().join("mh.sock");
    let policy = lab.dir().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("writing the policy");
    let options = DeployOptions {
        mh_extra: format!(
            "control_socket = \"{}\"\npolicy = \"{}\"\n",
            socket.display(),
            policy.display()
        ),
        ..DeployOptions::default()
    };
    let upmt = Deployment::start(lab, &options).unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    Setup {
        lab,
        upmt,
        socket,
        policy,
    }
}

impl<'a> Setup<'a> {
    /// Runs `upmt --socket S ARGS` in the MH's namespace, whatever its exit status.
    fn upmt(&self, args: &[&str]) -> Output {
        let bin = bin_path("upmt").expect("the upmt binary (cargo build --workspace --bins)");
        let mut argv = vec![
            bin.to_str().expect("utf-8 path").to_owned(),
            "--socket".to_owned(),
            self.socket.to_str().expect("utf-8 path").to_owned(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        self.lab
            .mh()
            .command(&argv)
            .timeout(Duration::from_secs(10))
            .run_unchecked()
            .expect("running upmt")
    }

    /// Runs `upmt ARGS --json`, asserts success, and parses its output.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.upmt(&args);
        assert!(
            out.status.success(),
            "upmt {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.upmt.logs()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "upmt {args:?} printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The app's TCP flows, from `upmt flows --app APP --json`.
    fn flows_of(&self, app: &str) -> Vec<Value> {
        let reply = self.json(&["flows", "--app", app]);
        reply["flows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f["protocol"] == "tcp")
            .collect()
    }

    /// Waits until `app` has at least `n` TCP flows that have received data.
    fn wait_flows(&self, app: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let flows: Vec<Value> = self
                .flows_of(app)
                .into_iter()
                .filter(|f| f["rx_bytes"].as_u64().unwrap_or(0) > 64 * 1024)
                .collect();
            if flows.len() >= n {
                return flows;
            }
            assert!(
                Instant::now() < deadline,
                "{app} never had {n} busy flows: {flows:?}\n{}",
                self.upmt.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Slows both routers' LAN side toward the MH so a download lasts a few seconds.
    fn rate_limit(&self, bits_per_sec: u64) {
        for router in [self.lab.rwifi(), self.lab.rcell()] {
            router.tbf("lan", bits_per_sec).expect("tc tbf");
        }
    }

    /// Starts curl under [`APP`] downloading the served file `name`.
    fn start_download(&self, name: &str) -> RunningDownload<'a> {
        self.lab
            .download(name)
            .app(APP)
            .max_time(Duration::from_secs(60))
            .label("curl")
            .start()
            .expect("starting curl")
    }

    /// Waits for a download to end and asserts that curl succeeded.
    fn finish(&self, curl: RunningDownload<'_>, timeout: Duration) -> Downloaded {
        let got = curl.wait(timeout).expect("curl's result");
        assert!(got.success(), "curl: {}\n{}", got.log, self.upmt.logs());
        got
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_shows_both_tunnels_up_as_json_and_as_a_table() {
    let lab = lab("cli_status");
    let s = deploy(&lab);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = s.json(&["status"]);
        let up = status["tunnels"]
            .as_array()
            .is_some_and(|t| t.len() == 2 && t.iter().all(|t| t["state"] == "up"));
        if up {
            break status;
        }
        assert!(Instant::now() < deadline, "tunnels never both up: {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["session"]["state"], "connected");
    assert_eq!(status["tunnels"][0]["uplink"], "wifi");
    assert_eq!(status["tunnels"][0]["interface"], MH_WIFI_IF);
    assert_eq!(status["tunnels"][1]["uplink"], "cell");
    assert_eq!(status["tunnels"][1]["interface"], MH_CELL_IF);
    assert!(status["tunnels"][0]["local"].is_string(), "{status}");

    let out = s.upmt(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("session: connected to "), "{text}");
    assert!(text.contains("\nUPLINK  INTERFACE  STATE"), "{text}");
    assert!(text.contains("\nwifi    wifi       up"), "{text}");
    assert!(text.contains("\ncell    cell       up"), "{text}");
}

#[test]
fn a_download_moved_from_wifi_to_cell_finishes_intact_in_the_same_connection() {
    let lab = lab("cli_move_flow");
    let s = deploy(&lab);
    let http = lab.start_http_server().expect("http server");
    // 32 MiB at 40 Mbit/s: about 7 s.
    s.rate_limit(40_000_000);
    let curl = s.start_download("big.bin");

    let flow = s.wait_flows(APP, 1).remove(0);
    assert_eq!(flow["uplink"], "wifi", "{flow}");
    assert_eq!(flow["pinned"], false, "{flow}");
    let id = flow["id"].as_u64().expect("flow id");

    let cell_before = lab.mh().link_counters(MH_CELL_IF).expect("counters");
    let wifi_before = lab.mh().link_counters(MH_WIFI_IF).expect("counters");
    let moved = s.upmt(&["move", "flow", &id.to_string(), "cell"]);
    assert!(
        moved.status.success(),
        "{}\n{}",
        stderr(&moved),
        s.upmt.logs()
    );
    assert_eq!(stdout(&moved), format!("moved flow {id} to cell\n"));

    let after = s
        .flows_of(APP)
        .into_iter()
        .find(|f| f["id"] == id)
        .expect("the moved flow is still there");
    assert_eq!(after["uplink"], "cell", "{after}");
    assert_eq!(after["pinned"], true, "{after}");
    // The anchor learned the move from the MH's explicit, acked signal (not only from ACKs).
    upmt_tests::wait_for("the anchor to log the move", Duration::from_secs(5), || {
        s.upmt.an.log().contains("peer moved a flow")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.upmt.logs()));

    // curl exits 0 only if its one connection delivered the whole file.
    let got = s.finish(curl, Duration::from_secs(60));
    assert_eq!(got.sha256.as_deref(), http.sha256("big.bin"));
    let cell = lab
        .mh()
        .link_counters(MH_CELL_IF)
        .expect("counters")
        .since(&cell_before);
    let wifi = lab
        .mh()
        .link_counters(MH_WIFI_IF)
        .expect("counters")
        .since(&wifi_before);
    // The rest of the download (at least a fifth of it) came in over cell, and most of what
    // followed the move did.
    assert!(
        cell.rx_bytes >= BIG_FILE_SIZE as u64 / 5,
        "cell rx {cell:?}, wifi rx {wifi:?}\n{}",
        s.upmt.logs()
    );
    assert!(cell.rx_bytes > wifi.rx_bytes, "cell {cell:?} wifi {wifi:?}");
}

#[test]
fn moving_an_app_moves_all_of_its_flows_and_unpin_hands_them_back() {
    let lab = lab("cli_move_app");
    let s = deploy(&lab);
    let http = lab.start_http_server().expect("http server");
    // Two 2 MiB downloads sharing 8 Mbit/s: about 4 s.
    s.rate_limit(8_000_000);
    let curls = [s.start_download("mid.bin"), s.start_download("mid.bin")];
    let flows = s.wait_flows(APP, 2);
    assert!(flows.iter().all(|f| f["uplink"] == "wifi"), "{flows:?}");

    let moved = s.json(&["move", "app", APP, "cell"]);
    assert_eq!(moved["uplink"], "cell");
    let mut moved_ids: Vec<u64> = moved["flows"]
        .as_array()
        .expect("moved flows")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    moved_ids.sort_unstable();
    let mut ids: Vec<u64> = flows.iter().filter_map(|f| f["id"].as_u64()).collect();
    ids.sort_unstable();
    assert!(
        ids.iter().all(|id| moved_ids.contains(id)),
        "{ids:?} vs {moved_ids:?}"
    );
    for f in s
        .flows_of(APP)
        .iter()
        .filter(|f| ids.contains(&f["id"].as_u64().unwrap_or(0)))
    {
        assert_eq!(f["uplink"], "cell", "{f}");
        assert_eq!(f["pinned"], true, "{f}");
    }

    let apps = s.json(&["apps"]);
    let app = apps["apps"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == APP).cloned())
        .expect("the app is listed");
    assert!(
        app["uplinks"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u == "cell")),
        "{app}"
    );

    // Unpinned, the policy (wifi only) takes them back.
    let out = s.upmt(&["unpin", "app", APP]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in s
        .flows_of(APP)
        .iter()
        .filter(|f| ids.contains(&f["id"].as_u64().unwrap_or(0)))
    {
        assert_eq!(f["pinned"], false, "{f}");
        assert_eq!(f["uplink"], "wifi", "{f}");
    }

    for curl in curls {
        let got = s.finish(curl, Duration::from_secs(60));
        assert_eq!(got.sha256.as_deref(), http.sha256("mid.bin"));
        assert_eq!(got.size, MID_FILE_SIZE as u64);
    }
}

#[test]
fn a_broken_policy_reload_prints_file_line_col_and_the_old_policy_stays() {
    let lab = lab("cli_reload");
    let s = deploy(&lab);
    // One flow of the app, so `upmt apps` lists it with its rule.
    s.finish(s.start_download("small.txt"), Duration::from_secs(20));
    let rule_of = |s: &Setup<'_>| {
        s.json(&["apps"])["apps"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["name"] == APP).cloned())
            .map(|a| a["rule"].clone())
    };
    let before = rule_of(&s).expect("the app is listed after its download");
    assert_eq!(before, "com.example.dl -> wifi, else block", "{before}");

    std::fs::write(&s.policy, BROKEN_POLICY).expect("writing the broken policy");
    let out = s.upmt(&["policy", "reload"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("upmt: {}:5:", s.policy.display())) && err.contains("lte"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(out.stdout.is_empty());
    assert_eq!(rule_of(&s), Some(before.clone()), "the old policy stays");
    assert!(s.upmt.mh.is_running());

    // A valid file is taken.
    std::fs::write(
        &s.policy,
        POLICY.replace("[\"wifi\"]\n\n[default]", "[\"cell\"]\n\n[default]"),
    )
    .expect("writing the new policy");
    let reloaded = s.json(&["policy", "reload"]);
    assert_eq!(reloaded["rules"], 1, "{reloaded}");
    assert_eq!(
        rule_of(&s),
        Some(Value::from("com.example.dl -> cell, else block"))
    );
}

#[test]
fn a_non_root_user_is_refused_by_the_control_socket() {
    let lab = lab("cli_nonroot");
    let s = deploy(&lab);
    let bin = bin_path("upmt").expect("the upmt binary");
    let out = lab
        .mh()
        .command(&[
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            bin.to_str().expect("utf-8"),
            "--socket",
            s.socket.to_str().expect("utf-8"),
            "status",
        ])
        .run_unchecked()
        .expect("running upmt as nobody");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("upmt: permission denied"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
    // Root still is served.
    assert_eq!(s.json(&["status"])["session"]["state"], "connected");
}

#[test]
fn errors_are_one_line_with_a_non_zero_status() {
    let lab = lab("cli_errors");
    let s = deploy(&lab);
    let out = s.upmt(&["move", "flow", "999999", "cell"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out), "upmt: no such flow 999999\n");
    let out = s.upmt(&["move", "app", APP, "lte"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "upmt: no such uplink \"lte\"; uplinks: wifi, cell\n"
    );
    let gone = lab.dir().join("nothing.sock");
    let bin = bin_path("upmt").expect("upmt");
    let out = lab
        .mh()
        .command(&[
            bin.to_str().expect("utf-8"),
            "--socket",
            gone.to_str().expect("utf-8"),
            "apps",
        ])
        .run_unchecked()
        .expect("upmt");
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        format!(
            "upmt: upmt-mh not running (no socket at {})\n",
            gone.display()
        )
    );
}
