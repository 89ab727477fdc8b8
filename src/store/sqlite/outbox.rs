//! The SQLite outbox, and the group commit that keeps it fast: every outbox write goes to one
//! thread that runs whatever has queued up meanwhile in a single transaction, so that many
//! enqueues, claims and settles share one fsync (`synchronous=FULL`) instead of paying one each.
//! Each caller is answered only once its transaction has committed.

use super::{unavailable, SqliteStore};
use crate::store::outbox::{
    Claim, DeliveryId, MessageKind, OutboxEntry, OutboxMessage, OutboxState, OutboxStore, Outcome,
};
use crate::store::StoreError;
use crate::{AppId, Secret};
use async_trait::async_trait;
use rusqlite::{params, Connection};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Writes in one transaction at most: bounds how long the connection is held from the others.
const MAX_BATCH: usize = 512;
/// How long a busy commit thread waits for more writes to join a commit.
const LINGER: Duration = Duration::from_millis(1);

/// One write in a group commit: run inside the batch's transaction (again, should another job
/// of the batch fail), then answered once the transaction's fate is known.
trait Job: Send {
    /// Runs the write; whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Not run: its caller is answered `e`.
    fn fail(&mut self, e: rusqlite::Error);
    fn answer(self: Box<Self>, committed: Result<(), String>);
}

/// A caller's write and where its answer goes.
struct Write<T, F> {
    write: F,
    result: Option<rusqlite::Result<T>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Write<T, F>
where
    T: Send,
    F: Fn(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.write)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, e: rusqlite::Error) {
        self.result = Some(Err(e));
    }

    fn answer(self: Box<Self>, committed: Result<(), String>) {
        let result = self.result.unwrap_or_else(|| Err(rusqlite::Error::InvalidQuery));
        let answer = committed.map_err(StoreError::Unavailable).and_then(|()| result.map_err(unavailable));
        let _ = self.reply.send(answer);
    }
}

/// The sending side of the commit thread; the thread ends when the last store clone is dropped.
#[derive(Clone)]
pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl GroupCommit {
    pub(super) fn start(conn: Arc<Mutex<Connection>>) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new().name("wxgate-sqlite-commit".into()).spawn(move || commit_loop(&conn, &queue))?;
        Ok(Self { jobs })
    }
}

fn commit_loop(conn: &Mutex<Connection>, queue: &mpsc::Receiver<Box<dyn Job>>) {
    let mut last_commit = Instant::now() - LINGER;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        // Busy (the last commit just ended): wait a moment for more, so that a burst's writes
        // share a commit. Each commit writes every page it touched to the WAL whole, so many
        // small ones cost the burst far more than the wait.
        let linger_until = (last_commit.elapsed() < LINGER).then(|| Instant::now() + LINGER);
        while batch.len() < MAX_BATCH {
            let next = match linger_until {
                Some(until) => queue.recv_timeout(until.saturating_duration_since(Instant::now())).ok(),
                None => queue.try_recv().ok(),
            };
            match next {
                Some(job) => batch.push(job),
                None => break,
            }
        }
        let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        let committed = run_batch(&conn, &mut batch);
        drop(conn);
        last_commit = Instant::now();
        for job in batch {
            job.answer(committed.clone());
        }
    }
}

/// Runs the batch in one transaction. The jobs run bare first (a savepoint each journals every
/// page a job touches once more); should one fail, the batch is rolled back and run again with a
/// savepoint per job, so that only the one that failed is undone.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), String> {
    // Should BEGIN fail, each savepoint is a transaction by itself and commits on release.
    if conn.execute_batch("BEGIN IMMEDIATE").is_err() {
        batch.iter_mut().for_each(|job| in_savepoint(conn, job.as_mut()));
        return Ok(());
    }
    if !batch.iter_mut().all(|job| job.run(conn)) {
        let again = conn.execute_batch("ROLLBACK; BEGIN IMMEDIATE");
        if let Err(e) = again {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.to_string());
        }
        batch.iter_mut().for_each(|job| in_savepoint(conn, job.as_mut()));
    }
    conn.execute_batch("COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        e.to_string()
    })
}

