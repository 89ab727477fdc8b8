//! The `[[events.routes]]` table: every route whose `info_types` take an event gets it. Built
//! once per config (start-up or SIGHUP) and swapped whole.

use crate::config::EventRouteConfig;
use crate::Secret;

/// One route, as the config validated it.
#[derive(Debug, Clone)]
pub struct EventRoute {
    pub name: String,
    info_types: Option<Vec<String>>,
    pub url: url::Url,
    pub token: Secret,
}

impl EventRoute {
    fn new(config: &EventRouteConfig) -> Self {
        Self {
            name: config.name.clone(),
            info_types: config.info_types.clone(),
            url: config.url.clone(),
            token: config.token.clone(),
        }
    }

    pub fn takes(&self, info_type: &str) -> bool {
        self.info_types.as_ref().is_none_or(|types| types.iter().any(|t| t == info_type))
    }
}

/// The routes in the file's order.
#[derive(Debug, Clone, Default)]
pub struct EventRoutes(Vec<EventRoute>);

impl EventRoutes {
    pub fn new(configs: &[EventRouteConfig]) -> Self {
        Self(configs.iter().map(EventRoute::new).collect())
    }

    /// Every route that takes `info_type`.
    pub fn matching<'a>(&'a self, info_type: &'a str) -> impl Iterator<Item = &'a EventRoute> + 'a {
        self.0.iter().filter(move |r| r.takes(info_type))
    }

    /// A route by name: the outbox keeps the name, and delivers with the route as it is now.
    pub fn by_name(&self, name: &str) -> Option<&EventRoute> {
        self.0.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn config(name: &str, info_types: Option<&[&str]>) -> EventRouteConfig {
        EventRouteConfig {
            name: name.to_owned(),
            info_types: info_types.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
            url: url::Url::parse("http://127.0.0.1:7002/events").unwrap(),
            token: Secret::new("route-token"),
        }
    }

    #[test]
    fn every_matching_route_takes_an_event() {
        let routes = EventRoutes::new(&[
            config("tenants", Some(&["authorized", "unauthorized"])),
            config("audit", None),
            config("fast", Some(&["notify_third_fasteregister"])),
        ]);
        let names = |t| routes.matching(t).map(|r| r.name.as_str()).collect::<Vec<_>>();
        assert_eq!(names("authorized"), ["tenants", "audit"]);
        assert_eq!(names("notify_third_fasteregister"), ["audit", "fast"]);
        assert_eq!(names("updateauthorized"), ["audit"]);
        assert_eq!(routes.by_name("fast").map(|r| r.name.as_str()), Some("fast"));
        assert!(routes.by_name("gone").is_none());
    }
}
