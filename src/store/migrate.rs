//! Copying one store into another (SQLite → Redis and back), so that a team can change
//! backends without asking account owners to authorize again.

use super::{SharedStore, StoreError};
use crate::AppId;

/// What was copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    pub ticket: bool,
    pub component_token: bool,
    pub authorizers: usize,
    pub pending_events: usize,
}

/// Copies the ticket, the component token, every authorizer (with its refresh token) and the
/// events not yet acted on. Records already in `to` are replaced; the ticket only by a newer one.
pub async fn copy(from: &SharedStore, to: &SharedStore, component: &AppId) -> Result<Copied, StoreError> {
    let mut copied = Copied::default();
    if let Some(ticket) = from.load_ticket(component).await? {
        copied.ticket = to.save_ticket(component, &ticket).await?;
    }
    if let Some(token) = from.load_component_token(component).await? {
        to.save_component_token(component, &token).await?;
        copied.component_token = true;
    }
    for record in from.load_authorizers(component).await? {
        to.save_authorizer(component, &record).await?;
        copied.authorizers += 1;
    }
    for stored in from.pending_events(component).await? {
        if to.record_event(component, &stored.event).await? {
            copied.pending_events += 1;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::super::{contract_tests, MemoryStore, SqliteStore};
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn everything_arrives_and_a_second_copy_changes_nothing() {
        let c = contract_tests::component();
        let dir = tempfile::tempdir().unwrap();
        let from: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("from.sqlite3")).unwrap());
        from.save_ticket(&c, &contract_tests::ticket("t", 5)).await.unwrap();
        for (i, appid) in ["wx1111111111111111", "wx2222222222222222"].iter().enumerate() {
            from.save_authorizer(&c, &contract_tests::authorizer(appid, &format!("refresh-{i}"))).await.unwrap();
        }
        from.record_event(&c, &contract_tests::event("authorized", "wx3333333333333333", 7)).await.unwrap();
        let to: SharedStore = Arc::new(MemoryStore::new());
        let copied = copy(&from, &to, &c).await.unwrap();
        assert_eq!(copied, Copied { ticket: true, component_token: false, authorizers: 2, pending_events: 1 });
        assert_eq!(to.load_authorizers(&c).await.unwrap().len(), 2);
        let again = copy(&from, &to, &c).await.unwrap();
        assert_eq!(again.pending_events, 0, "events are not duplicated");
        assert_eq!(to.pending_events(&c).await.unwrap().len(), 1);
    }
}
