//! Release jobs in the store: each job, and each of its accounts' place in it. Records are kept as
//! JSON in every backend (a job's settings and an account's step are read and written whole).
//!
//! Only the instance holding a job's lease writes its accounts; audit verdicts, which reach
//! whichever instance WeChat pushed to, are kept apart by appid ([`ReleaseStore::record_verdict`])
//! for the driver to read.

use super::StoreError;
use crate::AppId;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Paused,
    Done,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }

    /// Still to be driven (a paused job waits, but is not over).
    pub fn is_open(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseMode {
    /// Each account is released once it is approved.
    Auto,
    /// Approved accounts wait for `POST /admin/releases/{id}/release`.
    Manual,
}

/// One job, as created (its settings) and as it goes (its state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseJob {
    pub id: String,
    pub state: JobState,
    pub template_id: i64,
    pub user_version: String,
    pub user_desc: String,
    /// Sent to `wxa/commit` as a JSON string, `$APPID$` replaced in every string value.
    pub ext_json: Option<serde_json::Value>,
    /// Sent to `wxa/submit_audit` as it is.
    pub audit: Option<serde_json::Value>,
    pub release: ReleaseMode,
    pub concurrency: u32,
    pub max_failures: u32,
    pub reserve_audit_quota: u64,
    pub created_at_ms: i64,
    /// When an operator asked to release every approved account (manual mode).
    pub release_requested_at_ms: Option<i64>,
    /// Accounts by state, as the driver last wrote them (`running` jobs' sum is a metric).
    #[serde(default)]
    pub counts: std::collections::BTreeMap<String, u64>,
    /// When a cancelled job's accounts were all marked cancelled, or the job was done.
    #[serde(default)]
    pub finished_at_ms: Option<i64>,
}

/// Where an account is in its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    Pending,
    Committed,
    Auditing,
    Delayed,
    Approved,
    Released,
    Rejected,
    WaitingQuota,
    Failed,
    Skipped,
    Cancelled,
}

impl AccountState {
    pub const ALL: [AccountState; 11] = [
        Self::Pending,
        Self::Committed,
        Self::Auditing,
        Self::Delayed,
        Self::Approved,
        Self::Released,
        Self::Rejected,
        Self::WaitingQuota,
        Self::Failed,
        Self::Skipped,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Committed => "committed",
            Self::Auditing => "auditing",
            Self::Delayed => "delayed",
            Self::Approved => "approved",
            Self::Released => "released",
            Self::Rejected => "rejected",
            Self::WaitingQuota => "waiting_quota",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Nothing more will be done for it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Released | Self::Rejected | Self::Failed | Self::Skipped | Self::Cancelled)
    }

    /// Between its commit and WeChat's verdict: what `concurrency` bounds.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Committed | Self::Auditing | Self::Delayed | Self::WaitingQuota)
    }
}

/// A call to WeChat an account's step makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Commit,
    Submit,
    Release,
}

/// One account of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseAccount {
    pub appid: AppId,
    pub state: AccountState,
    pub auditid: Option<i64>,
    /// WeChat's reason for a rejection or a delay.
    pub reason: Option<String>,
    /// A failed step's errcode and errmsg (or the last transient error, while retried).
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub updated_at_ms: i64,
    /// A call begun and not yet recorded: after a crash, WeChat is asked what became of it
    /// before anything is sent again.
    pub in_flight: Option<Step>,
    /// When the audit was submitted (verdicts older than this are another audit's).
    pub submitted_at_ms: Option<i64>,
    /// When to act on it next: a retry, a quota check, a poll of the audit status.
    pub next_at_ms: i64,
    /// Attempts at the current step that WeChat answered with a transient error.
    pub attempts: u32,
}

impl ReleaseAccount {
    pub fn new(appid: AppId, state: AccountState, now_ms: i64) -> Self {
        Self {
            appid,
            state,
            auditid: None,
            reason: None,
            errcode: None,
            errmsg: None,
            updated_at_ms: now_ms,
            in_flight: None,
            submitted_at_ms: None,
            next_at_ms: now_ms,
            attempts: 0,
        }
    }
}

/// An audit verdict WeChat pushed for an account, kept until a newer one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditVerdict {
    pub state: AccountState,
    pub reason: Option<String>,
    /// The push's CreateTime, in milliseconds.
    pub at_ms: i64,
}

#[async_trait]
pub trait ReleaseStore: Send + Sync {
    /// Stores a new job with every account, in one transaction.
    async fn create_job(&self, ns: &AppId, job: &ReleaseJob, accounts: &[ReleaseAccount]) -> Result<(), StoreError>;

    /// Every job, newest first.
    async fn jobs(&self, ns: &AppId) -> Result<Vec<ReleaseJob>, StoreError>;

    async fn job(&self, ns: &AppId, id: &str) -> Result<Option<ReleaseJob>, StoreError>;

    /// Writes a job's record (its state, a release asked for).
    async fn save_job(&self, ns: &AppId, job: &ReleaseJob) -> Result<(), StoreError>;

    /// Every account of a job, by appid.
    async fn accounts(&self, ns: &AppId, id: &str) -> Result<Vec<ReleaseAccount>, StoreError>;

    /// Writes accounts of a job, in one transaction.
    async fn save_accounts(&self, ns: &AppId, id: &str, accounts: &[ReleaseAccount]) -> Result<(), StoreError>;

    /// Keeps `verdict` for `appid` unless a newer one is held.
    async fn record_verdict(&self, ns: &AppId, appid: &AppId, verdict: &AuditVerdict) -> Result<(), StoreError>;

    /// The verdicts held for `appids`.
    async fn verdicts(&self, ns: &AppId, appids: &[AppId]) -> Result<Vec<(AppId, AuditVerdict)>, StoreError>;
}

/// A record as its backends keep it.
pub(super) fn to_json<T: Serialize>(record: &T) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|e| StoreError::Corrupt(format!("a release record: {e}")))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("a release record: {e}")))
}
