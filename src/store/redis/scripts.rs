//! The Lua scripts of the Redis store: each checks and writes in one step, so that no other
//! instance sees (or makes) a half-done change.

use redis::Script;
use std::sync::LazyLock;

/// Keeps `ticket` unless the one held has a later CreateTime.
pub(super) static SAVE_TICKET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local held = redis.call('HGET', KEYS[1], 'create_time')
          if held and tonumber(held) > tonumber(ARGV[2]) then return 0 end
          redis.call('HSET', KEYS[1], 'value', ARGV[1], 'create_time', ARGV[2], 'received_at', ARGV[3])
          redis.call('PUBLISH', KEYS[2], 'ticket')
          return 1",
    )
});

/// Records an event once: the dedupe set says whether it is new.
pub(super) static RECORD_EVENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
          local id = redis.call('INCR', KEYS[2])
          redis.call('HSET', ARGV[2] .. id, 'info_type', ARGV[3], 'authorizer_appid', ARGV[4],
                     'create_time', ARGV[5], 'payload', ARGV[6], 'received_at', ARGV[7])
          redis.call('ZADD', KEYS[3], id, id)
          return id",
    )
});

/// Replaces a hash whole, only while the lease is held (an empty owner: no lease needed), adds
/// an authorizer to the set of them (ARGV[2]), records the change under a new version (ARGV[4]:
/// an appid, or `js_ticket:KIND:APPID`), and announces it: checked and written in one step.
pub(super) static FENCED_WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
          redis.call('DEL', KEYS[2])
          redis.call('HSET', KEYS[2], unpack(ARGV, 5))
          local announce = ARGV[3]
          if ARGV[2] ~= '' then
            redis.call('SADD', KEYS[3], ARGV[2])
          end
          if ARGV[4] ~= '' then
            local v = redis.call('INCR', KEYS[5])
            redis.call('ZADD', KEYS[6], v, ARGV[4])
            announce = announce .. '@' .. v
          end
          redis.call('PUBLISH', KEYS[4], announce)
          return 1",
    )
});

/// Forgets an authorizer, recording the deletion as a change like any write.
pub(super) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = redis.call('SREM', KEYS[1], ARGV[1]) + redis.call('DEL', KEYS[2])
          local v = redis.call('INCR', KEYS[3])
          redis.call('ZADD', KEYS[4], v, ARGV[1])
          redis.call('PUBLISH', KEYS[5], 'deleted:' .. ARGV[1] .. '@' .. v)
          return n",
    )
});

/// Deletes a lease only while it is still this holder's.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});
