//! One account's next step in its job: what the state machine does with it, and how each of
//! WeChat's answers moves it on. Every call is made with the account's token (replaced once if
//! WeChat refuses it), and a call begun is recorded before it leaves (`in_flight`), so that after
//! a crash WeChat is asked what became of it before anything is sent again.

use super::request::ext_json_for;
use super::{Driver, StepOutcome};
use crate::metrics;
use crate::store::releases::{AccountState, ReleaseAccount, ReleaseJob, ReleaseMode, Step};
use crate::wechat::{ApiErrorKind, AuditStatus, WechatError};
use serde_json::json;

/// WeChat's code check after a commit is not finished: wait and submit again.
const CODE_CHECK_PENDING: i64 = 61039;
/// Too many submissions in 7 days: wait, never fail.
const TOO_MANY_SUBMISSIONS: i64 = 85085;
/// `get_latest_auditstatus` for an account that was never submitted.
const NO_AUDIT_YET: i64 = 85058;

/// What to do with an account now, if anything.
pub(super) enum Action {
    Recover(Step),
    Commit,
    Submit,
    Poll,
    Release,
}

/// The action due for `a` at `now_ms` in `job`; `may_start` when another account may begin.
pub(super) fn due(job: &ReleaseJob, a: &ReleaseAccount, now_ms: i64, running: bool, may_start: bool) -> Option<Action> {
    if let Some(step) = a.in_flight {
        return Some(Action::Recover(step));
    }
    if a.next_at_ms > now_ms {
        return None;
    }
    match a.state {
        AccountState::Pending if running && may_start => Some(Action::Commit),
        AccountState::Committed | AccountState::WaitingQuota if running => Some(Action::Submit),
        AccountState::Auditing | AccountState::Delayed => Some(Action::Poll),
        AccountState::Approved if running && releasable(job) => Some(Action::Release),
        _ => None,
    }
}

fn releasable(job: &ReleaseJob) -> bool {
    job.release == ReleaseMode::Auto || job.release_requested_at_ms.is_some()
}

impl Driver {
    /// Takes `action` for `a` (a copy the caller stores afterwards).
    pub(super) async fn act(&self, job: &ReleaseJob, mut a: ReleaseAccount, action: Action) -> StepOutcome {
        let result = match action {
            Action::Recover(step) => self.recover(job, &mut a, step).await,
            Action::Commit => self.commit(job, &mut a).await,
            Action::Submit => self.submit(job, &mut a).await,
            Action::Poll => self.poll(&mut a).await,
            Action::Release => self.release(job, &mut a).await,
        };
        if let Err((step, e)) = result {
            self.failed_step(&mut a, step, &e);
        }
        a.updated_at_ms = self.now_ms();
        StepOutcome(a)
    }

    /// Records that `step` is about to be sent, before it is.
    async fn begin(&self, job: &ReleaseJob, a: &mut ReleaseAccount, step: Step) -> Result<(), (Step, StepError)> {
        a.in_flight = Some(step);
        a.updated_at_ms = self.now_ms();
        self.save(job, a).await.map_err(|e| (step, StepError::Store(e.to_string())))
    }

    async fn commit(&self, job: &ReleaseJob, a: &mut ReleaseAccount) -> Result<(), (Step, StepError)> {
        self.begin(job, a, Step::Commit).await?;
        let ext = job.ext_json.as_ref().map_or_else(|| "{}".to_owned(), |e| ext_json_for(e, &a.appid));
        let body = json!({
            "template_id": job.template_id,
            "ext_json": ext,
            "user_version": job.user_version,
            "user_desc": job.user_desc,
        });
        let result = self
            .call(&a.appid, |api, t| {
                let body = body.clone();
                Box::pin(async move { api.commit(t, body).await })
            })
            .await;
        a.in_flight = None;
        self.count(Step::Commit, &result);
        result.map_err(|e| (Step::Commit, e))?;
        self.moved(a, AccountState::Committed);
        Ok(())
    }

