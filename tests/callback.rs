//! The authorization-event receiver, end to end: the real binary, the real SQLite file,
//! pushes encrypted and signed as WeChat does.

mod common;

use common::*;
use std::time::Duration;
use wxgate::crypto::MsgCrypt;
use wxgate::store::{SqliteStore, Store};
use wxgate::{AppId, Secret};

fn component() -> AppId {
    AppId::parse(COMPONENT_APPID).unwrap()
}

#[tokio::test]
async fn a_ticket_is_answered_success_and_survives_a_restart() {
    let setup = Setup::new();
    let mut gw = setup.start().await;
    let created = unix_now() - 30;
    let r = gw.push(&crypt(), &ticket_xml("ticket@@@first", created)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "success", "WeChat wants exactly `success`");

    let status: serde_json::Value = gw.admin_get("/admin/component").await.json().await.unwrap();
    assert_eq!(status["ticket"]["create_time"], created);
    let age = gw.metric("wxgate_ticket_age_seconds").await.unwrap();
    assert!((30.0..120.0).contains(&age), "ticket age {age}");
    assert_eq!(gw.metric("wxgate_callback_events_total{info_type=\"component_verify_ticket\"}").await, Some(1.0));

    // A crash right after `success`: the ticket must already be on disk.
    gw.kill();
    let gw = setup.start().await;
    let status: serde_json::Value = gw.admin_get("/admin/component").await.json().await.unwrap();
    assert_eq!(status["ticket"]["create_time"], created);
    let store = SqliteStore::open(&setup.db_path()).unwrap();
    assert_eq!(store.load_ticket(&component()).await.unwrap().unwrap().value.expose(), "ticket@@@first");
    assert_no_secrets(&setup.log(), &["ticket@@@first"]);
}

#[tokio::test]
async fn an_older_push_never_replaces_a_newer_ticket() {
    let setup = Setup::new();
    let gw = setup.start().await;
    let now = unix_now();
    assert_eq!(gw.push(&crypt(), &ticket_xml("ticket@@@new", now)).await.status(), 200);
    // A delayed push of an older ticket is still `success` (WeChat must stop retrying it)...
    let r = gw.push(&crypt(), &ticket_xml("ticket@@@old", now - 600)).await;
    assert_eq!(r.text().await.unwrap(), "success");
    // ...but changes nothing.
    let store = SqliteStore::open(&setup.db_path()).unwrap();
    assert_eq!(store.load_ticket(&component()).await.unwrap().unwrap().value.expose(), "ticket@@@new");
}

#[tokio::test]
async fn authorization_events_are_recorded_once() {
    let setup = Setup::new();
    let gw = setup.start().await;
    let now = unix_now();
    let authorized = authorized_xml("authorized", "wx1111111111111111", "queryauthcode@@@abc", now);
    for _ in 0..3 {
        // WeChat retries a push it thinks failed: the repeats are harmless.
        let r = gw.push(&crypt(), &authorized).await;
        assert_eq!(r.text().await.unwrap(), "success");
    }
    let unknown = format!(
        "<xml><AppId>{COMPONENT_APPID}</AppId><CreateTime>{now}</CreateTime><InfoType>notify_third_fasteregister</InfoType>\
         <appid>wx2222222222222222</appid><status>0</status><auth_code>xyz</auth_code><info><name>n</name></info></xml>"
    );
    assert_eq!(gw.push(&crypt(), &unknown).await.text().await.unwrap(), "success");
    let unauthorized = format!(
        "<xml><AppId>{COMPONENT_APPID}</AppId><CreateTime>{}</CreateTime><InfoType>unauthorized</InfoType>\
         <AuthorizerAppid>wx1111111111111111</AuthorizerAppid></xml>",
        now + 1
    );
    assert_eq!(gw.push(&crypt(), &unauthorized).await.text().await.unwrap(), "success");

    // Every push is on disk, once, whatever the token service has made of it since.
    let db = rusqlite::Connection::open(setup.db_path()).unwrap();
    let mut stmt = db.prepare("SELECT info_type, authorizer_appid, payload FROM events ORDER BY id").unwrap();
    let rows: Vec<(String, String, String)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    let kinds: Vec<(&str, &str)> = rows.iter().map(|(t, a, _)| (t.as_str(), a.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("authorized", "wx1111111111111111"),
            ("notify_third_fasteregister", "wx2222222222222222"),
            ("unauthorized", "wx1111111111111111"),
        ]
    );
    assert!(rows[0].2.contains("queryauthcode@@@abc"), "the whole push is kept");
    assert_eq!(gw.metric("wxgate_callback_events_total{info_type=\"authorized\"}").await, Some(3.0));
    assert_no_secrets(&setup.log(), &["queryauthcode@@@abc"]);
}

