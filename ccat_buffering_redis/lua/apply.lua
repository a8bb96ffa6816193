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
-- include: apply_stage
-- include: apply_writes

-- The frame (ARGV[2]): tokens, each ended by the unit separator (byte 31).
-- Text from outside the library (entries, receipts, reasons, letter ids)
-- never enters it: it travels as ARGV of its own ("blobs"), taken in order.
-- Each group starts with its token and blob counts, then its operations:
--   push                        blob: entry
--   ack                         blob: receipt
--   acks <n>                    blobs: n receipts (as n ack operations)
--   retry <delay ms> <n>        blobs: n receipts
--   dead                        blobs: receipt, reason, transaction id
--   replay                      blob: letter id
--   status <tx> <json> <state> <ttl ms> <score> <member>
--   statuses <state> <ttl ms> <score> <before> <json> <n> (<tx> <times>) x n
--     n statuses sharing all but their id and times: each is staged as
--     status <tx> <json>@<times> <state> <ttl ms> <score> <before><tx>
--   cache <tx> <ttl ms> <n> (<model> <id> <kind> <fields>) x n
--   release <n> <tx> x n
--   replicated <ttl ms> <now us> <n> <tx> x n
--     the routine committed statuses of n transactions made replicated at
--     <now us>, then their caches released (see replicate_all)

-- Tokens after the name and blobs of one operation, or nil if it is unknown
-- or malformed.
local FIXED = {push = {0, 1}, ack = {0, 1}, dead = {0, 3}, replay = {0, 1}}
local function shape(at)
  local name = T[at]
  local fixed = FIXED[name]
  if fixed then return fixed[1], fixed[2] end
  if name == 'status' then
    if tonumber(T[at + 4]) then return 6, 0 end
  elseif name == 'statuses' then
    -- n within the frame: a malformed count must not run the loops over it.
    local n = tonumber(T[at + 6])
    if n and n >= 0 and n == math.floor(n) and at + 6 + 2 * n <= #T and tonumber(T[at + 2]) then
      return 6 + 2 * n, 0
    end
  elseif name == 'acks' then
    local n = tonumber(T[at + 1])
    if n and n >= 0 and n == math.floor(n) then return 1, n end
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
  elseif name == 'replicated' then
    local n = tonumber(T[at + 3])
    if n and n >= 0 and n == math.floor(n) and tonumber(T[at + 1]) and tonumber(T[at + 2]) then
      return 3 + n, 0
    end
  end
  return nil
end

-- The structures each operation writes, and their types: a key of another
-- type (written by hand) would fail a command halfway through a group.
-- (Made by the general path, apply(): the lean path checks otherwise.)
local TYPES
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
  acks = {{INF, 'hash'}, {LEASES, 'zset'}},
  retry = {{INF, 'hash'}, {LEASES, 'zset'}, {BUF, 'list'}},
  dead = {{INF, 'hash'}, {LEASES, 'zset'}, {LETTERS, 'hash'}, {META, 'hash'}, {ORDER, 'zset'}},
  replay = {{LETTERS, 'hash'}, {META, 'hash'}, {ORDER, 'zset'}, {BUF, 'list'}},
}

