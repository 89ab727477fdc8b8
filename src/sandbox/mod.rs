//! A local stand-in for api.weixin.qq.com that validates as strictly as WeChat, for tests and `wxgate demo`.
//!
//! It issues short-lived tokens, pushes tickets and authorization events to the gateway's callback,
//! rotates refresh tokens and injects faults, so that a gateway bug shows up as a WeChat error.
//! State lives in one [`Ledger`](ledger::Ledger) behind a `std::sync::Mutex`, never held across
//! `.await`. Routes are listed in [`server`].

mod api;
mod audit;
mod code;
mod component;
mod config;
mod control;
mod fastreg;
mod faults;
mod ledger;
mod messages;
mod own_server;
mod owned;
mod pages;
mod push;
mod quota;
mod record;
mod server;
mod sns;
mod ticker;
mod tokens;
mod wx;
mod wxa;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio::time::Instant;

pub use api::{media_content, MAX_MEDIA_BYTES};
pub use audit::{DELAY_REASON, REJECT_REASON};
pub use code::{Audit, AuditPlan, AuditStatus, CodeState, CodeVersion, Released};
pub use config::{Faults, OwnedAccount, SandboxConfig, DEMO_AUTHORIZER_APPID, DEMO_COMPONENT_APPID, DEMO_OWNED_APPID};
pub use fastreg::Registration;
pub use messages::{original_id, MessageSpec, PushOutcome, ReleaseReport, SentText, Step, SANDBOX_OPENID};
pub use own_server::{AccountPush, MessageMode, UrlCheck};
pub use record::{CodeCalls, SeenRequest, StableTokenCalls, Stats, MAX_SEEN};

use crate::appid::AppId;
use crate::crypto::MsgCrypt;
use ledger::{AuthEvent, Ledger, Limits};
use push::Pusher;
use tokens::{Owner, TokenEndpoint};

/// Why a sandbox operation failed. Messages carry no token, ticket or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The gateway did not answer a push with HTTP 200 and `success`. The state change the push
    /// announced (new ticket, new code, revocation) has happened all the same, as with WeChat.
    #[error("push to the callback URL failed: {0}")]
    Push(String),
    #[error("{0} has not authorized the component")]
    NotAuthorized(AppId),
    #[error("{0} is not one of the sandbox's owned accounts")]
    NotOwned(AppId),
}

/// A running sandbox; cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: SandboxConfig,
    addr: SocketAddr,
    accounts: owned::Accounts,
    ledger: Mutex<Ledger>,
    pusher: Pusher,
    /// One push at a time, so that tickets and events arrive in the order they were issued.
    push_turn: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
}

