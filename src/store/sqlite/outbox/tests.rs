use super::*;
use crate::store::outbox::contract_tests;

fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("wxgate.sqlite3")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn claims_settle_and_fence() {
    let (_dir, store) = temp_store();
    contract_tests::claims_settle_and_fence(&store).await;
}

#[tokio::test]
async fn lists_redelivers_and_deletes() {
    let (_dir, store) = temp_store();
    contract_tests::lists_redelivers_and_deletes(&store).await;
}

#[tokio::test]
async fn enqueue_first_takes_each_key_once() {
    let (_dir, store) = temp_store();
    contract_tests::enqueue_first_takes_each_key_once(&store).await;
}

#[tokio::test]
async fn lanes_keep_their_order() {
    let (_dir, store) = temp_store();
    contract_tests::lanes_keep_their_order(&store).await;
}

/// A message the file refuses (a full disk, here a trigger) leaves no retry key behind:
/// WeChat's retry after the 503 is taken, not dropped as a duplicate.
#[tokio::test]
async fn a_refused_enqueue_leaves_no_retry_key() {
    let (_dir, store) = temp_store();
    let c = crate::store::contract_tests::component();
    let day = Duration::from_secs(86_400);
    store
        .with_conn(|c| {
            c.execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'full'); END;")
        })
        .await
        .unwrap();
    let m = contract_tests::message("r", 1, 1);
    assert!(store.enqueue_first(&c, &m, "msgid:7", 1, day).await.is_err(), "the store refused it");
    store.with_conn(|c| c.execute_batch("DROP TRIGGER refuse")).await.unwrap();
    let retry = OutboxMessage { id: DeliveryId::generate(), ..m };
    assert!(store.enqueue_first(&c, &retry, "msgid:7", 2, day).await.unwrap(), "WeChat's retry is taken");
    assert_eq!(store.counts(&c).await.unwrap(), (1, 0));
}

#[tokio::test]
async fn dedupe_keys_expire() {
    let (_dir, store) = temp_store();
    contract_tests::dedupe_keys_expire(&store).await;
    let left: i64 =
        store.with_conn(|c| c.query_row("SELECT COUNT(*) FROM outbox_seen", [], |r| r.get(0))).await.unwrap();
    assert_eq!(left, 0, "pruned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_survive_reopening() {
    let (dir, store) = temp_store();
    let c = crate::store::contract_tests::component();
    let messages: Vec<OutboxMessage> = (0..200).map(|i| contract_tests::message("r", i, i)).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for m in messages.clone() {
        let store = store.clone();
        tasks.spawn(async move { store.enqueue(&c, &m).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    // A failing write in a batch is rolled back alone; the others commit.
    let bad = store.batched(|conn| conn.execute_batch("INSERT INTO no_such_table VALUES (1)")).await;
    assert!(bad.is_err());
    drop(store);
    let reopened = SqliteStore::open(&dir.path().join("wxgate.sqlite3")).unwrap();
    assert_eq!(reopened.counts(&c).await.unwrap(), (200, 0));
    let claimed = reopened.claim(&c, "r", 1000, 500, Duration::from_secs(1)).await.unwrap();
    assert_eq!(claimed.len(), 200);
    let first = claimed.iter().find(|cl| cl.message.id == messages[0].id).expect("claimed");
    assert_eq!(first.message, OutboxMessage { attempts: 1, next_attempt_at_ms: 2000, ..messages[0].clone() });
}

/// Writes that fail inside a batch are undone alone, all of each (a row written before the
/// failure too): the batch runs bare first, then again with a savepoint each.
#[test]
fn failed_writes_in_a_batch_are_undone_alone() {
    let (_dir, store) = temp_store();
    let conn = store.conn.lock().unwrap();
    conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)").unwrap();
    let (mut batch, mut replies) = (Vec::<Box<dyn Job>>::new(), Vec::new());
    for k in 0..10_i64 {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let write = move |c: &Connection| {
            c.execute("INSERT INTO t VALUES (?1, 'kept')", [k])?;
            if k % 3 == 0 {
                c.execute("INSERT INTO t VALUES (?1, NULL)", [k + 100])?;
            }
            Ok(k)
        };
        batch.push(Box::new(Write { write, result: None, reply }));
        replies.push(rx);
    }
    let committed = run_batch(&conn, &mut batch);
    assert_eq!(committed, Ok(()));
    batch.into_iter().for_each(|job| job.answer(committed.clone()));
    for (k, mut reply) in (0..).zip(replies) {
        match reply.try_recv().unwrap() {
            Ok(got) => assert!(k % 3 != 0 && got == k, "{k} answered {got}"),
            Err(e) => assert!(k % 3 == 0, "{k} refused: {e}"),
        }
    }
    let mut rows = conn.prepare("SELECT k FROM t ORDER BY k").unwrap();
    let kept: Vec<i64> = rows.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(kept, [1, 2, 4, 5, 7, 8]);
}

#[test]
fn migrates_a_version_2_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.sqlite3");
    {
        let conn = Connection::open(&path).unwrap();
        for sql in &super::super::MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute("INSERT INTO tickets VALUES ('wx0123456789abcdef', 'kept', 5, 6)", []).unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = crate::store::contract_tests::component();
        use crate::store::Store;
        assert_eq!(store.load_ticket(&c).await.unwrap().unwrap().value.expose(), "kept");
        store.enqueue(&c, &contract_tests::message("r", 1, 1)).await.unwrap();
        assert_eq!(store.counts(&c).await.unwrap(), (1, 0));
        let version: i64 = store.with_conn(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0))).await.unwrap();
        assert_eq!(version, super::super::MIGRATIONS.len() as i64);
    });
}
