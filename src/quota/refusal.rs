//! Why the guard answered a call itself, and what the client is told.

use super::{beijing_time, Account, QUOTA_REACHED};
use crate::reply::Reply;
use std::time::Duration;

/// Why a call was not let through.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Rate { client: String, rate: f64, retry_after: Duration },
    Share { client: String, api: String, share: f64, resets_at_ms: i64, now_ms: i64 },
    Held { account: Account, api: String, until_ms: i64 },
}

impl Refusal {
    /// The `reason` label of `wxgate_rate_limited_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Rate { .. } => "rate",
            Self::Share { .. } => "share",
            Self::Held { .. } => "quota",
        }
    }

    /// 429 with `Retry-After` and the gateway's -20429, or, for a held pair, WeChat's own
    /// 45009 (HTTP 200), so that an SDK reacts as it does to WeChat.
    pub fn reply(&self) -> Reply {
        match self {
            Self::Rate { client, rate, retry_after } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                Reply::error(
                    429,
                    format!("client {client} is over its rate of {rate} calls a second; retry after {secs} s"),
                )
                .with_retry_after(secs)
            }
            Self::Share { client, api, share, resets_at_ms, now_ms } => {
                let secs = ((resets_at_ms - now_ms).max(1000) as u64).div_ceil(1000);
                let percent = share * 100.0;
                Reply::error(
                    429,
                    format!(
                        "client {client} has used its share ({percent} %) of this account's daily quota for {api}; it resets at {} Beijing time",
                        beijing_time(*resets_at_ms)
                    ),
                )
                .with_retry_after(secs)
            }
            Self::Held { api, until_ms, .. } => {
                let errmsg = format!(
                    "wxgate: WeChat answered 45009: this account's daily quota for {api} is used up; calls resume at {} Beijing time, or after a clear-quota",
                    beijing_time(*until_ms)
                );
                Reply::json(200, &serde_json::json!({ "errcode": QUOTA_REACHED, "errmsg": errmsg }))
            }
        }
    }
}
