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

from ccat_buffering.models import TransactionState
from ccat_buffering_redis._field_index import CACHE_FIND_BODY, CACHE_LEARN_BODY, FIELD_INDEX
from ccat_buffering_redis._model_index import MODEL_INDEX
from ccat_buffering_redis._state_index import STATE_INDEX
from ccat_buffering_redis.keys import SUFFIXES

__all__ = [
    "APPLY",
    "BUFFER_STATS",
    "CACHE_EXTEND",
    "CACHE_FIND",
    "CACHE_GET",
    "CACHE_GET_MANY",
    "CACHE_LEARN",
    "CACHE_LIST",
    "CLAIM",
    "LEASE_ACQUIRE",
    "LEASE_CURRENT",
    "LEASE_RELEASE",
    "LEASE_RENEW",
    "LETTERS_GET",
    "LETTERS_PURGE",
    "LETTERS_REPLAY",
    "PUBLISH_REPORT",
    "RECOVER",
    "REFUSES_WRITES",
    "STAMP_BUFFER",
    "STATUS_COUNTS",
    "STATUS_IDS",
]

_STATES = ", ".join(f"{state} = true" for state in TransactionState)

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
local LEASE = P .. '{lease}'
local RECONCILE = P .. '{reconcile}'
local PROCESSOR = P .. '{processor}'
local EPOCH = P .. '{epoch}'
local TERMINAL = {{replicated = true, failed = true}}
local STATES = {{{states}}}

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

-- Drop the entries of the terminal indexes whose statuses have expired. A
-- write that only frees: run first, it lets a full Redis accept the rest of
-- the call (see APPLY).
local function prune_terminal()
  for state, _ in pairs(TERMINAL) do
    redis.pcall('ZREMRANGEBYSCORE', STATE .. state, '-inf', NOW)
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
    .replace("{states}", _STATES)
    .replace("{lease}", SUFFIXES["lease"])
    .replace("{reconcile}", SUFFIXES["reconcile"])
    .replace("{processor}", SUFFIXES["processor"])
    .replace("{epoch}", SUFFIXES["epoch"])
    .replace("{{", "{")
    .replace("}}", "}")
)

_RETURN_TO_HEAD = """
-- Entries go back to the right end (the head) so that the lowest receipt,
-- the oldest entry, is claimed first again.
-- Each is taken out of the in-flight set before it is pushed: freeing first
-- lets a full Redis accept the push (see APPLY).
local function return_to_head(receipts)
  table.sort(receipts, function(a, b) return tonumber(a) > tonumber(b) end)
  local n = 0
  for _, r in ipairs(receipts) do
    local p = redis.call('HGET', INF, r)
    if p then
      redis.call('HDEL', INF, r)
      redis.call('ZREM', LEASES, r)
      redis.call('RPUSH', BUF, p)
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
  redis.call('HDEL', LETTERS, lid)
  redis.call('HDEL', META, lid)
  redis.call('ZREM', ORDER, lid)
  redis.call('LPUSH', BUF, p)
  return 1
end
"""

_RECORDS = r"""
-- A buffered record is a string: a head line
-- '@<created 0|1><deleted 0|1><sequence number>:<tx>,<tx>...' then a line
-- '<field>=<JSON value>' per field (names are identifiers; JSON text holds no
-- raw newline). The number places it in its model index (see MODEL_INDEX).
local function join_record(created, deleted, seq, txs, fields)
  local head = '@' .. created .. deleted .. seq .. ':' .. txs
  if fields == '' then return head end
  return head .. '\n' .. fields
end

local function split_record(value)
  local nl = string.find(value, '\n', 1, true)
  local head, fields = value, ''
  if nl then head, fields = string.sub(value, 1, nl - 1), string.sub(value, nl + 1) end
  local colon = string.find(head, ':', 4, true) or #head
  return string.sub(head, 2, 2), string.sub(head, 3, 3), string.sub(head, 4, colon - 1),
    string.sub(head, colon + 1), fields
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

_STATUS_VALUES = r"""
-- A string key's value, or nil. MGET answers nil for a key of another type
-- where GET fails, so that no read can break a group halfway.
local function read(k)
  return redis.call('MGET', k)[1] or nil
