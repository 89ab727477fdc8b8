//! Release jobs against the sandbox over real sockets: a template taken to many mini programs
//! (commit, audit, verdict, release), within the audit quota, paused, resumed, cancelled,
//! released by hand, verdicts found by polling, and nothing done twice across kill -9.

mod common;

use common::release_jobs::*;
use common::*;
use serde_json::json;
use std::time::Duration;
use wxgate::sandbox::AuditPlan;

#[tokio::test(flavor = "multi_thread")]
async fn a_job_releases_each_approved_account_once_and_shows_each_rejection() {
    let (_setup, sandbox, gw) = fleet(12, "").await;
    for rejected in [3, 7] {
        sandbox.set_audit_plan(&appid(rejected), Some(AuditPlan { delayed: false, rejected: true }));
    }
    sandbox.set_audit_plan(&appid(5), Some(AuditPlan { delayed: true, rejected: false }));
    let id = start_job(
        &gw,
        json!({"template_id": 42, "user_version": "1.4.0", "user_desc": "spring menu",
               "ext_json": {"extAppid": "$APPID$", "ext": {"theme": "red"}},
               "authorizers": list(12), "audit": {"version_desc": "menu update", "item_list": []},
               "concurrency": 3}),
    )
    .await;
    let done = until_state(&gw, &id, "done", Duration::from_secs(60)).await;
    let stats = sandbox.stats();
    for (appid, state) in states(&done) {
        let ok = &stats.code_ok[&appid];
        let calls = &stats.code_calls[&appid];
        assert_eq!((calls.commit, calls.submit), (1, 1), "{appid}: one commit, one submit");
        if appid == self::appid(3).to_string() || appid == self::appid(7).to_string() {
            assert_eq!(state, "rejected", "{appid}");
            assert_eq!(calls.release, 0, "{appid}: a rejected account is not released");
        } else {
            assert_eq!((state.as_str(), ok.release), ("released", 1), "{appid}: released once");
        }
    }
    let rejected = done["accounts"].as_array().unwrap().iter().find(|a| a["state"] == "rejected").unwrap();
    assert!(rejected["reason"].as_str().is_some_and(|r| !r.is_empty()), "the reason is shown: {rejected}");
    assert!(stats.max_in_audit_or_committed <= 3, "concurrency held: {}", stats.max_in_audit_or_committed);
    assert_eq!(done["counts"]["released"], 10);
    let code = sandbox.code_state(&appid(1)).unwrap();
    assert_eq!(
        code.committed.unwrap().ext_json.as_deref(),
        Some(r#"{"ext":{"theme":"red"},"extAppid":"wx0000000000000001"}"#)
    );
    let metrics = gw.metrics().await;
    assert!(metrics.contains("wxgate_release_steps_total{result=\"ok\",step=\"release\"} 10"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_audit_quota_and_85085_wait_and_the_job_goes_on_once_quota_returns() {
    let (_setup, sandbox, gw) = fleet(4, "").await;
    sandbox.set_audit_quota(0);
    let id = start_job(&gw, json!({"template_id": 42, "user_version": "2.0", "authorizers": list(2)})).await;
    eventually(Duration::from_secs(10), "both accounts wait for quota", || async {
        states(&job(&gw, &id).await).iter().all(|(_, s)| s == "waiting_quota")
    })
    .await;
    sandbox.set_audit_quota(10);
    until_state(&gw, &id, "done", Duration::from_secs(30)).await;
    // WeChat's "too many submissions in 7 days": the same wait, never a failure.
    sandbox.set_submits_per_week(Some(2));
    let id =
        start_job(&gw, json!({"template_id": 42, "user_version": "2.1", "authorizers": [appid(3), appid(4)]})).await;
    eventually(Duration::from_secs(10), "85085 puts the accounts to wait", || async {
        let j = job(&gw, &id).await;
        j["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["state"] == "waiting_quota" && a["errmsg"].as_str().unwrap_or("").contains("85085"))
    })
    .await;
    sandbox.set_submits_per_week(None);
    let done = until_state(&gw, &id, "done", Duration::from_secs(30)).await;
    assert_eq!(done["counts"]["released"], 2, "{done}");
    assert_eq!(done["counts"]["failed"], 0, "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_cancel_manual_release_and_a_bad_body() {
    let (_setup, sandbox, gw) = fleet(4, "").await;
    let r = gw
        .http
        .post(gw.admin_url("/admin/releases"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"template_id": 42, "authorizers": "*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("user_version"), "the field is named");

    // Manual: approved accounts wait for /release.
    let id = start_job(
        &gw,
        json!({"template_id": 42, "user_version": "3.0", "authorizers": [appid(1), appid(2)], "release": "manual"}),
    )
    .await;
    eventually(Duration::from_secs(20), "both approved", || async {
        states(&job(&gw, &id).await).iter().all(|(_, s)| s == "approved")
    })
    .await;
    assert_eq!(sandbox.stats().code_calls[&appid(1).to_string()].release, 0, "nothing released before /release");
    act(&gw, &id, "release").await;
    let done = until_state(&gw, &id, "done", Duration::from_secs(20)).await;
    assert_eq!(done["counts"]["released"], 2);

    // Paused: nothing new starts; resumed: it goes on; cancelled: no further call.
    let id =
        start_job(&gw, json!({"template_id": 42, "user_version": "3.1", "authorizers": "*", "concurrency": 1})).await;
    let paused = act(&gw, &id, "pause").await;
    assert_eq!(paused["state"], "paused");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = job(&gw, &id).await;
    let started = states(&during).iter().filter(|(_, s)| s != "pending" && s != "skipped").count();
    assert!(started <= 1, "at most the account begun before the pause: {during}");
    act(&gw, &id, "resume").await;
    eventually(Duration::from_secs(20), "a second account released after the resume", || async {
        job(&gw, &id).await["counts"]["released"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    let cancelled = act(&gw, &id, "cancel").await;
    assert_eq!(cancelled["state"], "cancelled");
    let over = until_state(&gw, &id, "cancelled", Duration::from_secs(5)).await;
    eventually(Duration::from_secs(5), "every account not over is cancelled", || async {
        states(&job(&gw, &id).await).iter().all(|(_, s)| ["released", "cancelled", "skipped"].contains(&s.as_str()))
    })
    .await;
    let calls =
        |s: &wxgate::sandbox::Stats| s.code_calls.values().map(|c| c.commit + c.submit + c.release).sum::<u64>();
    let before = calls(&sandbox.stats());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(calls(&sandbox.stats()), before, "no call after the cancel: {over}");
    assert_eq!(act(&gw, &id, "resume").await["errcode"], -20409, "a cancelled job cannot be resumed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verdict_wechat_never_pushed_is_found_by_polling() {
    let (_setup, sandbox, gw) = fleet(1, "").await;
    sandbox.set_audit_push(false);
    let id = start_job(&gw, json!({"template_id": 42, "user_version": "4.0", "authorizers": [appid(1)]})).await;
    let done = until_state(&gw, &id, "done", Duration::from_secs(20)).await;
    assert_eq!(done["counts"]["released"], 1, "{done}");
    assert!(sandbox.stats().code_calls[&appid(1).to_string()].status >= 1, "get_latest_auditstatus asked");
}
