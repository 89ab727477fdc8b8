//! A client's call rate: a token bucket that fills at `rate_per_second` up to twice that. On a
//! shared store the bucket is Redis's, and an instance takes calls from it a tenth of a second's
//! worth at a time, so that a call makes no round trip of its own; calls taken and not used
//! within a second are let go, which only ever keeps the cluster under its rate.

use crate::store::quota::SharedQuota;
use crate::AppId;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long calls taken from a shared bucket stay usable here.
const TAKEN_FOR: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct Rate {
    local: Mutex<Bucket>,
    /// Held across the round trip that refills it: one per client at a time.
    taken: tokio::sync::Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Bucket {
    tokens: f64,
    /// `None` until the first call: the bucket starts full.
    at: Option<Instant>,
}

/// Calls taken from the shared bucket and not used yet.
#[derive(Debug, Default)]
struct Taken {
    calls: u32,
    until: Option<Instant>,
    /// The shared bucket was empty: nothing is asked for before then.
    empty_until: Option<Instant>,
}

/// What a full bucket holds: "bursts up to twice" the rate.
pub(super) fn burst(rate: f64) -> f64 {
    (rate * 2.0).max(1.0)
}

impl Rate {
    /// Starts again from a full bucket (this instance's; a shared one refills on its own).
    pub fn reset(&self) {
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = Bucket::default();
        if let Ok(mut taken) = self.taken.try_lock() {
            *taken = Taken::default();
        }
    }

    /// Takes one call at `rate` from this instance's own bucket; `Err` says when one is there.
    pub fn take_local(&self, rate: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut b = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let full = burst(rate);
        let tokens = match b.at {
            Some(at) => (b.tokens + now.duration_since(at).as_secs_f64() * rate).min(full),
            None => full,
        };
        if tokens >= 1.0 {
            (b.tokens, b.at) = (tokens - 1.0, Some(now));
            return Ok(());
        }
        (b.tokens, b.at) = (tokens, Some(now));
        Err(Duration::from_secs_f64((1.0 - tokens) / rate))
    }

    /// Takes one call at `rate` from the cluster's bucket. A store that cannot answer leaves the
    /// call to this instance's own bucket: an outage of Redis must not stop the proxy.
    pub async fn take_shared(
        &self,
        shared: &dyn SharedQuota,
        component: &AppId,
        client: &str,
        rate: f64,
    ) -> Result<(), Duration> {
        let mut taken = self.taken.lock().await;
        let now = Instant::now();
        if taken.calls > 0 && taken.until.is_some_and(|u| now < u) {
            taken.calls -= 1;
            return Ok(());
        }
        if let Some(until) = taken.empty_until.filter(|u| now < *u) {
            return Err(until - now);
        }
        let chunk = (rate / 10.0).ceil().clamp(1.0, burst(rate).floor()) as u32;
        match shared.take_calls(component, client, chunk, rate, burst(rate)).await {
            Ok(grant) if grant.calls > 0 => {
                *taken = Taken { calls: grant.calls - 1, until: Some(now + TAKEN_FOR), empty_until: None };
                Ok(())
            }
            Ok(grant) => {
                let wait = Duration::from_millis(grant.retry_after_ms.max(1));
                *taken = Taken { calls: 0, until: None, empty_until: Some(now + wait) };
                Err(wait)
            }
            Err(e) => {
                tracing::warn!(client, error = %e, "the shared rate bucket cannot be reached; this instance keeps the rate alone");
                drop(taken);
                self.take_local(rate)
            }
        }
    }
}
