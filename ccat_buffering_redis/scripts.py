"""The Lua scripts of the Redis backend: every multi-key change in one atomic call.

Each script receives the site's buffer key as ``KEYS[1]`` (so a cluster routes
it to the site's slot) and the site's key prefix as ``ARGV[1]``; the key
suffixes are those of :mod:`ccat_buffering_redis.keys`, formatted in here
once. Times come from the server's ``TIME``, in milliseconds.

``APPLY`` runs a list of atomic groups, each a list of operations, so that
writes staged by ``Backend.atomic()`` (and groups from concurrent callers,
coalesced into one call) apply in one round trip. The groups come as JSON in
``ARGV[2]``; entries and statuses follow as arguments of their own (an
operation names them by index), so that they are neither escaped into the JSON
nor decoded by the script.
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

-- Sequence numbers are handed out here and written back with one INCRBY
-- (seq_flush) before the script returns: one call per script, not per number.
local SEQ_NEXT, SEQ_USED = nil, 0
local function next_seq()
  if not SEQ_NEXT then SEQ_NEXT = tonumber(redis.call('GET', SEQ) or '0') end
  SEQ_NEXT = SEQ_NEXT + 1
  SEQ_USED = SEQ_USED + 1
  return SEQ_NEXT
end
local function seq_flush()
  if SEQ_USED > 0 then redis.call('INCRBY', SEQ, SEQ_USED) end
  SEQ_USED = 0
end

-- Push a key's expiry out to ttl ms from now; never shorten it. Returns 1 if
-- it moved, 0 if it already lasted as long, -1 if there is no such key.
local function extend(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -2 then return -1 end
  if left == -1 or left < ttl then
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
  local old
  if TERMINAL[state] then
    old = redis.call('SET', k, json, 'PX', ttl, 'GET')
    redis.call('ZADD', STATE .. state, NOW + ttl, txid)
  else
    old = redis.call('SET', k, json, 'GET')
    if score == '' then score = next_seq() end
    redis.call('ZADD', STATE .. state, score, member)
  end
  if old then
    local ok, decoded = pcall(cjson.decode, old)
    if ok and type(decoded) == 'table' and decoded.state then
      local was = state_member(decoded.state, txid, decoded.commit_lsn)
      if decoded.state ~= state or was ~= member then
        redis.call('ZREM', STATE .. decoded.state, was)
      end
    end
  end
end

-- Indexes touched by this call, extended once at its end to the longest TTL asked.
local TOUCHED = {}
local function touch(index, ttl)
  local seen = TOUCHED[index]
  if not seen or seen < ttl then TOUCHED[index] = ttl end
end

-- Set a string to value with a TTL of ttl ms, keeping a longer TTL it already has.
local function set_keeping_longer(k, value, ttl)
  if redis.call('SET', k, value, 'NX', 'PX', ttl) then return end
  local left = redis.call('PTTL', k)
  if left > ttl then
    redis.call('SET', k, value, 'KEEPTTL')
  else
    redis.call('SET', k, value, 'PX', ttl)
  end
end

-- HSET in slices: unpack() has a limit on how many values it returns.
local function hset_all(k, head, fields)
  local n = #fields
  if n <= 200 then
    redis.call('HSET', k, head[1], head[2], unpack(fields))
    return
  end
  redis.call('HSET', k, head[1], head[2])
  for i = 1, n, 200 do
    redis.call('HSET', k, unpack(fields, i, math.min(i + 199, n)))
  end
end

-- The meta field '@' of a buffered record: <created 0|1><deleted 0|1>:<tx>,<tx>...
local function write_cache(txid, ttl, writes)
  local members, seen = {}, {}
  for _, w in ipairs(writes) do
    local model, id, kind, fields = w[1], w[2], w[3], w[4]
    local member = model .. ':' .. id
    local k = BUFFERED .. member
    local meta = redis.call('HGET', k, '@')
    if not meta then
      local flags = '00'
      if kind == 'create' then flags = '10' elseif kind == 'delete' then flags = '01' end
      hset_all(k, {'@', flags .. ':' .. txid}, fields)
      redis.call('PEXPIRE', k, ttl)
    else
      local keep = redis.call('PTTL', k)
      local created, deleted = string.sub(meta, 1, 1), string.sub(meta, 2, 2)
      local txs = with_tx(string.sub(meta, 4), txid)
      if kind == 'create' then
        redis.call('DEL', k)
        created, deleted = '1', '0'
      elseif kind == 'delete' then
        deleted = '1'
      end
      hset_all(k, {'@', created .. deleted .. ':' .. txs}, fields)
      if keep == -1 or kind == 'create' or keep < ttl then
        redis.call('PEXPIRE', k, math.max(ttl, keep))
      end
    end
    if kind == 'create' then set_keeping_longer(IDS .. member, txid, ttl) end
    local index = INDEX .. model
    redis.call('ZADD', index, 'NX', next_seq(), id)
    touch(index, ttl)
    if not seen[member] then
      seen[member] = true
      members[#members + 1] = member
    end
  end
  if #members == 0 then return end
  -- written:<txid> holds the records' names, space-separated (no identifier has a space).
  local written = WRITTEN .. txid
  local list = table.concat(members, ' ')
  if redis.call('SET', written, list, 'NX', 'PX', ttl) then return end
  local old = redis.call('GET', written) or ''
  for m in string.gmatch(old, '%S+') do
    if seen[m] then seen[m] = nil end
  end
  local fresh = {}
  for _, m in ipairs(members) do
    if seen[m] then fresh[#fresh + 1] = m end
  end
  if #fresh > 0 then
    local left = redis.call('PTTL', written)
    local merged = old .. ' ' .. table.concat(fresh, ' ')
    if left > ttl then
      redis.call('SET', written, merged, 'KEEPTTL')
    else
      redis.call('SET', written, merged, 'PX', ttl)
    end
  else
    extend(written, ttl)
  end
end

local function release(txid)
  local written = WRITTEN .. txid
  local deleted, seen = 0, {}
  for member in string.gmatch(redis.call('GET', written) or '', '%S+') do
    if not seen[member] then
      seen[member] = true
      local k = BUFFERED .. member
      local meta = redis.call('HGET', k, '@')
      if meta then
        local rest = without_tx(string.sub(meta, 4), txid)
        if rest == '' then
          local sep = string.find(member, ':', 1, true)
          redis.call('DEL', k)
          redis.call('ZREM', INDEX .. string.sub(member, 1, sep - 1), string.sub(member, sep + 1))
          deleted = deleted + 1
        else
          redis.call('HSET', k, '@', string.sub(meta, 1, 3) .. rest)
        end
      end
      local idk = IDS .. member
      if redis.call('GET', idk) == txid then redis.call('DEL', idk) end
    end
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
-- Entries and statuses travel as ARGV of their own; an operation names them
-- by their index.
local ARITY = {push = 2, ack = 2, retry = 3, dead = 4, replay = 2, status = 7, cache = 4,
               release = 2}
local function is_arg(i)
  return type(i) == 'number' and i >= 3 and ARGV[i] ~= nil
end
local function invalid(ops)
  if type(ops) ~= 'table' then return 'a group is not a list' end
  for i, op in ipairs(ops) do
    local name = type(op) == 'table' and op[1]
    if not ARITY[name] then return 'operation ' .. i .. ' is unknown' end
    if #op ~= ARITY[name] or (name == 'push' and not is_arg(op[2]))
       or (name == 'status' and not is_arg(op[3])) then
      return 'operation ' .. i .. ' (' .. name .. ') is malformed'
    end
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

-- Entries pushed one after another go in one LPUSH (same order as one LPUSH
-- each); anything else that touches the list first sends what is pending.
local PUSHES = {}
local function flush_pushes()
  local n = #PUSHES
  for i = 1, n, 1000 do
    redis.call('LPUSH', BUF, unpack(PUSHES, i, math.min(i + 999, n)))
  end
  PUSHES = {}
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
      PUSHES[#PUSHES + 1] = ARGV[op[2]]
      count = count + 1
    elseif name == 'ack' then
      if redis.call('HDEL', INF, op[2]) == 1 then count = count + 1 end
      redis.call('ZREM', LEASES, op[2])
    elseif name == 'retry' then
      flush_pushes()
      count = count + return_to_head(op[2])
      if tonumber(op[3]) > 0 then
        redis.call('SET', HOLD, '1', 'PX', op[3])
      else
        redis.call('DEL', HOLD)
      end
    elseif name == 'dead' then
      count = count + dead_letter(op[2], op[3], op[4])
    elseif name == 'replay' then
      flush_pushes()
      count = count + replay_one(op[2])
    elseif name == 'status' then
      put_status(op[2], ARGV[op[3]], op[4], op[5], op[6], op[7])
    elseif name == 'cache' then
      write_cache(op[2], op[3], op[4])
    elseif name == 'release' then
      for _, txid in ipairs(op[2]) do count = count + release(txid) end
    end
  end
  if not problem then results[g] = count end
end
flush_pushes()
for index, ttl in pairs(TOUCHED) do extend(index, ttl) end
seq_flush()
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
seq_flush()
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
local models = {}
for i = 3, #ARGV do
  local txid = ARGV[i]
  local written = WRITTEN .. txid
  local seen = {}
  for member in string.gmatch(redis.call('GET', written) or '', '%S+') do
    if not seen[member] then
      seen[member] = true
      local k = BUFFERED .. member
      if extend(k, ttl) >= 0 then
        n = n + 1
        local sep = string.find(member, ':', 1, true)
        models[string.sub(member, 1, sep - 1)] = true
      end
      local idk = IDS .. member
      if redis.call('GET', idk) == txid then extend(idk, ttl) end
    end
  end
  extend(written, ttl)
end
for model, _ in pairs(models) do extend(INDEX .. model, ttl) end
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
