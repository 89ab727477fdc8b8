//! Code management over real HTTP, with a stand-in gateway that opens the audit events as the
//! real one must: commit, audit, verdict pushed or polled, release.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::appid::AppId;
use crate::crypto::MsgCrypt;
use crate::sandbox::{AuditPlan, Sandbox, SandboxConfig, DELAY_REASON, REJECT_REASON};
use crate::xml;

mod checks;

/// An audit event the stand-in opened: the account it was for (from the URL) and its fields.
type Event = (String, HashMap<String, String>);

/// The gateway's message URL: checks msg_signature, decrypts with the component's key, answers
/// `success` as a gateway must, and hands the event on.
async fn gateway(State(events): State<mpsc::UnboundedSender<Event>>, req: Request) -> axum::response::Response {
    let path = req.uri().path().to_owned();
    let Some(appid) = path.strip_prefix("/wxgate/callback/").filter(|a| *a != "component") else {
        return "success".into_response(); // tickets
    };
    let appid = appid.to_owned();
    let query = req.uri().query().unwrap_or_default().as_bytes().to_vec();
    let q: HashMap<String, String> = url::form_urlencoded::parse(&query).into_owned().collect();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
    let envelope = xml::parse(&String::from_utf8_lossy(&body)).unwrap();
    let config = SandboxConfig::demo();
    let crypt = MsgCrypt::new(&config.token, &config.encoding_aes_key, &config.component_appid.as_str()).unwrap();
    let param = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let encrypt = envelope.get("Encrypt").unwrap_or_default();
    let Ok(message) = crypt.open(param("timestamp"), param("nonce"), encrypt, param("msg_signature")) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let fields = xml::parse(&message).unwrap();
    let names = ["ToUserName", "FromUserName", "MsgType", "Event", "Reason", "SuccTime", "FailTime", "DelayTime"];
    let fields = names.iter().filter_map(|n| fields.get(n).map(|v| ((*n).to_owned(), v.to_owned()))).collect();
    let _ = events.send((appid, fields));
    "success".into_response()
}

/// Every story is bounded in time. A story that reads a state between two steps of an audit
/// gives it a few hundred milliseconds, so that a loaded machine does not miss the state.
async fn bounded<F: Future<Output = ()>>(story: F) {
    tokio::time::timeout(Duration::from_secs(10), story).await.expect("the test took longer than 10 s");
}

