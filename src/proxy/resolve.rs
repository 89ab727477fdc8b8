//! How a proxied call is resolved (CONTRACT.md): client → scope → permission → the path and
//! query WeChat will see, without the client's token.

use super::clients::{Client, Clients};
use crate::AppId;
use http::request::Parts;
use std::borrow::Cow;

/// WeChat's ticket endpoint: every forwarded call would retire the ticket other apps hold.
pub const GETTICKET_PATH: &str = "/cgi-bin/ticket/getticket";

const KEY_HEADER: &str = "x-wxgate-key";
const AUTHORIZER_HEADER: &str = "x-wxgate-authorizer";
const SCOPE_HEADER: &str = "x-wxgate-scope";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Authorizer(AppId),
    Component,
}

impl Scope {
    /// The `scope` label of `wxgate_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Authorizer(_) => "authorizer",
            Self::Component => "component",
        }
    }
}

/// What a request on the proxy listener is: resolved once, owning what it needs (the request
/// is used mutably afterwards: its body read, the answer written).
#[derive(Debug)]
pub enum Route<'c> {
    /// Under `/wxgate/`: the gateway's own routes, which check their callers themselves.
    Own,
    /// One of WeChat's token endpoints: answered from the cache, never forwarded.
    TokenEndpoint(TokenCall<'c>),
    /// `getticket`: answered from the gateway's JS-SDK ticket cache, never forwarded (each
    /// forwarded call would retire the ticket other apps' pages hold).
    Ticket(TicketCall<'c>),
    /// A WeChat API call, forwarded with the real token.
    Api(ApiCall<'c>),
}

#[derive(Debug)]
pub struct TicketCall<'c> {
    pub client: &'c Client,
    pub scope: Scope,
}

impl Route<'_> {
    /// What the request was resolved as, owning nothing: for the metrics and the access log.
    pub fn kind(&self) -> RouteKind {
        match self {
            Self::Own => RouteKind::Own,
            Self::TokenEndpoint(_) => RouteKind::TokenEndpoint,
            Self::Ticket(call) => RouteKind::Call(call.scope.label()),
            Self::Api(call) => RouteKind::Call(call.scope.label()),
        }
    }
}

/// What a request was resolved as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Own,
    TokenEndpoint,
    /// A call made with a token: its scope's label (`authorizer`, `component`).
    Call(&'static str),
}

impl RouteKind {
    /// The `scope` label of `wxgate_requests_total` and the access log; `none` for a request
    /// that was not resolved (refused first).
    pub fn label(kind: Option<Self>) -> &'static str {
        match kind {
            None => "none",
            Some(Self::Own) => "own",
            Some(Self::TokenEndpoint) => "token_endpoint",
            Some(Self::Call(scope)) => scope,
        }
    }
}

#[derive(Debug)]
pub struct TokenCall<'c> {
    pub client: &'c Client,
    pub endpoint: TokenEndpoint,
    /// The account named by a path prefix or header; else the body or query names it.
    pub scope: Option<Scope>,
    /// The query's `appid` (`/cgi-bin/token?appid=...`).
    pub query_appid: Option<AppId>,
}

#[derive(Debug)]
pub struct ApiCall<'c> {
    pub client: &'c Client,
    /// Whom the call acts for: what the client must be allowed.
    pub scope: Scope,
    /// Whose token it carries: the scope's own, or the component's for the calls the component
    /// makes on an authorizer's behalf ([`ON_BEHALF`]).
    pub token: Scope,
    pub outbound: Outbound,
}

/// Calls made for an authorizer with the component's token: a mini program's user login and
/// an official account's web authorization, made by the platform on the account's behalf.
pub const ON_BEHALF: [&str; 3] =
    ["/sns/component/jscode2session", "/sns/oauth2/component/access_token", "/sns/oauth2/component/refresh_token"];

/// The path and the query WeChat gets, less the token.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// `path?rest`, the rest being the client's query without its token parameters.
    path_and_rest: String,
    has_rest: bool,
    token_param: &'static str,
}

