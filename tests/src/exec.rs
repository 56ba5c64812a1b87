//! Running short-lived commands with a timeout, and finding programs on `PATH`.
//!
//! Commands run to completion with stdout and stderr captured (read on helper threads so a chatty
//! program cannot fill a pipe and deadlock). A command that outlives its timeout is killed by its
//! pid. Nothing here enters a namespace by itself: callers prefix `ip netns exec NS`.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// How long a command started by [`run`] may take unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Renders a command line for error messages.
pub fn display_cmd<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| {
            let s = a.as_ref().to_string_lossy();
            if s.is_empty() || s.contains(char::is_whitespace) {
                format!("'{s}'")
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `args` to completion (at most `timeout`), feeding `input` on stdin, and returns its output
/// when it exits successfully; otherwise an error that carries its stderr.
pub fn run<S: AsRef<OsStr>>(args: &[S], input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let output = run_unchecked(args, input, timeout)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(LabError::Command {
            cmd: display_cmd(args),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Like [`run`] but returns the output whatever the exit status; only failing to start or timing
/// out are errors.
pub fn run_unchecked<S: AsRef<OsStr>>(
    args: &[S],
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| LabError::Invalid("empty command line".into()))?;
    // Its own process group, so a timeout also kills anything it started that still holds our
    // pipes open (the group contains only its descendants).
    let mut child = Command::new(program)
        .args(rest)
        .process_group(0)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            cmd: display_cmd(args),
            source,
        })?;

    let stdin_writer = match (input, child.stdin.take()) {
        (Some(data), Some(mut stdin)) => {
            let data = data.to_vec();
            // A program that exits without reading all of its input makes this write fail with
            // EPIPE; its exit status tells the real story, so the write error is ignored.
            Some(thread::spawn(move || {
                let _ = stdin.write_all(&data);
            }))
        }
        _ => None,
    };
    let stdout_reader = child.stdout.take().map(spawn_reader);
    let stderr_reader = child.stderr.take().map(spawn_reader);

    let deadline = Instant::now() + timeout;
    let status: Option<ExitStatus> = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                // Our own child's group, killed by its id; then reaped so no zombie is left.
                kill_group(child.id(), libc::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::Spawn {
                    cmd: display_cmd(args),
                    source,
                });
            }
        }
    };
    if let Some(writer) = stdin_writer {
        let _ = writer.join();
    }
    let stdout = stdout_reader.map(join_reader).unwrap_or_default();
    let stderr = stderr_reader.map(join_reader).unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(LabError::Timeout {
            cmd: display_cmd(args),
            timeout,
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        }),
    }
}

/// Sends `signal` to the process group led by `pid` (a child this crate started in its own group).
pub(crate) fn kill_group(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) has no memory-safety preconditions; a negative id names the group.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error (unlikely on a pipe) just truncates the captured output.
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn join_reader(handle: thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    handle.join().unwrap_or_default()
}

/// Finds `program` on `PATH` (or checks it directly when it contains a `/`).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The Python interpreter the lab's servers run on: `$UPMT_PYTHON`, else the system's
/// `/usr/bin/python3` (starts faster than a version-manager shim), else `python3` on `PATH`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("UPMT_PYTHON")
        && !p.is_empty()
    {
        return p;
    }
    if is_executable(Path::new("/usr/bin/python3")) {
        return "/usr/bin/python3".into();
    }
    "python3".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successful_command_returns_its_stdout() {
        let out = run(&["sh", "-c", "echo hello"], None, DEFAULT_TIMEOUT).expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    }

    #[test]
    fn a_failing_command_reports_its_stderr() {
        let err = run(
            &["sh", "-c", "echo boom >&2; exit 3"],
            None,
            DEFAULT_TIMEOUT,
        )
        .expect_err("exit 3 is a failure");
        let msg = err.to_string();
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
    }

    #[test]
    fn a_command_past_its_timeout_is_killed() {
        let started = Instant::now();
        let err = run(&["sleep", "10"], None, Duration::from_millis(200)).expect_err("times out");
        assert!(matches!(err, LabError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn input_is_fed_on_stdin() {
        let out = run(&["cat"], Some(b"abc"), DEFAULT_TIMEOUT).expect("cat runs");
        assert_eq!(out.stdout, b"abc");
    }

    #[test]
    fn which_finds_sh_and_not_a_made_up_program() {
        assert!(which("sh").is_some());
        assert!(which("no-such-program-upmt").is_none());
    }
}