/// One bad input: how it is sent, and what the gateway must answer.
struct Bad {
    name: &'static str,
    query: String,
    body: Vec<u8>,
    status: u16,
    reason: &'static str,
}

fn signed(crypt: &MsgCrypt, message: &str) -> (String, String) {
    let sealed = crypt.seal(message, "1700000000", "n0nce");
    let query = format!("timestamp=1700000000&nonce=n0nce&encrypt_type=aes&msg_signature={}", sealed.msg_signature);
    (query, envelope(&sealed.encrypt))
}

fn bad_inputs() -> Vec<Bad> {
    // Far in the future, so that any of these that got through would replace the ticket.
    let good = ticket_xml("ticket@@@forged", 1_900_000_000);
    let (query, body) = signed(&crypt(), &good);
    // A fixed random makes the ciphertext, and so the effect of the flipped byte, repeatable:
    // it lands in the last block, whose padding no longer checks.
    let mut encrypt = crypt().encrypt_with_random(&good, [7; 16]);
    let at = encrypt.trim_end_matches('=').len() - 3;
    let flipped = if &encrypt[at..at + 1] == "A" { "B" } else { "A" };
    encrypt.replace_range(at..at + 1, flipped);
    let tampered = envelope(&encrypt);
    let tampered_sig = crypt().sign("1700000000", "n0nce", &encrypt);
    let other_receiver = MsgCrypt::new(&Secret::new(MSG_TOKEN), &Secret::new(AES_KEY), "wxfedcba9876543210").unwrap();
    let (other_query, other_body) = signed(&other_receiver, &good);
    let sign_raw = |encrypt: &str| crypt().sign("1700000000", "n0nce", encrypt);
    let garbage_sig = sign_raw("MTUgYnl0ZXMsIG9kZGx5");
    let (xml_query, xml_body) = signed(&crypt(), "<xml><InfoType>component_verify_ticket</InfoType>");
    let q = |sig: &str| format!("timestamp=1700000000&nonce=n0nce&encrypt_type=aes&msg_signature={sig}");
    vec![
        Bad {
            name: "forged signature",
            query: q(&"0".repeat(40)),
            body: body.clone().into(),
            status: 403,
            reason: "signature",
        },
        Bad {
            name: "signature of another nonce",
            query: query.replace("n0nce", "other"),
            body: body.clone().into(),
            status: 403,
            reason: "signature",
        },
        Bad {
            name: "tampered ciphertext",
            query: q(&tampered_sig),
            body: tampered.into(),
            status: 400,
            reason: "padding",
        },
        Bad {
            name: "wrong receive id",
            query: other_query,
            body: other_body.into(),
            status: 400,
            reason: "receive_id",
        },
        Bad {
            name: "ciphertext not a whole block",
            query: q(&garbage_sig),
            body: envelope("MTUgYnl0ZXMsIG9kZGx5").into(),
            status: 400,
            reason: "cipher_length",
        },
        Bad { name: "decrypted XML malformed", query: xml_query, body: xml_body.into(), status: 400, reason: "xml" },
        Bad {
            name: "malformed envelope",
            query: query.clone(),
            body: b"<xml><Encrypt>abc</xml>".to_vec(),
            status: 400,
            reason: "xml",
        },
        Bad {
            name: "XXE in the envelope",
            query: query.clone(),
            body: br#"<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><Encrypt>&x;</Encrypt></xml>"#
                .to_vec(),
            status: 400,
            reason: "xml",
        },
        Bad {
            name: "envelope without Encrypt",
            query: query.clone(),
            body: b"<xml><AppId>wx0123456789abcdef</AppId></xml>".to_vec(),
            status: 400,
            reason: "field",
        },
        Bad {
            name: "envelope for another component",
            query: query.clone(),
            body: body.replace(COMPONENT_APPID, "wxfedcba9876543210").into(),
            status: 400,
            reason: "appid",
        },
        Bad { name: "empty body", query: query.clone(), body: Vec::new(), status: 400, reason: "empty" },
        Bad {
            name: "oversized body",
            query: query.clone(),
            body: vec![b'x'; 65 * 1024],
            status: 413,
            reason: "too_large",
        },
        Bad {
            name: "no msg_signature",
            query: "timestamp=1&nonce=2&encrypt_type=aes".into(),
            body: body.clone().into(),
            status: 400,
            reason: "query",
        },
        Bad {
            name: "plaintext mode",
            query: format!("{query}&encrypt_type=raw").replace("encrypt_type=aes&", ""),
            body: body.into(),
            status: 400,
            reason: "query",
        },
    ]
}

