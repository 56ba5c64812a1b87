//! From a socket inode to the process that holds it and that process's app name, through
//! `/proc`: `/proc/PID/fd/*` links read `socket:[INODE]`, `/proc/PID/cmdline` names the app.
//!
//! What is cached, and why it stays right:
//! - inode -> pid, learnt from every fd directory read. A hit is checked against the process's
//!   start time (`/proc/PID/stat` field 22), so a pid reused by another process never matches.
//! - pid -> (start time, socket inodes, name). A process that exited is found out on use (its
//!   stat is gone or its start time differs) and on every complete scan (it is not listed), and
//!   its inodes go with it.
//! - Names that a process has not settled yet (an Android app between zygote's fork and
//!   `setArgV0`: `zygote`, `zygote64`, `<pre-initialized>`, `app_process`) are never cached.
//!
//! A miss scans: first the processes that most recently owned sockets (a browser opens many),
//! then every process, newest pid first, skipping those not owned by the socket's uid when the
//! uid is known (on Android every app has its own uid, so this is most of the saving). It never
//! touches the network.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Processes remembered as recent socket owners, scanned before a full scan.
const RECENT: usize = 16;

/// A process found to hold a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its app name (see [`app_name_from_cmdline`]); `None` when unreadable or unsettled.
    pub name: Option<Arc<str>>,
}

#[derive(Debug)]
struct ProcInfo {
    start: u64,
    inodes: Vec<u64>,
    name: Option<Arc<str>>,
}

/// Caches over a `/proc` tree.
#[derive(Debug)]
pub struct ProcTable {
    root: PathBuf,
    inode_pid: HashMap<u64, u32>,
    pids: HashMap<u32, ProcInfo>,
    recent: VecDeque<u32>,
    stats: ProcStats,
}

/// What the table did, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// Lookups answered from the inode cache.
    pub cache_hits: u64,
    /// Lookups answered by rescanning recent owners.
    pub recent_hits: u64,
    /// Scans of every process.
    pub full_scans: u64,
    /// Cached processes found gone (exited, or pid reused).
    pub invalidated: u64,
}

impl ProcTable {
    /// A table over `root` (normally `/proc`).
    pub fn new(root: impl Into<PathBuf>) -> ProcTable {
        ProcTable {
            root: root.into(),
            inode_pid: HashMap::new(),
            pids: HashMap::new(),
            recent: VecDeque::with_capacity(RECENT),
            stats: ProcStats::default(),
        }
    }

    /// Counters of what the table did.
    pub fn stats(&self) -> ProcStats {
        self.stats
    }

    /// How many processes and socket inodes are cached.
    pub fn cached(&self) -> (usize, usize) {
        (self.pids.len(), self.inode_pid.len())
    }

    /// The process holding socket `inode`. `uid` (the socket's owner, when known) narrows a
    /// full scan; a socket held by several processes (inherited over fork) goes to the most
    /// recently started one, the likelier user.
    pub fn owner_of(&mut self, inode: u64, uid: Option<u32>) -> Option<Process> {
        if inode == 0 {
            return None;
        }
        if let Some(&pid) = self.inode_pid.get(&inode) {
            if self.still_same(pid) {
                self.stats.cache_hits += 1;
                return Some(self.process(pid));
            }
            self.forget(pid);
        }
        let recent: Vec<u32> = self.recent.iter().copied().collect();
        for pid in recent {
            if self.rescan_pid(pid) && self.inode_pid.get(&inode) == Some(&pid) {
                self.stats.recent_hits += 1;
                return Some(self.process(pid));
            }
        }
        let pid = self
            .full_scan(inode, uid)
            .or_else(|| uid.and_then(|_| self.full_scan(inode, None)))?;
        self.mark_recent(pid);
        Some(self.process(pid))
    }

