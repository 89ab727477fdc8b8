use super::super::{Config, ConfigError, Problem};

const SECRET: &str = "OWNSECRETzzzz9999";
const KEY: &str = "OwnAccountKey0123456789abcdefghijklmnopqrst";
const ADMIN: &str = "[listen]\npublic_base_url = \"https://wx.example.com\"\n[admin]\ntoken = \"ADMINTOKENdddd4444\"\n";

fn problems(text: &str, env: &[(&str, &str)]) -> Vec<Problem> {
    let vars = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    match Config::from_sources(text, vars) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(ConfigError::Invalid(problems)) => problems,
        Err(other) => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn a_gateway_may_hold_owned_accounts_only() {
    let text = format!(
        "[[accounts]]\nappid = \"wx5555555555555555\"\nsecret = \"{SECRET}\"\ntoken = \"owntoken\"\n\
         encoding_aes_key = \"{KEY}\"\n\n[[accounts]]\nappid = \"wx6666666666666666\"\nsecret = \"{SECRET}\"\n{ADMIN}"
    );
    let config = Config::from_sources(&text, Vec::new()).unwrap();
    assert!(config.component.is_none());
    assert_eq!(config.accounts.len(), 2);
    assert_eq!(config.namespace.to_string(), "wx5555555555555555", "the first account's appid");
    assert!(config.accounts[0].encoding_aes_key.is_some() && config.accounts[1].token.is_none());
    let masked = config.masked();
    assert!(!masked.contains(SECRET) && !masked.contains(KEY) && !masked.contains("owntoken"), "{masked}");
    assert!(masked.contains("[[accounts]]") && masked.contains("wx6666666666666666"), "{masked}");
}

#[test]
fn without_accounts_the_platform_is_required() {
    let found = problems(ADMIN, &[]);
    assert!(found.iter().any(|p| p.key == "component.appid" && p.message == "is required"), "{found:?}");
}

#[test]
fn each_bad_account_key_is_named_and_no_secret_echoed() {
    let text = format!(
        "[[accounts]]\nappid = \"wx5555555555555555\"\nsecret = \"{SECRET}\"\nsecret_env = \"SHOP_SECRET\"\n\n\
         [[accounts]]\nappid = \"WX-nope\"\nencoding_aes_key = \"short\"\n\n\
         [[accounts]]\nappid = \"wx5555555555555555\"\nsecret_env = \"NOT_SET_ANYWHERE_1234\"\ncolour = \"red\"\n{ADMIN}"
    );
    let found = problems(&text, &[]);
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "accounts[0].secret_env",
        "accounts[1].appid",
        "accounts[1].secret",
        "accounts[1].encoding_aes_key",
        "accounts[2].colour",
        "accounts[2].appid",
        "accounts[2].secret_env",
    ] {
        assert!(keys.contains(&key), "{key} in {found:?}");
    }
    let unset = found.iter().find(|p| p.key == "accounts[2].secret_env").unwrap();
    assert!(unset.message.contains("NOT_SET_ANYWHERE_1234") && unset.message.contains("not set"), "{unset:?}");
    for p in &found {
        assert!(!p.message.contains(SECRET), "{p:?}");
    }
}

#[test]
fn a_secret_may_come_from_a_named_variable_but_not_the_platforms_appid() {
    std::env::set_var("WXGATE_TEST_OWN_SECRET_7", SECRET);
    let text = format!(
        "[component]\nappid = \"wx0123456789abcdef\"\nappsecret = \"a\"\ntoken = \"tok\"\nencoding_aes_key = \"{KEY}\"\n\
         [[accounts]]\nappid = \"wx5555555555555555\"\nsecret_env = \"WXGATE_TEST_OWN_SECRET_7\"\n{ADMIN}"
    );
    let config = Config::from_sources(&text, Vec::new()).unwrap();
    assert_eq!(config.accounts[0].secret.expose(), SECRET);
    assert_eq!(config.namespace.to_string(), "wx0123456789abcdef", "the platform's appid");
    assert!(config.masked().contains("secret_env = \"WXGATE_TEST_OWN_SECRET_7\""));
    let clash = text.replace("wx5555555555555555", "wx0123456789abcdef");
    let found = problems(&clash, &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "accounts[0].appid");
}