impl Outbound {
    /// `path` and the client's `raw_query` less its token parameters; `component_appid`, when
    /// given, replaces any the client sent.
    fn build(path: &str, raw_query: &str, token_param: &'static str, component_appid: Option<&str>) -> Self {
        let mut path_and_rest = String::with_capacity(path.len() + raw_query.len() + 40);
        path_and_rest.push_str(path);
        path_and_rest.push('?');
        push_query_rest(&mut path_and_rest, raw_query, component_appid.is_some());
        if let Some(component) = component_appid {
            if path_and_rest.len() > path.len() + 1 {
                path_and_rest.push('&');
            }
            path_and_rest.push_str("component_appid=");
            path_and_rest.push_str(component);
        }
        let has_rest = path_and_rest.len() > path.len() + 1;
        Self { path_and_rest, has_rest, token_param }
    }

    #[cfg(test)]
    pub fn for_test(path: &str, rest: &str) -> Self {
        Self::build(path, rest, "access_token", None)
    }

    /// The path WeChat sees, without the query.
    pub fn path(&self) -> &str {
        self.path_and_rest.split_once('?').map_or(&self.path_and_rest, |(p, _)| p)
    }

    /// The query WeChat sees, less the token.
    #[cfg(test)]
    pub fn rest(&self) -> &str {
        self.path_and_rest.split_once('?').map_or("", |(_, r)| r)
    }

    /// The path and query WeChat gets, after `base_path`: the client's query less its token,
    /// plus the real one.
    pub fn uri(&self, base_path: &str, token: &str) -> String {
        let mut uri = Vec::new();
        self.push_uri(&mut uri, base_path, token);
        String::from_utf8_lossy(&uri).into_owned()
    }

    /// Appends the URI WeChat gets to `out` (a request head being written): no string of its
    /// own per call.
    pub fn push_uri(&self, out: &mut Vec<u8>, base_path: &str, token: &str) {
        out.reserve(base_path.len() + self.path_and_rest.len() + self.token_param.len() + token.len() + 2);
        out.extend_from_slice(base_path.as_bytes());
        out.extend_from_slice(self.path_and_rest.as_bytes());
        if self.has_rest {
            out.push(b'&');
        }
        out.extend_from_slice(self.token_param.as_bytes());
        out.push(b'=');
        if token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*')) {
            out.extend_from_slice(token.as_bytes());
        } else {
            for piece in url::form_urlencoded::byte_serialize(token.as_bytes()) {
                out.extend_from_slice(piece.as_bytes());
            }
        }
    }
}

/// Appends the pairs of `raw` that are not token parameters (nor `component_appid` when
/// `drop_component_appid`), byte for byte, `&`-separated.
fn push_query_rest(out: &mut String, raw: &str, drop_component_appid: bool) {
    let start = out.len();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        if is_token_param(name) || (drop_component_appid && name == "component_appid") {
            continue;
        }
        if out.len() > start {
            out.push('&');
        }
        out.push_str(pair);
    }
}

fn is_token_param(name: &str) -> bool {
    token_param_name(name).is_some()
}

/// The token parameter a raw query name means, by its decoded form: WeChat decodes names, so
/// `%61ccess_token` is an `access_token` too, and must not reach WeChat beside the real one
/// (a client could then make the gateway see token errors and refresh at will). Found by
/// fuzz/fuzz_targets/resolve.rs.
fn token_param_name(raw: &str) -> Option<&'static str> {
    let decoded =
        if raw.contains('%') { percent_encoding::percent_decode_str(raw).decode_utf8_lossy() } else { raw.into() };
    match decoded.as_ref() {
        "access_token" => Some("access_token"),
        "component_access_token" => Some("component_access_token"),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no client key: send Authorization: Bearer KEY, X-Wxgate-Key: KEY, or the key as access_token")]
    NoKey,
    #[error("the client key is not valid")]
    BadKey,
    #[error("the path must be plain: segments of letters, digits, '-', '_' and inner dots, one '/' apart, nothing percent-encoded")]
    BadPath,
    #[error("which account? Prefix the path with /{{authorizer_appid}}/ or /component/, or send X-Wxgate-Authorizer")]
    NoScope,
    #[error("X-Wxgate-Authorizer is not an appid; X-Wxgate-Scope takes only \"component\"")]
    BadScopeHeader,
    #[error("this client may not act for that authorizer")]
    AuthorizerNotAllowed,
    #[error("this client may not call component-scope APIs")]
    ComponentNotAllowed,
    #[error("the appid parameter must be the authorizer the call is made for")]
    AppidMismatch,
}

