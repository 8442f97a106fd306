//! The Lua scripts: one per store operation, each touching one key.

use std::sync::LazyLock;

use redis::Script;

// Record: state byte (1 in flight, 2 done), fingerprint (32 bytes), owner token (16 bytes),
// then, when done, the completion's binary form (which carries its own version).
//
// A value that is not such a record (another type, another layout, written by something
// else) is never taken for a free key: the claim answers 4 (unreadable). Any record without
// an expiry gets one, so no key stays stuck forever.
pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  redis.call('SET', KEYS[1], '\1' .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
  return {0}
end
local v = t == 'string' and redis.call('GET', KEYS[1]) or ''
local s = string.byte(v, 1)
local readable = (s == 1 and string.len(v) == 49) or (s == 2 and string.len(v) > 49)
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], (readable and s == 1) and ARGV[3] or ARGV[4])
end
if not readable then return {4} end
if string.sub(v, 2, 33) ~= ARGV[1] then return {2} end
if s == 1 then return {1, redis.call('PTTL', KEYS[1])} end
return {3, string.sub(v, 50)}
",
    )
});

// Completes the owner's in-flight record, or a key that vanished (its lease lapsed and nobody
// claimed it since).
pub(super) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  redis.call('SET', KEYS[1], '\2' .. ARGV[4] .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
  return 1
end
if t ~= 'string' then return 0 end
local v = redis.call('GET', KEYS[1])
if string.len(v) < 49 or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
-- Completed by this owner already: a repeat whose first answer was lost.
if string.byte(v, 1) == 2 then return 1 end
if string.byte(v, 1) ~= 1 or string.len(v) ~= 49 then return 0 end
redis.call('SET', KEYS[1], '\2' .. string.sub(v, 2, 49) .. ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
local v = redis.call('GET', KEYS[1])
if string.byte(v, 1) ~= 1 or string.len(v) ~= 49 or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
",
    )
});

pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
local v = redis.call('GET', KEYS[1])
if string.byte(v, 1) ~= 1 or string.len(v) ~= 49 or string.sub(v, 34, 49) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
",
    )
});
