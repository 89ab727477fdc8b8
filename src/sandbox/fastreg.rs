//! Fast registration of a mini program (`/cgi-bin/component/fastregisterweapp?action=create`,
//! PROTOCOL.md §14): WeChat answers at once, creates the mini program when the legal person
//! confirms, and pushes `notify_third_fasteregister` (status 0, the new appid, an `auth_code`)
//! to the authorization-event URL. The sandbox's legal person confirms a moment later.

use std::time::Duration;

use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::push::unix_now;
use super::server::query_param;
use super::wx::{answer, WxError};
use super::{Sandbox, SandboxError};
use crate::appid::AppId;

pub(super) const PATH: &str = "/cgi-bin/component/fastregisterweapp";
/// How long the legal person takes to confirm: long enough that the call's answer comes first.
const CONFIRM_AFTER: Duration = Duration::from_millis(200);
const MAX_BODY: usize = 16 * 1024;
/// The fields an enterprise registration must carry.
const REQUIRED: [&str; 5] = ["name", "code", "code_type", "legal_persona_wechat", "legal_persona_name"];

/// What the registration said of the company, echoed in the push's `<info>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub code: String,
    pub code_type: i64,
    pub legal_persona_wechat: String,
    pub legal_persona_name: String,
    pub component_phone: String,
}

pub(super) async fn handle(sandbox: &Sandbox, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await.ok();
    let body: Option<Map<String, Value>> = body.and_then(|b| serde_json::from_slice(&b).ok());
    sandbox.ledger().record.stats.fast_registrations += 1;
    if parts.method != Method::POST {
        return WxError::new(43002, "require POST method").into_response();
    }
    let query = parts.uri.query().unwrap_or_default();
    let checked = check(sandbox, query, body.as_ref());
    let registration = match checked {
        Ok(r) => r,
        Err(e) => return answer(Err(e)),
    };
    let sandbox = sandbox.clone();
    tokio::spawn(async move {
        tokio::time::sleep(CONFIRM_AFTER).await;
        if let Err(e) = sandbox.fast_register(&registration).await {
            tracing::warn!(error = %e, "sandbox: fast registration push failed");
        }
    });
    answer(Ok(json!({ "errcode": 0, "errmsg": "ok" })))
}

fn check(sandbox: &Sandbox, query: &str, body: Option<&Map<String, Value>>) -> Result<Registration, WxError> {
    let token = query_param(query, "component_access_token").ok_or_else(WxError::token_missing)?;
    sandbox.ledger().check_component_token(&token, Instant::now())?;
    if query_param(query, "action").as_deref() != Some("create") {
        return Err(WxError::invalid_args("action must be create"));
    }
    let body = body.ok_or_else(|| WxError::format("the body is not a JSON object"))?;
    if let Some(missing) = REQUIRED.iter().find(|k| body.get(**k).is_none_or(|v| v.is_null() || v == "")) {
        return Err(WxError::invalid_args(&format!("{missing} missing")));
    }
    let text = |k: &str| match body.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let code_type = text("code_type").parse::<i64>().ok().filter(|t| (1..=3).contains(t));
    Ok(Registration {
        name: text("name"),
        code: text("code"),
        code_type: code_type.ok_or_else(|| WxError::invalid_args("code_type must be 1, 2 or 3"))?,
        legal_persona_wechat: text("legal_persona_wechat"),
        legal_persona_name: text("legal_persona_name"),
        component_phone: text("component_phone"),
    })
}

impl Sandbox {
    /// The legal person confirms a fast registration: a new mini program is created, authorized
    /// to the component, and `notify_third_fasteregister` (status 0, with its `auth_code`) is
    /// pushed. Returns the new mini program's appid.
    pub async fn fast_register(&self, registration: &Registration) -> Result<AppId, SandboxError> {
        let appid = AppId::parse(&format!("wx{}", hex::encode(rand::random::<[u8; 8]>())))
            .expect("wx and 16 hex digits is an appid");
        let code = {
            let mut ledger = self.ledger();
            let event = ledger.authorize(&appid.as_str(), Instant::now(), unix_now(), None);
            if let Some(account) = ledger.authorizers.get_mut(&*appid.as_str()) {
                account.mini_program = true;
            }
            event.code
        };
        tracing::info!(authorizer = %appid, "sandbox: mini program fast-registered");
        let message = message(self.appid(), &appid.as_str(), 0, &code, registration);
        let _turn = self.inner.push_turn.lock().await;
        self.send(&message).await.map(|()| appid)
    }
}

/// WeChat's push, lower-case fields and an `<info>` block as documented.
pub(crate) fn message(component: &str, appid: &str, status: i64, code: &str, r: &Registration) -> String {
    format!(
        "<xml><AppId><![CDATA[{component}]]></AppId><CreateTime>{}</CreateTime>\
         <InfoType><![CDATA[notify_third_fasteregister]]></InfoType>\
         <appid><![CDATA[{appid}]]></appid><status>{status}</status>\
         <auth_code><![CDATA[{code}]]></auth_code><msg><![CDATA[OK]]></msg>\
         <info><name><![CDATA[{}]]></name><code><![CDATA[{}]]></code><code_type>{}</code_type>\
         <legal_persona_wechat><![CDATA[{}]]></legal_persona_wechat>\
         <legal_persona_name><![CDATA[{}]]></legal_persona_name>\
         <component_phone><![CDATA[{}]]></component_phone></info></xml>",
        unix_now(),
        cdata(&r.name),
        cdata(&r.code),
        r.code_type,
        cdata(&r.legal_persona_wechat),
        cdata(&r.legal_persona_name),
        cdata(&r.component_phone),
    )
}

/// A CDATA section cannot hold `]]>`.
fn cdata(text: &str) -> String {
    text.replace("]]>", "]]]]><![CDATA[>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_carries_wechats_fields() {
        let r = Registration {
            name: "Shop ]]> Ltd".into(),
            code: "91440300".into(),
            code_type: 1,
            legal_persona_wechat: "boss".into(),
            legal_persona_name: "Li".into(),
            component_phone: "0755".into(),
        };
        let xml = message("wx0000000000000001", "wx1111111111111111", 0, "code@@@x", &r);
        let fields = crate::xml::parse(&xml).unwrap();
        assert_eq!(fields.get("InfoType"), Some("notify_third_fasteregister"));
        assert_eq!(fields.get("appid"), Some("wx1111111111111111"));
        assert_eq!(fields.get("status"), Some("0"));
        assert_eq!(fields.get("auth_code"), Some("code@@@x"));
        assert!(xml.contains("<name><![CDATA[Shop ]]]]><![CDATA[> Ltd]]></name>"));
    }
}
