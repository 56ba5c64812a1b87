//! The Magisk module as `scripts/magisk-module` builds it, from stand-in binaries (the real
//! ones need the aarch64 cross build): its files and modes, module.prop, the zip's listing,
//! and every on-device script parsed by `sh -n` (and by mksh, shellcheck and checkbashisms
//! when they are installed; the test installs none of them). Needs no root and no network.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use upmt_tests::scratch::{Scratch, repo_root};

/// The on-device scripts: Android runs them with its own mksh, so POSIX sh only.
const SCRIPTS: [&str; 4] = [
    "service.sh",
    "uninstall.sh",
    "customize.sh",
    "META-INF/com/google/android/update-binary",
];

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the module from two stand-in binaries; returns (scratch, stage dir, zip).
fn build(tag: &str) -> (Scratch, PathBuf, PathBuf) {
    build_with(tag, "stand-in upmt-mh\n")
}

/// The same, with `mh` as the daemon's stand-in.
fn build_with(tag: &str, mh_text: &str) -> (Scratch, PathBuf, PathBuf) {
    let scratch = Scratch::new(&format!("magisk-{tag}"));
    let mh = scratch.0.join("upmt-mh.standin");
    let cli = scratch.0.join("upmt.standin");
    std::fs::write(&mh, mh_text).unwrap();
    std::fs::write(&cli, "stand-in upmt\n").unwrap();
    let stage = scratch.0.join("stage");
    let zip = scratch.0.join("out/upmt.zip");
    let out = run(Command::new("bash")
        .arg(repo_root().join("scripts/magisk-module"))
        .arg("--mh")
        .arg(&mh)
        .arg("--cli")
        .arg(&cli)
        .arg("--out")
        .arg(&zip)
        .arg("--stage")
        .arg(&stage));
    assert!(
        out.status.success(),
        "magisk-module failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        zip.display().to_string(),
        "it prints where the zip is"
    );
    (scratch, stage, zip)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn files_under(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap();
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn the_module_has_its_files_with_their_modes_and_the_binaries_on_the_path() {
    let (_scratch, stage, zip) = build("layout");
    let expected: BTreeSet<String> = [
        "module.prop",
        "service.sh",
        "uninstall.sh",
        "customize.sh",
        "mh.toml.example",
        "system/bin/upmt-mh",
        "system/bin/upmt",
        "META-INF/com/google/android/update-binary",
        "META-INF/com/google/android/updater-script",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files_under(&stage), expected);
    for exe in SCRIPTS
        .iter()
        .chain(&["system/bin/upmt-mh", "system/bin/upmt"])
    {
        assert_eq!(mode(&stage.join(exe)), 0o755, "{exe}");
    }
    for data in [
        "module.prop",
        "mh.toml.example",
        "META-INF/com/google/android/updater-script",
    ] {
        assert_eq!(mode(&stage.join(data)), 0o644, "{data}");
    }
    assert_eq!(
        std::fs::read_to_string(stage.join("system/bin/upmt-mh")).unwrap(),
        "stand-in upmt-mh\n",
        "the daemon given is the one shipped"
    );
    assert_eq!(
        std::fs::read_to_string(stage.join("META-INF/com/google/android/updater-script")).unwrap(),
        "#MAGISK\n"
    );
    assert!(zip.is_file());
    if installed("unzip") {
        let out = run(Command::new("unzip").arg("-Z1").arg(&zip));
        assert!(out.status.success());
        let listed: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(listed, expected, "the zip holds the same files");
    } else {
        eprintln!("unzip not installed: the zip's listing is not checked");
    }
}

#[test]
fn module_prop_names_the_module_and_the_workspace_version() {
    let (_scratch, stage, _) = build("prop");
    let prop = std::fs::read_to_string(stage.join("module.prop")).unwrap();
    let get = |key: &str| {
        prop.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("module.prop has no {key}: {prop}"))
            .to_owned()
    };
    assert_eq!(get("id"), "upmt");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(get("version"), format!("v{version}"));
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(
        get("versionCode"),
        (parts[0] * 10_000 + parts[1] * 100 + parts[2]).to_string()
    );
    assert!(get("description").contains("/data/adb/upmt/mh.toml"));
}

#[test]
fn every_on_device_script_is_posix_sh_and_passes_the_linters_that_are_installed() {
    let (_scratch, stage, _) = build("lint");
    let mut shells = vec!["sh"];
    // Android's own shell, when the host has it.
    if installed("mksh") {
        shells.push("mksh");
    }
    for script in SCRIPTS {
        let path = stage.join(script);
        for shell in &shells {
            let out = run(Command::new(shell).arg("-n").arg(&path));
            assert!(
                out.status.success(),
                "{shell} -n {script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if installed("shellcheck") {
            let out = run(Command::new("shellcheck").args(["-s", "sh"]).arg(&path));
            assert!(
                out.status.success(),
                "shellcheck {script}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if installed("checkbashisms") {
            let out = run(Command::new("checkbashisms").arg("--force").arg(&path));
            assert!(
                out.status.success(),
                "checkbashisms {script}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if !installed("shellcheck") && !installed("checkbashisms") {
        eprintln!("neither shellcheck nor checkbashisms installed: only sh -n ran");
    }
}

#[test]
fn service_sh_waits_for_boot_keeps_cellular_up_and_runs_the_daemon_from_data_adb_upmt() {
    let (_scratch, stage, _) = build("service");
    let service = std::fs::read_to_string(stage.join("service.sh")).unwrap();
    for needle in [
        "DATA=${UPMT_DATA:-/data/adb/upmt}",
        "CONFIG=$DATA/mh.toml",
        "getprop sys.boot_completed",
        "settings put global mobile_data_always_on 1",
        "\"$BIN\" run --config \"$CONFIG\"",
        "sleep \"$delay\"",
        ">>\"$LOG\"",
    ] {
        assert!(service.contains(needle), "service.sh lacks {needle:?}");
    }
    let uninstall = std::fs::read_to_string(stage.join("uninstall.sh")).unwrap();
    for needle in [
        "\"$BIN\" stop --config \"$CONFIG\"",
        "remove-on-uninstall",
        "rm -rf \"$DATA\"",
    ] {
        assert!(uninstall.contains(needle), "uninstall.sh lacks {needle:?}");
    }
    let customize = std::fs::read_to_string(stage.join("customize.sh")).unwrap();
    assert!(customize.contains("chmod 0600 \"$DATA/mh.key\""));
}

#[test]
fn a_missing_binary_is_refused_with_its_path_and_how_to_build_it() {
    let scratch = Scratch::new("magisk-missing");
    let out = run(Command::new("bash")
        .arg(repo_root().join("scripts/magisk-module"))
        .arg("--mh")
        .arg(scratch.0.join("nope"))
        .arg("--cli")
        .arg(scratch.0.join("nope"))
        .arg("--out")
        .arg(scratch.0.join("x.zip")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope not found"), "{err}");
    assert!(err.contains("scripts/cross-aarch64"), "{err}");
    assert!(!scratch.0.join("x.zip").exists());
}

/// A daemon that records its arguments and exits at once with status 3 from `run`.
const FAILING_DAEMON: &str = "#!/bin/sh\necho \"upmt-mh $*\" >>\"$UPMT_DATA/calls\"\n\
    case \"$1\" in run) sleep 0.2; exit 3 ;; esac\nexit 0\n";

/// Android's `getprop` (booted) and `settings` (records its arguments; the user's setting was 0).
fn fake_android_tools(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in [
        ("getprop", "#!/bin/sh\necho 1\n"),
        (
            "settings",
            "#!/bin/sh\necho \"settings $*\" >>\"$UPMT_DATA/calls\"\n[ \"$1\" = get ] && echo 0\nexit 0\n",
        ),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits up to `limit` for `cond`.
fn eventually(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cond()
}

#[test]
fn service_sh_restarts_a_failing_daemon_with_backoff_and_uninstall_sh_stops_it_and_cleans_up() {
    let (scratch, stage, _) = build_with("respawn", FAILING_DAEMON);
    let tools = scratch.0.join("tools");
    fake_android_tools(&tools);
    let data = scratch.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("mh.toml"), "# stand-in\n").unwrap();
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut service = Command::new("sh")
        .arg(stage.join("service.sh"))
        .env("PATH", &path)
        .env("UPMT_DATA", &data)
        .spawn()
        .expect("start service.sh");
    let calls = data.join("calls");
    let log = data.join("service.log");
    // Starts at 0 s, 1.2 s (after 1 s) and 3.4 s (after 2 s more).
    let restarted = eventually(std::time::Duration::from_secs(8), || {
        read(&calls).matches("upmt-mh run --config").count() >= 3
    });
    let uninstall = run(Command::new("sh")
        .arg(stage.join("uninstall.sh"))
        .env("PATH", &path)
        .env("UPMT_DATA", &data));
    let stopped = eventually(std::time::Duration::from_secs(5), || {
        service.try_wait().ok().flatten().is_some()
    });
    if !stopped {
        let _ = service.kill();
    }
    let _ = service.wait();
    let (calls_text, log_text) = (read(&calls), read(&log));
    assert!(
        restarted,
        "three starts expected:\n{calls_text}\n{log_text}"
    );
    assert!(stopped, "uninstall.sh stops the service loop:\n{log_text}");
    assert!(uninstall.status.success());
    let config = data.join("mh.toml");
    assert!(
        calls_text.contains(&format!("upmt-mh run --config {}", config.display())),
        "{calls_text}"
    );
    assert!(
        calls_text.contains("settings put global mobile_data_always_on 1"),
        "{calls_text}"
    );
    for line in [
        "boot completed",
        "mobile_data_always_on = 1",
        "exited with status 3",
        "restarting in 1s",
        "restarting in 2s",
    ] {
        assert!(
            log_text.contains(line),
            "service.log lacks {line:?}:\n{log_text}"
        );
    }
    assert!(
        calls_text.contains(&format!("upmt-mh stop --config {}", config.display())),
        "uninstall.sh asks the daemon to remove its rules:\n{calls_text}"
    );
    assert!(
        eventually(std::time::Duration::from_secs(3), || read(&calls)
            .contains("settings put global mobile_data_always_on 0")),
        "the user's setting is put back:\n{}",
        read(&calls)
    );
    assert!(data.is_dir(), "the data directory stays unless asked");
    assert!(!data.join("service.pid").exists() && !data.join("upmt-mh.pid").exists());

    std::fs::write(data.join("remove-on-uninstall"), "").unwrap();
    let again = run(Command::new("sh")
        .arg(stage.join("uninstall.sh"))
        .env("PATH", &path)
        .env("UPMT_DATA", &data));
    assert!(again.status.success());
    assert!(!data.exists(), "removed when the user asked");
}

#[test]
fn service_sh_without_a_config_sets_up_cellular_and_starts_nothing() {
    let (scratch, stage, _) = build_with("noconfig", FAILING_DAEMON);
    let tools = scratch.0.join("tools");
    fake_android_tools(&tools);
    let data = scratch.0.join("data");
    let out = run(Command::new("sh")
        .arg(stage.join("service.sh"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                tools.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("UPMT_DATA", &data));
    assert!(out.status.success());
    assert_eq!(mode(&data), 0o700, "the data directory is root's alone");
    let log = read(&data.join("service.log"));
    assert!(log.contains("not starting upmt-mh"), "{log}");
    assert!(!read(&data.join("calls")).contains("upmt-mh run"));
    assert!(
        !data.join("service.pid").exists(),
        "no loop is left to stop"
    );
}
