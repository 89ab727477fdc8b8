//! The gateway's own routes on the proxy listener, under `/wxgate/`.

use crate::callback::{ComponentReceiver, MAX_BODY_BYTES};
use crate::metrics;
use crate::reply::{read_body, BodyError, Reply};
use pingora::proxy::Session;

pub const ROUTE_PREFIX: &str = "/wxgate/";

pub async fn handle(callback: &ComponentReceiver, session: &mut Session) -> Reply {
    let req = session.req_header();
    let (method, path) = (req.method.clone(), req.uri.path().to_owned());
    match path.strip_prefix(ROUTE_PREFIX).unwrap_or_default() {
        "callback/component" if method == http::Method::POST => component_callback(callback, session).await,
        "callback/component" => Reply::error(405, "the authorization-event URL takes POST"),
        _ => Reply::error(404, "no such route"),
    }
}

/// WeChat's authorization-event push: `success` once it is verified and durable.
async fn component_callback(callback: &ComponentReceiver, session: &mut Session) -> Reply {
    let query = session.req_header().uri.query().unwrap_or_default().to_owned();
    let body = match read_body(session.as_downstream_mut(), MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            let reason = if matches!(e, BodyError::TooLarge(_)) { "too_large" } else { "read" };
            metrics::CALLBACK_REJECTED.with_label_values(&[reason]).inc();
            tracing::warn!(reason, "authorization event refused");
            return e.reply();
        }
    };
    match callback.receive(&query, &body).await {
        Ok(received) => {
            tracing::info!(info_type = %received.info_type, new = received.new, "authorization event accepted");
            Reply::text(200, "success")
        }
        Err(e) if e.status() >= 500 => {
            tracing::error!(error = %e, "authorization event could not be recorded; WeChat will retry");
            Reply::error(e.status(), "the event could not be recorded")
        }
        Err(e) => {
            tracing::warn!(reason = e.reason(), error = %e, "authorization event refused");
            Reply::error(e.status(), format!("callback refused: {e}"))
        }
    }
}
