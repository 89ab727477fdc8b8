//! Mini programs' code as WeChat keeps it (PROTOCOL.md §12): each account's experience, audited
//! and released versions, and the platform's audit quota. Pure; time is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::wx::WxError;

/// The window of WeChat's "近7天提交审核的小程序数量过多" (85085).
const WEEK: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Audit ids look like WeChat's nine-digit ones.
const FIRST_AUDITID: u64 = 420_000_001;

/// One version of an account's code, as `wxa/commit` received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodeVersion {
    pub template_id: i64,
    pub user_version: String,
    pub user_desc: String,
    /// `ext_json` as committed (a JSON object in a string), so that a test can check what was
    /// substituted in it; None when the commit had none.
    pub ext_json: Option<String>,
    /// Unix seconds.
    pub commit_time: u64,
}

/// Where an audit stands, with `get_latest_auditstatus`'s numbers in [`AuditStatus::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditStatus {
    Approved,
    Rejected,
    Auditing,
    /// WeChat postponed it (`weapp_audit_delay`); a verdict still follows.
    Delayed,
}

impl AuditStatus {
    /// 0 approved, 1 rejected, 2 auditing, 4 delayed (3, withdrawn, the sandbox never reaches).
    pub fn code(self) -> u8 {
        match self {
            AuditStatus::Approved => 0,
            AuditStatus::Rejected => 1,
            AuditStatus::Auditing => 2,
            AuditStatus::Delayed => 4,
        }
    }

    /// Still waiting for a verdict: a new submission answers 85009.
    pub fn is_open(self) -> bool {
        matches!(self, AuditStatus::Auditing | AuditStatus::Delayed)
    }
}

/// An account's latest audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Audit {
    pub auditid: u64,
    pub status: AuditStatus,
    /// Why it was rejected or postponed.
    pub reason: Option<String>,
    /// The experience version it audits.
    pub version: CodeVersion,
    /// Unix seconds.
    pub submit_time: u64,
    /// Unix seconds of the verdict or, while delayed, of the postponement.
    pub verdict_time: Option<u64>,
    /// An approved version is released once; releasing it again answers 85052.
    pub released: bool,
}

/// A version on line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Released {
    pub version: CodeVersion,
    /// Unix seconds.
    pub release_time: u64,
}

/// One account's code, as [`super::Sandbox::code_state`] shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CodeState {
    /// The experience version: the last commit.
    pub committed: Option<CodeVersion>,
    pub audit: Option<Audit>,
    pub released: Option<Released>,
    /// Calls that succeeded, so that a test can tell a step was not done twice.
    pub commits: u32,
    pub submits: u32,
    pub releases: u32,
}

/// How an account's audits end; by default from [`super::SandboxConfig::audit_plan`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditPlan {
    /// Postponed first (`weapp_audit_delay`), the verdict one more audit delay later.
    pub delayed: bool,
    pub rejected: bool,
}

/// The end of an audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Approve,
    Reject(String),
}

struct Account {
    state: CodeState,
    /// The code check of the last commit ends `code_check_delay` after this.
    committed_at: Option<Instant>,
}

/// Every account's code and the platform's audit budget.
pub(crate) struct CodeBook {
    accounts: BTreeMap<String, Account>,
    quota_limit: u32,
    quota_rest: u32,
    per_week: Option<u32>,
    /// Successful submissions of the last 7 days, oldest first.
    week: VecDeque<Instant>,
    next_auditid: u64,
    /// Accounts between a commit and the verdict on it (or a submission refused for good).
    in_flight: BTreeSet<String>,
    max_in_flight: usize,
    /// Verdicts are not pushed, only found by polling.
    pub silent: bool,
    /// Plans set by a test, over the config's hash.
    pub plans: HashMap<String, AuditPlan>,
    /// Accounts without a name, icon or description: `submit_audit` answers 86002.
    pub incomplete: BTreeSet<String>,
}

impl CodeBook {
    pub fn new(quota_limit: u32, per_week: Option<u32>) -> Self {
        Self {
            accounts: BTreeMap::new(),
            quota_limit,
            quota_rest: quota_limit,
            per_week,
            week: VecDeque::new(),
            next_auditid: FIRST_AUDITID,
            in_flight: BTreeSet::new(),
            max_in_flight: 0,
            silent: false,
            plans: HashMap::new(),
            incomplete: BTreeSet::new(),
        }
    }

    pub fn state(&self, appid: &str) -> Option<&CodeState> {
        self.accounts.get(appid).map(|a| &a.state)
    }

    /// `(rest, limit)` of the monthly audit quota.
    pub fn quota(&self) -> (u32, u32) {
        (self.quota_rest, self.quota_limit)
    }

    pub fn set_quota_rest(&mut self, rest: u32) {
        self.quota_rest = rest;
    }

    pub fn set_per_week(&mut self, per_week: Option<u32>) {
        self.per_week = per_week;
    }

