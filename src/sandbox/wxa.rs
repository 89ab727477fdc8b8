//! Code management calls of authorized mini programs (`/wxa/*`, PROTOCOL.md §12): templates,
//! commit, audit, release and the audit quota, with WeChat's checks and errcodes. The state
//! they change is [`super::code`]; the verdicts come from [`super::audit`].

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::code::{CodeState, CodeVersion};
use super::push::unix_now;
use super::record::CodeCalls;
use super::server::query_param;
use super::tokens::Owner;
use super::wx::{answer, WxError};
use super::{api, audit, faults, Sandbox};

/// A commit's `ext_json` can be large; WeChat's own limit is not published.
const MAX_BODY: usize = 256 * 1024;
/// WeChat's 85023: an audit request lists at most five pages.
const MAX_ITEMS: usize = 5;
/// `queryquota`'s speed-up audits: the sandbox grants none.
const SPEEDUP_LIMIT: u32 = 0;
/// Templates are reported as created at this unix time plus their id, so that answers are stable.
const TEMPLATE_EPOCH: i64 = 1_700_000_000;

type Body = Map<String, Value>;

/// The calls this module answers; any other `/wxa/` path is an app's call like any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    /// With the component's token.
    TemplateList,
    /// With a mini program's token.
    Account(Step),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Commit,
    VersionInfo,
    Submit,
    Status,
    Release,
    QueryQuota,
}

impl Call {
    pub fn of(path: &str) -> Option<Call> {
        Some(Call::Account(match path {
            "/wxa/gettemplatelist" => return Some(Call::TemplateList),
            "/wxa/commit" => Step::Commit,
            "/wxa/getversioninfo" => Step::VersionInfo,
            "/wxa/submit_audit" => Step::Submit,
            "/wxa/get_latest_auditstatus" => Step::Status,
            "/wxa/release" => Step::Release,
            "/wxa/queryquota" => Step::QueryQuota,
            _ => return None,
        }))
    }
}

impl Step {
    /// The calls that change or read state with a body; a GET is refused with 43002.
    fn wants_post(self) -> bool {
        matches!(self, Step::Commit | Step::VersionInfo | Step::Submit | Step::Release)
    }

    /// Its counter in [`CodeCalls`]; `queryquota` is the platform's, counted apart.
    fn counter(self, calls: &mut CodeCalls) -> Option<&mut u64> {
        match self {
            Step::Commit => Some(&mut calls.commit),
            Step::Submit => Some(&mut calls.submit),
            Step::Release => Some(&mut calls.release),
            Step::Status => Some(&mut calls.status),
            Step::VersionInfo => Some(&mut calls.version),
            Step::QueryQuota => None,
        }
    }
}

/// Recorded and counted like any API call, faults applied, then WeChat's checks in its order:
/// token, method, body, state.
pub(super) async fn handle(sandbox: &Sandbox, call: Call, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::BAD_REQUEST, "the request body could not be read\n").into_response();
    };
    let (path, query) = (parts.uri.path(), parts.uri.query().unwrap_or_default());
    let token = api::find_token(query);
    api::record(sandbox, &parts, token.as_ref(), body.len());
    let caller = count_call(sandbox, call, token.as_ref().map(|(_, t)| t.as_str()));
    if let Some(fault) = faults::apply(&sandbox.faults(), path).await {
        return fault;
    }
    let result = match call {
        Call::TemplateList => component(sandbox, token, path).map(|()| templates(sandbox, query)),
        Call::Account(step) => mini_program(sandbox, token, path).and_then(|appid| {
            if step.wants_post() && parts.method != Method::POST {
                return Err(WxError::new(43002, "require POST method"));
            }
            answer_step(sandbox, step, &appid, &body)
        }),
    };
    let mut ledger = sandbox.ledger();
    match (&result, call) {
        (Ok(_), Call::Account(step)) => {
            if let Some(n) = step.counter(ledger.record.stats.code_ok.entry(caller).or_default()) {
                *n += 1;
            }
        }
        (Ok(_), Call::TemplateList) => {}
        (Err(e), _) => *ledger.record.stats.errcodes.entry(e.code).or_default() += 1,
    }
    drop(ledger);
    answer(result)
}

/// Counts the call by whose token it carries; that label.
fn count_call(sandbox: &Sandbox, call: Call, token: Option<&str>) -> String {
    let mut ledger = sandbox.ledger();
    let caller = token.and_then(|t| ledger.tokens.owner_of(t)).map(Owner::label).unwrap_or_default();
    let stats = &mut ledger.record.stats;
    match call {
        Call::TemplateList => stats.template_list_calls += 1,
        Call::Account(Step::QueryQuota) => stats.queryquota_calls += 1,
        Call::Account(step) => {
            if let Some(n) = step.counter(stats.code_calls.entry(caller.clone()).or_default()) {
                *n += 1;
            }
        }
    }
    caller
}

