"""The Lua scripts of the Redis backend: every multi-key change in one atomic call.

Each script receives the site's buffer key as ``KEYS[1]`` (so a cluster routes
it to the site's slot) and the site's key prefix as ``ARGV[1]``; the key
suffixes are those of :mod:`ccat_buffering_redis.keys`, formatted in here
once. Times come from the server's ``TIME``, in milliseconds.

``APPLY`` runs a list of atomic groups, each a list of operations, so that
writes staged by ``Backend.atomic()`` (and groups from concurrent callers,
coalesced into one call) apply in one round trip.
"""

from __future__ import annotations

from ccat_buffering_redis.keys import SUFFIXES

__all__ = [
    "APPLY",
    "BUFFER_STATS",
    "CACHE_EXTEND",
    "CACHE_GET",
    "CACHE_LIST",
    "CLAIM",
    "LEASE_ACQUIRE",
    "LEASE_CURRENT",
    "LEASE_RELEASE",
    "LEASE_RENEW",
    "LETTERS_GET",
    "LETTERS_PURGE",
    "LETTERS_REPLAY",
    "RECOVER",
    "STATUS_COUNTS",
    "STATUS_IDS",
]

_PRELUDE = (
    """
local P = ARGV[1]
local BUF = P .. '{buffer}'
local STATUS = P .. '{status}'
local IDS = P .. '{ids}'
local BUFFERED = P .. '{buffered}'
local INF = P .. '{inflight}'
local LEASES = P .. '{leases}'
local HOLD = P .. '{hold}'
local SEQ = P .. '{seq}'
local LETTERS = P .. '{letters}'
local META = P .. '{letter_meta}'
local ORDER = P .. '{letter_order}'
local STATE = P .. '{state}'
local INDEX = P .. '{index}'
local WRITTEN = P .. '{written}'
local LEASE = P .. '{lease}'
local TERMINAL = {{replicated = true, failed = true}}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOW = now_ms()

local function next_seq()
  return redis.call('INCR', SEQ)
end

-- Push a key's expiry out to ttl ms from now; never shorten it.
local function extend(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < ttl) then
    redis.call('PEXPIRE', key, ttl)
    return 1
  end
  return 0
end

local function prune_terminal()
  for state, _ in pairs(TERMINAL) do
    redis.call('ZREMRANGEBYSCORE', STATE .. state, '-inf', NOW)
  end
end
""".replace("{buffer}", SUFFIXES["buffer"])
    .replace("{status}", SUFFIXES["status"])
    .replace("{ids}", SUFFIXES["ids"])
    .replace("{buffered}", SUFFIXES["buffered"])
    .replace("{inflight}", SUFFIXES["inflight"])
    .replace("{leases}", SUFFIXES["leases"])
    .replace("{hold}", SUFFIXES["hold"])
    .replace("{seq}", SUFFIXES["seq"])
    .replace("{letters}", SUFFIXES["letters"])
    .replace("{letter_order}", SUFFIXES["letter_order"])
    .replace("{letter_meta}", SUFFIXES["letter_meta"])
    .replace("{state}", SUFFIXES["state"])
    .replace("{index}", SUFFIXES["index"])
    .replace("{written}", SUFFIXES["written"])
    .replace("{lease}", SUFFIXES["lease"])
    .replace("{{", "{")
    .replace("}}", "}")
)

_RETURN_TO_HEAD = """
-- Entries go back to the right end (the head) so that the lowest receipt,
-- the oldest entry, is claimed first again.
local function return_to_head(receipts)
  table.sort(receipts, function(a, b) return tonumber(a) > tonumber(b) end)
  local n = 0
  for _, r in ipairs(receipts) do
    local p = redis.call('HGET', INF, r)
    if p then
      redis.call('RPUSH', BUF, p)
      redis.call('HDEL', INF, r)
      redis.call('ZREM', LEASES, r)
      n = n + 1
    end
  end
  return n
end
"""

_REPLAY_ONE = """
local function replay_one(lid)
  local p = redis.call('HGET', LETTERS, lid)
  if not p then return 0 end
  redis.call('LPUSH', BUF, p)
  redis.call('HDEL', LETTERS, lid)
  redis.call('HDEL', META, lid)
  redis.call('ZREM', ORDER, lid)
  return 1
end
"""

