//! Android's `/data/system/packages.list`: one line per installed package, `NAME UID DEBUGGABLE
//! DATADIR SEINFO GIDS`. It maps an app's uid to its package name when the socket's process is
//! gone before it could be looked up, and a package name to its uid for uid-range bypass rules.
//!
//! Multi-user phones give user `U`'s copy of an app uid `U * 100000 + appid`; the file lists
//! appids, so uids are reduced modulo 100000 (`PER_USER_RANGE`). Since every app has its own
//! uid, the uid alone names the app ([`Packages::kind_of`]); only uids that several packages
//! share (and system uids) need a look at the processes. Only reads the file.

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
/// Last app id of an installed application.
pub const LAST_APPLICATION_UID: u32 = 19_999;
/// SDK sandbox processes run as their app's app id plus this offset (Android 13+,
/// `Process.toSdkSandboxUid`), in 20000-29999.
pub const SDK_SANDBOX_OFFSET: u32 = 10_000;
/// Isolated processes (app zygote isolated 90000-98999, isolated services 99000-99999): a uid
/// per process, in no package.
pub const FIRST_ISOLATED_UID: u32 = 90_000;
/// Last isolated app id.
pub const LAST_ISOLATED_UID: u32 = 99_999;

/// What packages.list says a uid is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UidKind {
    /// The uid of exactly one package: the app, known from the uid alone.
    App(Arc<str>),
    /// An SDK sandbox process of this package.
    SdkSandbox(Arc<str>),
    /// An isolated process: its own uid, in no package (its process names its app).
    Isolated,
    /// A uid of several packages (sharedUserId), or a system uid: only its process tells.
    Shared,
    /// A uid packages.list does not know (or there is no list, as on Linux).
    Unlisted,
}

/// A parsed packages.list, reloaded when the file changes.
#[derive(Debug, Default)]
pub struct Packages {
    path: Option<PathBuf>,
    modified: Option<SystemTime>,
    by_uid: HashMap<u32, Arc<str>>,
    by_name: HashMap<Arc<str>, u32>,
    /// App ids that more than one package has.
    shared: std::collections::HashSet<u32>,
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
        self.shared.clear();
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
            if self.by_uid.contains_key(&uid) {
                self.shared.insert(uid);
            }
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

    /// What `uid` (of any Android user) is.
    pub fn kind_of(&self, uid: u32) -> UidKind {
        if self.by_uid.is_empty() {
            return UidKind::Unlisted;
        }
        let app = uid % PER_USER_RANGE;
        match app {
            ..FIRST_APPLICATION_UID => UidKind::Shared,
            FIRST_APPLICATION_UID..=LAST_APPLICATION_UID if self.shared.contains(&app) => {
                UidKind::Shared
            }
            FIRST_APPLICATION_UID..=LAST_APPLICATION_UID => match self.by_uid.get(&app) {
                Some(name) => UidKind::App(name.clone()),
                None => UidKind::Unlisted,
            },
            FIRST_ISOLATED_UID..=LAST_ISOLATED_UID => UidKind::Isolated,
            _ => match app
                .checked_sub(SDK_SANDBOX_OFFSET)
                .filter(|a| (FIRST_APPLICATION_UID..=LAST_APPLICATION_UID).contains(a))
                .and_then(|a| self.by_uid.get(&a))
            {
                Some(name) => UidKind::SdkSandbox(name.clone()),
                None => UidKind::Unlisted,
            },
        }
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
    fn uids_of_one_package_name_it_for_every_user_and_shared_ones_do_not() {
        let p = Packages::parse(SAMPLE);
        let app = |n: &str| UidKind::App(n.into());
        assert_eq!(p.kind_of(10123), app("com.android.chrome"));
        assert_eq!(p.kind_of(1_010_123), app("com.android.chrome"));
        assert_eq!(p.kind_of(10300), UidKind::Shared);
        assert_eq!(p.kind_of(1000), UidKind::Shared);
        assert_eq!(p.kind_of(1_000_000), UidKind::Shared, "root of user 10");
        assert_eq!(p.kind_of(10999), UidKind::Unlisted);
        assert_eq!(
            p.kind_of(20_123),
            UidKind::SdkSandbox("com.android.chrome".into())
        );
        assert_eq!(
            p.kind_of(1_020_200),
            UidKind::SdkSandbox("com.example.video".into())
        );
        assert_eq!(p.kind_of(20_124), UidKind::Unlisted);
        assert_eq!(p.kind_of(99_001), UidKind::Isolated);
        assert_eq!(p.kind_of(1_090_000), UidKind::Isolated);
        assert_eq!(p.kind_of(50_123), UidKind::Unlisted, "shared gid range");
        assert_eq!(Packages::default().kind_of(10123), UidKind::Unlisted);
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