fn answer_step(sb: &Sandbox, step: Step, appid: &str, body: &Bytes) -> Result<Value, WxError> {
    match step {
        Step::Commit => commit(sb, appid, &object(body)?),
        Step::Submit => submit(sb, appid, &object(body)?),
        Step::Release => release(sb, appid, body),
        Step::VersionInfo => object(body).map(|_| version_info(sb.ledger().code.state(appid))),
        Step::Status => latest_audit(sb.ledger().code.state(appid)),
        Step::QueryQuota => Ok(queryquota(sb)),
    }
}

/// The component's own token, in either parameter; an authorizer's is 40001.
fn component(sb: &Sandbox, token: Option<(&'static str, String)>, path: &str) -> Result<(), WxError> {
    let (_, token) = token.ok_or_else(WxError::token_missing)?;
    let mut ledger = sb.ledger();
    ledger.check_component_token(&token, Instant::now())?;
    ledger.quota.count(&Owner::Component.label(), path, sb.config().daily_limit)
}

/// The appid of the authorized mini program whose token `access_token` carries. The component's
/// token is 40001; an owned account's 48001 (these calls are the platform's, on an authorizer's
/// behalf); an official account's 61007, as WeChat answers a call of a permission set (18, code
/// management) that the account cannot have granted.
fn mini_program(sb: &Sandbox, token: Option<(&'static str, String)>, path: &str) -> Result<String, WxError> {
    let (param, token) = token.ok_or_else(WxError::token_missing)?;
    let mut ledger = sb.ledger();
    let appid = match ledger.tokens.check(&token, Instant::now())? {
        Owner::Authorizer(appid) if param == "access_token" => appid.clone(),
        Owner::Authorizer(_) | Owner::Component => return Err(WxError::invalid_credential()),
        Owner::Account { .. } => return Err(WxError::new(48001, "api unauthorized")),
    };
    ledger.quota.count(&appid, path, sb.config().daily_limit)?;
    if !ledger.authorized(&appid)?.mini_program {
        return Err(WxError::new(61007, "api is unauthorized to component"));
    }
    Ok(appid)
}

/// A POST body: 44002 when empty (WeChat's "empty post data"), 47001 when not a JSON object.
fn object(body: &Bytes) -> Result<Body, WxError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(WxError::new(44002, "empty post data"));
    }
    serde_json::from_slice(body).map_err(|_| WxError::format("the body is not a JSON object"))
}

/// `gettemplatelist[?template_type=0|1]`: every configured template is a normal one (type 0).
fn templates(sb: &Sandbox, query: &str) -> Value {
    let wanted = query_param(query, "template_type").unwrap_or_else(|| "0".into());
    let list: Vec<Value> = sb
        .config()
        .templates
        .iter()
        .filter(|_| wanted == "0")
        .map(|id| {
            json!({
                "template_id": id,
                "user_version": format!("1.0.{id}"),
                "user_desc": format!("sandbox template {id}"),
                "create_time": TEMPLATE_EPOCH.saturating_add(*id),
                "template_type": 0,
            })
        })
        .collect();
    json!({ "errcode": 0, "errmsg": "ok", "template_list": list })
}

/// `commit {template_id, ext_json, user_version, user_desc}`: 85014 for a template that does not
/// exist, 85013 for an `ext_json` that is not a string holding a JSON object, or whose
/// `extAppid` is not this account's (the sandbox's strictness: a gateway that sends the object
/// itself, or forgets to put the account's appid in, is caught here). A missing `ext_json` is
/// accepted: a template may need none.
fn commit(sb: &Sandbox, appid: &str, body: &Body) -> Result<Value, WxError> {
    let template_id = match body.get("template_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| WxError::format("template_id must be a number"))?),
    };
    let template_id = template_id
        .filter(|id| sb.config().templates.contains(id))
        .ok_or_else(|| WxError::new(85014, "template_id not exist"))?;
    let ext_json = ext_json(appid, body.get("ext_json"))?;
    let user_version = match body.get("user_version") {
        Some(Value::String(v)) if !v.is_empty() => v.clone(),
        _ => return Err(WxError::invalid_args("user_version missing")),
    };
    let user_desc = match body.get("user_desc") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(d)) => d.clone(),
        Some(_) => return Err(WxError::format("user_desc must be a string")),
    };
    let version = CodeVersion { template_id, user_version, user_desc, ext_json, commit_time: unix_now() };
    sb.ledger().code.commit(appid, version, Instant::now());
    tracing::info!(authorizer = appid, template_id, "sandbox: code committed");
    Ok(json!({ "errcode": 0, "errmsg": "ok" }))
}

