//! Finding the workspace's daemon binaries (`upmt-an`, `upmt-mh`, `upmt`) for end-to-end tests.

use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

/// The path of the workspace binary `name`: looked up next to the current executable and in its
/// parent (integration tests run from `target/debug/deps`, binaries live in `target/debug`),
/// then in `$UPMT_BIN_DIR`.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_owned());
        if let Some(parent) = dir.parent() {
            dirs.push(parent.to_owned());
        }
    }
    if let Some(dir) = std::env::var_os("UPMT_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    find_in(name, &dirs).ok_or_else(|| LabError::BinaryNotFound {
        name: name.to_owned(),
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn find_in(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| is_file(p))
}

fn is_file(p: &Path) -> bool {
    p.metadata().map(|m| m.is_file()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_error_says_how_to_build_it() {
        let err = bin_path("upmt-no-such-binary").expect_err("not built");
        let msg = err.to_string();
        assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
        assert!(msg.contains("upmt-no-such-binary"), "{msg}");
    }
}
