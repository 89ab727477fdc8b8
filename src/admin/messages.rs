//! `/admin/messages`: the outbox's messages by their metadata (never their content), and an
//! operator's redeliver and delete.

use super::AdminApp;
use crate::messages::outbox::{DeliveryId, MessageKind, OutboxEntry, OutboxError, OutboxState};
use crate::reply::Reply;
use http::Method;
use serde_json::json;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub(super) async fn handle(app: &AdminApp, method: &Method, rest: &[&str], query: &str) -> Reply {
    let Some(outbox) = app.outbox.as_ref() else {
        return Reply::error(404, "this gateway has no outbox");
    };
    match (method, rest) {
        (&Method::GET, []) => {
            let param = |name: &str| {
                url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
            };
            let state = match param("state").as_deref() {
                None | Some("") => None,
                Some("pending") => Some(OutboxState::Pending),
                Some("failed") => Some(OutboxState::Failed),
                Some(_) => return Reply::error(400, "state must be pending or failed"),
            };
            let number = |name: &str, default: usize| match param(name) {
                None => Ok(default),
                Some(v) => v.parse::<usize>().map_err(|_| Reply::error(400, format!("{name} must be a whole number"))),
            };
            let (offset, limit) = match (number("offset", 0), number("limit", DEFAULT_PAGE)) {
                (Ok(o), Ok(l)) => (o, l.min(MAX_PAGE)),
                (Err(e), _) | (_, Err(e)) => return e,
            };
            match outbox.list(state, offset, limit).await {
                Ok((total, entries)) => Reply::json(
                    200,
                    &json!({
                        "total": total,
                        "offset": offset,
                        "messages": entries.iter().map(entry_json).collect::<Vec<_>>(),
                    }),
                ),
                Err(e) => outbox_error(&e),
            }
        }
        (_, [id, action @ ..]) => {
            let id = match DeliveryId::parse(id) {
                Ok(id) => id,
                Err(e) => return Reply::error(400, e),
            };
            let done = match (method, action) {
                (&Method::POST, ["redeliver"]) => outbox.redeliver(&id).await.map(|found| (found, "redeliver")),
                (&Method::DELETE, []) => outbox.delete(&id).await.map(|found| (found, "deleted")),
                _ => return Reply::error(404, "no such admin route"),
            };
            match done {
                Ok((true, what)) => Reply::json(200, &json!({ what: id.as_str() })),
                Ok((false, _)) => Reply::error(404, "unknown message"),
                Err(e) => outbox_error(&e),
            }
        }
        _ => Reply::error(404, "no such admin route"),
    }
}

/// A message's metadata; its payload is personal data and has no field here. A platform
/// event (`kind` `platform`) gives its InfoType; an account's message its MsgType and Event.
fn entry_json(e: &OutboxEntry) -> serde_json::Value {
    let platform = e.kind == MessageKind::Platform;
    json!({
        "id": e.id.as_str(),
        "kind": e.kind.as_str(),
        "authorizer": e.authorizer.map(|a| a.to_string()),
        "route": e.route,
        "msg_type": (!platform).then_some(&e.msg_type),
        "event": e.event,
        "info_type": platform.then_some(&e.msg_type),
        "state": e.state.as_str(),
        "attempts": e.attempts,
        "last_error": e.last_error,
        "received_at_ms": e.received_at_ms,
        "next_attempt_at_ms": e.next_attempt_at_ms,
    })
}

fn outbox_error(e: &OutboxError) -> Reply {
    tracing::warn!(error = %e, "admin: outbox unavailable");
    Reply::error(503, e)
}
