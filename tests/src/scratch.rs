//! Files for tests that build things outside the lab (packages, the Magisk module): the
//! repository's root, and a scratch directory removed when dropped.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// The repository's root (the tests crate sits in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_owned()
}

/// A fresh directory (mode 0755) for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Makes `upmt-<tag>-<pid>` under the temp dir, empty.
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("upmt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("scratch dir mode");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
