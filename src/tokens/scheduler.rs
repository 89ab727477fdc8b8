//! The refresh scheduler: one loop that sleeps until the next job is due (or the plan changes,
//! or shutdown), and runs due jobs with bounded concurrency.

use super::{Job, TokenService, Want};
use crate::metrics;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};

impl TokenService {
    /// Runs until `shutdown` turns true (or its sender is dropped).
    pub async fn run_scheduler(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        loop {
            loop {
                let permit = tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
                    _ = shutdown.changed() => return,
                };
                let Some(job) = self.lock_schedule().pop_due(self.clock.now_ms()) else { break };
                let this = Arc::clone(&self);
                tokio::spawn(async move {
                    this.run_job(job).await;
                    drop(permit);
                });
            }
            let next = self.lock_schedule().next_due().unwrap_or(self.clock.now_ms() + 60_000);
            tokio::select! {
                _ = tokio::time::sleep_until(self.clock.instant_at(next)) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn run_job(&self, job: Job) {
        // Failures are logged, counted and re-planned where they happen.
        match job {
            Job::ComponentToken => {
                let _ = self.refresh_component(Want::Planned).await;
            }
            Job::Authorizer(appid) => {
                let _ = self.refresh_authorizer(&appid, Want::Planned).await;
            }
            Job::Ticket(appid, kind) => self.refresh_ticket_planned(&appid, kind).await,
            Job::Events => self.run_events().await,
            Job::TicketWatch => self.watch_ticket().await,
        }
    }

    /// WeChat pushes a ticket every 10 minutes; a long silence means pushes stopped (a
    /// firewall, a callback that answered something other than `success`). Warn, count, and
    /// ask WeChat to resume, at most every `push_ticket_every`.
    async fn watch_ticket(&self) {
        let now = self.clock.now_ms();
        let stale_after = self.settings.ticket_stale_after.as_millis() as i64;
        self.plan(Job::TicketWatch, now + (stale_after / 4).clamp(100, 60_000));
        let silent_ms = now - self.last_ticket_ms.load(std::sync::atomic::Ordering::Relaxed);
        if silent_ms < stale_after {
            return;
        }
        metrics::TICKET_STALE.inc();
        tracing::warn!(
            silent_secs = silent_ms / 1000,
            "no component_verify_ticket pushed lately: WeChat may have stopped pushing"
        );
        {
            let mut last_request = self.last_push_request_ms.lock().unwrap_or_else(|p| p.into_inner());
            if *last_request > 0 && now - *last_request < self.settings.push_ticket_every.as_millis() as i64 {
                return;
            }
            *last_request = now;
        }
        match self.api.start_push_ticket().await {
            Ok(()) => tracing::info!("asked WeChat to resume ticket pushes (api_start_push_ticket)"),
            Err(e) => tracing::warn!(error = %e, "api_start_push_ticket failed"),
        }
    }
}
