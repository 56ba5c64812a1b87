//! Fuzz target `policy_parse`: any bytes, as a policy file, either parse or give the documented
//! one-line `FILE:LINE:COLUMN: ...` error; never a panic. `policy/tests/fuzz_corpus.rs` replays
//! the committed corpus with the same checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Non-UTF-8 files are refused before parsing by the daemon; lossy text still exercises the
    // parser with the bytes that are text.
    let text = String::from_utf8_lossy(data);
    if let Err(e) = upmt_policy::Policy::parse(&text, "fuzz.toml", &["wifi", "cell"]) {
        let line = e.to_string();
        assert!(
            line.starts_with("fuzz.toml:"),
            "error without the file: {line:?}"
        );
        assert!(!line.contains('\n'), "error over several lines: {line:?}");
    }
});
