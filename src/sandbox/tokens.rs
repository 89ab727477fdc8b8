//! The access tokens the sandbox has issued: whose each is, when it expires, when a newer one retired it.

use std::collections::HashMap;
use std::time::Duration;

use rand::distributions::{Alphanumeric, DistString};
use tokio::time::Instant;

use super::wx::WxError;

/// How long an expired token is remembered, so that it answers 42001 rather than 40001.
const REMEMBER_EXPIRED: Duration = Duration::from_secs(3600);

/// Random text from the thread's CSPRNG, so that no credential the sandbox issues can be guessed.
pub(crate) fn random_text(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), len)
}

/// An access token shaped like WeChat's (a numeric prefix, `_`, then ~130 characters).
fn new_access_token() -> String {
    format!("88_{}", random_text(133))
}

/// Whose token it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    Component,
    /// An account that authorized the component, its token from `api_authorizer_token`.
    Authorizer(String),
    /// A directly-owned account, its token got with its own AppSecret. Which endpoint issued it
    /// is part of the owner because WeChat keeps the two apart (PROTOCOL.md §13): a call to
    /// `/cgi-bin/token` does not retire the `stable_token` token, nor the other way round.
    Account {
        appid: String,
        endpoint: TokenEndpoint,
    },
}

/// The two endpoints that hand an owned account its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TokenEndpoint {
    StableToken,
    Token,
}

impl Owner {
    pub fn account(appid: &str, endpoint: TokenEndpoint) -> Self {
        Owner::Account { appid: appid.to_owned(), endpoint }
    }

    /// How [`super::SeenRequest::authorizer`] names the owner: an account is its appid, however
    /// it got its token, so that its quota is one.
    pub fn label(&self) -> String {
        match self {
            Owner::Component => "component".into(),
            Owner::Authorizer(appid) | Owner::Account { appid, .. } => appid.clone(),
        }
    }
}

struct Entry {
    owner: Owner,
    expires_at: Instant,
    /// Set when a newer token (or a revocation) retired this one: 40001 from then on.
    dies_at: Option<Instant>,
}

/// Every token still worth an answer other than "unknown".
#[derive(Default)]
pub(crate) struct TokenBook {
    entries: HashMap<String, Entry>,
    current: HashMap<Owner, String>,
}

impl TokenBook {
    /// Issues the owner's new token; the previous one keeps working for `grace` (and no longer
    /// than its own expiry), like WeChat's overlap after a refresh.
    pub fn issue(&mut self, owner: Owner, now: Instant, lifetime: Duration, grace: Duration) -> String {
        self.prune(now);
        if let Some(old) = self.current.get(&owner).and_then(|t| self.entries.get_mut(t)) {
            let retire = now + grace;
            old.dies_at = Some(old.dies_at.map_or(retire, |d| d.min(retire)));
        }
        let token = new_access_token();
        let entry = Entry { owner: owner.clone(), expires_at: now + lifetime, dies_at: None };
        self.entries.insert(token.clone(), entry);
        self.current.insert(owner, token.clone());
        token
    }

    /// Whose token this is if it still works: 40001 if unknown or retired, 42001 if expired.
    pub fn check(&self, token: &str, now: Instant) -> Result<&Owner, WxError> {
        let entry = self.entries.get(token).ok_or_else(WxError::invalid_credential)?;
        if entry.dies_at.is_some_and(|d| now >= d) {
            return Err(WxError::invalid_credential());
        }
        if now >= entry.expires_at {
            return Err(WxError::token_expired());
        }
        Ok(&entry.owner)
    }

    /// The owner's latest token if it still works, with the time it has left.
    pub fn working(&self, owner: &Owner, now: Instant) -> Option<(&str, Duration)> {
        let token = self.current(owner)?;
        self.check(token, now).ok()?;
        let entry = self.entries.get(token)?;
        Some((token, entry.expires_at - now))
    }

    /// The owner's latest token, working or not.
    pub fn current(&self, owner: &Owner) -> Option<&str> {
        self.current.get(owner).map(String::as_str)
    }

    /// Whose token this is, working or not (for the request log).
    pub fn owner_of(&self, token: &str) -> Option<&Owner> {
        self.entries.get(token).map(|e| &e.owner)
    }

