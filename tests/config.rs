//! The configuration as an operator meets it: the example file, environment overrides, and
//! error reports that name every bad key at once and never echo a secret.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wxgate::config::{AuthorizerScope, Config, ConfigError, StoreConfig};

mod config_support;

use config_support::*;

const EXAMPLE: &str = include_str!("../conf/wxgate.example.toml");

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
