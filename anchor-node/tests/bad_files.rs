//! Bad config files: the table every daemon runs (`upmt_sys::testing`: empty, truncated, binary
//! garbage, huge values, a missing file, a directory, `/dev/zero`, a file over 16 MiB) and the
//! anchor's own cases. `upmt-an check` and `upmt-an run` refuse each with one clear line and a
//! non-zero status, and `run` leaves nothing behind (no TUN, no nftables table). `run` happens
//! in a throwaway network namespace (needs root; skipped otherwise).

use std::process::Command;
use std::time::Duration;

use upmt_sys::testing::{self, Case};

const BIN: &str = env!("CARGO_BIN_EXE_upmt-an");

fn good() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/upmt-an.toml"
    ))
    .expect("example config")
    .replace("upmt0", "upmtbad0")
}

/// The shared cases, then the anchor's own.
fn cases() -> Vec<Case> {
    let good = good();
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
    let with_number = |v: &str| {
        good.replace(
            "egress = \"eth0\"",
            &format!("egress = \"eth0\"\nmtu = {v}"),
        )
    };
    let mut cases = testing::common_cases(&good, "listen", &with_number);
    cases.extend([
        Case::new(
            "wrong type",
            good.replace("listen = \"0.0.0.0:51900\"", "listen = 5"),
            ":6:10: invalid type",
        ),
        Case::new(
            "unknown key in a peer",
            good.replace("name = \"laptop\"", "name = \"laptop\"\ncolour = \"red\""),
            "unknown field `colour`",
        ),
        Case::new("huge mtu", with_number("1000000000000"), "expected u16"),
        Case::new(
            "a 10 MB peer name",
            good.replace(
                "name = \"laptop\"",
                &format!("name = \"{}\"", "x".repeat(10 << 20)),
            ),
            "at most 64 bytes",
        ),
        Case::new("100k peers", many_peers, ""),
    ]);
    cases
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

#[test]
fn check_refuses_every_bad_file_with_one_line_naming_the_file() {
    let d = testing::temp_dir("an-bad-check");
    for case in cases() {
        let path = d.join("bad.toml");
        std::fs::write(&path, &case.bytes).expect("write");
        let out = testing::check(BIN, &path);
        if case.what == "100k peers" && out.status.success() {
            // A big but valid config is allowed; it must only be handled in bounded time.
            continue;
        }
        testing::assert_refused(&case.what, &path, &out, &case.must_contain, case.positioned);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_path_that_is_no_config_file_is_refused_without_reading_it_forever() {
    testing::assert_check_refuses_what_is_no_config_file(BIN, "an-not-a-file");
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
    let d = testing::temp_dir("an-bad-run");
    let cleanup = || {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let _ = std::fs::remove_dir_all(&d);
    };
    let result = std::panic::catch_unwind(|| {
        for case in cases() {
            let what = &case.what;
            if what == "100k peers" {
                continue; // a valid config: `run` would start
            }
            let path = d.join("bad.toml");
            std::fs::write(&path, &case.bytes).expect("write");
            let out = testing::run_with_timeout(
                Command::new("ip")
                    .args(["netns", "exec", &ns, BIN, "run", "--config"])
                    .arg(&path),
                Duration::from_secs(20),
            );
            testing::assert_refused(what, &path, &out, &case.must_contain, case.positioned);
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

#[test]
fn check_refuses_a_key_file_readable_by_others_naming_the_chmod_that_fixes_it() {
    testing::assert_check_refuses_an_open_key_file(BIN, &good(), "an-key");
}
