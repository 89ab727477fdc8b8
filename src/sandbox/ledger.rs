//! The sandbox's whole state: ticket, codes, accounts, tokens, faults, counters. Pure; time is passed in.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::config::Faults;
use super::record::Record;
use super::tokens::{random_text, Owner, TokenBook};
use super::wx::WxError;

/// Auth codes and pre-auth codes live 600 s, as WeChat's redirect says (`expires_in=600`).
pub const CODE_LIFETIME: Duration = Duration::from_secs(600);
/// Used and expired codes are remembered this long, so that reuse answers 61009/61010 precisely.
const REMEMBER_CODES: Duration = Duration::from_secs(3600);

/// The timing rules from [`super::SandboxConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub lifetime: Duration,
    pub grace: Duration,
    pub rotate: bool,
}

struct Code {
    appid: String,
    expires_at: Instant,
    used: bool,
}

pub(crate) struct Authorizer {
    pub authorized: bool,
    /// None until an auth code is exchanged: `api_get_authorizer_list` then shows it empty, as WeChat does.
    pub refresh_token: Option<String>,
    /// The refresh token `api_get_authorizer_list` shows: the one issued when the code was
    /// exchanged, not updated by later rotations — a list that lags, so that a gateway that
    /// writes a listed token over the one it rotated since is caught (the next refresh is 61023).
    pub listed_refresh_token: Option<String>,
    pub auth_time: u64,
    /// What `api_get_authorizer_info` reports: 1 normal, 14 closed, 16 banned, 18 warned, 19 frozen.
    pub account_status: i64,
    /// Reported with `MiniProgramInfo`.
    pub mini_program: bool,
}

impl Authorizer {
    fn new(authorized: bool, auth_time: u64) -> Self {
        Self {
            authorized,
            refresh_token: None,
            listed_refresh_token: None,
            auth_time,
            account_status: 1,
            mini_program: false,
        }
    }
}

/// What `api_query_auth` and `api_authorizer_token` hand out.
pub(crate) struct Grant {
    pub access_token: String,
    pub refresh_token: String,
}

/// An authorization by an account's owner, ready to be pushed.
#[derive(Debug, Clone)]
pub(crate) struct AuthEvent {
    pub info_type: &'static str,
    pub code: String,
    pub pre_auth_code: String,
}

pub(crate) struct Ledger {
    limits: Limits,
    pub tokens: TokenBook,
    /// JS-SDK tickets, by `APPID:kind`: a book of their own, so that a ticket never works as a token.
    pub js_tickets: TokenBook,
    ticket: Option<String>,
    codes: HashMap<String, Code>,
    pre_auth: HashMap<String, Code>,
    pub authorizers: BTreeMap<String, Authorizer>,
    pub record: Record,
    pub faults: Faults,
    pub paused: bool,
    pub quota: super::quota::QuotaBook,
    /// Owned accounts' `force_refresh` calls, for WeChat's limits on them.
    pub forced: super::owned::ForceLog,
    /// Mini programs' code and the platform's audit quota ([`Ledger::new`] gives no quota).
    pub code: super::code::CodeBook,
}

