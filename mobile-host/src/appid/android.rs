//! Android's `/data/system/packages.list`: one line per installed package, `NAME UID DEBUGGABLE
//! DATADIR SEINFO GIDS`. It maps an app's uid to its package name when the socket's process is
//! gone before it could be looked up, and a package name to its uid for uid-range bypass rules.
//!
//! Multi-user phones give user `U`'s copy of an app uid `U * 100000 + appid`; the file lists
//! appids, so uids are reduced modulo 100000 (`PER_USER_RANGE`). Only reads the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Where Android keeps the list.
pub const PACKAGES_LIST: &str = "/data/system/packages.list";
/// Uids per Android user.
pub const PER_USER_RANGE: u32 = 100_000;
/// Below this, uids are system uids shared by many packages (e.g. 1000 `android.uid.system`):
/// never named after one package.
pub const FIRST_APPLICATION_UID: u32 = 10_000;

/// A parsed packages.list, reloaded when the file changes.
#[derive(Debug, Default)]
pub struct Packages {
    path: Option<PathBuf>,
    modified: Option<SystemTime>,
    by_uid: HashMap<u32, Arc<str>>,
    by_name: HashMap<Arc<str>, u32>,
}

impl Packages {
    /// A list read from `path` (when it exists; absent on Linux).
    pub fn at(path: impl Into<PathBuf>) -> Packages {
        let mut p = Packages {
            path: Some(path.into()),
            ..Packages::default()
        };
        p.refresh();
        p
    }

    /// Parses `text`.
    pub fn parse(text: &str) -> Packages {
        let mut p = Packages::default();
        p.load(text);
        p
    }

    fn load(&mut self, text: &str) {
        self.by_uid.clear();
        self.by_name.clear();
        for line in text.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(name), Some(uid)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Ok(uid) = uid.parse::<u32>() else {
                continue;
            };
            let name: Arc<str> = name.into();
            // Packages sharing a uid (sharedUserId) make the uid ambiguous: keep the first,
            // which names the app well enough and is stable across reloads.
            self.by_uid.entry(uid).or_insert_with(|| name.clone());
            self.by_name.insert(name, uid);
        }
    }

    /// Re-reads the file if it changed since the last read; true when it was (re)loaded.
    pub fn refresh(&mut self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_none() || modified == self.modified {
            return false;
        }
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        self.modified = modified;
        self.load(&text);
        true
    }

    /// The package that owns `uid`, for application uids of any user.
    pub fn name_of(&self, uid: u32) -> Option<Arc<str>> {
        let app = uid % PER_USER_RANGE;
        if app < FIRST_APPLICATION_UID {
            return None;
        }
        self.by_uid.get(&app).cloned()
    }

    /// The (user 0) uid of package `name`.
    pub fn uid_of(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Every package with its (user 0) uid.
    pub fn uids_by_name(&self) -> std::collections::BTreeMap<String, u32> {
        self.by_name
            .iter()
            .map(|(name, uid)| (name.to_string(), *uid))
            .collect()
    }

    /// Whether the list has any package (false on Linux).
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// The file this list is read from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
com.android.chrome 10123 0 /data/user/0/com.android.chrome default:targetSdkVersion=34 3003,3002
com.example.video 10200 1 /data/user/0/com.example.video default:privapp 3003
android 1000 0 /data/system platform:privapp none
com.shared.one 10300 0 /data/x default none
com.shared.two 10300 0 /data/y default none
broken-line
com.bad.uid notanumber 0 /data/z default none
";

    #[test]
    fn packages_list_maps_uids_to_names_for_every_user() {
        let p = Packages::parse(SAMPLE);
        assert_eq!(p.name_of(10123).as_deref(), Some("com.android.chrome"));
        // The same app in secondary user 10.
        assert_eq!(p.name_of(1_010_200).as_deref(), Some("com.example.video"));
        assert_eq!(p.name_of(10999), None);
    }

    #[test]
    fn system_uids_and_shared_uids_do_not_name_the_wrong_app() {
        let p = Packages::parse(SAMPLE);
        assert_eq!(p.name_of(1000), None);
        assert_eq!(p.name_of(10300).as_deref(), Some("com.shared.one"));
    }

    #[test]
    fn names_map_back_to_uids_and_bad_lines_are_skipped() {
        let p = Packages::parse(SAMPLE);
        assert_eq!(p.uid_of("com.example.video"), Some(10200));
        assert_eq!(p.uid_of("com.bad.uid"), None);
        assert_eq!(p.uid_of("broken-line"), None);
    }

    #[test]
    fn a_missing_file_is_an_empty_list_and_a_changed_file_reloads() {
        let dir = std::env::temp_dir().join(format!("upmt-pkgs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("packages.list");
        let _ = std::fs::remove_file(&path);
        let mut p = Packages::at(&path);
        assert!(p.is_empty());
        std::fs::write(&path, "com.a 10001 0 /d default none\n").unwrap();
        assert!(p.refresh());
        assert_eq!(p.name_of(10001).as_deref(), Some("com.a"));
        assert!(!p.refresh(), "unchanged file is not re-read");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