fn in_savepoint(conn: &Connection, job: &mut dyn Job) {
    if let Err(e) = conn.execute_batch("SAVEPOINT job") {
        // Without its savepoint the job cannot be undone alone: it is not run, and says why.
        job.fail(e);
        return;
    }
    if job.run(conn) {
        let _ = conn.execute_batch("RELEASE job");
    } else {
        let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
    }
}

impl SqliteStore {
    /// Runs `write` in the next group commit; answers once it is committed. `write` may run
    /// twice (see [`run_batch`]): it writes only through `conn`.
    async fn batched<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn Job> = Box::new(Write { write, result: None, reply });
        let stopped = || StoreError::Unavailable("the store's commit thread stopped".into());
        self.group_commit().jobs.send(job).map_err(|_| stopped())?;
        self.in_time(async { rx.await.map_err(|_| stopped())? }).await
    }
}

const MESSAGE_COLUMNS: &str = "id, authorizer_appid, route, msg_type, event, received_at, attempts, next_attempt_at, \
     state, last_error, kind, seq, payload";

fn corrupt(i: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, format!("not {what}").into())
}

/// A row of `MESSAGE_COLUMNS` without the payload (all but the last column).
fn row_to_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let id: String = row.get(0)?;
    let authorizer: String = row.get(1)?;
    let state: String = row.get(8)?;
    let kind: String = row.get(10)?;
    Ok(OutboxEntry {
        id: DeliveryId::parse(&id).map_err(|_| corrupt(0, "a delivery id"))?,
        authorizer: match authorizer.as_str() {
            "" => None,
            a => Some(AppId::parse(a).map_err(|_| corrupt(1, "an appid"))?),
        },
        kind: MessageKind::parse(&kind).ok_or_else(|| corrupt(10, "a message kind"))?,
        route: row.get(2)?,
        msg_type: row.get(3)?,
        event: row.get(4)?,
        received_at_ms: row.get(5)?,
        attempts: row.get(6)?,
        next_attempt_at_ms: row.get(7)?,
        state: OutboxState::parse(&state).ok_or_else(|| corrupt(8, "a state"))?,
        last_error: row.get(9)?,
    })
}

fn row_to_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxMessage> {
    let e = row_to_entry(row)?;
    Ok(OutboxMessage {
        id: e.id,
        authorizer: e.authorizer,
        kind: e.kind,
        seq: row.get(11)?,
        route: e.route,
        msg_type: e.msg_type,
        event: e.event,
        payload: Secret::new(row.get::<_, String>(12)?),
        received_at_ms: e.received_at_ms,
        attempts: e.attempts,
        next_attempt_at_ms: e.next_attempt_at_ms,
        state: e.state,
        last_error: e.last_error,
    })
}

fn insert_message(conn: &Connection, c: &str, m: &OutboxMessage) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO outbox (component_appid, id, authorizer_appid, route, msg_type, event,
             payload, received_at, attempts, next_attempt_at, state, last_error, kind, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        c,
        m.id.as_str(),
        m.authorizer.map(|a| a.to_string()).unwrap_or_default(),
        m.route,
        m.msg_type,
        m.event,
        m.payload.expose(),
        m.received_at_ms,
        m.attempts,
        m.next_attempt_at_ms,
        m.state.as_str(),
        m.last_error,
        m.kind.as_str(),
        m.seq,
    ])
    .map(drop)
}

