//! The loop that drives open jobs: each tick, for each job whose lease this instance takes, the
//! verdicts WeChat pushed are applied, due steps are taken (new accounts started while fewer than
//! `concurrency` are between commit and verdict), and what changed is stored.

use super::step::{due, Action};
use super::{Driver, StepOutcome};
use crate::metrics;
use crate::store::releases::{AccountState, JobState, ReleaseAccount, ReleaseJob};
use crate::store::StoreError;
use futures_util::stream::{self, StreamExt};
use std::collections::HashMap;

/// Steps taken at once within one job's tick.
const STEPS_AT_ONCE: usize = 32;
/// A verdict's CreateTime is in seconds: one stamped in the second of the submit is this audit's.
const VERDICT_SLACK_MS: i64 = 1_000;

impl Driver {
    /// One pass over every job that needs one.
    pub(super) async fn tick(&self) {
        let jobs = match self.store.releases().jobs(&self.ns).await {
            Ok(jobs) => jobs,
            Err(e) => return tracing::warn!(error = %e, "release jobs could not be read; trying again"),
        };
        let mut totals: HashMap<String, u64> = HashMap::new();
        for job in jobs.into_iter().filter(needs_driving) {
            let _writing = self.writing.lock().await;
            let name = format!("release:{}", job.id);
            let lease = match self.store.lease(&self.ns, &name, self.settings.lease_ttl).await {
                Ok(Some(lease)) => lease,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "could not take a release job's lease");
                    continue;
                }
            };
            match self.drive(&job.id).await {
                Ok(Some(job)) if job.state == JobState::Running => {
                    for (state, n) in &job.counts {
                        *totals.entry(state.clone()).or_default() += n;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(job = %job.id, error = %e, "a release job's tick failed; trying again"),
            }
            if let Err(e) = self.store.release(&lease).await {
                tracing::warn!(job = %job.id, error = %e, "could not release a release job's lease; it expires on its own");
            }
        }
        for state in AccountState::ALL {
            let n = totals.get(state.as_str()).copied().unwrap_or(0);
            metrics::RELEASE_ACCOUNTS.with_label_values(&[state.as_str()]).set(n as i64);
        }
    }

    /// Drives one job under its lease; the job as it was stored.
    async fn drive(&self, id: &str) -> Result<Option<ReleaseJob>, StoreError> {
        let releases = self.store.releases();
        let Some(mut job) = releases.job(&self.ns, id).await? else { return Ok(None) };
        if !needs_driving(&job) {
            return Ok(Some(job));
        }
        let mut accounts = match self.take_held(id) {
            Some(accounts) => accounts,
            None => releases.accounts(&self.ns, id).await?,
        };
        let mut changed: Vec<usize> = if job.state == JobState::Cancelled {
            self.cancel_all(&mut accounts)
        } else {
            let mut changed = self.apply_verdicts(&mut accounts).await?;
            changed.extend(self.take_steps(&job, &mut accounts).await);
            changed
        };
        changed.sort_unstable();
        changed.dedup();
        let writes: Vec<ReleaseAccount> = changed.iter().map(|i| accounts[*i].clone()).collect();
        releases.save_accounts(&self.ns, id, &writes).await?;
        let (counts, done) = (tally(&accounts), self.is_done(&job, &accounts));
        self.keep_held(id, accounts);
        // Re-read: an operator may have paused, resumed or cancelled meanwhile.
        let mut latest = releases.job(&self.ns, id).await?.unwrap_or(job.clone());
        latest.counts = counts;
        if latest.state == JobState::Cancelled && job.state == JobState::Cancelled {
            latest.finished_at_ms = Some(self.now_ms());
        } else if latest.state == JobState::Running && done {
            latest.state = JobState::Done;
            latest.finished_at_ms = Some(self.now_ms());
            tracing::info!(job = %latest.id, counts = ?latest.counts, "release job done");
        }
        releases.save_job(&self.ns, &latest).await?;
        if !needs_driving(&latest) {
            self.take_held(id);
        }
        job = latest;
        Ok(Some(job))
    }

    /// Every account not over yet is cancelled: no further call is made for the job.
    fn cancel_all(&self, accounts: &mut [ReleaseAccount]) -> Vec<usize> {
        let now = self.now_ms();
        let mut changed = Vec::new();
        for (i, a) in accounts.iter_mut().enumerate().filter(|(_, a)| !a.state.is_final()) {
            a.state = AccountState::Cancelled;
            a.in_flight = None;
            a.updated_at_ms = now;
            changed.push(i);
        }
        changed
    }

