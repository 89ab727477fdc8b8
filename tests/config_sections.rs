//! The configuration's routes and the files it points at, as an operator meets them:
//! `[[messages.routes]]`, `[[events.routes]]`, the upstream CA file, the egress proxy and the
//! listener's certificate pair; each bad key named, no secret echoed.

mod config_support;

use config_support::*;
use std::path::Path;
use std::time::Duration;
use wxgate::config::{AuthorizerScope, Config};

#[test]
fn messages_routes_are_read_in_order_with_defaults() {
    use wxgate::config::DeliveryMode;
    let text = format!(
        "{}[messages]\nreply_timeout_ms = 3000\n\
         [[messages.routes]]\nname = \"shop\"\nauthorizers = [\"wx1111111111111111\"]\nmsg_types = [\"text\", \"event\"]\n\
         events = [\"subscribe\"]\nurl = \"http://127.0.0.1:7001/wechat?x=1\"\ntoken = \"{TOKEN}\"\nmode = \"reply\"\n\
         [[messages.routes]]\nname = \"rest\"\nauthorizers = [\"*\"]\nurl = \"https://h.example.com/wx\"\n\
         token = \"{TOKEN}\"\nmode = \"deliver\"\n",
        minimal()
    );
    let config = Config::from_sources(&text, no_env()).unwrap();
    let m = &config.messages;
    assert_eq!(m.reply_timeout, Duration::from_millis(3000));
    assert_eq!(m.max_age, Duration::from_secs(72 * 3600));
    assert!(m.release_check);
    assert_eq!(m.routes.len(), 2);
    assert_eq!(m.routes[0].name, "shop");
    assert_eq!(m.routes[0].mode, DeliveryMode::Reply);
    assert_eq!(m.routes[0].events.as_deref(), Some(&["subscribe".to_owned()][..]));
    assert_eq!(m.routes[0].url.query(), Some("x=1"));
    assert_eq!(m.routes[1].authorizers, AuthorizerScope::All);
    assert_eq!(m.routes[1].msg_types, None);
    let masked = config.masked();
    assert!(masked.contains("[[messages.routes]]"), "{masked}");
    assert_no_secret(&masked);
    let defaults = Config::from_sources(&minimal(), no_env()).unwrap();
    assert!(defaults.messages.routes.is_empty() && defaults.messages.release_check);
}

#[test]
fn bad_messages_keys_are_named() {
    let route = |body: &str| format!("{}[[messages.routes]]\n{body}\n", minimal());
    let good = format!(
        "name = \"a\"\nauthorizers = [\"*\"]\nurl = \"http://127.0.0.1:1/\"\ntoken = \"{TOKEN}\"\nmode = \"reply\""
    );
    assert!(Config::from_sources(&route(&good), no_env()).is_ok());
    let msg = only_problem(&route(&good.replace("mode = \"reply\"", "mode = \"push\"")), "messages.routes[0].mode");
    assert!(msg.contains("\"reply\" or \"deliver\""), "{msg}");
    only_problem(&route(&good.replace("http://127.0.0.1:1/", "ftp://x")), "messages.routes[0].url");
    only_problem(&route(&good.replace("authorizers = [\"*\"]", "authorizers = []")), "messages.routes[0].authorizers");
    only_problem(&route(&good.replace("name = \"a\"", "name = \"a b\"")), "messages.routes[0].name");
    only_problem(&route(&format!("{good}\nurll = \"x\"")), "messages.routes[0].urll");
    let msg = only_problem(
        &route(&format!("{good}\nmsg_types = [\"text\"]\nevents = [\"subscribe\"]")),
        "messages.routes[0].events",
    );
    assert!(msg.contains("add \"event\""), "{msg}");
    let twice = format!("{}[[messages.routes]]\n{good}\n", route(&good));
    only_problem(&twice, "messages.routes[1].name");
    let timeout = format!("{}[messages]\nreply_timeout_ms = 5000\n", minimal());
    only_problem(&timeout, "messages.reply_timeout_ms");
    let not_array = format!("{}[messages]\nroutes = 1\n", minimal());
    only_problem(&not_array, "messages.routes");
    let bad_token = route(&good.replace(&format!("token = \"{TOKEN}\""), "token = \"has space\""));
    only_problem(&bad_token, "messages.routes[0].token");
    let found = problems(&minimal(), env(&[("WXGATE_MESSAGES_RELEASE_CHECK", "maybe")]));
    assert_eq!(keys(&found), ["messages.release_check"]);
    let off = Config::from_sources(&minimal(), env(&[("WXGATE_MESSAGES_RELEASE_CHECK", "false")])).unwrap();
    assert!(!off.messages.release_check);
}