    /// Asks the audit quota, then submits: a quota at the reserve, or WeChat's 85085, waits.
    async fn submit(&self, job: &ReleaseJob, a: &mut ReleaseAccount) -> Result<(), (Step, StepError)> {
        let quota = self.call(&a.appid, |api, t| Box::pin(async move { api.audit_quota(t).await })).await;
        metrics::RELEASE_STEPS.with_label_values(&["quota", result_label(&quota)]).inc();
        let quota = quota.map_err(|e| (Step::Submit, e))?;
        if quota.rest <= job.reserve_audit_quota {
            self.wait_for_quota(
                a,
                format!("audit quota: {} left, {} kept in reserve", quota.rest, job.reserve_audit_quota),
            );
            return Ok(());
        }
        self.begin(job, a, Step::Submit).await?;
        let body = job.audit.clone().unwrap_or_else(|| json!({}));
        let result = self
            .call(&a.appid, |api, t| {
                let body = body.clone();
                Box::pin(async move { api.submit_audit(t, body).await })
            })
            .await;
        a.in_flight = None;
        self.count(Step::Submit, &result);
        match result {
            Ok(auditid) => {
                a.auditid = Some(auditid);
                a.submitted_at_ms = Some(self.now_ms());
                self.moved(a, AccountState::Auditing);
                a.next_at_ms = self.now_ms() + self.settings.audit_poll_ms;
                Ok(())
            }
            Err(StepError::Wechat(e)) if errcode(&e) == Some(CODE_CHECK_PENDING) => {
                self.retry_later(a, &e);
                Ok(())
            }
            Err(StepError::Wechat(e)) if errcode(&e) == Some(TOO_MANY_SUBMISSIONS) => {
                self.wait_for_quota(a, e.to_string());
                Ok(())
            }
            Err(e) => Err((Step::Submit, e)),
        }
    }

    /// No word from WeChat for a while: ask the audit status.
    async fn poll(&self, a: &mut ReleaseAccount) -> Result<(), (Step, StepError)> {
        let status = self.call(&a.appid, |api, t| Box::pin(async move { api.audit_status(t).await })).await;
        metrics::RELEASE_STEPS.with_label_values(&["status", result_label(&status)]).inc();
        let status = status.map_err(|e| (Step::Submit, e))?;
        self.apply_status(a, &status);
        Ok(())
    }

    async fn release(&self, job: &ReleaseJob, a: &mut ReleaseAccount) -> Result<(), (Step, StepError)> {
        self.begin(job, a, Step::Release).await?;
        let result = self.call(&a.appid, |api, t| Box::pin(async move { api.release(t).await })).await;
        a.in_flight = None;
        self.count(Step::Release, &result);
        result.map_err(|e| (Step::Release, e))?;
        self.moved(a, AccountState::Released);
        Ok(())
    }

