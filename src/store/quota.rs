//! What the quota guard shares between gateway instances on one Redis: each client's call
//! bucket, the calls WeChat accepted per client, account and API on each Beijing day, and the
//! accounts' APIs WeChat answered 45009 for. A store only one instance uses shares none of it:
//! the guard then keeps it all in memory.
//!
//! A pair is `{account}|{api}`: an account's appid (or `component`) and an API path.

use super::StoreError;
use crate::AppId;
use async_trait::async_trait;

/// Calls granted from a shared bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// How many calls may be made now (up to what was asked).
    pub calls: u32,
    /// With none granted: how long until the bucket holds one again.
    pub retry_after_ms: u64,
}

/// Calls this instance counted since it last reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    pub client: String,
    pub pair: String,
    /// Less than 0 when calls counted in an earlier report were given back.
    pub calls: i64,
}

#[async_trait]
pub trait SharedQuota: Send + Sync {
    /// Takes up to `want` calls from `client`'s bucket, which the whole cluster draws from and
    /// which fills at `rate` calls a second up to `burst`, on the server's clock.
    async fn take_calls(
        &self,
        component: &AppId,
        client: &str,
        want: u32,
        rate: f64,
        burst: f64,
    ) -> Result<Grant, StoreError>;

    /// Adds this instance's counts for Beijing day `day` and answers the cluster's totals for
    /// the same (client, pair)s, in order. Counts are kept two days.
    async fn add_used(&self, component: &AppId, day: i64, used: &[Used]) -> Result<Vec<u64>, StoreError>;

    /// Holds `pair` until `until_ms` (Unix ms) for every instance.
    async fn hold(&self, component: &AppId, pair: &str, until_ms: i64) -> Result<(), StoreError>;

    /// Every pair held, with when its hold ends (some may have ended).
    async fn holds(&self, component: &AppId) -> Result<Vec<(String, i64)>, StoreError>;

    /// Lifts every hold of `account` (an appid or `component`): its quota was cleared.
    async fn lift(&self, component: &AppId, account: &str) -> Result<(), StoreError>;
}
