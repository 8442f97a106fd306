-- Every request a POST with a new Idempotency-Key (wrk's Lua has no UUIDs: a prefix per run and
-- thread, then a counter). The prefix holds the time: a key of an earlier run against the same
-- server would be a replay, not a new key.
local counter = 0
local prefix = ""
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", string.format("%d-%d-%d", os.time(), math.random(1, 1e9), threads))
end

function init(args)
  prefix = id .. "-"
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/payments",
    { ["Idempotency-Key"] = prefix .. counter, ["Content-Type"] = "application/json" },
    "{\"amount\":1}")
end