impl ResolveError {
    pub fn status(&self) -> u16 {
        match self {
            Self::NoKey | Self::BadKey => 401,
            Self::AuthorizerNotAllowed | Self::ComponentNotAllowed => 403,
            Self::BadPath | Self::NoScope | Self::BadScopeHeader | Self::AppidMismatch => 400,
        }
    }
}

/// Resolves a request: client → scope → permission → what WeChat will get. `component` is the
/// gateway's component appid, filled in on the calls made on an authorizer's behalf.
pub fn route<'c>(clients: &'c Clients, component: &AppId, req: &Parts) -> Result<Route<'c>, ResolveError> {
    let raw_path = req.uri.path();
    if !is_plain_path(raw_path) {
        return Err(ResolveError::BadPath);
    }
    if raw_path.starts_with(super::ROUTE_PREFIX) {
        return Ok(Route::Own);
    }
    let raw_query = req.uri.query().unwrap_or_default();
    let query = Query::split(raw_query);
    let client = find_client(clients, req, &query)?;
    let (scope, path) = match scope_of(raw_path, req, client) {
        Ok((scope, path)) => (Some(scope), path),
        Err(ResolveError::NoScope) if is_token_endpoint(raw_path) => (None, raw_path),
        Err(e) => return Err(e),
    };
    match &scope {
        Some(Scope::Authorizer(appid)) if !client.allows(appid) => return Err(ResolveError::AuthorizerNotAllowed),
        Some(Scope::Component) if !client.component => return Err(ResolveError::ComponentNotAllowed),
        _ => {}
    }
    if let Some(endpoint) = TokenEndpoint::at(path) {
        let query_appid = query.appid.as_deref().and_then(|a| AppId::parse(a).ok());
        return Ok(Route::TokenEndpoint(TokenCall { client, endpoint, scope, query_appid }));
    }
    let Some(scope) = scope else { return Err(ResolveError::NoScope) };
    // Compared without regard to case, as the token endpoints are: a server before WeChat might fold it.
    if path.eq_ignore_ascii_case(GETTICKET_PATH) {
        return Ok(Route::Ticket(TicketCall { client, scope }));
    }
    match &scope {
        Scope::Authorizer(appid) if ON_BEHALF.contains(&path) => {
            if query.appid.as_deref() != Some(&appid.as_str()) {
                return Err(ResolveError::AppidMismatch);
            }
            let outbound = Outbound::build(path, raw_query, "component_access_token", Some(&component.as_str()));
            Ok(Route::Api(ApiCall { client, scope, token: Scope::Component, outbound }))
        }
        _ => {
            let outbound = Outbound::build(path, raw_query, token_param(&scope, path, &query), None);
            Ok(Route::Api(ApiCall { client, token: scope.clone(), scope, outbound }))
        }
    }
}

/// WeChat's token endpoints: answered by the gateway from its cache, never forwarded, since
/// forwarding would rotate tokens behind its back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEndpoint {
    /// `/cgi-bin/component/api_component_token`
    Component,
    /// `/cgi-bin/component/api_authorizer_token`
    Authorizer,
    /// `/cgi-bin/token`, an account's own token endpoint
    Account,
    /// `/cgi-bin/stable_token`, an account's own token endpoint (JSON body naming `appid`)
    StableToken,
}

impl TokenEndpoint {
    const ALL: [(&'static str, Self); 4] = [
        ("/cgi-bin/component/api_component_token", Self::Component),
        ("/cgi-bin/component/api_authorizer_token", Self::Authorizer),
        ("/cgi-bin/token", Self::Account),
        ("/cgi-bin/stable_token", Self::StableToken),
    ];

    /// The endpoint at `path` (a plain path), compared without regard to case: a server before
    /// WeChat might fold it.
    pub fn at(path: &str) -> Option<Self> {
        Self::ALL.iter().find(|(p, _)| p.eq_ignore_ascii_case(path)).map(|(_, e)| *e)
    }
}

pub fn is_token_endpoint(path: &str) -> bool {
    TokenEndpoint::at(path).is_some()
}

/// The client presenting a key in a header (the gateway's own routes take no query keys).
pub fn client_from_headers<'c>(clients: &'c Clients, req: &Parts) -> Result<&'c Client, ResolveError> {
    find_client(clients, req, &Query::default())
}

