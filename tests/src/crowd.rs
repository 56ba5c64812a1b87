//! A crowd of processes on a lab host, each holding bound UDP sockets, and new ones starting:
//! the load under which the mobile host must still name a new app's flow at once. Also one
//! connection's timings as curl reports them, and percentiles of a sample.
//!
//! The crowd is one Python process that forks its members; they wait on a pipe whose write end
//! only the parent holds, so they exit with it whatever way it ends. It lives in the lab's own
//! process group, which the lab stops by pid.

use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::exec::python;
use crate::lab::Host;
use crate::process::ProcHandle;

/// The crowd's program: `IDLE SOCKETS RATE LIFETIME BURST EVERY`.
const CROWD_PY: &str = r#"
import os, select, signal, socket, sys, time
idle, sockets, rate, lifetime, burst, every = (int(sys.argv[1]), int(sys.argv[2]),
    float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
alive_r, alive_w = os.pipe()
ready_r, ready_w = os.pipe()

def spawn(life):
    if os.fork() == 0:
        os.close(alive_w)
        held = []
        for _ in range(sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
        os.write(ready_w, b".")
        select.select([alive_r], [], [], life)
        os._exit(0)

for _ in range(idle):
    spawn(None)
got = 0
while got < idle:
    got += len(os.read(ready_r, idle - got))
print("ready", flush=True)
churn = 1.0 / rate if rate > 0 else None
next_churn = time.monotonic() + (churn or 0)
next_burst = time.monotonic() + every if burst > 0 else None
while True:
    now = time.monotonic()
    if churn is not None and now >= next_churn:
        spawn(lifetime)
        next_churn += churn
    if next_burst is not None and now >= next_burst:
        for _ in range(burst):
            spawn(lifetime)
        next_burst += every
    while select.select([ready_r], [], [], 0)[0]:
        os.read(ready_r, 4096)
    waits = [t for t in (next_churn if churn else None, next_burst) if t is not None]
    time.sleep(max(0.0, min(waits) - time.monotonic()) if waits else 3600)
"#;

/// What the crowd does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrowdOptions {
    /// Processes started at once that stay for the crowd's life.
    pub idle: usize,
    /// Bound UDP sockets each process holds.
    pub sockets: usize,
    /// New processes started per second after the idle ones (0: none).
    pub rate: f64,
    /// How long each such new process lives.
    pub lifetime: Duration,
    /// Processes started at once every `every` (0: none).
    pub burst: usize,
    /// The period of the bursts.
    pub every: Duration,
}

impl CrowdOptions {
    /// `idle` processes with five sockets each, nothing starting.
    pub fn idle(idle: usize) -> CrowdOptions {
        CrowdOptions {
            idle,
            sockets: 5,
            rate: 0.0,
            lifetime: Duration::from_secs(3),
            burst: 0,
            every: Duration::from_secs(3),
        }
    }
}

/// A running crowd; dropping it stops the crowd.
#[derive(Debug)]
pub struct Crowd {
    proc: ProcHandle,
}

impl Crowd {
    /// Starts the crowd on `host` and waits until its idle processes hold their sockets.
    pub fn start(host: &Host<'_>, options: &CrowdOptions) -> Result<Crowd> {
        let args = [
            python(),
            "-c".to_owned(),
            CROWD_PY.to_owned(),
            options.idle.to_string(),
            options.sockets.to_string(),
            options.rate.to_string(),
            options.lifetime.as_secs_f64().to_string(),
            options.burst.to_string(),
            options.every.as_secs_f64().to_string(),
        ];
        let proc = host.command(&args).label("crowd").spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30 + options.idle as u64 / 20);
        while !proc.log().contains("ready") {
            if !proc.is_running() || Instant::now() > deadline {
                return Err(LabError::Invalid(format!(
                    "the crowd of {} processes did not start:\n{}",
                    options.idle,
                    proc.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Crowd { proc })
    }

    /// The parent's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Whether it still runs.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }
}

/// One connection's timings, as curl measured them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Connect {
    /// From start to the TCP connection established (`time_connect`).
    pub connect: Duration,
    /// From start to the first byte of the answer (`time_starttransfer`).
    pub first_byte: Duration,
}

/// Runs one curl on `host` (after `prefix`, e.g. `setpriv --reuid N`, and as `app` when given)
/// that fetches `url` on a new connection and reports its timings.
pub fn connect(host: &Host<'_>, prefix: &[&str], app: Option<&str>, url: &str) -> Result<Connect> {
    let mut args: Vec<&str> = prefix.to_vec();
    args.extend([
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{time_connect} %{time_starttransfer}",
        url,
    ]);
    let mut cmd = host.command(&args).timeout(Duration::from_secs(15));
    if let Some(app) = app {
        // The name is argv[0] of the first program: curl's only without a prefix.
        if !prefix.is_empty() {
            return Err(LabError::Invalid(
                "an app name and a prefix together would name the prefix".into(),
            ));
        }
        cmd = cmd.argv0(app);
    }
    let out = cmd.run()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>());
    match (fields.next(), fields.next()) {
        (Some(Ok(c)), Some(Ok(f))) => Ok(Connect {
            connect: Duration::from_secs_f64(c),
            first_byte: Duration::from_secs_f64(f),
        }),
        _ => Err(LabError::Invalid(format!("curl's timings: {text:?}"))),
    }
}

/// The `p`-th percentile (0 to 100) of `samples`, nearest rank; zero for no samples.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&ms, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&ms, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&ms[..1], 50.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
