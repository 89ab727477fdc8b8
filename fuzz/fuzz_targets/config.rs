//! The config loader: TOML text and `WXGATE_*` variables, validated into a `Config` or refused
//! naming the keys. The input is the file, then, after a line `--- env`, `NAME=value` lines.
//! What loads must print masked without its secrets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (file, env) = text.split_once("\n--- env\n").unwrap_or((text, ""));
    let env = env.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned()));
    match Config::from_sources(file, env) {
        Ok(config) => {
            let shown = config.masked();
            let secret = config.component.appsecret.expose();
            if secret.len() >= 16 {
                assert!(!shown.contains(secret), "the masked config shows the appsecret");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
