//! Directly-owned accounts' token endpoints (PROTOCOL.md §13): `POST /cgi-bin/stable_token`, with
//! its overlap window and WeChat's limits on `force_refresh`, and the older `GET /cgi-bin/token`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::config::{OwnedAccount, SandboxConfig};
use super::ledger::Ledger;
use super::server::query_param;
use super::tokens::{Owner, TokenEndpoint};
use super::wx::{answer, WxError};
use super::{faults, Sandbox};
use crate::appid::AppId;
use crate::crypto::{CryptoError, MsgCrypt};
use crate::secret::Secret;

pub(super) const STABLE_TOKEN_PATH: &str = "/cgi-bin/stable_token";
pub(super) const TOKEN_PATH: &str = "/cgi-bin/token";
/// A `stable_token` body is about 150 bytes.
const MAX_BODY: usize = 4096;
/// WeChat counts `force_refresh` calls per calendar day; the sandbox over the last 24 hours, so
/// that what a test sees does not depend on the hour it runs.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

type Body = Map<String, Value>;

/// The owned accounts of the config, checked once at start, their message crypto built then.
pub(crate) struct Accounts(HashMap<AppId, Account>);

pub(crate) struct Account {
    pub secret: Secret,
    /// The token of the account's own message server, for the plain `signature`.
    pub token: Secret,
    /// The account's own key, with its own appid as receive id.
    pub crypt: MsgCrypt,
}

/// Why the configured owned accounts cannot be served. Names no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AccountsError {
    #[error("owned account {0} is listed twice")]
    Duplicate(AppId),
    #[error("owned account {appid}: {source}")]
    Key { appid: AppId, source: CryptoError },
}

impl Accounts {
    pub fn new(accounts: &[OwnedAccount]) -> Result<Self, AccountsError> {
        let mut by_appid = HashMap::new();
        for a in accounts {
            let crypt = MsgCrypt::new(&a.token, &a.encoding_aes_key, &a.appid.as_str())
                .map_err(|source| AccountsError::Key { appid: a.appid, source })?;
            let account = Account { secret: a.secret.clone(), token: a.token.clone(), crypt };
            if by_appid.insert(a.appid, account).is_some() {
                return Err(AccountsError::Duplicate(a.appid));
            }
        }
        Ok(Self(by_appid))
    }

    pub fn get(&self, appid: &AppId) -> Option<&Account> {
        self.0.get(appid)
    }
}

/// WeChat's rules for `stable_token`, with the sandbox's timings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StableRules {
    pub lifetime: Duration,
    /// The end of a token's life in which a normal call gets a new one (WeChat: 5 minutes).
    pub window: Duration,
    pub min_interval: Duration,
    pub per_day: u32,
}

impl StableRules {
    /// The window is the sandbox's `grace`: both are WeChat's five minutes of overlap.
    pub fn of(config: &SandboxConfig) -> Self {
        Self {
            lifetime: config.token_lifetime,
            window: config.grace,
            min_interval: config.force_refresh_min_interval,
            per_day: config.force_refresh_per_day,
        }
    }
}

/// When each account forced a refresh in the last 24 hours, oldest first.
#[derive(Default)]
pub(crate) struct ForceLog(HashMap<String, VecDeque<Instant>>);

impl ForceLog {
    /// Counts a `force_refresh` of `appid` if WeChat's limits allow it now. The codes are the two
    /// PROTOCOL.md §13 lists for stable_token: 45009 (the daily limit, checked first since
    /// waiting half a minute will not lift it) and 45011 (calls too close together, WeChat's
    /// code for a frequency limit).
    fn take(&mut self, appid: &str, rules: &StableRules, now: Instant) -> Result<(), WxError> {
        let times = self.0.entry(appid.to_owned()).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= DAY) {
            times.pop_front();
        }
        if times.len() >= rules.per_day as usize {
            return Err(WxError::new(45009, "reach max api daily quota limit"));
        }
        if times.back().is_some_and(|t| now.duration_since(*t) < rules.min_interval) {
            return Err(WxError::new(45011, "api minute-quota reach limit  mustslower  retry next minute"));
        }
        times.push_back(now);
        Ok(())
    }
}

/// `stable_token` for an account whose credentials passed: its token and the life it has left.
fn stable_grant(
    ledger: &mut Ledger,
    rules: &StableRules,
    appid: &str,
    force: bool,
    now: Instant,
) -> Result<(String, Duration), WxError> {
    let owner = Owner::account(appid, TokenEndpoint::StableToken);
    if force {
        ledger.forced.take(appid, rules, now)?;
        // No grace: force mode retires the previous token at once.
        return Ok((ledger.tokens.issue(owner, now, rules.lifetime, Duration::ZERO), rules.lifetime));
    }
    let working = ledger.tokens.working(&owner, now).filter(|(_, left)| *left > rules.window);
    if let Some((token, left)) = working {
        return Ok((token.to_owned(), left));
    }
    // A grace of a whole lifetime outlasts the old token: it works until its own expiry.
    Ok((ledger.tokens.issue(owner, now, rules.lifetime, rules.lifetime), rules.lifetime))
}

