-- Fragment (APPLY): its lean path, for a call that only buffers transactions.
--
-- Nearly every call is a submit: each group pushes entries, gives their
-- transactions a status with a sequence number (buffered) and caches the
-- records they write. Such a call runs here: the checks and the writes of the
-- general path (apply.lua), in the same order, with the same results, but
-- without its staging of every operation in tables of tables, which cost
-- several times the Redis commands it issues.
-- Anything else returns nil before anything is written, and the general path
-- runs the call: another operation, a transaction with two statuses or with
-- records cached without its status, a status already stored (it leaves an
-- index), a check that finds a problem, a counter Redis refuses (full).
--
-- Numbers go to Redis as text made by decimal() (see numbers.lua), and TTLs
-- as the frame's own tokens: Lua's conversion of a number costs as much as a
-- command. A new table costs about as much (its allocation and each growth):
-- the common case, one transaction, makes as few as it can.

-- include: numbers

-- The groups as {first token, last token, first blob, pushes}, the states
-- the call writes, and the models whose records it caches; nil if the call is
-- not one of submits only. A transaction's records are cached after its
-- status, in its group (as RedisWriteBatch stages them); any other order
-- takes the general path.
local function submit_plan()
  local n = number(T[1])
  if not n then return nil end
  local plan, status_of, states, models = {nil}, {}, {}, {}
  local at, blob, allocates, needs = 2, 3, false, 0
  for g = 1, n do
    local tokens, blobs = number(T[at]), number(T[at + 1])
    if not (tokens and blobs) then return nil end
    local i, last, pushes = at + 2, at + 1 + tokens, 0
    while i <= last do
      local name = T[i]
      if name == 'push' then
        pushes = pushes + 1
        i = i + 1
      elseif name == 'status' then
        local txid, state = T[i + 1], T[i + 3]
        if status_of[txid] or not SEQ_STATES[state] or T[i + 5] ~= '' or not number(T[i + 4]) then
          return nil
        end
        status_of[txid] = g
        states[state] = true
        needs = needs + 1
        i = i + 7
      elseif name == 'cache' then
        -- The TTL goes to Redis as it came: plain digits only.
        local count = number(T[i + 3])
        if not (count and status_of[T[i + 1]] == g and string.find(T[i + 2], '^[1-9]%d*$')) then
          return nil
        end
        needs = needs + count
        for j = i + 4, i + 4 * count, 4 do
          if not FLAGS[T[j + 2]] then return nil end
          models[T[j]] = true
        end
        i = i + 4 + 4 * count
      else
        return nil
      end
    end
    if i ~= last + 1 or pushes ~= blobs then return nil end
    if pushes > 0 or next(models) ~= nil then allocates = true end
    plan[g] = {at + 2, last, blob, pushes}
    at, blob = last + 1, blob + blobs
  end
  if not allocates or at ~= #T + 1 or blob ~= #ARGV + 1 then return nil end
  return plan, status_of, states, models, needs
end

-- The last bucket listed in each state's list, by state (false: none), read
-- by the check of its type: a status in that bucket needs no listing.
local S_LISTED

