use super::super::contract_tests;
use super::*;
use std::os::unix::fs::PermissionsExt;

fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("sub/wxgate.sqlite3")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn newer_ticket_wins() {
    let (_dir, store) = temp_store();
    contract_tests::newer_ticket_wins(&store).await;
}

#[tokio::test]
async fn events_are_recorded_once() {
    let (_dir, store) = temp_store();
    contract_tests::events_are_recorded_once(&store).await;
}

#[tokio::test]
async fn tokens_and_authorizers_round_trip() {
    let (_dir, store) = temp_store();
    contract_tests::tokens_and_authorizers_round_trip(&store).await;
    contract_tests::js_tickets_round_trip(&store).await;
}

#[tokio::test]
async fn authorizer_info_round_trips() {
    let (_dir, store) = temp_store();
    contract_tests::authorizer_info_round_trips(&store).await;
}

#[tokio::test]
async fn survives_reopening_and_is_private() {
    let (dir, store) = temp_store();
    let c = contract_tests::component();
    store.save_ticket(&c, &contract_tests::ticket("kept", 5)).await.unwrap();
    let path = store.path().to_owned();
    drop(store);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(reopened.load_ticket(&c).await.unwrap().unwrap().value.expose(), "kept");
    drop(dir);
}

#[test]
fn refuses_a_schema_from_the_future() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.sqlite3");
    Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    assert!(matches!(SqliteStore::open(&path), Err(StoreError::SchemaTooNew { found: 99, .. })));
}
