//! The quota guard's shared state on Redis: a bucket per client (a hash filled on the server's
//! clock, so that instances' clocks need not agree), a hash of counts per client and Beijing
//! day, and one hash of held pairs. None of it is durable on purpose: losing it costs at most
//! a day's counts, never a credential.

use super::{Durability, RedisStore};
use crate::store::quota::{Grant, SharedQuota, Used};
use crate::store::StoreError;
use crate::AppId;
use async_trait::async_trait;
use redis::Script;
use std::sync::LazyLock;

/// How long a day's counts are kept: past the day's end, for the admin API's "yesterday".
const USED_TTL_SECS: u64 = 2 * 86_400;

/// KEYS: the bucket. ARGV: want, rate (calls/s), burst. Answers {granted, ms until one}. The
/// bucket fills on the server's clock (TIME), since the instances' clocks may differ.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
          local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
          local want, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
          local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
          local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
          tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
          local got = math.min(want, math.floor(tokens))
          tokens = tokens - got
          redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
          redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
          if got > 0 then return {got, 0} end
          return {0, math.ceil((1 - tokens) * 1000 / rate)}",
    )
});

/// KEYS: the holds hash. ARGV: the account. Deletes the fields `{account}|...`.
static LIFT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local prefix = ARGV[1] .. '|'
          for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
            if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], f) end
          end
          return 0",
    )
});

impl RedisStore {
    fn used_key(&self, component: &AppId, day: i64, client: &str) -> String {
        self.key(component, &format!("quota:used:{day}:{client}"))
    }
}

#[async_trait]
impl SharedQuota for RedisStore {
    async fn take_calls(
        &self,
        component: &AppId,
        client: &str,
        want: u32,
        rate: f64,
        burst: f64,
    ) -> Result<Grant, StoreError> {
        let mut invocation = TAKE.key(self.key(component, &format!("quota:bucket:{client}")));
        invocation.arg(want).arg(rate).arg(burst);
        let (calls, retry_after_ms): (u32, u64) = self.invoke(invocation, Durability::Master).await?;
        Ok(Grant { calls, retry_after_ms })
    }

    async fn add_used(&self, component: &AppId, day: i64, used: &[Used]) -> Result<Vec<u64>, StoreError> {
        let mut pipe = redis::pipe();
        for u in used {
            let key = self.used_key(component, day, &u.client);
            pipe.hincr(&key, &u.pair, u.calls).expire(&key, USED_TTL_SECS as i64).ignore();
        }
        self.link.run(|mut c| async move { pipe.query_async(&mut c).await }).await
    }

    async fn hold(&self, component: &AppId, pair: &str, until_ms: i64) -> Result<(), StoreError> {
        let (key, pair) = (self.key(component, "quota:holds"), pair.to_owned());
        self.link
            .run(|mut c| async move { redis::cmd("HSET").arg(key).arg(pair).arg(until_ms).query_async(&mut c).await })
            .await
    }

    async fn holds(&self, component: &AppId) -> Result<Vec<(String, i64)>, StoreError> {
        let all = self.hgetall(&self.key(component, "quota:holds")).await?;
        Ok(all.into_iter().filter_map(|(pair, until)| Some((pair, until.parse().ok()?))).collect())
    }

    async fn lift(&self, component: &AppId, account: &str) -> Result<(), StoreError> {
        let mut invocation = LIFT.key(self.key(component, "quota:holds"));
        invocation.arg(account);
        let _: i64 = self.invoke(invocation, Durability::Master).await?;
        Ok(())
    }
}
