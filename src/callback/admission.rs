//! Admission of WeChat's pushes, on both push URLs: past what the gateway can commit in time, a
//! push is refused at once with 503, and WeChat's retry finds it later. Held instead, it would
//! wait past WeChat's 5 s, be sent again anyway, and pile more on a gateway already behind.
//!
//! The bound is Little's law turned around: pushes in flight divided by pushes finished per
//! second is how long each waits. The gateway measures how many it finishes each
//! [`WINDOW`] and admits at most as many at once as it finishes in [`QUEUE_BUDGET`], so a push
//! admitted is answered within about that budget even when the store slows down, and what is
//! past it costs only a parsed head and a 503. Never fewer than [`MIN_LIMIT`], so that a burst
//! after a quiet spell (nothing finished lately) is not refused for want of a measure.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long an admitted push may expect to wait for the pushes admitted before it.
pub const QUEUE_BUDGET: Duration = Duration::from_millis(250);

/// Pushes admitted at once whatever the measure: a SQLite group commit or a Redis pipeline
/// takes hundreds together in a few milliseconds.
pub const MIN_LIMIT: usize = 512;

/// How often the rate of finished pushes is measured.
const WINDOW: Duration = Duration::from_millis(100);

pub struct Admission {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    finished: AtomicUsize,
    /// When the current window began; taken by the push that closes it.
    window: Mutex<Instant>,
    /// Finished per second, smoothed over windows (the rate of a window with pushes waiting).
    rate: Mutex<f64>,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(MIN_LIMIT),
            finished: AtomicUsize::new(0),
            window: Mutex::new(Instant::now()),
            rate: Mutex::new(0.0),
        }
    }
}

/// An admitted push; dropped when it is answered.
pub struct Permit<'a>(&'a Admission);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// A permit, or `None` when as many pushes are in flight as the gateway finishes in
    /// [`QUEUE_BUDGET`]: answer 503.
    pub fn admit(&self) -> Option<Permit<'_>> {
        self.measure(Instant::now());
        let limit = self.limit.load(Ordering::Relaxed);
        let admitted =
            self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1));
        admitted.ok().map(|_| Permit(self))
    }

    /// Pushes admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Closes the window when it is over: its rate of finished pushes sets the limit.
    fn measure(&self, now: Instant) {
        let Some(mut began) = self.window.try_lock() else { return };
        let elapsed = now.saturating_duration_since(*began);
        if elapsed < WINDOW {
            return;
        }
        *began = now;
        let finished = self.finished.swap(0, Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
        let mut rate = self.rate.lock();
        // A window in which nothing waited measures the arrivals, not what the gateway could
        // finish: it may only raise the estimate.
        *rate = if self.in_flight() > 0 || finished > *rate { 0.5 * *rate + 0.5 * finished } else { *rate };
        let limit = (*rate * QUEUE_BUDGET.as_secs_f64()) as usize;
        self.limit.store(limit.max(MIN_LIMIT), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_a_push_is_refused_and_a_finished_one_frees_its_place() {
        let admission = Admission::default();
        let held: Vec<Permit<'_>> = (0..MIN_LIMIT).map(|_| admission.admit().expect("room")).collect();
        assert!(admission.admit().is_none(), "the limit is full");
        drop(held);
        assert_eq!(admission.in_flight(), 0);
        assert!(admission.admit().is_some(), "room again once answered");
    }

    #[test]
    fn the_limit_is_what_the_gateway_finishes_within_the_budget() {
        let admission = Admission::default();
        let start = Instant::now();
        // 2,000 pushes finished in each 100 ms window while others wait: 20,000 a second.
        let _waiting = admission.admit().unwrap();
        for window in 1..=8 {
            admission.finished.fetch_add(2_000, Ordering::Relaxed);
            admission.measure(start + WINDOW * window);
        }
        let expected = (20_000.0 * QUEUE_BUDGET.as_secs_f64()) as usize;
        let limit = admission.limit();
        assert!(limit.abs_diff(expected) < expected / 50, "{limit} ≈ {expected}");
        // The store slows to 2,000 a second: the limit follows it down, never below the floor.
        for window in 9..=20 {
            admission.finished.fetch_add(200, Ordering::Relaxed);
            admission.measure(start + WINDOW * window);
        }
        assert_eq!(admission.limit(), MIN_LIMIT);
    }

    #[test]
    fn a_quiet_spell_does_not_lower_the_limit() {
        let admission = Admission::default();
        let start = Instant::now();
        let waiting = admission.admit().unwrap();
        for window in 1..=8 {
            admission.finished.fetch_add(4_000, Ordering::Relaxed);
            admission.measure(start + WINDOW * window);
        }
        drop(waiting);
        let busy = admission.limit();
        for window in 9..=30 {
            admission.measure(start + WINDOW * window);
        }
        assert_eq!(admission.limit(), busy, "nothing waited: the measure is of arrivals");
    }
}