#[tokio::test]
async fn every_bad_input_gets_a_4xx_and_changes_nothing() {
    let setup = Setup::new();
    let gw = setup.start().await;
    let created = unix_now();
    assert_eq!(gw.push(&crypt(), &ticket_xml("ticket@@@good", created)).await.status(), 200);

    for bad in bad_inputs() {
        let before =
            gw.metric(&format!("wxgate_callback_rejected_total{{reason=\"{}\"}}", bad.reason)).await.unwrap_or(0.0);
        let r = gw.post_callback(&bad.query, bad.body).await;
        assert_eq!(r.status().as_u16(), bad.status, "{}", bad.name);
        let err: serde_json::Value = r.json().await.unwrap_or_else(|e| panic!("{}: not JSON: {e}", bad.name));
        assert!(err["errmsg"].as_str().unwrap().starts_with("wxgate: "), "{}: {err}", bad.name);
        assert!(err["errcode"].as_i64().unwrap() < -20000, "{}", bad.name);
        let after = gw.metric(&format!("wxgate_callback_rejected_total{{reason=\"{}\"}}", bad.reason)).await;
        assert_eq!(after, Some(before + 1.0), "{} counted as {}", bad.name, bad.reason);
    }

    let r = gw.http.get(gw.proxy_url("/wxgate/callback/component")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    let store = SqliteStore::open(&setup.db_path()).unwrap();
    let ticket = store.load_ticket(&component()).await.unwrap().unwrap();
    assert_eq!((ticket.value.expose(), ticket.create_time), ("ticket@@@good", created), "nothing changed");
    assert!(store.pending_events(&component()).await.unwrap().is_empty());
    assert_no_secrets(&setup.log(), &["ticket@@@good", "ticket@@@forged"]);
}

#[tokio::test]
async fn the_admin_listener_serves_health_readiness_metrics_and_guards_admin() {
    let setup = Setup::new();
    let gw = setup.start().await;
    let health = gw.http.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = gw.http.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("component_verify_ticket"), "says why");

    let metrics = gw.metrics().await;
    for family in [
        "wxgate_ticket_age_seconds inf",
        "# TYPE wxgate_token_retry_total counter",
        "# TYPE wxgate_upstream_duration_seconds histogram",
    ] {
        assert!(metrics.contains(family), "{family} in\n{metrics}");
    }

    let unauth = gw.http.get(gw.admin_url("/admin/component")).send().await.unwrap();
    assert_eq!(unauth.status(), 401);
    let wrong =
        gw.http.get(gw.admin_url("/admin/component")).bearer_auth("admin-token-0123456780").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = gw.admin_get("/admin/component").await;
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(body["component_appid"], COMPONENT_APPID);
    assert!(body["ticket"].is_null());

    let not_api = gw.http.get(gw.proxy_url("/wxgate/nothing-here")).send().await.unwrap();
    assert_eq!(not_api.status(), 404);
}

#[tokio::test]
async fn sigterm_and_sigint_stop_it_promptly() {
    let setup = Setup::new();
    for signal in ["TERM", "INT"] {
        let mut gw = setup.start().await;
        let status = gw.signal_and_wait(signal, Duration::from_secs(10));
        assert!(status.is_some(), "SIG{signal} did not stop wxgate within 10 s");
    }
}