local function index_problem(model)
  return wrong_type(INDEX .. model, 'zset') or fields_problem(model)
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
    elseif name == 'statuses' then
      local state = T[at + 1]
      for j = at + 7, at + 6 + 2 * tonumber(T[at + 6]), 2 do
        statuses[#statuses + 1] = {T[j], state}
      end
      needs = needs + tonumber(T[at + 6])
    elseif name == 'cache' then
      allocates = true
      needs = needs + tonumber(T[at + 3])
      for i = 0, tonumber(T[at + 3]) - 1 do
        problem = problem or index_problem(T[at + 4 + 4 * i])
      end
    elseif name == 'release' or name == 'replicated' then
      -- The statuses, one MGET per 1,000: the release reads them from STORED
      -- (and so does the move to replicated).
      local r = at
      if name == 'replicated' then
        r = at + 2
        for j = at + 4, at + 3 + tonumber(T[at + 3]) do
          statuses[#statuses + 1] = {T[j], 'replicated'}
        end
        needs = needs + tonumber(T[at + 3])
      end
      local n, keys = tonumber(T[r + 1]), {}
      for j = 2, n + 1 do keys[j - 1] = STATUS .. T[r + j] end
      for i = 1, #keys, 1000 do
        local got = redis.call('MGET', unpack(keys, i, math.min(i + 999, #keys)))
        for j = 1, #got do STORED[T[r + i + j]] = got[j] end
      end
      local models = {}
      for j = 2, n + 1 do
        local _, stored = split_status(STORED[T[r + j]] or nil)
        for m in string.gmatch(stored, '%S+') do
          local model = string.sub(m, 1, string.find(m, ':', 1, true) - 1)
          if not models[model] then
            models[model] = true
            problem = problem or index_problem(model)
          end
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
        -- A status a release of the call read already (see check) is not read again.
        if STORED[s[1]] == nil then
          ids[#ids + 1] = s[1]
          keys[#keys + 1] = STATUS .. s[1]
        end
      end
    end
  end
  for i = 1, #keys, 1000 do
    local got = redis.call('MGET', unpack(keys, i, math.min(i + 999, #keys)))
    for j = 1, #got do STORED[ids[i + j - 1]] = got[j] end
  end
  for _, group in ipairs(groups) do
    if not group[4] then
      for _, s in ipairs(group[6]) do
        local problem = wrong_type(STATE .. s[2], 'zset')
        -- The state it leaves, matched in its first line without a copy of it.
        local value = STORED[s[1]]
        local was = value and string.match(value, '^[^\n]-"state":"(%a+)"')
        if not problem and was then problem = wrong_type(STATE .. was, 'zset') end
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
    elseif name == 'acks' then
      -- What one ack each does (HDEL and ZREM of one receipt), in slices.
      local n = tonumber(T[i + 1])
      for k = b, b + n - 1, 1000 do
        local receipts = {}
        for j = k, math.min(k + 999, b + n - 1) do receipts[#receipts + 1] = ARGV[j] end
        count = count + redis.call('HDEL', INF, unpack(receipts))
        redis.call('ZREM', LEASES, unpack(receipts))
      end
      b = b + n
      i = i + 2
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
    elseif name == 'statuses' then
      local state, ttl, score, before, json = T[i + 1], T[i + 2], T[i + 3], T[i + 4], T[i + 5]
      local after = i + 7 + 2 * tonumber(T[i + 6])
      for j = i + 7, after - 2, 2 do
        put_status(T[j], json .. '@' .. T[j + 1], state, ttl, score, before .. T[j])
      end
      i = after
    elseif name == 'cache' then
      local n = tonumber(T[i + 3])
      write_cache(T[i + 1], tonumber(T[i + 2]), i + 4, n)
      i = i + 4 + 4 * n
    elseif name == 'release' then
      local n = tonumber(T[i + 1])
      local txids = {}
      for j = 2, n + 1 do txids[j - 1] = T[i + j] end
      count = count + release_all(txids)
      i = i + 2 + n
    elseif name == 'replicated' then
      local n = tonumber(T[i + 3])
      local txids = {}
      for j = 4, n + 3 do txids[j - 3] = T[i + j] end
      count = count + replicate_all(T[i + 1], tonumber(T[i + 2]), txids)
      i = i + 4 + n
    end
  end
  return count
end

-- include: apply_submit

-- One call: split the frame, check every group, then run those that passed.
local function apply()
  -- A plain find per token: a pattern ('[^\31]*') costs a step per byte of
  -- the frame, and most of its bytes are the records' fields. A library
  -- keeps T from call to call (filling a new table costs its growth, step by
  -- step): the tokens of the last call past this one's are cleared.
  do
    local frame, n, from, find, sub = ARGV[2], 0, 1, string.find, string.sub
    local to = find(frame, '\31', from, true)
    while to do
      n = n + 1
      T[n] = sub(frame, from, to - 1)
      from = to + 1
      to = find(frame, '\31', from, true)
    end
    n = n + 1
    while T[n] ~= nil do
      T[n] = nil
      n = n + 1
    end
  end

  local lean = apply_submits()
  if lean then return lean end
  begin_stage()
  TYPES = {}

  -- The models the call's cache writes name (a token that only looks like one
  -- adds a key to an EXISTS, no more): their field indexes are looked up at once.
  do
    local models = {}
    for i = 1, #T do
      if T[i] == 'cache' then
        local n = math.min(tonumber(T[i + 3]) or 0, math.floor((#T - i) / 4))
        for j = 0, n - 1 do models[T[i + 4 + 4 * j]] = true end
      end
    end
    known_unindexed(models)
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
    -- spread the model index over more buckets (see model_index.lua).
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
end

-- call: apply
