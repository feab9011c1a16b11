"""The Lua scripts of the Redis registry: each rule that counts runs whole inside Redis, so no other
process's command can come between its check and its act.

Redis runs them with EVALSHA (txredisapi sends EVAL once per connection, then the hash). They name
keys they compute (``chatapp:alive:<process>``), so they need one Redis, not a Redis Cluster.
Numbers come back as strings: Redis turns a Lua number into an integer, which would cut fractions.
"""

from __future__ import annotations

ALIVE = "chatapp:alive:"  # + process id: the heartbeat key, with a TTL
PROCESSES = "chatapp:processes"  # every process id that announced itself and was not swept yet
PRESENCE = "chatapp:presence"  # hash: case-folded name -> JSON {n, p (process), s (session), h, o, k}
USERS_OF = "chatapp:users-of:"  # + process id: the names whose presence that process wrote
TICKET = "chatapp:token:"  # + token: the ticket's JSON, with a TTL
TOKENS_OF = "chatapp:tokens-of:"  # + requester (folded): sorted set "target token" by expiry
TOKENS = "chatapp:tokens"  # sorted set of every unexpired token by expiry (the cap in all)
LOCK = "chatapp:lock:"  # + kind:key: ...:fails, ...:flight, ...:storing, ...:unstored
SIGNUPS = "chatapp:signups:"  # + address: sorted set of signup slots by time

# KEYS: presence, users-of:<me>. ARGV: folded, entry. Returns the entry it replaces (or nil).
LOGIN = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return old
"""

# KEYS: presence, users-of:<me>. ARGV: folded, session. Deletes the entry only if it is still that session's.
LOGOUT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and cjson.decode(current).s == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS: presence. ARGV: folded, session, what ('k' key, 'l' listen, 'u' unlisten), value, port.
UPDATE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
local entry = cjson.decode(current)
if entry.s ~= ARGV[2] then return 0 end
if ARGV[3] == 'k' then
  entry.k = ARGV[4]
elseif ARGV[3] == 'l' then
  entry.h = ARGV[4]
  entry.o = ARGV[5]
else
  entry.h = nil
  entry.o = nil
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
return 1
"""

