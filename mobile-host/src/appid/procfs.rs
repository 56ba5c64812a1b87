//! From a socket inode to the process that holds it and that process's app name, through
//! `/proc`: `/proc/PID/fd/*` links read `socket:[INODE]`, `/proc/PID/cmdline` names the app.
//!
//! The table is an index, kept up to date a process at a time rather than rebuilt per miss:
//! - inode -> (pid, fd), learnt from every fd directory read. A hit is confirmed by reading
//!   that one fd link back, so a socket closed, passed on, or a pid reused never answers wrong.
//! - pid -> (uid, start time, socket inodes, name). Re-reading a process replaces its inodes,
//!   so an inode it no longer holds leaves the index; an exited process leaves with its inodes.
//! - Which processes are new, exec'd or gone comes from the process events connector
//!   ([`super::events`], fed in through [`ProcTable::apply`]). Without it (or after it lost
//!   events) every miss lists `/proc` to learn the same, and names are read again per answer
//!   (an exec keeps the pid and the start time). With events, a socket no known process holds
//!   still gets a listing, in case the events missed its process.
//!
//! A miss reads, until one holds the inode and only among the socket uid's processes: the
//! processes that are new or changed since last read (a just-started app), the recent socket
//! owners (a browser opens many), those whose fd count moved (one stat each), then the rest.
//! Both maps are bounded ([`ProcLimits`]); past a bound the table starts over empty.
//!
//! Names that a process has not settled yet (an Android app between zygote's fork and
//! `setArgV0`: `zygote`, `usap64`, `webview_zygote`, `<pre-initialized>`, `app_process`) are
//! never cached. It never touches the network.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::events::ProcEvent;

/// Processes remembered as recent socket owners, read early on a miss.
const RECENT: usize = 16;

/// Bounds of the table's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcLimits {
    /// Processes remembered.
    pub max_processes: usize,
    /// Socket inodes indexed.
    pub max_inodes: usize,
}

impl Default for ProcLimits {
    fn default() -> Self {
        // Well above a phone's or a laptop's process count and their sockets, small in memory
        // (a few MiB at the bound).
        ProcLimits {
            max_processes: 32_768,
            max_inodes: 262_144,
        }
    }
}

/// A process found to hold a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its app name (see [`app_name_from_cmdline`]); `None` when unreadable.
    pub name: Option<Arc<str>>,
    /// Whether the name is final (see [`is_settled`]).
    pub settled: bool,
    /// How it was found.
    pub found: Found,
}

/// How the holder of a socket was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Through the index, without reading any process (one fd link read back).
    Index,
    /// Among the processes process events named new or changed, reading only those: no
    /// listing of `/proc`, no other process read.
    NewProcess,
    /// By reading processes beyond those (no events, events lost, an old process's new socket).
    Scan,
}

#[derive(Debug, Default)]
struct ProcInfo {
    /// Owner uid (of `/proc/PID`), once looked at.
    uid: Option<u32>,
    /// Start time (stat field 22) when the fds were read; 0 before.
    start: u64,
    /// Socket inodes with their fd numbers, as last read; `None` before the first read.
    inodes: Option<Vec<(u64, u32)>>,
    /// The fd directory's size when last read (its fd count on Linux 6.2+).
    fd_sig: u64,
    /// The settled name, while events tell of execs.
    name: Option<Arc<str>>,
    /// New, exec'd or renamed since its fds were last read.
    dirty: bool,
}

/// Caches over a `/proc` tree.
#[derive(Debug)]
pub struct ProcTable {
    root: PathBuf,
    limits: ProcLimits,
    inode_pid: HashMap<u64, (u32, u32)>,
    pids: HashMap<u32, ProcInfo>,
    recent: VecDeque<u32>,
    /// Process events feed the table.
    events: bool,
    /// The pid set is complete: listed, and kept by events since without a loss.
    complete: bool,
    stats: ProcStats,
}

/// What the table did, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// Lookups answered from the index.
    pub index_hits: u64,
    /// Lookups answered by reading only the processes events named new or changed.
    pub event_hits: u64,
    /// Lookups that had to read processes.
    pub scans: u64,
    /// Process fd directories read.
    pub processes_read: u64,
    /// Listings of the whole `/proc`.
    pub listings: u64,
    /// Processes found gone (exited, or pid reused).
    pub invalidated: u64,
    /// Times a bound was reached and the table started over.
    pub resets: u64,
}

