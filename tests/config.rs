//! The configuration as an operator meets it: the example file, environment overrides, and
//! error reports that name every bad key at once and never echo a secret.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wxgate::config::{AuthorizerScope, Config, ConfigError, Problem, StoreConfig};
use wxgate::AppId;

const EXAMPLE: &str = include_str!("../conf/wxgate.example.toml");

/// Distinctive secrets, so a leak is easy to spot in any output.
const APPSECRET: &str = "APPSECRETaaaa1111";
const TOKEN: &str = "TOKENbbbb2222";
const AES_KEY: &str = "SECRETKEYcccc3333ddddeeeeffffgggghhhhiiiijk";
const ADMIN_TOKEN: &str = "ADMINTOKENdddd4444";
const CLIENT_KEY: &str = "CLIENTKEYeeee5555";
const REDIS_PASSWORD: &str = "REDISPWffff6666";
const SECRETS: [&str; 6] = [APPSECRET, TOKEN, AES_KEY, ADMIN_TOKEN, CLIENT_KEY, REDIS_PASSWORD];

fn minimal() -> String {
    format!(
        "[component]\nappid = \"wx0123456789abcdef\"\nappsecret = \"{APPSECRET}\"\ntoken = \"{TOKEN}\"\n\
         encoding_aes_key = \"{AES_KEY}\"\n[listen]\npublic_base_url = \"https://wx.example.com\"\n\
         [admin]\ntoken = \"{ADMIN_TOKEN}\"\n"
    )
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn problems(text: &str, vars: Vec<(String, String)>) -> Vec<Problem> {
    match Config::from_sources(text, vars) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(ConfigError::Invalid(problems)) => problems,
        Err(other) => panic!("expected Invalid, got {other}"),
    }
}

/// The one problem reported, which must be for `key`.
fn only_problem(text: &str, key: &str) -> String {
    let found = problems(text, no_env());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, key, "{found:?}");
    found[0].message.clone()
}

fn keys(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

fn appid(s: &str) -> AppId {
    AppId::parse(s).unwrap()
}

fn assert_no_secret(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} leaked into:\n{text}");
    }
}

