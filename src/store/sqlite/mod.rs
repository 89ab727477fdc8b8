//! The embedded SQLite store: one file, WAL, `synchronous=FULL`, readable by its owner only.
//!
//! rusqlite is blocking, so each call runs on tokio's blocking pool; one connection behind a
//! mutex is enough for the gateway's write rate (a ticket every 10 minutes, a token refresh per
//! authorizer every ~2 hours) and keeps every write serialised.

mod outbox;
mod releases;

use super::{
    appid_or_empty, AuthEvent, AuthorizerInfoRecord, AuthorizerRecord, AuthorizerState, ComponentToken, Fence,
    JsTicket, OutboxStore, Store, StoreError, StoredEvent, Ticket, TicketKind,
};
use crate::{AppId, Secret};
use async_trait::async_trait;
use outbox::GroupCommit;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod file;
mod migrations;
mod run;

use migrations::MIGRATIONS;
use run::unavailable;

const INFO_COLUMNS: &str =
    "authorizer_appid, nick_name, user_name, principal_name, kind, account_status, func_info, fetched_at";

const AUTHORIZER_COLUMNS: &str = "authorizer_appid, state, refresh_token, access_token, access_expires_at, \
     authorized_at, last_refresh_at, last_error, auth_code_sha1";

/// How long any one operation may take, waiting for the connection included: under WeChat's
/// 5 s, so that a push is refused in time (and WeChat sends it again) when the disk stalls,
/// as Redis commands have their deadline. What was under way may still finish; a caller that
/// was told it failed treats it as not done, and a retry finds it done (dedupe, fences).
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(4);

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// A second, read-only connection for the outbox's scans (what is due, counts, listings):
    /// WAL lets it read while the commit thread writes, so the delivery loop and the gauges
    /// never wait on a commit's fsync, and a commit never waits on a count.
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// The outbox's writes, many per transaction (`outbox.rs`).
    group_commit: GroupCommit,
    deadline: std::time::Duration,
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: path.display().to_string(), reason };
        file::create_private(path).map_err(|e| open_err(e.to_string()))?;
        let mut conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        conn.execute_batch(
            // A burst of pushes writes the outbox's and the dedupe keys' pages over and over:
            // a cache that holds them (32 MiB at most) spares their reads, and a checkpoint every
            // 32 MiB of WAL (not 4 MiB) writes each hot page back once, not every few commits.
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -32768;
             PRAGMA temp_store = MEMORY;
             PRAGMA wal_autocheckpoint = 8192;",
        )
        .map_err(|e| open_err(e.to_string()))?;
        migrate(&mut conn).map_err(|e| match e {
            StoreError::Unavailable(reason) => open_err(reason),
            other => other,
        })?;
        let reader =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .and_then(|r| r.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -8192;").map(|()| r))
                .map_err(|e| open_err(e.to_string()))?;
        let conn = Arc::new(Mutex::new(conn));
        let group_commit = GroupCommit::start(Arc::clone(&conn)).map_err(|e| open_err(e.to_string()))?;
        let reader = Arc::new(Mutex::new(reader));
        Ok(Self { conn, reader, path: path.to_owned(), group_commit, deadline: DEADLINE })
    }

    /// The same store with another deadline, for tests.
    pub fn with_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.deadline = deadline;
        self
    }

    fn group_commit(&self) -> &GroupCommit {
        &self.group_commit
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let supported = MIGRATIONS.len() as i64;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(unavailable)?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(unavailable)?;
        tx.execute_batch(sql).map_err(unavailable)?;
        tx.pragma_update(None, "user_version", version as i64 + 1).map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}

fn row_to_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: row.get(0)?,
        event: AuthEvent {
            info_type: row.get(1)?,
            authorizer: AppId::parse(&row.get::<_, String>(2)?).ok(),
            create_time: row.get(3)?,
            payload: Secret::new(row.get::<_, String>(4)?),
            received_at: row.get(5)?,
        },
    })
}

fn row_to_authorizer(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuthorizerRecord> {
    let corrupt = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, format!("not {what}").into())
    };
    let appid: String = row.get(0)?;
    let state: String = row.get(1)?;
    let (access, last_refresh_at_ms) = AuthorizerRecord::from_columns(row.get(3)?, row.get(4)?, row.get(6)?);
    Ok(AuthorizerRecord {
        appid: AppId::parse(&appid).map_err(|_| corrupt(0, "an appid"))?,
        state: AuthorizerState::parse(&state).ok_or_else(|| corrupt(1, "a state"))?,
        refresh_token: row.get::<_, Option<String>>(2)?.map(Secret::new),
        access,
        authorized_at_ms: row.get(5)?,
        last_refresh_at_ms,
        last_error: row.get(7)?,
        auth_code_sha1: row.get(8)?,
    })
}

