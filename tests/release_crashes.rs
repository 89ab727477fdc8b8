//! Release jobs through crashes: kill -9 at random points of a job leaves no step done twice,
//! and two instances on one Redis, one of them killed, finish a job once.

mod common;

use common::release_jobs::*;
use common::*;
use serde_json::json;
use std::time::Duration;

/// No account was committed, submitted or released twice, and the job ended with every
/// account released.
fn each_step_once(sandbox: &wxgate::sandbox::Sandbox, accounts: u32) {
    let stats = sandbox.stats();
    for i in 1..=accounts {
        let a = appid(i).to_string();
        let calls = &stats.code_calls[&a];
        assert_eq!((calls.commit, calls.submit, calls.release), (1, 1, 1), "{a}: {calls:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_of_a_job_repeats_no_step() {
    let accounts = 24;
    let (setup, sandbox, mut gw) = fleet(accounts, "").await;
    let id = start_job(
        &gw,
        json!({"template_id": 42, "user_version": "5.0", "authorizers": list(accounts), "concurrency": 4}),
    )
    .await;
    let mut mid_job = 0;
    for round in 0..6 {
        let pause = 100 + rand::random::<u64>() % 250;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        mid_job += u32::from(job(&gw, &id).await["state"] == "running");
        gw.kill();
        gw = setup.start().await;
        let seen = job(&gw, &id).await;
        assert!(seen["id"] == id.as_str(), "round {round}: the job survives the crash: {seen}");
    }
    assert!(mid_job >= 3, "most kills land while the job runs ({mid_job} of 6)");
    let done = until_state(&gw, &id, "done", Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["released"], accounts, "{done}");
    each_step_once(&sandbox, accounts);
}

/// A crash after a submit was recorded as begun and before it left: WeChat has no audit of the
/// account at all (85058), so the submit goes, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_submit_recorded_but_never_sent_is_sent_once_after_a_crash() {
    use wxgate::store::releases::{AccountState, Step};
    use wxgate::store::{SqliteStore, Store};
    let accounts = 2;
    let (setup, sandbox, mut gw) = fleet(accounts, "").await;
    sandbox.set_audit_quota(0);
    let id = start_job(&gw, json!({"template_id": 42, "user_version": "7.0", "authorizers": list(accounts)})).await;
    eventually(Duration::from_secs(10), "both accounts committed and waiting for quota", || async {
        states(&job(&gw, &id).await).iter().all(|(_, s)| s == "waiting_quota")
    })
    .await;
    gw.kill();
    let ns = wxgate::AppId::parse(COMPONENT_APPID).unwrap();
    let store = SqliteStore::open(&setup.db_path()).unwrap();
    let mut held = store.releases().accounts(&ns, &id).await.unwrap();
    for a in &mut held {
        (a.state, a.in_flight) = (AccountState::Committed, Some(Step::Submit));
    }
    store.releases().save_accounts(&ns, &id, &held).await.unwrap();
    drop(store);
    sandbox.set_audit_quota(10);
    let gw = setup.start().await;
    let done = until_state(&gw, &id, "done", Duration::from_secs(30)).await;
    assert_eq!(done["counts"]["released"], accounts, "{done}");
    each_step_once(&sandbox, accounts);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_redis_one_killed_finish_a_job_once() {
    const URL: &str = "redis://127.0.0.1:6379/0";
    let prefix = format!("wxgate-releases-{}:", hex::encode(rand::random::<[u8; 6]>()));
    let mut first = Setup::new();
    first.store_toml = Some(format!("[store]\nbackend = \"redis\"\nredis_url = \"{URL}\"\nkey_prefix = \"{prefix}\""));
    first.extra_toml = "\n[releases]\naudit_poll_secs = 5\n".into();
    let accounts = 10;
    let (first, sandbox, mut one) = fleet_on(first, accounts).await;
    let second = first.sibling();
    let two = second.start().await;
    let id = start_job(
        &one,
        json!({"template_id": 42, "user_version": "6.0", "authorizers": list(accounts), "concurrency": 3}),
    )
    .await;
    eventually(Duration::from_secs(20), "the job under way", || async {
        job(&two, &id).await["counts"]["released"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    one.kill();
    let done = until_state(&two, &id, "done", Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["released"], accounts, "{done}");
    each_step_once(&sandbox, accounts);
}
