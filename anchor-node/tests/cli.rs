//! The key tools and `check`, run as a user would: no network, no privileges.

use std::io::Write as _;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_upmt-an");

fn pubkey_of(private: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pubkey");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(private.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("pubkey output")
}

#[test]
fn genkey_prints_a_fresh_base64_key_each_time() {
    let a = Command::new(BIN).arg("genkey").output().expect("genkey");
    let b = Command::new(BIN).arg("genkey").output().expect("genkey");
    assert!(a.status.success());
    let a = String::from_utf8(a.stdout).expect("utf-8");
    let b = String::from_utf8(b.stdout).expect("utf-8");
    assert_eq!(a.trim().len(), 44, "{a}");
    assert!(a.trim().ends_with('='));
    assert_ne!(a, b);
}

#[test]
fn pubkey_derives_the_x25519_public_key() {
    // RFC 7748 section 6.1: Alice's private key and public key.
    let private = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n";
    let out = pubkey_of(private);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
    );
}

#[test]
fn pubkey_refuses_garbage_with_one_line() {
    let out = pubkey_of("hello\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stdin does not hold a base64 private key"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn check_accepts_the_example_and_prints_a_summary() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/upmt-an.toml");
    let out = Command::new(BIN)
        .args(["check", "--config", example])
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("subnet      10.77.0.0/24 (anchor 10.77.0.1)"),
        "{text}"
    );
    assert!(text.contains("peers       2"), "{text}");
    assert!(
        text.contains(
            "isolation   peer to peer dropped, to this host dropped, private egress dropped"
        ),
        "{text}"
    );
    assert!(text.contains("user        nobody"), "{text}");
    assert!(text.contains("phone"), "{text}");
}

#[test]
fn check_reports_a_bad_config_with_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("upmt-an-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "listen = \"0.0.0.0:1\"\nlisten_port = 3\n").expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:1: unknown field `listen_port`",
            path.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn genkey_out_writes_a_new_key_file_of_mode_0600() {
    upmt_sys::testing::assert_genkey_out_writes_a_0600_file(BIN, "an-genkey");
}
