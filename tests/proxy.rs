//! The API proxy, end to end: apps call the gateway as if it were api.weixin.qq.com; the
//! sandbox checks every token it receives.

mod common;

use common::*;
use std::time::Duration;
use wxgate::sandbox::Sandbox;
use wxgate::AppId;

const A: &str = "wx1111111111111111";
const B: &str = "wx2222222222222222";
const SINGLE_KEY: &str = "single-client-key-0123456789";
const REVEAL_KEY: &str = "reveal-client-key-0123456789";

fn appid(a: &str) -> AppId {
    AppId::parse(a).unwrap()
}

/// A gateway with three clients (all authorizers; only A; a token server), a sandbox, and
/// authorizers A and B.
async fn started(extra: &str) -> (Setup, Sandbox, Gateway) {
    let mut setup = Setup::new();
    setup.extra_toml = format!(
        r#"
[[clients]]
name = "single"
key = "{SINGLE_KEY}"
authorizers = ["{A}"]

[[clients]]
name = "token-server"
key = "{REVEAL_KEY}"
authorizers = ["*"]
component = true
reveal_tokens = true
{extra}"#
    );
    let sandbox = setup.sandbox(7200).await;
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    for a in [A, B] {
        sandbox.authorize(&appid(a)).await.unwrap();
    }
    eventually(Duration::from_secs(10), "both authorized", || async {
        let list: serde_json::Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
        list["total"] == 2 && list["authorizers"].as_array().unwrap().iter().all(|a| a["state"] == "active")
    })
    .await;
    (setup, sandbox, gw)
}

fn stored_tokens(setup: &Setup) -> Vec<String> {
    let db = rusqlite::Connection::open(setup.db_path()).unwrap();
    let mut tokens: Vec<String> = db
        .prepare("SELECT access_token FROM authorizers UNION SELECT refresh_token FROM authorizers UNION SELECT token FROM component_tokens")
        .unwrap()
        .query_map([], |r| r.get::<_, Option<String>>(0))
        .unwrap()
        .filter_map(|r| r.unwrap())
        .collect();
    tokens.push(SINGLE_KEY.into());
    tokens.push(REVEAL_KEY.into());
    tokens
}