#[test]
fn example_file_loads() {
    let config = Config::from_sources(EXAMPLE, no_env()).unwrap();
    assert_eq!(config.component.as_ref().unwrap().appid, appid("wx0123456789abcdef"));
    assert_eq!(config.upstream.base_url.as_str(), "https://api.weixin.qq.com/");
    assert_eq!(config.upstream.timeout, Duration::from_millis(10_000));
    let fallbacks: Vec<&str> = config.upstream.fallback_urls.iter().map(url::Url::as_str).collect();
    assert_eq!(fallbacks, ["https://api2.weixin.qq.com/"], "WeChat's disaster-recovery host by default");
    let off = EXAMPLE.replace("# fallback_urls = [\"https://api2.weixin.qq.com\"]", "fallback_urls = []");
    assert!(Config::from_sources(&off, no_env()).unwrap().upstream.fallback_urls.is_empty(), "[] turns it off");
    assert_eq!(config.proxy.keepalive_timeout, Duration::from_secs(75));
    assert_eq!(config.proxy.header_timeout, Duration::from_secs(60));
    assert_eq!(config.listen.proxy, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(config.listen.admin, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(config.listen.public_base_url.as_str(), "https://wx.example.com/");
    assert!(matches!(&config.store, StoreConfig::Sqlite { path } if path == Path::new("data/wxgate.sqlite3")));
    assert_eq!(config.refresh.ahead, Duration::from_secs(600));
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(5));
    assert_eq!(config.clients.len(), 2);
    let shop = &config.clients[0];
    assert_eq!(shop.name, "shop-backend");
    assert!(shop.authorizers.allows(&appid("wx1111111111111111")));
    assert!(!shop.authorizers.allows(&appid("wx3333333333333333")));
    assert!(!shop.component && !shop.reveal_tokens);
    let token_server = &config.clients[1];
    assert_eq!(token_server.authorizers, AuthorizerScope::All);
    assert!(token_server.component && token_server.reveal_tokens);
}

#[test]
fn defaults_fill_everything_not_required() {
    let config = Config::from_sources(&minimal(), no_env()).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(256);
    assert_eq!(config.server.threads, cores);
    assert_eq!(config.upstream.timeout, Duration::from_secs(10));
    assert_eq!(config.refresh.ahead, Duration::from_secs(600));
    assert!(matches!(&config.store, StoreConfig::Sqlite { path } if path == &PathBuf::from("data/wxgate.sqlite3")));
    assert!(config.clients.is_empty());
    assert_eq!(config.component.as_ref().unwrap().appsecret.expose(), APPSECRET);
    assert_eq!(config.component.as_ref().unwrap().encoding_aes_key.expose(), AES_KEY);
}

#[test]
fn a_file_without_required_keys_names_each_one() {
    let found = problems("", no_env());
    assert_eq!(
        keys(&found),
        [
            "component.appid",
            "component.appsecret",
            "component.token",
            "component.encoding_aes_key",
            "listen.public_base_url",
            "admin.token",
        ]
    );
    assert!(found.iter().all(|p| p.message == "is required"));
}

#[test]
fn environment_wins_over_the_file() {
    let text = format!("{}[upstream]\ntimeout_ms = 5000\n[server]\nthreads = 2\n", minimal());
    let vars = env(&[
        ("WXGATE_UPSTREAM_TIMEOUT_MS", "2500"),
        ("WXGATE_UPSTREAM_BASE_URL", "http://127.0.0.1:18080"),
        ("WXGATE_SERVER_THREADS", "3"),
        ("WXGATE_COMPONENT_APPSECRET", "from-the-environment"),
        ("WXGATE_STORE_BACKEND", "redis"),
        ("WXGATE_STORE_REDIS_URL", "redis://:pw@redis.internal:6379/1"),
        ("WXGATE_CONFIG", "elsewhere.toml"),
        ("WXGATE_LOG", "wxgate=debug"),
        ("HOME", "/root"),
    ]);
    let config = Config::from_sources(&text, vars).unwrap();
    assert_eq!(config.upstream.timeout, Duration::from_millis(2500));
    assert_eq!(config.upstream.base_url.as_str(), "http://127.0.0.1:18080/");
    assert!(config.upstream.fallback_urls.is_empty(), "no default fallback for another host");
    assert_eq!(config.server.threads, 3);
    assert_eq!(config.component.as_ref().unwrap().appsecret.expose(), "from-the-environment");
    let StoreConfig::Redis { url, key_prefix, .. } = &config.store else { panic!("{:?}", config.store) };
    assert_eq!(url.expose(), "redis://:pw@redis.internal:6379/1");
    assert_eq!(key_prefix, "wxgate:");
}

#[test]
fn environment_can_supply_required_keys() {
    let text = minimal().replace(&format!("token = \"{ADMIN_TOKEN}\"\n"), "");
    assert_eq!(keys(&problems(&text, no_env())), ["admin.token"]);
    let config = Config::from_sources(&text, env(&[("WXGATE_ADMIN_TOKEN", "0123456789abcdef-env")])).unwrap();
    assert_eq!(config.admin.token.expose(), "0123456789abcdef-env");
}

#[test]
fn bad_environment_values_name_the_variable_and_the_key() {
    let vars = env(&[("WXGATE_UPSTREAM_TIMEOUT_MS", "ten"), ("WXGATE_REFRESH_AHEAD_SECS", "5")]);
    let found = problems(&minimal(), vars);
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "upstream.timeout_ms: WXGATE_UPSTREAM_TIMEOUT_MS must be an integer",
            "refresh.ahead_secs: must be between 60 and 3600 (set by WXGATE_REFRESH_AHEAD_SECS)",
        ]
    );
}

#[test]
fn unknown_environment_variables_are_named() {
    let vars = env(&[("WXGATE_COMPONENT_APP_ID", "x"), ("WXGATE_LISTENER_PROXY", "x"), ("WXGATE_CLIENTS", "x")]);
    let found = problems(&minimal(), vars);
    assert_eq!(keys(&found), ["WXGATE_COMPONENT_APP_ID", "WXGATE_LISTENER_PROXY", "WXGATE_CLIENTS"]);
    assert!(found.iter().all(|p| p.message.starts_with("unknown variable")), "{found:?}");
}

