//! Replays every file of the control-protocol fuzz corpus (`mobile-host/fuzz/corpus/control_frame/`)
//! through `fuzz_decode`, the entry point the `control_frame` fuzz target uses, so a crash the
//! fuzzer found stays fixed in the normal test suite. Also checks the seeds are what their names
//! say, so the corpus keeps steering the fuzzer towards real frames.

use std::path::{Path, PathBuf};

use upmt_mobile_host::control::proto::{
    self, FrameError, Request, RequestFrame, Response, ResponseFrame,
};

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/control_frame");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files
}

fn seed(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/control_frame")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()))
}

fn first_frame<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Option<T>, FrameError> {
    let mut stream = bytes;
    futures::executor::block_on(proto::read_frame(&mut stream))
}

#[test]
fn every_corpus_file_replays_through_the_fuzz_entry_point_without_panicking() {
    let files = corpus();
    assert!(files.len() >= 10, "only {} corpus files", files.len());
    for f in files {
        let data = std::fs::read(&f).expect("corpus file");
        proto::fuzz_decode(&data);
    }
}

#[test]
fn the_request_seeds_are_valid_frames_of_several_kinds() {
    let mut kinds = std::collections::BTreeSet::new();
    for name in [
        "status",
        "apps_then_watch",
        "flows_of_app",
        "move_flow",
        "move_app",
        "unpin_flow_and_app",
        "reload_policy",
    ] {
        let frame: RequestFrame = first_frame(&seed(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: empty"));
        assert_eq!(frame.version, proto::PROTOCOL_VERSION, "{name}");
        kinds.insert(frame.request.name());
    }
    assert_eq!(kinds.len(), 7, "{kinds:?}");
    let frame: RequestFrame = first_frame(&seed("move_flow")).unwrap().unwrap();
    assert_eq!(
        frame.request,
        Request::MoveFlow {
            flow: 42,
            uplink: "cell".into()
        }
    );
    let frame: ResponseFrame = first_frame(&seed("response_error")).unwrap().unwrap();
    assert!(matches!(frame.response, Response::Error(_)));
}

#[test]
fn the_broken_seeds_are_refused_as_truncated_and_too_large() {
    assert!(matches!(
        first_frame::<RequestFrame>(&seed("truncated")),
        Err(FrameError::Truncated)
    ));
    assert!(matches!(
        first_frame::<RequestFrame>(&seed("oversize_length")),
        Err(FrameError::TooLarge { len, max }) if len == max + 1
    ));
}
