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
-- command. A new table costs about as much (its allocation, each growth, and
-- the collector's work after it): the lists of the plan and of what the groups
-- stage are kept across calls by a library, a call's few transactions,
-- models and buckets are found by comparing rather than through tables
-- keyed by them, and a reply is a number or nil where a command can answer so.

-- include: numbers

-- The groups, four numbers each in PLAN (first token, last token, first
-- blob, pushes); the transactions whose status the call writes, with their
-- group (TX_ID, TX_G); the states it writes (ST_NAME), with the last bucket
-- listed in each (ST_LAST; false: none): a status in that bucket needs no
-- listing; and the models whose records it caches (MODEL). A library keeps
-- these lists across calls, each call overwriting them as far as its counts
-- go: new tables, each grown key by key, cost more than the call's Lua
-- besides. A call's few transactions and models are found by comparing
-- (strings compare as references); past FEW, through a table made for it.
local PLAN, TX_ID, TX_G, ST_NAME, ST_LAST, MODEL = {}, {}, {}, {}, {}, {} -- kept across calls
local FEW = 8

-- The TTL tokens found to be plain digits (as tokens are read by number()).
local TTL_TEXTS = {ok = {}, count = 0} -- kept across calls

local function plain_ttl(text)
  local ok = TTL_TEXTS.ok
  if ok[text] then return true end
  if not string.find(text, '^[1-9]%d*$') then return false end
  if TTL_TEXTS.count < 64 then
    ok[text] = true
    TTL_TEXTS.count = TTL_TEXTS.count + 1
  end
  return true
end

-- The numbers of groups, of sequence numbers the call needs, of
-- transactions, states and models (see PLAN); nil if the call is not one of
-- submits only. A transaction's records are cached after its status, in its
-- group (as RedisWriteBatch stages them); any other order takes the general
-- path.
local function submit_plan()
  local n = number(T[1])
  if not n then return nil end
  local plan, tx_id, tx_g, st_name, model_list = PLAN, TX_ID, TX_G, ST_NAME, MODEL
  local nt, nst, nm, tx_map, model_map = 0, 0, 0, nil, nil
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
        if not SEQ_STATES[state] or T[i + 5] ~= '' or not number(T[i + 4]) then return nil end
        -- A transaction's second status takes the general path.
        if tx_map then
          if tx_map[txid] then return nil end
          tx_map[txid] = g
        else
          for k = 1, nt do
            if tx_id[k] == txid then return nil end
          end
        end
        nt = nt + 1
        tx_id[nt], tx_g[nt] = txid, g
        if nt == FEW + 1 then
          tx_map = {}
          for k = 1, nt do tx_map[tx_id[k]] = tx_g[k] end
        end
        local k = 1
        while k <= nst and st_name[k] ~= state do k = k + 1 end
        if k > nst then
          nst = k
          st_name[k] = state
        end
        needs = needs + 1
        i = i + 7
      elseif name == 'cache' then
        -- The TTL goes to Redis as it came: plain digits only.
        local txid, count = T[i + 1], number(T[i + 3])
        if not (count and plain_ttl(T[i + 2])) then return nil end
        local group
        if tx_map then
          group = tx_map[txid]
        else
          for k = nt, 1, -1 do
            if tx_id[k] == txid then
              group = tx_g[k]
              break
            end
          end
        end
        if group ~= g then return nil end
        needs = needs + count
        for j = i + 4, i + 4 * count, 4 do
          if not FLAGS[T[j + 2]] then return nil end
          local model = T[j]
          if model_map then
            if not model_map[model] then
              nm = nm + 1
              model_list[nm], model_map[model] = model, true
            end
          else
            local k = 1
            while k <= nm and model_list[k] ~= model do k = k + 1 end
            if k > nm then
              nm = k
              model_list[k] = model
              if nm == FEW + 1 then
                model_map = {}
                for q = 1, nm do model_map[model_list[q]] = true end
              end
            end
          end
        end
        i = i + 4 + 4 * count
      else
        return nil
      end
    end
    if i ~= last + 1 or pushes ~= blobs then return nil end
    if pushes > 0 or nm > 0 then allocates = true end
    local p = 4 * g
    plan[p - 3], plan[p - 2], plan[p - 1], plan[p] = at + 2, last, blob, pushes
    at, blob = last + 1, blob + blobs
  end
  if not allocates or at ~= #T + 1 or blob ~= #ARGV + 1 then return nil end
  return n, needs, nt, nst, nm
end

-- The checks of the general path (check, check_states): whether all pass and
-- no transaction has a stored status (a key of any type there takes the
-- general path, which reads it).
local function submit_checks(n, nt, nst, nm)
  -- One EXISTS for the field indexes of the call's models (known_unindexed;
  -- the lean path runs first: no model is registered yet).
  if nm > 0 and nm <= 1000 then
    local got
    if nm == 1 then
      got = redis.call('EXISTS', FIELDS .. MODEL[1])
    elseif nm == 2 then
      got = redis.call('EXISTS', FIELDS .. MODEL[1], FIELDS .. MODEL[2])
    else
      local keys = {}
      for k = 1, nm do keys[k] = FIELDS .. MODEL[k] end
      got = redis.call('EXISTS', unpack(keys))
    end
    if got == 0 then
      for k = 1, nm do REGISTERED[MODEL[k]] = NONE_REGISTERED end
    end
  end
  -- LLEN, ZCARD and ZRANGE refuse a key of any other type than theirs, and
  -- take a missing one for an empty one, as the checks of TYPE do; they
  -- answer a number (ZRANGE: the last bucket listed), not a table.
  for g = 4, 4 * n, 4 do
    if PLAN[g] > 0 then
      if type(redis.pcall('LLEN', BUF)) == 'table' then return false end
      break
    end
  end
  for k = 1, nm do
    local model = MODEL[k]
    if type(redis.pcall('ZCARD', INDEX .. model)) == 'table' then return false end
    -- (fields_problem: the models without a field index, the most, have no problem.)
    if REGISTERED[model] ~= NONE_REGISTERED and fields_problem(model) then return false end
  end
  for k = 1, nst do
    local got = redis.pcall('ZRANGE', STATE .. ST_NAME[k], -1, -1)
    if got['err'] then return false end
    ST_LAST[k] = got[1] or false
  end
  if nt == 1 then return redis.call('EXISTS', STATUS .. TX_ID[1]) == 0 end
  for i = 1, nt, 1000 do
    local keys = {}
    for k = i, math.min(i + 999, nt) do keys[k - i + 1] = STATUS .. TX_ID[k] end
    if redis.call('EXISTS', unpack(keys)) > 0 then return false end
  end
  return true
