//! WeChat's checks on the code calls: tokens, templates, ext_json, faults, and what the sandbox
//! counts for tests that assert on a release job.

use super::*;
use crate::sandbox::Faults;

#[tokio::test]
async fn templates_are_listed_for_the_component_only() {
    bounded(async {
        let wx = Wx::start(|c| c).await;
        let (_, token) = wx.mini_program(1);
        let list = wx.get("/wxa/gettemplatelist", &wx.component_token()).await;
        let ids: Vec<i64> =
            list["template_list"].as_array().unwrap().iter().map(|t| t["template_id"].as_i64().unwrap()).collect();
        assert_eq!((errcode(&list), ids), (0, vec![1, 42]));
        assert_eq!(list["template_list"][0]["template_type"], 0);
        assert_eq!(errcode(&wx.get("/wxa/gettemplatelist", &token).await), 40001);
        assert_eq!(errcode(&wx.commit(&wx.component_token(), "1.0").await), 40001);
        assert_eq!(errcode(&wx.commit("88_nonsense", "1.0").await), 40001);
        let missing = wx.http.post(wx.url("/wxa/commit")).body("{}").send().await.unwrap();
        assert_eq!(errcode(&missing.json().await.unwrap()), 41001);
        assert_eq!(wx.sb.stats().template_list_calls, 2);
    })
    .await;
}

#[tokio::test]
async fn only_authorized_mini_programs_manage_code() {
    bounded(async {
        let wx = Wx::start(|c| c).await;
        let official = AppId::parse("wx3300000000000001").unwrap();
        let token = wx.authorize(&official);
        assert_eq!(errcode(&wx.commit(&token, "1.0").await), 61007, "an official account");
        assert_eq!(errcode(&wx.get("/wxa/queryquota", &token).await), 61007);
        let (appid, token) = wx.mini_program(1);
        assert!(wx.sb.unauthorize_silently(&appid));
        assert_eq!(errcode(&wx.commit(&token, "1.0").await), 40001, "revoked with its tokens");
    })
    .await;
}

#[tokio::test]
async fn commit_checks_the_template_and_ext_json() {
    bounded(async {
        let wx = Wx::start(|c| c).await;
        let (appid, token) = wx.mini_program(1);
        let commit = |template_id: Value, ext_json: Value| {
            json!({ "template_id": template_id, "ext_json": ext_json, "user_version": "1.0", "user_desc": "d" })
        };
        let cases = [
            (commit(json!(7), json!("{}")), 85014),
            (commit(Value::Null, json!("{}")), 85014),
            (commit(json!("42"), json!("{}")), 47001),
            (commit(json!(42), json!({ "ext": {} })), 85013),
            (commit(json!(42), json!("[1]")), 85013),
            (commit(json!(42), json!("{\"extAppid\":\"wx9999999999999999\"}")), 85013),
            (json!({ "template_id": 42, "ext_json": "{}" }), 40097),
        ];
        for (body, want) in cases {
            assert_eq!(errcode(&wx.post("/wxa/commit", &token, body.clone()).await), want, "{body}");
        }
        assert_eq!(errcode(&wx.post_raw("/wxa/commit", &token, "").await), 44002);
        assert_eq!(wx.sb.code_state(&appid), None, "nothing was committed");
        let ext = format!("{{\"extAppid\":\"{appid}\",\"ext\":{{\"theme\":\"red\"}}}}");
        assert_eq!(errcode(&wx.post("/wxa/commit", &token, commit(json!(42), json!(ext))).await), 0);
        let info = wx.post("/wxa/getversioninfo", &token, json!({})).await;
        assert_eq!(info["exp_info"]["exp_desc"], "d");
        assert_eq!(wx.sb.code_state(&appid).unwrap().committed.unwrap().ext_json, Some(ext));
        let no_ext = json!({ "template_id": 1, "user_version": "1.1" });
        assert_eq!(errcode(&wx.post("/wxa/commit", &token, no_ext).await), 0, "a template may need no ext_json");
    })
    .await;
}

