//! Time is injected: protocol code asks a [`Clock`] for the wall time and
//! sleeps with tokio (which tests pause and advance), never the OS directly.
//! The workspace's `clippy.toml` bans `SystemTime::now` everywhere but here
//! and a few places allowed with a reason.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> SystemTime;

    /// Whether this is the host's own wall clock, whose lead over the
    /// store's clock GC measures and corrects. A clock a test or a
    /// simulation injects stands for the time every party (and the store)
    /// agrees on, so it is taken as it is.
    fn is_host_clock(&self) -> bool {
        false
    }
}

pub type DynClock = Arc<dyn Clock>;

/// The operating system's wall clock: what production uses. (Monotonic
/// time would be wrong here: a frozen Lambda sandbox does not advance it,
/// and heartbeat ages are compared across machines.)
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The clock seam itself: the one read of the host's wall clock.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn is_host_clock(&self) -> bool {
        true
    }
}

/// RFC 3339 with milliseconds, UTC: `2026-11-21T10:30:00.123Z`.
pub(crate) fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses what [`format_time`] writes (and other RFC 3339 UTC forms).
pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[cfg(any(test, feature = "test-util"))]
pub use testing::{ManualClock, TokioClock};

/// Clocks a test controls (only with the `test-util` feature).
#[cfg(any(test, feature = "test-util"))]
mod testing {
    use std::time::{Duration, SystemTime};

    use super::Clock;

    /// Wall time that follows tokio's clock: the system time at creation plus
    /// the tokio time elapsed since. Under `tokio::time::pause()` it stands
    /// still until the test calls `tokio::time::advance`, so heartbeat ages
    /// and timeouts are tested without real sleeps.
    #[derive(Debug, Clone, Copy)]
    pub struct TokioClock {
        base_wall: SystemTime,
        base: tokio::time::Instant,
    }

    impl TokioClock {
        // The clock seam itself: a test clock starts at the host's time.
        #[allow(clippy::disallowed_methods)]
        pub fn new() -> Self {
            TokioClock {
                base_wall: SystemTime::now(),
                base: tokio::time::Instant::now(),
            }
        }

        /// A clock that reads `start` now (for simulations that must not
        /// depend on when they run).
        pub fn starting_at(start: SystemTime) -> Self {
            TokioClock {
                base_wall: start,
                base: tokio::time::Instant::now(),
            }
        }
    }

    impl Default for TokioClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Clock for TokioClock {
        fn now(&self) -> SystemTime {
            self.base_wall + self.base.elapsed()
        }
    }

    /// A wall clock that moves only when told to: for tests that talk to a
    /// real server, where pausing tokio's clock would also fire the HTTP
    /// client's timeouts.
    #[derive(Debug)]
    pub struct ManualClock(std::sync::Mutex<SystemTime>);

    impl ManualClock {
        pub fn new(start: SystemTime) -> Self {
            ManualClock(std::sync::Mutex::new(start))
        }

        pub fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_through_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let s = format_time(t);
        assert!(s.ends_with('Z') && s.contains('T'), "{s}");
        assert_eq!(parse_time(&s), Some(t));
        assert_eq!(parse_time("not a time"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new();
        let t0 = c.now();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(c.now().duration_since(t0).unwrap(), Duration::from_secs(61));
    }
}
