//! Release jobs in Redis: a hash of jobs by id, a hash of each job's accounts by appid, a hash of
//! audit verdicts by appid; every record JSON. Only the instance holding a job's lease writes its
//! accounts; a verdict is kept only if it is no older than the one held (a script, since two
//! instances may take pushes for one account at once).

use super::RedisStore;
use crate::store::releases::{from_json, to_json, AuditVerdict, ReleaseAccount, ReleaseJob, ReleaseStore};
use crate::store::StoreError;
use crate::AppId;
use async_trait::async_trait;
use redis::AsyncCommands;
use std::sync::LazyLock;

/// KEYS[1] the verdicts; ARGV appid, at_ms, record.
static KEEP_NEWER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
        local held = redis.call('HGET', KEYS[1], ARGV[1])
        if held and cjson.decode(held)['at_ms'] > tonumber(ARGV[2]) then return 0 end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
        return 1
        "#,
    )
});

impl RedisStore {
    fn jobs_key(&self, ns: &AppId) -> String {
        self.key(ns, "releases")
    }

    fn accounts_key(&self, ns: &AppId, id: &str) -> String {
        self.key(ns, &format!("release:{id}:accounts"))
    }
}

#[async_trait]
impl ReleaseStore for RedisStore {
    async fn create_job(&self, ns: &AppId, job: &ReleaseJob, accounts: &[ReleaseAccount]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic().hset(self.jobs_key(ns), &job.id, to_json(job)?).ignore();
        for chunk in accounts.chunks(1000) {
            let fields =
                chunk.iter().map(|a| Ok((a.appid.to_string(), to_json(a)?))).collect::<Result<Vec<_>, StoreError>>()?;
            pipe.hset_multiple(self.accounts_key(ns, &job.id), &fields).ignore();
        }
        self.link.run(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await
    }

    async fn jobs(&self, ns: &AppId) -> Result<Vec<ReleaseJob>, StoreError> {
        let held = self.hgetall(&self.jobs_key(ns)).await?;
        let mut jobs = held.values().map(|t| from_json::<ReleaseJob>(t)).collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then_with(|| b.id.cmp(&a.id)));
        Ok(jobs)
    }

    async fn job(&self, ns: &AppId, id: &str) -> Result<Option<ReleaseJob>, StoreError> {
        self.hget(&self.jobs_key(ns), id).await?.map(|t| from_json(&t)).transpose()
    }

    async fn save_job(&self, ns: &AppId, job: &ReleaseJob) -> Result<(), StoreError> {
        let (key, id, record) = (self.jobs_key(ns), job.id.clone(), to_json(job)?);
        self.link.run(|mut c| async move { c.hset::<_, _, _, ()>(key, id, record).await }).await
    }

    async fn accounts(&self, ns: &AppId, id: &str) -> Result<Vec<ReleaseAccount>, StoreError> {
        let held = self.hgetall(&self.accounts_key(ns, id)).await?;
        let mut accounts = held.values().map(|t| from_json::<ReleaseAccount>(t)).collect::<Result<Vec<_>, _>>()?;
        accounts.sort_by_key(|a| a.appid);
        Ok(accounts)
    }

    async fn save_accounts(&self, ns: &AppId, id: &str, accounts: &[ReleaseAccount]) -> Result<(), StoreError> {
        if accounts.is_empty() {
            return Ok(());
        }
        let fields =
            accounts.iter().map(|a| Ok((a.appid.to_string(), to_json(a)?))).collect::<Result<Vec<_>, StoreError>>()?;
        let key = self.accounts_key(ns, id);
        self.link.run(|mut c| async move { c.hset_multiple::<_, _, _, ()>(key, &fields).await }).await
    }

    async fn record_verdict(&self, ns: &AppId, appid: &AppId, verdict: &AuditVerdict) -> Result<(), StoreError> {
        let key = self.key(ns, "release_verdicts");
        let (appid, at, record) = (appid.to_string(), verdict.at_ms, to_json(verdict)?);
        self.link
            .run(|mut c| async move {
                KEEP_NEWER.key(key).arg(appid).arg(at).arg(record).invoke_async::<i64>(&mut c).await.map(drop)
            })
            .await
    }

    async fn verdicts(&self, ns: &AppId, appids: &[AppId]) -> Result<Vec<(AppId, AuditVerdict)>, StoreError> {
        if appids.is_empty() {
            return Ok(Vec::new());
        }
        let (key, fields): (String, Vec<String>) =
            (self.key(ns, "release_verdicts"), appids.iter().map(|a| a.to_string()).collect());
        let held: Vec<Option<String>> = self
            .link
            .run(|mut c| async move { redis::cmd("HMGET").arg(key).arg(&fields).query_async(&mut c).await })
            .await?;
        let mut found = Vec::new();
        for (appid, text) in appids.iter().zip(held) {
            if let Some(text) = text {
                found.push((*appid, from_json(&text)?));
            }
        }
        Ok(found)
    }
}