    /// The owner's current token answers 40001 from now on, as if another party had refreshed it.
    pub fn revoke_current(&mut self, owner: &Owner, now: Instant) {
        if let Some(entry) = self.current.get(owner).and_then(|t| self.entries.get_mut(t)) {
            entry.dies_at = Some(now);
        }
    }

    /// Every token of the owner becomes unknown at once (the account revoked the authorization).
    pub fn forget(&mut self, owner: &Owner) {
        self.entries.retain(|_, e| &e.owner != owner);
        self.current.remove(owner);
    }

    fn prune(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.expires_at + REMEMBER_EXPIRED > now);
        let entries = &self.entries;
        self.current.retain(|_, t| entries.contains_key(t));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Duration = Duration::from_secs(10);
    const GRACE: Duration = Duration::from_secs(3);

    #[test]
    fn superseded_token_works_for_grace_then_40001() {
        let t0 = Instant::now();
        let mut book = TokenBook::default();
        let old = book.issue(Owner::Component, t0, LIFE, GRACE);
        let new = book.issue(Owner::Component, t0 + Duration::from_secs(1), LIFE, GRACE);
        assert!(old.len() > 100 && old != new);
        assert_eq!(book.check(&old, t0 + Duration::from_secs(3)), Ok(&Owner::Component));
        assert_eq!(book.check(&old, t0 + Duration::from_secs(4)).unwrap_err().code, 40001);
        assert!(book.check(&new, t0 + Duration::from_secs(4)).is_ok());
    }

    #[test]
    fn expiry_gives_42001_and_unknown_40001() {
        let t0 = Instant::now();
        let mut book = TokenBook::default();
        let tok = book.issue(Owner::Authorizer("wx1".into()), t0, LIFE, GRACE);
        assert_eq!(book.check(&tok, t0 + LIFE).unwrap_err().code, 42001);
        assert_eq!(book.check("nope", t0).unwrap_err().code, 40001);
    }

    #[test]
    fn grace_is_capped_by_own_expiry() {
        let t0 = Instant::now();
        let mut book = TokenBook::default();
        let old = book.issue(Owner::Component, t0, LIFE, GRACE);
        book.issue(Owner::Component, t0 + Duration::from_secs(9), LIFE, GRACE);
        assert_eq!(book.check(&old, t0 + Duration::from_secs(10)).unwrap_err().code, 42001);
    }

    #[test]
    fn revoke_and_forget() {
        let t0 = Instant::now();
        let mut book = TokenBook::default();
        let a = Owner::Authorizer("wx1".into());
        let tok = book.issue(a.clone(), t0, LIFE, GRACE);
        book.revoke_current(&a, t0);
        assert_eq!(book.check(&tok, t0).unwrap_err().code, 40001);
        let tok2 = book.issue(a.clone(), t0, LIFE, GRACE);
        assert!(book.check(&tok2, t0).is_ok());
        book.forget(&a);
        assert_eq!(book.owner_of(&tok2), None);
    }

    #[test]
    fn working_gives_the_life_left_of_a_live_current_token() {
        let t0 = Instant::now();
        let mut book = TokenBook::default();
        let a = Owner::account("wx1", TokenEndpoint::StableToken);
        assert_eq!(book.working(&a, t0), None);
        let tok = book.issue(a.clone(), t0, LIFE, GRACE);
        assert_eq!(book.working(&a, t0 + Duration::from_secs(4)), Some((tok.as_str(), Duration::from_secs(6))));
        assert_eq!(book.working(&Owner::account("wx1", TokenEndpoint::Token), t0), None, "a line of its own");
        book.revoke_current(&a, t0);
        assert_eq!(book.working(&a, t0), None);
    }

    #[test]
    fn long_expired_tokens_are_pruned() {
        let t0 = Instant::now();
        let mut book = TokenBook::default();
        book.issue(Owner::Component, t0, LIFE, GRACE);
        book.issue(Owner::Component, t0 + LIFE + REMEMBER_EXPIRED, LIFE, GRACE);
        assert_eq!(book.len(), 1);
    }
}