fn assert_clean_log(setup: &Setup) {
    let tokens = stored_tokens(setup);
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_no_secrets(&setup.log(), &refs);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_sdk_calls_wechat_through_the_gateway_and_wechat_sees_only_the_real_token() {
    let (setup, sandbox, gw) = started("").await;
    let body = r#"{"touser":"OPENID","msgtype":"text","text":{"content":"你好"}}"#;
    // wechatpy-style: the client key stands where the access token would be.
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{A}/cgi-bin/message/custom/send?access_token={CLIENT_KEY}")))
        .header("content-type", "application/json")
        .header("x-wxgate-scope", "ignored-because-the-path-says")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["errcode"], 0, "{answer}");
    assert_eq!(answer["body_bytes"], body.len());

    let seen = sandbox.requests().pop().unwrap();
    assert_eq!(seen.path, "/cgi-bin/message/custom/send");
    assert_eq!(seen.authorizer.as_deref(), Some(A));
    assert!(!seen.query.contains(CLIENT_KEY), "the client's key never reaches WeChat");
    assert!(seen.headers.iter().all(|(k, _)| !k.starts_with("x-wxgate") && k != "authorization"), "{:?}", seen.headers);

    // The other ways to present the key and name the account.
    let r = gw.http.get(gw.proxy_url("/cgi-bin/user/info?openid=o1")).bearer_auth(SINGLE_KEY).send().await.unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["errcode"], 0);
    assert_eq!(sandbox.requests().pop().unwrap().authorizer.as_deref(), Some(A), "the client's only authorizer");
    let r = gw
        .http
        .get(gw.proxy_url("/cgi-bin/user/info"))
        .header("x-wxgate-key", CLIENT_KEY)
        .header("x-wxgate-authorizer", B)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["errcode"], 0);
    assert_eq!(sandbox.requests().pop().unwrap().authorizer.as_deref(), Some(B));

    // Component scope, under the parameter name WeChat's component APIs use.
    let r = gw
        .http
        .post(gw.proxy_url("/component/cgi-bin/component/api_get_authorizer_list"))
        .bearer_auth(REVEAL_KEY)
        .json(&serde_json::json!({"component_appid": COMPONENT_APPID, "offset": 0, "count": 10}))
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = r.json().await.unwrap();
    assert_eq!(list["total_count"], 2, "{list}");
    assert_clean_log(&setup);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_resolution_rule_has_its_error_and_none_reaches_wechat() {
    let (setup, sandbox, gw) = started("").await;
    sandbox.unauthorize(&appid(B)).await.unwrap();
    eventually(Duration::from_secs(10), "B revoked", || async {
        let b: serde_json::Value = gw.admin_get(&format!("/admin/authorizers/{B}")).await.json().await.unwrap();
        b["state"] == "revoked"
    })
    .await;
    let before = sandbox.stats().api_calls;
    let cases: Vec<(String, Option<&str>, u16)> = vec![
        ("/cgi-bin/user/info".into(), None, 401),
        ("/cgi-bin/user/info?access_token=wrong-key-0000000000".into(), None, 401),
        ("/cgi-bin/user/info".into(), Some(CLIENT_KEY), 400),
        (format!("/{B}/cgi-bin/user/info"), Some(SINGLE_KEY), 403),
        ("/component/cgi-bin/component/api_get_authorizer_list".into(), Some(CLIENT_KEY), 403),
        ("/wx9999999999999999/cgi-bin/user/info".into(), Some(CLIENT_KEY), 404),
        (format!("/{B}/cgi-bin/user/info"), Some(CLIENT_KEY), 404),
    ];
    for (path, key, status) in cases {
        let mut req = gw.http.get(gw.proxy_url(&path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let err: serde_json::Value = r.json().await.unwrap();
        assert_eq!(err["errcode"], -(20000 + i64::from(status)), "{path}: {err}");
        assert!(err["errmsg"].as_str().unwrap().starts_with("wxgate: "));
    }
    // HTTP clients normalise `..` away; a raw request does not.
    for escape in [
        format!("/{A}/../{B}/cgi-bin/user/info"),
        format!("/{A}/cgi-bin/%2e%2e/%2E%2E/{B}/x"),
        format!("/{A}%2f..%2f{B}/x"),
    ] {
        assert_eq!(raw_status(&gw, &escape, CLIENT_KEY).await, 400, "{escape} cannot escape its scope");
    }
    assert_eq!(sandbox.stats().api_calls, before, "no refused call was forwarded");
    let metrics = gw.metrics().await;
    assert!(metrics.contains("wxgate_requests_total{scope=\"none\",status=\"401\"} 2"), "{metrics}");
    assert_clean_log(&setup);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_revoked_mid_run_is_replaced_once_for_many_concurrent_calls() {
    let (setup, sandbox, gw) = started("").await;
    let url = gw.proxy_url(&format!("/{A}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}"));
    assert_eq!(gw.http.get(&url).send().await.unwrap().json::<serde_json::Value>().await.unwrap()["errcode"], 0);
    let refreshes_before = sandbox.stats().authorizer_token_calls.get(A).copied().unwrap_or(0);

    // Another party refreshed the token: WeChat answers 40001 to the one the gateway holds.
    sandbox.revoke_access_token(Some(&appid(A)));
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let (http, url) = (gw.http.clone(), url.clone());
            tokio::spawn(async move {
                let body = format!(r#"{{"n":{i}}}"#);
                http.post(&url).body(body).send().await.unwrap().json::<serde_json::Value>().await.unwrap()
            })
        })
        .collect();
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer["errcode"], 0, "every call was replayed with the new token: {answer}");
    }
    let refreshes = sandbox.stats().authorizer_token_calls.get(A).copied().unwrap_or(0) - refreshes_before;
    assert_eq!(refreshes, 1, "one refresh for 40 calls that saw the error");
    let retries = gw.metric("wxgate_token_retry_total").await.unwrap();
    assert!((1.0..=40.0).contains(&retries), "{retries}");
    assert_clean_log(&setup);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_20_mb_upload_arrives_whole_and_a_30_mb_download_streams_back() {
    let (setup, sandbox, gw) = started("").await;
    let upload: Vec<u8> = (0..20 * 1024 * 1024).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let expected_sha1 = {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(&upload))
    };
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{A}/cgi-bin/media/upload?type=image")))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/octet-stream")
        .body(upload)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["errcode"], 0, "{answer}");
    assert_eq!(answer["body_bytes"], 20 * 1024 * 1024);
    assert_eq!(answer["body_sha1"], expected_sha1.as_str());

    let size = 30 * 1024 * 1024;
    let r = gw
        .http
        .get(gw.proxy_url(&format!("/{A}/cgi-bin/media/get?media_id={size}")))
        .bearer_auth(CLIENT_KEY)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), size);
    assert!(bytes[..] == wxgate::sandbox::media_content(size)[..], "the download arrives intact");
    assert_eq!(sandbox.requests().last().unwrap().authorizer.as_deref(), Some(A));
    assert_clean_log(&setup);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_is_refused_with_413() {
    let (setup, _sandbox, gw) = started("\n[proxy]\nmax_body_bytes = 1048576\nreplay_body_bytes = 65536\n").await;
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{A}/cgi-bin/media/upload?type=image")))
        .bearer_auth(CLIENT_KEY)
        .body(vec![0u8; 2 * 1024 * 1024])
        .send()
        .await;
    // The gateway may answer before it has read the body, and close: either the 413 arrives or
    // the connection is cut mid-upload, never a 200.
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    let ok = gw
        .http
        .post(gw.proxy_url(&format!("/{A}/cgi-bin/media/upload")))
        .bearer_auth(CLIENT_KEY)
        .body(vec![1u8; 512 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok.json::<serde_json::Value>().await.unwrap()["body_bytes"],
        512 * 1024,
        "a body between the replay and the hard limit streams"
    );
    assert_clean_log(&setup);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoints_are_answered_from_the_cache_and_never_forwarded() {
    let (setup, sandbox, gw) = started("").await;
    let stats = sandbox.stats();
    let r = gw
        .http
        .post(gw.proxy_url("/cgi-bin/component/api_component_token"))
        .json(&serde_json::json!({"component_appid": COMPONENT_APPID, "component_appsecret": "x", "component_verify_ticket": "y"}))
        .bearer_auth(REVEAL_KEY)
        .send()
        .await
        .unwrap();
    let component: serde_json::Value = r.json().await.unwrap();
    let stored: String = rusqlite::Connection::open(setup.db_path())
        .unwrap()
        .query_row("SELECT token FROM component_tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(component["component_access_token"], stored.as_str());
    assert!(component["expires_in"].as_i64().unwrap() > 7000);

    let r = gw
        .http
        .post(gw.proxy_url(&format!("/cgi-bin/component/api_authorizer_token?component_access_token={REVEAL_KEY}")))
        .json(&serde_json::json!({"component_appid": COMPONENT_APPID, "authorizer_appid": A, "authorizer_refresh_token": "what-the-sdk-had"}))
        .send()
        .await
        .unwrap();
    let authorizer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(authorizer["authorizer_refresh_token"], "what-the-sdk-had", "the real refresh token never leaves");
    let via_route: serde_json::Value = gw
        .http
        .get(gw.proxy_url(&format!("/wxgate/token/{A}")))
        .bearer_auth(REVEAL_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(via_route["access_token"], authorizer["authorizer_access_token"]);
    let token: serde_json::Value = gw
        .http
        .get(gw.proxy_url(&format!("/cgi-bin/token?grant_type=client_credential&appid={B}")))
        .bearer_auth(REVEAL_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(token["access_token"].as_str().unwrap().len() > 20);

    for (path, key) in [
        ("/cgi-bin/component/api_component_token", CLIENT_KEY),
        (&*format!("/{A}/cgi-bin/token"), SINGLE_KEY),
        ("/wxgate/token/component", CLIENT_KEY),
    ] {
        let r = gw.http.post(gw.proxy_url(path)).bearer_auth(key).body("{}").send().await.unwrap();
        let r = if r.status() == 405 || r.status() == 404 {
            gw.http.get(gw.proxy_url(path)).bearer_auth(key).send().await.unwrap()
        } else {
            r
        };
        assert_eq!(r.status(), 403, "{path}");
    }
    let after = sandbox.stats();
    assert_eq!(
        (after.component_token_calls, after.api_calls),
        (stats.component_token_calls, stats.api_calls),
        "nothing was forwarded"
    );
    assert_eq!(after.authorizer_token_calls, stats.authorizer_token_calls);
}

/// Token endpoints under every other spelling: each refused or answered by the gateway, never
/// forwarded with a token, whoever asks.
#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_token_endpoint_is_forwarded() {
    let (setup, sandbox, gw) = started("").await;
    let before = sandbox.stats();
    let spellings = [
        format!("/{A}/cgi-bin//token"),
        format!("/{A}/cgi-bin/%74oken"),
        format!("/{A}/cgi-bin/%2574oken"),
        format!("/{A}/cgi-bin/TOKEN"),
        format!("/{A}/CGI-BIN/Token"),
        format!("/{A}/cgi-bin/token/"),
        format!("/{A}/cgi-bin/./token"),
        format!("/{A}/cgi-bin/x/../token"),
        format!("/{A}/cgi-bin/token;jsessionid=1"),
        format!("/{A}/cgi-bin/token."),
        format!("/{A}/cgi-bin/token%00"),
        format!("/{A}//cgi-bin/token"),
        format!("/{A}/cgi-bin\\token"),
        "//cgi-bin/token".into(),
        "/cgi-bin/token%3F".into(),
        "/component/cgi-bin/component/api%5Fauthorizer%5Ftoken".into(),
        "/component/cgi-bin/component//api_component_token".into(),
        "/component//cgi-bin/component/api_component_token".into(),
        "/component/cgi-bin/component/API_COMPONENT_TOKEN".into(),
        "/component/cgi-bin/component/api_authorizer_token/".into(),
        "/cgi-bin/component/%61pi_component_token".into(),
    ];
    for path in &spellings {
        for key in [CLIENT_KEY, SINGLE_KEY] {
            let status = raw_status(&gw, path, key).await;
            assert!(matches!(status, 400 | 403), "{path} with {key:.6}: {status}");
        }
    }
    let after = sandbox.stats();
    assert_eq!(
        (after.api_calls, after.component_token_calls, &after.authorizer_token_calls),
        (before.api_calls, before.component_token_calls, &before.authorizer_token_calls),
        "no spelling reached WeChat"
    );
    assert_clean_log(&setup);
}

/// A mini program's user login and an official account's web authorization: made for an
/// authorizer by a client allowed that authorizer, carrying the component's token.
#[tokio::test(flavor = "multi_thread")]
async fn calls_on_an_accounts_behalf_carry_the_component_token() {
    let (setup, sandbox, gw) = started("").await;
    let get = |path: String, key: &'static str| {
        let http = gw.http.clone();
        let url = gw.proxy_url(&path);
        async move {
            let r = http.get(url).bearer_auth(key).send().await.unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, login) =
        get(format!("/sns/component/jscode2session?appid={A}&js_code=c0de&grant_type=authorization_code"), SINGLE_KEY)
            .await;
    assert_eq!(status, 200, "{login}");
    assert!(login["openid"].as_str().unwrap().starts_with('o') && login["session_key"].is_string(), "{login}");
    let seen = sandbox.requests().pop().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.token_param.as_deref(), seen.authorizer.as_deref()),
        ("/sns/component/jscode2session", Some("component_access_token"), Some("component"))
    );
    assert!(seen.query.contains(&format!("component_appid={COMPONENT_APPID}")), "{}", seen.query);

    let (status, web) = get(
        format!("/{A}/sns/oauth2/component/access_token?appid={A}&code=c1&grant_type=authorization_code&component_appid=wxffffffffffffffff"),
        CLIENT_KEY,
    )
    .await;
    assert_eq!(status, 200, "the gateway's component_appid replaces the client's: {web}");
    assert_eq!(web["openid"].as_str().unwrap().len(), 28, "{web}");
    let (status, refreshed) = get(
        format!("/{A}/sns/oauth2/component/refresh_token?appid={A}&grant_type=refresh_token&refresh_token=r1"),
        CLIENT_KEY,
    )
    .await;
    assert_eq!((status, refreshed["expires_in"].as_i64()), (200, Some(7200)), "{refreshed}");

    // The component token refused once: replaced, and the call replayed.
    let refreshes = sandbox.stats().component_token_calls;
    sandbox.revoke_access_token(None);
    let (status, again) =
        get(format!("/sns/component/jscode2session?appid={A}&js_code=c2&grant_type=authorization_code"), SINGLE_KEY)
            .await;
    assert_eq!((status, again["openid"].is_string()), (200, true), "{again}");
    assert_eq!(sandbox.stats().component_token_calls, refreshes + 1);

    let before = sandbox.stats().api_calls;
    for (path, key, expected) in [
        (format!("/sns/component/jscode2session?appid={B}&js_code=c"), SINGLE_KEY, 400),
        ("/sns/component/jscode2session?js_code=c".to_owned(), SINGLE_KEY, 400),
        (format!("/{B}/sns/component/jscode2session?appid={B}&js_code=c"), SINGLE_KEY, 403),
        (format!("/{A}/sns/oauth2/component/access_token?appid={B}&code=c"), CLIENT_KEY, 400),
    ] {
        let (status, err) = get(path.clone(), key).await;
        assert_eq!(status, expected, "{path}: {err}");
    }
    assert_eq!(sandbox.stats().api_calls, before, "none of those reached WeChat");

    // The sandbox is as strict as WeChat with these calls.
    let component: String = rusqlite::Connection::open(setup.db_path())
        .unwrap()
        .query_row("SELECT token FROM component_tokens", [], |r| r.get(0))
        .unwrap();
    let direct = |query: String| {
        let url = format!("{}/sns/component/jscode2session?{query}", sandbox.base_url());
        async move { client().get(url).send().await.unwrap().json::<serde_json::Value>().await.unwrap()["errcode"].clone() }
    };
    let good = format!("appid={A}&js_code=c&grant_type=authorization_code&component_appid={COMPONENT_APPID}");
    assert_eq!(direct(format!("{good}&component_access_token={component}")).await, serde_json::Value::Null);
    assert_eq!(direct(format!("{good}&component_access_token=forged")).await, 40001);
    let other = good.replace(COMPONENT_APPID, "wxffffffffffffffff");
    assert_eq!(direct(format!("{other}&component_access_token={component}")).await, 61011);
    let stranger = good.replace(A, "wx9999999999999999");
    assert_eq!(direct(format!("{stranger}&component_access_token={component}")).await, 61003);
    assert_clean_log(&setup);
}

/// Sends a request line exactly as given and returns the status.
async fn raw_status(gw: &Gateway, path: &str, key: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}
