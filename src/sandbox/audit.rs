//! WeChat's side of an audit after `submit_audit`: the verdict after the audit delay, pushed to
//! the account's message URL as `weapp_audit_success` / `weapp_audit_fail` (some postponed first
//! with `weapp_audit_delay`), and the knobs tests turn: quota, weekly limit, silent verdicts.

use sha1::{Digest, Sha1};

use super::code::{AuditPlan, CodeState, Verdict};
use super::config::SandboxConfig;
use super::messages::original_id;
use super::push::unix_now;
use super::Sandbox;
use crate::appid::AppId;

/// The reason a rejection gives, in WeChat's language so that a gateway's UTF-8 is exercised.
pub const REJECT_REASON: &str = "小程序功能不完整，请补充页面内容后再提交审核（wxgate 沙箱）";
/// The reason a postponement gives.
pub const DELAY_REASON: &str = "审核任务较多，本次审核将延后完成（wxgate 沙箱）";
/// Who audit events come from: WeChat puts an openid-like sender in `FromUserName`.
const AUDIT_SENDER: &str = "o_sandbox_wxa_audit_0000001";

/// One of the audit events WeChat pushes (PROTOCOL.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuditEvent<'a> {
    Success,
    Fail(&'a str),
    Delay(&'a str),
}

/// The event as WeChat's XML, sent to the account's message URL.
pub(crate) fn event_xml(appid: &AppId, event: AuditEvent<'_>, unix: u64) -> String {
    let (name, detail) = match event {
        AuditEvent::Success => ("weapp_audit_success", format!("<SuccTime>{unix}</SuccTime>")),
        AuditEvent::Fail(reason) => (
            "weapp_audit_fail",
            format!(
                "<Reason><![CDATA[{}]]></Reason><FailTime>{unix}</FailTime><ScreenShot><![CDATA[]]></ScreenShot>",
                cdata(reason)
            ),
        ),
        AuditEvent::Delay(reason) => (
            "weapp_audit_delay",
            format!("<Reason><![CDATA[{}]]></Reason><DelayTime>{unix}</DelayTime>", cdata(reason)),
        ),
    };
    format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{AUDIT_SENDER}]]></FromUserName>\
         <CreateTime>{unix}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[{name}]]></Event>{detail}</xml>",
        original_id(appid),
    )
}

fn cdata(s: &str) -> String {
    s.replace("]]>", "]]]]><![CDATA[>")
}

/// 0..1 from a hash of the appid, the same on every run, so that a test can tell which accounts
/// a share picks; the salt keeps the rejected and the postponed independent.
fn share(salt: &str, appid: &AppId) -> f64 {
    let digest = Sha1::digest(format!("{salt}:{appid}"));
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head) as f64 / (u64::MAX as f64 + 1.0)
}

impl SandboxConfig {
    /// How this account's audits end unless a test sets another plan
    /// ([`Sandbox::set_audit_plan`]): rejected if its hash falls under `reject_share`,
    /// postponed first if under `delay_share`.
    pub fn audit_plan(&self, appid: &AppId) -> AuditPlan {
        AuditPlan {
            delayed: share("delay", appid) < self.delay_share,
            rejected: share("reject", appid) < self.reject_share,
        }
    }
}

/// Ends audit `auditid` of `appid` after the audit delay (twice that if postponed). The state
/// changes before the push, so that a gateway that acts on the event finds WeChat agreeing.
pub(super) fn schedule(sb: &Sandbox, appid: &str, auditid: u64) {
    let Ok(appid) = AppId::parse(appid) else { return };
    let sb = sb.clone();
    let mut shutdown = sb.inner.shutdown.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            () = run(&sb, &appid, auditid) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });
}

async fn run(sb: &Sandbox, appid: &AppId, auditid: u64) {
    let delay = sb.config().audit_delay;
    tokio::time::sleep(delay).await;
    if sb.audit_plan(appid).delayed {
        if !sb.ledger().code.postpone(&appid.as_str(), auditid, DELAY_REASON, unix_now()) {
            return;
        }
        sb.push_audit_event(appid, AuditEvent::Delay(DELAY_REASON)).await;
        tokio::time::sleep(delay).await;
    }
    let rejected = sb.audit_plan(appid).rejected;
    let verdict = if rejected { Verdict::Reject(REJECT_REASON.into()) } else { Verdict::Approve };
    if !sb.ledger().code.decide(&appid.as_str(), auditid, &verdict, unix_now()) {
        return;
    }
    tracing::info!(authorizer = %appid, auditid, rejected, "sandbox: audit decided");
    let event = if rejected { AuditEvent::Fail(REJECT_REASON) } else { AuditEvent::Success };
    sb.push_audit_event(appid, event).await;
}

