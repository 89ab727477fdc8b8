//! Token custody against the sandbox over real HTTP: a ticket leads to a component token, both
//! authorization paths store an authorizer, tokens stay fresh through many lifetimes and a
//! crash loses nothing.

mod common;

use common::*;
use std::time::Duration;
use wxgate::sandbox::Sandbox;
use wxgate::AppId;

fn appid(n: u32) -> AppId {
    AppId::parse(&format!("wx{n:016x}")).unwrap()
}

async fn admin_json(gw: &Gateway, path: &str) -> serde_json::Value {
    gw.admin_get(path).await.json().await.unwrap()
}

async fn state_of(gw: &Gateway, appid: &AppId) -> Option<String> {
    let r = gw.admin_get(&format!("/admin/authorizers/{appid}")).await;
    if r.status() != 200 {
        return None;
    }
    r.json::<serde_json::Value>().await.ok()?["state"].as_str().map(str::to_owned)
}

/// A gateway on SQLite against a sandbox whose tokens live `lifetime` seconds, with a ticket
/// and so a component token.
async fn ready(lifetime: u64) -> (Setup, Sandbox, Gateway) {
    let mut setup = Setup::new();
    // These stories make every change themselves: a reconciliation (tests/fleet.rs) retried
    // after start-up would import the account "another system" authorized before the test does.
    setup.extra_toml = "\n[refresh]\nreconcile_hours = 0\n".into();
    let sandbox = setup.sandbox(lifetime).await;
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    eventually(Duration::from_secs(10), "readyz", || async {
        gw.http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    (setup, sandbox, gw)
}

/// A stored access token works at the sandbox (an API call through it answers errcode 0).
async fn token_works(gw: &Gateway, sandbox: &Sandbox, setup: &Setup, appid: &AppId) -> bool {
    let db = rusqlite::Connection::open(setup.db_path()).unwrap();
    let token: Option<String> = db
        .query_row("SELECT access_token FROM authorizers WHERE authorizer_appid = ?1", [appid.to_string()], |r| {
            r.get(0)
        })
        .unwrap_or(None);
    let Some(token) = token else { return false };
    let url = format!("{}/cgi-bin/user/info?access_token={token}&openid=o1", sandbox.base_url());
    let answer: serde_json::Value = gw.http.get(url).send().await.unwrap().json().await.unwrap();
    if answer["errcode"] != 0 {
        eprintln!("{appid}'s stored token was refused: {answer}");
    }
    answer["errcode"] == 0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_leads_to_a_component_token_and_both_authorization_paths_store_the_authorizer() {
    let (setup, sandbox, gw) = ready(7200).await;
    let component = admin_json(&gw, "/admin/component").await;
    assert!(component["token_expires_in_secs"].as_i64().unwrap() > 7000);
    assert_eq!(sandbox.stats().component_token_calls, 1);

    // The push path: an owner authorizes, WeChat pushes `authorized` with the code.
    sandbox.authorize(&appid(1)).await.unwrap();
    eventually(Duration::from_secs(10), "the pushed authorization is stored", || async {
        state_of(&gw, &appid(1)).await.as_deref() == Some("active")
    })
    .await;
    assert!(token_works(&gw, &sandbox, &setup, &appid(1)).await);

    // The browser path: the page, WeChat's consent page, the redirect back. The sandbox also
    // pushes `authorized` with the same code, so the two race: either way is success.
    let page =
        gw.http.get(gw.proxy_url("/wxgate/authorize?redirect=https://shop.example.com/done")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let pc_link = html_links(&page).into_iter().next().unwrap();
    assert!(pc_link
        .starts_with(&format!("{}/cgi-bin/componentloginpage?component_appid={COMPONENT_APPID}", sandbox.base_url())));
    let consent = gw.http.get(&pc_link).send().await.unwrap().text().await.unwrap();
    let consent_link = html_links(&consent).into_iter().find(|l| l.contains("/sandbox/consent")).unwrap();
    let consent_url = format!(
        "{}{}",
        sandbox.base_url(),
        consent_link.replace("authorizer=wx1111111111111111", &format!("authorizer={}", appid(2)))
    );
    let no_redirects =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap();
    let back = no_redirects.get(&consent_url).send().await.unwrap();
    assert_eq!(back.status(), 302);
    let done_url = back.headers()["location"].to_str().unwrap().to_owned();
    assert!(done_url.starts_with(&gw.proxy_url("/wxgate/authorize/done?redirect=")), "{done_url}");
    let done = no_redirects.get(&done_url).send().await.unwrap();
    assert_eq!(done.status(), 302, "{}", done.text().await.unwrap());
    assert_eq!(
        done.headers()["location"],
        format!("https://shop.example.com/done?authorizer_appid={}", appid(2)).as_str()
    );
    assert_eq!(state_of(&gw, &appid(2)).await.as_deref(), Some("active"));
    assert!(token_works(&gw, &sandbox, &setup, &appid(2)).await);
    // A used link is refused by WeChat, and the gateway says so clearly.
    let again = no_redirects.get(&done_url).send().await.unwrap();
    assert!(again.status() == 302 || again.status().is_server_error(), "{}", again.status());

    let links = admin_json(&gw, "/admin/authorize-url?redirect=https://shop.example.com/").await;
    assert!(links["mobile_url"].as_str().unwrap().ends_with("#wechat_redirect"));
    assert_no_secrets(&setup.log(), &[]);
}

fn html_links(html: &str) -> Vec<String> {
    html.split("href=\"").skip(1).map(|rest| rest.split('"').next().unwrap().replace("&amp;", "&")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_stay_fresh_through_many_lifetimes_and_a_crash_loses_nothing() {
    let lifetime = 3;
    let (setup, sandbox, mut gw) = ready(lifetime).await;
    let accounts: Vec<AppId> = (1..=4).map(appid).collect();
    for a in &accounts {
        sandbox.authorize(a).await.unwrap();
    }
    eventually(Duration::from_secs(10), "all authorized", || async {
        for a in &accounts {
            if state_of(&gw, a).await.as_deref() != Some("active") {
                return false;
            }
        }
        true
    })
    .await;

    let start = std::time::Instant::now();
    let run = Duration::from_secs(lifetime * 6);
    let mut restarted = false;
    while start.elapsed() < run {
        if !restarted && start.elapsed() > run / 2 {
            // A crash at an arbitrary moment: whatever WeChat rotated must already be stored.
            gw.kill();
            gw = setup.start().await;
            restarted = true;
        }
        for a in &accounts {
            assert!(
                token_works(&gw, &sandbox, &setup, a).await,
                "{a}'s stored token stopped working at {:?}",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let stats = sandbox.stats();
    assert_eq!(stats.errcodes.get(&61023), None, "no refresh token was ever lost (no 61023 recovery)");
    let lifetimes = run.as_secs() / lifetime;
    for a in &accounts {
        let refreshes = stats.authorizer_token_calls.get(&*a.as_str()).copied().unwrap_or(0);
        assert!(
            (lifetimes..=lifetimes * 2).contains(&refreshes),
            "{a}: {refreshes} refreshes in {lifetimes} lifetimes"
        );
        // The gateway goes on refreshing every second or so: a read that falls between WeChat's
        // rotation and the store's commit (a few milliseconds) sees the old one, so the two are
        // compared until they agree, as they must once that refresh is committed.
        let stored = || {
            rusqlite::Connection::open(setup.db_path())
                .unwrap()
                .query_row("SELECT refresh_token FROM authorizers WHERE authorizer_appid = ?1", [a.to_string()], |r| {
                    r.get::<_, String>(0)
                })
                .ok()
        };
        eventually(Duration::from_secs(5), &format!("{a}: the store holds the refresh token WeChat accepts"), || {
            let held = stored();
            let agree = held.is_some() && held == sandbox.refresh_token(a);
            async move { agree }
        })
        .await;
    }
    assert_no_secrets(&setup.log(), &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthorized_account_is_revoked_and_imports_are_checked_with_wechat() {
    let (setup, sandbox, gw) = ready(7200).await;
    sandbox.authorize(&appid(1)).await.unwrap();
    eventually(Duration::from_secs(10), "authorized", || async {
        state_of(&gw, &appid(1)).await.as_deref() == Some("active")
    })
    .await;
    sandbox.unauthorize(&appid(1)).await.unwrap();
    eventually(Duration::from_secs(10), "revoked", || async {
        state_of(&gw, &appid(1)).await.as_deref() == Some("revoked")
    })
    .await;
    let stored: Option<String> = rusqlite::Connection::open(setup.db_path())
        .unwrap()
        .query_row("SELECT refresh_token FROM authorizers WHERE authorizer_appid = ?1", [appid(1).to_string()], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, None, "a revoked authorizer's tokens are dropped");

    // An account authorized through another system, which exchanged the code and kept the
    // refresh token: the sandbox knows it, the gateway does not.
    let code = sandbox.issue_auth_code(&appid(3));
    let component_token: String = rusqlite::Connection::open(setup.db_path())
        .unwrap()
        .query_row("SELECT token FROM component_tokens", [], |r| r.get(0))
        .unwrap();
    let exchanged: serde_json::Value = gw
        .http
        .post(format!(
            "{}/cgi-bin/component/api_query_auth?component_access_token={component_token}",
            sandbox.base_url()
        ))
        .json(&serde_json::json!({ "component_appid": COMPONENT_APPID, "authorization_code": code }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let real = exchanged["authorization_info"]["authorizer_refresh_token"].as_str().unwrap().to_owned();
    let put = |body: String| {
        gw.http
            .put(gw.admin_url(&format!("/admin/authorizers/{}", appid(3))))
            .bearer_auth(ADMIN_TOKEN)
            .body(body)
            .send()
    };
    let wrong = put(r#"{"refresh_token":"refreshtoken@@@not-it"}"#.into()).await.unwrap();
    assert_eq!(wrong.status(), 400);
    assert_eq!(gw.admin_get(&format!("/admin/authorizers/{}", appid(3))).await.status(), 404, "nothing stored");
    assert_eq!(put("not json".into()).await.unwrap().status(), 400);

    let ok = put(serde_json::json!({ "refresh_token": real }).to_string()).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(state_of(&gw, &appid(3)).await.as_deref(), Some("active"));
    assert!(token_works(&gw, &sandbox, &setup, &appid(3)).await);

    let deleted = gw
        .http
        .delete(gw.admin_url(&format!("/admin/authorizers/{}", appid(3))))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(state_of(&gw, &appid(3)).await, None);
    assert_no_secrets(&setup.log(), &[&real]);
}