end

-- A status key holds the status JSON (without the id and default values),
-- then, after a newline, the records the transaction wrote while they are
-- buffered: '<Model>:<id>', space-separated (JSON text holds no raw newline,
-- no name a space). Either part may be empty.
local function split_status(value)
  if not value then return '', '' end
  local nl = string.find(value, '\n', 1, true)
  if not nl then return value, '' end
  return string.sub(value, 1, nl - 1), string.sub(value, nl + 1)
end

local function join_status(json, members)
  if members == '' then return json end
  return json .. '\n' .. members
end

local function merge_members(list, more)
  local seen, out = {}, {}
  if list ~= '' then
    for m in string.gmatch(list, '%S+') do
      if not seen[m] then seen[m] = true; out[#out + 1] = m end
    end
  end
  for _, m in ipairs(more) do
    if not seen[m] then seen[m] = true; out[#out + 1] = m end
  end
  return table.concat(out, ' ')
end

local FLAGS = {create = {'1', '0'}, update = {'0', '0'}, delete = {'0', '1'}}

-- An ID-cache entry holds its creating transaction, or '1' when that is the
-- first of the buffered record's transactions: the record has it already, and
-- Redis stores a small integer in no memory of its own.
local function id_entry(txid, txs)
  if string.match(txs, '^[^,]*') == txid then return '1' end
  return txid
end

-- The creating transaction an entry names, given the record's value (or nil).
local function creator(entry, record)
  if entry ~= '1' then return entry end
  if not record then return nil end
  return string.match(record, '^@[^:\n]*:([^,\n]*)')
end
"""

_FIELD_INDEX = MODEL_INDEX + FIELD_INDEX

APPLY = (
    _PRELUDE
    + _RETURN_TO_HEAD
    + _REPLAY_ONE
    + _RECORDS
    + _STATUS_VALUES
    + _FIELD_INDEX
    + STATE_INDEX
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

-- What a group stages (entries to push, statuses, records written, index
-- entries) waits in G; only a group that ran whole hands it on to the call.
local G
local function new_stage() return {pushes = {}, statuses = {}, written = {}, index = {}} end

local PUSHES = {}
local STATUS_NEW, STATUS_ORDER = {}, {}
-- Stored values of status keys, read before anything was written (nothing
-- writes a status key before flush_statuses, so they still hold there).
local STORED = {}
-- Records each transaction wrote in this call, and those whose stored list
-- was released (dropped when its status key is written).
local WRITTEN_ADD, CLEARED = {}, {}
local INDEX_TTL = {}

local function put_status(txid, json, state, ttl, score, member)
  if not TERMINAL[state] and score == '' then score = next_seq() end
  G.statuses[#G.statuses + 1] = {txid, json, state, tonumber(ttl), score, member}
end

local function index_add(model, id, ttl, seq)
  G.index[#G.index + 1] = {model, seq, id, ttl}
end

local function add_written(txid, members, ttl)
  local add = WRITTEN_ADD[txid]
  if not add then add = {list = {}, ttl = 0}; WRITTEN_ADD[txid] = add end
  for _, m in ipairs(members) do add.list[#add.list + 1] = m end
  if ttl > add.ttl then add.ttl = ttl end
end

local function add_index(entry)
  local model, seq, id, ttl = unpack(entry)
  local list = INDEX_ADD[model]
  if not list then list = {}; INDEX_ADD[model] = list end
  list[#list + 1] = seq
  list[#list + 1] = id
  extend_bucket(model, seq, ttl)
  if not INDEX_TTL[model] or INDEX_TTL[model] < ttl then INDEX_TTL[model] = ttl end
end

local function commit_stage(stage)
  for _, p in ipairs(stage.pushes) do PUSHES[#PUSHES + 1] = p end
  for _, s in ipairs(stage.statuses) do
    local txid = s[1]
    if not STATUS_NEW[txid] then STATUS_ORDER[#STATUS_ORDER + 1] = txid end
    STATUS_NEW[txid] = {s[2], s[3], s[4], s[5], s[6]}
  end
  for _, w in ipairs(stage.written) do add_written(w[1], w[2], w[3]) end
  for _, e in ipairs(stage.index) do add_index(e) end
end

-- Entries pushed one after another go in one LPUSH (same order as one LPUSH
-- each); anything else that touches the list first sends what is pending.
local function flush_pushes()
  for _, p in ipairs(G.pushes) do PUSHES[#PUSHES + 1] = p end
  G.pushes = {}
  in_slices({'LPUSH', BUF}, PUSHES)
  PUSHES = {}
end

-- Statuses are written once, at the end of the call: the last one staged per
-- transaction wins, the records it wrote are kept with it, and one MGET tells
-- which index each leaves. Removals go first: they free before anything grows.
local function flush_statuses()
  local ids, listed = {}, {}
  local function list(txid)
    if not listed[txid] then listed[txid] = true; ids[#ids + 1] = txid end
  end
  for _, txid in ipairs(STATUS_ORDER) do list(txid) end
  for txid, _ in pairs(WRITTEN_ADD) do list(txid) end
  for txid, _ in pairs(CLEARED) do list(txid) end
  local n = #ids
  if n == 0 then return end
  local keys, olds, unread, at = {}, {}, {}, {}
  for i, txid in ipairs(ids) do
    keys[i] = STATUS .. txid
    if STORED[txid] == nil then
      unread[#unread + 1] = keys[i]
      at[#at + 1] = i
    else
      olds[i] = STORED[txid]
    end
  end
  for i = 1, #unread, 1000 do
    local got = redis.call('MGET', unpack(unread, i, math.min(i + 999, #unread)))
    for j = 1, #got do olds[at[i + j - 1]] = got[j] end
  end
  local plain, adds, removes, seq_removes, writes = {}, {}, {}, {}, {}
  local function note(map, state, a, b)
    local entries = map[state]
    if not entries then entries = {}; map[state] = entries end
    entries[#entries + 1] = a
    if b then entries[#entries + 1] = b end
  end
  for i, txid in ipairs(ids) do
    local old = olds[i] or nil
    local old_json, old_members = split_status(old)
    local members = old_members
    if CLEARED[txid] then members = '' end
    local add = WRITTEN_ADD[txid]
    if add then members = merge_members(members, add.list) end
    local new = STATUS_NEW[txid]
    if new then
      local json, state, ttl, score, member = unpack(new)
      if SEQ_STATES[state] then json = score .. json end
      local value = join_status(json, members)
      if TERMINAL[state] then
        writes[#writes + 1] = {keys[i], value, ttl}
        score, member = NOW + ttl, txid
      else
        plain[#plain + 1] = keys[i]
        plain[#plain + 1] = value
      end
      note(adds, state, score, member)
      local was = string.match(old_json, '"state":"(%a+)"')
      if was and SEQ_STATES[was] then
        note(seq_removes, was, status_seq(old_json) or -1, txid)
      elseif was then
        local was_member = state_member(was, txid, string.match(old_json, '"commit_lsn":"([^"]+)"'))
        if was ~= state or was_member ~= member then note(removes, was, was_member) end
      end
    elseif old_json == '' and members == '' then
      if old then redis.call('DEL', keys[i]) end
    elseif old_json == '' then
      -- Only the records (a cache write without a status): the key lives as they do.
      local left = redis.call('PTTL', keys[i])
      writes[#writes + 1] = {keys[i], members == '' and '' or '\n' .. members,
        math.max(add and add.ttl or 0, left)}
    elseif members ~= old_members then
      writes[#writes + 1] = {keys[i], join_status(old_json, members), -1}
    end
  end
  for state, members in pairs(removes) do in_slices({'ZREM', STATE .. state}, members) end
  for state, list in pairs(seq_removes) do
    for j = 1, #list, 2 do state_remove(state, list[j], list[j + 1]) end
  end
  for _, w in ipairs(writes) do
    if w[3] > 0 then
      redis.call('SET', w[1], w[2], 'PX', w[3])
    else
      redis.call('SET', w[1], w[2], 'KEEPTTL')
    end
  end
  if #plain > 0 then in_slices({'MSET'}, plain) end
  for state, pairs_ in pairs(adds) do
    if SEQ_STATES[state] then
      state_add(state, pairs_)
    else
      in_slices({'ZADD', STATE .. state}, pairs_)
    end
  end
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
-- delete merges into them; its transactions gain this one; its TTL never
-- shortens. A key of another type (written by hand) is replaced.
-- Returns the fields before and after, and the record's sequence number (the
-- one it was first written with; `seq` if it had none).
local function merge_record(k, txid, ttl, kind, body, seq)
  local old = read(k)
  local flags = FLAGS[kind]
  if not old then
    redis.call('SET', k, join_record(flags[1], flags[2], seq, txid, body), 'PX', ttl)
    return '', body, seq, txid
  end
  local keep = redis.call('PTTL', k)
  local created, deleted, had, txs, fields = split_record(old)
  seq = tonumber(had) or seq
  local before = fields
  if kind == 'create' then
    created, deleted, fields = '1', '0', ''
  elseif kind == 'delete' then
    deleted = '1'
  end
  local after = merge_fields(fields, body)
  txs = with_tx(txs, txid)
  redis.call('SET', k, join_record(created, deleted, seq, txs, after), 'PX', math.max(ttl, keep))
  return before, after, seq, txs
end

local function write_cache(txid, ttl, at, count)
  local members, seen = {}, {}
  for i = 0, count - 1 do
    local model, id, kind, body = T[at + 4 * i], T[at + 4 * i + 1], T[at + 4 * i + 2],
      T[at + 4 * i + 3]
    local flags = FLAGS[kind]
    local member = model .. ':' .. id
    local k = BUFFERED .. member
    local seq = next_seq()
    local new = join_record(flags[1], flags[2], seq, txid, body)
    local txs = txid
    if not redis.call('SET', k, new, 'NX', 'PX', ttl) then
      local before, after
      before, after, seq, txs = merge_record(k, txid, ttl, kind, body, seq)
      reindex_fields(model, id, before, after)
    else
      reindex_fields(model, id, '', body)
    end
    if kind == 'create' then set_keeping_longer(IDS .. member, id_entry(txid, txs), ttl) end
    index_add(model, id, ttl, seq)
    if not seen[member] then
      seen[member] = true
      members[#members + 1] = member
    end
  end
  if #members > 0 then G.written[#G.written + 1] = {txid, members, ttl} end
end

-- The records a transaction wrote: those stored with its status, and those
-- staged in this call.
local function written_by(txid)
  local found = {}
  if not CLEARED[txid] then
    local _, stored = split_status(read(STATUS .. txid))
    for m in string.gmatch(stored, '%S+') do found[#found + 1] = m end
  end
  local add = WRITTEN_ADD[txid]
  if add then for _, m in ipairs(add.list) do found[#found + 1] = m end end
  for _, w in ipairs(G.written) do
    if w[1] == txid then for _, m in ipairs(w[2]) do found[#found + 1] = m end end
  end
  return found
end

local function release(txid)
  for _, e in ipairs(G.index) do add_index(e) end
  G.index = {}
  flush_indexes()
  local deleted, seen = 0, {}
  local members = written_by(txid)
  WRITTEN_ADD[txid] = nil
  local kept = {}
  for _, w in ipairs(G.written) do if w[1] ~= txid then kept[#kept + 1] = w end end
  G.written = kept
  CLEARED[txid] = true
  for _, member in ipairs(members) do
    if not seen[member] then
      seen[member] = true
      local k = BUFFERED .. member
      local value = read(k)
      if value then
        local created, was_deleted, seq, txs, fields = split_record(value)
        local rest = without_tx(txs, txid)
        if rest == '' then
          local sep = string.find(member, ':', 1, true)
          local model, id = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
          redis.call('DEL', k)
          unindex(model, id, tonumber(seq))
          reindex_fields(model, id, fields, '')
          deleted = deleted + 1
        elseif rest ~= txs then
          redis.call('SET', k, join_record(created, was_deleted, seq, rest, fields), 'KEEPTTL')
        end
      end
      local idk = IDS .. member
      if creator(read(idk), value) == txid then redis.call('DEL', idk) end
    end
  end
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

-- The structures each operation writes, and their types: a key of another
-- type (written by hand) would fail a command halfway through a group.
local TYPES = {}
local function wrong_type(key, want)
  local got = TYPES[key]
  if not got then
    got = redis.call('TYPE', key)['ok']
    TYPES[key] = got
  end
  if got == 'none' or got == want then return nil end
  return 'key ' .. key .. ' is a ' .. got .. ', not a ' .. want
end
local USES = {
  push = {{BUF, 'list'}},
  ack = {{INF, 'hash'}, {LEASES, 'zset'}},
  retry = {{INF, 'hash'}, {LEASES, 'zset'}, {BUF, 'list'}},
  dead = {{INF, 'hash'}, {LEASES, 'zset'}, {LETTERS, 'hash'}, {META, 'hash'}, {ORDER, 'zset'}},
  replay = {{LETTERS, 'hash'}, {META, 'hash'}, {ORDER, 'zset'}, {BUF, 'list'}},
}

local function index_problem(model)
  return wrong_type(INDEX .. model, 'zset') or wrong_type(FIELDS .. model, 'zset')
end

-- Check a group before writing any of it: a script cannot roll back, so a
-- group that could fail halfway is refused whole instead. Returns the
-- problem, if any, whether the group needs new memory (it buffers), and its
-- statuses ({transaction, state}), whose indexes are checked after.
local NEEDS = 0
local function check(first, last, blob, blobs)
  local at, used, allocates, statuses, needs = first, 0, false, {}, 0
  while at <= last do
    local tokens, taken = shape(at)
    if not tokens then
      return 'operation ' .. tostring(T[at]) .. ' is unknown or malformed', false
    end
    local name = T[at]
    local problem = nil
    if name == 'status' then
      statuses[#statuses + 1] = {T[at + 1], T[at + 3]}
      needs = needs + 1
    elseif name == 'cache' then
      allocates = true
      needs = needs + tonumber(T[at + 3])
      for i = 0, tonumber(T[at + 3]) - 1 do
        problem = problem or index_problem(T[at + 4 + 4 * i])
      end
    elseif name == 'release' then
      for j = 2, tonumber(T[at + 1]) + 1 do
        local _, stored = split_status(read(STATUS .. T[at + j]))
        for m in string.gmatch(stored, '%S+') do
          problem = problem or index_problem(string.sub(m, 1, string.find(m, ':', 1, true) - 1))
        end
      end
    else
      if name == 'push' then allocates = true end
      if name == 'dead' then needs = needs + 1 end
      for _, use in ipairs(USES[name]) do problem = problem or wrong_type(use[1], use[2]) end
    end
    if problem then return problem, false, {} end
    at = at + 1 + tokens
    used = used + taken
  end
  if at ~= last + 1 or used ~= blobs or blob + blobs - 1 > #ARGV then
    return 'the group is malformed', false, {}
  end
  NEEDS = NEEDS + needs
  return nil, allocates, statuses
end

-- A status leaves the index of its stored state and joins that of its new
-- one: both are checked, with one MGET of the stored statuses of the call.
local function check_states(groups)
  local ids, keys = {}, {}
  for _, group in ipairs(groups) do
    if not group[4] then
      for _, s in ipairs(group[6]) do
        ids[#ids + 1] = s[1]
        keys[#keys + 1] = STATUS .. s[1]
      end
    end
  end
  local was = {}
  for i = 1, #keys, 1000 do
    local got = redis.call('MGET', unpack(keys, i, math.min(i + 999, #keys)))
    for j = 1, #got do
      local value = got[j]
      STORED[ids[i + j - 1]] = value
      if value then
        was[ids[i + j - 1]] = string.match(string.match(value, '^[^\n]*'), '"state":"(%a+)"')
      end
    end
  end
  for _, group in ipairs(groups) do
    if not group[4] then
      for _, s in ipairs(group[6]) do
        local problem = wrong_type(STATE .. s[2], 'zset')
        if not problem and was[s[1]] then problem = wrong_type(STATE .. was[s[1]], 'zset') end
        if problem then
          group[4], group[5] = problem, false
          break
        end
      end
    end
  end
end

-- Run the operations of one checked group; returns how many entries they touched.
local function run_group(first, last, b)
  local count = 0
  local i = first
  while i <= last do
    local name = T[i]
    if name == 'push' then
      G.pushes[#G.pushes + 1] = ARGV[b]
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

local results, groups, any_allocates = {}, {}, false
do
  local at, blob = 2, 3
  for g = 1, tonumber(T[1]) do
    local tokens, blobs = tonumber(T[at]), tonumber(T[at + 1])
    local first, last = at + 2, at + 1 + tokens
    local problem, allocates, statuses = check(first, last, blob, blobs)
    groups[g] = {first, last, blob, problem, allocates, statuses}
    at = last + 1
    blob = blob + blobs
  end
  check_states(groups)
  -- The numbers the checked groups take, exactly: numbers left unused would
  -- spread the model index over more buckets (see MODEL_INDEX).
  SEQ_BUDGET = math.max(NEEDS, 1)
  for _, group in ipairs(groups) do
    if group[5] and not group[4] then any_allocates = true end
  end
end

-- A full Redis (maxmemory under noeviction) refuses a script's first write
-- if that write could grow memory, and nothing after a write that did not.
-- So a call that buffers takes its sequence numbers first: if Redis refuses
-- them, nothing is written yet and the groups that buffer are refused whole.
-- Every other group frees (acks, retries, dead letters, releases): pruning
-- the expired entries of the terminal indexes comes first, a write that
-- frees, so that what they must write after it (a status, a dead letter) is
-- allowed and the drain never stalls on a full buffer.
local FULL = nil
if any_allocates then
  local got = redis.pcall('INCRBY', SEQ, SEQ_BUDGET)
  if type(got) == 'table' then
    local err = got['err'] or 'an error'
    if string.find(err, 'OOM', 1, true) then
      FULL = err
    else
      for g = 1, #groups do results[g] = 'error: the counter ' .. SEQ .. ' is unusable: ' .. err end
      return results
    end
  else
    SEQ_NEXT, SEQ_LEFT = got - SEQ_BUDGET, SEQ_BUDGET
  end
end
if FULL or not any_allocates then prune_terminal() end

-- A group that fails while it runs despite its check (it should not) fails
-- alone: what it staged is dropped, and the groups around it still apply.
for g, group in ipairs(groups) do
  local first, last, blob, problem, allocates = group[1], group[2], group[3], group[4], group[5]
  if problem then
    results[g] = 'error: ' .. problem
  elseif allocates and FULL then
    results[g] = 'full: ' .. FULL
  else
    G = new_stage()
    local ok, outcome = pcall(run_group, first, last, blob)
    if ok then
      commit_stage(G)
      results[g] = outcome
    else
      if type(outcome) == 'table' then outcome = outcome.err or 'an error' end
      results[g] = 'failed: ' .. tostring(outcome)
    end
  end
end
G = new_stage()
flush_pushes()
flush_statuses()
flush_indexes()
flush_fields()
extend_buckets()
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
    + STATE_INDEX
    + """
prune_terminal()
local limit = tonumber(ARGV[3])
if SEQ_STATES[ARGV[2]] then return state_ids(ARGV[2], limit) end
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
    + STATE_INDEX
    + """
prune_terminal()
-- Each look also checks a slice of each index against the statuses, from a
-- cursor that goes round: an entry whose status is gone or elsewhere (a key
-- deleted by hand) is dropped, so that no ghost is counted for long.
local SLICE = 500
local out = {}
for i = 2, #ARGV do
  local state = ARGV[i]
  local index = STATE .. state
  local size = 0
  if SEQ_STATES[state] then
    size = reconcile_buckets(state, SLICE)
  else
    size = redis.call('ZCARD', index)
  end
  if size > 0 and not SEQ_STATES[state] then
    local from = tonumber(redis.call('HGET', RECONCILE, state) or '0') or 0
    if from >= size then from = 0 end
    local members = redis.call('ZRANGE', index, from, from + SLICE - 1)
    local keys = {}
    for j, m in ipairs(members) do
      if state == 'committed' then m = string.sub(m, 9) end
      keys[j] = STATUS .. m
    end
    local got = redis.call('MGET', unpack(keys))
    local ghosts = {}
    for j = 1, #members do
      local value = got[j]
      local json = value and string.match(value, '^[^\\n]*') or ''
      if string.match(json, '"state":"(%a+)"') ~= state then ghosts[#ghosts + 1] = members[j] end
    end
    if #ghosts > 0 then
      in_slices({'ZREM', index}, ghosts)
      size = size - #ghosts
    end
    redis.call('HSET', RECONCILE, state, from + #members - #ghosts)
  end
  out[#out + 1] = size
end
return out
"""
)

CACHE_EXTEND = (
    _PRELUDE
    + _STATUS_VALUES
    + _FIELD_INDEX
    + """
local ttl = tonumber(ARGV[2])
local n = 0
local models = {}
for i = 3, #ARGV do
  local txid = ARGV[i]
  local skey = STATUS .. txid
  local _, members = split_status(read(skey))
  local seen = {}
  for member in string.gmatch(members, '%S+') do
    if not seen[member] then
      seen[member] = true
      local k = BUFFERED .. member
      if extend(k, ttl) >= 0 then
        n = n + 1
        local sep = string.find(member, ':', 1, true)
        local model = string.sub(member, 1, sep - 1)
        models[model] = true
        extend_bucket(model, record_seq(read(k) or ''), ttl)
      end
      local idk = IDS .. member
      if creator(read(idk), read(k)) == txid then extend(idk, ttl) end
    end
  end
  -- Only a key that has a TTL (records without a status, or a finished
  -- status): an unfinished status keeps none.
  redis.call('PEXPIRE', skey, ttl, 'GT')
end
extend_buckets()
for model, _ in pairs(models) do
  extend(INDEX .. model, ttl)
  extend(FIELDS .. model, ttl)
end
return n
"""
)

CACHE_LIST = (
    _PRELUDE
    + MODEL_INDEX
    + """
-- An entry whose record is gone, or was written again under another number
-- (it expired unreleased), goes; so does a bucket left empty.
local model = ARGV[2]
local out = {}
for _, e in ipairs(index_entries(model)) do
  local id, seq = e[1], e[2]
  local k = BUFFERED .. model .. ':' .. id
  local value = redis.call('GET', k)
  if value and record_seq(value) == seq then
    out[#out + 1] = {id, redis.call('PTTL', k), value}
  else
    unindex(model, id, seq)
  end
end
for _, b in ipairs(redis.call('ZRANGE', INDEX .. model, 0, -1)) do
  if redis.call('EXISTS', bucket_key(model, b)) == 0 then redis.call('ZREM', INDEX .. model, b) end
end
return {NOW, out}
"""
)

LEASE_ACQUIRE = (
    _PRELUDE
    + """
local holder = redis.call('GET', LEASE)
if holder and holder ~= ARGV[2] then return 0 end
-- Delete, then set: a write that frees first lets a full Redis accept the SET.
redis.call('DEL', LEASE)
redis.call('SET', LEASE, ARGV[2], 'PX', ARGV[3])
return 1
"""
)

REFUSES_WRITES = (
    _PRELUDE
    + """
-- Whether Redis would refuse a write that grows memory now (a full Redis
-- under noeviction): INCRBY 0 is such a write, and changes nothing.
local got = redis.pcall('INCRBY', SEQ, 0)
if type(got) == 'table' then return got['err'] or 'refused' end
return ''
"""
)

STAMP_BUFFER = (
    _PRELUDE
    + """
-- Set the buffer's marker (ARGV[3] '1': even over another). Delete, then
-- set: a write that frees first lets a full Redis accept the SET.
if ARGV[3] ~= '1' and redis.call('EXISTS', EPOCH) == 1 then return 0 end
redis.call('DEL', EPOCH)
redis.call('SET', EPOCH, ARGV[2])
return 1
"""
)

PUBLISH_REPORT = (
    _PRELUDE
    + """
-- Delete, then set: a write that frees first lets a full Redis accept the SET.
redis.call('DEL', PROCESSOR)
redis.call('SET', PROCESSOR, ARGV[2], 'PX', ARGV[3])
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

CACHE_FIND = _PRELUDE + _FIELD_INDEX + CACHE_FIND_BODY

CACHE_LEARN = _PRELUDE + _FIELD_INDEX + CACHE_LEARN_BODY
