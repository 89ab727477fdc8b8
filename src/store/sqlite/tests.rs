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
async fn release_jobs_round_trip() {
    let (_dir, store) = temp_store();
    contract_tests::release_jobs_round_trip(&store).await;
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

/// Every operation has a deadline, as Redis commands do: a store whose file another process
/// holds locked (or whose disk stalls) answers an error in time rather than holding a push past
/// WeChat's window; once the lock is gone it answers again.
#[tokio::test(flavor = "multi_thread")]
async fn an_operation_that_cannot_finish_in_time_fails_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxgate.sqlite3");
    let store = SqliteStore::open(&path).unwrap().with_deadline(std::time::Duration::from_millis(300));
    let c = contract_tests::component();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = std::time::Instant::now();
    let refused = store.save_ticket(&c, &contract_tests::ticket("t", 5)).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(ref why)) if why.contains("within")), "{refused:?}");
    let event = contract_tests::event("authorized", "wx1111111111111111", 5);
    let outbox = store.record_event(&c, &event).await;
    assert!(outbox.is_err(), "{outbox:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    other.execute_batch("ROLLBACK").unwrap();
    // The operations refused may still be waiting for the lock; they finish, and then the store
    // answers again.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.save_ticket(&c, &contract_tests::ticket("t", 6)).await.is_err() {
        assert!(std::time::Instant::now() < until, "the store answers again once the lock is gone");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