struct Wx {
    sb: Sandbox,
    http: reqwest::Client,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Wx {
    /// A sandbox with quick audits, `change` applied, pushing to a stand-in gateway.
    async fn start(change: impl FnOnce(SandboxConfig) -> SandboxConfig) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(gateway).with_state(tx);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let callback_url = Some(format!("{base}/wxgate/callback/component"));
        let config = change(SandboxConfig { callback_url, ..SandboxConfig::demo().quick_audits() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sb = Sandbox::start(config, listener).await.unwrap();
        Self { sb, http: reqwest::Client::new(), events }
    }

    /// Authorizes mini program `n` and returns its appid and access token.
    fn mini_program(&self, n: u8) -> (AppId, String) {
        let appid = AppId::parse(&format!("wx{:016}", 2200 + u32::from(n))).unwrap();
        let token = self.authorize(&appid);
        assert!(self.sb.set_account(&appid, 1, true));
        (appid, token)
    }

    fn authorize(&self, appid: &AppId) -> String {
        let code = self.sb.issue_auth_code(appid);
        let now = tokio::time::Instant::now();
        self.sb.ledger().query_auth(&code, now).unwrap().1.access_token
    }

    fn component_token(&self) -> String {
        self.sb.ledger().issue_component_token(tokio::time::Instant::now())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sb.base_url())
    }

    async fn post_raw(&self, path: &str, token: &str, body: &str) -> Value {
        let url = self.url(&format!("{path}?access_token={token}"));
        let response = self.http.post(url).body(body.to_owned()).send().await.unwrap();
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        self.post_raw(path, token, &body.to_string()).await
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let response = self.http.get(self.url(&format!("{path}?access_token={token}"))).send().await.unwrap();
        response.json().await.unwrap()
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        let response = self.http.post(self.url(path)).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    async fn commit(&self, token: &str, version: &str) -> Value {
        let body = json!({ "template_id": 42, "ext_json": "{\"ext\":{}}", "user_version": version, "user_desc": "d" });
        self.post("/wxa/commit", token, body).await
    }

    async fn submit(&self, token: &str) -> Value {
        self.post("/wxa/submit_audit", token, json!({ "version_desc": "v", "item_list": [] })).await
    }

    async fn status(&self, token: &str) -> Value {
        self.get("/wxa/get_latest_auditstatus", token).await
    }

    async fn next_event(&mut self) -> Event {
        let event = tokio::time::timeout(Duration::from_secs(3), self.events.recv()).await;
        event.expect("an audit event within 3 s").expect("the stand-in is running")
    }

    /// Polls `get_latest_auditstatus` until `status` is `want`.
    async fn poll_until(&self, token: &str, want: i64) -> Value {
        loop {
            let status = self.status(token).await;
            if status["status"] == want {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn errcode(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or_else(|| panic!("no errcode in {v}"))
}

#[tokio::test]
async fn commit_audit_pushed_verdict_release() {
    bounded(async {
        let mut wx = Wx::start(|c| SandboxConfig { audit_delay: Duration::from_millis(300), ..c }).await;
        let (appid, token) = wx.mini_program(1);
        assert_eq!(errcode(&wx.commit(&token, "1.4.0").await), 0);
        let info = wx.post("/wxa/getversioninfo", &token, json!({})).await;
        assert_eq!((errcode(&info), &info["exp_info"]["exp_version"]), (0, &json!("1.4.0")));
        assert!(info.get("release_info").is_none(), "{info}");
        let quota = wx.get("/wxa/queryquota", &token).await;
        assert_eq!((&quota["rest"], &quota["limit"]), (&json!(100), &json!(100)));
        let submitted = wx.submit(&token).await;
        let auditid = submitted["auditid"].as_u64().unwrap();
        assert_eq!(wx.status(&token).await["status"], 2, "auditing");
        let (to, event) = wx.next_event().await;
        assert_eq!(to, appid.to_string());
        assert_eq!(event["Event"], "weapp_audit_success");
        assert_eq!((event["MsgType"].as_str(), event["ToUserName"].as_str()), ("event", "gh_000000000000"));
        assert!(event["SuccTime"].parse::<u64>().is_ok() && event["FromUserName"].starts_with('o'));
        let status = wx.status(&token).await;
        assert_eq!((status["auditid"].as_u64(), &status["status"]), (Some(auditid), &json!(0)), "{status}");
        assert_eq!((&status["user_version"], status.get("reason")), (&json!("1.4.0"), None));
        assert_eq!(errcode(&wx.post_raw("/wxa/release", &token, "{}").await), 0);
        assert_eq!(errcode(&wx.post_raw("/wxa/release", &token, "{}").await), 85052, "released once");
        let info = wx.post("/wxa/getversioninfo", &token, json!({})).await;
        assert_eq!(info["release_info"]["release_version"], "1.4.0", "{info}");
        let state = wx.sb.code_state(&appid).unwrap();
        assert_eq!((state.commits, state.submits, state.releases), (1, 1, 1));
        assert_eq!(state.released.unwrap().version.ext_json.as_deref(), Some("{\"ext\":{}}"));
        let stats = wx.sb.stats();
        let label = appid.to_string();
        let (calls, ok) = (stats.code_calls[&label], stats.code_ok[&label]);
        assert_eq!((calls.commit, calls.submit, calls.release, calls.status, calls.version), (1, 1, 2, 2, 2));
        assert_eq!((ok.commit, ok.submit, ok.release), (1, 1, 1));
        assert_eq!((stats.queryquota_calls, stats.audit_quota_rest, stats.max_in_audit_or_committed), (1, 99, 1));
        assert_eq!((stats.audit_events_pushed, stats.audit_events_failed), (1, 0));
    })
    .await;
}

#[tokio::test]
async fn code_check_61039_is_waited_out() {
    bounded(async {
        let wx = Wx::start(|c| SandboxConfig { code_check_delay: Duration::from_millis(300), ..c }).await;
        let (_, token) = wx.mini_program(1);
        wx.commit(&token, "1.0").await;
        assert_eq!(errcode(&wx.submit(&token).await), 61039);
        assert_eq!(wx.sb.audit_quota().0, 100, "a refusal spends no quota");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(errcode(&wx.submit(&token).await), 0);
    })
    .await;
}

#[tokio::test]
async fn a_spent_quota_answers_85085_until_it_returns() {
    bounded(async {
        let wx = Wx::start(|c| c).await;
        let (_, token) = wx.mini_program(1);
        wx.commit(&token, "1.0").await;
        wx.sb.set_audit_quota(0);
        assert_eq!(wx.get("/wxa/queryquota", &token).await["rest"], 0);
        assert_eq!(errcode(&wx.submit(&token).await), 85085);
        assert_eq!(wx.control("/sandbox/audit-quota", json!({ "rest": 1 })).await, json!({ "rest": 1, "limit": 100 }));
        assert_eq!(errcode(&wx.submit(&token).await), 0);
        let quota = wx.get("/wxa/queryquota", &token).await;
        assert_eq!((&quota["rest"], &quota["limit"]), (&json!(0), &json!(100)));
        assert_eq!(wx.sb.stats().audit_quota_rest, 0);
    })
    .await;
}

#[tokio::test]
async fn the_weekly_limit_answers_85085() {
    bounded(async {
        let wx = Wx::start(|c| SandboxConfig { submits_per_week: Some(1), ..c }).await;
        let (_, one) = wx.mini_program(1);
        let (_, two) = wx.mini_program(2);
        wx.commit(&one, "1.0").await;
        wx.commit(&two, "1.0").await;
        assert_eq!(errcode(&wx.submit(&one).await), 0);
        assert_eq!(errcode(&wx.submit(&two).await), 85085, "the platform's one a week");
        assert_eq!(wx.control("/sandbox/submit-limit", json!({ "per_week": null })).await["per_week"], Value::Null);
        assert_eq!(errcode(&wx.submit(&two).await), 0);
        assert_eq!(wx.sb.audit_quota().0, 98);
    })
    .await;
}

#[tokio::test]
async fn one_audit_at_a_time_85009() {
    bounded(async {
        let wx = Wx::start(|c| SandboxConfig { audit_delay: Duration::from_secs(5), ..c }).await;
        let (_, token) = wx.mini_program(1);
        assert_eq!(errcode(&wx.submit(&token).await), 85086, "nothing committed");
        wx.commit(&token, "1.0").await;
        assert_eq!(errcode(&wx.submit(&token).await), 0);
        wx.commit(&token, "1.1").await;
        assert_eq!(errcode(&wx.submit(&token).await), 85009);
        assert_eq!(wx.status(&token).await["user_version"], "1.0", "the audit is of what was submitted");
    })
    .await;
}

#[tokio::test]
async fn release_takes_exactly_an_empty_object() {
    bounded(async {
        let wx = Wx::start(|c| SandboxConfig { audit_delay: Duration::from_millis(300), ..c }).await;
        let (appid, token) = wx.mini_program(1);
        assert_eq!(errcode(&wx.post_raw("/wxa/release", &token, "{}").await), 85019, "no audit yet");
        wx.commit(&token, "1.0").await;
        wx.submit(&token).await;
        assert_eq!(errcode(&wx.post_raw("/wxa/release", &token, "{}").await), 85020, "still auditing");
        wx.poll_until(&token, 0).await;
        assert_eq!(errcode(&wx.post_raw("/wxa/release", &token, "").await), 44002);
        assert_eq!(errcode(&wx.post_raw("/wxa/release", &token, "{\"a\":1}").await), 47001);
        assert_eq!(errcode(&wx.post_raw("/wxa/release", &token, "release").await), 47001);
        assert_eq!(errcode(&wx.get("/wxa/release", &token).await), 43002);
        assert_eq!(wx.sb.code_state(&appid).unwrap().releases, 0);
        assert_eq!(errcode(&wx.post_raw("/wxa/release", &token, " { } ").await), 0);
    })
    .await;
}

#[tokio::test]
async fn latest_audit_status_through_a_postponed_rejection() {
    bounded(async {
        let mut wx = Wx::start(|c| SandboxConfig { audit_delay: Duration::from_millis(500), ..c }).await;
        let (appid, token) = wx.mini_program(1);
        let status = wx.status(&token).await;
        assert_eq!(errcode(&status), 85058, "no audit yet: {status}");
        wx.sb.set_audit_plan(&appid, Some(AuditPlan { delayed: true, rejected: true }));
        wx.commit(&token, "2.0").await;
        let auditid = wx.submit(&token).await["auditid"].as_u64().unwrap();
        let (_, delay) = wx.next_event().await;
        assert_eq!((delay["Event"].as_str(), delay["Reason"].as_str()), ("weapp_audit_delay", DELAY_REASON));
        assert!(delay.contains_key("DelayTime"));
        let status = wx.status(&token).await;
        assert_eq!((&status["status"], &status["reason"]), (&json!(4), &json!(DELAY_REASON)), "{status}");
        let (_, fail) = wx.next_event().await;
        assert_eq!((fail["Event"].as_str(), fail["Reason"].as_str()), ("weapp_audit_fail", REJECT_REASON));
        assert!(fail.contains_key("FailTime"));
        let status = wx.status(&token).await;
        assert_eq!((status["auditid"].as_u64(), &status["status"]), (Some(auditid), &json!(1)), "{status}");
        assert_eq!((&status["reason"], &status["user_version"]), (&json!(REJECT_REASON), &json!("2.0")));
        assert_eq!(status["ScreenShot"], "");
        assert_eq!(wx.sb.stats().max_in_audit_or_committed, 1);
    })
    .await;
}

#[tokio::test]
async fn silent_verdicts_are_found_by_polling() {
    bounded(async {
        let mut wx = Wx::start(|c| c).await;
        let (_, token) = wx.mini_program(1);
        assert_eq!(wx.control("/sandbox/audit-push", json!({ "silent": true })).await["silent"], true);
        wx.commit(&token, "1.0").await;
        wx.submit(&token).await;
        wx.poll_until(&token, 0).await;
        assert!(wx.events.try_recv().is_err(), "nothing pushed");
        let stats = wx.sb.stats();
        assert_eq!((stats.audit_events_pushed, stats.audit_events_silenced), (0, 1));
        assert_eq!(errcode(&wx.post_raw("/wxa/release", &token, "{}").await), 0);
    })
    .await;
}
