//! Subcommands of the `upmt` CLI, one module each (as in mullvad-cli), so later ones (`status`,
//! `move`, ...) slot in beside them. Each takes its input and output streams, so tests run it on
//! buffers.

pub mod genkey;
pub mod pubkey;
