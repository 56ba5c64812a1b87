//! Replays every file of the fuzz corpus (`policy/fuzz/corpus/policy_parse/`) through
//! `Policy::parse` with the fuzz target's checks, so an input the fuzzer found stays fixed in the
//! normal test suite: no panic, and a refusal is the documented one-line `FILE:LINE:COLUMN: ...`.

use std::path::Path;
use upmt_policy::Policy;

#[test]
fn every_corpus_file_parses_or_is_refused_with_one_line_naming_file_line_and_column() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/policy_parse");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus {} is too small", dir.display());
    let (mut accepted, mut refused) = (0usize, 0usize);
    for f in &files {
        let data = std::fs::read(f).expect("corpus file");
        let text = String::from_utf8_lossy(&data);
        match Policy::parse(&text, "fuzz.toml", &["wifi", "cell"]) {
            Ok(_) => accepted += 1,
            Err(e) => {
                let line = e.to_string();
                let mut parts = line.splitn(4, ':');
                assert_eq!(parts.next(), Some("fuzz.toml"), "{}: {line:?}", f.display());
                for what in ["line", "column"] {
                    let n = parts.next().and_then(|n| n.parse::<u32>().ok());
                    assert!(
                        n.is_some_and(|n| n >= 1),
                        "{}: no {what} in {line:?}",
                        f.display()
                    );
                }
                assert!(
                    !line.contains('\n'),
                    "{}: several lines: {line:?}",
                    f.display()
                );
                refused += 1;
            }
        }
    }
    // The seeds hold the documented example (valid) and one file per documented error.
    assert!(accepted >= 1, "no corpus file parses");
    assert!(refused >= 10, "only {refused} corpus files are refused");
}
