//! Fault injection: delay, HTTP status, fixed errcode or random `-1`, applied before any validation.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::Rng;

use super::config::Faults;
use super::wx::WxError;

/// The answer a fault gives for this path, after waiting its delay; None lets the call through.
pub(crate) async fn apply(faults: &Faults, path: &str) -> Option<Response> {
    if faults.path_contains.as_deref().is_some_and(|p| !path.contains(p)) {
        return None;
    }
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    if let Some(status) = faults.http_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Some(WxError::system().with_status(status));
    }
    if let Some(code) = faults.errcode {
        return Some(WxError::new(code, errmsg(code)).into_response());
    }
    if faults.error_rate > 0.0 && rand::thread_rng().gen::<f64>() < faults.error_rate {
        return Some(WxError::system().into_response());
    }
    None
}

/// WeChat's own errmsg for the codes a test is likely to inject, so that SDK parsers see real text.
fn errmsg(code: i64) -> &'static str {
    match code {
        -1 => "system error",
        40001 => "invalid credential, access_token is invalid or not latest",
        40014 => "invalid access_token",
        42001 => "access_token expired",
        45009 => "reach max api daily quota limit",
        45011 => "api minute-quota reach limit  mustslower  retry next minute",
        61003 => "component is not authorized by this account",
        61004 => "access clientip is not registered",
        61023 => "refresh_token is invalid",
        _ => "injected by the wxgate sandbox",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn errcode_of(r: Response) -> (u16, i64) {
        let status = r.status().as_u16();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (status, v["errcode"].as_i64().unwrap())
    }

    #[tokio::test]
    async fn faults_in_order() {
        assert!(apply(&Faults::default(), "/x").await.is_none());
        let f = Faults { http_status: Some(503), errcode: Some(45009), ..Faults::default() };
        assert_eq!(errcode_of(apply(&f, "/x").await.unwrap()).await, (503, -1));
        let f = Faults { errcode: Some(45009), error_rate: 1.0, ..Faults::default() };
        assert_eq!(errcode_of(apply(&f, "/x").await.unwrap()).await, (200, 45009));
        let f = Faults { error_rate: 1.0, path_contains: Some("/media/".into()), ..Faults::default() };
        assert!(apply(&f, "/cgi-bin/message").await.is_none());
        assert_eq!(errcode_of(apply(&f, "/cgi-bin/media/get").await.unwrap()).await, (200, -1));
    }

    #[tokio::test]
    async fn delay_waits() {
        let f = Faults { delay: Duration::from_millis(50), ..Faults::default() };
        let t0 = tokio::time::Instant::now();
        assert!(apply(&f, "/x").await.is_none());
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }
}
