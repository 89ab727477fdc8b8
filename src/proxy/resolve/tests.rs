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
        rate_per_second: None,
        daily_share: None,
    };
    Clients::new(&[
        client("single", "single-key-0123456789", AuthorizerScope::Only(vec![AppId::parse(A).unwrap()]), false),
        client("fleet", "fleet-key-0123456789", AuthorizerScope::All, true),
    ])
}

use pingora::http::RequestHeader;

fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build("POST", uri.as_bytes(), None).unwrap();
    for (k, v) in headers {
        r.insert_header(k.to_string(), *v).unwrap();
    }
    r
}

const COMPONENT: &str = "wx0123456789abcdef";

fn route_of<'c>(clients: &'c Clients, r: &RequestHeader) -> Result<Route<'c>, ResolveError> {
    route(clients, &AppId::parse(COMPONENT).unwrap(), r)
}

fn api_call<'c>(clients: &'c Clients, uri: &str, headers: &[(&str, &str)]) -> Result<ApiCall<'c>, ResolveError> {
    match route_of(clients, &req(uri, headers))? {
        Route::Api(call) => Ok(call),
        other => panic!("not an API call: {other:?}"),
    }
}

fn resolved(
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<(String, Scope, String, String, &'static str), ResolveError> {
    let clients = clients();
    let c = api_call(&clients, uri, headers)?;
    let o = &c.outbound;
    Ok((c.client.name.to_string(), c.scope.clone(), o.path().to_owned(), o.rest().to_owned(), o.token_param))
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
fn getticket_is_a_route_of_its_own_in_any_case() {
    let clients = clients();
    for path in ["/cgi-bin/ticket/getticket", "/cgi-bin/ticket/GetTicket"] {
        let r = req(&format!("/{A}{path}?type=jsapi&access_token=single-key-0123456789"), &[]);
        let Ok(Route::Ticket(call)) = route_of(&clients, &r) else { panic!("{path}: not the ticket route") };
        assert_eq!((&*call.client.name, call.scope.clone()), ("single", authorizer(A)));
    }
    let other = req(&format!("/{B}/cgi-bin/ticket/getticket?access_token=single-key-0123456789"), &[]);
    assert!(matches!(route_of(&clients, &other), Err(ResolveError::AuthorizerNotAllowed)), "checked like any call");
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
    let (_, scope, path, _, _) = resolved("/cgi-bin/user/info", &[("x-wxgate-key", "single-key-0123456789")]).unwrap();
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
    let Route::TokenEndpoint(token_call) = route_of(&clients, &token_req).unwrap() else { panic!() };
    assert_eq!(token_call.scope, None, "token endpoints name their account in the body");
    assert_eq!(token_call.endpoint, TokenEndpoint::Authorizer);
    let own = req("/wxgate/token/component", &[]);
    assert!(matches!(route_of(&clients, &own), Ok(Route::Own)), "own routes check their callers themselves");
    assert_eq!(
        resolved(&format!("/{B}/cgi-bin/user/info"), &[single]).unwrap_err(),
        ResolveError::AuthorizerNotAllowed
    );
    assert_eq!(resolved("/component/cgi-bin/component/x", &[single]).unwrap_err(), ResolveError::ComponentNotAllowed);
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
        format!("/{A}/cgi-bin//token"),
        format!("/{A}/cgi-bin/%74oken"),
        format!("/{A}/cgi-bin/token/"),
        format!("/{A}/cgi-bin/token;x"),
        format!("/{A}/cgi-bin/token."),
        "/".into(),
        "x".into(),
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
    push_query_rest(&mut rest, raw, false);
    assert_eq!(rest, "a=1&b=%E4%BD%A0&c");
}

#[test]
fn token_parameters_are_known_by_their_decoded_names() {
    let raw = "a=1&%61ccess_token=single-key-0123456789&component%5Faccess%5ftoken=c&b=2";
    let q = Query::split(raw);
    assert_eq!(q.access_token.as_deref(), Some("single-key-0123456789"));
    assert_eq!(q.component_access_token.as_deref(), Some("c"));
    let clients = clients();
    let call = api_call(&clients, &format!("/{A}/cgi-bin/user/info?{raw}"), &[]).unwrap();
    assert_eq!(&*call.client.name, "single", "the key is found under its encoded name");
    assert_eq!(call.outbound.uri("", "REAL"), "/cgi-bin/user/info?a=1&b=2&access_token=REAL");
}

#[test]
fn the_upstream_uri_has_the_real_token_and_never_the_key() {
    let clients = clients();
    let call = api_call(
        &clients,
        &format!("/{A}/cgi-bin/user/info?openid=o1&access_token=single-key-0123456789&lang=zh_CN"),
        &[],
    )
    .unwrap();
    assert_eq!(
        call.outbound.uri("/base", "T0k-en_1"),
        "/base/cgi-bin/user/info?openid=o1&lang=zh_CN&access_token=T0k-en_1"
    );
    assert_eq!(call.outbound.uri("", "a b+c/="), "/cgi-bin/user/info?openid=o1&lang=zh_CN&access_token=a+b%2Bc%2F%3D");
    let call = api_call(&clients, &format!("/{A}/cgi-bin/x?access_token=single-key-0123456789"), &[]).unwrap();
    assert_eq!(call.outbound.uri("", "t"), "/cgi-bin/x?access_token=t");
    let call = api_call(
        &clients,
        "/component/cgi-bin/component/x?component_access_token=fleet-key-0123456789&access_token=fleet-key-0123456789",
        &[],
    )
    .unwrap();
    assert_eq!(call.outbound.uri("", "t"), "/cgi-bin/component/x?component_access_token=t");
}

#[test]
fn calls_on_an_authorizers_behalf_carry_the_component_token_for_that_authorizer_only() {
    let clients = clients();
    let single = ("authorization", "Bearer single-key-0123456789");
    let call = api_call(
        &clients,
        &format!("/sns/component/jscode2session?appid={A}&js_code=c0de&grant_type=authorization_code&component_appid=wxffffffffffffffff"),
        &[single],
    )
    .unwrap();
    assert_eq!((call.scope.clone(), call.token.clone()), (authorizer(A), Scope::Component));
    assert_eq!(
        call.outbound.uri("", "CT"),
        format!("/sns/component/jscode2session?appid={A}&js_code=c0de&grant_type=authorization_code&component_appid={COMPONENT}&component_access_token=CT"),
        "component_appid is the gateway's"
    );
    let call = api_call(
        &clients,
        &format!("/{A}/sns/oauth2/component/refresh_token?appid={A}&grant_type=refresh_token&refresh_token=r"),
        &[single],
    )
    .unwrap();
    assert_eq!(call.token, Scope::Component);
    assert!(call
        .outbound
        .uri("", "CT")
        .ends_with(&format!("refresh_token=r&component_appid={COMPONENT}&component_access_token=CT")));
    for uri in [
        format!("/sns/oauth2/component/access_token?appid={B}&code=c"),
        "/sns/oauth2/component/access_token?code=c".to_owned(),
        format!("/{A}/sns/component/jscode2session?appid={A}x&js_code=c"),
    ] {
        assert_eq!(api_call(&clients, &uri, &[single]).unwrap_err(), ResolveError::AppidMismatch, "{uri}");
    }
    assert_eq!(
        api_call(&clients, &format!("/{B}/sns/component/jscode2session?appid={B}"), &[single]).unwrap_err(),
        ResolveError::AuthorizerNotAllowed
    );
}
