//! `/admin/releases`: start, list, show, pause, resume, cancel and release jobs.

use super::AdminApp;
use crate::http1::Session;
use crate::releases::{ReleaseError, Releases};
use crate::reply::{read_body, Reply};
use crate::store::releases::{AccountState, ReleaseAccount, ReleaseJob};
use http::Method;
use serde_json::{json, Value};

/// A job's body (its settings and its ext_json) is small; a list of thousands of appids is not.
const MAX_BODY: usize = 2 * 1024 * 1024;
const DEFAULT_PAGE: usize = 1000;

pub(super) async fn handle(app: &AdminApp, session: &mut Session<'_>, method: &Method, rest: &[&str]) -> Reply {
    let Some(releases) = &app.releases else { return Reply::error(404, "no release jobs run here") };
    let query = session.req().uri.query().unwrap_or_default().to_owned();
    let result = match (method, rest) {
        (&Method::POST, [] | [""]) => match read_body(session, MAX_BODY).await {
            Ok(body) => releases.create(&body).await.map(|id| (201, json!({ "id": id }))),
            Err(e) => return e.reply(),
        },
        (&Method::GET, [] | [""]) => {
            releases.jobs().await.map(|jobs| (200, json!({ "jobs": jobs.iter().map(job).collect::<Vec<_>>() })))
        }
        (&Method::GET, [id]) => releases.job(id).await.map(|(j, accounts)| (200, shown(&j, &accounts, &query))),
        (&Method::POST, [id, action]) => act(releases, id, action).await,
        _ => return Reply::error(404, "no such admin route"),
    };
    match result {
        Ok((status, body)) => Reply::json(status, &body),
        Err(e) => Reply::error(e.status(), e),
    }
}

async fn act(releases: &Releases, id: &str, action: &str) -> Result<(u16, Value), ReleaseError> {
    let job = match action {
        "pause" => releases.pause(id).await?,
        "resume" => releases.resume(id).await?,
        "cancel" => releases.cancel(id).await?,
        "release" => releases.release_now(id).await?,
        _ => return Ok((404, json!({ "errcode": -20404, "errmsg": "wxgate: no such admin route" }))),
    };
    Ok((200, self::job(&job)))
}

fn job(j: &ReleaseJob) -> Value {
    json!({
        "id": j.id,
        "state": j.state.as_str(),
        "template_id": j.template_id,
        "user_version": j.user_version,
        "user_desc": j.user_desc,
        "release": j.release,
        "concurrency": j.concurrency,
        "max_failures": j.max_failures,
        "reserve_audit_quota": j.reserve_audit_quota,
        "counts": j.counts,
        "created_at_ms": j.created_at_ms,
        "release_requested_at_ms": j.release_requested_at_ms,
        "finished_at_ms": j.finished_at_ms,
    })
}

/// One job with its accounts, `?state=` keeping one state, paged by `offset` and `limit`.
fn shown(j: &ReleaseJob, accounts: &[ReleaseAccount], query: &str) -> Value {
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    };
    let state = param("state").and_then(|s| AccountState::parse(&s));
    let offset = param("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit = param("limit").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_PAGE).min(10_000);
    let matching: Vec<&ReleaseAccount> = accounts.iter().filter(|a| state.is_none_or(|s| a.state == s)).collect();
    let page: Vec<Value> = matching.iter().skip(offset).take(limit).map(|a| account(a)).collect();
    let mut body = job(j);
    body["total"] = json!(matching.len());
    body["offset"] = json!(offset);
    body["accounts"] = Value::Array(page);
    body
}

fn account(a: &ReleaseAccount) -> Value {
    json!({
        "appid": a.appid,
        "state": a.state.as_str(),
        "auditid": a.auditid,
        "reason": a.reason,
        "errcode": a.errcode,
        "errmsg": a.errmsg,
        "updated_at_ms": a.updated_at_ms,
        "next_at_ms": a.next_at_ms,
    })
}
