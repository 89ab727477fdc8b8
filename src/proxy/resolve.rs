//! How a proxied call is resolved (CONTRACT.md): client → scope → permission → the path and
//! query WeChat will see, without the client's token.

use super::clients::{Client, Clients};
use crate::AppId;
use pingora::http::RequestHeader;
use std::borrow::Cow;

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

/// A call the gateway will make on a client's behalf. It borrows from the request: resolving
/// a call allocates nothing but the appid.
#[derive(Debug)]
pub struct Call<'c, 'r> {
    pub client: &'c Client,
    /// `None` only for WeChat's token endpoints, which name their account in the body or query.
    pub scope: Option<Scope>,
    /// The path WeChat sees: the scope prefix removed.
    pub path: &'r str,
    /// The client's query, token parameters included: see [`Call::query_rest`].
    pub raw_query: &'r str,
    pub token_param: &'static str,
}

impl Call<'_, '_> {
    /// The query without any token the client sent; the real one is added under `token_param`.
    #[cfg(test)]
    pub fn query_rest(&self) -> String {
        let mut rest = String::with_capacity(self.raw_query.len());
        push_query_rest(&mut rest, self.raw_query);
        rest
    }

    /// What the call sends WeChat, owned: the request it came from is needed mutably while the
    /// call is made (its body read, the answer written).
    pub fn outbound(&self) -> Outbound {
        let mut path_and_rest = String::with_capacity(self.path.len() + self.raw_query.len() + 1);
        path_and_rest.push_str(self.path);
        path_and_rest.push('?');
        push_query_rest(&mut path_and_rest, self.raw_query);
        let has_rest = path_and_rest.len() > self.path.len() + 1;
        Outbound { path_and_rest, has_rest, token_param: self.token_param }
    }
}

/// The path and the query WeChat gets, less the token.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// `path?rest`, the rest being the client's query without its token parameters.
    path_and_rest: String,
    has_rest: bool,
    token_param: &'static str,
}

impl Outbound {
    #[cfg(test)]
    pub fn for_test(path: &str, rest: &str) -> Self {
        Self { path_and_rest: format!("{path}?{rest}"), has_rest: !rest.is_empty(), token_param: "access_token" }
    }

    /// The path and query WeChat gets, after `base_path`: the client's query less its token,
    /// plus the real one, built in one buffer.
    pub fn uri(&self, base_path: &str, token: &str) -> String {
        let mut uri = String::with_capacity(
            base_path.len() + self.path_and_rest.len() + self.token_param.len() + token.len() + 2,
        );
        uri.push_str(base_path);
        uri.push_str(&self.path_and_rest);
        if self.has_rest {
            uri.push('&');
        }
        uri.push_str(self.token_param);
        uri.push('=');
        if token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*')) {
            uri.push_str(token);
        } else {
            uri.extend(url::form_urlencoded::byte_serialize(token.as_bytes()));
        }
        uri
    }
}

/// Appends the pairs of `raw` that are not token parameters, byte for byte, `&`-separated.
fn push_query_rest(out: &mut String, raw: &str) {
    let start = out.len();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        if is_token_param(name) {
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
    #[error("the path may not hold '..', '.', backslashes or encoded dots and slashes")]
    BadPath,
    #[error("which account? Prefix the path with /{{authorizer_appid}}/ or /component/, or send X-Wxgate-Authorizer")]
    NoScope,
    #[error("X-Wxgate-Authorizer is not an appid; X-Wxgate-Scope takes only \"component\"")]
    BadScopeHeader,
    #[error("this client may not act for that authorizer")]
    AuthorizerNotAllowed,
    #[error("this client may not call component-scope APIs")]
    ComponentNotAllowed,
}

impl ResolveError {
    pub fn status(&self) -> u16 {
        match self {
            Self::NoKey | Self::BadKey => 401,
            Self::AuthorizerNotAllowed | Self::ComponentNotAllowed => 403,
            Self::BadPath | Self::NoScope | Self::BadScopeHeader => 400,
        }
    }
}

pub fn resolve<'c, 'r>(clients: &'c Clients, req: &'r RequestHeader) -> Result<Call<'c, 'r>, ResolveError> {
    let raw_path = req.uri.path();
    if !is_safe_path(raw_path) {
        return Err(ResolveError::BadPath);
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
    let token_param = scope.as_ref().map_or("access_token", |s| token_param(s, path, &query));
    Ok(Call { client, scope, path, raw_query, token_param })
}

/// WeChat's token endpoints: answered by the gateway from its cache, never forwarded, since
/// forwarding would rotate tokens behind its back.
pub const TOKEN_ENDPOINTS: [&str; 3] =
    ["/cgi-bin/component/api_component_token", "/cgi-bin/component/api_authorizer_token", "/cgi-bin/token"];

pub fn is_token_endpoint(path: &str) -> bool {
    TOKEN_ENDPOINTS.contains(&path)
}

/// The client presenting a key in a header (the gateway's own routes take no query keys).
pub fn client_from_headers<'c>(clients: &'c Clients, req: &RequestHeader) -> Result<&'c Client, ResolveError> {
    find_client(clients, req, &Query::default())
}

