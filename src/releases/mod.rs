//! Release jobs (CONTRACT.md "Mini-program releases across many accounts"): one code template
//! taken to many authorized mini programs (commit, submit for audit, WeChat's verdict, release),
//! durable in the store, within the platform's audit quota, driven by the audit events WeChat
//! pushes and, when it stays silent, by polling; on a shared Redis one instance drives a job at a
//! time under a lease.
//!
//! ```text
//!   admin ──create/pause/resume/cancel/release──► Releases ──► store (jobs, accounts)
//!   messages ──weapp_audit_* ──► Releases::audit_event ──► store (verdicts)
//!   Driver (a tick a second, woken on change) ──► step.rs ──► WeChat (the account's token)
//! ```

mod driver;
pub mod request;
mod step;

use crate::metrics;
use crate::store::releases::{AccountState, AuditVerdict, JobState, ReleaseAccount, ReleaseJob};
use crate::store::{AccountKind, SharedStore, StoreError};
use crate::tokens::{TokenError, TokenService};
use crate::wechat::{ApiErrorKind, CodeApi, WechatError};
use crate::{AppId, Secret};
use request::{NewJob, Targets};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use step::StepError;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Ask for the audit status after this long without a verdict.
    pub audit_poll_ms: i64,
    /// Look again at an account waiting for audit quota after this long.
    pub quota_recheck_ms: i64,
    /// How often open jobs are looked at without a reason to.
    pub tick: Duration,
    /// How long an instance may drive a job without another taking over.
    pub lease_ttl: Duration,
}

impl Settings {
    pub fn new(audit_poll: Duration, upstream_timeout: Duration) -> Self {
        let audit_poll_ms = audit_poll.as_millis() as i64;
        Self {
            audit_poll_ms,
            quota_recheck_ms: audit_poll_ms.min(60_000),
            tick: Duration::from_secs(1),
            // A tick makes at most three calls in a row for an account.
            lease_ttl: upstream_timeout * 3 + Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadRequest(#[from] request::BadField),
    #[error("no release job has this id")]
    UnknownJob,
    #[error("the job is {0}: this cannot be done to it")]
    NotNow(&'static str),
    #[error("no active mini program is held: nothing to release to")]
    NoAccounts,
    #[error("another instance is driving the job and did not let go in time; try again")]
    Busy,
}

impl ReleaseError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Store(_) | Self::Busy => 503,
            Self::BadRequest(_) | Self::NoAccounts => 400,
            Self::UnknownJob => 404,
            Self::NotNow(_) => 409,
        }
    }
}

/// What takes steps: the store, WeChat, the tokens, the clock.
pub(crate) struct Driver {
    ns: AppId,
    store: SharedStore,
    tokens: Arc<TokenService>,
    api: Arc<dyn CodeApi>,
    settings: Settings,
    /// Each job's accounts as this instance last wrote them, on a store no other instance
    /// writes: a tick then reads none (a job of 10,000 accounts is several megabytes of JSON).
    held: std::sync::Mutex<std::collections::HashMap<String, Vec<ReleaseAccount>>>,
    /// Held by a tick and by an operator's change, so that neither writes a job over the
    /// other's (across instances, the job's lease does the same).
    writing: tokio::sync::Mutex<()>,
}

/// An account after a step.
pub(crate) struct StepOutcome(ReleaseAccount);

type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, WechatError>> + Send + 'a>>;

impl Driver {
    fn now_ms(&self) -> i64 {
        self.tokens.clock().now_ms()
    }