APPLY = (
    _PRELUDE
    + _RETURN_TO_HEAD
    + _REPLAY_ONE
    + """
local function with_tx(list, txid)
  if not list or list == '' then return txid end
  for t in string.gmatch(list, '[^,]+') do
    if t == txid then return list end
  end
  return list .. ',' .. txid
end

local function without_tx(list, txid)
  local rest = {}
  for t in string.gmatch(list, '[^,]+') do
    if t ~= txid then rest[#rest + 1] = t end
  end
  return table.concat(rest, ',')
end

-- Members of the committed index are <low 32 bits of the LSN, 8 hex digits><id>
-- under a score of the high 32 bits: exact order, where a double score of the
-- whole LSN would round above 2**53.
local function state_member(state, txid, lsn)
  if state ~= 'committed' then return txid end
  if type(lsn) ~= 'string' then return '00000000' .. txid end
  local low = string.match(lsn, '/(%x+)$') or '0'
  return string.rep('0', 8 - #low) .. string.upper(low) .. txid
end

local function put_status(txid, json, state, ttl, score, member)
  local k = STATUS .. txid
  local old = redis.call('GET', k)
  if old then
    local ok, decoded = pcall(cjson.decode, old)
    if ok and type(decoded) == 'table' and decoded.state then
      local member = state_member(decoded.state, txid, decoded.commit_lsn)
      redis.call('ZREM', STATE .. decoded.state, member)
    end
  end
  if TERMINAL[state] then
    redis.call('SET', k, json, 'PX', ttl)
    redis.call('ZADD', STATE .. state, NOW + ttl, txid)
  else
    redis.call('SET', k, json)
    if score == '' then score = next_seq() end
    redis.call('ZADD', STATE .. state, score, member)
  end
end

local function write_cache(txid, ttl, writes)
  local written = WRITTEN .. txid
  for _, w in ipairs(writes) do
    local model, id, kind, fields = w[1], w[2], w[3], w[4]
    local member = model .. ':' .. id
    local k = BUFFERED .. member
    local txs = redis.call('HGET', k, '@tx')
    local keep = redis.call('PTTL', k)
    if kind == 'create' then
      redis.call('DEL', k)
      redis.call('HSET', k, '@created', '1', '@deleted', '0')
      local idk = IDS .. member
      redis.call('SET', idk, txid, 'KEEPTTL')
      extend(idk, ttl)
    elseif kind == 'delete' then
      redis.call('HSET', k, '@deleted', '1')
    end
    -- HSET in slices: unpack() has a limit on how many values it returns.
    for i = 1, #fields, 200 do
      redis.call('HSET', k, unpack(fields, i, math.min(i + 199, #fields)))
    end
    redis.call('HSET', k, '@tx', with_tx(txs, txid))
    extend(k, math.max(ttl, keep))
    local index = INDEX .. model
    redis.call('ZADD', index, 'NX', next_seq(), id)
    extend(index, ttl)
    redis.call('SADD', written, member)
  end
  if #writes > 0 then extend(written, ttl) end
end

local function release(txid)
  local written = WRITTEN .. txid
  local deleted = 0
  for _, member in ipairs(redis.call('SMEMBERS', written)) do
    local k = BUFFERED .. member
    local txs = redis.call('HGET', k, '@tx')
    if txs then
      local rest = without_tx(txs, txid)
      if rest == '' then
        local sep = string.find(member, ':', 1, true)
        redis.call('DEL', k)
        redis.call('ZREM', INDEX .. string.sub(member, 1, sep - 1), string.sub(member, sep + 1))
        deleted = deleted + 1
      else
        redis.call('HSET', k, '@tx', rest)
      end
    end
    local idk = IDS .. member
    if redis.call('GET', idk) == txid then redis.call('DEL', idk) end
  end
  redis.call('DEL', written)
  return deleted
end

local function dead_letter(r, reason, txid)
  local p = redis.call('HGET', INF, r)
  if not p then return 0 end
  redis.call('HDEL', INF, r)
  redis.call('ZREM', LEASES, r)
  local lid = txid
  if lid == '' then lid = 'raw-' .. r end
  redis.call('HSET', LETTERS, lid, p)
  redis.call('HSET', META, lid, cjson.encode({reason = reason, at = NOW, tx = txid}))
  redis.call('ZADD', ORDER, next_seq(), lid)
  return 1
end

-- Check every operation of a group before writing any of it: a script cannot
-- roll back, so a group that would fail halfway is refused whole instead.
local ARITY = {push = 2, ack = 2, retry = 3, dead = 4, replay = 2, status = 7, cache = 4,
               release = 2}
local function invalid(ops)
  if type(ops) ~= 'table' then return 'a group is not a list' end
  for i, op in ipairs(ops) do
    local name = type(op) == 'table' and op[1]
    if not ARITY[name] then return 'operation ' .. i .. ' is unknown' end
    if #op ~= ARITY[name] then return 'operation ' .. i .. ' (' .. name .. ') is malformed' end
    if name == 'cache' then
      if type(op[4]) ~= 'table' then return 'cache writes are not a list' end
      for _, w in ipairs(op[4]) do
        if type(w) ~= 'table' or #w ~= 4 or type(w[4]) ~= 'table' or #w[4] % 2 ~= 0 then
          return 'a cache write is malformed'
        end
      end
    elseif (name == 'retry' or name == 'release') and type(op[2]) ~= 'table' then
      return name .. ' takes a list'
    end
  end
  return nil
end

local results = {}
local groups = cjson.decode(ARGV[2])
for g, ops in ipairs(groups) do
  local problem = invalid(ops)
  if problem then
    results[g] = 'error: ' .. problem
    ops = {}
  end
  local count = 0
  for _, op in ipairs(ops) do
    local name = op[1]
    if name == 'push' then
      redis.call('LPUSH', BUF, op[2])
      count = count + 1
    elseif name == 'ack' then
      if redis.call('HDEL', INF, op[2]) == 1 then count = count + 1 end
      redis.call('ZREM', LEASES, op[2])
    elseif name == 'retry' then
      count = count + return_to_head(op[2])
      if tonumber(op[3]) > 0 then
        redis.call('SET', HOLD, '1', 'PX', op[3])
      else
        redis.call('DEL', HOLD)
      end
    elseif name == 'dead' then
      count = count + dead_letter(op[2], op[3], op[4])
    elseif name == 'replay' then
      count = count + replay_one(op[2])
    elseif name == 'status' then
      put_status(op[2], op[3], op[4], op[5], op[6], op[7])
    elseif name == 'cache' then
      write_cache(op[2], op[3], op[4])
    elseif name == 'release' then
      for _, txid in ipairs(op[2]) do count = count + release(txid) end
    end
  end
  if not problem then results[g] = count end
end
return results
"""
)

