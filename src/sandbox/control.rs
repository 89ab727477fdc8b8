//! `/sandbox/*` control routes, so that `wxgate sandbox` can be driven with curl. No faults apply here.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::config::FaultsBody;
use super::own_server::{AccountMessageBody, UrlCheckBody};
use super::server::query_param;
use super::{AuditPlan, Sandbox, SandboxError};
use crate::appid::AppId;

/// `POST /sandbox/authorize?appid=wx...`: `{"auth_code", "info_type", "pushed"[, "push_error"]}`.
/// The code is returned even when the push failed, so that it can be exchanged by hand.
pub(super) async fn authorize(State(sandbox): State<Sandbox>, uri: Uri) -> Response {
    let appid = match required_appid(&uri) {
        Ok(appid) => appid,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let event = sandbox.authorize_event(&appid, None);
    let pushed = sandbox.push_event(&appid, &event).await;
    let mut body = json!({ "auth_code": event.code, "info_type": event.info_type, "pushed": pushed.is_ok() });
    if let Err(e) = pushed {
        body["push_error"] = Value::String(e.to_string());
    }
    ok(body)
}

/// `POST /sandbox/unauthorize?appid=wx...[&push=false]`: 404 if that account has not
/// authorized. `push=false` is a push that never arrived: only the authorizer list tells.
pub(super) async fn unauthorize(State(sandbox): State<Sandbox>, uri: Uri) -> Response {
    let appid = match required_appid(&uri) {
        Ok(appid) => appid,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    if query_param(uri.query().unwrap_or_default(), "push").as_deref() == Some("false") {
        return match sandbox.unauthorize_silently(&appid) {
            true => ok(json!({ "pushed": false })),
            false => error(StatusCode::NOT_FOUND, &format!("{appid} has not authorized the component")),
        };
    }
    match sandbox.unauthorize(&appid).await {
        Ok(()) => ok(json!({ "pushed": true })),
        Err(e @ SandboxError::NotAuthorized(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e) => ok(json!({ "pushed": false, "push_error": e.to_string() })),
    }
}

/// `POST /sandbox/account?appid=wx...&status=19[&kind=mini_program|official_account]`: what
/// `api_get_authorizer_info` reports of the account from now on.
pub(super) async fn account(State(sandbox): State<Sandbox>, uri: Uri) -> Response {
    let appid = match required_appid(&uri) {
        Ok(appid) => appid,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let query = uri.query().unwrap_or_default();
    let Some(status) = query_param(query, "status").and_then(|s| s.parse::<i64>().ok()) else {
        return error(StatusCode::BAD_REQUEST, "status must be a number (1, 14, 16, 18, 19)");
    };
    let mini_program = match query_param(query, "kind").as_deref() {
        None | Some("official_account") => false,
        Some("mini_program") => true,
        Some(_) => return error(StatusCode::BAD_REQUEST, "kind must be official_account or mini_program"),
    };
    match sandbox.set_account(&appid, status, mini_program) {
        true => ok(json!({ "appid": appid.as_str(), "account_status": status, "mini_program": mini_program })),
        false => error(StatusCode::NOT_FOUND, "no such account"),
    }
}

/// `POST /sandbox/revoke[?appid=wx...]`: that account's (or the component's) current token dies.
pub(super) async fn revoke(State(sandbox): State<Sandbox>, uri: Uri) -> Response {
    match appid_param(&uri) {
        Ok(appid) => {
            sandbox.revoke_access_token(appid.as_ref());
            ok(json!({ "revoked": appid.map_or("component".to_owned(), |a| a.to_string()) }))
        }
        Err(why) => error(StatusCode::BAD_REQUEST, &why),
    }
}

/// `POST /sandbox/faults` `{error_rate, delay_ms, http_status, errcode, path_contains}`; `{}` clears.
pub(super) async fn faults(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    let text = if body.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { &body[..] };
    let parsed: Result<FaultsBody, String> = serde_json::from_slice(text).map_err(|e| e.to_string());
    match parsed.and_then(FaultsBody::into_faults) {
        Ok(faults) => {
            tracing::info!(?faults, "sandbox: faults set");
            sandbox.set_faults(faults);
            ok(json!({ "ok": true }))
        }
        Err(why) => error(StatusCode::BAD_REQUEST, &why),
    }
}

/// `GET /sandbox/stats`: the counters as JSON.
pub(super) async fn stats(State(sandbox): State<Sandbox>) -> Response {
    ok(serde_json::to_value(sandbox.stats()).unwrap_or_default())
}

/// `POST /sandbox/ticket`: pushes a new ticket now.
pub(super) async fn ticket(State(sandbox): State<Sandbox>) -> Response {
    match sandbox.push_ticket().await {
        Ok(()) => ok(json!({ "pushed": true })),
        Err(e) => ok(json!({ "pushed": false, "push_error": e.to_string() })),
    }
}

/// `POST /sandbox/pushes?paused=true|false`: stops or resumes the periodic ticket pushes.
pub(super) async fn pushes(State(sandbox): State<Sandbox>, uri: Uri) -> Response {
    match query_param(uri.query().unwrap_or_default(), "paused").as_deref() {
        Some("true") => sandbox.pushes_paused(true),
        Some("false") => sandbox.pushes_paused(false),
        _ => return error(StatusCode::BAD_REQUEST, "paused must be true or false"),
    }
    ok(json!({ "paused": sandbox.ledger().paused }))
}

/// `POST /sandbox/message?appid=wx...&type=text&content=...` (or `type=event&event=subscribe`;
/// also `openid`, `msg_id`): pushed to the account's message URL; answers what the gateway
/// said, with the passive reply decrypted.
pub(super) async fn message(State(sandbox): State<Sandbox>, uri: Uri) -> Response {
    let appid = match required_appid(&uri) {
        Ok(appid) => appid,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let q = uri.query().unwrap_or_default();
    let msg_id = match query_param(q, "msg_id").map(|m| m.parse::<u64>()) {
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "msg_id must be a number"),
        other => other.and_then(Result::ok),
    };
    let spec = super::MessageSpec {
        msg_type: query_param(q, "type").unwrap_or_else(|| "text".to_owned()),
        content: query_param(q, "content"),
        event: query_param(q, "event"),
        openid: query_param(q, "openid"),
        msg_id,
    };
    match sandbox.push_message(&appid, &spec).await {
        Ok(outcome) => ok(serde_json::to_value(outcome).unwrap_or_default()),
        Err(e) => error(StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}

/// `POST /sandbox/account-message` `{appid, mode?: "plaintext"|"compatible"|"safe" (default safe),
/// url?, forge?, type?, content?, event?, openid?, msg_id?}`: pushed to the owned account's own
/// server; answers as `/sandbox/message` does. 404 for an appid that is not an owned account.
pub(super) async fn account_message(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<AccountMessageBody>(&body).map_err(|e| e.to_string());
    let (appid, spec, how) = match parsed.and_then(AccountMessageBody::into_parts) {
        Ok(parts) => parts,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    match sandbox.push_account_message(&appid, &spec, &how).await {
        Ok(outcome) => ok(serde_json::to_value(outcome).unwrap_or_default()),
        Err(e) => push_error(&e),
    }
}

/// `POST /sandbox/account-urlcheck` `{appid, url?, forge?}`: WeChat's check of the owned account's
/// server URL; answers `{status, body, echoed}`.
pub(super) async fn account_urlcheck(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<UrlCheckBody>(&body).map_err(|e| e.to_string());
    let (appid, url, forge) = match parsed.and_then(UrlCheckBody::into_parts) {
        Ok(parts) => parts,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    match sandbox.check_account_url(&appid, url.as_deref(), forge).await {
        Ok(check) => ok(serde_json::to_value(check).unwrap_or_default()),
        Err(e) => push_error(&e),
    }
}

fn push_error(e: &SandboxError) -> Response {
    match e {
        SandboxError::NotOwned(_) => error(StatusCode::NOT_FOUND, &e.to_string()),
        _ => error(StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}

/// `POST /sandbox/release-check?appid=wx...` (default: the first official test account): WeChat's
/// release check against the gateway, pass/fail per step.
pub(super) async fn release_check(State(sandbox): State<Sandbox>, uri: Uri) -> Response {
    let appid = match appid_param(&uri) {
        Ok(appid) => {
            appid.unwrap_or_else(|| AppId::parse(crate::test_accounts::TEST_ACCOUNTS[0].0).expect("a valid test appid"))
        }
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    if !crate::test_accounts::is_test_account(&appid) {
        return error(StatusCode::BAD_REQUEST, "appid must be one of WeChat's release-check test accounts");
    }
    ok(serde_json::to_value(sandbox.release_check(&appid).await).unwrap_or_default())
}

/// `POST /sandbox/audit-quota {"rest": N}`: what `submit_audit` may still spend this month.
pub(super) async fn audit_quota(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Quota {
        rest: u32,
    }
    match json_body::<Quota>(&body) {
        Ok(q) => {
            sandbox.set_audit_quota(q.rest);
            let (rest, limit) = sandbox.audit_quota();
            ok(json!({ "rest": rest, "limit": limit }))
        }
        Err(why) => error(StatusCode::BAD_REQUEST, &why),
    }
}

/// `POST /sandbox/submit-limit {"per_week": N|null}`: audits the platform may submit in 7 days
/// before 85085; null (or no key) lifts the limit.
pub(super) async fn submit_limit(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Limit {
        per_week: Option<u32>,
    }
    match json_body::<Limit>(&body) {
        Ok(l) => {
            sandbox.set_submits_per_week(l.per_week);
            ok(json!({ "per_week": l.per_week }))
        }
        Err(why) => error(StatusCode::BAD_REQUEST, &why),
    }
}

/// `POST /sandbox/audit-push {"silent": true|false}`: with `silent`, verdicts are not pushed and
/// only `get_latest_auditstatus` tells.
pub(super) async fn audit_push(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Push {
        silent: bool,
    }
    match json_body::<Push>(&body) {
        Ok(p) => {
            sandbox.set_audit_push(!p.silent);
            ok(json!({ "silent": p.silent }))
        }
        Err(why) => error(StatusCode::BAD_REQUEST, &why),
    }
}

/// `POST /sandbox/audit-plan {"appid", "delayed"?, "rejected"?}`: how that account's audits end
/// (a missing key is false); with neither key, back to the config's shares.
pub(super) async fn audit_plan(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Plan {
        appid: String,
        delayed: Option<bool>,
        rejected: Option<bool>,
    }
    let parsed = json_body::<Plan>(&body).and_then(|p| Ok((AppId::parse(&p.appid).map_err(|e| e.to_string())?, p)));
    let (appid, plan) = match parsed {
        Ok(parts) => parts,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let set = match (plan.delayed, plan.rejected) {
        (None, None) => None,
        (delayed, rejected) => {
            Some(AuditPlan { delayed: delayed.unwrap_or(false), rejected: rejected.unwrap_or(false) })
        }
    };
    sandbox.set_audit_plan(&appid, set);
    ok(serde_json::to_value(sandbox.audit_plan(&appid)).unwrap_or_default())
}

/// `POST /sandbox/profile {"appid", "complete": bool}`: an incomplete profile (no name, icon or
/// description) makes `submit_audit` answer 86002.
pub(super) async fn profile(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Profile {
        appid: String,
        complete: bool,
    }
    let parsed = json_body::<Profile>(&body).and_then(|p| Ok((AppId::parse(&p.appid).map_err(|e| e.to_string())?, p)));
    match parsed {
        Ok((appid, p)) => {
            sandbox.set_profile_complete(&appid, p.complete);
            ok(json!({ "appid": appid.as_str(), "complete": p.complete }))
        }
        Err(why) => error(StatusCode::BAD_REQUEST, &why),
    }
}

/// `GET /sandbox/code?appid=wx...`: the account's code as WeChat holds it; 404 before a commit.
pub(super) async fn code(State(sandbox): State<Sandbox>, uri: Uri) -> Response {
    let appid = match required_appid(&uri) {
        Ok(appid) => appid,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    match sandbox.code_state(&appid) {
        Some(state) => ok(serde_json::to_value(state).unwrap_or_default()),
        None => error(StatusCode::NOT_FOUND, "nothing committed for that account"),
    }
}

fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// The `appid` parameter, if any; a malformed one is refused rather than ignored.
fn appid_param(uri: &Uri) -> Result<Option<AppId>, String> {
    match query_param(uri.query().unwrap_or_default(), "appid") {
        None => Ok(None),
        Some(s) => AppId::parse(&s).map(Some).map_err(|e| e.to_string()),
    }
}

/// The appid a route cannot do without.
fn required_appid(uri: &Uri) -> Result<AppId, String> {
    appid_param(uri)?.ok_or_else(|| "appid is required".to_owned())
}

fn ok(body: Value) -> Response {
    super::wx::ok_json(body)
}

fn error(status: StatusCode, why: &str) -> Response {
    let body = json!({ "error": why }).to_string();
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}
