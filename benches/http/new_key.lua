-- Every request a POST with a new Idempotency-Key (wrk's Lua has no UUIDs: thread id + counter).
local counter = 0
local prefix = ""

function setup(thread)
  thread:set("id", tostring(math.random(1, 1e9)))
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