/// Records a dedupe key unless it was recorded after `stale_before`; whether it is new.
fn record_seen(
    conn: &Connection,
    c: &str,
    a: &str,
    key: &str,
    now_ms: i64,
    stale_before: i64,
) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "INSERT INTO outbox_seen (component_appid, authorizer_appid, key, seen_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO UPDATE SET seen_at = excluded.seen_at WHERE outbox_seen.seen_at <= ?5",
        )?
        .execute(params![c, a, key, now_ms, stale_before])?;
    Ok(changed > 0)
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn enqueue(&self, component: &AppId, message: &OutboxMessage) -> Result<(), StoreError> {
        let (c, m) = (component.to_string(), message.clone());
        self.batched(move |conn| insert_message(conn, &c, &m)).await
    }

    async fn first_time(
        &self,
        component: &AppId,
        authorizer: &AppId,
        key: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (c, a, key) = (component.to_string(), authorizer.to_string(), key.to_owned());
        let stale_before = now_ms - ttl.as_millis() as i64;
        self.batched(move |conn| record_seen(conn, &c, &a, &key, now_ms, stale_before)).await
    }

    async fn enqueue_first(
        &self,
        component: &AppId,
        message: &OutboxMessage,
        key: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (c, m, key) = (component.to_string(), message.clone(), key.to_owned());
        let scope = message.dedupe_scope(component).to_string();
        let stale_before = now_ms - ttl.as_millis() as i64;
        // One job is one savepoint: a failed insert of the message rolls the key back too.
        self.batched(move |conn| {
            if !record_seen(conn, &c, &scope, &key, now_ms, stale_before)? {
                return Ok(false);
            }
            insert_message(conn, &c, &m)?;
            Ok(true)
        })
        .await
    }

    async fn forget(&self, component: &AppId, authorizer: &AppId, key: &str) -> Result<(), StoreError> {
        let (c, a, key) = (component.to_string(), authorizer.to_string(), key.to_owned());
        self.batched(move |conn| {
            conn.prepare_cached(
                "DELETE FROM outbox_seen WHERE component_appid = ?1 AND authorizer_appid = ?2 AND key = ?3",
            )?
            .execute(params![c, a, key])
            .map(drop)
        })
        .await
    }

    async fn due_routes(&self, component: &AppId, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let c = component.to_string();
        self.read(move |conn| {
            // A skip scan of the (state, route, next) index: one seek per route, not per message,
            // however many wait on a handler that is down.
            let mut stmt = conn.prepare_cached(
                "WITH RECURSIVE r(route) AS (
                     SELECT MIN(route) FROM outbox WHERE component_appid = ?1 AND state = 'pending'
                     UNION ALL
                     SELECT (SELECT MIN(route) FROM outbox
                             WHERE component_appid = ?1 AND state = 'pending' AND route > r.route)
                     FROM r WHERE r.route IS NOT NULL
                 )
                 SELECT route FROM r WHERE route IS NOT NULL AND EXISTS (
                     SELECT 1 FROM outbox WHERE component_appid = ?1 AND state = 'pending'
                         AND route = r.route AND next_attempt_at <= ?2)",
            )?;
            let rows = stmt.query_map(params![c, now_ms], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn next_due(&self, component: &AppId) -> Result<Option<i64>, StoreError> {
        let c = component.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE component_appid = ?1 AND state = 'pending'",
            )?
            .query_row([c], |r| r.get(0))
        })
        .await
    }

    async fn claim(
        &self,
        component: &AppId,
        route: &str,
        now_ms: i64,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let (c, route) = (component.to_string(), route.to_owned());
        let token = hex::encode(rand::random::<[u8; 12]>());
        let until = now_ms + lease.as_millis() as i64;
        let claim = token.clone();
        let messages = self
            .batched(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?5, claim = ?6
                     WHERE component_appid = ?1 AND id IN (
                         SELECT o.id FROM outbox o WHERE o.component_appid = ?1 AND o.state = 'pending'
                             AND o.route = ?2 AND o.next_attempt_at <= ?3
                             AND (o.seq IS NULL OR NOT EXISTS (
                                 SELECT 1 FROM outbox p WHERE p.component_appid = ?1 AND p.route = o.route
                                     AND p.authorizer_appid = o.authorizer_appid AND p.seq < o.seq))
                             ORDER BY o.next_attempt_at LIMIT ?4)
                     RETURNING {MESSAGE_COLUMNS}"
                ))?;
                let rows = stmt.query_map(params![c, route, now_ms, limit as i64, until, claim], row_to_message)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(messages.into_iter().map(|message| Claim { message, token: token.clone() }).collect())
    }

    async fn settle(
        &self,
        component: &AppId,
        id: &DeliveryId,
        token: &str,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        let (c, id, token, outcome) = (component.to_string(), id.to_string(), token.to_owned(), outcome.clone());
        self.batched(move |conn| {
            let changed = match &outcome {
                Outcome::Delivered => conn
                    .prepare_cached("DELETE FROM outbox WHERE component_appid = ?1 AND id = ?2 AND claim = ?3")?
                    .execute(params![c, id, token])?,
                Outcome::Retry { at_ms, error } => conn
                    .prepare_cached(
                        "UPDATE outbox SET next_attempt_at = ?4, last_error = ?5, claim = NULL
                         WHERE component_appid = ?1 AND id = ?2 AND claim = ?3",
                    )?
                    .execute(params![c, id, token, at_ms, error])?,
                Outcome::Failed { error } => conn
                    .prepare_cached(
                        "UPDATE outbox SET state = 'failed', last_error = ?4, claim = NULL
                         WHERE component_appid = ?1 AND id = ?2 AND claim = ?3",
                    )?
                    .execute(params![c, id, token, error])?,
            };
            Ok(changed > 0)
        })
        .await
    }

    async fn release_claims(&self, component: &AppId, now_ms: i64) -> Result<u64, StoreError> {
        let c = component.to_string();
        self.batched(move |conn| {
            let n = conn.execute(
                "UPDATE outbox SET claim = NULL, next_attempt_at = ?2 WHERE component_appid = ?1 AND claim IS NOT NULL",
                params![c, now_ms],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn list(
        &self,
        component: &AppId,
        state: Option<OutboxState>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<OutboxEntry>), StoreError> {
        let (c, state) = (component.to_string(), state.map(OutboxState::as_str));
        self.read(move |conn| {
            let total: i64 = conn.query_row(
                "SELECT COUNT(*) FROM outbox WHERE component_appid = ?1 AND (?2 IS NULL OR state = ?2)",
                params![c, state],
                |r| r.get(0),
            )?;
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE component_appid = ?1 AND (?2 IS NULL OR state = ?2)
                 ORDER BY received_at, id LIMIT ?3 OFFSET ?4"
            ))?;
            let rows = stmt.query_map(params![c, state, limit as i64, offset as i64], row_to_entry)?;
            Ok((total as u64, rows.collect::<rusqlite::Result<Vec<_>>>()?))
        })
        .await
    }

    async fn redeliver(&self, component: &AppId, id: &DeliveryId, now_ms: i64) -> Result<bool, StoreError> {
        let (c, id) = (component.to_string(), id.to_string());
        self.batched(move |conn| {
            let n = conn.execute(
                "UPDATE outbox SET state = 'pending', next_attempt_at = ?3, claim = NULL
                 WHERE component_appid = ?1 AND id = ?2",
                params![c, id, now_ms],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete(&self, component: &AppId, id: &DeliveryId) -> Result<bool, StoreError> {
        let (c, id) = (component.to_string(), id.to_string());
        self.batched(move |conn| {
            let n = conn.execute("DELETE FROM outbox WHERE component_appid = ?1 AND id = ?2", params![c, id])?;
            Ok(n > 0)
        })
        .await
    }

    async fn counts(&self, component: &AppId) -> Result<(u64, u64), StoreError> {
        let c = component.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'failed'), 0)
                 FROM outbox WHERE component_appid = ?1",
            )?
            .query_row([c], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))
        })
        .await
    }

    async fn prune_seen(&self, component: &AppId, before_ms: i64) -> Result<u64, StoreError> {
        let c = component.to_string();
        self.batched(move |conn| {
            let n = conn.execute(
                "DELETE FROM outbox_seen WHERE component_appid = ?1 AND seen_at < ?2",
                params![c, before_ms],
            )?;
            Ok(n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