    /// The most accounts that were ever between a commit and its verdict at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// `wxa/commit` that passed its checks: the new experience version, its code check started.
    pub fn commit(&mut self, appid: &str, version: CodeVersion, now: Instant) {
        let account = self.account(appid);
        account.state.committed = Some(version);
        account.state.commits += 1;
        account.committed_at = Some(now);
        self.in_flight.insert(appid.to_owned());
        self.max_in_flight = self.max_in_flight.max(self.in_flight.len());
    }

    /// `wxa/submit_audit`: the new audit's id, or WeChat's refusal. Checked in this order: a
    /// commit (85086), no audit open (85009), the code check done (61039), a complete profile
    /// (86002), then the platform's budget (85085, both for the 7 days and for the month: WeChat
    /// answers the spent monthly quota with 85085 too, "小程序提审数量已达本月上限" in its
    /// community answers). Only a success spends quota.
    pub fn submit(&mut self, appid: &str, check_delay: Duration, now: Instant, unix: u64) -> Result<u64, WxError> {
        let account = self.accounts.get(appid);
        let (Some(committed), Some(committed_at)) =
            (account.and_then(|a| a.state.committed.clone()), account.and_then(|a| a.committed_at))
        else {
            return Err(WxError::new(85086, "must commit before submit audit"));
        };
        if account.and_then(|a| a.state.audit.as_ref()).is_some_and(|a| a.status.is_open()) {
            return Err(WxError::new(85009, "already submit a version under auditing"));
        }
        if now < committed_at + check_delay {
            return Err(WxError::new(61039, "code check task is not finished, please try again later"));
        }
        if self.incomplete.contains(appid) {
            // Retrying will not mend it: the account no longer counts as on its way.
            self.in_flight.remove(appid);
            return Err(WxError::new(86002, "miniprogram has not completed its name, icon and description"));
        }
        self.take_budget(now)?;
        let auditid = self.next_auditid;
        self.next_auditid += 1;
        let account = self.account(appid);
        account.state.submits += 1;
        account.state.audit = Some(Audit {
            auditid,
            status: AuditStatus::Auditing,
            reason: None,
            version: committed,
            submit_time: unix,
            verdict_time: None,
            released: false,
        });
        Ok(auditid)
    }

    fn take_budget(&mut self, now: Instant) -> Result<(), WxError> {
        while self.week.front().is_some_and(|t| now.duration_since(*t) >= WEEK) {
            self.week.pop_front();
        }
        let week_full = self.per_week.is_some_and(|n| self.week.len() >= n as usize);
        if week_full || self.quota_rest == 0 {
            return Err(WxError::new(85085, "submit audit reach limit, please try later"));
        }
        self.quota_rest -= 1;
        self.week.push_back(now);
        Ok(())
    }

    /// WeChat postpones the audit; false if `auditid` is no longer open.
    pub fn postpone(&mut self, appid: &str, auditid: u64, reason: &str, unix: u64) -> bool {
        let Some(audit) = self.open_audit(appid, auditid) else { return false };
        audit.status = AuditStatus::Delayed;
        audit.reason = Some(reason.to_owned());
        audit.verdict_time = Some(unix);
        true
    }

    /// The verdict on `auditid`; false if it is no longer open.
    pub fn decide(&mut self, appid: &str, auditid: u64, verdict: &Verdict, unix: u64) -> bool {
        let Some(audit) = self.open_audit(appid, auditid) else { return false };
        (audit.status, audit.reason) = match verdict {
            Verdict::Approve => (AuditStatus::Approved, None),
            Verdict::Reject(reason) => (AuditStatus::Rejected, Some(reason.clone())),
        };
        audit.verdict_time = Some(unix);
        self.in_flight.remove(appid);
        true
    }

    fn open_audit(&mut self, appid: &str, auditid: u64) -> Option<&mut Audit> {
        let audit = self.accounts.get_mut(appid)?.state.audit.as_mut()?;
        (audit.auditid == auditid && audit.status.is_open()).then_some(audit)
    }

    /// `wxa/release`: the latest audit's version goes on line if it was approved and is not yet
    /// released. 85019 without any audit, 85020 while it is open or after a rejection, 85052 for
    /// an approved version already released (the codes WeChat answers in each case).
    pub fn release(&mut self, appid: &str, unix: u64) -> Result<(), WxError> {
        let no_audit = || WxError::new(85019, "no version is under auditing");
        let state = self.accounts.get_mut(appid).map(|a| &mut a.state).ok_or_else(no_audit)?;
        let audit = state.audit.as_mut().ok_or_else(no_audit)?;
        if audit.status != AuditStatus::Approved {
            return Err(WxError::new(85020, "status not allowed"));
        }
        if audit.released {
            return Err(WxError::new(85052, "app is already released"));
        }
        audit.released = true;
        state.released = Some(Released { version: audit.version.clone(), release_time: unix });
        state.releases += 1;
        Ok(())
    }