#[test]
fn events_routes_are_read_and_bad_keys_are_named() {
    let route = |body: &str| format!("{}[[events.routes]]\n{body}\n", minimal());
    let good = format!("name = \"tenants\"\nurl = \"http://127.0.0.1:1/events\"\ntoken = \"{TOKEN}\"");
    let config = Config::from_sources(&route(&format!("{good}\ninfo_types = [\"authorized\"]")), no_env()).unwrap();
    let e = &config.events.routes[0];
    assert_eq!((e.name.as_str(), e.info_types.as_deref()), ("tenants", Some(&["authorized".to_owned()][..])));
    let masked = config.masked();
    assert!(masked.contains("[[events.routes]]") && masked.contains("info_types"), "{masked}");
    assert_no_secret(&masked);
    assert!(Config::from_sources(&route(&good), no_env()).unwrap().events.routes[0].info_types.is_none());
    assert!(Config::from_sources(&minimal(), no_env()).unwrap().events.routes.is_empty());

    only_problem(&route(&good.replace("http://127.0.0.1:1/events", "ftp://x")), "events.routes[0].url");
    only_problem(&route(&good.replace("name = \"tenants\"", "name = \"a b\"")), "events.routes[0].name");
    only_problem(
        &route(&good.replace(&format!("token = \"{TOKEN}\""), "token = \"has space\"")),
        "events.routes[0].token",
    );
    only_problem(&route(&format!("{good}\nmode = \"reply\"")), "events.routes[0].mode");
    only_problem(&route(&format!("{good}\ninfo_types = []")), "events.routes[0].info_types");
    let ticket = only_problem(
        &route(&format!("{good}\ninfo_types = [\"component_verify_ticket\"]")),
        "events.routes[0].info_types",
    );
    assert!(ticket.contains("never handed on"), "{ticket}");
    only_problem(&format!("{}[[events.routes]]\n{good}\n", route(&good)), "events.routes[1].name");
    let clash = format!(
        "{}[[messages.routes]]\nname = \"tenants\"\nauthorizers = [\"*\"]\nurl = \"http://127.0.0.1:1/\"\n\
         token = \"{TOKEN}\"\nmode = \"reply\"\n",
        route(&good)
    );
    let msg = only_problem(&clash, "events.routes[0].name");
    assert!(msg.contains("messages.routes[0]"), "{msg}");
    only_problem(&format!("{}[events]\nroutes = 1\n", minimal()), "events.routes");
    let found = problems(&minimal(), env(&[("WXGATE_EVENTS_ROUTES", "x")]));
    assert_eq!(keys(&found), ["WXGATE_EVENTS_ROUTES"]);
}

#[test]
fn ca_file_must_exist_and_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let with = |path: &Path| format!("{}[upstream]\nca_file = \"{}\"\n", minimal(), path.display());
    let missing = only_problem(&with(&dir.path().join("none.pem")), "upstream.ca_file");
    assert!(missing.contains("cannot read") && missing.contains("none.pem"), "{missing}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    assert!(only_problem(&with(&empty), "upstream.ca_file").contains("holds no PEM certificate"));
    let key = rcgen::KeyPair::generate().unwrap();
    let with_key = dir.path().join("key.pem");
    std::fs::write(&with_key, key.serialize_pem()).unwrap();
    assert!(only_problem(&with(&with_key), "upstream.ca_file").contains("other than certificates"));

    let ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&key).unwrap();
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, ca.pem()).unwrap();
    let config = Config::from_sources(&with(&good), no_env()).unwrap();
    let loaded = config.upstream.ca_file.unwrap();
    assert_eq!((loaded.path.as_path(), loaded.certs.len()), (good.as_path(), 1));
    let by_env = env(&[("WXGATE_UPSTREAM_CA_FILE", good.to_str().unwrap())]);
    assert!(Config::from_sources(&minimal(), by_env).unwrap().upstream.ca_file.is_some());
    assert!(Config::from_sources(&minimal(), no_env()).unwrap().upstream.ca_file.is_none());
}

#[test]
fn the_egress_proxy_is_an_http_url_whose_password_is_never_shown() {
    let with = |url: &str| format!("{}[upstream]\nproxy = \"{url}\"\n", minimal());
    for bad in ["socks5://192.0.2.7:1080", "https://192.0.2.7:3128", "192.0.2.7:3128", "http://192.0.2.7:3128/path"] {
        let said = only_problem(&with(bad), "upstream.proxy");
        assert!(!said.contains("192.0.2.7"), "the value is not quoted: {said}");
    }
    let config = Config::from_sources(&with("http://egress:p%40ss-secret@10.0.0.9:3128"), no_env()).unwrap();
    let proxy = config.upstream.proxy.as_ref().unwrap();
    assert_eq!((proxy.host.as_str(), proxy.port, proxy.describe()), ("10.0.0.9", 3128, "10.0.0.9:3128".to_owned()));
    // Basic base64("egress:p@ss-secret"): the password percent-decoded.
    assert_eq!(proxy.authorization.as_ref().unwrap().expose(), "Basic ZWdyZXNzOnBAc3Mtc2VjcmV0");
    let masked = config.masked();
    assert!(
        masked.contains("proxy = \"http://egress:...@10.0.0.9:3128/\"") && !masked.contains("ss-secret"),
        "{masked}"
    );
    assert!(!format!("{config:?}").contains("ss-secret"));
    let by_env = env(&[("WXGATE_UPSTREAM_PROXY", "http://10.0.0.9")]);
    let proxy = Config::from_sources(&minimal(), by_env).unwrap().upstream.proxy.unwrap();
    assert_eq!((proxy.port, proxy.authorization.is_none()), (80, true));
}

#[test]
fn a_listener_tls_pair_is_both_keys_readable() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let listen = |extra: &str| {
        let text = minimal();
        let at = text.find("[listen]\n").expect("minimal has [listen]") + "[listen]\n".len();
        format!("{}{extra}{}", &text[..at], &text[at..])
    };
    let said = only_problem(&listen(&format!("tls_cert = \"{}\"\n", cert.display())), "listen.tls_key");
    assert!(said.contains("required"), "{said}");
    only_problem(&listen(&format!("tls_key = \"{}\"\n", cert.display())), "listen.tls_cert");
    let missing = format!("tls_cert = \"{0}\"\ntls_key = \"{0}\"\n", cert.display());
    assert!(only_problem(&listen(&missing), "listen.tls_cert").contains("cannot read"));
    std::fs::write(&cert, "no certificate\n").unwrap();
    assert!(only_problem(&listen(&missing), "listen.tls_cert").contains("holds no PEM certificate"));
}
