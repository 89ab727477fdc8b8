//! Who the accounts are, and keeping the gateway's list of them true to WeChat's: account info,
//! reconciliation with `api_get_authorizer_list`, and quotas, end to end against the sandbox.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;
use wxgate::sandbox::Sandbox;
use wxgate::AppId;

const A: &str = "wx1111111111111111";
const B: &str = "wx2222222222222222";
const C: &str = "wx3333333333333333";

fn appid(a: &str) -> AppId {
    AppId::parse(a).unwrap()
}

/// A gateway and a sandbox with `accounts` authorized through the gateway. Reconciliation is
/// left to the tests (`reconcile_hours = 0`), so that none runs behind their back.
async fn started(accounts: &[&str]) -> (Setup, Sandbox, Gateway) {
    let mut setup = Setup::new();
    setup.extra_toml = "\n[refresh]\nreconcile_hours = 0\n".into();
    let sandbox = setup.sandbox(7200).await;
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    for a in accounts {
        sandbox.authorize(&appid(a)).await.unwrap();
    }
    let n = accounts.len();
    eventually(Duration::from_secs(10), "all authorized, with their info", || async {
        let list: Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
        list["total"] == n
            && list["authorizers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["state"] == "active" && a["user_name"].is_string())
    })
    .await;
    (setup, sandbox, gw)
}

async fn admin_post(gw: &Gateway, path: &str) -> reqwest::Response {
    gw.http.post(gw.admin_url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap()
}

/// `GET /admin/authorizers?{query}`.
async fn search(gw: &Gateway, query: &str) -> Value {
    gw.admin_get(&format!("/admin/authorizers?{query}")).await.json().await.unwrap()
}

async fn authorizer(gw: &Gateway, a: &str) -> Value {
    gw.admin_get(&format!("/admin/authorizers/{a}")).await.json().await.unwrap()
}

/// Every token and refresh token the store holds, and the sandbox's current refresh tokens.
fn secrets_of(setup: &Setup, sandbox: &Sandbox, accounts: &[&str]) -> Vec<String> {
    let db = rusqlite::Connection::open(setup.db_path()).unwrap();
    let mut all: Vec<String> = db
        .prepare("SELECT access_token FROM authorizers UNION SELECT refresh_token FROM authorizers UNION SELECT token FROM component_tokens")
        .unwrap()
        .query_map([], |r| r.get::<_, Option<String>>(0))
        .unwrap()
        .filter_map(|r| r.unwrap())
        .collect();
    all.extend(accounts.iter().filter_map(|a| sandbox.refresh_token(&appid(a))));
    all
}

fn assert_nothing_secret(text: &str, secrets: &[String]) {
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_no_secrets(text, &refs);
}

#[tokio::test(flavor = "multi_thread")]
async fn info_is_fetched_at_authorization_and_a_frozen_account_is_shown_and_counted() {
    let (setup, sandbox, gw) = started(&[A, B]).await;
    let a = authorizer(&gw, A).await;
    assert_eq!(a["user_name"], Sandbox::user_name(&appid(A)), "{a}");
    assert_eq!(a["kind"], "official_account");
    assert_eq!(a["account_status"], 1);
    assert_eq!(a["principal_name"], "wxgate sandbox");
    assert_eq!(a["func_info"], serde_json::json!([1]));
    assert!(a["nick_name"].as_str().unwrap().starts_with("Sandbox account"));

    // WeChat freezes B and reports it a mini program; the next authorization (an update) says so.
    assert!(sandbox.set_account(&appid(B), 19, true));
    sandbox.authorize(&appid(B)).await.unwrap();
    eventually(Duration::from_secs(10), "B shown frozen", || async { authorizer(&gw, B).await["state"] == "frozen" })
        .await;
    let b = authorizer(&gw, B).await;
    assert_eq!((b["kind"].as_str(), b["account_status"].as_i64()), (Some("mini_program"), Some(19)), "{b}");
    assert_eq!(gw.metric(r#"wxgate_authorizers{state="frozen"}"#).await, Some(1.0));
    assert_eq!(gw.metric(r#"wxgate_authorizers{state="active"}"#).await, Some(1.0));
    assert_eq!(gw.metric(r#"wxgate_authorizers{state="closed"}"#).await, Some(0.0));

    // The info survives a restart (it is in the store), and so does the frozen state.
    drop(gw);
    let gw = setup.start().await;
    assert_eq!(authorizer(&gw, B).await["state"], "frozen");
    assert_eq!(authorizer(&gw, A).await["user_name"], Sandbox::user_name(&appid(A)));
    let list: Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
    let text = list.to_string();
    assert!(text.contains(&Sandbox::user_name(&appid(B))), "{text}");
    assert_nothing_secret(&text, &secrets_of(&setup, &sandbox, &[A, B]));

    // The console's search, from what the restart loaded: any name in any case, by pages, each
    // account on the page read in full.
    let found = search(&gw, "q=SANDBOX%20Account").await;
    assert_eq!(found["total"], 2, "{found}");
    let found = search(&gw, &format!("q={}", Sandbox::user_name(&appid(B)))).await;
    assert_eq!((found["total"].as_u64(), found["authorizers"][0]["appid"].as_str()), (Some(1), Some(B)), "{found}");
    let page = search(&gw, "q=wxgate%20sandbox&offset=1&limit=1").await;
    assert_eq!((page["total"].as_u64(), page["authorizers"][0]["appid"].as_str()), (Some(2), Some(B)), "{page}");
    assert_eq!(
        (page["authorizers"][0]["state"].as_str(), page["q"].as_str()),
        (Some("frozen"), Some("wxgate sandbox"))
    );
    assert_eq!(page["authorizers"][0]["kind"], "mini_program", "{page}");
    assert_eq!(search(&gw, "q=nobody").await["total"], 0);
    assert_nothing_secret(&setup.log(), &secrets_of(&setup, &sandbox, &[A, B]));
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_imports_what_was_missed_revokes_what_is_gone_and_leaves_newer_refresh_tokens_alone() {
    let (setup, sandbox, gw) = started(&[A, B, C]).await;
    // A and B rotate their refresh tokens through the gateway: WeChat's list still shows the
    // ones issued at authorization (it lags), which no longer work.
    for a in [A, B] {
        let r = admin_post(&gw, &format!("/admin/authorizers/{a}/refresh")).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // The gateway loses B (as if an import was never made), and C's revocation push never arrives.
    let r =
        gw.http.delete(gw.admin_url(&format!("/admin/authorizers/{B}"))).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(sandbox.unauthorize_silently(&appid(C)));
    assert_eq!(authorizer(&gw, C).await["state"], "active");

    let r = admin_post(&gw, "/admin/reconcile").await;
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert_eq!(
        (&done["listed"], &done["imported"], &done["revoked"], &done["unchanged"]),
        (&2.into(), &1.into(), &1.into(), &1.into()),
        "{done}"
    );
    assert_eq!(authorizer(&gw, B).await["state"], "active", "B imported");
    assert_eq!(authorizer(&gw, C).await["state"], "revoked", "C revoked");
    // A kept the refresh token it rotated to: WeChat accepts it, the listed one it would not.
    let r = admin_post(&gw, &format!("/admin/authorizers/{A}/refresh")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = admin_post(&gw, &format!("/admin/authorizers/{B}/refresh")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(sandbox.stats().errcodes.get(&61023), Some(&1), "only the listed (stale) token of B was refused");

    // A second pass finds nothing to do.
    let again: Value = admin_post(&gw, "/admin/reconcile").await.json().await.unwrap();
    assert_eq!((&again["imported"], &again["revoked"], &again["unchanged"]), (&0.into(), &0.into(), &2.into()));
    assert_eq!(gw.metric(r#"wxgate_reconcile_total{result="ok"}"#).await, Some(2.0));
    assert_nothing_secret(&setup.log(), &secrets_of(&setup, &sandbox, &[A, B, C]));
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_runs_at_start_up() {
    let (mut setup, sandbox, gw) = started(&[A, B]).await;
    drop(gw);
    // While the gateway is down, B's owner revokes: the push finds nobody.
    assert!(sandbox.unauthorize_silently(&appid(B)));
    setup.extra_toml = "\n[refresh]\nreconcile_hours = 24\n".into();
    let gw = setup.start().await;
    eventually(Duration::from_secs(15), "B revoked by the start-up reconciliation", || async {
        authorizer(&gw, B).await["state"] == "revoked"
    })
    .await;
    assert_eq!(authorizer(&gw, A).await["state"], "active");
    assert_eq!(gw.metric(r#"wxgate_authorizers{state="revoked"}"#).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_routes_against_the_sandbox() {
    let (setup, sandbox, gw) = started(&[A]).await;
    for _ in 0..2 {
        let r = gw
            .http
            .post(gw.proxy_url(&format!("/{A}/cgi-bin/message/custom/send?access_token={CLIENT_KEY}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["errcode"], 0);
    }
    let quota = |path: &'static str| {
        let gw = &gw;
        async move { gw.admin_get(&format!("/admin/authorizers/{A}/quota?cgi_path={path}")).await }
    };
    let r = quota("/cgi-bin/message/custom/send").await;
    assert_eq!(r.status(), 200);
    let q: Value = r.json().await.unwrap();
    assert_eq!((&q["quota"]["used"], &q["quota"]["daily_limit"]), (&2.into(), &10_000.into()), "{q}");
    assert_eq!(quota("cgi-bin/no-slash").await.status(), 400);

    let r = admin_post(&gw, &format!("/admin/authorizers/{A}/clear-quota")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["via"], "clear_quota");
    let q: Value = quota("/cgi-bin/message/custom/send").await.json().await.unwrap();
    assert_eq!(q["quota"]["used"], 0, "{q}");
    // Ten resets a month: the eleventh is WeChat's 48006, passed on as the caller's problem.
    for _ in 1..10 {
        assert_eq!(admin_post(&gw, &format!("/admin/authorizers/{A}/clear-quota")).await.status(), 200);
    }
    let r = admin_post(&gw, &format!("/admin/authorizers/{A}/clear-quota")).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("48006"));
    assert_eq!(admin_post(&gw, &format!("/admin/authorizers/{B}/clear-quota")).await.status(), 404);

    let r = admin_post(&gw, "/admin/component/clear-quota").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["via"], "clear_quota/v2");
    assert!(gw.metric(r#"wxgate_wechat_errors_total{errcode="other"}"#).await.unwrap() >= 1.0, "48006 counted");
    assert_nothing_secret(&setup.log(), &secrets_of(&setup, &sandbox, &[A]));
}

#[tokio::test(flavor = "multi_thread")]
async fn errcodes_are_counted_for_proxied_calls_and_refreshes_and_45009_is_logged_once() {
    let (setup, sandbox, gw) = started(&[A]).await;
    sandbox.set_faults(wxgate::sandbox::Faults {
        errcode: Some(45009),
        path_contains: Some("/cgi-bin/message/".into()),
        ..Default::default()
    });
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{A}/cgi-bin/message/custom/send?access_token={CLIENT_KEY}")))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["errcode"], 45009);
    assert_eq!(gw.metric(r#"wxgate_wechat_errors_total{errcode="45009"}"#).await, Some(1.0));

    sandbox.set_faults(wxgate::sandbox::Faults {
        errcode: Some(45009),
        path_contains: Some("api_authorizer_token".into()),
        ..Default::default()
    });
    for _ in 0..3 {
        assert_ne!(admin_post(&gw, &format!("/admin/authorizers/{A}/refresh")).await.status(), 200);
    }
    assert_eq!(gw.metric(r#"wxgate_wechat_errors_total{errcode="45009"}"#).await, Some(4.0));
    let log = setup.log();
    assert_eq!(log.matches("clear-quota").count(), 1, "logged once, with the way out");
    sandbox.set_faults(wxgate::sandbox::Faults::default());
    assert_eq!(admin_post(&gw, &format!("/admin/authorizers/{A}/refresh")).await.status(), 200);
    eventually(Duration::from_secs(5), "the recovery logged", || async {
        setup.log().contains("daily quota is available")
    })
    .await;
}