impl Ledger {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            tokens: TokenBook::default(),
            js_tickets: TokenBook::default(),
            ticket: None,
            codes: HashMap::new(),
            pre_auth: HashMap::new(),
            authorizers: BTreeMap::new(),
            record: Record::default(),
            faults: Faults::default(),
            paused: false,
            quota: Default::default(),
            forced: Default::default(),
            code: super::code::CodeBook::new(0, None),
        }
    }

    /// A new ticket; the previous one is no longer accepted.
    pub fn new_ticket(&mut self) -> String {
        let ticket = format!("ticket@@@{}", random_text(86));
        self.ticket = Some(ticket.clone());
        ticket
    }

    pub fn ticket(&self) -> Option<&str> {
        self.ticket.as_deref()
    }

    /// 61005 before any ticket was pushed; 61006 for any ticket but the last one.
    pub fn check_ticket(&self, ticket: &str) -> Result<(), WxError> {
        match &self.ticket {
            None => Err(WxError::new(61005, "component ticket is expired")),
            Some(t) if t == ticket => Ok(()),
            Some(_) => Err(WxError::new(61006, "component ticket is invalid")),
        }
    }

    /// `getticket`: a new ticket of that kind for the authorizer; the previous one keeps working
    /// for the grace, then answers as retired (a page signed with it fails `wx.config`).
    pub fn issue_js_ticket(&mut self, appid: &str, kind: &str, now: Instant) -> String {
        let owner = Owner::Authorizer(format!("{appid}:{kind}"));
        self.js_tickets.issue(owner, now, self.limits.lifetime, self.limits.grace)
    }

    pub fn issue_component_token(&mut self, now: Instant) -> String {
        self.tokens.issue(Owner::Component, now, self.limits.lifetime, self.limits.grace)
    }

    /// A working component token, or WeChat's answer for why not (an authorizer's token is 40001).
    pub fn check_component_token(&self, token: &str, now: Instant) -> Result<(), WxError> {
        match self.tokens.check(token, now)? {
            Owner::Component => Ok(()),
            Owner::Authorizer(_) | Owner::Account { .. } => Err(WxError::invalid_credential()),
        }
    }

    pub fn create_pre_auth(&mut self, now: Instant) -> String {
        prune(&mut self.pre_auth, now);
        let code = format!("preauthcode@@@{}", random_text(86));
        let entry = Code { appid: String::new(), expires_at: now + CODE_LIFETIME, used: false };
        self.pre_auth.insert(code.clone(), entry);
        code
    }

    /// Whether a pre_auth_code may still be used; with `take` it is used up.
    pub fn use_pre_auth(&mut self, code: &str, now: Instant, take: bool) -> Result<(), &'static str> {
        let entry = self.pre_auth.get_mut(code).ok_or("pre_auth_code is invalid")?;
        if entry.used {
            return Err("pre_auth_code has been used");
        }
        if now >= entry.expires_at {
            return Err("pre_auth_code has expired");
        }
        entry.used = take;
        Ok(())
    }

    /// An owner authorizes: `updateauthorized` if the account already was, else `authorized` with
    /// a fresh start (a re-authorization after revoking gets a new refresh token).
    pub fn authorize(&mut self, appid: &str, now: Instant, unix_now: u64, pre_auth: Option<String>) -> AuthEvent {
        let account = self.authorizers.entry(appid.to_owned()).or_insert(Authorizer::new(false, unix_now));
        let info_type = if account.authorized { "updateauthorized" } else { "authorized" };
        if !account.authorized {
            let (status, mini_program) = (account.account_status, account.mini_program);
            *account = Authorizer { account_status: status, mini_program, ..Authorizer::new(true, unix_now) };
        }
        prune(&mut self.codes, now);
        let code = format!("queryauthcode@@@{}", random_text(86));
        let entry = Code { appid: appid.to_owned(), expires_at: now + CODE_LIFETIME, used: false };
        self.codes.insert(code.clone(), entry);
        // The event names the pre_auth_code the owner came through; without a page, a used-up one.
        let pre_auth_code = pre_auth.unwrap_or_else(|| {
            let p = self.create_pre_auth(now);
            self.pre_auth.get_mut(&p).expect("just inserted").used = true;
            p
        });
        AuthEvent { info_type, code, pre_auth_code }
    }

    /// Exchanges an auth code once: 61009 if unknown or used, 61010 if expired.
    pub fn query_auth(&mut self, code: &str, now: Instant) -> Result<(String, Grant), WxError> {
        let entry = self.codes.get_mut(code).ok_or_else(code_invalid)?;
        if entry.used {
            return Err(code_invalid());
        }
        if now >= entry.expires_at {
            return Err(WxError::new(61010, "code is expired"));
        }
        entry.used = true;
        let appid = entry.appid.clone();
        let grant = self.grant(&appid, now)?;
        if let Some(account) = self.authorizers.get_mut(&appid) {
            account.listed_refresh_token = Some(grant.refresh_token.clone());
        }
        Ok((appid, grant))
    }

    /// `api_authorizer_token`: 61003 for an account that has not authorized, 61023 for any refresh
    /// token but the current one.
    pub fn authorizer_token(&mut self, appid: &str, refresh: &str, now: Instant) -> Result<Grant, WxError> {
        let account = self.authorized(appid)?;
        if account.refresh_token.as_deref() != Some(refresh) {
            return Err(WxError::bad_refresh_token());
        }
        self.grant(appid, now)
    }

    fn grant(&mut self, appid: &str, now: Instant) -> Result<Grant, WxError> {
        let Limits { lifetime, grace, rotate } = self.limits;
        let account = self.authorizers.get_mut(appid).filter(|a| a.authorized).ok_or_else(code_invalid)?;
        let refresh_token = match &account.refresh_token {
            Some(current) if !rotate => current.clone(),
            _ => {
                let fresh = format!("refreshtoken@@@{}", random_text(43));
                account.refresh_token = Some(fresh.clone());
                fresh
            }
        };
        let access_token = self.tokens.issue(Owner::Authorizer(appid.to_owned()), now, lifetime, grace);
        Ok(Grant { access_token, refresh_token })
    }

    pub fn authorized(&self, appid: &str) -> Result<&Authorizer, WxError> {
        self.authorizers.get(appid).filter(|a| a.authorized).ok_or_else(WxError::not_authorized)
    }

    /// The account revokes: its refresh token, codes and access tokens stop working at once.
    pub fn unauthorize(&mut self, appid: &str) -> bool {
        let Some(account) = self.authorizers.get_mut(appid).filter(|a| a.authorized) else {
            return false;
        };
        account.authorized = false;
        account.refresh_token = None;
        account.listed_refresh_token = None;
        self.codes.retain(|_, c| c.appid != appid);
        self.tokens.forget(&Owner::Authorizer(appid.to_owned()));
        true
    }
}

