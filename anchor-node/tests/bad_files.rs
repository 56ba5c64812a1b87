//! Bad config files: empty, truncated, wrong types, unknown keys, huge values, binary garbage,
//! not a regular file. `upmt-an check` and `upmt-an run` refuse each with one clear line and a
//! non-zero status, and `run` leaves nothing behind (no TUN, no nftables table). `run` happens
//! in a throwaway network namespace (needs root; skipped otherwise).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_upmt-an");

fn good() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/upmt-an.toml"
    ))
    .expect("example config")
    .replace("upmt0", "upmtbad0")
}

/// (case name, file bytes, text the error must contain)
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = good();
    let cut = good.find("private_key").expect("key line") + 20;
    let mut many_peers = good.replace("10.77.0.0/24", "10.0.0.0/8");
    for i in 0..100_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a01_0000 + i);
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key[31] = 9;
        let key = base64_of(&key);
        many_peers.push_str(&format!(
            "[[peer]]\nname = \"p{i}\"\npublic_key = \"{key}\"\naddress = \"{ip}\"\n"
        ));
    }
    vec![
        ("empty", Vec::new(), ":1:1: missing field"),
        (
            "truncated",
            good.as_bytes()[..cut].to_vec(),
            "invalid basic string",
        ),
        (
            "wrong type",
            good.replace("listen = \"0.0.0.0:51900\"", "listen = 5")
                .into_bytes(),
            ":6:10: invalid type",
        ),
        (
            "unknown key in a peer",
            good.replace("name = \"laptop\"", "name = \"laptop\"\ncolour = \"red\"")
                .into_bytes(),
            "unknown field `colour`",
        ),
        (
            "huge mtu",
            good.replace(
                "egress = \"eth0\"",
                "egress = \"eth0\"\nmtu = 1000000000000",
            )
            .into_bytes(),
            "expected u16",
        ),
        (
            "a 10 MB peer name",
            good.replace(
                "name = \"laptop\"",
                &format!("name = \"{}\"", "x".repeat(10 << 20)),
            )
            .into_bytes(),
            "at most 64 bytes",
        ),
        ("100k peers", many_peers.into_bytes(), ""),
        (
            "binary garbage",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            "",
        ),
    ]
}

fn base64_of(bytes: &[u8; 32]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    while !out.len().is_multiple_of(4) {
        out.push('=');
    }
    out
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("upmt-an-bad-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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

fn assert_refused(what: &str, path: &Path, out: &Output, must_contain: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted\n{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: not one line:\n{err:.2000}"
    );
    assert!(err.len() < 600, "{what}: an error of {} bytes", err.len());
    assert!(
        err.contains(&path.display().to_string()),
        "{what}: no file name: {err}"
    );
    assert!(
        err.contains(must_contain),
        "{what}: expected {must_contain:?} in {err}"
    );
}

#[test]
fn check_refuses_every_bad_file_with_one_line_naming_the_file() {
    let d = dir("check");
    for (what, bytes, needle) in cases() {
        let path = d.join("bad.toml");
        std::fs::write(&path, &bytes).expect("write");
        let out = run_with_timeout(
            Command::new(BIN).args(["check", "--config"]).arg(&path),
            Duration::from_secs(20),
        );
        if what == "100k peers" && out.status.success() {
            // A big but valid config is allowed; it must only be handled in bounded time.
            continue;
        }
        assert_refused(what, &path, &out, needle);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_config_that_is_not_a_regular_file_is_refused_without_reading_it_forever() {
    for path in ["/dev/zero", "/tmp"] {
        let out = run_with_timeout(
            Command::new(BIN).args(["check", "--config", path]),
            Duration::from_secs(10),
        );
        assert_refused(path, Path::new(path), &out, "");
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn run_refuses_bad_files_and_leaves_no_tun_and_no_nft_table() {
    if !is_root() {
        eprintln!("skipped: needs root for a network namespace");
        return;
    }
    let ns = format!("upmt-an-bad-{}", std::process::id());
    let status = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .expect("ip");
    assert!(status.success(), "ip netns add");
    let d = dir("run");
    let cleanup = || {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let _ = std::fs::remove_dir_all(&d);
    };
    let result = std::panic::catch_unwind(|| {
        for (what, bytes, needle) in cases() {
            if what == "100k peers" {
                continue; // a valid config: `run` would start
            }
            let path = d.join("bad.toml");
            std::fs::write(&path, &bytes).expect("write");
            let out = run_with_timeout(
                Command::new("ip")
                    .args(["netns", "exec", &ns, BIN, "run", "--config"])
                    .arg(&path),
                Duration::from_secs(20),
            );
            assert_refused(what, &path, &out, needle);
            let links = Command::new("ip")
                .args(["-n", &ns, "-o", "link", "show"])
                .output()
                .expect("ip link");
            let links = String::from_utf8_lossy(&links.stdout);
            assert_eq!(
                links.lines().count(),
                1,
                "{what}: left links behind:\n{links}"
            );
            let tables = Command::new("ip")
                .args(["netns", "exec", &ns, "nft", "list", "tables"])
                .output()
                .expect("nft");
            assert!(
                tables.stdout.is_empty(),
                "{what}: left a table: {}",
                String::from_utf8_lossy(&tables.stdout)
            );
        }
    });
    cleanup();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
