"""The Lua scripts of the Redis backend: every multi-key change in one atomic call.

Each script receives the site's buffer key as ``KEYS[1]`` (so a cluster routes
it to the site's slot) and the site's key prefix as ``ARGV[1]``; the key
suffixes are those of :mod:`ccat_buffering_redis.keys`, formatted in here
once. Times come from the server's ``TIME``, in milliseconds.

``APPLY`` runs a list of atomic groups, each a list of operations, so that
writes staged by ``Backend.atomic()`` (and groups from concurrent callers,
coalesced into one call) apply in one round trip. The groups come as one
"frame" in ``ARGV[2]``: tokens ended by the unit separator (byte 31), which no
identifier, number or JSON text holds. Text from outside the library (entries,
receipts, reasons, letter ids) follows as arguments of its own, so that it is
neither escaped nor parsed. The frame's grammar is written out in ``APPLY``.
"""

from __future__ import annotations

from ccat_buffering_redis.keys import SUFFIXES

__all__ = [
    "APPLY",
    "BUFFER_STATS",
    "CACHE_EXTEND",
    "CACHE_FIND",
    "CACHE_GET",
    "CACHE_GET_MANY",
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

-- Sequence numbers (receipts, orders) are taken from the counter SEQ_BUDGET at
-- a time, with one INCRBY; numbers left unused are skipped, never reused.
local SEQ_NEXT, SEQ_LEFT, SEQ_BUDGET = 0, 0, 1
local function next_seq()
  if SEQ_LEFT == 0 then
    SEQ_NEXT = redis.call('INCRBY', SEQ, SEQ_BUDGET) - SEQ_BUDGET
    SEQ_LEFT = SEQ_BUDGET
  end
  SEQ_NEXT = SEQ_NEXT + 1
  SEQ_LEFT = SEQ_LEFT - 1
  return SEQ_NEXT
end

-- Push a key's expiry out to ttl ms from now; never shorten it. Returns 1 if
-- it moved, 0 if it already lasted as long, -1 if there is no such key.
local function extend(key, ttl)
  if redis.call('PEXPIRE', key, ttl, 'GT') == 1 then return 1 end
  local left = redis.call('PTTL', key)
  if left == -2 then return -1 end
  if left == -1 then
    redis.call('PEXPIRE', key, ttl)
    return 1
  end
  return 0
end

-- Calls with many arguments go in slices: unpack() returns a bounded number of
-- values. `head` holds the leading arguments (command, key, option); slices of
-- `args` follow them, 1,000 at a time (an even number: pairs stay whole).
local function in_slices(head, args)
  local n, k = #args, #head
  for i = 1, n, 1000 do
    local call = {unpack(head)}
    for j = i, math.min(i + 999, n) do call[k + j - i + 1] = args[j] end
    redis.call(unpack(call))
  end
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

_RECORDS = r"""
-- A buffered record is a string: a head line '@<created 0|1><deleted 0|1>:<tx>,<tx>...'
-- then a line '<field>=<JSON value>' per field (names are identifiers; JSON
-- text holds no raw newline).
local function join_record(created, deleted, txs, fields)
  local head = '@' .. created .. deleted .. ':' .. txs
  if fields == '' then return head end
  return head .. '\n' .. fields
end

local function split_record(value)
  local nl = string.find(value, '\n', 1, true)
  local head, fields = value, ''
  if nl then head, fields = string.sub(value, 1, nl - 1), string.sub(value, nl + 1) end
  return string.sub(head, 2, 2), string.sub(head, 3, 3), string.sub(head, 5), fields
end

-- The field lines of `later` over those of `earlier`, in the order first written.
local function merge_fields(earlier, later)
  if earlier == '' then return later end
  if later == '' then return earlier end
  local names, values = {}, {}
  for _, text in ipairs({earlier, later}) do
    for line in string.gmatch(text, '[^\n]+') do
      local eq = string.find(line, '=', 1, true)
      if eq then
        local name = string.sub(line, 1, eq - 1)
        if values[name] == nil then names[#names + 1] = name end
        values[name] = string.sub(line, eq)
      end
    end
  end
  local out = {}
  for i, name in ipairs(names) do out[i] = name .. values[name] end
  return table.concat(out, '\n')
end
"""

_FIELD_INDEX = r"""
-- The field index of a model (fields:<Model>): a zset of '<field>=<JSON value>\0<id>'
-- at score 0, so that ZRANGEBYLEX finds the records holding a value (CACHE_FIND).
-- A value longer than 64 bytes is indexed by its first 56 bytes, '#' and its length
-- (no JSON text ends so); CacheStore.find drops the records that only share those.
-- It follows the records exactly: every write moves a record's entries
-- from the fields it had to those it has, a release takes them out.
local FIELDS = P .. '{fields}'
local function field_members(fields, id, out)
  for name, value in string.gmatch(fields, '([^\n=]+=)([^\n]*)') do
    if #value > 64 then value = string.sub(value, 1, 56) .. '#' .. #value end
    out[#out + 1] = name .. value .. '\0' .. id
  end
  return out
end

-- Entries to add, gathered per model (score, member pairs) and sent with one
-- ZADD per model; sent before any removal, so that a removal always follows
-- the addition it undoes.
local FIELD_ADD = {}
local function flush_fields()
  for model, list in pairs(FIELD_ADD) do in_slices({'ZADD', FIELDS .. model}, list) end
  FIELD_ADD = {}
end

local function reindex_fields(model, id, before, after)
  local add = FIELD_ADD[model]
  if not add then add = {}; FIELD_ADD[model] = add end
  if before == '' then
    for _, m in ipairs(field_members(after, id, {})) do
      add[#add + 1] = 0
      add[#add + 1] = m
    end
    return
  end
  local old, new = field_members(before, id, {}), field_members(after, id, {})
  local keep, had, gone = {}, {}, {}
  for _, m in ipairs(new) do keep[m] = true end
  for _, m in ipairs(old) do
    had[m] = true
    if not keep[m] then gone[#gone + 1] = m end
  end
  if #gone > 0 then
    flush_fields()
    in_slices({'ZREM', FIELDS .. model}, gone)
    add = {}
    FIELD_ADD[model] = add
  end
  for _, m in ipairs(new) do
    if not had[m] then
      add[#add + 1] = 0
      add[#add + 1] = m
    end
  end
end
""".replace("{fields}", SUFFIXES["fields"])

APPLY = (
    _PRELUDE
    + _RETURN_TO_HEAD
    + _REPLAY_ONE
    + _RECORDS
    + _FIELD_INDEX
    + r"""
-- The call's tokens (see the frame below), read by the operations.
local T = {}

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
  if not lsn then return '00000000' .. txid end
  local low = string.match(lsn, '/(%x+)$') or '0'
  return string.rep('0', 8 - #low) .. string.upper(low) .. txid
end

-- Statuses are written once, at the end of the call: the last one staged per
-- transaction wins, and one MGET tells which index each leaves.
local STATUS_NEW, STATUS_ORDER = {}, {}
local function put_status(txid, json, state, ttl, score, member)
  if not STATUS_NEW[txid] then STATUS_ORDER[#STATUS_ORDER + 1] = txid end
  if not TERMINAL[state] and score == '' then score = next_seq() end
  STATUS_NEW[txid] = {json, state, tonumber(ttl), score, member}
end

local function flush_statuses()
  local n = #STATUS_ORDER
  if n == 0 then return end
  local keys, olds = {}, {}
  for i, txid in ipairs(STATUS_ORDER) do keys[i] = STATUS .. txid end
  for i = 1, n, 1000 do
    local got = redis.call('MGET', unpack(keys, i, math.min(i + 999, n)))
    for j = 1, #got do olds[i + j - 1] = got[j] end
  end
  local plain, adds, removes = {}, {}, {}
  local function note(map, state, a, b)
    local list = map[state]
    if not list then list = {}; map[state] = list end
    list[#list + 1] = a
    if b then list[#list + 1] = b end
  end
  for i, txid in ipairs(STATUS_ORDER) do
    local json, state, ttl, score, member = unpack(STATUS_NEW[txid])
    if TERMINAL[state] then
      redis.call('SET', keys[i], json, 'PX', ttl)
      score, member = NOW + ttl, txid
    else
      plain[#plain + 1] = keys[i]
      plain[#plain + 1] = json
    end
    note(adds, state, score, member)
    local old = olds[i]
    if old then
      local was = string.match(old, '"state":"(%a+)"')
      if was then
        local was_member = state_member(was, txid, string.match(old, '"commit_lsn":"([^"]+)"'))
        if was ~= state or was_member ~= member then note(removes, was, was_member) end
      end
    end
  end
  for state, members in pairs(removes) do in_slices({'ZREM', STATE .. state}, members) end
  if #plain > 0 then in_slices({'MSET'}, plain) end
  for state, pairs_ in pairs(adds) do in_slices({'ZADD', STATE .. state}, pairs_) end
end

-- Model indexes: ids to add (NX, by first write) and the longest TTL asked, per model.
local INDEX_ADD, INDEX_TTL = {}, {}
local function index_add(model, id, ttl)
  local list = INDEX_ADD[model]
  if not list then list = {}; INDEX_ADD[model] = list end
  list[#list + 1] = next_seq()
  list[#list + 1] = id
  if not INDEX_TTL[model] or INDEX_TTL[model] < ttl then INDEX_TTL[model] = ttl end
end
local function flush_indexes()
  for model, list in pairs(INDEX_ADD) do in_slices({'ZADD', INDEX .. model, 'NX'}, list) end
  INDEX_ADD = {}
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

-- A record already buffered: a create replaces its fields, an update or a
-- delete merges into them; its transactions gain this one; its TTL never shortens.
local function merge_record(k, txid, ttl, kind, body)
  local old = redis.call('GET', k)
  local keep = redis.call('PTTL', k)
  local created, deleted, txs, fields = split_record(old)
  local before = fields
  if kind == 'create' then
    created, deleted, fields = '1', '0', ''
  elseif kind == 'delete' then
    deleted = '1'
  end
  local after = merge_fields(fields, body)
  local value = join_record(created, deleted, with_tx(txs, txid), after)
  redis.call('SET', k, value, 'PX', math.max(ttl, keep))
  return before, after
end

local FLAGS = {create = {'1', '0'}, update = {'0', '0'}, delete = {'0', '1'}}
local function write_cache(txid, ttl, at, count)
  local members, seen = {}, {}
  for i = 0, count - 1 do
    local model, id, kind, body = T[at + 4 * i], T[at + 4 * i + 1], T[at + 4 * i + 2],
      T[at + 4 * i + 3]
    local flags = FLAGS[kind]
    local member = model .. ':' .. id
    local k = BUFFERED .. member
    if not redis.call('SET', k, join_record(flags[1], flags[2], txid, body), 'NX', 'PX', ttl) then
      reindex_fields(model, id, merge_record(k, txid, ttl, kind, body))
    else
      reindex_fields(model, id, '', body)
    end
    if kind == 'create' then set_keeping_longer(IDS .. member, txid, ttl) end
    index_add(model, id, ttl)
    if not seen[member] then
      seen[member] = true
      members[#members + 1] = member
    end
  end
  if #members == 0 then return end
  -- written:<txid> holds the records' names, space-separated (no identifier has a space).
  local written = WRITTEN .. txid
  if redis.call('SET', written, table.concat(members, ' '), 'NX', 'PX', ttl) then return end
  local old = redis.call('GET', written) or ''
  for m in string.gmatch(old, '%S+') do seen[m] = nil end
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
  flush_indexes()
  local written = WRITTEN .. txid
  local deleted, seen = 0, {}
  for member in string.gmatch(redis.call('GET', written) or '', '%S+') do
    if not seen[member] then
      seen[member] = true
      local k = BUFFERED .. member
      local value = redis.call('GET', k)
      if value then
        local created, was_deleted, txs, fields = split_record(value)
        local rest = without_tx(txs, txid)
        if rest == '' then
          local sep = string.find(member, ':', 1, true)
          redis.call('DEL', k)
          redis.call('ZREM', INDEX .. string.sub(member, 1, sep - 1), string.sub(member, sep + 1))
          reindex_fields(string.sub(member, 1, sep - 1), string.sub(member, sep + 1), fields, '')
          deleted = deleted + 1
        elseif rest ~= txs then
          redis.call('SET', k, join_record(created, was_deleted, rest, fields), 'KEEPTTL')
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

-- The frame (ARGV[2]): tokens, each ended by the unit separator (byte 31).
-- Text from outside the library (entries, receipts, reasons, letter ids)
-- never enters it: it travels as ARGV of its own ("blobs"), taken in order.
-- Each group starts with its token and blob counts, then its operations:
--   push                        blob: entry
--   ack                         blob: receipt
--   retry <delay ms> <n>        blobs: n receipts
--   dead                        blobs: receipt, reason, transaction id
--   replay                      blob: letter id
--   status <tx> <json> <state> <ttl ms> <score> <member>
--   cache <tx> <ttl ms> <n> (<model> <id> <kind> <fields>) x n
--   release <n> <tx> x n
do
  local frame, pos, n = ARGV[2], 1, 0
  while true do
    local stop = string.find(frame, '\31', pos, true)
    if not stop then break end
    n = n + 1
    T[n] = string.sub(frame, pos, stop - 1)
    pos = stop + 1
  end
  -- No operation takes more numbers than it has tokens.
  SEQ_BUDGET = math.max(n, 1)
end

-- Tokens after the name and blobs of one operation, or nil if it is unknown
-- or malformed.
local FIXED = {push = {0, 1}, ack = {0, 1}, dead = {0, 3}, replay = {0, 1}}
local function shape(at)
  local name = T[at]
  local fixed = FIXED[name]
  if fixed then return fixed[1], fixed[2] end
  if name == 'status' then
    if tonumber(T[at + 4]) then return 6, 0 end
  elseif name == 'retry' then
    local n = tonumber(T[at + 2])
    if n and tonumber(T[at + 1]) then return 2, n end
  elseif name == 'cache' then
    local n = tonumber(T[at + 3])
    if not (n and tonumber(T[at + 2])) then return nil end
    for i = 0, n - 1 do
      if not FLAGS[T[at + 6 + 4 * i]] then return nil end
    end
    return 3 + 4 * n, 0
  elseif name == 'release' then
    local n = tonumber(T[at + 1])
    if n then return 1 + n, 0 end
  end
  return nil
end

-- Check a group before writing any of it: a script cannot roll back, so a
-- group that would fail halfway is refused whole instead.
local function check(first, last, blob, blobs)
  local at, used = first, 0
  while at <= last do
    local tokens, taken = shape(at)
    if not tokens then return 'operation ' .. tostring(T[at]) .. ' is unknown or malformed' end
    at = at + 1 + tokens
    used = used + taken
  end
  if at ~= last + 1 or used ~= blobs or blob + blobs - 1 > #ARGV then
    return 'the group is malformed'
  end
  return nil
end

-- Entries pushed one after another go in one LPUSH (same order as one LPUSH
-- each); anything else that touches the list first sends what is pending.
local PUSHES = {}
local function flush_pushes()
  in_slices({'LPUSH', BUF}, PUSHES)
  PUSHES = {}
end

-- Run the operations of one checked group; returns how many entries they touched.
local function run_group(first, last, b)
  local count = 0
  local i = first
  while i <= last do
    local name = T[i]
    if name == 'push' then
      PUSHES[#PUSHES + 1] = ARGV[b]
      b = b + 1
      count = count + 1
      i = i + 1
    elseif name == 'ack' then
      if redis.call('HDEL', INF, ARGV[b]) == 1 then count = count + 1 end
      redis.call('ZREM', LEASES, ARGV[b])
      b = b + 1
      i = i + 1
    elseif name == 'retry' then
      flush_pushes()
      local n = tonumber(T[i + 2])
      local receipts = {}
      for j = 0, n - 1 do receipts[#receipts + 1] = ARGV[b + j] end
      b = b + n
      count = count + return_to_head(receipts)
      if tonumber(T[i + 1]) > 0 then
        redis.call('SET', HOLD, '1', 'PX', T[i + 1])
      else
        redis.call('DEL', HOLD)
      end
      i = i + 3
    elseif name == 'dead' then
      count = count + dead_letter(ARGV[b], ARGV[b + 1], ARGV[b + 2])
      b = b + 3
      i = i + 1
    elseif name == 'replay' then
      flush_pushes()
      count = count + replay_one(ARGV[b])
      b = b + 1
      i = i + 1
    elseif name == 'status' then
      put_status(T[i + 1], T[i + 2], T[i + 3], T[i + 4], T[i + 5], T[i + 6])
      i = i + 7
    elseif name == 'cache' then
      local n = tonumber(T[i + 3])
      write_cache(T[i + 1], tonumber(T[i + 2]), i + 4, n)
      i = i + 4 + 4 * n
    elseif name == 'release' then
      local n = tonumber(T[i + 1])
      for j = 2, n + 1 do count = count + release(T[i + j]) end
      i = i + 2 + n
    end
  end
  return count
end

-- A group that fails while it runs (a key of the wrong type, written by hand)
-- may be half written, but it fails alone: the groups around it still apply,
-- and what they staged is still written below.
local results = {}
local at, blob = 2, 3
for g = 1, tonumber(T[1]) do
  local tokens, blobs = tonumber(T[at]), tonumber(T[at + 1])
  local first, last = at + 2, at + 1 + tokens
  local problem = check(first, last, blob, blobs)
  if problem then
    results[g] = 'error: ' .. problem
  else
    local ok, outcome = pcall(run_group, first, last, blob)
    if ok then
      results[g] = outcome
    else
      if type(outcome) == 'table' then outcome = outcome.err or 'an error' end
      results[g] = 'failed: ' .. tostring(outcome)
    end
  end
  at = last + 1
  blob = blob + blobs
end
flush_pushes()
flush_statuses()
flush_indexes()
flush_fields()
for model, ttl in pairs(INDEX_TTL) do
  extend(INDEX .. model, ttl)
  extend(FIELDS .. model, ttl)
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
SEQ_BUDGET = #popped
local out, held, leases = {deadline}, {}, {}
for _, p in ipairs(popped) do
  local r = tostring(next_seq())
  held[#held + 1] = r
  held[#held + 1] = p
  leases[#leases + 1] = deadline
  leases[#leases + 1] = r
  out[#out + 1] = r
  out[#out + 1] = p
end
in_slices({'HSET', INF}, held)
in_slices({'ZADD', LEASES}, leases)
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
    + _FIELD_INDEX
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
for model, _ in pairs(models) do
  extend(INDEX .. model, ttl)
  extend(FIELDS .. model, ttl)
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
  local value = redis.call('GET', k)
  if not value then
    redis.call('ZREM', index, id)
  else
    out[#out + 1] = {id, redis.call('PTTL', k), value}
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
return {NOW, redis.call('PTTL', k), redis.call('GET', k) or ''}
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

CACHE_GET_MANY = (
    _PRELUDE
    + """
local out = {}
for i = 3, #ARGV do
  local k = BUFFERED .. ARGV[2] .. ':' .. ARGV[i]
  out[#out + 1] = {redis.call('PTTL', k), redis.call('GET', k) or ''}
end
return {NOW, out}
"""
)

CACHE_FIND = (
    _PRELUDE
    + _FIELD_INDEX
    + r"""
-- ARGV[3...]: '<field>=<value>\0' prefixes, as field_members() writes them.
local model = ARGV[2]
local key, index = FIELDS .. model, INDEX .. model
local found, out = {}, {}
for i = 3, #ARGV do
  local p = ARGV[i]
  local members = redis.call('ZRANGEBYLEX', key, '[' .. p, '(' .. string.sub(p, 1, -2) .. '\1')
  for _, m in ipairs(members) do
    local id = string.sub(m, #p + 1)
    if not found[id] then
      found[id] = true
      local k = BUFFERED .. model .. ':' .. id
      local value = redis.call('GET', k)
      if value then
        local order = tonumber(redis.call('ZSCORE', index, id)) or 0
        out[#out + 1] = {order, id, redis.call('PTTL', k), value}
      else
        -- Expired without a release: its entries go now.
        redis.call('ZREM', key, m)
      end
    end
  end
end
table.sort(out, function(a, b) return a[1] < b[1] end)
local rows = {}
for i, row in ipairs(out) do rows[i] = {row[2], row[3], row[4]} end
return {NOW, rows}
"""
)
