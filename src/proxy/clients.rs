//! The apps allowed to call through the gateway, found by the key they present.

use crate::config::{AuthorizerScope, ClientConfig};
use crate::quota::{ClientQuota, QuotaGuard};
use crate::{AppId, Secret};
use std::sync::Arc;

#[derive(Debug)]
pub struct Client {
    /// Shared with each call's access line, which copies no string.
    pub name: Arc<str>,
    key: Secret,
    authorizers: AuthorizerScope,
    pub component: bool,
    pub reveal_tokens: bool,
    /// Its state in the quota guard; `None` for a client without limits.
    pub quota: Option<Arc<ClientQuota>>,
}

impl Client {
    pub fn allows(&self, appid: &AppId) -> bool {
        self.authorizers.allows(appid)
    }

    /// The one authorizer this client may act for, when it names exactly one.
    pub fn only_authorizer(&self) -> Option<&AppId> {
        match &self.authorizers {
            AuthorizerScope::Only(list) if list.len() == 1 => list.first(),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Clients(Vec<Client>);

impl Clients {
    /// The clients, without limits (tests).
    pub fn new(configs: &[ClientConfig]) -> Self {
        Self(configs.iter().map(|c| client(c, None)).collect())
    }

    /// The clients, each with its state in `guard` (kept from before a reload).
    pub fn guarded(configs: &[ClientConfig], guard: &QuotaGuard) -> Self {
        Self(configs.iter().map(|c| client(c, guard.client(c))).collect())
    }

    /// The client whose key this is. Every key is compared, each in constant time, so that the
    /// time taken tells neither which client matched nor how much of a guess was right.
    pub fn find(&self, presented: &[u8]) -> Option<&Client> {
        let mut found = None;
        for client in &self.0 {
            if client.key.ct_eq(presented) {
                found = Some(client);
            }
        }
        found
    }
}

fn client(c: &ClientConfig, quota: Option<Arc<ClientQuota>>) -> Client {
    Client {
        name: c.name.as_str().into(),
        key: c.key.clone(),
        authorizers: c.authorizers.clone(),
        component: c.component,
        reveal_tokens: c.reveal_tokens,
        quota,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_key_and_knows_its_single_authorizer() {
        let a = AppId::parse("wx1111111111111111").unwrap();
        let clients = Clients::new(&[
            ClientConfig {
                name: "one".into(),
                key: Secret::new("key-one-0123456789"),
                authorizers: AuthorizerScope::Only(vec![a]),
                component: false,
                reveal_tokens: false,
                rate_per_second: None,
                daily_share: None,
            },
            ClientConfig {
                name: "all".into(),
                key: Secret::new("key-all-0123456789"),
                authorizers: AuthorizerScope::All,
                component: true,
                reveal_tokens: true,
                rate_per_second: None,
                daily_share: None,
            },
        ]);
        assert_eq!(clients.find(b"key-one-0123456789").unwrap().name.as_ref(), "one");
        assert_eq!(clients.find(b"key-all-0123456789").unwrap().only_authorizer(), None);
        assert_eq!(clients.find(b"key-one-0123456789").unwrap().only_authorizer(), Some(&a));
        assert!(clients.find(b"key-one-012345678").is_none());
        assert!(clients.find(b"").is_none());
    }
}