-- The checks of the general path (check, check_states): whether all pass and
-- no transaction has a stored status.
local function submit_checks(plan, status_of, states, models)
  known_unindexed(models)
  -- LLEN, ZCARD and ZRANGE refuse a key of any other type than theirs, and
  -- take a missing one for an empty one, as the checks of TYPE do; they
  -- answer a number (ZRANGE: the last bucket listed), not a table.
  for g = 1, #plan do
    if plan[g][4] > 0 then
      if type(redis.pcall('LLEN', BUF)) == 'table' then return false end
      break
    end
  end
  for model, _ in pairs(models) do
    if type(redis.pcall('ZCARD', INDEX .. model)) == 'table' or fields_problem(model) then
      return false
    end
  end
  for state, _ in pairs(states) do
    local got = redis.pcall('ZRANGE', STATE .. state, -1, -1)
    if got['err'] then return false end
    states[state] = got[1] or false
  end
  S_LISTED = states
  local first = next(status_of)
  if first == nil then return true end
  if next(status_of, first) == nil then return not redis.call('MGET', STATUS .. first)[1] end
  local keys = {}
  for txid, _ in pairs(status_of) do keys[#keys + 1] = STATUS .. txid end
  for i = 1, #keys, 1000 do
    local got = redis.call('MGET', unpack(keys, i, math.min(i + 999, #keys)))
    for j = 1, #got do
      if got[j] then return false end
    end
  end
  return true
end

-- What the groups that ran stage, in flat lists (a group that fails is cut
-- off them): entries to push; statuses (id, JSON, state, sequence number,
-- index member); the records each transaction wrote; index entries (model,
-- sequence number, id, TTL, TTL's text).
local S_PUSH, S_STATUS, S_WRITTEN, S_INDEX

-- Note that a transaction wrote a record, once, in the order first written:
-- a few are compared one by one (strings compare as references; a table
-- keyed by them costs more), more than 16 through a table of those seen.
local function note_written(written, member)
  local n = #written
  if n <= 16 then
    for w = 1, n do
      if written[w] == member then return end
    end
    written[n + 1] = member
    return
  end
  local seen = written.seen
  if not seen then
    seen = {}
    for w = 1, n do seen[written[w]] = true end
    written.seen = seen
  end
  if not seen[member] then
    seen[member] = true
    written[n + 1] = member
  end
end

-- Run one group (see run_group and write_cache); returns its count of entries.
local function submit_group(first, last, b)
  local i = first
  while i <= last do
    local name = T[i]
    if name == 'push' then
      S_PUSH[#S_PUSH + 1] = ARGV[b]
      b = b + 1
      i = i + 1
    elseif name == 'status' then
      local n = #S_STATUS
      S_STATUS[n + 1], S_STATUS[n + 2], S_STATUS[n + 3] = T[i + 1], T[i + 2], T[i + 3]
      S_STATUS[n + 4], S_STATUS[n + 5] = next_seq(), T[i + 6]
      i = i + 7
    elseif name == 'cache' then
      local txid, ttl_text, count = T[i + 1], T[i + 2], number(T[i + 3])
      local ttl = number(ttl_text)
      local written = S_WRITTEN[txid]
      if not written then
        written = {nil, nil}
        S_WRITTEN[txid] = written
      end
      for j = i + 4, i + 4 * count, 4 do
        local model, id, kind, body = T[j], T[j + 1], T[j + 2], T[j + 3]
        local flags = FLAGS[kind]
        local member = model .. ':' .. id
        local k = BUFFERED .. member
        local seq = next_seq()
        -- join_record's text, made in one concatenation.
        local text
        if body == '' then
          text = '@' .. flags[1] .. flags[2] .. decimal(seq) .. ':' .. txid
        else
          text = '@' .. flags[1] .. flags[2] .. decimal(seq) .. ':' .. txid .. '\n' .. body
        end
        if redis.call('SET', k, text, 'NX', 'PX', ttl_text) then
          -- (The checks read every model's registrations: most have none.)
          if REGISTERED[model] ~= NONE_REGISTERED then reindex_fields(model, id, '', body) end
        else
          local before, after
          before, after, seq = merge_record(k, txid, ttl, kind, body, seq)
          reindex_fields(model, id, before, after)
        end
        local n = #S_INDEX
        S_INDEX[n + 1], S_INDEX[n + 2], S_INDEX[n + 3] = model, seq, id
        S_INDEX[n + 4], S_INDEX[n + 5] = ttl, ttl_text
        note_written(written, member)
      end
      i = i + 4 + 4 * count
    end
  end
end

local function cut(list, n)
  for j = #list, n + 1, -1 do list[j] = nil end
end

-- The state index entries of the new statuses (see state_add): one ZADD
-- per bucket, and one that lists it in its state's list.
local function submit_states()
  if #S_STATUS == 5 then
    local state, seq = S_STATUS[3], S_STATUS[4]
    local place = seq % BUCKET
    local b = decimal((seq - place) / BUCKET)
    redis.pcall('ZADD', state_bucket(state, b), decimal(place), S_STATUS[5])
    if S_LISTED[state] ~= b then redis.call('ZADD', STATE .. state, 'NX', b, b) end
    return
  end
  local buckets = {}
  for j = 1, #S_STATUS, 5 do
    local state, seq = S_STATUS[j + 2], S_STATUS[j + 3]
    local place = seq % BUCKET
    local b = decimal((seq - place) / BUCKET)
    local key = state_bucket(state, b)
    local entries = buckets[key]
    if not entries then
      entries = {state = state, b = b}
      buckets[key] = entries
    end
    entries[#entries + 1] = decimal(place)
    entries[#entries + 1] = S_STATUS[j + 4]
  end
  for key, e in pairs(buckets) do
    redis.pcall('ZADD', key, unpack(e))
    if S_LISTED[e.state] ~= e.b then redis.call('ZADD', STATE .. e.state, 'NX', e.b, e.b) end
  end
end

-- The model index entries of the records written (see flush_indexes,
-- extend_buckets, extend_indexes), with fewer commands: a bucket whose expiry
-- PEXPIRE GT moved exists, so it is listed; one whose expiry did not move
-- either lasts as long already (same millisecond) or is new, and PEXPIRE NX,
-- after the ZADD that makes it, tells which: only a new bucket gets its
-- expiry there, and is listed.
local function submit_indexes()
  -- The entries by bucket key; each model's first bucket also holds the
  -- model's longest TTL and whether any of its buckets lasts longer now.
  local buckets, first = {}, {}
  for j = 1, #S_INDEX, 5 do
    local model, seq, id, ttl, text = S_INDEX[j], S_INDEX[j + 1], S_INDEX[j + 2], S_INDEX[j + 3],
      S_INDEX[j + 4]
    local place = seq % BUCKET
    local b = decimal((seq - place) / BUCKET)
    local key = bucket_key(model, b)
    local e = buckets[key]
    if not e then
      e = {decimal(place), id, model = model, b = b, ttl = ttl, text = text,
        model_ttl = ttl, model_text = text, longer = false}
      buckets[key] = e
    else
      if e.ttl < ttl then e.ttl, e.text = ttl, text end
      e[#e + 1] = decimal(place)
      e[#e + 1] = id
    end
    local m = first[model]
    if not m then
      first[model] = e
    elseif m.model_ttl < ttl then
      m.model_ttl, m.model_text = ttl, text
    end
  end
  for key, e in pairs(buckets) do
    local moved = redis.call('PEXPIRE', key, e.text, 'GT') == 1
    redis.pcall('ZADD', key, 'NX', unpack(e))
    if moved then
      first[e.model].longer = true
    elseif redis.call('PEXPIRE', key, e.text, 'NX') == 1 then
      first[e.model].longer = true
      redis.call('ZADD', INDEX .. e.model, 'NX', e.b, e.b)
    end
  end
  flush_fields()
  -- A model whose buckets all last as long already needs no extension: its
  -- index and field index outlive them (each call that extends a bucket
  -- extends them too, as far as its longest TTL for the model).
  for model, m in pairs(first) do
    if m.longer then extend_indexes(model, m.model_text) end
  end
end

-- The call, if it is one of submits only (see above); nil otherwise, with
-- nothing written.
local function apply_submits()
  local plan, status_of, states, models, needs = submit_plan()
  if not plan or not submit_checks(plan, status_of, states, models) then return nil end
  SEQ_BUDGET = math.max(needs, 1)
  local got = redis.pcall('INCRBY', SEQ, decimal(SEQ_BUDGET))
  if type(got) == 'table' then return nil end
  SEQ_NEXT, SEQ_LEFT = got - SEQ_BUDGET, SEQ_BUDGET
  -- Room for one transaction of two records, made at once rather than grown.
  S_PUSH, S_STATUS, S_WRITTEN = {nil}, {nil, nil, nil, nil, nil}, {}
  S_INDEX = {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
  local results = {nil}
  for g = 1, #plan do
    local p = plan[g]
    local pushes, statuses, index = #S_PUSH, #S_STATUS, #S_INDEX
    local ok, err = pcall(submit_group, p[1], p[2], p[3])
    if ok then
      results[g] = p[4]
    else
      cut(S_PUSH, pushes)
      cut(S_STATUS, statuses)
      cut(S_INDEX, index)
      if type(err) == 'table' then err = err.err or 'an error' end
      results[g] = 'failed: ' .. tostring(err)
    end
  end
  -- The writes of flush_pushes, flush_statuses (a new status, never stored
  -- before: no index to leave), flush_indexes and after, in their order.
  if #S_PUSH <= 1000 then
    if #S_PUSH > 0 then redis.call('LPUSH', BUF, unpack(S_PUSH)) end
  else
    in_slices({'LPUSH', BUF}, S_PUSH)
  end
  if #S_STATUS == 5 then
    local txid = S_STATUS[1]
    local written = S_WRITTEN[txid]
    if written and #written > 0 then
      redis.call('MSET', STATUS .. txid,
        decimal(S_STATUS[4]) .. S_STATUS[2] .. '\n' .. table.concat(written, ' '))
    else
      redis.call('MSET', STATUS .. txid, decimal(S_STATUS[4]) .. S_STATUS[2])
    end
    submit_states()
    submit_indexes()
    return results
  end
  local plain = {}
  for j = 1, #S_STATUS, 5 do
    local txid, seq = S_STATUS[j], S_STATUS[j + 3]
    local value = decimal(seq) .. S_STATUS[j + 1]
    local written = S_WRITTEN[txid]
    if written and #written > 0 then value = value .. '\n' .. table.concat(written, ' ') end
    plain[#plain + 1] = STATUS .. txid
    plain[#plain + 1] = value
  end
  in_slices({'MSET'}, plain)
  submit_states()
  submit_indexes()
  return results
end