#[test]
fn clients_cannot_come_from_the_environment() {
    let found = problems(&minimal(), env(&[("WXGATE_CLIENTS_KEY", CLIENT_KEY)]));
    assert_eq!(keys(&found), ["WXGATE_CLIENTS_KEY"]);
    assert!(found[0].message.contains("[[clients]]"));
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let text = minimal()
        .replace("wx0123456789abcdef", "wx0123")
        .replace("[admin]", "[upstream]\ntimeout_ms = 0\nretries = 3\n[store]\nbackend = \"postgres\"\n[admin]")
        .replace(&format!("token = \"{ADMIN_TOKEN}\""), "token = 12345");
    let found = problems(&text, no_env());
    let mut found_keys = keys(&found);
    found_keys.sort();
    assert_eq!(
        found_keys,
        ["admin.token", "component.appid", "store.backend", "upstream.retries", "upstream.timeout_ms"],
        "{found:?}"
    );
    let error = ConfigError::Invalid(found.clone()).to_string();
    assert_eq!(error.lines().count(), 5);
    assert!(error.contains("upstream.retries: unknown key"), "{error}");
    assert!(error.contains("admin.token: must be a string, not an integer"), "{error}");
    assert!(!error.contains("12345"), "{error}");
}

#[test]
fn unknown_keys_and_sections_are_named() {
    assert_eq!(
        keys(&problems(&minimal().replace("appid =", "app_id ="), no_env())),
        ["component.app_id", "component.appid"]
    );
    let message = only_problem(&format!("{}[listener]\nproxy = \"0.0.0.0:1\"\n", minimal()), "listener");
    assert!(message.starts_with("unknown section"), "{message}");
    let message = only_problem(
        &format!("{}[[clients]]\nname = \"a\"\nkey = \"{CLIENT_KEY}\"\nscope = 1\n", minimal()),
        "clients[0].scope",
    );
    assert!(message.starts_with("unknown key"), "{message}");
    let message = only_problem(&format!("debug = true\n{}", minimal()), "debug");
    assert!(message.starts_with("unknown key"), "{message}");
}

#[test]
fn misspelled_key_reports_unknown_and_missing() {
    let found = problems(&minimal().replace("appid =", "app_id ="), no_env());
    assert_eq!(
        found[0].to_string(),
        "component.app_id: unknown key (known keys: appid, appsecret, token, encoding_aes_key)"
    );
    assert_eq!(found[1].to_string(), "component.appid: is required");
}

#[test]
fn bad_component_values() {
    let message = only_problem(&minimal().replace("wx0123456789abcdef", "wx0123456789ABCDEF"), "component.appid");
    assert!(message.contains("16 lowercase hex digits"), "{message}");
    let short_key = &AES_KEY[..42];
    let message = only_problem(&minimal().replace(AES_KEY, short_key), "component.encoding_aes_key");
    assert!(message.contains("43 characters"), "{message}");
    let bad_alphabet = AES_KEY.replace('S', "-");
    only_problem(&minimal().replace(AES_KEY, &bad_alphabet), "component.encoding_aes_key");
    let message = only_problem(&minimal().replace(TOKEN, "TOKEN-with-dash"), "component.token");
    assert!(message.contains("3 to 32 letters or digits"), "{message}");
    only_problem(&minimal().replace(APPSECRET, ""), "component.appsecret");
}

#[test]
fn bad_addresses_and_urls() {
    let listen = |body: &str| {
        format!(
            "{}[listen]\n{body}\n",
            minimal().replace("[listen]\npublic_base_url = \"https://wx.example.com\"\n", "")
        )
    };
    let message = only_problem(
        &listen("proxy = \"localhost:8080\"\npublic_base_url = \"https://wx.example.com\""),
        "listen.proxy",
    );
    assert!(message.contains("IP:PORT"), "{message}");
    only_problem(&listen("admin = \"127.0.0.1\"\npublic_base_url = \"https://wx.example.com\""), "listen.admin");
    only_problem(
        &listen("proxy = \"0.0.0.0:9000\"\nadmin = \"0.0.0.0:9000\"\npublic_base_url = \"https://wx.example.com\""),
        "listen.admin",
    );
    for bad in ["wx.example.com", "ftp://wx.example.com", "https://wx.example.com/?x=1", "https://wx.example.com/#top"]
    {
        only_problem(&listen(&format!("public_base_url = \"{bad}\"")), "listen.public_base_url");
    }
    let upstream = format!("{}[upstream]\nbase_url = \"api.weixin.qq.com\"\n", minimal());
    only_problem(&upstream, "upstream.base_url");
    let config = Config::from_sources(&listen("public_base_url = \"https://example.com/wx\""), no_env()).unwrap();
    assert_eq!(
        config.listen.public_base_url.join("wxgate/authorize").unwrap().as_str(),
        "https://example.com/wx/wxgate/authorize"
    );
}

