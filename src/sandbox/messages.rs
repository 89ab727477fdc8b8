//! Messages and events pushed to the gateway's message URL (`/wxgate/callback/$APPID$`), sealed
//! as WeChat seals them, and WeChat's whole release check (全网发布, PROTOCOL.md §10) run against
//! the gateway, step by step.

use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;

use super::push::unix_now;
use super::{Sandbox, SandboxError};
use crate::appid::AppId;
use crate::crypto::MsgCrypt;
use crate::messages::release_check::{QUERY_AUTH_PREFIX, TEXT_PROBE};
use crate::test_accounts::TEST_ACCOUNTS;
use crate::xml;

/// How long the release check waits for the `_from_api` customer-service message.
const CUSTOM_SEND_WAIT: Duration = Duration::from_secs(10);
/// The event the release check pushes.
const PROBE_EVENT: &str = "LOCATION";

/// What to push: a text (`content`), an event (`event`), or another MsgType.
#[derive(Debug, Clone, Default)]
pub struct MessageSpec {
    pub msg_type: String,
    pub content: Option<String>,
    pub event: Option<String>,
    /// The sender; a fixed sandbox user when unset.
    pub openid: Option<String>,
    /// For a text or media message; random when unset. Push the same id twice to play a retry.
    pub msg_id: Option<u64>,
}

/// What the gateway answered, with the passive reply verified and decrypted.
#[derive(Debug, Clone, Serialize)]
pub struct PushOutcome {
    pub status: u16,
    /// The body as received (`success`, or the encrypted reply).
    pub body: String,
    /// The decrypted passive reply, when the body was one.
    pub reply: Option<String>,
    /// The reply's `Content`, for a text reply.
    pub reply_content: Option<String>,
    /// Why the reply could not be read (bad signature, not decryptable…).
    pub reply_error: Option<String>,
    pub elapsed_ms: u64,
    /// The message pushed, as WeChat would have sent it.
    pub message: String,
}

impl PushOutcome {
    pub(crate) fn new(status: u16, body: String, started: Instant, message: &str) -> Self {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let (reply, reply_content, reply_error) = (None, None, None);
        Self { status, body, reply, reply_content, reply_error, elapsed_ms, message: message.to_owned() }
    }

    /// Whether the body is a passive reply rather than `success` or nothing.
    pub(crate) fn has_reply(&self) -> bool {
        self.status == 200 && !self.body.trim().is_empty() && self.body != "success"
    }

    pub(crate) fn set_reply(&mut self, reply: Result<String, String>) {
        match reply {
            Ok(reply) => {
                self.reply_content = xml::parse(&reply).ok().and_then(|f| f.get("Content").map(str::to_owned));
                self.reply = Some(reply);
            }
            Err(e) => self.reply_error = Some(e),
        }
    }
}

/// A passive reply's fields; the reason, as [`PushOutcome::reply_error`] gives it, if it has none.
pub(crate) fn parse_reply(body: &str) -> Result<xml::Fields, String> {
    xml::parse(body).map_err(|e| format!("the reply is neither `success` nor XML: {e}"))
}

/// Verifies and decrypts an encrypted passive reply as WeChat does; its Nonce must echo the push's.
pub(crate) fn open_reply(crypt: &MsgCrypt, fields: &xml::Fields, nonce: &str) -> Result<String, String> {
    let get = |name: &'static str| fields.get(name).filter(|v| !v.is_empty()).ok_or(format!("the reply has no {name}"));
    let (encrypt, signature, timestamp, reply_nonce) =
        (get("Encrypt")?, get("MsgSignature")?, get("TimeStamp")?, get("Nonce")?);
    if reply_nonce != nonce {
        return Err("the reply's Nonce is not the push's".into());
    }
    crypt.open(timestamp, reply_nonce, encrypt, signature).map_err(|e| e.to_string())
}

/// One step of the release check.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseReport {
    pub appid: String,
    pub passed: bool,
    pub steps: Vec<Step>,
}

/// A customer-service text the sandbox received (`/cgi-bin/message/custom/send`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentText {
    /// Whose token it was sent with.
    pub authorizer: String,
    pub touser: String,
    pub content: String,
}

pub const SANDBOX_OPENID: &str = "o_sandbox_user_000000000001";

