//! The SQLite file's schema, step by step.

/// Each entry brings the schema from its index to the next version; `PRAGMA user_version`
/// records how many have run. Append, never edit: released files depend on them.
/// The steps, in order: 0 → 1 tickets and events; 1 → 2 component and authorizer tokens;
/// 2 → 3 JS-SDK tickets; 3 → 4 authorizer info; 4 → 5 the outbox and its dedupe keys; 5 → 6
/// platform events in the outbox (a message's kind, its place in its lane, no authorizer); 6 → 7
/// release jobs. A new step takes the next number after the last one here.
pub(super) const MIGRATIONS: &[&str] = &[
    // 0 → 1: the ticket and the events WeChat pushed.
    "CREATE TABLE tickets (
         component_appid TEXT PRIMARY KEY,
         ticket          TEXT NOT NULL,
         create_time     INTEGER NOT NULL,
         received_at     INTEGER NOT NULL
     );
     CREATE TABLE events (
         id               INTEGER PRIMARY KEY AUTOINCREMENT,
         component_appid  TEXT NOT NULL,
         info_type        TEXT NOT NULL,
         authorizer_appid TEXT NOT NULL,
         create_time      INTEGER NOT NULL,
         payload          TEXT NOT NULL,
         received_at      INTEGER NOT NULL,
         done_at          INTEGER,
         UNIQUE (component_appid, info_type, authorizer_appid, create_time)
     );",
    // 1 → 2: the component token and every authorizer's tokens.
    "CREATE TABLE component_tokens (
         component_appid TEXT PRIMARY KEY,
         token           TEXT NOT NULL,
         expires_at      INTEGER NOT NULL,
         obtained_at     INTEGER NOT NULL
     );
     CREATE TABLE authorizers (
         component_appid   TEXT NOT NULL,
         authorizer_appid  TEXT NOT NULL,
         state             TEXT NOT NULL,
         refresh_token     TEXT,
         access_token      TEXT,
         access_expires_at INTEGER NOT NULL,
         authorized_at     INTEGER NOT NULL,
         last_refresh_at   INTEGER NOT NULL,
         last_error        TEXT,
         auth_code_sha1    TEXT,
         PRIMARY KEY (component_appid, authorizer_appid)
     ) WITHOUT ROWID;",
    // 2 → 3: the JS-SDK tickets, so that a restart reuses them.
    "CREATE TABLE js_tickets (
         component_appid  TEXT NOT NULL,
         authorizer_appid TEXT NOT NULL,
         kind             TEXT NOT NULL,
         ticket           TEXT NOT NULL,
         expires_at       INTEGER NOT NULL,
         obtained_at      INTEGER NOT NULL,
         PRIMARY KEY (component_appid, authorizer_appid, kind)
     ) WITHOUT ROWID;",
    // 3 → 4: what api_get_authorizer_info says of each account (no token in it).
    "CREATE TABLE authorizer_info (
         component_appid  TEXT NOT NULL,
         authorizer_appid TEXT NOT NULL,
         nick_name        TEXT,
         user_name        TEXT,
         principal_name   TEXT,
         kind             TEXT NOT NULL,
         account_status   INTEGER,
         func_info        TEXT NOT NULL,
         fetched_at       INTEGER NOT NULL,
         PRIMARY KEY (component_appid, authorizer_appid)
     ) WITHOUT ROWID;
     CREATE INDEX authorizer_info_user_name ON authorizer_info (component_appid, user_name);",
    // 4 → 5: the outbox of messages for the apps' handlers, and WeChat's retry dedupe keys.
    "CREATE TABLE outbox (
         component_appid    TEXT NOT NULL,
         id                 TEXT NOT NULL,
         authorizer_appid   TEXT NOT NULL,
         route              TEXT NOT NULL,
         msg_type           TEXT NOT NULL,
         event              TEXT,
         payload            TEXT NOT NULL,
         received_at        INTEGER NOT NULL,
         attempts           INTEGER NOT NULL,
         next_attempt_at    INTEGER NOT NULL,
         state              TEXT NOT NULL,
         last_error         TEXT,
         claim              TEXT,
         PRIMARY KEY (component_appid, id)
     ) WITHOUT ROWID;
     CREATE INDEX outbox_due ON outbox (component_appid, state, route, next_attempt_at);
     CREATE INDEX outbox_next ON outbox (component_appid, state, next_attempt_at);
     CREATE TABLE outbox_seen (
         component_appid  TEXT NOT NULL,
         authorizer_appid TEXT NOT NULL,
         key              TEXT NOT NULL,
         seen_at          INTEGER NOT NULL,
         PRIMARY KEY (component_appid, authorizer_appid, key)
     ) WITHOUT ROWID;
     CREATE INDEX outbox_seen_at ON outbox_seen (component_appid, seen_at);",
    // 5 → 6: platform events share the outbox; `authorizer_appid` is '' for one about no account.
    "ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'account';
     ALTER TABLE outbox ADD COLUMN seq INTEGER;
     CREATE INDEX outbox_lane ON outbox (component_appid, route, authorizer_appid, seq) WHERE seq IS NOT NULL;",
    // 6 → 7: release jobs, their accounts, and the audit verdicts WeChat pushed.
    "CREATE TABLE release_jobs (
         component_appid TEXT NOT NULL,
         id              TEXT NOT NULL,
         created_at_ms   INTEGER NOT NULL,
         record          TEXT NOT NULL,
         PRIMARY KEY (component_appid, id)
     ) WITHOUT ROWID;
     CREATE TABLE release_accounts (
         component_appid TEXT NOT NULL,
         job_id          TEXT NOT NULL,
         appid           TEXT NOT NULL,
         record          TEXT NOT NULL,
         PRIMARY KEY (component_appid, job_id, appid)
     ) WITHOUT ROWID;
     CREATE TABLE release_verdicts (
         component_appid TEXT NOT NULL,
         appid           TEXT NOT NULL,
         at_ms           INTEGER NOT NULL,
         record          TEXT NOT NULL,
         PRIMARY KEY (component_appid, appid)
     ) WITHOUT ROWID;",
];