/// Whether the path is plain: segments of letters, digits, `-`, `_` and inner dots, one `/`
/// apart. WeChat's API paths are all of that form, so anything else (percent-encoding, empty,
/// `.` or `..` segments, backslashes, `;` parameters, control bytes) is refused rather than
/// normalised: a plain path reads the same to the gateway, WeChat and every proxy between, so a
/// token endpoint cannot pass under another spelling, nor a call leave its scope.
pub fn is_plain_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    rest.split('/').all(|seg| {
        !seg.is_empty()
            && !seg.starts_with('.')
            && !seg.ends_with('.')
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    })
}

fn find_client<'c>(clients: &'c Clients, req: &Parts, query: &Query<'_>) -> Result<&'c Client, ResolveError> {
    let bearer = req.headers.get(http::header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let header = req.headers.get(KEY_HEADER).map(|v| v.as_bytes());
    let presented = bearer
        .or(header)
        .or(query.access_token.as_deref().map(str::as_bytes))
        .or(query.component_access_token.as_deref().map(str::as_bytes))
        .ok_or(ResolveError::NoKey)?;
    clients.find(presented).ok_or(ResolveError::BadKey)
}

/// The scope, and the path with its scope prefix removed.
fn scope_of<'p>(path: &'p str, req: &Parts, client: &Client) -> Result<(Scope, &'p str), ResolveError> {
    let (first, rest) = match path[1..].split_once('/') {
        Some((first, _)) => (first, &path[1 + first.len()..]),
        None => (&path[1..], "/"),
    };
    if AppId::is_valid(first) {
        return Ok((Scope::Authorizer(AppId::parse(first).map_err(|_| ResolveError::NoScope)?), rest));
    }
    if first == "component" {
        return Ok((Scope::Component, rest));
    }
    if let Some(value) = req.headers.get(AUTHORIZER_HEADER) {
        let appid =
            value.to_str().ok().and_then(|v| AppId::parse(v.trim()).ok()).ok_or(ResolveError::BadScopeHeader)?;
        return Ok((Scope::Authorizer(appid), path));
    }
    if let Some(value) = req.headers.get(SCOPE_HEADER) {
        return match value.as_bytes().eq_ignore_ascii_case(b"component") {
            true => Ok((Scope::Component, path)),
            false => Err(ResolveError::BadScopeHeader),
        };
    }
    client.only_authorizer().map(|a| (Scope::Authorizer(*a), path)).ok_or(ResolveError::NoScope)
}

/// `access_token` for an authorizer. For the component: the name the client used, else
/// `component_access_token` on `/cgi-bin/component/...` and `access_token` elsewhere.
fn token_param(scope: &Scope, path: &str, query: &Query<'_>) -> &'static str {
    match scope {
        Scope::Authorizer(_) => "access_token",
        Scope::Component if query.component_access_token.is_some() => "component_access_token",
        Scope::Component if query.access_token.is_some() => "access_token",
        Scope::Component if path.starts_with("/cgi-bin/component/") => "component_access_token",
        Scope::Component => "access_token",
    }
}

/// The parameters of a query string the gateway reads (percent-decoded; borrowed when nothing
/// was encoded).
#[derive(Debug, Default)]
pub struct Query<'r> {
    pub access_token: Option<Cow<'r, str>>,
    pub component_access_token: Option<Cow<'r, str>>,
    pub appid: Option<Cow<'r, str>>,
}

impl<'r> Query<'r> {
    pub fn split(raw: &'r str) -> Self {
        let mut q = Query::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match (token_param_name(name), name) {
                (Some("access_token"), _) => &mut q.access_token,
                (Some(_), _) => &mut q.component_access_token,
                (None, "appid") => &mut q.appid,
                (None, _) => continue,
            };
            *slot = Some(percent_encoding::percent_decode_str(value).decode_utf8_lossy());
        }
        q
    }
}

#[cfg(test)]
mod tests;