impl Sandbox {
    /// Serves on `listener` and starts the ticket pusher, both on the current runtime. The first
    /// ticket is pushed at once; a gateway started later gets one at the next interval, or call
    /// [`Sandbox::push_ticket`] when it listens. Without a callback URL the ticket never rotates
    /// (read it with [`Sandbox::current_ticket`]).
    pub async fn start(config: SandboxConfig, listener: tokio::net::TcpListener) -> std::io::Result<Sandbox> {
        let addr = listener.local_addr()?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, problems.join("; ")));
        }
        let crypt = MsgCrypt::new(&config.token, &config.encoding_aes_key, &config.component_appid.as_str())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let accounts = owned::Accounts::new(&config.accounts)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let limits =
            Limits { lifetime: config.token_lifetime, grace: config.grace, rotate: config.rotate_refresh_tokens };
        let pusher = Pusher::new(crypt, config.token.clone(), config.callback_url.clone());
        let mut ledger = Ledger::new(limits);
        ledger.code = code::CodeBook::new(config.audit_quota, config.submits_per_week);
        let (shutdown, _) = watch::channel(false);
        let sandbox = Sandbox {
            inner: Arc::new(Inner {
                config,
                addr,
                accounts,
                ledger: Mutex::new(ledger),
                pusher,
                push_turn: tokio::sync::Mutex::new(()),
                shutdown,
            }),
        };
        server::spawn(sandbox.clone(), listener, sandbox.inner.shutdown.subscribe());
        ticker::spawn(sandbox.clone(), sandbox.inner.shutdown.subscribe());
        Ok(sandbox)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://IP:PORT`, with a loopback address when bound to all interfaces.
    pub fn base_url(&self) -> String {
        let mut addr = self.inner.addr;
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
            IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
            _ => {}
        }
        format!("http://{addr}")
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Stops the server and the pusher; connections in flight finish first.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Pushes a new ticket now; from this moment only it is accepted by `api_component_token`.
    pub async fn push_ticket(&self) -> Result<(), SandboxError> {
        let _turn = self.inner.push_turn.lock().await;
        let ticket = {
            let mut ledger = self.ledger();
            ledger.record.stats.tickets_pushed += 1;
            ledger.new_ticket()
        };
        self.send(&push::ticket_message(self.appid(), &ticket)).await?;
        self.ledger().record.stats.tickets_delivered += 1;
        Ok(())
    }

    /// An owner authorizes: creates the account if new, issues a single-use auth code (600 s),
    /// pushes `authorized` (`updateauthorized` if it already was) and returns the code.
    pub async fn authorize(&self, authorizer: &AppId) -> Result<String, SandboxError> {
        let event = self.authorize_event(authorizer, None);
        self.push_event(authorizer, &event).await?;
        Ok(event.code)
    }

    /// [`Sandbox::authorize`] without the push: the browser-redirect path.
    pub fn issue_auth_code(&self, authorizer: &AppId) -> String {
        self.authorize_event(authorizer, None).code
    }

    /// The account revokes: its tokens and refresh token stop working at once; pushes `unauthorized`.
    pub async fn unauthorize(&self, authorizer: &AppId) -> Result<(), SandboxError> {
        if !self.ledger().unauthorize(&authorizer.as_str()) {
            return Err(SandboxError::NotAuthorized(*authorizer));
        }
        tracing::info!(authorizer = %authorizer, "sandbox: authorization revoked");
        let _turn = self.inner.push_turn.lock().await;
        self.send(&push::unauthorized_message(self.appid(), &authorizer.as_str())).await
    }

    /// The account revokes and WeChat's push never arrives (the gateway was down, or the push
    /// failed every retry): only `api_get_authorizer_list` tells. `false` if it had not authorized.
    pub fn unauthorize_silently(&self, authorizer: &AppId) -> bool {
        self.ledger().unauthorize(&authorizer.as_str())
    }

    /// What `api_get_authorizer_info` reports of the account from now on: its `account_status`
    /// (19 frozen, 14 closed, ...) and whether it is a mini program. `false` for an unknown account.
    pub fn set_account(&self, authorizer: &AppId, account_status: i64, mini_program: bool) -> bool {
        let mut ledger = self.ledger();
        let Some(account) = ledger.authorizers.get_mut(&*authorizer.as_str()) else { return false };
        account.account_status = account_status;
        account.mini_program = mini_program;
        true
    }

    /// The `gh_` id the sandbox reports for an account.
    pub fn user_name(authorizer: &AppId) -> String {
        component::user_name(&authorizer.as_str())
    }

    /// The current access token of that account (None: the component's) answers 40001 from
    /// now on, as if another party had refreshed it and its grace had passed: its authorizer
    /// token, and an owned account's from either `stable_token` or `/cgi-bin/token`.
    pub fn revoke_access_token(&self, account: Option<&AppId>) {
        let owners = match account.map(AppId::as_str) {
            None => vec![Owner::Component],
            Some(appid) => vec![
                Owner::Authorizer(appid.to_string()),
                Owner::account(&appid, TokenEndpoint::StableToken),
                Owner::account(&appid, TokenEndpoint::Token),
            ],
        };
        let (mut ledger, now) = (self.ledger(), Instant::now());
        for owner in &owners {
            ledger.tokens.revoke_current(owner, now);
        }
    }

    /// Applies to the token endpoints and API calls from the next call on.
    pub fn set_faults(&self, faults: Faults) {
        self.ledger().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.ledger().faults.clone()
    }

    /// The counters; the audit quota and the accounts in audit as they stand now.
    pub fn stats(&self) -> Stats {
        let ledger = self.ledger();
        let mut stats = ledger.record.stats.clone();
        stats.audit_quota_rest = ledger.code.quota().0;
        stats.max_in_audit_or_committed = ledger.code.max_in_flight() as u64;
        stats
    }

    /// API calls seen (not the component endpoints), oldest first, at most [`MAX_SEEN`].
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.ledger().record.seen()
    }

    /// The JS-SDK ticket of that kind (`jsapi`, `wx_card`) issued last for the authorizer, if it
    /// still works, for tests to check a `wx.config` signature against.
    pub fn current_js_ticket(&self, authorizer: &AppId, kind: &str) -> Option<String> {
        let ledger = self.ledger();
        let owner = Owner::Authorizer(format!("{authorizer}:{kind}"));
        let ticket = ledger.js_tickets.current(&owner)?;
        ledger.js_tickets.check(ticket, Instant::now()).ok().map(|_| ticket.to_owned())
    }

    /// Whether a JS-SDK ticket of that authorizer still works (issued, not expired, not retired).
    pub fn js_ticket_works(&self, authorizer: &AppId, kind: &str, ticket: &str) -> bool {
        let owner = Owner::Authorizer(format!("{authorizer}:{kind}"));
        self.ledger().js_tickets.check(ticket, Instant::now()).is_ok_and(|o| *o == owner)
    }

    /// The refresh token the sandbox accepts now for this authorizer.
    pub fn refresh_token(&self, authorizer: &AppId) -> Option<String> {
        let ledger = self.ledger();
        ledger.authorized(&authorizer.as_str()).ok()?.refresh_token.clone()
    }

    /// The one ticket `api_component_token` accepts now, for tests that run without a gateway.
    pub fn current_ticket(&self) -> Option<String> {
        self.ledger().ticket().map(str::to_owned)
    }

    /// Stops or resumes the periodic ticket pushes (`api_start_push_ticket` resumes them too).
    pub fn pushes_paused(&self, paused: bool) {
        self.ledger().paused = paused;
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic elsewhere leaves the ledger consistent (each change is one short critical
        // section), so a poisoned lock is still usable.
        self.inner.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn appid(&self) -> &str {
        self.inner.pusher.appid()
    }

    fn authorize_event(&self, authorizer: &AppId, pre_auth: Option<String>) -> AuthEvent {
        let event = self.ledger().authorize(&authorizer.as_str(), Instant::now(), push::unix_now(), pre_auth);
        tracing::info!(authorizer = %authorizer, info_type = event.info_type, "sandbox: account authorized");
        event
    }

    async fn push_event(&self, authorizer: &AppId, event: &AuthEvent) -> Result<(), SandboxError> {
        let message = push::authorized_message(
            self.appid(),
            event.info_type,
            &authorizer.as_str(),
            &event.code,
            &event.pre_auth_code,
        );
        let _turn = self.inner.push_turn.lock().await;
        self.send(&message).await
    }

    /// Sends one push, counting a failure; the caller holds the push turn.
    async fn send(&self, message: &str) -> Result<(), SandboxError> {
        let result = self.inner.pusher.send(message).await;
        if let Err(e) = &result {
            self.ledger().record.stats.pushes_failed += 1;
            tracing::warn!(error = %e, "sandbox: push failed");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn base_url_uses_loopback_for_unspecified() {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sb = Sandbox::start(SandboxConfig::demo(), listener).await.unwrap();
        assert_eq!(sb.base_url(), format!("http://127.0.0.1:{port}"));
        assert!(sb.current_ticket().is_some(), "without a callback the first ticket is set at start");
        sb.shutdown();
    }
}
