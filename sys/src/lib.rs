//! upmt-sys: the small pieces of system support that both daemons (`upmt-mh` and `upmt-an`)
//! need, written once so the two cannot drift apart.
//!
//! - [`batch`]: batched UDP IO (recvmmsg, GRO, GSO) for the tunnel sockets;
//! - [`cipher`]: the `cipher` config key and the AES hardware check behind its `auto`;
//! - [`control_socket`]: the control socket file (bound before a privilege drop, mode set
//!   before listening, removed at exit);
//! - [`clock`]: `CLOCK_BOOTTIME` (counts suspended time) and Unix time;
//! - [`caps`]: whether the process holds CAP_NET_ADMIN;
//! - [`cli_assets`]: the programs' shell completions and manual pages, from their clap definitions;
//! - [`file`](mod@file): the bounded, regular-file-only read used for configs, policies and keys;
//! - [`keys`]: private key files (the same bounded read, plus a permission check);
//! - [`config`]: the one [`config::ConfigError`] shape (file:line:column: what was expected);
//! - [`ifname`]: the kernel's interface-name rules;
//! - [`metrics`]: the Prometheus endpoint (HTTP) that serves a daemon's snapshots;
//! - [`peer`]: who may use a control socket (root, the daemon's user, a group), from the peer's
//!   credentials;
//! - [`tunbatch`]: batched TUN IO with TSO/GRO offload where the kernel has it;
//! - [`error`]: an error and its causes on one line.
//!
//! It holds no protocol logic and no daemon state: the pure cores stay in `proto/`, `paft/` and
//! `policy/`, and nothing here decides anything about packets or paths.

pub mod batch;
pub mod caps;
pub mod cipher;
pub mod cli_assets;
pub mod clock;
pub mod config;
pub mod control_socket;
pub mod error;
pub mod file;
pub mod ifname;
pub mod keys;
pub mod metrics;
pub mod peer;
#[doc(hidden)]
pub mod testing;
#[cfg(target_os = "linux")]
pub mod tunbatch;

pub use error::display_chain;