CLAIM = (
    _PRELUDE
    + """
if redis.call('EXISTS', HOLD) == 1 then return {} end
local deadline = NOW + tonumber(ARGV[3])
local popped = redis.call('RPOP', BUF, tonumber(ARGV[2]))
if not popped then return {} end
local out = {deadline}
for _, p in ipairs(popped) do
  local r = tostring(next_seq())
  redis.call('HSET', INF, r, p)
  redis.call('ZADD', LEASES, deadline, r)
  out[#out + 1] = r
  out[#out + 1] = p
end
return out
"""
)

RECOVER = (
    _PRELUDE
    + _RETURN_TO_HEAD
    + """
local receipts
if ARGV[2] == '1' then
  receipts = redis.call('HKEYS', INF)
else
  receipts = redis.call('ZRANGEBYSCORE', LEASES, '-inf', NOW)
end
return return_to_head(receipts)
"""
)

LETTERS_REPLAY = (
    _PRELUDE
    + _REPLAY_ONE
    + """
local ids
if ARGV[2] == '*' then
  ids = redis.call('ZRANGE', ORDER, 0, -1)
else
  local wanted = cjson.decode(ARGV[2])
  local scored = {}
  for _, lid in ipairs(wanted) do
    local s = redis.call('ZSCORE', ORDER, lid)
    if s then scored[#scored + 1] = {tonumber(s), lid} end
  end
  table.sort(scored, function(a, b) return a[1] < b[1] end)
  ids = {}
  for _, pair in ipairs(scored) do ids[#ids + 1] = pair[2] end
end
local done = {}
for _, lid in ipairs(ids) do
  if replay_one(lid) == 1 then done[#done + 1] = lid end
end
return done
"""
)

