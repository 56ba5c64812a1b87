//! The Magisk module as `scripts/magisk-module` builds it, from stand-in binaries (the real
//! ones need the aarch64 cross build): its files and modes, module.prop, the zip's listing,
//! and every on-device script parsed by `sh -n` (and by mksh, shellcheck and checkbashisms
//! when they are installed; the test installs none of them). Needs no root and no network.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The on-device scripts: Android runs them with its own mksh, so POSIX sh only.
const SCRIPTS: [&str; 4] = [
    "service.sh",
    "uninstall.sh",
    "customize.sh",
    "META-INF/com/google/android/update-binary",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_owned()
}

/// A fresh directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("upmt-magisk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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
    let scratch = Scratch::new(tag);
    let mh = scratch.0.join("upmt-mh.standin");
    let cli = scratch.0.join("upmt.standin");
    std::fs::write(&mh, "stand-in upmt-mh\n").unwrap();
    std::fs::write(&cli, "stand-in upmt\n").unwrap();
    let stage = scratch.0.join("stage");
    let zip = scratch.0.join("out/upmt.zip");
    let out = run(Command::new("bash")
        .arg(repo().join("scripts/magisk-module"))
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
        "DATA=/data/adb/upmt",
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
    let scratch = Scratch::new("missing");
    let out = run(Command::new("bash")
        .arg(repo().join("scripts/magisk-module"))
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
