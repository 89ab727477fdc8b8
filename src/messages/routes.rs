//! The route table: `[[messages.routes]]` turned into first-match lookups on authorizer, MsgType
//! and Event. Built once per config (start-up or SIGHUP) and swapped whole.

use crate::config::{AuthorizerScope, DeliveryMode, RouteConfig};
use crate::{AppId, Secret};

/// One route, as the config validated it.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    authorizers: AuthorizerScope,
    msg_types: Option<Vec<String>>,
    events: Option<Vec<String>>,
    pub url: url::Url,
    pub token: Secret,
    pub mode: DeliveryMode,
}

impl Route {
    fn new(config: &RouteConfig) -> Self {
        Self {
            name: config.name.clone(),
            authorizers: config.authorizers.clone(),
            msg_types: config.msg_types.clone(),
            events: config.events.clone(),
            url: config.url.clone(),
            token: config.token.clone(),
            mode: config.mode,
        }
    }

    /// `events` narrows MsgType `event` only; other types pass it. WeChat writes some Event
    /// values in capitals (`CLICK`, `VIEW`) and others not (`subscribe`): compared either case.
    pub fn matches(&self, authorizer: &AppId, msg_type: &str, event: Option<&str>) -> bool {
        let listed = |list: &Option<Vec<String>>, value: &str| {
            list.as_ref().is_none_or(|l| l.iter().any(|v| v.eq_ignore_ascii_case(value)))
        };
        self.authorizers.allows(authorizer)
            && listed(&self.msg_types, msg_type)
            && (!msg_type.eq_ignore_ascii_case("event") || listed(&self.events, event.unwrap_or_default()))
    }
}

/// The routes in the file's order.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

impl Routes {
    pub fn new(configs: &[RouteConfig]) -> Self {
        Self(configs.iter().map(Route::new).collect())
    }

    /// The first route that takes this message.
    pub fn find(&self, authorizer: &AppId, msg_type: &str, event: Option<&str>) -> Option<&Route> {
        self.0.iter().find(|r| r.matches(authorizer, msg_type, event))
    }

    /// A route by name: the outbox keeps the name, and delivers with the route as it is now.
    pub fn by_name(&self, name: &str) -> Option<&Route> {
        self.0.iter().find(|r| r.name == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| r.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, authorizers: AuthorizerScope, types: Option<&[&str]>, events: Option<&[&str]>) -> RouteConfig {
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| s.to_string()).collect());
        RouteConfig {
            name: name.into(),
            authorizers,
            msg_types: list(types),
            events: list(events),
            url: url::Url::parse("http://127.0.0.1:1/").unwrap(),
            token: Secret::new("token"),
            mode: DeliveryMode::Reply,
        }
    }

    #[test]
    fn first_match_on_authorizer_type_and_event() {
        let shop = AppId::parse("wx1111111111111111").unwrap();
        let other = AppId::parse("wx2222222222222222").unwrap();
        let routes = Routes::new(&[
            route("subs", AuthorizerScope::Only(vec![shop]), Some(&["text", "event"]), Some(&["subscribe"])),
            route("clicks", AuthorizerScope::All, Some(&["event"]), Some(&["CLICK"])),
            route("texts", AuthorizerScope::All, Some(&["text"]), None),
        ]);
        let found = |a: &AppId, t: &str, e: Option<&str>| routes.find(a, t, e).map(|r| r.name.as_str());
        assert_eq!(found(&shop, "text", None), Some("subs"));
        assert_eq!(found(&shop, "event", Some("subscribe")), Some("subs"));
        assert_eq!(found(&shop, "event", Some("click")), Some("clicks"));
        assert_eq!(found(&shop, "event", Some("unsubscribe")), None);
        assert_eq!(found(&other, "text", None), Some("texts"));
        assert_eq!(found(&other, "image", None), None);
        assert_eq!(found(&other, "event", None), None);
        assert_eq!(routes.by_name("clicks").map(|r| r.name.as_str()), Some("clicks"));
        assert!(routes.by_name("gone").is_none());
        assert_eq!(routes.names().collect::<Vec<_>>(), ["subs", "clicks", "texts"]);
    }
}