LETTERS_PURGE = (
    _PRELUDE
    + """
local ids
if ARGV[2] == '*' then
  ids = redis.call('ZRANGE', ORDER, 0, -1)
else
  ids = cjson.decode(ARGV[2])
end
local n = 0
for _, lid in ipairs(ids) do
  if redis.call('HDEL', LETTERS, lid) == 1 then n = n + 1 end
  redis.call('HDEL', META, lid)
  redis.call('ZREM', ORDER, lid)
end
return n
"""
)

STATUS_IDS = (
    _PRELUDE
    + """
prune_terminal()
local limit = tonumber(ARGV[3])
local stop = -1
if limit > 0 then stop = limit - 1 end
local ids = redis.call('ZRANGE', STATE .. ARGV[2], 0, stop)
if ARGV[2] == 'committed' then
  for i, member in ipairs(ids) do ids[i] = string.sub(member, 9) end
end
return ids
"""
)

STATUS_COUNTS = (
    _PRELUDE
    + """
prune_terminal()
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('ZCARD', STATE .. ARGV[i])
end
return out
"""
)

CACHE_EXTEND = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV do
  local txid = ARGV[i]
  local written = WRITTEN .. txid
  for _, member in ipairs(redis.call('SMEMBERS', written)) do
    local k = BUFFERED .. member
    if redis.call('EXISTS', k) == 1 then
      extend(k, ttl)
      n = n + 1
      local sep = string.find(member, ':', 1, true)
      extend(INDEX .. string.sub(member, 1, sep - 1), ttl)
    end
    local idk = IDS .. member
    if redis.call('GET', idk) == txid then extend(idk, ttl) end
  end
  extend(written, ttl)
end
return n
"""
)

CACHE_LIST = (
    _PRELUDE
    + """
local model = ARGV[2]
local index = INDEX .. model
local out = {}
for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local k = BUFFERED .. model .. ':' .. id
  local fields = redis.call('HGETALL', k)
  if #fields == 0 then
    redis.call('ZREM', index, id)
  else
    out[#out + 1] = {id, redis.call('PTTL', k), fields}
  end
end
return {NOW, out}
"""
)

LEASE_ACQUIRE = (
    _PRELUDE
    + """
local holder = redis.call('GET', LEASE)
if holder and holder ~= ARGV[2] then return 0 end
redis.call('SET', LEASE, ARGV[2], 'PX', ARGV[3])
return 1
"""
)

LEASE_RENEW = (
    _PRELUDE
    + """
if redis.call('GET', LEASE) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', LEASE, ARGV[3])
return 1
"""
)

LEASE_RELEASE = (
    _PRELUDE
    + """
if redis.call('GET', LEASE) ~= ARGV[2] then return 0 end
redis.call('DEL', LEASE)
return 1
"""
)

BUFFER_STATS = (
    _PRELUDE
    + """
return {NOW, redis.call('LLEN', BUF), redis.call('HLEN', INF), redis.call('HLEN', LETTERS),
        redis.call('PTTL', HOLD)}
"""
)

CACHE_GET = (
    _PRELUDE
    + """
local k = BUFFERED .. ARGV[2] .. ':' .. ARGV[3]
return {NOW, redis.call('PTTL', k), redis.call('HGETALL', k)}
"""
)

LEASE_CURRENT = (
    _PRELUDE
    + """
return {NOW, redis.call('GET', LEASE) or '', redis.call('PTTL', LEASE)}
"""
)

LETTERS_GET = (
    _PRELUDE
    + """
local out = {}
for i = 2, #ARGV do
  local p = redis.call('HGET', LETTERS, ARGV[i])
  local m = redis.call('HGET', META, ARGV[i])
  if p and m then
    out[#out + 1] = {ARGV[i], p, m}
  end
end
return out
"""
)
