//! `[[accounts]]`: the official accounts and mini programs the company owns itself, whose tokens
//! the gateway keeps with their AppSecret (`stable_token`) beside, or instead of, a platform's.

use super::file::AccountFile;
use super::rules::{aes_key, appid, message_token, secret_of_length};
use super::Problems;
use crate::{AppId, Secret};

/// An owned account. `encoding_aes_key`, when set, is known to decode to 32 bytes, and is set
/// only with `token` (a key without a token could not verify a push).
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub appid: AppId,
    pub secret: Secret,
    /// Where the secret came from, for `wxgate check`: the variable's name, never its value.
    pub secret_env: Option<String>,
    /// Its own message server's token: pushes are taken at `/wxgate/callback/{appid}`.
    pub token: Option<Secret>,
    /// Its own EncodingAESKey: safe and compatible mode.
    pub encoding_aes_key: Option<Secret>,
}

/// Every account, or `None` when any is bad (each problem named under `accounts[i]`). `platform`
/// is the component's appid, which no account may take.
pub(super) fn accounts(files: &[AccountFile], platform: Option<&str>, p: &mut Problems) -> Option<Vec<AccountConfig>> {
    let built: Vec<Option<AccountConfig>> = files.iter().enumerate().map(|(i, f)| account(i, f, p)).collect();
    for (i, f) in files.iter().enumerate() {
        let Some(this) = f.appid.as_deref() else { continue };
        if let Some(j) = files[..i].iter().position(|e| e.appid.as_deref() == Some(this)) {
            p.push(format!("accounts[{i}].appid"), format!("same appid as accounts[{j}]"));
        }
        if platform == Some(this) {
            p.push(format!("accounts[{i}].appid"), "is the platform's own (component.appid): list owned accounts only");
        }
    }
    built.into_iter().collect()
}

fn account(i: usize, f: &AccountFile, p: &mut Problems) -> Option<AccountConfig> {
    let at = |key: &str| format!("accounts[{i}].{key}");
    let appid = p.check(&at("appid"), f.appid.as_deref().ok_or_else(|| "is required".to_owned()).and_then(appid));
    let secret = match (&f.secret, &f.secret_env) {
        (Some(secret), None) => p.check(&at("secret"), secret_of_length(1)(secret)),
        (None, Some(name)) => p.check(&at("secret_env"), from_env(name)),
        (Some(_), Some(_)) => p.check(&at("secret_env"), Err("set secret or secret_env, not both".to_owned())),
        (None, None) => {
            p.check(&at("secret"), Err("is required (or secret_env, naming a variable that holds it)".to_owned()))
        }
    };
    let token = f.token.as_deref().map(|t| p.check(&at("token"), message_token(t)));
    let key = f.encoding_aes_key.as_deref().map(|k| p.check(&at("encoding_aes_key"), aes_key(k)));
    if key.is_some() && token.is_none() {
        p.push(at("token"), "is required with encoding_aes_key: pushes are signed with it");
    }
    Some(AccountConfig {
        appid: appid?,
        secret: secret?,
        secret_env: f.secret_env.clone(),
        token: token.map_or(Some(None), |t| t.map(Some))?,
        encoding_aes_key: key.map_or(Some(None), |k| k.map(Some))?,
    })
}

/// The secret an environment variable holds; the error names the variable, never a value.
fn from_env(name: &str) -> Result<Secret, String> {
    match std::env::var(name) {
        Ok(value) => secret_of_length(1)(&value).map_err(|e| format!("names {name}, whose value {e}")),
        Err(std::env::VarError::NotPresent) => Err(format!("names {name}, which is not set")),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("names {name}, whose value is not UTF-8")),
    }
}

#[cfg(test)]
mod tests;