/// Refuses what could make WeChat (or a proxy before it) read another path than the one the
/// gateway resolved.
fn is_safe_path(path: &str) -> bool {
    let escaped = |e: &[u8]| {
        matches!([e[0], e[1].to_ascii_lowercase()], [b'2', b'e'] | [b'2', b'f'] | [b'5', b'c'] | [b'0', b'0'])
    };
    path.starts_with('/')
        && !path.contains('\\')
        && !path.as_bytes().windows(3).any(|w| w[0] == b'%' && escaped(&w[1..]))
        && !path.split('/').any(|seg| seg == ".." || seg == ".")
}

fn find_client<'c>(clients: &'c Clients, req: &RequestHeader, query: &Query<'_>) -> Result<&'c Client, ResolveError> {
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
fn scope_of<'p>(path: &'p str, req: &RequestHeader, client: &Client) -> Result<(Scope, &'p str), ResolveError> {
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

/// The token parameters of a query string (percent-decoded; borrowed when nothing was encoded).
#[derive(Debug, Default)]
pub struct Query<'r> {
    pub access_token: Option<Cow<'r, str>>,
    pub component_access_token: Option<Cow<'r, str>>,
}

impl<'r> Query<'r> {
    pub fn split(raw: &'r str) -> Self {
        let mut q = Query::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match token_param_name(name) {
                Some("access_token") => &mut q.access_token,
                Some(_) => &mut q.component_access_token,
                None => continue,
            };
            *slot = Some(percent_encoding::percent_decode_str(value).decode_utf8_lossy());
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthorizerScope, ClientConfig};
    use crate::Secret;

    const A: &str = "wx1111111111111111";
    const B: &str = "wx2222222222222222";