/// `POST /cgi-bin/stable_token` `{grant_type, appid, secret, force_refresh?}` →
/// `{access_token, expires_in}`; every call counts, a fault's or a refused one included.
pub(super) async fn stable_token(sandbox: &Sandbox, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await.ok();
    let body: Option<Body> = body.and_then(|b| serde_json::from_slice(&b).ok());
    let force = body.as_ref().map_or(Ok(false), force_refresh);
    count_stable(sandbox, body.as_ref(), force.clone().unwrap_or(false));
    if let Some(fault) = faults::apply(&sandbox.faults(), parts.uri.path()).await {
        return fault;
    }
    let result = (|| {
        if parts.method != Method::POST {
            return Err(WxError::new(43002, "require POST method"));
        }
        let body = body.as_ref().ok_or_else(|| WxError::format("the body is not a JSON object"))?;
        let force = force?;
        let appid = credentials(sandbox, text(body, "grant_type"), text(body, "appid"), text(body, "secret"))?;
        let rules = StableRules::of(sandbox.config());
        stable_grant(&mut sandbox.ledger(), &rules, &appid.as_str(), force, Instant::now())
    })();
    respond(sandbox, result)
}

/// `/cgi-bin/token?grant_type=client_credential&appid=&secret=` for an owned account: a new token
/// each call, the previous one retired after the grace, as WeChat does on this endpoint.
pub(super) async fn token(sandbox: &Sandbox, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let param = |name| query_param(&query, name);
    let appid = param("appid");
    *sandbox.ledger().record.stats.token_calls.entry(appid.clone().unwrap_or_default()).or_default() += 1;
    if let Some(fault) = faults::apply(&sandbox.faults(), &path).await {
        return fault;
    }
    let checked = credentials(sandbox, param("grant_type").as_deref(), appid.as_deref(), param("secret").as_deref());
    let result = checked.map(|appid| {
        let config = sandbox.config();
        let owner = Owner::account(&appid.as_str(), TokenEndpoint::Token);
        let token = sandbox.ledger().tokens.issue(owner, Instant::now(), config.token_lifetime, config.grace);
        (token, config.token_lifetime)
    });
    respond(sandbox, result)
}

/// A missing or null `force_refresh` is normal mode; anything but a boolean is refused.
fn force_refresh(body: &Body) -> Result<bool, WxError> {
    match body.get("force_refresh") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(force)) => Ok(*force),
        Some(_) => Err(WxError::format("force_refresh must be a boolean")),
    }
}

fn count_stable(sandbox: &Sandbox, body: Option<&Body>, force: bool) {
    let appid = body.and_then(|b| text(b, "appid")).unwrap_or_default();
    let mut ledger = sandbox.ledger();
    let calls = ledger.record.stats.stable_token_calls.entry(appid.to_owned()).or_default();
    if force {
        calls.force += 1;
    } else {
        calls.normal += 1;
    }
}

/// An owned account's credentials, checked in WeChat's order; its appid if they hold.
fn credentials(
    sandbox: &Sandbox,
    grant_type: Option<&str>,
    appid: Option<&str>,
    secret: Option<&str>,
) -> Result<AppId, WxError> {
    if grant_type != Some("client_credential") {
        return Err(WxError::new(40002, "invalid grant_type"));
    }
    let appid = appid.filter(|a| !a.is_empty()).ok_or_else(|| WxError::new(41002, "appid missing"))?;
    let (appid, account) = AppId::parse(appid)
        .ok()
        .and_then(|a| sandbox.inner.accounts.get(&a).map(|account| (a, account)))
        .ok_or_else(|| WxError::new(40013, "invalid appid"))?;
    let secret = secret.filter(|s| !s.is_empty()).ok_or_else(|| WxError::new(41004, "appsecret missing"))?;
    if !account.secret.ct_eq(secret.as_bytes()) {
        return Err(WxError::invalid_secret());
    }
    Ok(appid)
}

/// WeChat's answer, an error counted by its code.
fn respond(sandbox: &Sandbox, result: Result<(String, Duration), WxError>) -> Response {
    if let Err(e) = &result {
        *sandbox.ledger().record.stats.errcodes.entry(e.code).or_default() += 1;
    }
    // A token in its last second still reports 1: 0 would read as "already expired".
    answer(result.map(|(token, left)| json!({ "access_token": token, "expires_in": left.as_secs().max(1) })))
}

fn text<'a>(body: &'a Body, key: &str) -> Option<&'a str> {
    body.get(key)?.as_str()
}

impl Sandbox {
    /// The token `stable_token` hands the owned account in normal mode, while it still works.
    pub fn account_token(&self, appid: &AppId) -> Option<String> {
        let owner = Owner::account(&appid.as_str(), TokenEndpoint::StableToken);
        self.ledger().tokens.working(&owner, Instant::now()).map(|(token, _)| token.to_owned())
    }
}

#[cfg(test)]
mod tests;
