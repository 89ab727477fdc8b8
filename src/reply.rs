//! Replies of the gateway's own, in the contract's shape, and request bodies read with a limit.
//!
//! Errors are `{"errcode": N, "errmsg": "wxgate: <reason>"}`, with N = -(20000 + HTTP status):
//! WeChat's own codes are positive or -1, so an SDK never mistakes ours for one of WeChat's.

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use std::future::Future;

/// A complete response: the gateway's own pages, errors and the callback's `success`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub location: Option<String>,
    /// More headers, fixed ones (the console's security headers).
    pub extra: &'static [(&'static str, &'static str)],
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

/// The errcode of a gateway error answered with `status`.
pub fn errcode(status: u16) -> i64 {
    -(20_000 + i64::from(status))
}

impl Reply {
    pub fn text(status: u16, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            location: None,
            extra: &[],
            retry_after: None,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        Self { content_type: "application/json; charset=utf-8", body: body.into(), ..Self::text(status, "") }
    }

    /// The contract's error. `reason` must never carry a token, secret or key.
    pub fn error(status: u16, reason: impl std::fmt::Display) -> Self {
        let errmsg = format!("wxgate: {reason}");
        Self::json(status, &serde_json::json!({ "errcode": errcode(status), "errmsg": errmsg }))
    }

    /// An encrypted passive reply to WeChat.
    pub fn xml(status: u16, body: String) -> Self {
        Self { content_type: "application/xml; charset=utf-8", body: body.into(), ..Self::text(status, "") }
    }

    pub fn html(status: u16, body: String) -> Self {
        Self { content_type: "text/html; charset=utf-8", body: body.into(), ..Self::text(status, "") }
    }

    pub fn redirect(location: String) -> Self {
        Self { location: Some(location), ..Self::text(302, "") }
    }

    pub fn with_retry_after(self, secs: u64) -> Self {
        Self { retry_after: Some(secs), ..self }
    }

    pub fn header(&self) -> pingora::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(self.status, Some(5 + self.extra.len()))?;
        h.insert_header("content-type", self.content_type)?;
        h.insert_header("content-length", self.body.len().to_string())?;
        h.insert_header("cache-control", "no-store")?;
        if let Some(location) = &self.location {
            h.insert_header("location", location.as_str())?;
        }
        if let Some(secs) = self.retry_after {
            h.insert_header("retry-after", secs.to_string())?;
        }
        for (name, value) in self.extra {
            h.insert_header(*name, *value)?;
        }
        Ok(h)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body could not be read")]
    Read,
}

impl BodyError {
    pub fn reply(&self) -> Reply {
        match self {
            Self::TooLarge(_) => Reply::error(413, self),
            Self::Read => Reply::error(400, self),
        }
    }
}

/// A request whose body is read piece by piece: the listeners' session (`http1::Session`), or
/// a test's.
pub trait RequestBody {
    fn headers(&self) -> &http::HeaderMap;
    /// The next piece; `None` once the body is over; `Err` if it cannot be read.
    fn piece(&mut self) -> impl Future<Output = Result<Option<Bytes>, ()>> + Send;
}

/// Reads the whole request body, refusing it as soon as it passes `limit` bytes, before it is
/// all received when Content-Length already says so.
pub async fn read_body(request: &mut impl RequestBody, limit: usize) -> Result<Bytes, BodyError> {
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = request.piece().await.map_err(|_| BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_wechats_shape_and_a_code_wechat_does_not_use() {
        let r = Reply::error(401, "no valid client key");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["errcode"], -20401);
        assert_eq!(v["errmsg"], "wxgate: no valid client key");
        assert_eq!(r.header().unwrap().status, 401);
    }
}