# KEYS: presence. ARGV: folded. The entry if its process is alive.
GET = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return nil end
if redis.call('EXISTS', 'chatapp:alive:' .. cjson.decode(current).p) == 0 then return nil end
return current
"""

# KEYS: presence. The entries whose process is alive.
ONLINE = """
local alive = {}
local out = {}
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
  local process = cjson.decode(value).p
  local up = alive[process]
  if up == nil then
    up = redis.call('EXISTS', 'chatapp:alive:' .. process) == 1
    alive[process] = up
  end
  if up then out[#out + 1] = value end
end
return out
"""

# KEYS: processes, presence. Removes the presence entries of every process whose heartbeat ran out.
SWEEP = """
local removed = 0
for _, process in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', 'chatapp:alive:' .. process) == 0 then
    local users = 'chatapp:users-of:' .. process
    for _, name in ipairs(redis.call('SMEMBERS', users)) do
      local current = redis.call('HGET', KEYS[2], name)
      if current and cjson.decode(current).p == process then
        redis.call('HDEL', KEYS[2], name)
        removed = removed + 1
      end
    end
    redis.call('DEL', users)
    redis.call('SREM', KEYS[1], process)
  end
end
return removed
"""

# Shared by token_wait and issue: ARGV[1] requester (folded), ARGV[2] now, ARGV[3] per requester,
# ARGV[4] in all. Returns nil if a token may be issued, else the seconds to wait (a string).
_CAP_CHECK = """
local now = tonumber(ARGV[2])
local mine = 'chatapp:tokens-of:' .. ARGV[1]
redis.call('ZREMRANGEBYSCORE', mine, '-inf', now)
redis.call('ZREMRANGEBYSCORE', 'chatapp:tokens', '-inf', now)
local function wait()
  local held = redis.call('ZRANGE', mine, 0, 0, 'WITHSCORES')
  if redis.call('ZCARD', mine) >= tonumber(ARGV[3]) then
    return tostring(tonumber(held[2]) - now)
  end
  if redis.call('ZCARD', 'chatapp:tokens') >= tonumber(ARGV[4]) then
    local first = redis.call('ZRANGE', 'chatapp:tokens', 0, 0, 'WITHSCORES')
    return tostring(tonumber(first[2]) - now)
  end
  return nil
end
"""

TOKEN_WAIT = _CAP_CHECK + "\nreturn wait()\n"

# ARGV as _CAP_CHECK, then [5] target (folded), [6] lifetime, [7] token, [8] ticket JSON.
# Returns {'wait', seconds} or {'issued', '1' if the requester held no token for this target}.
ISSUE = (
    _CAP_CHECK
    + """
local seconds = wait()
if seconds then return {'wait', seconds} end
local prefix = ARGV[5] .. ' '
local first = '1'
for _, member in ipairs(redis.call('ZRANGE', mine, 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then first = '0' end
end
local lifetime = tonumber(ARGV[6])
local expires = now + lifetime
redis.call('SET', 'chatapp:token:' .. ARGV[7], ARGV[8], 'PX', math.ceil(lifetime * 1000))
redis.call('ZADD', mine, expires, prefix .. ARGV[7])
redis.call('PEXPIRE', mine, math.ceil(lifetime * 1000))
redis.call('ZADD', 'chatapp:tokens', expires, ARGV[7])
return {'issued', first}
"""
)

# ARGV: token, asker (folded), now. The ticket's JSON if the asker is its target (deleted: single use).
REDEEM = """
local key = 'chatapp:token:' .. ARGV[1]
local value = redis.call('GET', key)
if not value then return nil end
local ticket = cjson.decode(value)
if ticket.tf ~= ARGV[2] then return nil end
redis.call('DEL', key)
redis.call('ZREM', 'chatapp:tokens-of:' .. ticket.rf, ticket.tf .. ' ' .. ARGV[1])
redis.call('ZREM', 'chatapp:tokens', ARGV[1])
if tonumber(ticket.e) <= tonumber(ARGV[3]) then return nil end
return value
"""

# -- the lockout (chatapp/server/lockout.py says the rule; these make it one rule for every process) --

_LOCK_KEYS = """
local now = tonumber(ARGV[3])
local keys = {{'address', 'chatapp:lock:address:' .. ARGV[1]}, {'name', 'chatapp:lock:name:' .. ARGV[2]}}
"""

# ARGV: address, name, now, max attempts, attempt id (<process>|<n>), deadline, seconds to the deadline.
# {'refused', kind, until} (a block whose write failed), {'wait', kinds...} or {'admitted'}.
ADMIT = (
    _LOCK_KEYS
    + """
for _, k in ipairs(keys) do
  local until_ = redis.call('GET', k[2] .. ':unstored')
  if until_ and tonumber(until_) > now then return {'refused', k[1], until_} end
end
local full = {}
for _, k in ipairs(keys) do
  local flight = k[2] .. ':flight'
  redis.call('ZREMRANGEBYSCORE', flight, '-inf', now)
  for _, attempt in ipairs(redis.call('ZRANGE', flight, 0, -1)) do
    local process = string.match(attempt, '^(.*)|')
    if redis.call('EXISTS', 'chatapp:alive:' .. process) == 0 then redis.call('ZREM', flight, attempt) end
  end
  local fails = tonumber(redis.call('GET', k[2] .. ':fails') or '0')
  if redis.call('EXISTS', k[2] .. ':storing') == 1 or fails + redis.call('ZCARD', flight) >= tonumber(ARGV[4]) then
    full[#full + 1] = k[1]
  end
end
if #full > 0 then return {'wait', unpack(full)} end
for _, k in ipairs(keys) do
  redis.call('ZADD', k[2] .. ':flight', ARGV[6], ARGV[5])
  redis.call('EXPIRE', k[2] .. ':flight', math.ceil(tonumber(ARGV[7])) + 1)
end
return {'admitted'}
"""
)

# ARGV: address, name, now, attempt id, turns channel. Frees the attempt's slots.
ABANDON = (
    _LOCK_KEYS
    + """
for _, k in ipairs(keys) do
  redis.call('ZREM', k[2] .. ':flight', ARGV[4])
  redis.call('PUBLISH', ARGV[5], k[1] .. ' ' .. (k[1] == 'address' and ARGV[1] or ARGV[2]))
end
return 1
"""
)

# ARGV: address, name, now, attempt id, turns channel, password ok ('1'/'0'), max attempts,
# block time, seconds a failure count is kept, seconds a decided block may take to be stored.
# {blocked '1'/'0', locked '1'/'0', until, failures of the address now}; the slots are freed last.
SETTLE = (
    _LOCK_KEYS
    + """
local decided = {}
if ARGV[6] == '1' then
  for _, k in ipairs(keys) do redis.call('DEL', k[2] .. ':fails') end
else
  local max = tonumber(ARGV[7])
  local until_ = now + tonumber(ARGV[8])
  for i, k in ipairs(keys) do
    local count = redis.call('INCR', k[2] .. ':fails')
    redis.call('EXPIRE', k[2] .. ':fails', ARGV[9])
    if count >= max then
      redis.call('DEL', k[2] .. ':fails')
      redis.call('SET', k[2] .. ':storing', tostring(until_), 'EX', ARGV[10])
      decided[i] = true
    end
  end
end
local failed = redis.call('GET', keys[1][2] .. ':fails') or '0'
for _, k in ipairs(keys) do
  redis.call('ZREM', k[2] .. ':flight', ARGV[4])
  redis.call('PUBLISH', ARGV[5], k[1] .. ' ' .. (k[1] == 'address' and ARGV[1] or ARGV[2]))
end
return {decided[1] and '1' or '0', decided[2] and '1' or '0', tostring(now + tonumber(ARGV[8])), failed}
"""
)

# KEYS: none. ARGV: kind, key, until, now, kept ('1': the write failed), turns channel.
WRITTEN = """
local base = 'chatapp:lock:' .. ARGV[1] .. ':' .. ARGV[2]
local storing = redis.call('GET', base .. ':storing')
if storing and tonumber(storing) == tonumber(ARGV[3]) then redis.call('DEL', base .. ':storing') end
if ARGV[5] == '1' then
  local until_ = tonumber(ARGV[3])
  local kept = tonumber(redis.call('GET', base .. ':unstored') or '0')
  if kept > until_ then until_ = kept end
  local ms = math.ceil((until_ - tonumber(ARGV[4])) * 1000)
  if ms > 0 then redis.call('SET', base .. ':unstored', tostring(until_), 'PX', ms) end
end
redis.call('PUBLISH', ARGV[6], ARGV[1] .. ' ' .. ARGV[2])
return 1
"""

# ARGV: address, now, per hour, slot id. {'1'} with the slot taken, or {'0', seconds to wait}.
SIGNUP_RESERVE = """
local key = 'chatapp:signups:' .. ARGV[1]
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 3600)
if redis.call('ZCARD', key) >= tonumber(ARGV[3]) then
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {'0', tostring(tonumber(first[2]) + 3600 - now)}
end
redis.call('ZADD', key, now, ARGV[4])
redis.call('EXPIRE', key, 3600)
return {'1'}
"""
