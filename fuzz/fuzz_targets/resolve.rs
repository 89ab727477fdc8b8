//! Request resolution on the proxy listener: which client, which account, what path and query
//! WeChat will see. The input is a request head: `METHOD PATH` on the first line, then
//! `Name: value` lines. Whatever resolves must send WeChat no token parameter but the real one
//! (the client's key never goes upstream in its place), nor a path with a `.` or `..` segment.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;
use std::sync::LazyLock;
use wxgate::config::Config;
use wxgate::proxy::{resolve, Clients};

static CLIENTS: LazyLock<Clients> = LazyLock::new(|| {
    let toml = format!(
        r#"
[component]
appid = "{appid}"
appsecret = "appsecret-0123456789abcdef0123456"
token = "{token}"
encoding_aes_key = "{aes}"

[listen]
public_base_url = "https://gw.example.com"

[admin]
token = "admin-token-0123456789"

[[clients]]
name = "all"
key = "{key}"
authorizers = ["*"]
component = true

[[clients]]
name = "one"
key = "single-client-key-0123456789"
authorizers = ["wx1111111111111111"]
"#,
        appid = common::COMPONENT_APPID,
        token = common::MSG_TOKEN,
        aes = common::AES_KEY,
        key = common::CLIENT_KEY,
    );
    Clients::new(&Config::from_sources(&toml, std::iter::empty()).unwrap().clients)
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let Some((method, path)) = lines.next().and_then(|l| l.split_once(' ')) else { return };
    let Ok(mut req) = RequestHeader::build(method, path.as_bytes(), None) else { return };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let Ok(name) = http::HeaderName::from_bytes(name.trim().as_bytes()) else { continue };
        let _ = req.append_header(name, value.trim());
    }
    if let Ok(call) = resolve(&CLIENTS, &req) {
        let uri = call.outbound().uri("", "REAL-TOKEN");
        let query = uri.split_once('?').map_or("", |(_, q)| q);
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if name == "access_token" || name == "component_access_token" {
                assert_eq!(value, "REAL-TOKEN", "a token parameter WeChat would see: {uri}");
            }
        }
        assert!(!call.path.split('/').any(|s| s == "." || s == ".."), "{}", call.path);
    }
});
