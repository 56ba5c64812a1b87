//! Downloads from the CH's HTTP server with curl, measured the way the end-to-end tests and the
//! lab's demo and benchmarks judge upmt: the bytes (sha256 of what arrived), the interface
//! counters of the links that carried them, and what curl says of its transfer (exit code,
//! connections opened, time).
//!
//! ```no_run
//! use upmt_tests::{Family, Lab};
//! use upmt_tests::topology::MH_WIFI_IF;
//! let lab = Lab::new("download")?;
//! let http = lab.start_http_server()?;
//! let got = lab.download("big.bin").family(Family::V6).count(MH_WIFI_IF).run()?;
//! assert!(got.success(), "{}", got.log);
//! assert_eq!(got.sha256.as_deref(), http.sha256("big.bin"));
//! assert!(got.counters(MH_WIFI_IF).rx_bytes > 32 * 1024 * 1024);
//! # Ok::<(), upmt_tests::LabError>(())
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::lab::{Host, Lab};
use crate::measure::{LinkCounters, sha256_file};
use crate::process::ProcHandle;
use crate::topology::Family;

/// curl's `--max-time` unless told otherwise.
pub const DEFAULT_MAX_TIME: Duration = Duration::from_secs(120);

/// How much longer than its `--max-time` curl is given before the lab kills it: curl enforces
/// its own limit, so this only catches a curl that hangs.
const KILL_MARGIN: Duration = Duration::from_secs(10);

/// The line curl writes (`-w`) when it ends, so its figures can be found in its output.
const REPORT_PREFIX: &str = "upmt-download:";

/// Numbers the files downloads are saved to, unique within the process.
static DOWNLOAD_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A curl download to configure, then [`Download::run`] or [`Download::start`]; made by
/// [`Lab::download`] (from the MH) or [`Host::download`].
#[derive(Debug)]
#[must_use = "a Download does nothing until .run() or .start()"]
pub struct Download<'a> {
    host: Host<'a>,
    file: String,
    family: Family,
    app: Option<String>,
    interface: Option<String>,
    connect_timeout: Option<Duration>,
    max_time: Duration,
    save: bool,
    label: Option<String>,
    count: Vec<String>,
}

impl Lab {
    /// A download of the served file `file` (`big.bin`, `mid.bin`, `small.txt`) from the CH's
    /// HTTP server by curl on the MH, over IPv4, saved to a file in the lab's directory.
    pub fn download(&self, file: &str) -> Download<'_> {
        self.mh().download(file)
    }
}

impl<'a> Host<'a> {
    /// Like [`Lab::download`], by curl in this host's namespace.
    pub fn download(&self, file: &str) -> Download<'a> {
        Download {
            host: *self,
            file: file.to_owned(),
            family: Family::V4,
            app: None,
            interface: None,
            connect_timeout: None,
            max_time: DEFAULT_MAX_TIME,
            save: true,
            label: None,
            count: Vec::new(),
        }
    }
}

