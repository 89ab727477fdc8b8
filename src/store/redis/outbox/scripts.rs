//! The outbox's Lua scripts: each step one script, so that it is atomic on the server.

use redis::Script;
use std::sync::LazyLock;

/// Lua shared by the two enqueue scripts: `enqueue(k, a)` reads ENQUEUE's KEYS from
/// `KEYS[k + 1]` and its ARGV from `ARGV[a + 1]`, so that ENQUEUE_FIRST can put its own first.
const ENQUEUE_AT: &str = r"
local function enqueue(k, a)
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then return 0 end
  redis.call('HSET', KEYS[k + 1], unpack(ARGV, a + 6))
  redis.call('ZADD', KEYS[k + 2], ARGV[a + 3], ARGV[a + 1])
  redis.call('SADD', KEYS[k + 3], ARGV[a + 2])
  redis.call('ZADD', KEYS[k + 4], ARGV[a + 4], ARGV[a + 1])
  if ARGV[a + 5] ~= '' then redis.call('ZADD', KEYS[k + 5], ARGV[a + 5], ARGV[a + 1]) end
  return 1
end
";

/// KEYS: msg hash, due set, routes set, pending set, lane set. ARGV: id, route, next attempt,
/// received, seq ('' for none), then the hash's field/value pairs. An id already held is left
/// as it is.
pub(super) static ENQUEUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{ENQUEUE_AT}return enqueue(0, 0)")));

/// KEYS: the dedupe key, then ENQUEUE's. ARGV: the key's lifetime (ms), then ENQUEUE's. The
/// key is set only with its message, in one script: nothing half done survives a failure. An
/// id already held counts as taken (1), as before the key existed.
pub(super) static ENQUEUE_FIRST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{ENQUEUE_AT}
          if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
          enqueue(1, 1)
          return 1"
    ))
});

/// Lua shared by the scripts that take a message out of its lane (delivered, deleted): the
/// lane's new first member gets its own due time back. `lane_left(h, id, due)`.
const LANE_LEFT: &str = r"
local function lane_left(h, id, due)
  local lane = redis.call('HGET', h, 'lane')
  if not lane then return end
  redis.call('ZREM', lane, id)
  local first = redis.call('ZRANGE', lane, 0, 0)[1]
  if not first then return end
  local fh = string.sub(h, 1, #h - #id) .. first
  if redis.call('HGET', fh, 'state') == 'pending' and redis.call('HEXISTS', fh, 'claim') == 0 then
    redis.call('ZADD', due, redis.call('HGET', fh, 'next_attempt_at'), first)
  end
end
";

pub(super) static FORGET: LazyLock<Script> = LazyLock::new(|| Script::new(r"return redis.call('DEL', KEYS[1])"));

pub(super) static FIRST_TIME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(r"if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end return 0")
});

/// KEYS: routes set. ARGV: due-set prefix, now. Forgets routes whose due set is empty.
pub(super) static DUE_ROUTES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local out = {}
          for _, r in ipairs(redis.call('SMEMBERS', KEYS[1])) do
            local z = ARGV[1] .. r
            if redis.call('ZCARD', z) == 0 then redis.call('SREM', KEYS[1], r)
            elseif #redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[2], 'LIMIT', 0, 1) > 0 then table.insert(out, r) end
          end
          return out",
    )
});

/// KEYS: routes set. ARGV: due-set prefix. The earliest score of any due set, or nil.
pub(super) static NEXT_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local best = nil
          for _, r in ipairs(redis.call('SMEMBERS', KEYS[1])) do
            local first = redis.call('ZRANGE', ARGV[1] .. r, 0, 0, 'WITHSCORES')
            if #first == 2 and (best == nil or tonumber(first[2]) < best) then best = tonumber(first[2]) end
          end
          if best == nil then return false end
          return string.format('%d', best)",
    )
});

/// KEYS: due set. ARGV: now, limit, lease end, token, msg-hash prefix. Returns each claimed
/// message's HGETALL. One that waits in its lane is moved behind its lane's first (or a lease
/// ahead, when that one is failed and has no due time) and not claimed.
pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local out = {}
          for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
            local h = ARGV[5] .. id
            local lane = redis.call('HGET', h, 'lane')
            local first = lane and redis.call('ZRANGE', lane, 0, 0)[1]
            if first and first ~= id then
              local behind = redis.call('ZSCORE', KEYS[1], first)
              redis.call('ZADD', KEYS[1], behind or ARGV[3], id)
            elseif redis.call('EXISTS', h) == 1 then
              redis.call('HINCRBY', h, 'attempts', 1)
              redis.call('HSET', h, 'next_attempt_at', ARGV[3], 'claim', ARGV[4])
              redis.call('ZADD', KEYS[1], ARGV[3], id)
              table.insert(out, redis.call('HGETALL', h))
            else
              redis.call('ZREM', KEYS[1], id)
            end
          end
          return out",
    )
});

