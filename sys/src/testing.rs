//! Test support shared by both daemons' `tests/bad_files.rs`: the bad-config cases every config
//! reader must refuse, the files that are not configs at all, and the checks on the one-line
//! error; and one raw HTTP exchange for the metrics endpoints' tests. Not part of the API; it lives here so the two daemons run one table, not two copies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How long one `check` may take before the test calls it hung.
pub const CHECK_LIMIT: Duration = Duration::from_secs(20);

/// One bad config file.
#[derive(Clone, Debug)]
pub struct Case {
    /// What is wrong with it, for the failure message.
    pub what: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Text the error line must contain.
    pub must_contain: String,
    /// Whether the error must give `FILE:LINE:COLUMN:` (bytes that are not UTF-8 have none).
    pub positioned: bool,
}

impl Case {
    /// A case whose error is placed at a line and column.
    pub fn new(what: &str, bytes: impl Into<Vec<u8>>, must_contain: &str) -> Case {
        Case {
            what: what.to_owned(),
            bytes: bytes.into(),
            must_contain: must_contain.to_owned(),
            positioned: true,
        }
    }
}

/// The cases every daemon's config must refuse. `good` is a valid config with a
/// `private_key = "..."` line, `first_field` the first required field (serde names it when the
/// file is empty), and `with_number(v)` gives `good` with some integer setting's value replaced
/// by the TOML text `v`.
pub fn common_cases(
    good: &str,
    first_field: &str,
    with_number: &dyn Fn(&str) -> String,
) -> Vec<Case> {
    let cut = good.find("private_key = ").expect("a private_key line") + 20;
    vec![
        Case::new(
            "empty",
            Vec::new(),
            &format!(":1:1: missing field `{first_field}`"),
        ),
        Case::new(
            "truncated inside a string",
            &good.as_bytes()[..cut],
            "invalid basic string",
        ),
        Case::new(
            "a 10 MB string where a number belongs",
            with_number(&format!("\"{}\"", "m".repeat(10 << 20))),
            "invalid type: string",
        ),
        Case::new(
            "a number over 64 bits",
            with_number("100000000000000000000000"),
            "",
        ),
        Case {
            positioned: false,
            ..Case::new(
                "binary garbage",
                (0..4096u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect::<Vec<u8>>(),
                "not contain valid UTF-8",
            )
        },
    ]
}

/// Paths that are no config file at all, each with the text its error must contain: a missing
/// file, a directory, `/dev/zero` and a (sparse) file over 16 MiB. They are made under `dir`.
pub fn not_a_config(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let huge = dir.join("huge.toml");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(crate::file::MAX_FILE_BYTES + 1))
        .expect("a sparse file");
    let directory = dir.join("a-directory");
    std::fs::create_dir_all(&directory).expect("a directory");
    vec![
        (dir.join("no-such-file.toml"), "No such file"),
        (directory, "not a regular file"),
        (PathBuf::from("/dev/zero"), "not a regular file"),
        (huge, "larger than"),
    ]
}

/// Runs `bin check --config` on each of [`not_a_config`]'s paths and asserts that each is
/// refused at once (within 10 s: nothing is read from `/dev/zero`) with one line.
pub fn assert_check_refuses_what_is_no_config_file(bin: &str, tag: &str) {
    let d = temp_dir(tag);
    for (path, needle) in not_a_config(&d) {
        let started = std::time::Instant::now();
        let out = check(bin, &path);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path:?} took {:?}",
            started.elapsed()
        );
        assert_refused(&format!("{path:?}"), &path, &out, needle, false);
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// `good` with its `private_key = "..."` line replaced by `private_key_file = "file"`, and the
/// key it held.
pub fn with_key_file(good: &str, file: &str) -> (String, String) {
    let start = good.find("private_key = \"").expect("a private_key line");
    let end = start + good[start..].find('\n').expect("a line end");
    let key = good[start..end]
        .trim_start_matches("private_key = ")
        .trim_matches('"')
        .to_owned();
    let text = format!(
        "{}private_key_file = {file:?}{}",
        &good[..start],
        &good[end..]
    );
    (text, key)
}

/// Runs `bin check` on `good` changed to read its key from a file: a key file readable by
/// group or others is refused with one line naming it and the `chmod 600` that fixes it; after
/// that very command the same config passes; `/dev/zero` as the key file is refused at once.
pub fn assert_check_refuses_an_open_key_file(bin: &str, good: &str, tag: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let d = temp_dir(tag);
    let key_path = d.join("private.key");
    let config = d.join("config.toml");
    let (text, key) = with_key_file(good, "private.key");
    std::fs::write(&config, text).expect("write config");
    std::fs::write(&key_path, format!("{key}\n")).expect("write key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let out = check(bin, &config);
    let fix = format!("chmod 600 {}", key_path.display());
    assert_refused("a world-readable key file", &config, &out, &fix, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mode 0644"), "{err}");
    assert!(!err.contains(&key), "the key itself is printed: {err}");

    let chmod = Command::new("chmod")
        .args(["600"])
        .arg(&key_path)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    let out = check(bin, &config);
    assert!(
        out.status.success(),
        "after {fix}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&key),
        "check printed the private key"
    );

    let (text, _) = with_key_file(good, "/dev/zero");
    std::fs::write(&config, text).expect("write config");
    let started = std::time::Instant::now();
    let out = check(bin, &config);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_refused(
        "/dev/zero as the key file",
        &config,
        &out,
        "not a regular file",
        true,
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// `bin genkey --out PATH` writes one key and a newline to a new file of mode 0600, prints
/// nothing, and refuses to replace an existing file.
pub fn assert_genkey_out_writes_a_0600_file(bin: &str, tag: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let d = temp_dir(tag);
    let path = d.join("new.key");
    let genkey = || {
        run_with_timeout(
            Command::new(bin).args(["genkey", "--out"]).arg(&path),
            CHECK_LIMIT,
        )
    };
    let out = genkey();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "the key went to stdout too");
    let mode = std::fs::metadata(&path)
        .expect("the key file")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    let text = std::fs::read_to_string(&path).expect("read key");
    assert_eq!(text.len(), 45, "{text:?}");
    assert!(
        text.trim()
            .parse::<upmt_proto::keys::StaticSecret>()
            .is_ok()
    );

    let again = genkey();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "an existing key was replaced");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read_to_string(&path).expect("read key"), text);
    let _ = std::fs::remove_dir_all(&d);
}

/// A fresh directory for one test's files.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("upmt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// `bin check --config path`, killed if it takes longer than [`CHECK_LIMIT`].
pub fn check(bin: &str, path: &Path) -> Output {
    run_with_timeout(
        Command::new(bin).args(["check", "--config"]).arg(path),
        CHECK_LIMIT,
    )
}

/// Runs `cmd` to completion, or kills it and panics after `limit`.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
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

/// Asserts that `out` is a refusal: a non-zero status and one short line on stderr that names
/// `path` (followed by `:`), contains `must_contain` and, when `positioned`, gives the line and
/// column after the path, both counted from 1.
pub fn assert_refused(what: &str, path: &Path, out: &Output, must_contain: &str, positioned: bool) {
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
        let mut parts = after.splitn(3, ':');
        for part in ["line", "column"] {
            let n = parts.next().and_then(|n| n.parse::<u32>().ok());
            assert!(n.is_some_and(|n| n >= 1), "{what}: no {part} in {err}");
        }
    }
}

/// Sends `request` (raw HTTP) to `addr` and returns the whole answer, read until the server
/// closes: what the metrics endpoints' tests ask them.
pub async fn http_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}
