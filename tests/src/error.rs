//! The lab's error type: one enum for everything the lab can fail at, with the command, the
//! path or the condition that failed named in the message and the cause kept in `#[source]`.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, driving or measuring the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The machine cannot host a lab (not root, a tool or a kernel device is missing).
    #[error("the lab cannot run here: {what} is missing ({hint})")]
    Missing {
        /// What is missing, e.g. `root privileges` or `the ip command`.
        what: String,
        /// How to get it.
        hint: String,
    },
    /// A program could not be started at all.
    #[error("failed to start `{cmd}`")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why the operating system refused.
        #[source]
        source: std::io::Error,
    },
    /// A program ran and exited unsuccessfully.
    #[error("`{cmd}` failed with {status}; stderr: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status, as printed by std.
        status: String,
        /// What it wrote on stderr (trimmed).
        stderr: String,
    },
    /// A program did not finish within its timeout and was killed.
    #[error("`{cmd}` did not finish within {timeout:?} and was killed; stderr: {stderr}")]
    Timeout {
        /// The command line.
        cmd: String,
        /// How long it was given.
        timeout: Duration,
        /// What it had written on stderr before it was killed.
        stderr: String,
    },
    /// A condition polled by [`crate::wait_for`] did not become true in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    WaitTimeout {
        /// The condition, in words.
        what: String,
        /// How long it was polled.
        timeout: Duration,
    },
    /// A file or directory operation failed.
    #[error("i/o error on {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A tool printed something the lab could not understand.
    #[error("unexpected output from `{cmd}`: {detail}")]
    Parse {
        /// The command line.
        cmd: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A daemon binary of the workspace was not found.
    #[error(
        "binary `{name}` not found (searched: {searched}); run `cargo build --workspace --bins` first, or set UPMT_BIN_DIR"
    )]
    BinaryNotFound {
        /// The binary's name.
        name: String,
        /// The directories searched, comma separated.
        searched: String,
    },
    /// upmt's daemons did not start or did not connect; the message carries their logs.
    #[error("upmt deployment failed: {0}")]
    Deploy(String),
    /// A role or argument the lab does not know.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Short for `Result<T, LabError>`.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