    /// The verdicts WeChat pushed for accounts under audit, newer than their submission.
    async fn apply_verdicts(&self, accounts: &mut [ReleaseAccount]) -> Result<Vec<usize>, StoreError> {
        let auditing: Vec<_> = accounts
            .iter()
            .filter(|a| matches!(a.state, AccountState::Auditing | AccountState::Delayed) && a.in_flight.is_none())
            .map(|a| a.appid)
            .collect();
        if auditing.is_empty() {
            return Ok(Vec::new());
        }
        let verdicts: HashMap<_, _> = self.store.releases().verdicts(&self.ns, &auditing).await?.into_iter().collect();
        let mut changed = Vec::new();
        for (i, a) in accounts.iter_mut().enumerate() {
            let Some(v) = verdicts.get(&a.appid) else { continue };
            let submitted = a.submitted_at_ms.unwrap_or(i64::MAX);
            let news = v.at_ms + VERDICT_SLACK_MS >= submitted && !(v.state == a.state && v.reason == a.reason);
            if !news || !matches!(a.state, AccountState::Auditing | AccountState::Delayed) {
                continue;
            }
            a.reason = v.reason.clone();
            self.moved(a, v.state);
            if v.state == AccountState::Delayed {
                a.next_at_ms = self.now_ms() + self.settings.audit_poll_ms;
            }
            a.updated_at_ms = self.now_ms();
            changed.push(i);
        }
        Ok(changed)
    }

    /// Takes every step due now, at most [`STEPS_AT_ONCE`] at a time; the indices it changed.
    async fn take_steps(&self, job: &ReleaseJob, accounts: &mut [ReleaseAccount]) -> Vec<usize> {
        let now = self.now_ms();
        let running = job.state == JobState::Running;
        let starting = |a: &ReleaseAccount| a.state == AccountState::Pending && a.in_flight.is_some();
        let busy = accounts.iter().filter(|a| a.state.in_flight() || starting(a)).count();
        let failed = accounts.iter().filter(|a| a.state == AccountState::Failed).count();
        let mut starts = match failed < job.max_failures as usize {
            true => (job.concurrency as usize).saturating_sub(busy),
            false => 0,
        };
        let mut actions = Vec::new();
        for (i, a) in accounts.iter().enumerate() {
            if let Some(action) = due(job, a, now, running, starts > 0) {
                if matches!(action, Action::Commit) {
                    starts -= 1;
                }
                actions.push((i, action));
            }
        }
        let outcomes: Vec<(usize, StepOutcome)> = stream::iter(actions)
            .map(|(i, action)| {
                let account = accounts[i].clone();
                async move { (i, self.act(job, account, action).await) }
            })
            .buffer_unordered(STEPS_AT_ONCE)
            .collect()
            .await;
        outcomes
            .into_iter()
            .map(|(i, StepOutcome(a))| {
                accounts[i] = a;
                i
            })
            .collect()
    }

    /// Nothing more will happen: every account is over, or the failures stopped new ones and
    /// none is still on its way.
    fn is_done(&self, job: &ReleaseJob, accounts: &[ReleaseAccount]) -> bool {
        let failed = accounts.iter().filter(|a| a.state == AccountState::Failed).count();
        let stopped = failed >= job.max_failures as usize;
        accounts
            .iter()
            .all(|a| a.state.is_final() || (stopped && a.state == AccountState::Pending && a.in_flight.is_none()))
    }

    /// The accounts kept from this instance's last tick of the job, on a store only it writes.
    fn take_held(&self, id: &str) -> Option<Vec<ReleaseAccount>> {
        match self.store.shared() {
            true => None,
            false => self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(id),
        }
    }

    fn keep_held(&self, id: &str, accounts: Vec<ReleaseAccount>) {
        if !self.store.shared() {
            self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), accounts);
        }
    }
}

fn needs_driving(job: &ReleaseJob) -> bool {
    job.state.is_open() || (job.state == JobState::Cancelled && job.finished_at_ms.is_none())
}

/// Accounts by state, every state named.
pub(super) fn tally(accounts: &[ReleaseAccount]) -> std::collections::BTreeMap<String, u64> {
    let mut counts: std::collections::BTreeMap<String, u64> =
        AccountState::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
    for a in accounts {
        *counts.entry(a.state.as_str().to_owned()).or_default() += 1;
    }
    counts
}