    fn clients() -> Clients {
        let client = |name: &str, key: &str, authorizers: AuthorizerScope, component: bool| ClientConfig {
            name: name.into(),
            key: Secret::new(key),
            authorizers,
            component,
            reveal_tokens: false,
        };
        Clients::new(&[
            client("single", "single-key-0123456789", AuthorizerScope::Only(vec![AppId::parse(A).unwrap()]), false),
            client("fleet", "fleet-key-0123456789", AuthorizerScope::All, true),
        ])
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn resolved(
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Result<(String, Scope, String, String, &'static str), ResolveError> {
        let clients = clients();
        let r = req(uri, headers);
        let c = resolve(&clients, &r)?;
        Ok((c.client.name.clone(), c.scope.clone().expect("a scope"), c.path.to_owned(), c.query_rest(), c.token_param))
    }

    fn authorizer(a: &str) -> Scope {
        Scope::Authorizer(AppId::parse(a).unwrap())
    }

    #[test]
    fn an_sdk_with_the_key_as_its_token_and_an_appid_prefix() {
        let (client, scope, path, query, param) =
            resolved(&format!("/{A}/cgi-bin/message/custom/send?access_token=single-key-0123456789&x=1"), &[]).unwrap();
        assert_eq!(
            (client.as_str(), scope, path.as_str(), query.as_str(), param),
            ("single", authorizer(A), "/cgi-bin/message/custom/send", "x=1", "access_token")
        );
    }

    #[test]
    fn scope_from_headers_or_the_single_authorizer() {
        let bearer = ("authorization", "Bearer fleet-key-0123456789");
        assert_eq!(
            resolved("/cgi-bin/user/info?openid=o", &[bearer, ("x-wxgate-authorizer", B)]).unwrap().1,
            authorizer(B)
        );
        let (_, scope, path, _, param) =
            resolved("/cgi-bin/component/api_get_authorizer_info", &[bearer, ("x-wxgate-scope", "component")]).unwrap();
        assert_eq!(
            (scope, path.as_str(), param),
            (Scope::Component, "/cgi-bin/component/api_get_authorizer_info", "component_access_token")
        );
        let (_, scope, path, _, _) =
            resolved("/cgi-bin/user/info", &[("x-wxgate-key", "single-key-0123456789")]).unwrap();
        assert_eq!((scope, path.as_str()), (authorizer(A), "/cgi-bin/user/info"));
        let (_, scope, path, _, param) =
            resolved("/component/wxa/gettemplatelist?access_token=fleet-key-0123456789", &[]).unwrap();
        assert_eq!((scope, path.as_str(), param), (Scope::Component, "/wxa/gettemplatelist", "access_token"));
    }

    #[test]
    fn each_rule_has_its_error() {
        let fleet = ("authorization", "Bearer fleet-key-0123456789");
        let single = ("authorization", "Bearer single-key-0123456789");
        assert_eq!(resolved("/cgi-bin/user/info", &[]).unwrap_err(), ResolveError::NoKey);
        assert_eq!(resolved("/cgi-bin/user/info?access_token=guess", &[]).unwrap_err(), ResolveError::BadKey);
        assert_eq!(resolved("/cgi-bin/user/info", &[fleet]).unwrap_err(), ResolveError::NoScope);
        let clients = clients();
        let token_req = req("/cgi-bin/component/api_authorizer_token", &[fleet]);
        let token_call = resolve(&clients, &token_req).unwrap();
        assert_eq!(token_call.scope, None, "token endpoints name their account in the body");
        assert_eq!(
            resolved(&format!("/{B}/cgi-bin/user/info"), &[single]).unwrap_err(),
            ResolveError::AuthorizerNotAllowed
        );
        assert_eq!(
            resolved("/component/cgi-bin/component/x", &[single]).unwrap_err(),
            ResolveError::ComponentNotAllowed
        );
        assert_eq!(
            resolved("/cgi-bin/x", &[fleet, ("x-wxgate-authorizer", "nope")]).unwrap_err(),
            ResolveError::BadScopeHeader
        );
        for escape in [
            format!("/{A}/../{B}/cgi-bin/x"),
            format!("/{A}/%2e%2e/x"),
            format!("/{A}%2F..%2Fx"),
            format!("/{A}/./x"),
            "/a\\b".into(),
            format!("/{A}/a%5Cb"),
            format!("/{A}/a%00"),
            format!("/{A}/%2E"),
        ] {
            assert_eq!(resolved(&escape, &[single]).unwrap_err(), ResolveError::BadPath, "{escape}");
        }
    }

    #[test]
    fn token_parameters_are_taken_out_and_the_rest_kept_verbatim() {
        let raw = "a=1&access_token=k%40y&b=%E4%BD%A0&component_access_token=c&&c";
        let q = Query::split(raw);
        assert_eq!(q.access_token.as_deref(), Some("k@y"));
        assert_eq!(q.component_access_token.as_deref(), Some("c"));
        let mut rest = String::new();
        push_query_rest(&mut rest, raw);
        assert_eq!(rest, "a=1&b=%E4%BD%A0&c");
    }

    #[test]
    fn token_parameters_are_known_by_their_decoded_names() {
        let raw = "a=1&%61ccess_token=single-key-0123456789&component%5Faccess%5ftoken=c&b=2";
        let q = Query::split(raw);
        assert_eq!(q.access_token.as_deref(), Some("single-key-0123456789"));
        assert_eq!(q.component_access_token.as_deref(), Some("c"));
        let clients = clients();
        let r = req(&format!("/{A}/cgi-bin/user/info?{raw}"), &[]);
        let call = resolve(&clients, &r).unwrap();
        assert_eq!(call.client.name, "single", "the key is found under its encoded name");
        assert_eq!(call.outbound().uri("", "REAL"), "/cgi-bin/user/info?a=1&b=2&access_token=REAL");
    }

    #[test]
    fn the_upstream_uri_has_the_real_token_and_never_the_key() {
        let clients = clients();
        let r = req(&format!("/{A}/cgi-bin/user/info?openid=o1&access_token=single-key-0123456789&lang=zh_CN"), &[]);
        let call = resolve(&clients, &r).unwrap();
        assert_eq!(
            call.outbound().uri("/base", "T0k-en_1"),
            "/base/cgi-bin/user/info?openid=o1&lang=zh_CN&access_token=T0k-en_1"
        );
        assert_eq!(
            call.outbound().uri("", "a b+c/="),
            "/cgi-bin/user/info?openid=o1&lang=zh_CN&access_token=a+b%2Bc%2F%3D"
        );
        let r = req(&format!("/{A}/cgi-bin/x?access_token=single-key-0123456789"), &[]);
        assert_eq!(resolve(&clients, &r).unwrap().outbound().uri("", "t"), "/cgi-bin/x?access_token=t");
        let r = req("/component/cgi-bin/component/x?component_access_token=fleet-key-0123456789&access_token=fleet-key-0123456789", &[]);
        assert_eq!(
            resolve(&clients, &r).unwrap().outbound().uri("", "t"),
            "/cgi-bin/component/x?component_access_token=t"
        );
    }
}
