//! wxgate: a reverse-proxy gateway for WeChat Open Platform third-party platforms.
//!
//! # Layout
//!
//! - [`appid`]: the `AppId` type, checked once where an appid enters.
//! - [`secret`]: the `Secret` type, which never prints its value.
//! - [`civil`]: calendar dates from day counts (the access log's times, Beijing days).
//! - [`test_accounts`]: WeChat's release-check test accounts, a leaf the token service, the
//!   release check and the sandbox share.
//! - [`xml`]: the flat `<xml>` documents WeChat pushes, parsed with DOCTYPE and entities refused.
//! - [`crypto`]: WeChat message crypto (WXBizMsgCrypt); pure, no I/O.
//! - [`config`]: the TOML file and `WXGATE_*` environment, validated once into `Config`.
//! - [`metrics`]: every metric name and registration.
//! - [`store`]: the durable store, by purpose (records, coordination between instances, the
//!   outbox), its SQLite, Redis (shared by several instances) and in-memory backends, and
//!   `migrate` between them.
//! - [`wechat`]: the HTTP client for WeChat's component endpoints; errcodes become typed errors.
//! - [`tokens`]: the token service, the only writer of ticket, token and authorizer state: a
//!   part per credential family (component, authorizers, JS-SDK tickets) and per duty (grants,
//!   info, events, reconciliation) over one core that runs the one refresh protocol.
//! - [`authorize`]: the authorization flow's links (PC and mobile) and pages.
//! - [`callback`]: WeChat's authorization-event receiver: verify, decrypt, parse, hand to tokens.
//! - [`http1`]: THE HTTP/1.1 of the binary: both listeners' connections and requests, and the
//!   exchange with WeChat; it knows nothing of what it serves.
//! - [`reply`]: the gateway's own replies in the contract's JSON error shape; bodies read with a limit.
//! - [`messages`]: authorized accounts' messages: dedupe, release check, routes, handlers, outbox.
//! - [`events`]: platform events to the apps: the authorization-event URL's events, once the
//!   token service acted on them, into the one outbox per `[[events.routes]]`, in order per account.
//! - [`quota`]: the quota guard between the apps that share an account's WeChat quota: each
//!   client's rate and daily share, and the 45009 holds; shared through a Redis store.
//! - [`releases`]: release jobs: a code template taken to many mini programs (commit, audit,
//!   release), durable, within the audit quota, driven by WeChat's audit events and polling.
//! - [`admin`]: the admin listener: metrics, health, readiness, admin API.
//! - [`proxy`]: the proxy listener: each request resolved, the token endpoints answered, and
//!   every other path proxied to WeChat with the real token injected (and replayed once after a
//!   token error); `/wxgate/*` handed to [`routes`] through the `OwnRoutes` trait.
//! - [`routes`]: the gateway's own `/wxgate/*` routes: WeChat's callbacks, the authorization
//!   pages, raw tokens and the JS-SDK config.
//! - [`sandbox`]: a local stand-in for api.weixin.qq.com, for tests, `wxgate demo` and users' own tests.
//! - [`demo`]: `wxgate demo`, the sandbox and the gateway together, with the lines to try.
//! - [`listeners`]: the listening sockets, inherited from the launcher or bound, handed to pingora.
//! - [`app`]: the one place that wires stores, services and pingora together.
//!
//! Data flows one way: callbacks and the scheduler write into `tokens`; once `tokens` has acted
//! on an authorization event it hands it to `events` (through a trait of its own), which puts
//! it in the outbox for the apps; `proxy` and `admin` read from `tokens`, and may only ask it
//! for a refresh.
//!
//! # Layers
//!
//! A module imports only from layers below its own, never from its own or one above, so there
//! is no import circle between modules; `tests/layers.rs` reads every `crate::` path in `src/`
//! against this list, which is the one place the layers are written.
//!
//! 9. `demo`
//! 8. `app`
//! 7. `routes`
//! 6. `callback`, `events`, `admin`, `sandbox`
//! 5. `proxy`, `messages`, `listeners`
//! 4. `quota`, `releases`
//! 3. `config`, `authorize`
//! 2. `tokens`
//! 1. `crypto`, `wechat`, `store`, `http1`
//! 0. `appid`, `secret`, `metrics`, `xml`, `test_accounts`, `reply`, `civil`

pub mod admin;
pub mod app;
pub mod appid;
pub mod authorize;
pub mod callback;
pub mod civil;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod events;
pub mod http1;
pub mod listeners;
pub mod messages;
pub mod metrics;
pub mod proxy;
pub mod quota;
pub mod releases;
pub mod reply;
pub mod routes;
pub mod sandbox;
pub mod secret;
pub mod store;
pub mod test_accounts;
pub mod tokens;
pub mod wechat;
pub mod xml;

pub use appid::AppId;
pub use secret::Secret;