/// The original id (gh_...) of an account: WeChat's for the test accounts, else made up as
/// `api_get_authorizer_info` makes it up.
pub fn original_id(appid: &AppId) -> String {
    match TEST_ACCOUNTS.iter().find(|(a, _)| *a == appid.as_str()) {
        Some((_, gh)) => (*gh).to_owned(),
        None => {
            let text = appid.as_str();
            let digits = text.trim_start_matches("wx");
            format!("gh_{}", &digits[..digits.len().min(12)])
        }
    }
}

/// The message as WeChat would send it to the account's server.
pub fn message_xml(appid: &AppId, spec: &MessageSpec) -> String {
    let openid = spec.openid.as_deref().unwrap_or(SANDBOX_OPENID);
    let mut xml = format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[{}]]></MsgType>",
        original_id(appid),
        cdata(openid),
        unix_now(),
        cdata(&spec.msg_type),
    );
    if spec.msg_type == "event" {
        xml.push_str(&format!("<Event><![CDATA[{}]]></Event>", cdata(spec.event.as_deref().unwrap_or("subscribe"))));
    } else {
        if let Some(content) = &spec.content {
            xml.push_str(&format!("<Content><![CDATA[{}]]></Content>", cdata(content)));
        }
        let id = spec.msg_id.unwrap_or_else(|| rand::thread_rng().gen_range(1u64 << 60..1u64 << 62));
        xml.push_str(&format!("<MsgId>{id}</MsgId>"));
    }
    xml.push_str("</xml>");
    xml
}

fn cdata(s: &str) -> String {
    s.replace("]]>", "]]]]><![CDATA[>")
}

impl Sandbox {
    /// The message URL beside the authorization-event URL: `.../wxgate/callback/{appid}`.
    pub fn message_url(&self, appid: &AppId) -> Option<String> {
        let callback = self.inner.config.callback_url.as_deref()?;
        let base = callback.strip_suffix("component")?;
        Some(format!("{base}{appid}"))
    }

    /// Pushes one message or event to the account's message URL and reads the answer.
    pub async fn push_message(&self, appid: &AppId, spec: &MessageSpec) -> Result<PushOutcome, SandboxError> {
        let message = message_xml(appid, spec);
        self.push_raw_message(appid, &message, spec.openid.as_deref().unwrap_or(SANDBOX_OPENID)).await
    }

    /// Pushes `message` (already WeChat's XML) as WeChat does: sealed with the component's key,
    /// `openid` and both signatures in the query, `<ToUserName>` and `<Encrypt>` in the body.
    pub async fn push_raw_message(
        &self,
        appid: &AppId,
        message: &str,
        openid: &str,
    ) -> Result<PushOutcome, SandboxError> {
        let url = self.message_url(appid).ok_or_else(|| SandboxError::Push("no callback URL is configured".into()))?;
        let crypt = self.inner.pusher.crypt();
        let timestamp = unix_now().to_string();
        let nonce = super::push::nonce();
        let sealed = crypt.seal(message, &timestamp, &nonce);
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("signature", &self.inner.pusher.plain_signature(&timestamp, &nonce))
            .append_pair("timestamp", &timestamp)
            .append_pair("nonce", &nonce)
            .append_pair("openid", openid)
            .append_pair("encrypt_type", "aes")
            .append_pair("msg_signature", &sealed.msg_signature)
            .finish();
        let body = format!(
            "<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
            original_id(appid),
            sealed.encrypt
        );
        let started = Instant::now();
        let (status, text) = self.inner.pusher.post_xml(&format!("{url}?{query}"), body).await?;
        let mut outcome = PushOutcome::new(status, text, started, message);
        if outcome.has_reply() {
            outcome.set_reply(parse_reply(&outcome.body).and_then(|f| open_reply(crypt, &f, &nonce)));
        }
        Ok(outcome)
    }

    /// Customer-service texts received, oldest first.
    pub fn sent_texts(&self) -> Vec<SentText> {
        self.ledger().record.sent_texts()
    }

