//! Bad config files for `upmt-mh check --config`: the table every daemon runs
//! (`upmt_sys::testing`: empty, truncated, binary garbage, huge values, a missing file, a
//! directory, `/dev/zero`, a file over 16 MiB) and the mobile host's own cases. Each is refused
//! with a non-zero status and one short line that names the file and, where the text has a
//! position, its line and column. Needs no privileges.
//!
//! A 10 MB interface name is echoed cut to 64 characters, and a config that is not a regular
//! file is refused before it is read. Not covered here: the policy file (`check` does not load
//! it; the config module's unit tests cover its size and file-type checks and
//! `policy/tests/fuzz_corpus.rs` covers the parser).

use upmt_sys::testing::{self, Case};

const BIN: &str = env!("CARGO_BIN_EXE_upmt-mh");

fn good() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/upmt-mh.toml"
    ))
    .expect("example config")
}

/// The shared cases, then the mobile host's own.
fn cases() -> Vec<Case> {
    let good = good();
    let with_number = |v: &str| good.replace("table = 5550", &format!("table = {v}"));
    let mut cases = testing::common_cases(&good, "anchor", &with_number);
    cases.extend([
        Case::new(
            "wrong type",
            good.replace("table = 5550", "table = \"main\""),
            "invalid type: string \"main\", expected",
        ),
        Case::new(
            "unknown key",
            good.replace("tun = \"upmt0\"", "tun = \"upmt0\"\ncolour = \"red\""),
            "unknown field `colour`",
        ),
        Case::new(
            "a fwmark over 32 bits",
            good.replace("fwmark = 0x5550", "fwmark = 0x10000000000"),
            "",
        ),
        Case::new(
            "a 10 MB interface name",
            good.replace("\"wlan0\"", &format!("\"{}\"", "e".repeat(10 << 20))),
            "invalid interface: \"eeee",
        ),
    ]);
    cases
}

#[test]
fn the_example_config_itself_passes_check() {
    let d = testing::temp_dir("mh-good");
    let path = d.join("good.toml");
    std::fs::write(&path, good()).expect("write");
    let out = testing::check(BIN, &path);
    let _ = std::fs::remove_dir_all(&d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_refuses_every_bad_config_with_one_line_naming_the_file_and_position() {
    let d = testing::temp_dir("mh-bad");
    for (i, case) in cases().into_iter().enumerate() {
        let path = d.join(format!("bad{i}.toml"));
        std::fs::write(&path, &case.bytes).expect("write");
        let out = testing::check(BIN, &path);
        testing::assert_refused(&case.what, &path, &out, &case.must_contain, case.positioned);
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_path_that_is_no_config_file_is_refused_at_once_with_one_line() {
    testing::assert_check_refuses_what_is_no_config_file(BIN, "mh-not-a-file");
}

#[test]
fn check_refuses_a_key_file_readable_by_others_naming_the_chmod_that_fixes_it() {
    testing::assert_check_refuses_an_open_key_file(BIN, &good(), "mh-key");
}