    /// The app name of `pid` (cached per process start).
    pub fn name_of(&mut self, pid: u32) -> Option<Arc<str>> {
        if let Some(info) = self.pids.get(&pid)
            && info.name.is_some()
            && self.still_same(pid)
        {
            return self.pids.get(&pid).and_then(|i| i.name.clone());
        }
        let start = self.start_time(pid)?;
        let name = self.read_name(pid);
        let info = self.pids.entry(pid).or_insert_with(|| ProcInfo {
            start,
            inodes: Vec::new(),
            name: None,
        });
        if info.start != start {
            info.start = start;
            info.inodes.clear();
        }
        if name.as_deref().is_some_and(is_settled) {
            info.name.clone_from(&name);
        }
        name
    }

    fn process(&mut self, pid: u32) -> Process {
        Process {
            pid,
            name: self.name_of(pid),
        }
    }

    fn mark_recent(&mut self, pid: u32) {
        self.recent.retain(|&p| p != pid);
        if self.recent.len() == RECENT {
            self.recent.pop_back();
        }
        self.recent.push_front(pid);
    }

    /// Whether the cached `pid` is still the process that was cached.
    fn still_same(&mut self, pid: u32) -> bool {
        let cached = self.pids.get(&pid).map(|i| i.start);
        cached.is_some() && self.start_time(pid) == cached
    }

    /// Drops `pid` and its inodes (it exited, or its pid now names another process).
    fn forget(&mut self, pid: u32) {
        if let Some(info) = self.pids.remove(&pid) {
            self.stats.invalidated += 1;
            for inode in info.inodes {
                if self.inode_pid.get(&inode) == Some(&pid) {
                    self.inode_pid.remove(&inode);
                }
            }
        }
        self.recent.retain(|&p| p != pid);
    }

    /// Re-reads `pid`'s fds; false when it is gone.
    fn rescan_pid(&mut self, pid: u32) -> bool {
        let Some(start) = self.start_time(pid) else {
            self.forget(pid);
            return false;
        };
        if self.pids.get(&pid).is_some_and(|i| i.start != start) {
            self.forget(pid);
        }
        let inodes = self.socket_inodes(pid);
        self.record(pid, start, inodes);
        true
    }

    fn record(&mut self, pid: u32, start: u64, inodes: Vec<u64>) {
        for &inode in &inodes {
            // Shared sockets go to the most recently started holder.
            let keep_other = self
                .inode_pid
                .get(&inode)
                .filter(|&&other| other != pid)
                .and_then(|other| self.pids.get(other))
                .is_some_and(|o| o.start > start);
            if !keep_other {
                self.inode_pid.insert(inode, pid);
            }
        }
        let info = self.pids.entry(pid).or_insert_with(|| ProcInfo {
            start,
            inodes: Vec::new(),
            name: None,
        });
        info.start = start;
        info.inodes = inodes;
    }

    /// Scans processes, newest pid first, until one holds `inode`; with `uid`, only that
    /// uid's processes. A scan that reaches the end also drops processes that have exited.
    fn full_scan(&mut self, inode: u64, uid: Option<u32>) -> Option<u32> {
        self.stats.full_scans += 1;
        let mut pids: Vec<u32> = match std::fs::read_dir(&self.root) {
            Ok(dir) => dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect(),
            Err(_) => return None,
        };
        pids.sort_unstable_by(|a, b| b.cmp(a));
        for &pid in &pids {
            if let Some(want) = uid {
                let owner = std::fs::metadata(self.root.join(pid.to_string())).map(|m| m.uid());
                if owner.ok() != Some(want) {
                    continue;
                }
            }
            let Some(start) = self.start_time(pid) else {
                continue;
            };
            if self.pids.get(&pid).is_some_and(|i| i.start != start) {
                self.forget(pid);
            }
            let inodes = self.socket_inodes(pid);
            let found = inodes.contains(&inode);
            self.record(pid, start, inodes);
            if found {
                return self.inode_pid.get(&inode).copied();
            }
        }
        if uid.is_none() {
            let gone: Vec<u32> = self
                .pids
                .keys()
                .copied()
                .filter(|p| pids.binary_search_by(|x| p.cmp(x)).is_err())
                .collect();
            for pid in gone {
                self.forget(pid);
            }
        }
        None
    }