#[test]
fn store_backends() {
    let store = |body: &str| Config::from_sources(&format!("{}[store]\n{body}\n", minimal()), no_env());
    assert!(matches!(store("backend = \"memory\"").unwrap().store, StoreConfig::Memory));
    let redis = store("backend = \"redis\"\nkey_prefix = \"gw:\"").unwrap().store;
    let StoreConfig::Redis { url, key_prefix, .. } = redis else { panic!("{redis:?}") };
    assert_eq!((url.expose(), key_prefix.as_str()), ("redis://127.0.0.1:6379/0", "gw:"));

    let text = |body: &str| format!("{}[store]\n{body}\n", minimal());
    let message = only_problem(&text("backend = \"postgres\""), "store.backend");
    assert_eq!(message, "must be \"sqlite\", \"redis\" or \"memory\"");
    only_problem(&text("backend = \"redis\"\nredis_url = \"http://127.0.0.1:6379\""), "store.redis_url");
    only_problem(&text("backend = \"redis\"\nkey_prefix = \"\""), "store.key_prefix");
    only_problem(&text("path = \"\""), "store.path");
}

#[test]
fn numbers_out_of_range() {
    let text = |section: &str, body: &str| format!("{}[{section}]\n{body}\n", minimal());
    only_problem(&text("upstream", "timeout_ms = 120001"), "upstream.timeout_ms");
    only_problem(&text("refresh", "ahead_secs = 59"), "refresh.ahead_secs");
    only_problem(&text("server", "threads = 0"), "server.threads");
    only_problem(&text("server", "threads = 257"), "server.threads");
    only_problem(&text("server", "shutdown_grace_secs = -1"), "server.shutdown_grace_secs");
    let config = Config::from_sources(&text("server", "threads = 256\nshutdown_grace_secs = 0"), no_env()).unwrap();
    assert_eq!((config.server.threads, config.server.shutdown_grace), (256, Duration::ZERO));
}

fn with_clients(clients: &[(&str, &str, &str)]) -> String {
    let mut text = minimal();
    for (name, key, authorizers) in clients {
        text += &format!("[[clients]]\nname = \"{name}\"\nkey = \"{key}\"\nauthorizers = {authorizers}\n");
    }
    text
}

#[test]
fn clients_need_unique_names_and_keys() {
    let text = with_clients(&[
        ("shop", CLIENT_KEY, "[]"),
        ("shop", "another-key-0123456789", "[]"),
        ("crm", CLIENT_KEY, "[]"),
    ]);
    let found = problems(&text, no_env());
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "clients[1].name: same name as clients[0]",
            "clients[2].key: same key as clients[0]: each client needs its own",
        ]
    );
}

#[test]
fn client_fields_are_checked() {
    only_problem(&with_clients(&[("shop", "short", "[]")]), "clients[0].key");
    only_problem(&with_clients(&[("", CLIENT_KEY, "[]")]), "clients[0].name");
    let message = only_problem(
        &with_clients(&[("shop", CLIENT_KEY, "[\"*\", \"wx1111111111111111\"]")]),
        "clients[0].authorizers",
    );
    assert!(message.contains("stand alone"), "{message}");
    let message = only_problem(
        &with_clients(&[("shop", CLIENT_KEY, "[\"wx1111111111111111\", \"shop\"]")]),
        "clients[0].authorizers",
    );
    assert!(message.contains("\"shop\""), "{message}");
    only_problem(&with_clients(&[("shop", CLIENT_KEY, "\"*\"")]), "clients[0].authorizers");
    let missing_key = format!("{}[[clients]]\nname = \"shop\"\n", minimal());
    assert_eq!(only_problem(&missing_key, "clients[0].key"), "is required");
    let as_table = format!("{}[clients]\nname = \"shop\"\n", minimal());
    assert!(only_problem(&as_table, "clients").contains("[[clients]]"));
}