    /// WeChat's release check for one test account: a ticket push, the text probe, an event, and
    /// QUERY_AUTH_CODE with its customer-service message.
    pub async fn release_check(&self, appid: &AppId) -> ReleaseReport {
        let mut steps = Vec::new();
        let ticket = self.push_ticket().await;
        steps.push(Step {
            name: "ticket",
            passed: ticket.is_ok(),
            detail: ticket.err().map_or("answered success".into(), |e| e.to_string()),
        });
        let gh = original_id(appid);
        let text = MessageSpec { msg_type: "text".into(), content: Some(TEXT_PROBE.into()), ..MessageSpec::default() };
        steps.push(self.reply_step("text", appid, &text, &format!("{TEXT_PROBE}_callback"), &gh).await);
        let event = MessageSpec { msg_type: "event".into(), event: Some(PROBE_EVENT.into()), ..MessageSpec::default() };
        steps.push(self.reply_step("event", appid, &event, &format!("{PROBE_EVENT}from_callback"), &gh).await);
        steps.push(self.query_auth_step(appid).await);
        ReleaseReport { appid: appid.to_string(), passed: steps.iter().all(|s| s.passed), steps }
    }

    async fn reply_step(&self, name: &'static str, appid: &AppId, spec: &MessageSpec, want: &str, gh: &str) -> Step {
        let fail = |detail: String| Step { name, passed: false, detail };
        let outcome = match self.push_message(appid, spec).await {
            Ok(o) => o,
            Err(e) => return fail(e.to_string()),
        };
        if outcome.status != 200 {
            return fail(format!("HTTP {}", outcome.status));
        }
        let Some(reply) = &outcome.reply else {
            return fail(outcome.reply_error.unwrap_or_else(|| format!("no passive reply (body {:?})", outcome.body)));
        };
        let fields = xml::parse(reply).unwrap_or_default();
        let checks = [("MsgType", "text"), ("Content", want), ("ToUserName", SANDBOX_OPENID), ("FromUserName", gh)];
        for (field, value) in checks {
            if fields.get(field) != Some(value) {
                return fail(format!("reply {field} is {:?}, want {value:?}", fields.get(field)));
            }
        }
        Step { name, passed: true, detail: format!("passive reply {want:?} in {} ms", outcome.elapsed_ms) }
    }

    async fn query_auth_step(&self, appid: &AppId) -> Step {
        let name = "query_auth_code";
        let fail = |detail: String| Step { name, passed: false, detail };
        let code = self.issue_test_code(appid);
        let spec = MessageSpec {
            msg_type: "text".into(),
            content: Some(format!("{QUERY_AUTH_PREFIX}{code}")),
            ..MessageSpec::default()
        };
        let outcome = match self.push_message(appid, &spec).await {
            Ok(o) => o,
            Err(e) => return fail(e.to_string()),
        };
        if outcome.status != 200 || !(outcome.body.is_empty() || outcome.body == "success") {
            return fail(format!("answered HTTP {} {:?}, not empty or success", outcome.status, outcome.body));
        }
        let want = SentText {
            authorizer: appid.to_string(),
            touser: SANDBOX_OPENID.to_owned(),
            content: format!("{code}_from_api"),
        };
        let deadline = Instant::now() + CUSTOM_SEND_WAIT;
        while Instant::now() < deadline {
            if self.sent_texts().contains(&want) {
                return Step {
                    name,
                    passed: true,
                    detail: "code exchanged and `<code>_from_api` sent with its token".into(),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fail(format!("no customer-service text `<code>_from_api` with {appid}'s token within {CUSTOM_SEND_WAIT:?}"))
    }

    /// A code for a test account, exchangeable once with `api_query_auth`; nothing is pushed to
    /// the authorization-event URL.
    fn issue_test_code(&self, appid: &AppId) -> String {
        self.ledger().authorize(&appid.as_str(), tokio::time::Instant::now(), unix_now(), None).code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_wechats_fields() {
        let appid = AppId::parse("wx570bc396a51b8ff8").unwrap();
        let text = MessageSpec {
            msg_type: "text".into(),
            content: Some("hi]]>".into()),
            msg_id: Some(7),
            ..Default::default()
        };
        let f = xml::parse(&message_xml(&appid, &text)).unwrap();
        assert_eq!(f.get("ToUserName"), Some("gh_3c884a361561"));
        assert_eq!(f.get("FromUserName"), Some(SANDBOX_OPENID));
        assert_eq!(f.get("Content"), Some("hi]]>"));
        assert_eq!(f.get("MsgId"), Some("7"));
        let event = MessageSpec { msg_type: "event".into(), event: Some("CLICK".into()), ..Default::default() };
        let f = xml::parse(&message_xml(&AppId::parse("wx1111111111111111").unwrap(), &event)).unwrap();
        assert_eq!(f.get("ToUserName"), Some("gh_111111111111"));
        assert_eq!(f.get("Event"), Some("CLICK"));
        assert_eq!(f.get("MsgId"), None);
    }
}
