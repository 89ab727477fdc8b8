//! What WeChat says of each authorized account (`api_get_authorizer_info`), as the stores keep
//! it: no token in it, so it may be shown on the admin API as it is.

use crate::AppId;
use serde_json::{json, Value};

/// Official account (公众号) or mini program (小程序): a mini program's info carries
/// `MiniProgramInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountKind {
    OfficialAccount,
    MiniProgram,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OfficialAccount => "official_account",
            Self::MiniProgram => "mini_program",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::OfficialAccount, Self::MiniProgram].into_iter().find(|k| k.as_str() == s)
    }
}

/// One account's info. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerInfoRecord {
    pub appid: AppId,
    pub nick_name: Option<String>,
    /// The `gh_...` id messages carry as `ToUserName`.
    pub user_name: Option<String>,
    pub principal_name: Option<String>,
    pub kind: AccountKind,
    /// 1 normal, 14 closed, 16 banned, 18 warned, 19 frozen (PROTOCOL.md §11).
    pub account_status: Option<i64>,
    /// Permission set ids granted to the component.
    pub func_info: Vec<i64>,
    pub fetched_at: i64,
}

impl AuthorizerInfoRecord {
    /// The record as JSON, for stores that keep a document (Redis) and for the admin API.
    pub fn to_json(&self) -> Value {
        json!({
            "nick_name": self.nick_name,
            "user_name": self.user_name,
            "principal_name": self.principal_name,
            "kind": self.kind.as_str(),
            "account_status": self.account_status,
            "func_info": self.func_info,
            "info_fetched_at_ms": self.fetched_at,
        })
    }

    /// The inverse of [`Self::to_json`]; `None` for a document that is not one.
    pub fn from_json(appid: AppId, v: &Value) -> Option<Self> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            appid,
            nick_name: text("nick_name"),
            user_name: text("user_name"),
            principal_name: text("principal_name"),
            kind: AccountKind::parse(v.get("kind")?.as_str()?)?,
            account_status: v.get("account_status").and_then(Value::as_i64),
            func_info: v.get("func_info")?.as_array()?.iter().filter_map(Value::as_i64).collect(),
            fetched_at: v.get("info_fetched_at_ms")?.as_i64()?,
        })
    }

    /// `func_info` as SQLite keeps it: ids joined by commas.
    pub fn func_info_text(&self) -> String {
        self.func_info.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
    }

    pub fn parse_func_info(text: &str) -> Vec<i64> {
        text.split(',').filter_map(|s| s.trim().parse().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let r = AuthorizerInfoRecord {
            appid: AppId::parse("wx1111111111111111").unwrap(),
            nick_name: Some("Shop \"A\"".into()),
            user_name: Some("gh_0123456789ab".into()),
            principal_name: None,
            kind: AccountKind::MiniProgram,
            account_status: Some(19),
            func_info: vec![1, 17],
            fetched_at: 5,
        };
        assert_eq!(AuthorizerInfoRecord::from_json(r.appid, &r.to_json()), Some(r.clone()));
        assert_eq!(AuthorizerInfoRecord::parse_func_info(&r.func_info_text()), vec![1, 17]);
        assert_eq!(AuthorizerInfoRecord::from_json(r.appid, &json!({"kind": "robot"})), None);
    }
}
