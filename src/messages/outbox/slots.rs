//! The delivery loop's bookkeeping per route: attempts in flight (at most the route's
//! concurrency), and claims taken ahead of a free slot.
//!
//! A claim is a store write, committed before it returns. Claiming only as many messages as
//! there are free slots made a fast handler wait on one commit per few deliveries, so the drain
//! fell behind a burst it could have kept up with. So a route claims ahead what it delivers in
//! about [`AHEAD`] at its measured rate (at most [`MAX_AHEAD`]): a slow handler's route claims
//! nothing ahead, and a claim waits here far less than its lease, which the attempt's own
//! cut-off (half the lease) then fits in.

use crate::store::outbox::Claim;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much of a route's deliveries are claimed ahead.
const AHEAD: Duration = Duration::from_millis(500);
/// Claims held ahead per route at most.
const MAX_AHEAD: usize = 256;
/// How often a route's delivery rate is measured.
const RATE_WINDOW: Duration = Duration::from_millis(250);

/// By route name; a route's entry stays (its measured rate with it): routes are few.
#[derive(Default)]
pub(super) struct Slots {
    routes: Mutex<HashMap<String, Route>>,
}

#[derive(Default)]
struct Route {
    in_flight: usize,
    /// An attempt ended or settled since the route was last looked at: it may have more due
    /// (the next message of a lane, once the one before it is settled).
    look_again: bool,
    ahead: VecDeque<Claim>,
    finished: u32,
    window: Option<Instant>,
    /// Attempts finished a second, smoothed.
    rate: f64,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        // Counts and claims; a poisoned lock still holds usable ones.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes with attempts in flight, claims taken ahead, or an attempt that just ended or
    /// settled: their next work is known here (or may be claimed) without asking the store.
    pub(super) fn busy(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.in_flight > 0 || r.look_again || !r.ahead.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Claims of `route` to start now (each counted in flight), and how many to claim from the
    /// store: the free slots left, and what to claim ahead, once nothing is held ahead.
    pub(super) fn take(&self, route: &str, concurrency: usize) -> (Vec<Claim>, usize) {
        let mut routes = self.lock();
        let r = routes.entry(route.to_owned()).or_default();
        r.look_again = false;
        let free = concurrency.saturating_sub(r.in_flight);
        let start: Vec<Claim> = r.ahead.drain(..free.min(r.ahead.len())).collect();
        r.in_flight += start.len();
        let free = free - start.len();
        let want = match (free, r.ahead.is_empty()) {
            (0, _) | (_, false) => 0,
            (free, true) => free + ((r.rate * AHEAD.as_secs_f64()) as usize).min(MAX_AHEAD),
        };
        (start, want)
    }

    /// Claims just taken for `route`: those with a free slot to start now, the rest held ahead.
    pub(super) fn hold(&self, route: &str, mut claims: Vec<Claim>, concurrency: usize) -> Vec<Claim> {
        let mut routes = self.lock();
        let r = routes.entry(route.to_owned()).or_default();
        let free = concurrency.saturating_sub(r.in_flight).min(claims.len());
        r.ahead.extend(claims.drain(free..));
        r.in_flight += claims.len();
        claims
    }

    /// An attempt of `route` settled: the route may have more to claim.
    pub(super) fn look_again(&self, route: &str) {
        if let Some(r) = self.lock().get_mut(route) {
            r.look_again = true;
        }
    }

    /// An attempt of `route` ended.
    pub(super) fn finished(&self, route: &str, now: Instant) {
        let mut routes = self.lock();
        let Some(r) = routes.get_mut(route) else { return };
        r.in_flight = r.in_flight.saturating_sub(1);
        r.look_again = true;
        r.finished += 1;
        let began = *r.window.get_or_insert(now);
        let elapsed = now.saturating_duration_since(began);
        if elapsed >= RATE_WINDOW {
            r.rate = 0.5 * r.rate + 0.5 * (f64::from(r.finished) / elapsed.as_secs_f64());
            (r.finished, r.window) = (0, Some(now));
        }
    }
}