impl Sandbox {
    /// Sends an audit event as WeChat sends messages. A failure is counted and logged, not
    /// retried: the gateway is expected to poll `get_latest_auditstatus` when no word comes.
    async fn push_audit_event(&self, appid: &AppId, event: AuditEvent<'_>) {
        if self.ledger().code.silent {
            self.ledger().record.stats.audit_events_silenced += 1;
            return;
        }
        if self.message_url(appid).is_none() {
            return;
        }
        self.ledger().record.stats.audit_events_pushed += 1;
        let message = event_xml(appid, event, unix_now());
        let failure = match self.push_raw_message(appid, &message, AUDIT_SENDER).await {
            Ok(outcome) if outcome.status == 200 => return,
            Ok(outcome) => format!("HTTP {}", outcome.status),
            Err(e) => e.to_string(),
        };
        self.ledger().record.stats.audit_events_failed += 1;
        tracing::warn!(authorizer = %appid, error = failure, "sandbox: audit event push failed");
    }

    /// What `submit_audit` may spend from now on this month (`queryquota`'s `rest`).
    pub fn set_audit_quota(&self, rest: u32) {
        self.ledger().code.set_quota_rest(rest);
    }

    /// `(rest, limit)` of the platform's monthly audit quota.
    pub fn audit_quota(&self) -> (u32, u32) {
        self.ledger().code.quota()
    }

    /// How many audits the platform may submit in 7 days before 85085; None: no such limit.
    pub fn set_submits_per_week(&self, per_week: Option<u32>) {
        self.ledger().code.set_per_week(per_week);
    }

    /// Whether verdicts are pushed to the message URL (the default) or only found by polling.
    pub fn set_audit_push(&self, push: bool) {
        self.ledger().code.silent = !push;
    }

    /// How this account's audits end from now on; None goes back to the config's shares. A
    /// plan set during an audit applies to the steps still to come.
    pub fn set_audit_plan(&self, appid: &AppId, plan: Option<AuditPlan>) {
        let mut ledger = self.ledger();
        match plan {
            Some(plan) => ledger.code.plans.insert(appid.to_string(), plan),
            None => ledger.code.plans.remove(&*appid.as_str()),
        };
    }

    /// How this account's audits end: a test's plan, else [`SandboxConfig::audit_plan`].
    pub fn audit_plan(&self, appid: &AppId) -> AuditPlan {
        let set = self.ledger().code.plans.get(&*appid.as_str()).copied();
        set.unwrap_or_else(|| self.config().audit_plan(appid))
    }

    /// With `false`, the account has no name, icon or description yet: `submit_audit` answers
    /// 86002, which retrying will not mend.
    pub fn set_profile_complete(&self, appid: &AppId, complete: bool) {
        let mut ledger = self.ledger();
        match complete {
            true => ledger.code.incomplete.remove(&*appid.as_str()),
            false => ledger.code.incomplete.insert(appid.to_string()),
        };
    }

    /// The account's code as WeChat holds it; None before its first commit.
    pub fn code_state(&self, appid: &AppId) -> Option<CodeState> {
        self.ledger().code.state(&appid.as_str()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml;

    fn appid(n: u32) -> AppId {
        AppId::parse(&format!("wx{n:016x}")).unwrap()
    }

    #[test]
    fn shares_pick_stable_accounts_in_proportion() {
        let config = SandboxConfig { reject_share: 0.3, delay_share: 0.0, ..SandboxConfig::demo() };
        let rejected = (0..1000).filter(|n| config.audit_plan(&appid(*n)).rejected).count();
        assert!((220..380).contains(&rejected), "{rejected} of 1000");
        assert_eq!(config.audit_plan(&appid(7)), config.audit_plan(&appid(7)));
        assert!((0..1000).all(|n| !config.audit_plan(&appid(n)).delayed));
        let all = SandboxConfig { reject_share: 1.0, delay_share: 1.0, ..config };
        assert_eq!(all.audit_plan(&appid(3)), AuditPlan { delayed: true, rejected: true });
    }

    #[test]
    fn events_have_wechats_fields() {
        let a = AppId::parse("wx1111111111111111").unwrap();
        let f = xml::parse(&event_xml(&a, AuditEvent::Success, 17)).unwrap();
        assert_eq!(f.get("ToUserName"), Some("gh_111111111111"));
        assert_eq!((f.get("MsgType"), f.get("Event")), (Some("event"), Some("weapp_audit_success")));
        assert_eq!((f.get("SuccTime"), f.get("CreateTime")), (Some("17"), Some("17")));
        let f = xml::parse(&event_xml(&a, AuditEvent::Fail("no ]]> good"), 18)).unwrap();
        assert_eq!((f.get("Event"), f.get("Reason")), (Some("weapp_audit_fail"), Some("no ]]> good")));
        assert_eq!(f.get("FailTime"), Some("18"));
        let f = xml::parse(&event_xml(&a, AuditEvent::Delay(DELAY_REASON), 19)).unwrap();
        assert_eq!((f.get("Event"), f.get("Reason")), (Some("weapp_audit_delay"), Some(DELAY_REASON)));
        assert_eq!(f.get("DelayTime"), Some("19"));
    }
}
