//! Apps' API calls (any other path): token checked, body streamed and hashed, media downloads served.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use sha1::{Digest, Sha1};
use tokio::time::Instant;

use super::record::SeenRequest;
use super::server::query_param;
use super::tokens::Owner;
use super::wx::{answer, ok_json, WxError};
use super::{faults, sns, Sandbox};

/// The largest `media_id` (a byte count) `/cgi-bin/media/get` serves.
pub const MAX_MEDIA_BYTES: u64 = 50 * 1024 * 1024;
const MEDIA_CHUNK: usize = 64 * 1024;
const MEDIA_PATH: &str = "/cgi-bin/media/get";
const CUSTOM_SEND_PATH: &str = "/cgi-bin/message/custom/send";
/// A customer-service message body is a few hundred bytes.
const CUSTOM_SEND_MAX: usize = 64 * 1024;
const TICKET_PATH: &str = "/cgi-bin/ticket/getticket";

/// The bytes `GET /cgi-bin/media/get?media_id=N` serves, for tests to compare a download with.
pub fn media_content(len: usize) -> Vec<u8> {
    media_chunk(0, len)
}

/// Each byte depends on its offset, so that a dropped, repeated or reordered chunk is caught.
fn media_chunk(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| ((i ^ (i >> 8) ^ (i >> 16)) as u8).wrapping_mul(31).wrapping_add(7)).collect()
}

pub(super) async fn handle(sandbox: &Sandbox, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let token = find_token(&query);
    let custom_send = parts.uri.path() == CUSTOM_SEND_PATH;
    let (body_len, body_sha1, kept) = if custom_send {
        match axum::body::to_bytes(body, CUSTOM_SEND_MAX).await {
            Ok(b) => (b.len(), hex::encode(Sha1::digest(&b)), Some(b)),
            Err(_) => return (StatusCode::BAD_REQUEST, "the request body could not be read\n").into_response(),
        }
    } else {
        match digest(body).await {
            Ok((len, sha1)) => (len, sha1, None),
            Err(_) => return (StatusCode::BAD_REQUEST, "the request body could not be read\n").into_response(),
        }
    };
    record(sandbox, &parts, token.as_ref(), body_len);
    let path = parts.uri.path();
    if let Some(fault) = faults::apply(&sandbox.faults(), path).await {
        return fault;
    }
    if sns::PATHS.contains(&path) {
        return answer(sns::handle(sandbox, path, &query));
    }
    let token_value = token.as_ref().map(|(_, t)| t.clone());
    if let Err(e) = check(sandbox, path, token) {
        *sandbox.ledger().record.stats.errcodes.entry(e.code).or_default() += 1;
        return e.into_response();
    }
    if path == TICKET_PATH {
        return getticket(sandbox, token_value.as_deref().unwrap_or_default(), &query);
    }
    if let Some(body) = kept {
        custom_text(sandbox, token_value.as_deref(), &body);
    }
    if path == MEDIA_PATH {
        return media(&query);
    }
    ok_json(json!({ "errcode": 0, "errmsg": "ok", "path": path, "body_bytes": body_len, "body_sha1": body_sha1 }))
}

/// A text sent with `message/custom/send` is kept, with whose token it came, so that the
/// release check can look for its `_from_api` message. Other bodies pass as any call does.
fn custom_text(sandbox: &Sandbox, token: Option<&str>, body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return };
    let text = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_str).map(str::to_owned);
    if text(value.get("msgtype")).as_deref() != Some("text") {
        return;
    }
    let (Some(touser), Some(content)) =
        (text(value.get("touser")), text(value.get("text").and_then(|t| t.get("content"))))
    else {
        return;
    };
    let mut ledger = sandbox.ledger();
    let authorizer = token.and_then(|t| ledger.tokens.owner_of(t)).map(Owner::label).unwrap_or_default();
    ledger.record.push_sent_text(super::messages::SentText { authorizer, touser, content });
}

/// Which parameter carries the token, and its value; `access_token` wins when both are there.
pub(super) fn find_token(query: &str) -> Option<(&'static str, String)> {
    ["access_token", "component_access_token"]
        .into_iter()
        .find_map(|name| query_param(query, name).filter(|v| !v.is_empty()).map(|v| (name, v)))
}