fn code_invalid() -> WxError {
    WxError::new(61009, "code is invalid")
}

fn prune(codes: &mut HashMap<String, Code>, now: Instant) {
    codes.retain(|_, c| c.expires_at + REMEMBER_CODES > now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(rotate: bool) -> Ledger {
        Ledger::new(Limits { lifetime: Duration::from_secs(60), grace: Duration::from_secs(5), rotate })
    }

    #[test]
    fn tickets_only_the_last_one() {
        let mut l = ledger(true);
        assert_eq!(l.check_ticket("x").unwrap_err().code, 61005);
        let a = l.new_ticket();
        let b = l.new_ticket();
        assert_eq!(l.check_ticket(&a).unwrap_err().code, 61006);
        assert!(l.check_ticket(&b).is_ok());
    }

    #[test]
    fn codes_are_single_use_and_expire() {
        let now = Instant::now();
        let mut l = ledger(true);
        let ev = l.authorize("wx1", now, 0, None);
        assert_eq!(ev.info_type, "authorized");
        assert!(l.query_auth(&ev.code, now).is_ok());
        assert_eq!(l.query_auth(&ev.code, now).err().unwrap().code, 61009);
        let ev2 = l.authorize("wx1", now, 0, None);
        assert_eq!(ev2.info_type, "updateauthorized");
        assert_eq!(l.query_auth(&ev2.code, now + CODE_LIFETIME).err().unwrap().code, 61010);
        assert_eq!(l.query_auth("bogus", now).err().unwrap().code, 61009);
    }

    #[test]
    fn refresh_tokens_rotate_when_configured() {
        let now = Instant::now();
        for rotate in [true, false] {
            let mut l = ledger(rotate);
            let code = l.authorize("wx1", now, 0, None).code;
            let (_, g) = l.query_auth(&code, now).unwrap();
            let g2 = l.authorizer_token("wx1", &g.refresh_token, now).unwrap();
            assert_eq!(g2.refresh_token != g.refresh_token, rotate);
            let old = l.authorizer_token("wx1", &g.refresh_token, now);
            assert_eq!(old.is_err(), rotate);
            assert_eq!(l.authorizer_token("wx2", "x", now).err().unwrap().code, 61003);
        }
    }

    #[test]
    fn unauthorize_kills_everything() {
        let now = Instant::now();
        let mut l = ledger(false);
        let code = l.authorize("wx1", now, 0, None).code;
        let (_, g) = l.query_auth(&code, now).unwrap();
        let pending = l.authorize("wx1", now, 0, None).code;
        assert!(l.unauthorize("wx1"));
        assert!(!l.unauthorize("wx1"));
        assert_eq!(l.tokens.check(&g.access_token, now).unwrap_err().code, 40001);
        assert_eq!(l.authorizer_token("wx1", &g.refresh_token, now).err().unwrap().code, 61003);
        assert_eq!(l.query_auth(&pending, now).err().unwrap().code, 61009);
        let again = l.authorize("wx1", now, 0, None);
        assert_eq!(again.info_type, "authorized");
        let (_, g2) = l.query_auth(&again.code, now).unwrap();
        assert_ne!(g2.refresh_token, g.refresh_token);
    }

    #[test]
    fn pre_auth_codes_are_single_use() {
        let now = Instant::now();
        let mut l = ledger(true);
        let p = l.create_pre_auth(now);
        assert!(l.use_pre_auth(&p, now, false).is_ok());
        assert!(l.use_pre_auth(&p, now, true).is_ok());
        assert!(l.use_pre_auth(&p, now, true).is_err());
        let q = l.create_pre_auth(now);
        assert!(l.use_pre_auth(&q, now + CODE_LIFETIME, true).is_err());
    }
}
