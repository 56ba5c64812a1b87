//! The cores' timers, by name, and the table that picks the next one to wake for.
//!
//! Each core derives its deadlines from its state (a probe per path, a retry per signal...) and
//! keeps the earliest one per [`Timer`] in a [`TimerTable`]; `poll_timeout` returns the earliest
//! entry with its timer, so a driver can log why it woke. On a tie the timer declared first
//! wins, which only matters for that log line: `handle_timeout` runs everything that is due.

use crate::time::Instant;

macro_rules! timers {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// A reason for a core to wake up.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Timer {
            $(#[doc = $doc] $variant,)*
        }

        impl Timer {
            /// Every timer, in table order.
            pub const ALL: [Timer; [$(Timer::$variant),*].len()] = [$(Timer::$variant),*];

            /// A short name, for logs.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $(Timer::$variant => $name,)*
                }
            }
        }
    };
}

timers! {
    HandshakeRetry => "handshake retry", "Client: the pending handshake got no answer in time.";
    Rekey => "rekey", "Client: the session's keys are old enough to be replaced.";
    KeyExpiry => "key expiry", "Client: the session's keys reach the end of their life.";
    SessionSilent => "session silent", "Client: every path is down and nothing arrived for a while.";
    Probe => "probe", "Client: a path is due for a probe.";
    PathTimeout => "path timeout", "Client: a path's probe went unanswered too long.";
    SignalRetry => "signal retry", "Client: an unacknowledged signal is due for a resend.";
    NatTest => "nat test", "Client: a NAT binding test on a disposable socket is due for its next step.";
    SessionExpiry => "session expiry", "Anchor: a peer's session was silent too long.";
}

impl core::fmt::Display for Timer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The earliest deadline of each [`Timer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerTable {
    data: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    /// Lowers `timer`'s deadline to `at` (keeps the earlier of the two).
    pub fn set_earliest(&mut self, timer: Timer, at: Instant) {
        let slot = &mut self.data[timer as usize];
        if slot.is_none_or(|t| at < t) {
            *slot = Some(at);
        }
    }

    /// The deadline of `timer`, if armed.
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.data[timer as usize]
    }

    /// Whether `timer` is armed and due at `now`.
    pub fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// The earliest armed deadline and its timer (the first declared on a tie).
    pub fn next(&self) -> Option<(Instant, Timer)> {
        let mut best: Option<(Instant, Timer)> = None;
        for timer in Timer::ALL {
            if let Some(t) = self.get(timer)
                && best.is_none_or(|(b, _)| t < b)
            {
                best = Some((t, timer));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn timer_all_is_in_discriminant_order_with_unique_names() {
        for (i, t) in Timer::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
        let mut names: Vec<_> = Timer::ALL.iter().map(|t| t.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Timer::ALL.len());
    }

    #[test]
    fn the_table_keeps_each_timers_earliest_deadline_and_wakes_for_the_first() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set_earliest(Timer::Probe, at(300));
        t.set_earliest(Timer::Probe, at(200));
        t.set_earliest(Timer::Probe, at(400));
        t.set_earliest(Timer::SignalRetry, at(250));
        assert_eq!(t.get(Timer::Probe), Some(at(200)));
        assert_eq!(t.next(), Some((at(200), Timer::Probe)));
        assert!(t.is_due(Timer::Probe, at(200)));
        assert!(!t.is_due(Timer::SignalRetry, at(200)));
        assert!(!t.is_due(Timer::Rekey, at(10_000)));
    }

    #[test]
    fn on_a_tie_the_timer_declared_first_is_named() {
        let mut t = TimerTable::default();
        t.set_earliest(Timer::SignalRetry, at(5));
        t.set_earliest(Timer::HandshakeRetry, at(5));
        assert_eq!(t.next(), Some((at(5), Timer::HandshakeRetry)));
    }
}
