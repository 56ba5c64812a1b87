//! The usage ledger's file and the wall clock the core books days by.
//!
//! The file is JSON ([`upmt_mh_core::usage::UsageFile`]), written whole to a temporary file
//! next to it, flushed, then renamed over it, so a crash or a full disk leaves the old file or
//! the new one, never half of one. A file that cannot be read back (corrupt, another version)
//! never stops the daemon: it is moved aside to `<name>.corrupt-<unix seconds>`, named in a
//! warning, and counting starts over.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use upmt_mh_core::usage::{Ledger, UsageFile};

/// Why the usage could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("cannot create the directory of {}", .path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Gives the core its caps, the saved usage and the wall clock, at start.
pub fn start(
    host: &mut upmt_mh_core::MobileHost,
    config: &crate::config::Config,
    now: crate::setup::Instant,
) {
    host.set_caps(config.uplinks.iter().map(|u| u.cap).collect(), now);
    host.load_usage(load(&config.usage_file), now);
    let (unix, offset) = wall_clock();
    host.handle_wall_clock(unix, offset, now);
}

/// Reads the ledger at `path`: empty when there is no file; a file that cannot be taken in is
/// moved aside with a warning and an empty ledger returned.
pub fn load(path: &Path) -> Ledger {
    let text = match upmt_sys::file::read_bounded(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ledger::default(),
        Err(e) => {
            set_aside(path, &e.to_string());
            return Ledger::default();
        }
    };
    let parsed = serde_json::from_str::<UsageFile>(&text)
        .map_err(|e| e.to_string())
        .and_then(|f| Ledger::from_file(f).map_err(|e| e.to_string()));
    match parsed {
        Ok(ledger) => {
            tracing::info!(path = %path.display(), days = ledger.first_day().map(|d| d.to_string()), "usage loaded");
            ledger
        }
        Err(why) => {
            set_aside(path, &why);
            Ledger::default()
        }
    }
}

fn set_aside(path: &Path, why: &str) {
    let unix = wall_clock().0;
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{unix}"));
    let aside = PathBuf::from(aside);
    match std::fs::rename(path, &aside) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), error = why, moved_to = %aside.display(), "usage file unreadable: moved aside, counting starts over")
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = why, rename_error = %e, "usage file unreadable and cannot be moved aside: counting starts over; it is replaced at the next save")
        }
    }
}

/// Writes `file` to `path` atomically (temporary file, flush, rename); creates the directory.
pub fn save(path: &Path, file: &UsageFile) -> Result<(), SaveError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| SaveError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> io::Result<()> {
        let json = serde_json::to_vec(file).map_err(io::Error::other)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        SaveError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.mode(0o600)
    }
}

/// The wall clock now: seconds since 1970-01-01 UTC, and the local offset east of UTC in
/// seconds (0 when the time zone cannot be read).
pub fn wall_clock() -> (i64, i32) {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    (unix, utc_offset(unix))
}

fn utc_offset(unix: i64) -> i32 {
    // time_t is 64 bits on every target the daemon runs on (aarch64, x86_64).
    let t = unix as libc::time_t;
    // SAFETY: localtime_r only writes into the tm we own; a null return leaves it unused.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return 0;
        }
        i32::try_from(tm.tm_gmtoff).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upmt_mh_core::usage::{Bytes, Day};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("upmt-usage-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_saved_ledger_loads_back_and_no_temporary_file_is_left() {
        let d = dir("roundtrip");
        let path = d.join("state/usage.json");
        let mut l = Ledger::default();
        l.add(
            Day::parse("2026-12-01").unwrap(),
            "com.example.a",
            "cell",
            Bytes { tx: 1, rx: 2 },
        );
        save(&path, &l.to_file()).expect("saved");
        assert_eq!(load(&path), l);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["usage.json"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_missing_file_is_an_empty_ledger() {
        assert_eq!(load(&dir("missing").join("usage.json")), Ledger::default());
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_counting_starts_over() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("usage.json");
        std::fs::write(&path, "{\"version\":1,\"days\":{\"2026-12-").unwrap();
        assert_eq!(load(&path), Ledger::default());
        assert!(!path.exists());
        let aside: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(aside[0].starts_with("usage.json.corrupt-"), "{aside:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_wall_clock_is_after_this_code_was_written() {
        let (unix, offset) = wall_clock();
        assert!(unix > 1_700_000_000);
        assert!(offset.abs() <= 14 * 3600);
    }
}