#[tokio::test]
async fn submit_checks_its_items_and_the_profile() {
    bounded(async {
        let wx = Wx::start(|c| c).await;
        let (appid, token) = wx.mini_program(1);
        wx.commit(&token, "1.0").await;
        let items: Vec<Value> = (0..6).map(|i| json!({ "address": format!("pages/{i}") })).collect();
        assert_eq!(errcode(&wx.post("/wxa/submit_audit", &token, json!({ "item_list": items })).await), 85023);
        assert_eq!(errcode(&wx.post("/wxa/submit_audit", &token, json!({ "item_list": "x" })).await), 47001);
        let profile = json!({ "appid": appid.to_string(), "complete": false });
        wx.control("/sandbox/profile", profile).await;
        assert_eq!(errcode(&wx.submit(&token).await), 86002);
        wx.sb.set_profile_complete(&appid, true);
        assert_eq!(errcode(&wx.post("/wxa/submit_audit", &token, json!({})).await), 0);
    })
    .await;
}

#[tokio::test]
async fn faults_apply_and_every_call_is_counted() {
    bounded(async {
        let wx = Wx::start(|c| c).await;
        let (appid, token) = wx.mini_program(1);
        wx.sb.set_faults(Faults { errcode: Some(-1), path_contains: Some("/wxa/commit".into()), ..Faults::default() });
        assert_eq!(errcode(&wx.commit(&token, "1.0").await), -1);
        assert_eq!(wx.sb.code_state(&appid), None);
        wx.sb.set_faults(Faults::default());
        assert_eq!(errcode(&wx.commit(&token, "1.0").await), 0);
        let stats = wx.sb.stats();
        let label = appid.to_string();
        assert_eq!((stats.code_calls[&label].commit, stats.code_ok[&label].commit), (2, 1));
        let seen = wx.sb.requests();
        assert!(seen.iter().filter(|r| r.path == "/wxa/commit").all(|r| r.authorizer.as_deref() == Some(&*label)));
    })
    .await;
}

#[tokio::test]
async fn accounts_in_flight_are_counted_at_their_peak() {
    bounded(async {
        let mut wx = Wx::start(|c| c).await;
        let accounts: Vec<(AppId, String)> = (1..=3).map(|n| wx.mini_program(n)).collect();
        for (_, token) in &accounts {
            wx.commit(token, "1.0").await;
        }
        for (_, token) in &accounts {
            assert_eq!(errcode(&wx.submit(token).await), 0);
        }
        for _ in &accounts {
            wx.next_event().await;
        }
        let (_, token) = wx.mini_program(4);
        wx.commit(&token, "1.0").await;
        let stats = wx.sb.stats();
        assert_eq!((stats.max_in_audit_or_committed, stats.audit_quota_rest), (3, 97));
        for (appid, token) in &accounts {
            assert_eq!(errcode(&wx.post_raw("/wxa/release", token, "{}").await), 0);
            assert_eq!(wx.sb.stats().code_ok[&appid.to_string()].release, 1);
        }
    })
    .await;
}

#[tokio::test]
async fn control_routes_set_plans_and_show_code() {
    bounded(async {
        let wx = Wx::start(|c| c).await;
        let (appid, token) = wx.mini_program(1);
        let code = wx.http.get(wx.url(&format!("/sandbox/code?appid={appid}"))).send().await.unwrap();
        assert_eq!(code.status(), 404);
        let plan = wx.control("/sandbox/audit-plan", json!({ "appid": appid.to_string(), "rejected": true })).await;
        assert_eq!(plan, json!({ "delayed": false, "rejected": true }));
        wx.commit(&token, "3.0").await;
        wx.submit(&token).await;
        wx.poll_until(&token, 1).await;
        let code: Value =
            wx.http.get(wx.url(&format!("/sandbox/code?appid={appid}"))).send().await.unwrap().json().await.unwrap();
        assert_eq!((&code["audit"]["status"], &code["committed"]["user_version"]), (&json!("rejected"), &json!("3.0")));
        let cleared = wx.control("/sandbox/audit-plan", json!({ "appid": appid.to_string() })).await;
        assert_eq!(cleared, serde_json::to_value(wx.sb.config().audit_plan(&appid)).unwrap());
        let bad = wx.http.post(wx.url("/sandbox/audit-quota")).json(&json!({ "rest": -1 })).send().await.unwrap();
        assert_eq!(bad.status(), 400);
    })
    .await;
}

#[tokio::test]
async fn shares_outside_0_to_1_do_not_start() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SandboxConfig { reject_share: 1.5, ..SandboxConfig::demo() };
    let err = Sandbox::start(config, listener).await.err().unwrap();
    assert!(err.to_string().contains("reject_share"), "{err}");
}