    /// The job's lease for an operator's change: waited for while a tick (here or on another
    /// instance) holds it, at most as long as a lease lives.
    async fn job_lease(&self, id: &str) -> Result<crate::store::Lease, ReleaseError> {
        let deadline = tokio::time::Instant::now() + self.settings.lease_ttl;
        loop {
            if let Some(lease) = self.store.lease(&self.ns, &format!("release:{id}"), self.settings.lease_ttl).await? {
                return Ok(lease);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReleaseError::Busy);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn save(&self, job: &ReleaseJob, a: &ReleaseAccount) -> Result<(), StoreError> {
        self.store.releases().save_accounts(&self.ns, &job.id, std::slice::from_ref(a)).await
    }

    /// `f` with the account's token; replaced once (compare-and-swap) if WeChat refuses it.
    async fn call<T, F>(&self, appid: &AppId, f: F) -> Result<T, StepError>
    where
        F: for<'a> Fn(&'a dyn CodeApi, &'a Secret) -> Call<'a, T> + Send + Sync,
    {
        let authorizers = self.tokens.authorizers();
        let token = authorizers.token(appid).await.map_err(token_error)?;
        match f(self.api.as_ref(), &token.value).await {
            Err(e) if e.kind() == Some(ApiErrorKind::TokenInvalid) => {
                let fresh = authorizers.replace(appid, &token.value).await.map_err(token_error)?;
                f(self.api.as_ref(), &fresh.value).await.map_err(StepError::Wechat)
            }
            other => other.map_err(StepError::Wechat),
        }
    }
}

fn token_error(e: TokenError) -> StepError {
    match e {
        TokenError::Wechat(w) => StepError::Wechat(w),
        other => StepError::Token(other.to_string()),
    }
}

/// Release jobs: what the admin API asks, what audit events tell, and the driver's loop.
pub struct Releases {
    driver: Driver,
    wake: Notify,
}

impl Releases {
    pub fn new(
        ns: AppId,
        store: SharedStore,
        tokens: Arc<TokenService>,
        api: Arc<dyn CodeApi>,
        settings: Settings,
    ) -> Self {
        for state in AccountState::ALL {
            metrics::RELEASE_ACCOUNTS.with_label_values(&[state.as_str()]);
        }
        // The series start at zero, so that rates and alerts see the first step.
        for step in ["commit", "submit", "release", "status", "quota"] {
            metrics::RELEASE_STEPS.with_label_values(&[step, "ok"]);
        }
        let (held, writing) = (std::sync::Mutex::default(), tokio::sync::Mutex::new(()));
        Self { driver: Driver { ns, store, tokens, api, settings, held, writing }, wake: Notify::new() }
    }

    /// Drives open jobs until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.driver.tick().await;
            tokio::select! {
                _ = tokio::time::sleep(self.driver.settings.tick) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Starts a job; its id.
    pub async fn create(&self, body: &[u8]) -> Result<String, ReleaseError> {
        let new = NewJob::parse(body)?;
        let d = &self.driver;
        let now = d.now_ms();
        let busy = self.in_open_jobs().await?;
        // What each account is, as WeChat last said (an account not asked yet may be either).
        let infos = d.tokens.info().all().await.map_err(|e| match e {
            TokenError::Store(e) => ReleaseError::Store(e),
            other => ReleaseError::Store(StoreError::Unavailable(other.to_string())),
        })?;
        let kinds: std::collections::HashMap<AppId, AccountKind> =
            infos.into_iter().map(|i| (i.appid, i.kind)).collect();
        let wanted: Vec<AppId> = match &new.targets {
            Targets::All => {
                let mut all: Vec<AppId> = kinds
                    .iter()
                    .filter(|(a, k)| **k == AccountKind::MiniProgram && d.tokens.authorizers().is_active(a))
                    .map(|(a, _)| *a)
                    .collect();
                all.sort();
                all
            }
            Targets::Only(list) => list.clone(),
        };
        if wanted.is_empty() {
            return Err(ReleaseError::NoAccounts);
        }
        let accounts: Vec<ReleaseAccount> = wanted
            .iter()
            .map(|appid| {
                let official = kinds.get(appid) == Some(&AccountKind::OfficialAccount);
                let usable = d.tokens.authorizers().is_active(appid) && !official;
                let state = if usable && !busy.contains(appid) { AccountState::Pending } else { AccountState::Skipped };
                ReleaseAccount::new(*appid, state, now)
            })
            .collect();
        let job = ReleaseJob {
            id: new_id(now),
            state: JobState::Running,
            template_id: new.template_id,
            user_version: new.user_version,
            user_desc: new.user_desc,
            ext_json: new.ext_json,
            audit: new.audit,
            release: new.release,
            concurrency: new.concurrency,
            max_failures: new.max_failures,
            reserve_audit_quota: new.reserve_audit_quota,
            created_at_ms: now,
            release_requested_at_ms: None,
            counts: driver::tally(&accounts),
            finished_at_ms: None,
        };
        d.store.releases().create_job(&d.ns, &job, &accounts).await?;
        tracing::info!(job = %job.id, accounts = accounts.len(), template_id = job.template_id, "release job created");
        self.wake.notify_one();
        Ok(job.id)
    }

    /// Accounts in a running or paused job: a second job skips them.
    async fn in_open_jobs(&self) -> Result<std::collections::HashSet<AppId>, ReleaseError> {
        let d = &self.driver;
        let mut busy = std::collections::HashSet::new();
        for job in d.store.releases().jobs(&d.ns).await?.into_iter().filter(|j| j.state.is_open()) {
            let accounts = d.store.releases().accounts(&d.ns, &job.id).await?;
            busy.extend(accounts.into_iter().filter(|a| !a.state.is_final()).map(|a| a.appid));
        }
        Ok(busy)
    }

    pub async fn jobs(&self) -> Result<Vec<ReleaseJob>, ReleaseError> {
        Ok(self.driver.store.releases().jobs(&self.driver.ns).await?)
    }

    /// A job and its accounts.
    pub async fn job(&self, id: &str) -> Result<(ReleaseJob, Vec<ReleaseAccount>), ReleaseError> {
        let releases = self.driver.store.releases();
        let job = releases.job(&self.driver.ns, id).await?.ok_or(ReleaseError::UnknownJob)?;
        let accounts = releases.accounts(&self.driver.ns, id).await?;
        Ok((job, accounts))
    }

    pub async fn pause(&self, id: &str) -> Result<ReleaseJob, ReleaseError> {
        self.change(id, &[JobState::Running, JobState::Paused], |job| job.state = JobState::Paused).await
    }

    pub async fn resume(&self, id: &str) -> Result<ReleaseJob, ReleaseError> {
        self.change(id, &[JobState::Running, JobState::Paused], |job| job.state = JobState::Running).await
    }

    /// Ends the job for good: no further call for it.
    pub async fn cancel(&self, id: &str) -> Result<ReleaseJob, ReleaseError> {
        let open = [JobState::Running, JobState::Paused, JobState::Cancelled];
        self.change(id, &open, |job| job.state = JobState::Cancelled).await
    }

    /// Releases every approved account now (and each one approved later), for manual jobs.
    pub async fn release_now(&self, id: &str) -> Result<ReleaseJob, ReleaseError> {
        let now = self.driver.now_ms();
        self.change(id, &[JobState::Running, JobState::Paused], move |job| job.release_requested_at_ms = Some(now))
            .await
    }

    /// Applies `f` to a job in one of the `allowed` states.
    async fn change(
        &self,
        id: &str,
        allowed: &[JobState],
        f: impl FnOnce(&mut ReleaseJob),
    ) -> Result<ReleaseJob, ReleaseError> {
        let d = &self.driver;
        let _writing = d.writing.lock().await;
        let lease = d.job_lease(id).await?;
        let result = self.change_held(id, allowed, f).await;
        if let Err(e) = d.store.release(&lease).await {
            tracing::warn!(job = %id, error = %e, "could not release a release job's lease; it expires on its own");
        }
        let job = result?;
        tracing::info!(job = %job.id, state = job.state.as_str(), "release job changed by an operator");
        self.wake.notify_one();
        Ok(job)
    }

    async fn change_held(
        &self,
        id: &str,
        allowed: &[JobState],
        f: impl FnOnce(&mut ReleaseJob),
    ) -> Result<ReleaseJob, ReleaseError> {
        let d = &self.driver;
        let mut job = d.store.releases().job(&d.ns, id).await?.ok_or(ReleaseError::UnknownJob)?;
        if !allowed.contains(&job.state) {
            return Err(ReleaseError::NotNow(job.state.as_str()));
        }
        f(&mut job);
        d.store.releases().save_job(&d.ns, &job).await?;
        Ok(job)
    }

    /// An audit event WeChat pushed for `appid` (`weapp_audit_success`, `_fail`, `_delay`), kept
    /// for whichever instance drives the account's job; other events are not looked at.
    pub async fn audit_event(
        &self,
        appid: &AppId,
        event: &str,
        reason: Option<&str>,
        create_time: i64,
    ) -> Result<(), StoreError> {
        let state = match event {
            "weapp_audit_success" => AccountState::Approved,
            "weapp_audit_fail" => AccountState::Rejected,
            "weapp_audit_delay" => AccountState::Delayed,
            _ => return Ok(()),
        };
        let verdict = AuditVerdict { state, reason: reason.map(str::to_owned), at_ms: create_time * 1000 };
        self.driver.store.releases().record_verdict(&self.driver.ns, appid, &verdict).await?;
        self.wake.notify_one();
        Ok(())
    }
}

/// A job id: its creation time and randomness, so that ids sort by age and never collide.
fn new_id(now_ms: i64) -> String {
    format!("{now_ms:013x}{:08x}", rand::random::<u32>())
}