    fn account(&mut self, appid: &str) -> &mut Account {
        self.accounts
            .entry(appid.to_owned())
            .or_insert_with(|| Account { state: CodeState::default(), committed_at: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_CHECK: Duration = Duration::ZERO;

    fn version(v: &str) -> CodeVersion {
        CodeVersion { template_id: 42, user_version: v.into(), user_desc: "d".into(), ext_json: None, commit_time: 1 }
    }

    fn committed(book: &mut CodeBook, appid: &str, now: Instant) {
        book.commit(appid, version("1.0"), now);
    }

    #[test]
    fn commit_submit_approve_release_once() {
        let (t0, mut b) = (Instant::now(), CodeBook::new(10, None));
        assert_eq!(b.submit("wx1", NO_CHECK, t0, 5).unwrap_err().code, 85086);
        assert_eq!(b.release("wx1", 5).unwrap_err().code, 85019);
        committed(&mut b, "wx1", t0);
        let id = b.submit("wx1", NO_CHECK, t0, 5).unwrap();
        assert_eq!(b.submit("wx1", NO_CHECK, t0, 5).unwrap_err().code, 85009);
        assert_eq!(b.release("wx1", 6).unwrap_err().code, 85020);
        assert!(!b.decide("wx1", id + 1, &Verdict::Approve, 6), "another audit");
        assert!(b.decide("wx1", id, &Verdict::Approve, 6));
        assert!(!b.decide("wx1", id, &Verdict::Approve, 6), "decided once");
        b.release("wx1", 7).unwrap();
        assert_eq!(b.release("wx1", 8).unwrap_err().code, 85052);
        let s = b.state("wx1").unwrap();
        assert_eq!((s.commits, s.submits, s.releases), (1, 1, 1));
        assert_eq!(s.released.as_ref().unwrap().version.user_version, "1.0");
        assert_eq!(s.audit.as_ref().unwrap().status.code(), 0);
        assert_eq!(b.quota(), (9, 10));
    }

    #[test]
    fn code_check_is_waited_out() {
        let (t0, mut b) = (Instant::now(), CodeBook::new(10, None));
        committed(&mut b, "wx1", t0);
        let check = Duration::from_secs(2);
        assert_eq!(b.submit("wx1", check, t0 + Duration::from_secs(1), 0).unwrap_err().code, 61039);
        assert_eq!(b.quota().0, 10, "a refusal spends nothing");
        assert!(b.submit("wx1", check, t0 + check, 0).is_ok());
    }

    #[test]
    fn rejected_and_postponed_audits() {
        let (t0, mut b) = (Instant::now(), CodeBook::new(10, None));
        committed(&mut b, "wx1", t0);
        let id = b.submit("wx1", NO_CHECK, t0, 0).unwrap();
        assert!(b.postpone("wx1", id, "busy", 1));
        assert_eq!(b.state("wx1").unwrap().audit.as_ref().unwrap().status, AuditStatus::Delayed);
        assert_eq!(b.submit("wx1", NO_CHECK, t0, 0).unwrap_err().code, 85009, "still open");
        assert!(b.decide("wx1", id, &Verdict::Reject("bad".into()), 2));
        let audit = b.state("wx1").unwrap().audit.clone().unwrap();
        assert_eq!((audit.status.code(), audit.reason.as_deref()), (1, Some("bad")));
        assert_eq!(b.release("wx1", 3).unwrap_err().code, 85020);
        assert!(b.submit("wx1", NO_CHECK, t0, 0).is_ok(), "a rejected version may be submitted again");
    }

    #[test]
    fn quota_and_week_limit_answer_85085() {
        let (t0, mut b) = (Instant::now(), CodeBook::new(2, Some(1)));
        for appid in ["wx1", "wx2", "wx3"] {
            committed(&mut b, appid, t0);
        }
        assert!(b.submit("wx1", NO_CHECK, t0, 0).is_ok());
        assert_eq!(b.submit("wx2", NO_CHECK, t0, 0).unwrap_err().code, 85085, "one a week");
        assert!(b.submit("wx2", NO_CHECK, t0 + WEEK, 0).is_ok(), "a week later");
        b.set_per_week(None);
        assert_eq!(b.submit("wx3", NO_CHECK, t0 + WEEK, 0).unwrap_err().code, 85085, "the month's two spent");
        b.set_quota_rest(1);
        assert!(b.submit("wx3", NO_CHECK, t0 + WEEK, 0).is_ok());
        assert_eq!(b.quota(), (0, 2));
    }

    #[test]
    fn in_flight_counts_accounts_from_commit_to_verdict() {
        let (t0, mut b) = (Instant::now(), CodeBook::new(10, None));
        committed(&mut b, "wx1", t0);
        committed(&mut b, "wx2", t0);
        committed(&mut b, "wx2", t0);
        assert_eq!(b.max_in_flight(), 2);
        let id = b.submit("wx1", NO_CHECK, t0, 0).unwrap();
        b.decide("wx1", id, &Verdict::Approve, 0);
        b.incomplete.insert("wx2".into());
        assert_eq!(b.submit("wx2", NO_CHECK, t0, 0).unwrap_err().code, 86002);
        committed(&mut b, "wx3", t0);
        assert_eq!(b.max_in_flight(), 2, "wx1 decided, wx2 refused for good");
    }
}
