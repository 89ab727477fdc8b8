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
