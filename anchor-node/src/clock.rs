//! The daemon's clock: CLOCK_BOOTTIME, which keeps counting while the machine is suspended.
//!
//! The core never reads a clock; the event loop samples this once per turn and passes it in.

use std::time::Duration;

use upmt_proto::time::Instant;

/// Reads CLOCK_BOOTTIME as a core instant (epoch = boot).
pub fn now() -> Instant {
    Instant::from_duration(boottime())
}

/// Time since boot, including suspended time.
pub fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux since
    // 2.6.39, so the call cannot fail with a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    debug_assert_eq!(rc, 0);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
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
    fn boottime_moves_forward() {
        let a = now();
        std::thread::sleep(Duration::from_millis(2));
        let b = now();
        assert!(b > a, "{a:?} !< {b:?}");
        assert!(b - a >= Duration::from_millis(2));
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