    fn socket_inodes(&self, pid: u32) -> Vec<u64> {
        let dir = self.root.join(pid.to_string()).join("fd");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let target = std::fs::read_link(e.ok()?.path()).ok()?;
                socket_inode(target.as_os_str())
            })
            .collect()
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        let stat = std::fs::read(self.root.join(pid.to_string()).join("stat")).ok()?;
        start_time_from_stat(&stat)
    }

    fn read_name(&self, pid: u32) -> Option<Arc<str>> {
        let base = self.root.join(pid.to_string());
        let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
        if let Some(name) = app_name_from_cmdline(&cmdline) {
            return Some(name.into());
        }
        // Kernel threads and zombies have an empty cmdline; comm still names them.
        let comm = std::fs::read(base.join("comm")).ok()?;
        let comm = String::from_utf8_lossy(&comm);
        let comm = comm.trim_end_matches('\n');
        (!comm.is_empty()).then(|| comm.into())
    }
}

/// The app name in a `/proc/PID/cmdline`: its first argument, up to the first `:` (Android
/// names a package's extra processes `package:suffix`), and its last path component when it
/// is a path (Linux programs started as `/usr/bin/curl`). `None` when empty.
pub fn app_name_from_cmdline(cmdline: &[u8]) -> Option<&str> {
    let arg0 = cmdline.split(|&b| b == 0).next()?;
    let arg0 = std::str::from_utf8(arg0).ok()?;
    let arg0 = arg0.split(':').next().unwrap_or(arg0);
    let name = arg0.rsplit('/').next().unwrap_or(arg0).trim();
    (!name.is_empty()).then_some(name)
}

/// Whether `name` is a process's final name, worth caching.
fn is_settled(name: &str) -> bool {
    !matches!(
        name,
        "zygote" | "zygote64" | "<pre-initialized>" | "app_process" | "app_process64"
    )
}

