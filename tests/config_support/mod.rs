//! What the configuration stories share: distinctive secrets, a minimal valid file, and the
//! problems a file and an environment give.

#![allow(dead_code)]

use wxgate::config::{Config, ConfigError, Problem};
use wxgate::AppId;

/// Distinctive secrets, so a leak is easy to spot in any output.
pub const APPSECRET: &str = "APPSECRETaaaa1111";
pub const TOKEN: &str = "TOKENbbbb2222";
pub const AES_KEY: &str = "SECRETKEYcccc3333ddddeeeeffffgggghhhhiiiijk";
pub const ADMIN_TOKEN: &str = "ADMINTOKENdddd4444";
pub const CLIENT_KEY: &str = "CLIENTKEYeeee5555";
pub const REDIS_PASSWORD: &str = "REDISPWffff6666";
pub const SECRETS: [&str; 6] = [APPSECRET, TOKEN, AES_KEY, ADMIN_TOKEN, CLIENT_KEY, REDIS_PASSWORD];

pub fn minimal() -> String {
    format!(
        "[component]\nappid = \"wx0123456789abcdef\"\nappsecret = \"{APPSECRET}\"\ntoken = \"{TOKEN}\"\n\
         encoding_aes_key = \"{AES_KEY}\"\n[listen]\npublic_base_url = \"https://wx.example.com\"\n\
         [admin]\ntoken = \"{ADMIN_TOKEN}\"\n"
    )
}

pub fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn problems(text: &str, vars: Vec<(String, String)>) -> Vec<Problem> {
    match Config::from_sources(text, vars) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(ConfigError::Invalid(problems)) => problems,
        Err(other) => panic!("expected Invalid, got {other}"),
    }
}

/// The one problem reported, which must be for `key`.
pub fn only_problem(text: &str, key: &str) -> String {
    let found = problems(text, no_env());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, key, "{found:?}");
    found[0].message.clone()
}

pub fn keys(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

pub fn appid(s: &str) -> AppId {
    AppId::parse(s).unwrap()
}

pub fn assert_no_secret(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} leaked into:\n{text}");
    }
}