impl<'a> Download<'a> {
    /// The address family of the CH's address that curl connects to (default IPv4).
    pub fn family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }

    /// Runs curl as the app `name` (its `argv[0]`, which the MH daemon attributes flows by).
    pub fn app(mut self, name: &str) -> Self {
        self.app = Some(name.to_owned());
        self
    }

    /// Binds curl to interface `ifname` (`curl --interface`).
    pub fn interface(mut self, ifname: &str) -> Self {
        self.interface = Some(ifname.to_owned());
        self
    }

    /// curl's `--connect-timeout` (default: curl's own).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// curl's `--max-time`, the limit of the whole transfer (default [`DEFAULT_MAX_TIME`]).
    pub fn max_time(mut self, max_time: Duration) -> Self {
        self.max_time = max_time;
        self
    }

    /// Throws the body away (`-o /dev/null`): no sha256, for when only success or the counters
    /// matter.
    pub fn discard(mut self) -> Self {
        self.save = false;
        self
    }

    /// Names the log file of a started download (default: the app's or curl's name).
    pub fn label(mut self, label: &str) -> Self {
        self.label = Some(label.to_owned());
        self
    }

    /// Records what interface `ifname` of this host counted during the download; read it with
    /// [`Downloaded::counters`]. May be called for several interfaces.
    pub fn count(mut self, ifname: &str) -> Self {
        self.count.push(ifname.to_owned());
        self
    }

    /// Runs curl to completion and reports the download whatever curl's exit status. Errors
    /// only when the HTTP server or curl cannot be started, a counter cannot be read, or curl
    /// outlives its `--max-time` by far.
    pub fn run(self) -> Result<Downloaded> {
        let prepared = self.prepare()?;
        let out = prepared
            .command()
            .timeout(prepared.max_time + KILL_MARGIN)
            .run_unchecked()?;
        let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        prepared.finish(Some(out.status), log)
    }

    /// Starts curl in the background (its output goes to the lab's logs); wait for it with
    /// [`RunningDownload::wait`].
    pub fn start(self) -> Result<RunningDownload<'a>> {
        let prepared = self.prepare()?;
        let mut cmd = prepared.command();
        if let Some(label) = &prepared.label {
            cmd = cmd.label(label);
        }
        let proc = cmd.spawn()?;
        Ok(RunningDownload { prepared, proc })
    }

    /// Starts the HTTP server if needed, picks the output path and reads the counters before.
    fn prepare(self) -> Result<Prepared<'a>> {
        let lab = self.host.lab();
        let http = lab.start_http_server()?;
        if http.file(&self.file).is_none() {
            return Err(LabError::Invalid(format!(
                "the CH serves no file {:?}",
                self.file
            )));
        }
        let url = http.url(self.family, &self.file);
        let path = self.save.then(|| {
            let n = DOWNLOAD_COUNTER.fetch_add(1, Ordering::Relaxed);
            lab.dir().join(format!("download-{n:03}-{}", self.file))
        });
        let before = self
            .count
            .iter()
            .map(|ifname| Ok((ifname.clone(), self.host.link_counters(ifname)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Prepared {
            host: self.host,
            url,
            path,
            family: self.family,
            app: self.app,
            interface: self.interface,
            connect_timeout: self.connect_timeout,
            max_time: self.max_time,
            label: self.label,
            before,
        })
    }
}

/// A download whose counters were read and whose command line is fixed.
#[derive(Debug)]
struct Prepared<'a> {
    host: Host<'a>,
    url: String,
    path: Option<PathBuf>,
    family: Family,
    app: Option<String>,
    interface: Option<String>,
    connect_timeout: Option<Duration>,
    max_time: Duration,
    label: Option<String>,
    before: Vec<(String, LinkCounters)>,
}

impl<'a> Prepared<'a> {
    fn command(&self) -> crate::lab::Cmd<'a> {
        let mut args: Vec<String> = ["curl", "-sS", "--fail", self.family.flag()]
            .map(str::to_owned)
            .into();
        if let Some(t) = self.connect_timeout {
            args.extend(["--connect-timeout".to_owned(), secs(t)]);
        }
        args.extend(["--max-time".to_owned(), secs(self.max_time)]);
        if let Some(ifname) = &self.interface {
            args.extend(["--interface".to_owned(), ifname.clone()]);
        }
        args.extend([
            "-w".to_owned(),
            format!(
                "\n{REPORT_PREFIX} exitcode=%{{exitcode}} num_connects=%{{num_connects}} \
                 time_total=%{{time_total}}\n"
            ),
            "-o".to_owned(),
            self.path
                .as_deref()
                .map_or("/dev/null".into(), |p| p.to_string_lossy().into_owned()),
            self.url.clone(),
        ]);
        let cmd = self.host.command(&args);
        match &self.app {
            Some(app) => cmd.argv0(app),
            None => cmd,
        }
    }

    /// Reads the counters after, hashes what arrived and parses curl's report.
    fn finish(self, status: Option<ExitStatus>, log: String) -> Result<Downloaded> {
        let mut counters = Vec::with_capacity(self.before.len());
        for (ifname, before) in &self.before {
            let after = self.host.link_counters(ifname)?;
            counters.push((ifname.clone(), after.since(before)));
        }
        let (size, sha256) = match &self.path {
            Some(path) if path.exists() => (file_size(path), Some(sha256_file(path)?)),
            _ => (0, None),
        };
        let report = Report::parse(&log);
        Ok(Downloaded {
            status,
            exit_code: status.and_then(|s| s.code()).or(report.exit_code),
            num_connects: report.num_connects,
            time_total: report.time_total,
            size,
            sha256,
            path: self.path,
            counters,
            log,
        })
    }
}

/// A download started by [`Download::start`]. Dropping it stops curl.
#[derive(Debug)]
#[must_use = "dropping a RunningDownload stops curl"]
pub struct RunningDownload<'a> {
    prepared: Prepared<'a>,
    proc: ProcHandle,
}

