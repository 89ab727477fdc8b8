//! Release jobs in the SQLite file: a row per job, per account of a job, and per verdict, each
//! holding its record as JSON.

use super::SqliteStore;
use crate::store::releases::{from_json, to_json, AuditVerdict, ReleaseAccount, ReleaseJob, ReleaseStore};
use crate::store::StoreError;
use crate::AppId;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl ReleaseStore for SqliteStore {
    async fn create_job(&self, ns: &AppId, job: &ReleaseJob, accounts: &[ReleaseAccount]) -> Result<(), StoreError> {
        let (ns, id, created, record) = (ns.to_string(), job.id.clone(), job.created_at_ms, to_json(job)?);
        let rows =
            accounts.iter().map(|a| Ok((a.appid.to_string(), to_json(a)?))).collect::<Result<Vec<_>, StoreError>>()?;
        self.bulk(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO release_jobs (component_appid, id, created_at_ms, record) VALUES (?1, ?2, ?3, ?4)",
                params![ns, id, created, record],
            )?;
            insert_accounts(&tx, &ns, &id, &rows)?;
            tx.commit()
        })
        .await
    }

    async fn jobs(&self, ns: &AppId) -> Result<Vec<ReleaseJob>, StoreError> {
        let ns = ns.to_string();
        let texts = self
            .with_conn(move |c| {
                let mut stmt = c.prepare(
                    "SELECT record FROM release_jobs WHERE component_appid = ?1 ORDER BY created_at_ms DESC, id DESC",
                )?;
                let rows = stmt.query_map([ns], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
            })
            .await?;
        texts.iter().map(|t| from_json(t)).collect()
    }

    async fn job(&self, ns: &AppId, id: &str) -> Result<Option<ReleaseJob>, StoreError> {
        let (ns, id) = (ns.to_string(), id.to_owned());
        let text = self
            .with_conn(move |c| {
                c.query_row("SELECT record FROM release_jobs WHERE component_appid = ?1 AND id = ?2", [ns, id], |r| {
                    r.get::<_, String>(0)
                })
                .optional()
            })
            .await?;
        text.map(|t| from_json(&t)).transpose()
    }

    async fn save_job(&self, ns: &AppId, job: &ReleaseJob) -> Result<(), StoreError> {
        let (ns, id, record) = (ns.to_string(), job.id.clone(), to_json(job)?);
        self.with_conn(move |c| {
            c.execute(
                "UPDATE release_jobs SET record = ?3 WHERE component_appid = ?1 AND id = ?2",
                params![ns, id, record],
            )
            .map(drop)
        })
        .await
    }

    async fn accounts(&self, ns: &AppId, id: &str) -> Result<Vec<ReleaseAccount>, StoreError> {
        let (ns, id) = (ns.to_string(), id.to_owned());
        let texts = self
            .bulk(move |c| {
                let mut stmt = c.prepare(
                    "SELECT record FROM release_accounts WHERE component_appid = ?1 AND job_id = ?2 ORDER BY appid",
                )?;
                let rows = stmt.query_map([ns, id], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
            })
            .await?;
        texts.iter().map(|t| from_json(t)).collect()
    }

    async fn save_accounts(&self, ns: &AppId, id: &str, accounts: &[ReleaseAccount]) -> Result<(), StoreError> {
        let (ns, id) = (ns.to_string(), id.to_owned());
        let rows =
            accounts.iter().map(|a| Ok((a.appid.to_string(), to_json(a)?))).collect::<Result<Vec<_>, StoreError>>()?;
        self.with_conn(move |c| {
            let tx = c.transaction()?;
            insert_accounts(&tx, &ns, &id, &rows)?;
            tx.commit()
        })
        .await
    }

    async fn record_verdict(&self, ns: &AppId, appid: &AppId, verdict: &AuditVerdict) -> Result<(), StoreError> {
        let (ns, appid, at, record) = (ns.to_string(), appid.to_string(), verdict.at_ms, to_json(verdict)?);
        self.with_conn(move |c| {
            c.execute(
                "INSERT INTO release_verdicts (component_appid, appid, at_ms, record) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (component_appid, appid) DO UPDATE SET at_ms = excluded.at_ms, record = excluded.record
                 WHERE excluded.at_ms >= release_verdicts.at_ms",
                params![ns, appid, at, record],
            )
            .map(drop)
        })
        .await
    }

    async fn verdicts(&self, ns: &AppId, appids: &[AppId]) -> Result<Vec<(AppId, AuditVerdict)>, StoreError> {
        let (ns, wanted) = (ns.to_string(), appids.to_vec());
        let rows = self
            .with_conn(move |c| {
                let mut stmt =
                    c.prepare_cached("SELECT record FROM release_verdicts WHERE component_appid = ?1 AND appid = ?2")?;
                let mut found = Vec::new();
                for appid in wanted {
                    if let Some(text) =
                        stmt.query_row(params![ns, appid.to_string()], |r| r.get::<_, String>(0)).optional()?
                    {
                        found.push((appid, text));
                    }
                }
                Ok(found)
            })
            .await?;
        rows.into_iter().map(|(appid, text)| Ok((appid, from_json(&text)?))).collect()
    }
}

fn insert_accounts(
    tx: &rusqlite::Transaction<'_>,
    ns: &str,
    id: &str,
    rows: &[(String, String)],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO release_accounts (component_appid, job_id, appid, record) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (appid, record) in rows {
        stmt.execute(params![ns, id, appid, record])?;
    }
    Ok(())
}
