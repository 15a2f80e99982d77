"""Interactive requests in flight per model, as the routers see them: what
the batch workers read to give way to interactive traffic.

Each router process reports its count of requests in flight on each model
(every ``interval``; nothing while it has none) into one Redis hash per
model, ``<prefix>:interactive:<model>``, a field per process holding
``"<count>:<expiry ms>"``. The expiry comes from Redis's own clock
(``TIME`` in the script), so routers and batch workers on hosts with
different clocks agree; a process that stops reporting (killed, scaled in)
drops out once its field expires. :data:`READ_FRESH` sums the fresh
fields of a hash inside another script (the batch slots').
"""

from __future__ import annotations


def load_key(prefix: str, model: str) -> str:
    return f"{prefix}:interactive:{model}"


# KEYS: one hash per model; ARGV[1]: the process's field, ARGV[2]: the
# field's life in ms, ARGV[3..]: the count per key (0 removes the field).
REPORT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = tonumber(ARGV[2])
for i = 1, #KEYS do
  local count = tonumber(ARGV[i + 2])
  if count > 0 then
    redis.call('HSET', KEYS[i], ARGV[1], count .. ':' .. (now + life))
    redis.call('PEXPIRE', KEYS[i], life)
  else
    redis.call('HDEL', KEYS[i], ARGV[1])
  end
end
return #KEYS
"""

# A Lua function for other scripts: the sum of the fresh counts in hash
# ``key``; expired fields are removed on the way.
READ_FRESH = """
local function interactive_in_flight(key)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local fields = redis.call('HGETALL', key)
  local busy = 0
  for i = 1, #fields, 2 do
    local count, expiry = string.match(fields[i + 1], '^(%d+):(%d+)$')
    if count and tonumber(expiry) > now then
      busy = busy + tonumber(count)
    else
      redis.call('HDEL', key, fields[i])
    end
  end
  return busy
end
"""