impl ProcTable {
    /// A table over `root` (normally `/proc`) with the default bounds.
    pub fn new(root: impl Into<PathBuf>) -> ProcTable {
        ProcTable::with_limits(root, ProcLimits::default())
    }

    /// A table over `root` with `limits`.
    pub fn with_limits(root: impl Into<PathBuf>, limits: ProcLimits) -> ProcTable {
        ProcTable {
            root: root.into(),
            limits,
            inode_pid: HashMap::new(),
            pids: HashMap::new(),
            recent: VecDeque::with_capacity(RECENT),
            events: false,
            complete: false,
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

    /// Whether process events feed the table (see [`ProcTable::apply`]).
    pub fn set_events(&mut self, on: bool) {
        self.events = on;
        if !on {
            self.complete = false;
        }
    }

    fn trusted(&self) -> bool {
        self.events && self.complete
    }

    /// Takes in one process event.
    pub fn apply(&mut self, event: ProcEvent) {
        match event {
            ProcEvent::Fork { pid, .. } => {
                // A pid seen again without its exit: that exit was missed.
                if self.pids.contains_key(&pid) {
                    self.forget(pid);
                }
                self.insert_unread(pid);
            }
            ProcEvent::Changed { pid } => match self.pids.get_mut(&pid) {
                Some(info) => {
                    info.name = None;
                    info.uid = None;
                    info.dirty = true;
                }
                None => self.insert_unread(pid),
            },
            ProcEvent::Exit { pid } => self.forget(pid),
            ProcEvent::Lost => self.complete = false,
        }
    }

    fn insert_unread(&mut self, pid: u32) {
        if self.pids.len() >= self.limits.max_processes {
            self.reset();
        }
        self.pids.insert(
            pid,
            ProcInfo {
                dirty: true,
                ..ProcInfo::default()
            },
        );
    }

    /// Drops everything: the next lookups start cold.
    fn reset(&mut self) {
        self.stats.resets += 1;
        self.pids.clear();
        self.inode_pid.clear();
        self.recent.clear();
        self.complete = false;
    }

    /// Lists `/proc` and reads every process: afterwards every socket open now is indexed.
    pub fn prime(&mut self) {
        while !self.prime_step(usize::MAX) {}
    }

    /// One step of [`ProcTable::prime`]: reads up to `max` processes not read yet (newest
    /// first), listing `/proc` first when the pid set is not known; true when none is left.
    pub fn prime_step(&mut self, max: usize) -> bool {
        if !self.complete {
            self.list();
        }
        let mut unread: Vec<u32> = self
            .pids
            .iter()
            .filter(|(_, i)| i.inodes.is_none())
            .map(|(&p, _)| p)
            .collect();
        unread.sort_unstable_by(|a, b| b.cmp(a));
        let done = unread.len() <= max;
        for pid in unread.into_iter().take(max) {
            self.read(pid);
        }
        done
    }

    /// The process holding socket `inode`. `uid` (the socket's owner, when known) narrows the
    /// search to that uid's processes first; a socket held by several processes (inherited
    /// over fork, or passed) goes to the most recently started one, the likelier user.
    pub fn owner_of(&mut self, inode: u64, uid: Option<u32>) -> Option<Process> {
        if inode == 0 {
            return None;
        }
        if let Some(&(pid, fd)) = self.inode_pid.get(&inode) {
            if self.holds(pid, fd, inode) {
                self.stats.index_hits += 1;
                self.mark_recent(pid);
                return Some(self.process(pid, Found::Index));
            }
            self.inode_pid.remove(&inode);
            if let Some(info) = self.pids.get_mut(&pid) {
                info.dirty = true;
            }
        }
        let listed = !self.trusted();
        if listed {
            self.list();
        }
        let found = match self.search(inode, uid) {
            Some((pid, among_new)) => Some((pid, among_new && !listed)),
            // Events can miss a process (or a connector can stay silent): a listing finds it.
            None if !listed && self.list() > 0 => self.search(inode, uid).map(|(p, _)| (p, false)),
            None => None,
        };
        let found =
            found.or_else(|| uid.and_then(|_| self.search(inode, None).map(|(p, _)| (p, false))));
        let Some((pid, among_new)) = found else {
            self.stats.scans += 1;
            return None;
        };
        let found = if among_new {
            self.stats.event_hits += 1;
            Found::NewProcess
        } else {
            self.stats.scans += 1;
            Found::Scan
        };
        self.mark_recent(pid);
        Some(self.process(pid, found))
    }

    /// Reads candidates, most likely first, until one holds `inode`; with whether it was found
    /// among the new or changed processes, before any other was read.
    fn search(&mut self, inode: u64, uid: Option<u32>) -> Option<(u32, bool)> {
        // New or changed processes (process events) are read first; only they are sorted, as
        // a just-started app is found among them.
        let mut dirty: Vec<u32> = self
            .pids
            .iter()
            .filter(|(_, i)| i.dirty)
            .map(|(&p, _)| p)
            .collect();
        dirty.sort_unstable_by_key(|&p| likelier(&self.recent, p));
        let mut read = HashSet::new();
        for pid in dirty {
            if self.uid_matches(pid, uid) {
                read.insert(pid);
                if let Some(found) = self.read_finds(pid, inode) {
                    return Some((found, true));
                }
            }
        }
        let mut order: Vec<u32> = self.pids.keys().copied().collect();
        order.sort_unstable_by_key(|&p| likelier(&self.recent, p));
        // Then those whose fd table moved (one stat each), then the others.
        let mut unchanged = Vec::new();
        for pid in order {
            if read.contains(&pid) || !self.uid_matches(pid, uid) {
                continue;
            }
            let sig = self.fd_sig(pid);
            if sig.is_some() && sig == self.pids.get(&pid).map(|i| i.fd_sig) {
                unchanged.push(pid);
                continue;
            }
            if let Some(found) = self.read_finds(pid, inode) {
                return Some((found, false));
            }
        }
        unchanged
            .into_iter()
            .find_map(|pid| self.read_finds(pid, inode))
            .map(|found| (found, false))
    }

    /// Reads `pid`; when it holds `inode`, the holder the index now names (`pid`, or a more
    /// recently started process that holds it too).
    fn read_finds(&mut self, pid: u32, inode: u64) -> Option<u32> {
        if !self.read(pid) {
            return None;
        }
        let holds = self
            .pids
            .get(&pid)
            .and_then(|i| i.inodes.as_ref())
            .is_some_and(|v| v.iter().any(|&(i, _)| i == inode));
        holds.then(|| self.inode_pid.get(&inode).map_or(pid, |&(p, _)| p))
    }

    fn uid_matches(&mut self, pid: u32, want: Option<u32>) -> bool {
        let Some(want) = want else {
            return true;
        };
        if let Some(uid) = self.pids.get(&pid).and_then(|i| i.uid) {
            return uid == want;
        }
        let uid = std::fs::metadata(self.pid_dir(pid)).map(|m| m.uid()).ok();
        match (uid, self.pids.get_mut(&pid)) {
            (Some(uid), Some(info)) => {
                info.uid = Some(uid);
                uid == want
            }
            _ => false,
        }
    }

    /// The process for an answer, with its name.
    fn process(&mut self, pid: u32, found: Found) -> Process {
        let trusted = self.trusted();
        if trusted && let Some(name) = self.pids.get(&pid).and_then(|i| i.name.clone()) {
            return Process {
                pid,
                name: Some(name),
                settled: true,
                found,
            };
        }
        let name = self.read_name(pid);
        let settled = name.as_deref().is_some_and(is_settled);
        if trusted
            && settled
            && let Some(info) = self.pids.get_mut(&pid)
        {
            info.name.clone_from(&name);
        }
        Process {
            pid,
            name,
            settled,
            found,
        }
    }

    /// The app name of `pid`, read now.
    pub fn name_of(&self, pid: u32) -> Option<Arc<str>> {
        self.read_name(pid)
    }

    fn mark_recent(&mut self, pid: u32) {
        self.recent.retain(|&p| p != pid);
        if self.recent.len() == RECENT {
            self.recent.pop_back();
        }
        self.recent.push_front(pid);
    }

    /// Drops `pid` and its inodes (it exited, or its pid now names another process).
    fn forget(&mut self, pid: u32) {
        if let Some(info) = self.pids.remove(&pid) {
            self.stats.invalidated += 1;
            for (inode, _) in info.inodes.unwrap_or_default() {
                if self.inode_pid.get(&inode).is_some_and(|&(p, _)| p == pid) {
                    self.inode_pid.remove(&inode);
                }
            }
        }
        self.recent.retain(|&p| p != pid);
    }

    /// Learns the pid set from a listing of `/proc`: new pids are added unread, vanished ones
    /// forgotten. Returns how many were new.
    fn list(&mut self) -> usize {
        self.stats.listings += 1;
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let now: HashSet<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let gone: Vec<u32> = self
            .pids
            .keys()
            .copied()
            .filter(|p| !now.contains(p))
            .collect();
        for pid in gone {
            self.forget(pid);
        }
        let mut new = 0;
        for pid in now {
            if !self.pids.contains_key(&pid) {
                self.insert_unread(pid);
                new += 1;
            }
        }
        self.complete = true;
        new
    }

    /// Reads `pid`'s socket fds into the index; false when it is gone.
    fn read(&mut self, pid: u32) -> bool {
        let Some(start) = self.start_time(pid) else {
            self.forget(pid);
            return false;
        };
        if self
            .pids
            .get(&pid)
            .is_some_and(|i| i.start != 0 && i.start != start)
        {
            // The pid names another process now.
            self.forget(pid);
            self.insert_unread(pid);
        }
        let sig = self.fd_sig(pid).unwrap_or(0);
        let Some(inodes) = self.socket_inodes(pid) else {
            self.forget(pid);
            return false;
        };
        self.stats.processes_read += 1;
        if !self.pids.contains_key(&pid) {
            self.insert_unread(pid);
        }
        let Some(info) = self.pids.get_mut(&pid) else {
            return false;
        };
        let old = info.inodes.replace(inodes.clone()).unwrap_or_default();
        info.start = start;
        info.fd_sig = sig;
        info.dirty = false;
        for (inode, _) in old {
            if self.inode_pid.get(&inode).is_some_and(|&(p, _)| p == pid)
                && !inodes.iter().any(|&(i, _)| i == inode)
            {
                self.inode_pid.remove(&inode);
            }
        }
        for (inode, fd) in inodes {
            // Shared sockets go to the most recently started holder.
            let keep_other = self
                .inode_pid
                .get(&inode)
                .filter(|&&(other, _)| other != pid)
                .and_then(|(other, _)| self.pids.get(other))
                .is_some_and(|o| o.start > start);
            if !keep_other {
                self.inode_pid.insert(inode, (pid, fd));
            }
        }
        if self.inode_pid.len() > self.limits.max_inodes {
            self.reset();
        }
        true
    }

    fn pid_dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    /// Whether `pid`'s fd `fd` is still socket `inode` (one readlink).
    fn holds(&self, pid: u32, fd: u32, inode: u64) -> bool {
        let link = self.pid_dir(pid).join("fd").join(fd.to_string());
        std::fs::read_link(link).is_ok_and(|t| socket_inode(t.as_os_str()) == Some(inode))
    }

    /// The fd directory's size: on Linux 6.2+ procfs its fd count, so a process that opened
    /// or closed sockets since its last read shows it without a read. Older kernels say 0.
    fn fd_sig(&self, pid: u32) -> Option<u64> {
        let m = std::fs::metadata(self.pid_dir(pid).join("fd")).ok()?;
        (m.size() != 0).then_some(m.size())
    }

    /// `pid`'s socket fds as (inode, fd); `None` when its fd directory cannot be read.
    fn socket_inodes(&self, pid: u32) -> Option<Vec<(u64, u32)>> {
        let dir = self.pid_dir(pid).join("fd");
        let cdir = CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: a valid C string; the DIR is closed below on every path.
        let d = unsafe { libc::opendir(cdir.as_ptr()) };
        if d.is_null() {
            return None;
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: d is an open DIR; the entry is valid until the next readdir/closedir.
            let e = unsafe { libc::readdir(d) };
            if e.is_null() {
                break;
            }
            // SAFETY: d_name is a NUL-terminated array inside the valid entry.
            let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
            let Some(fd) = std::str::from_utf8(name.to_bytes())
                .ok()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Relative to the open directory: no path walk per fd.
            // SAFETY: valid dir fd, NUL-terminated name, buffer of buf.len() bytes.
            let n = unsafe {
                libc::readlinkat(
                    libc::dirfd(d),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                continue;
            }
            if let Some(inode) = socket_inode(OsStr::from_bytes(&buf[..n as usize])) {
                out.push((inode, fd));
            }
        }
        // SAFETY: d is open and not used after this.
        unsafe { libc::closedir(d) };
        Some(out)
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        let stat = std::fs::read(self.pid_dir(pid).join("stat")).ok()?;
        start_time_from_stat(&stat)
    }

    fn read_name(&self, pid: u32) -> Option<Arc<str>> {
        let base = self.pid_dir(pid);
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

/// The order in which a search reads processes: recent socket owners first, then the newest
/// pid first (pids count up, so those are the likelier new owners).
fn likelier(recent: &VecDeque<u32>, pid: u32) -> (usize, std::cmp::Reverse<u32>) {
    (
        recent.iter().position(|&r| r == pid).unwrap_or(usize::MAX),
        std::cmp::Reverse(pid),
    )
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

/// Whether `name` is a process's final name, worth caching: not an Android process between
/// zygote's fork and the app's `setArgV0` (`zygote64`, the unspecialized app process pool's
/// `usap32`/`usap64`, `webview_zygote`, an app zygote `com.x_zygote`, `<pre-initialized>`).
pub fn is_settled(name: &str) -> bool {
    !(matches!(
        name,
        "zygote"
            | "zygote64"
            | "<pre-initialized>"
            | "app_process"
            | "app_process32"
            | "app_process64"
    ) || name.starts_with("usap")
        || name.ends_with("_zygote"))
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
pub(crate) mod tests {
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

    #[test]
    fn zygote_and_usap_names_are_unsettled_and_app_names_settled() {
        for n in [
            "zygote64",
            "usap64",
            "usap32",
            "webview_zygote",
            "com.x_zygote",
        ] {
            assert!(!is_settled(n), "{n}");
        }
        for n in ["com.android.chrome", "curl", "zygote_helper"] {
            assert!(is_settled(n), "{n}");
        }
    }

    /// A fake /proc: one directory per pid with stat, cmdline and fd links.
    pub(crate) struct FakeProc(std::path::PathBuf);

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl FakeProc {
        pub(crate) fn new(tag: &str) -> FakeProc {
            // Unique per call: tests may share the process as threads (the run under qemu).
            static TREES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = TREES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("upmt-fakeproc-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            FakeProc(p)
        }
        pub(crate) fn root(&self) -> &Path {
            &self.0
        }
        /// A process with socket `inodes` at fds 3, 4, ... (fd 0 is a non-socket).
        pub(crate) fn add(&self, pid: u32, start: u64, cmdline: &str, inodes: &[u64]) {
            let d = self.root().join(pid.to_string());
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(d.join("fd")).unwrap();
            let stat = format!("{pid} (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0");
            std::fs::write(d.join("stat"), stat).unwrap();
            std::fs::write(d.join("cmdline"), cmdline.replace(' ', "\0")).unwrap();
            symlink("/dev/null", d.join("fd").join("0")).unwrap();
            for (i, inode) in inodes.iter().enumerate() {
                self.open_at(pid, 3 + i as u32, *inode);
            }
        }
        pub(crate) fn open_at(&self, pid: u32, fd: u32, inode: u64) {
            let link = self.root().join(format!("{pid}/fd/{fd}"));
            let _ = std::fs::remove_file(&link);
            symlink(format!("socket:[{inode}]"), link).unwrap();
        }
        pub(crate) fn close(&self, pid: u32, fd: u32) {
            std::fs::remove_file(self.root().join(format!("{pid}/fd/{fd}"))).unwrap();
        }
        pub(crate) fn exec(&self, pid: u32, cmdline: &str) {
            let d = self.root().join(pid.to_string());
            std::fs::write(d.join("cmdline"), cmdline.replace(' ', "\0")).unwrap();
        }
        pub(crate) fn remove(&self, pid: u32) {
            std::fs::remove_dir_all(self.root().join(pid.to_string())).unwrap();
        }
    }

    fn name(p: Option<Process>) -> Option<String> {
        p.and_then(|p| p.name.map(|n| n.to_string()))
    }

    #[test]
    fn a_socket_leads_to_its_process_and_the_second_lookup_hits_the_index() {
        let fake = FakeProc::new("hit");
        fake.add(100, 5, "com.example.video --x", &[11, 12]);
        fake.add(200, 6, "/usr/bin/curl", &[21]);
        let mut t = ProcTable::new(fake.root());
        let p = t.owner_of(11, None).unwrap();
        assert_eq!((p.pid, p.name.as_deref()), (100, Some("com.example.video")));
        assert_eq!(p.found, Found::Scan);
        // pid 200 was read on the way (newest first).
        let q = t.owner_of(21, None).unwrap();
        assert_eq!(
            (q.pid, q.name.as_deref(), q.found),
            (200, Some("curl"), Found::Index)
        );
        assert_eq!(t.owner_of(12, None).unwrap().pid, 100);
        assert_eq!(t.stats().scans, 1);
        assert_eq!(t.stats().index_hits, 2);
        assert_eq!(t.owner_of(99, None), None);
    }

    #[test]
    fn a_process_that_execs_is_named_by_its_new_program() {
        let fake = FakeProc::new("exec");
        fake.add(100, 5, "/bin/sh -c x", &[11]);
        // Without events: the name is read per answer.
        let mut t = ProcTable::new(fake.root());
        assert_eq!(name(t.owner_of(11, None)).as_deref(), Some("sh"));
        fake.exec(100, "/usr/bin/curl -sS");
        assert_eq!(name(t.owner_of(11, None)).as_deref(), Some("curl"));
        // With events: the name is cached until the exec event.
        let mut t = ProcTable::new(fake.root());
        t.set_events(true);
        fake.exec(100, "/bin/sh");
        assert_eq!(name(t.owner_of(11, None)).as_deref(), Some("sh"));
        fake.exec(100, "/usr/bin/wget");
        assert_eq!(name(t.owner_of(11, None)).as_deref(), Some("sh"), "cached");
        t.apply(ProcEvent::Changed { pid: 100 });
        assert_eq!(name(t.owner_of(11, None)).as_deref(), Some("wget"));
    }

    #[test]
    fn an_exited_process_and_a_reused_pid_invalidate_the_cache() {
        let fake = FakeProc::new("exit");
        fake.add(100, 5, "com.example.old", &[11]);
        let mut t = ProcTable::new(fake.root());
        assert_eq!(
            name(t.owner_of(11, None)).as_deref(),
            Some("com.example.old")
        );
        // The process exits; its pid comes back as another program that holds the same inode
        // number (inodes are reused too) at another fd, and a new one.
        fake.remove(100);
        fake.add(100, 9, "com.example.new", &[]);
        fake.open_at(100, 7, 11);
        fake.open_at(100, 8, 12);
        assert_eq!(
            name(t.owner_of(11, None)).as_deref(),
            Some("com.example.new")
        );
        assert_eq!(t.owner_of(12, None).unwrap().pid, 100);
        assert!(t.stats().invalidated >= 1);
        // Gone for good: the lookup fails and the cache forgets it.
        fake.remove(100);
        assert_eq!(t.owner_of(11, None), None);
        assert_eq!(t.cached(), (0, 0));
    }

    #[test]
    fn an_exit_event_and_a_reused_pid_with_events() {
        let fake = FakeProc::new("exitev");
        fake.add(100, 5, "com.example.old", &[11]);
        let mut t = ProcTable::new(fake.root());
        t.set_events(true);
        t.prime();
        assert_eq!(
            name(t.owner_of(11, None)).as_deref(),
            Some("com.example.old")
        );
        fake.remove(100);
        t.apply(ProcEvent::Exit { pid: 100 });
        assert_eq!(t.cached(), (0, 0));
        fake.add(100, 9, "com.example.new", &[11]);
        t.apply(ProcEvent::Fork {
            pid: 100,
            parent: 1,
        });
        let p = t.owner_of(11, None).unwrap();
        assert_eq!(p.name.as_deref(), Some("com.example.new"));
        assert_eq!(p.found, Found::NewProcess);
        // The trusted pid set needed no listing beyond the first.
        assert_eq!(t.stats().listings, 1);
    }

    #[test]
    fn searches_read_recent_owners_first_then_the_newest_pids() {
        let recent: VecDeque<u32> = [50, 7].into();
        let mut pids = vec![3, 7, 99, 50, 120];
        pids.sort_unstable_by_key(|&p| likelier(&recent, p));
        assert_eq!(pids, vec![50, 7, 120, 99, 3]);
    }

    #[test]
    fn a_just_started_process_is_found_by_reading_it_alone_while_events_are_whole() {
        let fake = FakeProc::new("newborn");
        for pid in 100..150 {
            fake.add(pid, 5, "idle", &[u64::from(pid) * 10]);
        }
        let mut t = ProcTable::new(fake.root());
        t.set_events(true);
        t.prime();
        let read = t.stats().processes_read;
        fake.add(90, 9, "/usr/bin/curl", &[7]);
        t.apply(ProcEvent::Fork { pid: 90, parent: 1 });
        let p = t.owner_of(7, None).unwrap();
        assert_eq!((p.pid, p.found), (90, Found::NewProcess));
        assert_eq!(t.stats().processes_read, read + 1);
        assert_eq!((t.stats().event_hits, t.stats().scans), (1, 0));
        // After the kernel dropped events, the pid set is listed again: a scan.
        fake.add(91, 9, "/usr/bin/curl", &[8]);
        t.apply(ProcEvent::Fork { pid: 91, parent: 1 });
        t.apply(ProcEvent::Lost);
        assert_eq!(t.owner_of(8, None).unwrap().found, Found::Scan);
        assert_eq!((t.stats().event_hits, t.stats().scans), (1, 1));
    }

    #[test]
    fn priming_in_steps_reads_every_process_once() {
        let fake = FakeProc::new("steps");
        for pid in 10..20 {
            fake.add(pid, 1, "idle", &[u64::from(pid) * 100]);
        }
        let mut t = ProcTable::new(fake.root());
        t.set_events(true);
        let mut steps = 1;
        while !t.prime_step(3) {
            steps += 1;
        }
        assert_eq!(steps, 4);
        assert_eq!(t.stats().processes_read, 10);
        assert_eq!(t.stats().listings, 1);
        assert_eq!(t.cached(), (10, 10));
        assert!(t.owner_of(1500, None).unwrap().found == Found::Index);
    }

    #[test]
    fn a_process_the_events_missed_is_found_by_a_listing() {
        let fake = FakeProc::new("missed");
        fake.add(100, 5, "old", &[11]);
        let mut t = ProcTable::new(fake.root());
        t.set_events(true);
        t.prime();
        fake.add(200, 6, "com.example.unannounced", &[21]);
        let p = t.owner_of(21, None).unwrap();
        assert_eq!(p.name.as_deref(), Some("com.example.unannounced"));
        assert_eq!(t.stats().listings, 2);
    }

    #[test]
    fn a_socket_passed_to_another_process_is_found_with_its_new_holder() {
        let fake = FakeProc::new("pass");
        fake.add(100, 5, "sender", &[11]);
        fake.add(50, 4, "receiver", &[]);
        let mut t = ProcTable::new(fake.root());
        assert_eq!(t.owner_of(11, None).unwrap().pid, 100);
        // SCM_RIGHTS: the receiver gets it at another fd, the sender closes its copy.
        fake.open_at(50, 9, 11);
        fake.close(100, 3);
        let p = t.owner_of(11, None).unwrap();
        assert_eq!((p.pid, p.name.as_deref()), (50, Some("receiver")));
        // And the sender's stale entry is gone from the index.
        assert!(t.owner_of(11, None).unwrap().found == Found::Index);
    }

    #[test]
    fn a_new_socket_of_a_recent_owner_is_found_reading_one_process() {
        let fake = FakeProc::new("recent");
        for pid in 10..60 {
            fake.add(pid, 1, "idle", &[u64::from(pid) * 100]);
        }
        fake.add(5, 4, "browser", &[11]);
        let mut t = ProcTable::new(fake.root());
        t.set_events(true);
        t.prime();
        assert_eq!(t.owner_of(11, None).unwrap().pid, 5);
        fake.open_at(5, 4, 13);
        let before = t.stats().processes_read;
        assert_eq!(t.owner_of(13, None).unwrap().pid, 5);
        assert_eq!(t.stats().processes_read - before, 1);
    }

    #[test]
    fn a_just_started_process_is_read_first() {
        let fake = FakeProc::new("newborn");
        for pid in 10..60 {
            fake.add(pid, 1, "idle", &[u64::from(pid) * 100]);
        }
        let mut t = ProcTable::new(fake.root());
        t.set_events(true);
        t.prime();
        fake.add(7, 9, "com.example.new", &[77]);
        t.apply(ProcEvent::Fork { pid: 7, parent: 1 });
        let before = t.stats().processes_read;
        let p = t.owner_of(77, None).unwrap();
        assert_eq!(p.name.as_deref(), Some("com.example.new"));
        assert_eq!(t.stats().processes_read - before, 1);
    }

    #[test]
    fn the_search_looks_only_at_the_sockets_uid_first() {
        let fake = FakeProc::new("uid");
        fake.add(100, 5, "mine", &[11]);
        fake.add(200, 6, "other", &[21]);
        let mut t = ProcTable::new(fake.root());
        let me = std::fs::metadata(fake.root()).unwrap().uid();
        // Nobody in the tree has uid me + 1: it falls back to everyone.
        assert_eq!(t.owner_of(11, Some(me + 1)).unwrap().pid, 100);
        let mut t = ProcTable::new(fake.root());
        assert_eq!(t.owner_of(11, Some(me)).unwrap().pid, 100);
    }

    #[test]
    fn a_shared_socket_goes_to_the_most_recently_started_holder() {
        let fake = FakeProc::new("shared");
        fake.add(300, 5, "parent", &[11]);
        fake.add(301, 8, "child", &[11]);
        fake.add(302, 7, "sibling", &[11]);
        let mut t = ProcTable::new(fake.root());
        t.prime();
        assert_eq!(name(t.owner_of(11, None)).as_deref(), Some("child"));
    }

    #[test]
    fn unsettled_android_names_are_not_cached() {
        let fake = FakeProc::new("zygote");
        fake.add(100, 5, "usap64", &[11]);
        let mut t = ProcTable::new(fake.root());
        t.set_events(true);
        let p = t.owner_of(11, None).unwrap();
        assert_eq!((p.name.as_deref(), p.settled), (Some("usap64"), false));
        // The app specializes without an exec (no event): read again, since never cached.
        fake.exec(100, "com.example.app");
        let p = t.owner_of(11, None).unwrap();
        assert_eq!(
            (p.name.as_deref(), p.settled),
            (Some("com.example.app"), true)
        );
    }

    #[test]
    fn caches_stay_bounded_when_many_processes_come_and_go() {
        let fake = FakeProc::new("churn");
        fake.add(1, 1, "init", &[1]);
        // Without events: listings find the exits.
        let mut t = ProcTable::new(fake.root());
        for round in 0..200u32 {
            let pid = 1000 + round;
            fake.add(
                pid,
                u64::from(round) + 2,
                "short",
                &[10_000 + u64::from(round), 7],
            );
            assert_eq!(
                t.owner_of(10_000 + u64::from(round), None).unwrap().pid,
                pid
            );
            fake.remove(pid);
        }
        assert_eq!(t.owner_of(1, None).unwrap().pid, 1);
        assert!(t.cached().0 <= 2 && t.cached().1 <= 3, "{:?}", t.cached());
        // With events: exits drop processes at once.
        let mut t = ProcTable::new(fake.root());
        t.set_events(true);
        t.prime();
        for round in 0..200u32 {
            let pid = 2000 + round;
            fake.add(
                pid,
                u64::from(round) + 2,
                "short",
                &[20_000 + u64::from(round)],
            );
            t.apply(ProcEvent::Fork { pid, parent: 1 });
            assert_eq!(
                t.owner_of(20_000 + u64::from(round), None).unwrap().pid,
                pid
            );
            fake.remove(pid);
            t.apply(ProcEvent::Exit { pid });
        }
        assert_eq!(t.cached(), (1, 1));
        // Past the bounds the table starts over instead of growing.
        let limits = ProcLimits {
            max_processes: 8,
            max_inodes: 16,
        };
        let mut t = ProcTable::with_limits(fake.root(), limits);
        t.set_events(true);
        for pid in 3000..3100 {
            t.apply(ProcEvent::Fork { pid, parent: 1 });
            assert!(t.cached().0 <= 8);
        }
        fake.add(50, 3, "many", &(100..140).collect::<Vec<u64>>());
        let _ = t.owner_of(120, None);
        assert!(t.cached().1 <= 16, "{:?}", t.cached());
        assert!(t.stats().resets >= 1);
    }
}
