//! Bad config files for `upmt-mh check --config`: empty, truncated, wrong type, unknown key,
//! huge values, binary garbage. Each is refused with a non-zero status and one short line that
//! names the file and, where the text has a position, its line and column. Needs no privileges.
//!
//! A 10 MB interface name is echoed cut to 64 characters, and a config that is not a regular
//! file (`/dev/zero`, a directory) is refused before it is read. Not covered here: the policy
//! file (`check` does not load it; the config module's unit tests cover its size and file-type
//! checks and `policy/tests/fuzz_corpus.rs` covers the parser).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_upmt-mh");

fn good() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/upmt-mh.toml"
    ))
    .expect("example config")
}

/// (case name, file bytes, text the error must contain)
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = good();
    let cut = good.find("private_key = ").expect("key line") + 20;
    vec![
        ("empty", Vec::new(), ":1:1: missing field `anchor`"),
        (
            "truncated inside a string",
            good.as_bytes()[..cut].to_vec(),
            "invalid basic string",
        ),
        (
            "wrong type",
            good.replace("# table = 5550", "table = \"main\"")
                .into_bytes(),
            "invalid type: string \"main\", expected",
        ),
        (
            "unknown key",
            good.replace("tun = \"upmt0\"", "tun = \"upmt0\"\ncolour = \"red\"")
                .into_bytes(),
            "unknown field `colour`",
        ),
        (
            "a fwmark over 32 bits",
            good.replace("# fwmark = 0x5550", "fwmark = 0x10000000000")
                .into_bytes(),
            "",
        ),
        (
            "a 10 MB interface name",
            good.replace("\"wlan0\"", &format!("\"{}\"", "e".repeat(10 << 20)))
                .into_bytes(),
            "invalid interface: \"eeee",
        ),
        (
            "a 10 MB string where a number belongs",
            good.replace(
                "# table = 5550",
                &format!("table = \"{}\"", "m".repeat(10 << 20)),
            )
            .into_bytes(),
            "invalid type: string",
        ),
        (
            "binary garbage",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            "not contain valid UTF-8",
        ),
    ]
}

fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // Drained on another thread, so a chatty child cannot block on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("upmt-mh-bad-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn assert_refused(what: &str, path: &Path, out: &Output, must_contain: &str, positioned: bool) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted\n{err:.2000}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: not one line:\n{err:.2000}"
    );
    assert!(
        err.len() < 600,
        "{what}: an error of {} bytes: {err:.600}",
        err.len()
    );
    let named = format!("{}:", path.display());
    let Some((_, after)) = err.split_once(&named) else {
        panic!("{what}: no file name in {err}");
    };
    assert!(
        err.contains(must_contain),
        "{what}: expected {must_contain:?} in {err}"
    );
    if positioned {
        // FILE:LINE:COLUMN: with both counted from 1.
        let mut parts = after.splitn(3, ':');
        for part in ["line", "column"] {
            let n = parts.next().and_then(|n| n.parse::<u32>().ok());
            assert!(n.is_some_and(|n| n >= 1), "{what}: no {part} in {err}");
        }
    }
}

#[test]
fn the_example_config_itself_passes_check() {
    let d = dir();
    let path = d.join("good.toml");
    std::fs::write(&path, good()).expect("write");
    let out = run_with_timeout(
        Command::new(BIN).args(["check", "--config"]).arg(&path),
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_refuses_every_bad_config_with_one_line_naming_the_file_and_position() {
    let d = dir();
    for (i, (what, bytes, needle)) in cases().into_iter().enumerate() {
        let path = d.join(format!("bad{i}.toml"));
        std::fs::write(&path, &bytes).expect("write");
        let out = run_with_timeout(
            Command::new(BIN).args(["check", "--config"]).arg(&path),
            Duration::from_secs(20),
        );
        // Bytes that are not UTF-8 have no text position to give.
        assert_refused(what, &path, &out, needle, what != "binary garbage");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn a_missing_config_is_refused_with_one_line_naming_it() {
    let path = dir().join("no-such-file.toml");
    let out = run_with_timeout(
        Command::new(BIN).args(["check", "--config"]).arg(&path),
        Duration::from_secs(20),
    );
    assert_refused("missing file", &path, &out, "", false);
}

#[test]
fn a_config_that_is_not_a_regular_file_is_refused_at_once_with_one_line() {
    for path in [Path::new("/dev/zero"), &dir()] {
        let started = std::time::Instant::now();
        let out = run_with_timeout(
            Command::new(BIN).args(["check", "--config"]).arg(path),
            Duration::from_secs(20),
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path:?} took {:?}",
            started.elapsed()
        );
        assert_refused(
            &format!("{path:?}"),
            path,
            &out,
            "not a regular file",
            false,
        );
    }
}
