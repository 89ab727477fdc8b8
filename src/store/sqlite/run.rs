//! How an operation runs: on tokio's blocking pool, on the one connection, within the store's
//! deadline ([`super::DEADLINE`]) unless it reads a whole table.

use super::SqliteStore;
use crate::store::StoreError;
use rusqlite::Connection;
use std::sync::Arc;

impl SqliteStore {
    /// `operation` within the deadline.
    pub(super) async fn in_time<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.deadline, operation).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!("sqlite: no answer within {:?}", self.deadline))),
        }
    }

    /// Runs `f` on the connection in tokio's blocking pool, within the deadline.
    pub(super) async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.in_time(self.bulk(f)).await
    }

    /// [`Self::with_conn`] on the read-only connection: a read that never waits on a commit.
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = Arc::clone(&self.reader);
        let task = tokio::task::spawn_blocking(move || {
            let reader = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&reader).map_err(unavailable)
        });
        self.in_time(async { task.await.map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))? })
            .await
    }

    /// [`Self::with_conn`] without the deadline, for the reads of a whole table (every
    /// authorizer, every info: `wxgate migrate`, start-up), which take as long as the fleet is
    /// large and are on no push's path.
    pub(super) async fn bulk<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let task = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn).map_err(unavailable)
        });
        task.await.map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

pub(super) fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}