fn ext_json(appid: &str, value: Option<&Value>) -> Result<Option<String>, WxError> {
    let invalid = |why: &str| WxError::new(85013, format!("invalid ext_json: {why}"));
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text,
        Some(_) => return Err(invalid("it must be a string holding a JSON object")),
    };
    let parsed: Map<String, Value> = serde_json::from_str(text).map_err(|_| invalid("not a JSON object"))?;
    match parsed.get("extAppid") {
        None => {}
        Some(Value::String(ext)) if ext == appid => {}
        Some(_) => return Err(invalid("extAppid is not the authorizer's appid")),
    }
    Ok(Some(text.clone()))
}

/// `submit_audit {item_list?, version_desc?, ...}` → `{auditid}`; the verdict follows after the
/// audit delay. The other fields are WeChat's to judge and are not checked.
fn submit(sb: &Sandbox, appid: &str, body: &Body) -> Result<Value, WxError> {
    match body.get("item_list") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.len() <= MAX_ITEMS => {}
        Some(Value::Array(_)) => return Err(WxError::new(85023, "item_list count invalid")),
        Some(_) => return Err(WxError::format("item_list must be an array")),
    }
    let check_delay = sb.config().code_check_delay;
    let auditid = sb.ledger().code.submit(appid, check_delay, Instant::now(), unix_now())?;
    tracing::info!(authorizer = appid, auditid, "sandbox: audit submitted");
    audit::schedule(sb, appid, auditid);
    Ok(json!({ "errcode": 0, "errmsg": "ok", "auditid": auditid }))
}

/// `release` with the body `{}`: WeChat refuses an empty body (44002, its documentation's own
/// warning) and the sandbox anything but an empty object (47001).
fn release(sb: &Sandbox, appid: &str, body: &Bytes) -> Result<Value, WxError> {
    if !object(body)?.is_empty() {
        return Err(WxError::format("release takes the body {}"));
    }
    sb.ledger().code.release(appid, unix_now())?;
    tracing::info!(authorizer = appid, "sandbox: code released");
    Ok(json!({ "errcode": 0, "errmsg": "ok" }))
}

/// `getversioninfo`: the experience and the released version, each left out when there is none.
fn version_info(state: Option<&CodeState>) -> Value {
    let mut info = json!({ "errcode": 0, "errmsg": "ok" });
    if let Some(v) = state.and_then(|s| s.committed.as_ref()) {
        info["exp_info"] = json!({ "exp_time": v.commit_time, "exp_version": v.user_version, "exp_desc": v.user_desc });
    }
    if let Some(r) = state.and_then(|s| s.released.as_ref()) {
        info["release_info"] = json!({
            "release_time": r.release_time,
            "release_version": r.version.user_version,
            "release_desc": r.version.user_desc,
        });
    }
    info
}

/// `get_latest_auditstatus`; 85058 ("no valid audit_id exist", WeChat's answer) before any audit.
/// `reason` only when rejected or postponed and `ScreenShot` only when rejected, as WeChat sends.
fn latest_audit(state: Option<&CodeState>) -> Result<Value, WxError> {
    let audit = state.and_then(|s| s.audit.as_ref()).ok_or_else(|| WxError::new(85058, "no valid audit_id exist"))?;
    let mut status = json!({
        "errcode": 0,
        "errmsg": "ok",
        "auditid": audit.auditid,
        "status": audit.status.code(),
        "user_version": audit.version.user_version,
        "user_desc": audit.version.user_desc,
        "submit_audit_time": audit.submit_time,
    });
    if let Some(reason) = &audit.reason {
        status["reason"] = json!(reason);
    }
    if audit.status == super::code::AuditStatus::Rejected {
        status["ScreenShot"] = json!("");
    }
    Ok(status)
}

/// `queryquota`: the platform's monthly audit quota, the same whichever mini program asks.
fn queryquota(sb: &Sandbox) -> Value {
    let (rest, limit) = sb.ledger().code.quota();
    json!({
        "errcode": 0,
        "errmsg": "ok",
        "rest": rest,
        "limit": limit,
        "speedup_rest": SPEEDUP_LIMIT,
        "speedup_limit": SPEEDUP_LIMIT,
    })
}

#[cfg(test)]
mod tests;