#[test]
fn secrets_never_appear_in_debug_or_masked() {
    let text = format!(
        "{}[store]\nbackend = \"redis\"\nredis_url = \"redis://:{REDIS_PASSWORD}@redis:6379/0\"\n{}",
        minimal(),
        "[[clients]]\nname = \"shop\"\nkey = \"CLIENTKEYeeee5555\"\nauthorizers = [\"*\"]\n"
    );
    let config = Config::from_sources(&text, no_env()).unwrap();
    assert_no_secret(&format!("{config:?}"));
    assert_no_secret(&format!("{config:#?}"));
    let masked = config.masked();
    assert_no_secret(&masked);
    assert!(masked.contains("redis://:...@redis:6379/0"), "{masked}");
}

#[test]
fn masked_is_toml_with_the_effective_values() {
    let config = Config::from_sources(EXAMPLE, no_env()).unwrap();
    let masked = config.masked();
    let table: toml::Table = masked.parse().unwrap_or_else(|e| panic!("{e}\n{masked}"));
    assert_eq!(table["component"]["appid"].as_str(), Some("wx0123456789abcdef"));
    assert_eq!(table["component"]["appsecret"].as_str(), Some("..."));
    assert_eq!(table["component"]["encoding_aes_key"].as_str(), Some("..."));
    assert_eq!(table["admin"]["token"].as_str(), Some("..."));
    assert_eq!(table["upstream"]["timeout_ms"].as_integer(), Some(10_000));
    assert_eq!(table["store"]["backend"].as_str(), Some("sqlite"));
    assert_eq!(table["server"]["threads"].as_integer(), Some(config.server.threads as i64));
    let clients = table["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    assert_eq!(clients[0]["key"].as_str(), Some("..."));
    assert_eq!(clients[1]["authorizers"].as_array().unwrap()[0].as_str(), Some("*"));
    // Masked secrets fail validation, so a masked dump can never be mistaken for a working file.
    assert!(Config::from_sources(&masked, no_env()).is_err());
    let minimal = Config::from_sources(&minimal(), no_env()).unwrap().masked();
    assert!(minimal.parse::<toml::Table>().is_ok(), "{minimal}");
}

#[test]
fn secrets_never_appear_in_errors() {
    let cases = [
        // Too short or malformed secrets, from the file and from the environment.
        minimal().replace(ADMIN_TOKEN, &ADMIN_TOKEN[..10]),
        minimal().replace(TOKEN, &format!("{TOKEN}-")),
        minimal().replace(AES_KEY, &format!("{AES_KEY}x")),
        minimal().replace(APPSECRET, &format!(" {APPSECRET}")),
        with_clients(&[("a", CLIENT_KEY, "[]"), ("b", CLIENT_KEY, "[]")]),
        format!("{}[store]\nredis_url = \"http://:{REDIS_PASSWORD}@redis\"\n", minimal()),
        // Syntax errors on a secret's line: toml's own message would quote the line.
        minimal().replace(&format!("\"{APPSECRET}\""), &format!("\"{APPSECRET}")),
        minimal().replace(&format!("\"{APPSECRET}\""), APPSECRET),
        minimal().replace(&format!("\"{ADMIN_TOKEN}\""), &format!("\"{ADMIN_TOKEN}\" trailing")),
        minimal().replace(&format!("\"{TOKEN}\""), &format!("\"{TOKEN}\\q\"")),
    ];
    for text in &cases {
        let error = Config::from_sources(text, no_env()).unwrap_err();
        assert_no_secret(&error.to_string());
        assert_no_secret(&format!("{error:?}"));
    }
    let vars = env(&[("WXGATE_ADMIN_TOKEN", &ADMIN_TOKEN[..12]), ("WXGATE_COMPONENT_ENCODING_AES_KEY", TOKEN)]);
    let error = Config::from_sources(&minimal(), vars).unwrap_err();
    assert_eq!(error.to_string().lines().count(), 2, "{error}");
    assert_no_secret(&error.to_string());
}

#[test]
fn syntax_errors_name_the_line_and_key() {
    let text = minimal().replace(&format!("\"{APPSECRET}\""), APPSECRET);
    let found = problems(&text, no_env());
    assert_eq!(keys(&found), ["component.appsecret"]);
    assert!(found[0].message.starts_with("TOML syntax error at line 3, column 13"), "{}", found[0]);
}

#[test]
fn load_reads_the_file_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxgate.toml");
    std::fs::write(&path, minimal()).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.component.as_ref().unwrap().appid, appid("wx0123456789abcdef"));

    let missing = dir.path().join("nope.toml");
    let error = Config::load(&missing).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error.to_string().contains(&*missing.to_string_lossy()), "{error}");
}

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
