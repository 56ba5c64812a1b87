//! Replays every file of the fuzz corpora (`proto/fuzz/corpus/<target>/`) through the same entry
//! points the fuzz targets use, so a crash the fuzzer found stays fixed in the normal test suite.

use std::path::Path;
use upmt_proto::fuzzing;

#[test]
fn every_corpus_file_replays_through_its_fuzz_target_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0usize;
    for target in fuzzing::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "corpus {target} is empty");
        for f in files {
            let data = std::fs::read(&f).expect("corpus file");
            assert!(fuzzing::run(target, &data), "unknown target {target}");
            replayed += 1;
        }
    }
    assert!(replayed >= fuzzing::TARGETS.len());
}

#[test]
fn an_unknown_target_name_is_refused() {
    assert!(!fuzzing::run("no_such_target", b""));
}
