//! Long-running processes started by the lab inside a namespace (daemons, servers, apps).
//!
//! Each process runs in its own process group with stdout and stderr appended to one log file in
//! the lab's temp dir, so a failing test can print what a daemon said. A [`ProcHandle`] stops its
//! process when dropped; the [`crate::Lab`] also keeps every process it started and stops the rest
//! when it is dropped. Stopping is by pid only: SIGTERM to the group, up to
//! [`TERM_GRACE`] to exit, then SIGKILL, then reap. Nothing here ever signals a process it did not
//! start.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::exec::kill_group;

/// How long a process is given to exit after SIGTERM before it gets SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct ProcInner {
    pid: u32,
    label: String,
    cmd: String,
    log_path: PathBuf,
    state: Mutex<ProcState>,
}

#[derive(Debug)]
enum ProcState {
    Running(Child),
    Exited(ExitStatus),
    /// Reaping failed; the pid is no longer ours to signal.
    Lost,
}

impl ProcInner {
    pub(crate) fn new(child: Child, label: String, cmd: String, log_path: PathBuf) -> Self {
        Self {
            pid: child.id(),
            label,
            cmd,
            log_path,
            state: Mutex::new(ProcState::Running(child)),
        }
    }

    fn state(&self) -> MutexGuard<'_, ProcState> {
        // A panic while holding this lock leaves the state consistent (every transition is one
        // assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Polls without blocking: the exit status if it has exited (and reaps it).
    fn try_status(&self) -> Option<ExitStatus> {
        let mut state = self.state();
        match &mut *state {
            ProcState::Running(child) => match child.try_wait() {
                Ok(Some(status)) => {
                    *state = ProcState::Exited(status);
                    Some(status)
                }
                Ok(None) => None,
                Err(_) => {
                    *state = ProcState::Lost;
                    None
                }
            },
            ProcState::Exited(status) => Some(*status),
            ProcState::Lost => None,
        }
    }

    fn is_running(&self) -> bool {
        self.try_status().is_none() && matches!(*self.state(), ProcState::Running(_))
    }

    fn signal(&self, signal: libc::c_int) -> bool {
        let state = self.state();
        if let ProcState::Running(_) = &*state {
            // Still unreaped while we hold the lock, so the pid (and its group id) cannot have
            // been reused by another process.
            kill_group(self.pid, signal);
            true
        } else {
            false
        }
    }

    fn wait_with_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if !matches!(*self.state(), ProcState::Running(_)) || Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM; false if it had already exited.
    pub(crate) fn term(&self) -> bool {
        self.signal(libc::SIGTERM)
    }

    /// Waits until it exits or `deadline` passes.
    pub(crate) fn wait_until(&self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        self.wait_with_timeout(left);
    }

    /// SIGKILL (if still running) and reap.
    pub(crate) fn kill_now(&self) {
        let mut state = self.state();
        if let ProcState::Running(child) = &mut *state {
            if let Ok(Some(status)) = child.try_wait() {
                *state = ProcState::Exited(status);
                return;
            }
            kill_group(self.pid, libc::SIGKILL);
            let _ = child.kill();
            *state = match child.wait() {
                Ok(status) => ProcState::Exited(status),
                Err(_) => ProcState::Lost,
            };
        }
    }

    /// SIGTERM, grace period, SIGKILL, reap. Idempotent.
    pub(crate) fn terminate(&self) -> Option<ExitStatus> {
        if !self.signal(libc::SIGTERM) {
            return self.try_status();
        }
        if let Some(status) = self.wait_with_timeout(TERM_GRACE) {
            // Reaped: its id may now be reused, so it is never signalled again.
            return Some(status);
        }
        self.kill_now();
        self.try_status()
    }
}

/// A process started by [`crate::Host::spawn`]. Dropping it stops the process.
#[derive(Debug)]
#[must_use = "dropping a ProcHandle stops the process"]
pub struct ProcHandle {
    inner: Arc<ProcInner>,
}

impl ProcHandle {
    pub(crate) fn new(inner: Arc<ProcInner>) -> Self {
        Self { inner }
    }

    /// The process id (of the program itself: `ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The label the process was started with (also the log file's stem).
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.inner.log_path
    }

    /// Everything it wrote on stdout and stderr so far (empty if the log cannot be read).
    pub fn log(&self) -> String {
        std::fs::read(&self.inner.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.inner.try_status()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to its process group. Returns false when it has
    /// already exited.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        self.inner.signal(signal)
    }

    /// Waits up to `timeout` for it to exit on its own; `None` if it is still running.
    pub fn wait_with_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        self.inner.wait_with_timeout(timeout)
    }

    /// Waits up to `timeout` for it to exit and fails, with its log, when it does not exit or
    /// exits unsuccessfully.
    pub fn wait_success(&self, timeout: Duration) -> Result<ExitStatus> {
        match self.wait_with_timeout(timeout) {
            Some(status) if status.success() => Ok(status),
            Some(status) => Err(LabError::Command {
                cmd: self.inner.cmd.clone(),
                status: status.to_string(),
                stderr: self.log().trim().to_owned(),
            }),
            None => Err(LabError::Timeout {
                cmd: self.inner.cmd.clone(),
                timeout,
                stderr: self.log().trim().to_owned(),
            }),
        }
    }

    /// Stops it: SIGTERM, up to [`TERM_GRACE`], then SIGKILL; reaps it and returns its status.
    pub fn kill(&self) -> Option<ExitStatus> {
        self.inner.terminate()
    }
}

impl Drop for ProcHandle {
    fn drop(&mut self) {
        self.inner.terminate();
    }
}