    /// A call begun before a crash (or a lost lease): WeChat says whether it happened.
    async fn recover(&self, job: &ReleaseJob, a: &mut ReleaseAccount, step: Step) -> Result<(), (Step, StepError)> {
        match step {
            Step::Commit | Step::Release => {
                let info = self.call(&a.appid, |api, t| Box::pin(async move { api.version_info(t).await })).await;
                let info = info.map_err(|e| (step, e))?;
                a.in_flight = None;
                let ours = |v: &Option<String>| v.as_deref() == Some(job.user_version.as_str());
                match step {
                    Step::Commit if ours(&info.exp_version) => self.moved(a, AccountState::Committed),
                    Step::Release if ours(&info.release_version) => self.moved(a, AccountState::Released),
                    // It never left: the state is the one before the call, and it goes again.
                    _ => a.next_at_ms = self.now_ms(),
                }
            }
            Step::Submit => {
                let status = self.call(&a.appid, |api, t| Box::pin(async move { api.audit_status(t).await })).await;
                a.in_flight = None;
                match status {
                    Ok(s) if s.user_version.as_deref() == Some(job.user_version.as_str()) => {
                        a.auditid = s.auditid.or(a.auditid);
                        a.submitted_at_ms = a.submitted_at_ms.or(Some(self.now_ms()));
                        self.apply_status(a, &s);
                    }
                    // No audit of this version, or none at all: the submit never reached WeChat.
                    Ok(_) => a.next_at_ms = self.now_ms(),
                    Err(StepError::Wechat(e)) if errcode(&e) == Some(NO_AUDIT_YET) => a.next_at_ms = self.now_ms(),
                    Err(e) => {
                        a.in_flight = Some(Step::Submit);
                        return Err((step, e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves an account auditing on to what WeChat's status says.
    pub(super) fn apply_status(&self, a: &mut ReleaseAccount, s: &AuditStatus) {
        let now = self.now_ms();
        match s.status {
            0 => self.moved(a, AccountState::Approved),
            1 => {
                a.reason = s.reason.clone();
                self.moved(a, AccountState::Rejected);
            }
            4 => {
                a.reason = s.reason.clone();
                self.moved(a, AccountState::Delayed);
                a.next_at_ms = now + self.settings.audit_poll_ms;
            }
            3 => {
                a.errmsg = Some("the audit was withdrawn".into());
                self.moved(a, AccountState::Failed);
            }
            _ => {
                if a.state != AccountState::Delayed {
                    self.moved(a, AccountState::Auditing);
                }
                a.next_at_ms = now + self.settings.audit_poll_ms;
            }
        }
    }

    pub(super) fn moved(&self, a: &mut ReleaseAccount, state: AccountState) {
        a.state = state;
        a.attempts = 0;
        a.next_at_ms = self.now_ms();
        if !matches!(state, AccountState::Failed) {
            a.errcode = None;
            a.errmsg = None;
        }
    }

    fn wait_for_quota(&self, a: &mut ReleaseAccount, why: String) {
        self.moved(a, AccountState::WaitingQuota);
        a.errmsg = Some(why);
        a.next_at_ms = self.now_ms() + self.settings.quota_recheck_ms;
    }

    /// A transient answer: the same step again after a backoff.
    fn retry_later(&self, a: &mut ReleaseAccount, e: &WechatError) {
        a.attempts += 1;
        a.errcode = errcode(e);
        a.errmsg = Some(e.to_string());
        let wait = (2_000i64 << a.attempts.min(7)).min(300_000);
        a.next_at_ms = self.now_ms() + wait;
    }

    /// A step that failed: transient errors wait and go again; others fail the account.
    fn failed_step(&self, a: &mut ReleaseAccount, step: Step, e: &StepError) {
        match e {
            StepError::Wechat(w) if transient(w) => self.retry_later(a, w),
            StepError::Store(why) => {
                // Nothing was sent (the record of the call could not be kept): go again later.
                a.in_flight = None;
                a.errmsg = Some(why.clone());
                a.next_at_ms = self.now_ms() + 5_000;
            }
            StepError::Wechat(w) => {
                a.in_flight = None;
                a.errcode = errcode(w);
                a.errmsg = Some(w.to_string());
                a.state = AccountState::Failed;
                tracing::warn!(account = %a.appid, ?step, error = %w, "a release step failed");
            }
            StepError::Token(t) => {
                a.in_flight = None;
                a.errcode = None;
                a.errmsg = Some(t.clone());
                a.state = AccountState::Failed;
            }
        }
    }

    fn count<T>(&self, step: Step, result: &Result<T, StepError>) {
        let step = match step {
            Step::Commit => "commit",
            Step::Submit => "submit",
            Step::Release => "release",
        };
        metrics::RELEASE_STEPS.with_label_values(&[step, result_label(result)]).inc();
    }
}

/// Why a step did not go through.
#[derive(Debug)]
pub(super) enum StepError {
    Wechat(WechatError),
    /// No token for the account (revoked, unknown): retrying will not mend it.
    Token(String),
    Store(String),
}

fn errcode(e: &WechatError) -> Option<i64> {
    match e {
        WechatError::Api { errcode, .. } => Some(*errcode),
        _ => None,
    }
}

/// WeChat busy, the network, a 5xx: worth the same step again.
fn transient(e: &WechatError) -> bool {
    match e {
        WechatError::Api { kind, errcode, .. } => *kind == ApiErrorKind::Busy || *errcode == CODE_CHECK_PENDING,
        WechatError::Timeout { .. } | WechatError::Transport { .. } => true,
        WechatError::Status { status, .. } => *status >= 500,
        WechatError::Decode { .. } | WechatError::NoPlatform { .. } => false,
    }
}

fn result_label<T>(result: &Result<T, StepError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StepError::Wechat(WechatError::Api { .. })) => "errcode",
        Err(StepError::Wechat(_)) => "unreachable",
        Err(StepError::Token(_)) => "token",
        Err(StepError::Store(_)) => "store_error",
    }
}
