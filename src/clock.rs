//! The one place that reads the clock. Everything else takes time as an argument: the
//! reactor reads `now` once per wake-up and hands it down, so the protocol cores and the
//! timer wheel can be driven by a test's own notion of time.

use std::time::Instant;

/// Milliseconds since the reactor started: the timer wheel's tick.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Monotonic milliseconds since `start`. Never goes backwards.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Milliseconds since the Unix epoch: message timestamps and token times, never timers
/// (the wall clock can jump).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
