//! The refresh scheduler: one loop that sleeps until the next job is due (or the plan changes,
//! or shutdown), and runs due jobs with bounded concurrency, each in the part it belongs to.

use super::{Job, TokenService, Want};
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};

impl TokenService {
    /// Runs until `shutdown` turns true (or its sender is dropped).
    pub async fn run_scheduler(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let core = Arc::clone(&self.core);
        let permits = Arc::new(Semaphore::new(core.settings.concurrency.max(1)));
        loop {
            loop {
                let permit = tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
                    _ = shutdown.changed() => return,
                };
                let Some(job) = core.lock_schedule().pop_due(core.now_ms()) else { break };
                let this = Arc::clone(&self);
                tokio::spawn(async move {
                    this.run_job(job).await;
                    drop(permit);
                });
            }
            let next = core.lock_schedule().next_due().unwrap_or(core.now_ms() + 60_000);
            tokio::select! {
                _ = tokio::time::sleep_until(core.clock.instant_at(next)) => {}
                _ = core.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn run_job(&self, job: Job) {
        // Failures are logged, counted and re-planned where they happen.
        match job {
            Job::ComponentToken => {
                let _ = self.component.refresh(Want::Planned).await;
            }
            Job::Account(appid) => {
                let _ = self.owned.refresh(&appid, Want::Planned).await;
            }
            Job::Authorizer(appid) => {
                let _ = self.authorizers.refresh(&appid, Want::Planned).await;
            }
            Job::Ticket(appid, kind) => self.tickets.refresh_planned(&appid, kind).await,
            Job::Events => self.events.run().await,
            Job::TicketWatch => self.component.watch_ticket().await,
            Job::Info(appid) => self.info.run_one(&appid).await,
            Job::InfoPass => self.info.run_pass().await,
            Job::Reconcile => self.reconciler.run().await,
        }
    }
}