end

-- What the groups that ran stage, in flat lists that a library keeps across
-- calls, each as long as its count says (a group that fails is cut off them):
-- entries to push; statuses (id, JSON, state, sequence number, index
-- member); index entries (model, sequence number, id, TTL, TTL's text); and
-- the records each transaction wrote (by id).
local S_PUSH, S_STATUS, S_INDEX = {}, {}, {} -- kept across calls
local NP, NS, NI = 0, 0, 0
local S_WRITTEN

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

-- Run one group (see run_group and write_cache).
local function submit_group(first, last, b)
  local i = first
  while i <= last do
    local name = T[i]
    if name == 'push' then
      NP = NP + 1
      S_PUSH[NP] = ARGV[b]
      b = b + 1
      i = i + 1
    elseif name == 'status' then
      local n = NS
      S_STATUS[n + 1], S_STATUS[n + 2], S_STATUS[n + 3] = T[i + 1], T[i + 2], T[i + 3]
      S_STATUS[n + 4], S_STATUS[n + 5] = next_seq(), T[i + 6]
      NS = n + 5
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
        -- next_seq(), in line: the budget covers every number the call takes.
        local seq
        if SEQ_LEFT > 0 then
          seq = SEQ_NEXT + 1
          SEQ_NEXT, SEQ_LEFT = seq, SEQ_LEFT - 1
        else
          seq = next_seq()
        end
        -- join_record's text, made in one concatenation.
        local text
        if body == '' then
          text = '@' .. flags[1] .. flags[2] .. decimal(seq) .. ':' .. txid
        else
          text = '@' .. flags[1] .. flags[2] .. decimal(seq) .. ':' .. txid .. '\n' .. body
        end
        -- SET ... NX GET answers nil when it wrote (no table for an 'OK'), the
        -- value when the record exists, WRONGTYPE when it exists as another
        -- type (merge_record replaces it, as after a plain SET ... NX).
        local had = redis.pcall('SET', k, text, 'NX', 'PX', ttl_text, 'GET')
        if not had then
          -- (The checks read every model's registrations: most have none.)
          if REGISTERED[model] ~= NONE_REGISTERED then reindex_fields(model, id, '', body) end
        else
          if type(had) == 'table' and not string.find(had.err or '', 'WRONGTYPE', 1, true) then
            error(had)
          end
          local before, after
          before, after, seq = merge_record(k, txid, ttl, kind, body, seq)
          reindex_fields(model, id, before, after)
        end
        local n = NI
        S_INDEX[n + 1], S_INDEX[n + 2], S_INDEX[n + 3] = model, seq, id
        S_INDEX[n + 4], S_INDEX[n + 5] = ttl, ttl_text
        NI = n + 5
        note_written(written, member)
      end
      i = i + 4 + 4 * count
    end
  end
end

-- The state index entries of the new statuses (see state_add): one ZADD
-- per bucket, and one that lists it in its state's list.
local function submit_states()
  if NS == 5 then
    local state, seq = S_STATUS[3], S_STATUS[4]
    local place = seq % BUCKET
    local b = decimal((seq - place) / BUCKET)
    redis.pcall('ZADD', STATE .. state .. ':' .. b, decimal(place), S_STATUS[5])
    local k = 1
    while ST_NAME[k] ~= state do k = k + 1 end
    if ST_LAST[k] ~= b then redis.call('ZADD', STATE .. state, 'NX', b, b) end
    return
  end
  local buckets = {}
  for j = 1, NS, 5 do
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
    local k = 1
    while ST_NAME[k] ~= e.state do k = k + 1 end
    if ST_LAST[k] ~= e.b then redis.call('ZADD', STATE .. e.state, 'NX', e.b, e.b) end
  end
end

-- The model index entries by bucket, in a flat list that a library keeps
-- across calls, IX_STRIDE slots a bucket in the order first met: its key,
-- model, number (text), longest TTL and its text, its first entry (place,
-- id) and its further entries (a list, or false); in a model's first bucket
-- also the model's longest TTL and its text and whether any of its buckets
-- lasts longer now (false in the slots of its other buckets). A call's few
-- buckets are found by comparing keys (strings compare as references),
-- which costs less than a table keyed by them.
local IX = {} -- kept across calls
local IX_STRIDE = 11

-- The model index entries of the records written (see flush_indexes,
-- extend_buckets, extend_indexes), with fewer commands: a bucket whose expiry
-- PEXPIRE GT moved exists, so it is listed; one whose expiry did not move
-- either lasts as long already (same millisecond) or is new, and PEXPIRE NX,
-- after the ZADD that makes it, tells which: only a new bucket gets its
-- expiry there, and is listed.
local function submit_indexes()
  local ix, last = IX, -IX_STRIDE
  for j = 1, NI, 5 do
    local model, seq, id, ttl, text = S_INDEX[j], S_INDEX[j + 1], S_INDEX[j + 2], S_INDEX[j + 3],
      S_INDEX[j + 4]
    local place = seq % BUCKET
    local b = decimal((seq - place) / BUCKET)
    local key = INDEX .. model .. ':' .. b
    local o, f = nil, nil
    for q = 0, last, IX_STRIDE do
      if ix[q + 1] == key then
        o = q
        break
      end
      if not f and ix[q + 2] == model then f = q end
    end
    if o then
      if ix[o + 4] < ttl then ix[o + 4], ix[o + 5] = ttl, text end
      local more = ix[o + 8]
      if not more then
        more = {}
        ix[o + 8] = more
      end
      more[#more + 1] = decimal(place)
      more[#more + 1] = id
      if not f then f = o end
      while ix[f + 2] ~= model do f = f + IX_STRIDE end
    else
      last = last + IX_STRIDE
      o = last
      ix[o + 1], ix[o + 2], ix[o + 3], ix[o + 4], ix[o + 5] = key, model, b, ttl, text
      ix[o + 6], ix[o + 7], ix[o + 8] = decimal(place), id, false
      if f then
        ix[o + 9] = false
      else
        f = o
        ix[o + 9], ix[o + 10], ix[o + 11] = ttl, text, false
      end
    end
    if ix[f + 9] < ttl then ix[f + 9], ix[f + 10] = ttl, text end
  end
  for o = 0, last, IX_STRIDE do
    local key, text, more = ix[o + 1], ix[o + 5], ix[o + 8]
    local moved = redis.call('PEXPIRE', key, text, 'GT') == 1
    if more then
      redis.pcall('ZADD', key, 'NX', ix[o + 6], ix[o + 7], unpack(more))
    else
      redis.pcall('ZADD', key, 'NX', ix[o + 6], ix[o + 7])
    end
    local listed = moved
    if not moved and redis.call('PEXPIRE', key, text, 'NX') == 1 then
      listed = true
      redis.call('ZADD', INDEX .. ix[o + 2], 'NX', ix[o + 3], ix[o + 3])
    end
    if listed then
      local f = 0
      while ix[f + 2] ~= ix[o + 2] do f = f + IX_STRIDE end
      ix[f + 11] = true
    end
  end
  flush_fields()
  -- A model whose buckets all last as long already needs no extension: its
  -- index and field index outlive them (each call that extends a bucket
  -- extends them too, as far as its longest TTL for the model).
  -- (extend_indexes, its calls in line: a model without field registrations,
  -- the most, has no field index to extend.)
  for f = 0, last, IX_STRIDE do
    if ix[f + 11] and ix[f + 9] then
      local model, text = ix[f + 2], ix[f + 10]
      if redis.call('PEXPIRE', INDEX .. model, text, 'GT') ~= 1 then
        extend_unmoved(INDEX .. model, text)
      end
      if REGISTERED[model] ~= NONE_REGISTERED and next(registered(model)) ~= nil then
        extend(FIELDS .. model, text)
      end
    end
  end
end

-- The call, if it is one of submits only (see above); nil otherwise, with
-- nothing written.
local function submit_call()
  local n, needs, nt, nst, nm = submit_plan()
  if not n or not submit_checks(n, nt, nst, nm) then return nil end
  SEQ_BUDGET = math.max(needs, 1)
  local got = redis.pcall('INCRBY', SEQ, decimal(SEQ_BUDGET))
  if type(got) == 'table' then return nil end
  SEQ_NEXT, SEQ_LEFT = got - SEQ_BUDGET, SEQ_BUDGET
  NP, NS, NI, S_WRITTEN = 0, 0, 0, {}
  local results = {nil}
  for g = 1, n do
    local p = 4 * g
    local pushes, statuses, index = NP, NS, NI
    local ok, err = pcall(submit_group, PLAN[p - 3], PLAN[p - 2], PLAN[p - 1])
    if ok then
      results[g] = PLAN[p]
    else
      NP, NS, NI = pushes, statuses, index
      if type(err) == 'table' then err = err.err or 'an error' end
      results[g] = 'failed: ' .. tostring(err)
    end
  end
  -- The writes of flush_pushes, flush_statuses (a new status, never stored
  -- before: no index to leave), flush_indexes and after, in their order.
  if NP == 1 then
    redis.call('LPUSH', BUF, S_PUSH[1])
  elseif NP > 0 and NP <= 1000 then
    redis.call('LPUSH', BUF, unpack(S_PUSH, 1, NP))
  elseif NP > 0 then
    local pushes = {}
    for j = 1, NP do pushes[j] = S_PUSH[j] end
    in_slices({'LPUSH', BUF}, pushes)
  end
  if NS == 5 then
    local txid = S_STATUS[1]
    local written = S_WRITTEN[txid]
    -- (SET ... GET: the key is new, checked so; nil answers, not a table.)
    if written and #written > 0 then
      redis.call('SET', STATUS .. txid,
        decimal(S_STATUS[4]) .. S_STATUS[2] .. '\n' .. table.concat(written, ' '), 'GET')
    else
      redis.call('SET', STATUS .. txid, decimal(S_STATUS[4]) .. S_STATUS[2], 'GET')
    end
    submit_states()
    submit_indexes()
    return results
  end
  local plain = {}
  for j = 1, NS, 5 do
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

-- The lean path (see submit_call). The lists kept across calls hold the
-- strings of the calls that used them, up to where each went: past FEW
-- entries, they are made anew, so that one large call does not keep its
-- strings alive after it.
local function apply_submits()
  local results = submit_call()
  if TX_ID[FEW + 1] or MODEL[FEW + 1] or S_PUSH[FEW + 1] or S_STATUS[5 * FEW + 1]
      or S_INDEX[5 * FEW + 1] or IX[IX_STRIDE * FEW + 1] then
    TX_ID, TX_G, MODEL, S_PUSH, S_STATUS, S_INDEX, IX = {}, {}, {}, {}, {}, {}, {}
  end
  return results
end