/// Lua of one settle: `settle(h, pending, failed, token, outcome, at, error, id, due_prefix)`;
/// 1, or 0 (nothing done) unless the claim is still the caller's.
const SETTLE_ONE: &str = r"
local function settle(h, pending, failed, token, outcome, at, err, id, due_prefix)
  if redis.call('HGET', h, 'claim') ~= token then return 0 end
  local due = due_prefix .. redis.call('HGET', h, 'route')
  if outcome == 'delivered' then
    lane_left(h, id, due)
    redis.call('DEL', h)
    redis.call('ZREM', due, id)
    redis.call('ZREM', pending, id)
  elseif outcome == 'retry' then
    redis.call('HSET', h, 'next_attempt_at', at, 'last_error', err)
    redis.call('HDEL', h, 'claim')
    redis.call('ZADD', due, at, id)
  else
    redis.call('HSET', h, 'state', 'failed', 'last_error', err)
    redis.call('HDEL', h, 'claim')
    redis.call('ZREM', due, id)
    redis.call('ZREM', pending, id)
    redis.call('ZADD', failed, redis.call('HGET', h, 'received_at'), id)
  end
  return 1
end
";

/// Many settles in one script (one round trip, one script run): per settle, KEYS msg hash,
/// pending set, failed set; ARGV token, outcome, retry at, error, id, due-set prefix. Returns
/// each one's 1 or 0.
pub(super) static SETTLE_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LANE_LEFT}{SETTLE_ONE}{}",
        r"local out = {}
          for i = 0, #KEYS / 3 - 1 do
            local k, a = i * 3, i * 6
            out[i + 1] = settle(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3],
              ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6])
          end
          return out"
    ))
});

/// KEYS: pending set. ARGV: now, msg-hash prefix, due-set prefix.
pub(super) static RELEASE_CLAIMS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = 0
          for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
            local h = ARGV[2] .. id
            if redis.call('HEXISTS', h, 'claim') == 1 then
              redis.call('HDEL', h, 'claim')
              redis.call('HSET', h, 'next_attempt_at', ARGV[1])
              redis.call('ZADD', ARGV[3] .. redis.call('HGET', h, 'route'), ARGV[1], id)
              n = n + 1
            end
          end
          return n",
    )
});

/// The fields a listing shows: never the payload.
pub(super) const ENTRY_FIELDS: [&str; 11] = [
    "id",
    "authorizer",
    "kind",
    "route",
    "msg_type",
    "event",
    "received_at",
    "attempts",
    "next_attempt_at",
    "state",
    "last_error",
];

/// KEYS: an arrival-ordered set. ARGV: start, stop, msg-hash prefix, then ENTRY_FIELDS.
/// Returns the set's size, then per id its score and the fields.
pub(super) static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local out = { tostring(redis.call('ZCARD', KEYS[1])) }
          local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
          for _, id in ipairs(ids) do
            table.insert(out, redis.call('HMGET', ARGV[3] .. id, unpack(ARGV, 4)))
          end
          return out",
    )
});

/// KEYS: msg hash, pending set, failed set, routes set. ARGV: now, id, due-set prefix.
pub(super) static REDELIVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
          local route = redis.call('HGET', KEYS[1], 'route')
          redis.call('HSET', KEYS[1], 'state', 'pending', 'next_attempt_at', ARGV[1])
          redis.call('HDEL', KEYS[1], 'claim')
          redis.call('ZADD', ARGV[3] .. route, ARGV[1], ARGV[2])
          redis.call('SADD', KEYS[4], route)
          redis.call('ZREM', KEYS[3], ARGV[2])
          redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'received_at'), ARGV[2])
          return 1",
    )
});

/// KEYS: msg hash, pending set, failed set. ARGV: id, due-set prefix.
pub(super) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LANE_LEFT}{}",
        r"if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
          local due = ARGV[2] .. redis.call('HGET', KEYS[1], 'route')
          lane_left(KEYS[1], ARGV[1], due)
          redis.call('ZREM', due, ARGV[1])
          redis.call('ZREM', KEYS[2], ARGV[1])
          redis.call('ZREM', KEYS[3], ARGV[1])
          redis.call('DEL', KEYS[1])
          return 1"
    ))
});

pub(super) static COUNTS: LazyLock<Script> =
    LazyLock::new(|| Script::new(r"return { redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]) }"));
