//! WeChat-shaped answers: `{"errcode":N,"errmsg":"... rid: ..."}` at HTTP 200, and JSON successes.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;

/// One of WeChat's error answers, with the errmsg WeChat itself uses for that code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WxError {
    pub code: i64,
    pub msg: String,
}

impl WxError {
    pub fn new(code: i64, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into() }
    }

    pub fn system() -> Self {
        Self::new(-1, "system error")
    }
    pub fn invalid_credential() -> Self {
        Self::new(40001, "invalid credential, access_token is invalid or not latest")
    }
    pub fn token_expired() -> Self {
        Self::new(42001, "access_token expired")
    }
    pub fn token_missing() -> Self {
        Self::new(41001, "access_token missing")
    }
    pub fn invalid_component() -> Self {
        Self::new(61011, "invalid component")
    }
    pub fn invalid_secret() -> Self {
        Self::new(40125, "invalid appsecret")
    }
    pub fn not_authorized() -> Self {
        Self::new(61003, "component is not authorized by this account")
    }
    pub fn bad_refresh_token() -> Self {
        Self::new(61023, "refresh_token is invalid")
    }
    pub fn format(hint: &str) -> Self {
        Self::new(47001, format!("data format error hint: {hint}"))
    }
    pub fn invalid_args(hint: &str) -> Self {
        Self::new(40097, format!("invalid args hint: {hint}"))
    }

    /// The JSON body. Real answers end errmsg with a request id; SDKs that parse errmsg must cope.
    pub fn body(&self) -> String {
        let rid: u32 = rand::thread_rng().gen();
        let msg = format!("{} rid: {rid:08x}", self.msg);
        serde_json::json!({ "errcode": self.code, "errmsg": msg }).to_string()
    }

    pub fn with_status(&self, status: StatusCode) -> Response {
        (status, [(header::CONTENT_TYPE, "application/json; encoding=utf-8")], self.body()).into_response()
    }
}

impl IntoResponse for WxError {
    /// WeChat answers errors with HTTP 200; the errcode is the only signal.
    fn into_response(self) -> Response {
        self.with_status(StatusCode::OK)
    }
}

/// A successful JSON answer at HTTP 200.
pub(crate) fn ok_json(value: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json; encoding=utf-8")], value.to_string()).into_response()
}

/// An endpoint's outcome as a response.
pub(crate) fn answer(result: Result<serde_json::Value, WxError>) -> Response {
    match result {
        Ok(value) => ok_json(value),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_code_and_rid() {
        let body: serde_json::Value = serde_json::from_str(&WxError::invalid_credential().body()).unwrap();
        assert_eq!(body["errcode"], 40001);
        let msg = body["errmsg"].as_str().unwrap();
        assert!(msg.starts_with("invalid credential"), "{msg}");
        assert!(msg.contains(" rid: "), "{msg}");
    }
}
