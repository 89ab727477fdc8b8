//! The platform's events handler the stories run: written as a platform's backend would write
//! one (WeChat's plaintext-mode signature checked over the route's token, then the XML), on a
//! port of its own that can be down and come up again, scriptable to refuse or to answer slowly.

use super::common::*;
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ROUTE_TOKEN: &str = "eventroutetoken42";

/// One request as the handler saw it, after the signature was checked.
#[derive(Clone, Debug)]
pub struct Seen {
    pub info_type: String,
    pub authorizer: Option<String>,
    pub delivery: String,
    pub attempt: u32,
    pub body: String,
    /// Whether the handler answered 2xx (the gateway counts it delivered).
    pub taken: bool,
    /// The errcode of an API call made through the gateway for the account the moment the
    /// event arrived (`authorized`, fast registration): 0 when the account already works.
    pub call_errcode: Option<i64>,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    /// Requests refused with 503 before one is taken, by `InfoType authorizer`.
    refuse: HashMap<String, u32>,
    /// Where to make the arrival call: the gateway's proxy listener.
    gateway: Option<SocketAddr>,
    /// How long each request takes before it is answered.
    delay: Duration,
}

/// An events handler on a port of its own, which can be down and come up on the same port.
pub struct Handler {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Handler {
    pub fn down() -> Handler {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Handler { addr, state: Arc::default(), server: None }
    }

    pub async fn up() -> Handler {
        let mut handler = Handler::down();
        handler.start().await;
        handler
    }

    pub async fn start(&mut self) {
        let state = Arc::clone(&self.state);
        let app = axum::Router::new().route(
            "/platform-events",
            axum::routing::post(move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
                let state = Arc::clone(&state);
                async move { handle(&state, &uri, &headers, body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.server = Some(tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }));
    }

    pub fn url(&self) -> String {
        format!("http://{}/platform-events", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The events taken (2xx), in the order they were taken.
    pub fn taken(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.taken).collect()
    }

    pub fn has_taken(&self, info_type: &str, authorizer: Option<&str>) -> bool {
        self.taken().iter().any(|s| s.info_type == info_type && s.authorizer.as_deref() == authorizer)
    }

    pub fn refuse(&self, info_type: &str, authorizer: &str, times: u32) {
        self.state.lock().unwrap().refuse.insert(format!("{info_type} {authorizer}"), times);
    }

    pub fn call_through(&self, gateway: SocketAddr) {
        self.state.lock().unwrap().gateway = Some(gateway);
    }

    pub fn slow(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// What a platform's backend does: checks `signature` = sha1(sort(token, timestamp, nonce)),
/// reads the XML, and (here) tries the account through the gateway at once.
async fn handle(
    state: &Mutex<State>,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
    body: String,
) -> (axum::http::StatusCode, &'static str) {
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let get = |k: &str| query.get(k).map(String::as_str).unwrap_or_default();
    let mut parts = [ROUTE_TOKEN, get("timestamp"), get("nonce")];
    parts.sort_unstable();
    if hex::encode(Sha1::digest(parts.concat().as_bytes())) != get("signature") || query.contains_key("openid") {
        return (axum::http::StatusCode::FORBIDDEN, "bad signature");
    }
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let info_type = header("x-wxgate-info-type").unwrap_or_default();
    let authorizer = header("x-wxgate-authorizer");
    assert_eq!(
        xml_field(&body, "InfoType").as_deref(),
        Some(info_type.as_str()),
        "the header names the XML's InfoType"
    );
    let key = format!("{info_type} {}", authorizer.as_deref().unwrap_or("-"));
    let (refused, gateway, delay) = {
        let mut s = state.lock().unwrap();
        let left = s.refuse.get_mut(&key);
        let refused = left.is_some_and(|n| {
            let refuse = *n > 0;
            *n = n.saturating_sub(1);
            refuse
        });
        (refused, s.gateway, s.delay)
    };
    let arriving = ["authorized", "updateauthorized", "notify_third_fasteregister"].contains(&info_type.as_str());
    let call_errcode = match (gateway, &authorizer) {
        (Some(gateway), Some(appid)) if arriving && !refused => Some(call_user_info(gateway, appid).await),
        _ => None,
    };
    tokio::time::sleep(delay).await;
    state.lock().unwrap().seen.push(Seen {
        info_type,
        authorizer,
        delivery: header("x-wxgate-delivery").unwrap_or_default(),
        attempt: header("x-wxgate-attempt").and_then(|a| a.parse().ok()).unwrap_or(0),
        body,
        taken: !refused,
        call_errcode,
    });
    if refused {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy")
    } else {
        (axum::http::StatusCode::OK, "success")
    }
}

/// An API call through the gateway for `appid`, as an app makes one: WeChat's errcode.
async fn call_user_info(gateway: SocketAddr, appid: &str) -> i64 {
    let url = format!("http://{gateway}/{appid}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}");
    let answer: serde_json::Value = client().get(url).send().await.unwrap().json().await.unwrap_or_default();
    answer["errcode"].as_i64().unwrap_or(-999)
}

pub fn xml_field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let rest = &xml[start..];
    let value = &rest[..rest.find(&format!("</{name}>"))?];
    Some(value.trim_start_matches("<![CDATA[").trim_end_matches("]]>").to_owned())
}
