//! The daemons' clock: `CLOCK_BOOTTIME`, which keeps counting while a phone is suspended, so
//! keepalives, path timeouts and rekeys see the real time that passed. The cores never read a
//! clock; each event loop samples [`now`] once per turn and passes it in.

use std::time::Duration;

use upmt_proto::time::Instant;

/// Reads `CLOCK_BOOTTIME` as a core instant (epoch = boot).
pub fn now() -> Instant {
    Instant::from_duration(boottime())
}

/// Time since boot, suspended time included.
pub fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux since
    // 2.6.39 and on Android, so the call cannot fail with valid arguments.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Unreachable on Linux; fall back to a monotonic reading rather than stop the daemon.
        // SAFETY: as above.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Nanoseconds since the Unix epoch (the handshake's timestamp base), 0 if the clock is before it.
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Converts a core instant into a tokio deadline, anchored on a (tokio, boottime) pair sampled
/// together. Used to arm the one timer; a past instant gives a deadline of "now".
pub fn to_tokio(
    at: Instant,
    now: Instant,
    tokio_now: tokio::time::Instant,
) -> tokio::time::Instant {
    tokio_now + at.saturating_duration_since(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_is_nonzero_and_never_goes_back() {
        let a = boottime();
        let b = boottime();
        assert!(a > Duration::ZERO);
        assert!(b >= a);
    }

    #[test]
    fn boottime_moves_forward() {
        let a = now();
        std::thread::sleep(Duration::from_millis(2));
        let b = now();
        assert!(b > a, "{a:?} !< {b:?}");
        assert!(b - a >= Duration::from_millis(2));
    }

    #[test]
    fn unix_nanos_is_after_2020() {
        assert!(unix_nanos() > 1_577_836_800 * 1_000_000_000);
    }

    #[test]
    fn a_past_deadline_maps_to_now() {
        let t = tokio::time::Instant::now();
        let now = Instant::ZERO + Duration::from_secs(10);
        assert_eq!(to_tokio(Instant::ZERO, now, t), t);
        assert_eq!(
            to_tokio(now + Duration::from_secs(2), now, t),
            t + Duration::from_secs(2)
        );
    }
}