/// 41001 without a token; `component_access_token` must carry the component's own token.
/// A call that passes counts against its caller's daily quota for `path`.
fn check(sandbox: &Sandbox, path: &str, token: Option<(&'static str, String)>) -> Result<(), WxError> {
    let (param, token) = token.ok_or_else(WxError::token_missing)?;
    let mut ledger = sandbox.ledger();
    let owner = ledger.tokens.check(&token, Instant::now())?.clone();
    if param == "component_access_token" && owner != Owner::Component {
        return Err(WxError::invalid_credential());
    }
    ledger.quota.count(&owner.label(), path, sandbox.inner.config.daily_limit)
}

pub(super) fn record(sandbox: &Sandbox, parts: &Parts, token: Option<&(&'static str, String)>, body_len: usize) {
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let mut ledger = sandbox.ledger();
    let authorizer = token.and_then(|(_, t)| ledger.tokens.owner_of(t)).map(Owner::label);
    ledger.record.stats.api_calls += 1;
    ledger.record.push(SeenRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        token_param: token.map(|(p, _)| (*p).to_owned()),
        authorizer,
        body_len,
        headers,
    });
}

/// Length and SHA-1 of the body, read as a stream: uploads can be tens of megabytes.
async fn digest(body: Body) -> Result<(usize, String), axum::Error> {
    let mut stream = body.into_data_stream();
    let mut hasher = Sha1::new();
    let mut len = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        len += chunk.len();
        hasher.update(&chunk);
    }
    Ok((len, hex::encode(hasher.finalize())))
}

/// `getticket?type=jsapi|wx_card` with an authorizer's or an owned account's token: 40097 for
/// any other type, 40001 for the component's token.
fn getticket(sandbox: &Sandbox, token: &str, query: &str) -> Response {
    let kind = query_param(query, "type").unwrap_or_default();
    if kind != "jsapi" && kind != "wx_card" {
        return WxError::new(40097, "invalid args: type must be jsapi or wx_card").into_response();
    }
    let mut ledger = sandbox.ledger();
    let now = Instant::now();
    let appid = match ledger.tokens.check(token, now) {
        Ok(Owner::Authorizer(appid) | Owner::Account { appid, .. }) => appid.clone(),
        Ok(Owner::Component) => return WxError::invalid_credential().into_response(),
        Err(e) => return e.into_response(),
    };
    let ticket = ledger.issue_js_ticket(&appid, &kind, now);
    *ledger.record.stats.getticket_calls.entry(format!("{appid}:{kind}")).or_default() += 1;
    let expires_in = sandbox.config().token_lifetime.as_secs();
    ok_json(json!({ "errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": expires_in }))
}

/// `media_id` is the size wanted; the body is generated chunk by chunk, never held whole.
fn media(query: &str) -> Response {
    let size = query_param(query, "media_id").and_then(|m| m.parse::<u64>().ok());
    let Some(size) = size.filter(|n| *n <= MAX_MEDIA_BYTES) else {
        return WxError::new(40007, "invalid media_id").into_response();
    };
    let size = size as usize;
    let chunks = (0..size)
        .step_by(MEDIA_CHUNK)
        .map(move |off| Ok::<_, Infallible>(Bytes::from(media_chunk(off, MEDIA_CHUNK.min(size - off)))));
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_LENGTH, size.to_string()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{size}.bin\"")),
    ];
    (headers, Body::from_stream(futures_util::stream::iter(chunks))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_chunks_join_to_the_whole() {
        let whole = media_content(200_000);
        let mut joined = media_chunk(0, MEDIA_CHUNK);
        joined.extend(media_chunk(MEDIA_CHUNK, 200_000 - MEDIA_CHUNK));
        assert_eq!(whole, joined);
        assert_ne!(whole[..256], whole[256..512]);
    }

    #[test]
    fn access_token_wins() {
        assert_eq!(find_token("component_access_token=a&access_token=b"), Some(("access_token", "b".into())));
        assert_eq!(find_token("access_token=&component_access_token=c"), Some(("component_access_token", "c".into())));
        assert_eq!(find_token("x=1"), None);
    }
}
