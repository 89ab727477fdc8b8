//! What every part of the token service shares: the platform it serves, the store, WeChat, the
//! settings and the clock, and the one schedule the scheduler runs. The refresh protocol
//! (`refresher.rs`) is a method of this, so that every credential is refreshed the same way
//! whichever part holds it.

use super::{backoff_ms, Clock, Job, Schedule, Settings};
use crate::store::SharedStore;
use crate::wechat::ComponentApi;
use crate::AppId;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

pub struct Core {
    /// Whose keys the store's records and leases are under: the platform's appid, or without a
    /// platform the first owned account's.
    pub(super) component: AppId,
    /// A third-party platform is configured: without one there is no ticket, no component
    /// token, and no authorizer.
    pub(super) platform: bool,
    pub(super) store: SharedStore,
    pub(super) api: Arc<dyn ComponentApi>,
    pub(super) settings: Settings,
    pub(super) clock: Clock,
    schedule: Mutex<Schedule>,
    /// Wakes the scheduler when the schedule changes.
    pub(super) wake: Notify,
    /// Set while the events back off after a failure: most wait for a component token, so a
    /// new one ends their wait at once.
    pub(super) events_backing_off: AtomicBool,
}

impl Core {
    pub(super) fn new(
        component: AppId,
        platform: bool,
        store: SharedStore,
        api: Arc<dyn ComponentApi>,
        settings: Settings,
    ) -> Self {
        Self {
            component,
            platform,
            store,
            api,
            settings,
            clock: Clock::new(),
            schedule: Mutex::new(Schedule::default()),
            wake: Notify::new(),
            events_backing_off: AtomicBool::new(false),
        }
    }

    pub(super) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub(super) fn lock_schedule(&self) -> MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plans `job` at `at_ms` and wakes the scheduler.
    pub(super) fn plan(&self, job: Job, at_ms: i64) {
        self.lock_schedule().set(job, at_ms);
        self.wake.notify_one();
    }

    /// Plans `job` at `at_ms` unless it is planned sooner, and wakes the scheduler.
    pub(super) fn plan_by(&self, job: Job, at_ms: i64) {
        self.lock_schedule().set_earlier(job, at_ms);
        self.wake.notify_one();
    }

    pub(super) fn unplan(&self, job: &Job) {
        self.lock_schedule().remove(job);
    }

    pub(super) fn planned(&self, job: &Job) -> Option<i64> {
        self.lock_schedule().due_at(job)
    }

    /// Waits out a failed attempt's backoff: the next attempt `attempt` from now.
    pub(super) fn retry_at(&self, attempt: u32) -> i64 {
        let wait = backoff_ms(attempt, self.settings.retry_base, self.settings.retry_max, &mut rand::thread_rng());
        self.now_ms() + wait
    }
}
