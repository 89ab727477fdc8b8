//! The token service's clock: unix milliseconds that advance with tokio's clock, so that tests
//! can drive expiry with `tokio::time::pause()` and `advance()`.

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: i64,
    base: Instant,
}

impl Clock {
    /// Anchors tokio's monotonic clock to the wall clock once; later readings follow the
    /// monotonic clock, so a wall-clock jump cannot make every token look expired at once.
    pub fn new() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self { base_ms: wall, base: Instant::now() }
    }

    /// A clock that reads `wall_ms` now: for tests of what happens at a given time of day.
    pub fn starting_at(wall_ms: i64) -> Self {
        Self { base_ms: wall_ms, base: Instant::now() }
    }

    pub fn now_ms(&self) -> i64 {
        self.base_ms + self.base.elapsed().as_millis() as i64
    }

    /// The tokio instant at which the clock will read `ms` (now, if that is past).
    pub fn instant_at(&self, ms: i64) -> Instant {
        let ahead = (ms - self.now_ms()).max(0) as u64;
        Instant::now() + std::time::Duration::from_millis(ahead)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
