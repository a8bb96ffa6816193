-- APPLY: run atomic groups of commands, each whole or not at all.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the frame: the groups' commands as tokens ended by byte 31 (its
--   grammar is below, at 'The frame'; built by ccat_buffering_redis._frame.frame).
-- ARGV[3...]: the blobs: text from outside the library (entries, receipts,
--   reasons, letter ids), in the order the commands take them.
-- Returns: one item per group: the number of entries it touched, or a text
--   'error: <why>' (refused whole, nothing written), 'full: <why>' (Redis is
--   out of memory, nothing written) or 'failed: <why>' (may be partly written).

-- include: prelude
-- include: return_to_head
-- include: replay_one
-- include: records
-- include: status_values
-- include: field_index
-- include: state_index

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
  extend_indexes(model, ttl)
end
return results