impl RunningDownload<'_> {
    /// Whether curl is still running.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// The bytes saved so far (0 for a discarded body).
    pub fn bytes_so_far(&self) -> u64 {
        self.prepared.path.as_deref().map_or(0, file_size)
    }

    /// What interface `ifname` counted since the download started; it must be one given to
    /// [`Download::count`].
    pub fn counters_so_far(&self, ifname: &str) -> Result<LinkCounters> {
        let (_, before) = self
            .prepared
            .before
            .iter()
            .find(|(name, _)| name == ifname)
            .ok_or_else(|| LabError::Invalid(format!("{ifname} is not counted")))?;
        Ok(self.prepared.host.link_counters(ifname)?.since(before))
    }

    /// curl's output so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Waits up to `timeout` for curl to end, stops it if it has not, and reports the download
    /// ([`Downloaded::status`] is `None` when curl had to be stopped).
    pub fn wait(self, timeout: Duration) -> Result<Downloaded> {
        let status = self.proc.wait_with_timeout(timeout);
        if status.is_none() {
            self.proc.kill();
        }
        let log = self.proc.log();
        self.prepared.finish(status, log)
    }
}

/// What a download ended with.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// curl's exit status; `None` when it did not end in time and was stopped.
    pub status: Option<ExitStatus>,
    /// curl's exit code (0 is success; 28 a timeout, 7 no connection, 22 an HTTP error).
    pub exit_code: Option<i32>,
    /// TCP connections curl opened (`%{num_connects}`): 1 for a download that survived in one
    /// connection.
    pub num_connects: Option<u32>,
    /// The transfer's duration as curl measured it (`%{time_total}`).
    pub time_total: Option<Duration>,
    /// The bytes saved (0 for a discarded body).
    pub size: u64,
    /// The sha256 of the saved bytes, lowercase hex; `None` when discarded or nothing arrived.
    pub sha256: Option<String>,
    /// Where the bytes were saved.
    pub path: Option<PathBuf>,
    /// What each interface given to [`Download::count`] counted during the download.
    pub counters: Vec<(String, LinkCounters)>,
    /// curl's stdout and stderr (its error message, and its report line).
    pub log: String,
}

impl Downloaded {
    /// Whether curl ended with exit status 0 (for `--fail`: the whole body, HTTP 2xx).
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// What interface `ifname` counted during the download.
    ///
    /// # Panics
    /// When `ifname` was not given to [`Download::count`]: a mistake in the test.
    pub fn counters(&self, ifname: &str) -> LinkCounters {
        self.counters
            .iter()
            .find(|(name, _)| name == ifname)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("{ifname} was not counted: add .count({ifname:?})"))
    }
}

/// The figures of curl's `-w` report line.
#[derive(Debug, Default, PartialEq)]
struct Report {
    exit_code: Option<i32>,
    num_connects: Option<u32>,
    time_total: Option<Duration>,
}

impl Report {
    /// Finds the last report line in curl's output; fields it cannot read stay `None`.
    fn parse(log: &str) -> Report {
        let mut report = Report::default();
        let Some(line) = log
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(REPORT_PREFIX))
        else {
            return report;
        };
        for (key, value) in line.split_whitespace().filter_map(|kv| kv.split_once('=')) {
            match key {
                "exitcode" => report.exit_code = value.parse().ok(),
                "num_connects" => report.num_connects = value.parse().ok(),
                "time_total" => {
                    report.time_total = value
                        .parse::<f64>()
                        .ok()
                        .and_then(|s| Duration::try_from_secs_f64(s).ok());
                }
                _ => {}
            }
        }
        report
    }
}

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curls_report_line_is_read_from_the_end_of_its_output() {
        let log = "curl: (18) transfer closed\n\
                   upmt-download: exitcode=18 num_connects=2 time_total=3.250001\n";
        assert_eq!(
            Report::parse(log),
            Report {
                exit_code: Some(18),
                num_connects: Some(2),
                time_total: Some(Duration::from_micros(3_250_001)),
            }
        );
    }

    #[test]
    fn output_without_a_report_line_reports_nothing() {
        assert_eq!(
            Report::parse("curl: (7) failed to connect\n"),
            Report::default()
        );
    }

    #[test]
    fn timeouts_are_passed_to_curl_in_seconds() {
        assert_eq!(secs(Duration::from_secs(120)), "120");
        assert_eq!(secs(Duration::from_millis(2500)), "2.5");
    }
}