fn row_to_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuthorizerInfoRecord> {
    let corrupt = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, format!("not {what}").into())
    };
    let appid: String = row.get(0)?;
    let kind: String = row.get(4)?;
    Ok(AuthorizerInfoRecord {
        appid: AppId::parse(&appid).map_err(|_| corrupt(0, "an appid"))?,
        nick_name: row.get(1)?,
        user_name: row.get(2)?,
        principal_name: row.get(3)?,
        kind: super::AccountKind::parse(&kind).ok_or_else(|| corrupt(4, "a kind"))?,
        account_status: row.get(5)?,
        func_info: AuthorizerInfoRecord::parse_func_info(&row.get::<_, String>(6)?),
        fetched_at: row.get(7)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn outbox(&self) -> &dyn OutboxStore {
        self
    }

    fn releases(&self) -> &dyn crate::store::ReleaseStore {
        self
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    async fn load_ticket(&self, component: &AppId) -> Result<Option<Ticket>, StoreError> {
        let component = component.to_string();
        self.with_conn(move |c| {
            c.query_row(
                "SELECT ticket, create_time, received_at FROM tickets WHERE component_appid = ?1",
                [component],
                |r| {
                    Ok(Ticket {
                        value: Secret::new(r.get::<_, String>(0)?),
                        create_time: r.get(1)?,
                        received_at: r.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn save_ticket(&self, component: &AppId, ticket: &Ticket) -> Result<bool, StoreError> {
        let (component, ticket) = (component.to_string(), ticket.clone());
        self.with_conn(move |c| {
            let changed = c.execute(
                "INSERT INTO tickets (component_appid, ticket, create_time, received_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (component_appid) DO UPDATE SET
                     ticket = excluded.ticket,
                     create_time = excluded.create_time,
                     received_at = excluded.received_at
                 WHERE excluded.create_time >= tickets.create_time",
                params![component, ticket.value.expose(), ticket.create_time, ticket.received_at],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn record_event(&self, component: &AppId, event: &AuthEvent) -> Result<bool, StoreError> {
        let (component, e) = (component.to_string(), event.clone());
        self.with_conn(move |c| {
            let inserted = c.execute(
                "INSERT OR IGNORE INTO events
                     (component_appid, info_type, authorizer_appid, create_time, payload, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    component,
                    e.info_type,
                    appid_or_empty(e.authorizer),
                    e.create_time,
                    e.payload.expose(),
                    e.received_at
                ],
            )?;
            Ok(inserted > 0)
        })
        .await
    }

    async fn pending_events(&self, component: &AppId) -> Result<Vec<StoredEvent>, StoreError> {
        let component = component.to_string();
        self.with_conn(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, info_type, authorizer_appid, create_time, payload, received_at
                 FROM events WHERE component_appid = ?1 AND done_at IS NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([component], row_to_event)?;
            rows.collect()
        })
        .await
    }

    async fn finish_event(&self, component: &AppId, id: i64) -> Result<(), StoreError> {
        let component = component.to_string();
        self.with_conn(move |c| {
            c.execute(
                "UPDATE events SET done_at = ?3 WHERE component_appid = ?1 AND id = ?2",
                params![component, id, super::unix_now()],
            )?;
            Ok(())
        })
        .await
    }

    async fn load_component_token(&self, component: &AppId) -> Result<Option<ComponentToken>, StoreError> {
        let component = component.to_string();
        self.with_conn(move |c| {
            c.query_row(
                "SELECT token, expires_at, obtained_at FROM component_tokens WHERE component_appid = ?1",
                [component],
                |r| {
                    Ok(ComponentToken {
                        value: Secret::new(r.get::<_, String>(0)?),
                        expires_at: r.get(1)?,
                        obtained_at: r.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn save_component_token(&self, component: &AppId, token: &ComponentToken) -> Result<(), StoreError> {
        let (component, t) = (component.to_string(), token.clone());
        self.with_conn(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO component_tokens (component_appid, token, expires_at, obtained_at) VALUES (?1, ?2, ?3, ?4)",
                params![component, t.value.expose(), t.expires_at, t.obtained_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn load_authorizers(&self, component: &AppId) -> Result<Vec<AuthorizerRecord>, StoreError> {
        let component = component.to_string();
        self.bulk(move |c| {
            let sql = format!("SELECT {AUTHORIZER_COLUMNS} FROM authorizers WHERE component_appid = ?1");
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map([component], row_to_authorizer)?;
            rows.collect()
        })
        .await
    }

    async fn load_authorizer(&self, component: &AppId, appid: &AppId) -> Result<Option<AuthorizerRecord>, StoreError> {
        let (component, appid) = (component.to_string(), appid.to_string());
        self.with_conn(move |c| {
            let sql = format!(
                "SELECT {AUTHORIZER_COLUMNS} FROM authorizers WHERE component_appid = ?1 AND authorizer_appid = ?2"
            );
            c.query_row(&sql, [component, appid], row_to_authorizer).optional()
        })
        .await
    }

    /// In appid order; the cursor is the last appid of the page before.
    async fn scan_authorizers(
        &self,
        component: &AppId,
        cursor: &super::ScanCursor,
        limit: usize,
    ) -> Result<super::ScanPage, StoreError> {
        let (component, after) = (component.to_string(), cursor.0.clone());
        let limit = limit.max(1);
        let records: Vec<AuthorizerRecord> = self
            .with_conn(move |c| {
                let sql = format!(
                    "SELECT {AUTHORIZER_COLUMNS} FROM authorizers
                     WHERE component_appid = ?1 AND authorizer_appid > ?2 ORDER BY authorizer_appid LIMIT ?3"
                );
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt.query_map(params![component, after, limit as i64], row_to_authorizer)?;
                rows.collect()
            })
            .await?;
        let next = (records.len() == limit).then(|| super::ScanCursor(records[limit - 1].appid.to_string()));
        Ok(super::ScanPage { records, next })
    }

    async fn save_authorizer(&self, component: &AppId, record: &AuthorizerRecord) -> Result<(), StoreError> {
        let (component, r) = (component.to_string(), record.clone());
        self.with_conn(move |c| {
            let (access_token, access_expires_at, last_refresh_at) = r.stored_columns();
            c.execute(
                &format!("INSERT OR REPLACE INTO authorizers (component_appid, {AUTHORIZER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    component,
                    &*r.appid.as_str(),
                    r.state.as_str(),
                    r.refresh_token.as_ref().map(Secret::expose),
                    access_token,
                    access_expires_at,
                    r.authorized_at_ms,
                    last_refresh_at,
                    r.last_error,
                    r.auth_code_sha1,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_authorizer(&self, component: &AppId, appid: &AppId) -> Result<bool, StoreError> {
        let (component, appid) = (component.to_string(), appid.to_string());
        self.with_conn(move |c| {
            let n = c.execute(
                "DELETE FROM authorizers WHERE component_appid = ?1 AND authorizer_appid = ?2",
                [component, appid],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn save_authorizer_info(&self, component: &AppId, info: &AuthorizerInfoRecord) -> Result<(), StoreError> {
        let (component, i) = (component.to_string(), info.clone());
        self.with_conn(move |c| {
            c.execute(
                &format!("INSERT OR REPLACE INTO authorizer_info (component_appid, {INFO_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    component,
                    &*i.appid.as_str(),
                    i.nick_name,
                    i.user_name,
                    i.principal_name,
                    i.kind.as_str(),
                    i.account_status,
                    i.func_info_text(),
                    i.fetched_at,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn load_js_ticket(&self, c: &AppId, a: &AppId, kind: TicketKind) -> Result<Option<JsTicket>, StoreError> {
        let (c, a) = (c.to_string(), a.to_string());
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT ticket, expires_at, obtained_at FROM js_tickets
                 WHERE component_appid = ?1 AND authorizer_appid = ?2 AND kind = ?3",
                params![c, a, kind.as_str()],
                |r| {
                    Ok(JsTicket {
                        value: Secret::new(r.get::<_, String>(0)?),
                        expires_at: r.get(1)?,
                        obtained_at: r.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn load_authorizer_info(
        &self,
        component: &AppId,
        appid: &AppId,
    ) -> Result<Option<AuthorizerInfoRecord>, StoreError> {
        let (component, appid) = (component.to_string(), appid.to_string());
        self.with_conn(move |c| {
            let sql = format!(
                "SELECT {INFO_COLUMNS} FROM authorizer_info WHERE component_appid = ?1 AND authorizer_appid = ?2"
            );
            c.query_row(&sql, [component, appid], row_to_info).optional()
        })
        .await
    }

    async fn load_authorizer_infos(&self, component: &AppId) -> Result<Vec<AuthorizerInfoRecord>, StoreError> {
        let component = component.to_string();
        self.bulk(move |c| {
            let sql = format!("SELECT {INFO_COLUMNS} FROM authorizer_info WHERE component_appid = ?1");
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map([component], row_to_info)?;
            rows.collect()
        })
        .await
    }

    async fn find_user_name(&self, component: &AppId, user_name: &str) -> Result<Option<AppId>, StoreError> {
        let (component, user_name) = (component.to_string(), user_name.to_owned());
        let found: Option<String> = self
            .with_conn(move |c| {
                c.query_row(
                    "SELECT authorizer_appid FROM authorizer_info WHERE component_appid = ?1 AND user_name = ?2",
                    [component, user_name],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        Ok(found.and_then(|a| AppId::parse(&a).ok()))
    }

    async fn save_js_ticket(
        &self,
        c: &AppId,
        a: &AppId,
        kind: TicketKind,
        ticket: &JsTicket,
        _fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        let (c, a, t) = (c.to_string(), a.to_string(), ticket.clone());
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO js_tickets
                     (component_appid, authorizer_appid, kind, ticket, expires_at, obtained_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![c, a, kind.as_str(), t.value.expose(), t.expires_at, t.obtained_at],
            )?;
            Ok(true)
        })
        .await
    }
}

/// Only this instance uses it: the defaults.
impl super::Coordination for SqliteStore {}

#[cfg(test)]
mod tests;