/// The inode in a `socket:[INODE]` fd link target.
pub fn socket_inode(target: &OsStr) -> Option<u64> {
    let t = target.as_bytes();
    let inner = t.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// Field 22 (starttime) of a `/proc/PID/stat`; the command (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn start_time_from_stat(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Whether `root` looks like a procfs with process directories.
pub fn is_procfs(root: &Path) -> bool {
    root.join("self").join("stat").exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn cmdline_names_are_the_first_argument_up_to_a_colon_and_its_basename() {
        assert_eq!(
            app_name_from_cmdline(b"com.android.chrome:sandboxed_process0\0--flag\0"),
            Some("com.android.chrome")
        );
        assert_eq!(app_name_from_cmdline(b"/usr/bin/curl\0-sS\0"), Some("curl"));
        assert_eq!(
            app_name_from_cmdline(b"com.example.video\0https://x/y:80\0"),
            Some("com.example.video")
        );
        assert_eq!(app_name_from_cmdline(b""), None);
        assert_eq!(app_name_from_cmdline(b"\0\0"), None);
        assert_eq!(app_name_from_cmdline(b"\xff\xfe\0"), None);
    }

    #[test]
    fn socket_links_parse_and_other_links_do_not() {
        assert_eq!(socket_inode(OsStr::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(OsStr::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(OsStr::new("/dev/null")), None);
        assert_eq!(socket_inode(OsStr::new("socket:[x]")), None);
    }

    #[test]
    fn start_time_is_found_after_a_command_with_spaces_and_parens() {
        let stat = b"42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time_from_stat(stat), Some(987_654));
        assert_eq!(start_time_from_stat(b"42 (x) S 1"), None);
    }

    /// A fake /proc: one directory per pid with stat, cmdline and fd links.
    struct FakeProc(tempdir::Dir);

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    impl FakeProc {
        fn new(tag: &str) -> FakeProc {
            let p =
                std::env::temp_dir().join(format!("upmt-fakeproc-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            FakeProc(tempdir::Dir(p))
        }
        fn root(&self) -> &Path {
            &self.0.0
        }
        fn add(&self, pid: u32, start: u64, cmdline: &str, inodes: &[u64]) {
            let d = self.root().join(pid.to_string());
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(d.join("fd")).unwrap();
            let stat = format!("{pid} (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0");
            std::fs::write(d.join("stat"), stat).unwrap();
            std::fs::write(d.join("cmdline"), cmdline.replace(' ', "\0")).unwrap();
            for (i, inode) in inodes.iter().enumerate() {
                symlink(
                    format!("socket:[{inode}]"),
                    d.join("fd").join(i.to_string()),
                )
                .unwrap();
            }
        }
        fn remove(&self, pid: u32) {
            std::fs::remove_dir_all(self.root().join(pid.to_string())).unwrap();
        }
    }

    #[test]
    fn a_socket_leads_to_its_process_and_the_second_lookup_hits_the_cache() {
        let fake = FakeProc::new("hit");
        fake.add(100, 5, "com.example.video --x", &[11, 12]);
        fake.add(200, 6, "/usr/bin/curl", &[21]);
        let mut t = ProcTable::new(fake.root());
        let p = t.owner_of(11, None).unwrap();
        assert_eq!((p.pid, p.name.as_deref()), (100, Some("com.example.video")));
        assert_eq!(t.stats().full_scans, 1);
        // 21 was learnt by the same scan only if it reached pid 200 first (newest first): yes.
        let q = t.owner_of(21, None).unwrap();
        assert_eq!((q.pid, q.name.as_deref()), (200, Some("curl")));
        assert_eq!(t.owner_of(12, None).unwrap().pid, 100);
        assert_eq!(t.stats().full_scans, 1);
        assert!(t.stats().cache_hits >= 2);
        assert_eq!(t.owner_of(99, None), None);
    }

    #[test]
    fn an_exited_process_and_a_reused_pid_invalidate_the_cache() {
        let fake = FakeProc::new("exit");
        fake.add(100, 5, "com.example.old", &[11]);
        let mut t = ProcTable::new(fake.root());
        assert_eq!(
            t.owner_of(11, None).unwrap().name.as_deref(),
            Some("com.example.old")
        );
        // The process exits; its pid comes back as another program holding the same inode
        // number (inodes are reused too).
        fake.remove(100);
        fake.add(100, 9, "com.example.new", &[11]);
        let p = t.owner_of(11, None).unwrap();
        assert_eq!(p.name.as_deref(), Some("com.example.new"));
        assert!(t.stats().invalidated >= 1);
        // Gone for good: the lookup fails and the cache forgets it.
        fake.remove(100);
        assert_eq!(t.owner_of(11, None), None);
        assert_eq!(t.cached(), (0, 0));
    }

    #[test]
    fn a_new_socket_of_a_recent_owner_is_found_without_a_full_scan() {
        let fake = FakeProc::new("recent");
        fake.add(100, 5, "browser", &[11]);
        fake.add(50, 4, "other", &[]);
        let mut t = ProcTable::new(fake.root());
        assert_eq!(t.owner_of(11, None).unwrap().pid, 100);
        fake.add(100, 5, "browser", &[11, 13]);
        assert_eq!(t.owner_of(13, None).unwrap().pid, 100);
        assert_eq!(t.stats().full_scans, 1);
        assert_eq!(t.stats().recent_hits, 1);
    }

    #[test]
    fn a_shared_socket_goes_to_the_most_recently_started_holder() {
        let fake = FakeProc::new("shared");
        fake.add(300, 5, "parent", &[11]);
        fake.add(301, 8, "child", &[11]);
        fake.add(302, 7, "sibling", &[11]);
        let mut t = ProcTable::new(fake.root());
        // Scans newest pid first: 302 is found first, but a complete picture prefers 301.
        t.full_scan(0, None);
        assert_eq!(t.owner_of(11, None).unwrap().name.as_deref(), Some("child"));
    }

    #[test]
    fn unsettled_android_names_are_not_cached() {
        let fake = FakeProc::new("zygote");
        fake.add(100, 5, "<pre-initialized>", &[11]);
        let mut t = ProcTable::new(fake.root());
        assert_eq!(
            t.owner_of(11, None).unwrap().name.as_deref(),
            Some("<pre-initialized>")
        );
        fake.add(100, 5, "com.example.app", &[11]);
        assert_eq!(
            t.owner_of(11, None).unwrap().name.as_deref(),
            Some("com.example.app")
        );
    }
}
