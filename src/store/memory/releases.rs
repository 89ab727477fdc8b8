//! Release jobs in memory.

use crate::store::releases::{AuditVerdict, ReleaseAccount, ReleaseJob, ReleaseStore};
use crate::store::StoreError;
use crate::AppId;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub(super) struct MemoryReleases(Mutex<State>);

#[derive(Default)]
struct State {
    jobs: HashMap<(AppId, String), ReleaseJob>,
    accounts: HashMap<(AppId, String), BTreeMap<AppId, ReleaseAccount>>,
    verdicts: HashMap<(AppId, AppId), AuditVerdict>,
}

impl MemoryReleases {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ReleaseStore for MemoryReleases {
    async fn create_job(&self, ns: &AppId, job: &ReleaseJob, accounts: &[ReleaseAccount]) -> Result<(), StoreError> {
        let mut state = self.state();
        state.jobs.insert((*ns, job.id.clone()), job.clone());
        let held = accounts.iter().map(|a| (a.appid, a.clone())).collect();
        state.accounts.insert((*ns, job.id.clone()), held);
        Ok(())
    }

    async fn jobs(&self, ns: &AppId) -> Result<Vec<ReleaseJob>, StoreError> {
        let mut jobs: Vec<ReleaseJob> =
            self.state().jobs.iter().filter(|((n, _), _)| n == ns).map(|(_, j)| j.clone()).collect();
        jobs.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then_with(|| b.id.cmp(&a.id)));
        Ok(jobs)
    }

    async fn job(&self, ns: &AppId, id: &str) -> Result<Option<ReleaseJob>, StoreError> {
        Ok(self.state().jobs.get(&(*ns, id.to_owned())).cloned())
    }

    async fn save_job(&self, ns: &AppId, job: &ReleaseJob) -> Result<(), StoreError> {
        self.state().jobs.insert((*ns, job.id.clone()), job.clone());
        Ok(())
    }

    async fn accounts(&self, ns: &AppId, id: &str) -> Result<Vec<ReleaseAccount>, StoreError> {
        let state = self.state();
        Ok(state.accounts.get(&(*ns, id.to_owned())).map(|a| a.values().cloned().collect()).unwrap_or_default())
    }

    async fn save_accounts(&self, ns: &AppId, id: &str, accounts: &[ReleaseAccount]) -> Result<(), StoreError> {
        let mut state = self.state();
        let held = state.accounts.entry((*ns, id.to_owned())).or_default();
        for a in accounts {
            held.insert(a.appid, a.clone());
        }
        Ok(())
    }

    async fn record_verdict(&self, ns: &AppId, appid: &AppId, verdict: &AuditVerdict) -> Result<(), StoreError> {
        let mut state = self.state();
        let held = state.verdicts.entry((*ns, *appid)).or_insert_with(|| verdict.clone());
        if held.at_ms <= verdict.at_ms {
            *held = verdict.clone();
        }
        Ok(())
    }

    async fn verdicts(&self, ns: &AppId, appids: &[AppId]) -> Result<Vec<(AppId, AuditVerdict)>, StoreError> {
        let state = self.state();
        Ok(appids.iter().filter_map(|a| state.verdicts.get(&(*ns, *a)).map(|v| (*a, v.clone()))).collect())
    }
}
