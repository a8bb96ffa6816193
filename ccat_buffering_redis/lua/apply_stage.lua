-- Fragment (APPLY): the call's tokens, and what its groups stage: entries to
-- push, statuses, records written, index entries; each written once, at the
-- end of the call.

-- The call's tokens (see the frame in apply.lua), read by the operations.
local T = {} -- kept across calls

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

-- Made by begin_stage, only for a call that takes the general path: the lean
-- path (apply_submit.lua) needs none of them.
local PUSHES
local STATUS_NEW, STATUS_ORDER
-- Stored values of status keys, read before anything was written (nothing
-- writes a status key before flush_statuses, so they still hold there).
local STORED
-- Records each transaction wrote in this call, and those whose stored list
-- was released (dropped when its status key is written).
local WRITTEN_ADD, CLEARED
local INDEX_TTL
local function begin_stage()
  PUSHES, STATUS_NEW, STATUS_ORDER, STORED, WRITTEN_ADD, CLEARED, INDEX_TTL =
    {}, {}, {}, {}, {}, {}, {}
end

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

local function add_index(model, seq, id, ttl)
  if not INDEX_ADD then INDEX_ADD = {} end
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
  for _, e in ipairs(stage.index) do add_index(e[1], e[2], e[3], e[4]) end
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
        score, member = now() + ttl, txid
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
    state_remove_all(state, list)
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
    if TERMINAL[state] then
      -- The index of a terminal state lives as long as its longest-lived
      -- status: once they have all expired it goes too, with no call to prune it.
      local last = 0
      for j = 1, #pairs_, 2 do last = math.max(last, pairs_[j]) end
      extend(STATE .. state, last - now())
    end
  end
end
