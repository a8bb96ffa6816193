-- Fragment (APPLY): the writes of its commands: cache writes, releases, dead
-- letters.

-- include: apply_stage

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
  txs = with_tx(txs, txid)
  if kind == 'create' then
    -- The creator is this transaction: implicit if it is the record's first,
    -- else named in the ID cache.
    deleted, fields = '0', ''
    local idk = IDS .. string.sub(k, #BUFFERED + 1)
    if string.match(txs, '^[^,]*') == txid then
      created = '2'
      redis.call('DEL', idk)
    else
      created = '1'
      set_keeping_longer(idk, txid, math.max(ttl, keep))
    end
  elseif kind == 'delete' then
    deleted = '1'
  end
  local after = merge_fields(fields, body)
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
    index_add(model, id, ttl, seq)
    if not seen[member] then
      seen[member] = true
      members[#members + 1] = member
    end
  end
  if #members > 0 then G.written[#G.written + 1] = {txid, members, ttl} end
end

-- The release of a batch of transactions ('release <n> ...'), in turn, as one
-- release each would run: a record named by several is read once and ends as
-- the last of them leaves it. The reads are batched (the statuses, the
-- records and their ID-cache keys: one MGET per 1,000 keys), and so are the
-- removals: the deleted keys go in one DEL per 1,000, the index entries in
-- one ZREM per bucket (a ZCARD per bucket touched tells which emptied and
-- leaves the model's list) and one per field index. What is written is what
-- one release at a time writes (tests/backends/test_redis_release_batches.py).
local function read_all(keys, into)
  local want = {}
  for _, k in ipairs(keys) do
    if into[k] == nil then want[#want + 1] = k; into[k] = false end
  end
  for i = 1, #want, 1000 do
    local got = redis.call('MGET', unpack(want, i, math.min(i + 999, #want)))
    for j = 1, #got do into[want[i + j - 1]] = got[j] end
  end
end

local function release_all(txids)
  for _, e in ipairs(G.index) do add_index(e[1], e[2], e[3], e[4]) end
  G.index = {}
  flush_indexes()
  -- The statuses (check() read them into STORED already), then every record
  -- they name with its ID-cache key.
  local unread = {}
  for _, txid in ipairs(txids) do
    if not CLEARED[txid] and STORED[txid] == nil then unread[#unread + 1] = STATUS .. txid end
  end
  local statuses = {}
  read_all(unread, statuses)
  local lists, keys = {}, {}
  for i, txid in ipairs(txids) do
    local members = {}
    if not CLEARED[txid] then
      local value = STORED[txid]
      if value == nil then value = statuses[STATUS .. txid] end
      local _, stored = split_status(value or nil)
      for m in string.gmatch(stored, '%S+') do members[#members + 1] = m end
    end
    local add = WRITTEN_ADD[txid]
    if add then for _, m in ipairs(add.list) do members[#members + 1] = m end end
    for _, w in ipairs(G.written) do
      if w[1] == txid then for _, m in ipairs(w[2]) do members[#members + 1] = m end end
    end
    WRITTEN_ADD[txid] = nil
    local kept = {}
    for _, w in ipairs(G.written) do if w[1] ~= txid then kept[#kept + 1] = w end end
    G.written = kept
    CLEARED[txid] = true
    lists[i] = members
    for _, m in ipairs(members) do
      keys[#keys + 1] = BUFFERED .. m
      keys[#keys + 1] = IDS .. m
    end
  end
  local v = {}
  read_all(keys, v)
  local deleted, dels, sets, set_order, buckets, fields = 0, {}, {}, {}, {}, {}
  for i, txid in ipairs(txids) do
    local seen = {}
    for _, member in ipairs(lists[i]) do
      if not seen[member] then
        seen[member] = true
        local k = BUFFERED .. member
        local value = v[k] or nil
        if value then
          local created, was_deleted, seq, txs, rest_fields = split_record(value)
          -- A record of this transaction alone (the common case) needs no list walked.
          local rest = txs == txid and '' or without_tx(txs, txid)
          -- The implicit creator leaves: the record has none any more.
          if created == '2' and (txs == txid or string.match(txs, '^[^,]*') == txid) then
            created = '1'
          end
          if rest == '' then
            local sep = string.find(member, ':', 1, true)
            local model, id = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
            dels[#dels + 1] = k
            v[k], sets[k] = false, nil
            seq = tonumber(seq)
            if seq then
              local b = math.floor(seq / BUCKET)
              local bk = bucket_key(model, b)
              local entry = buckets[bk]
              if not entry then entry = {model, b, {}}; buckets[bk] = entry end
              entry[3][#entry[3] + 1] = id
            end
            if next(registered(model)) ~= nil then
              fields[model] = field_members(registered(model), rest_fields, id, fields[model] or {})
            end
            deleted = deleted + 1
          elseif rest ~= txs then
            local new = join_record(created, was_deleted, seq, rest, rest_fields)
            if not sets[k] then set_order[#set_order + 1] = k end
            v[k], sets[k] = new, new
          end
        end
        local idk = IDS .. member
        local entry = v[idk] or nil
        if entry and creator(entry, value) == txid then
          dels[#dels + 1] = idk
          v[idk] = false
        end
      end
    end
  end
  -- Removals first: they free before anything is rewritten.
  in_slices({'DEL'}, dels)
  for _, k in ipairs(set_order) do
    if sets[k] then redis.call('SET', k, sets[k], 'KEEPTTL') end
  end
  local emptied = {}
  for bk, entry in pairs(buckets) do
    for j = 1, #entry[3], 1000 do
      redis.pcall('ZREM', bk, unpack(entry[3], j, math.min(j + 999, #entry[3])))
    end
    if redis.pcall('ZCARD', bk) == 0 then
      local list = emptied[entry[1]]
      if not list then list = {}; emptied[entry[1]] = list end
      list[#list + 1] = entry[2]
    end
  end
  for model, list in pairs(emptied) do in_slices({'ZREM', INDEX .. model}, list) end
  if next(fields) ~= nil then
    flush_fields()
    for model, gone in pairs(fields) do in_slices({'ZREM', FIELDS .. model}, gone) end
  end
  return deleted
end

-- The replication tracker's move ('replicated <ttl ms> <now us> <n> <tx> x n'):
-- each transaction's committed status becomes 'replicated' at <now us>
-- (microseconds since 1970), as ccat_buffering_redis._values writes it from
-- Python ('"state":"replicated"', its times '<created>,<now - created>,
-- <committed>,<now - created>'), then the caches of all are released as
-- 'release' does. Only a routine status (no history, error nor generated
-- values: a shared body) is moved here, and only if the group stages no
-- status of its own for it; any other is left as it is (the caller stages
-- it). check() read the statuses into STORED.
local function replicate_all(ttl, now_us, txids)
  local staged = {}
  for _, s in ipairs(G.statuses) do staged[s[1]] = true end
  local find, sub, match = string.find, string.sub, string.match
  for _, txid in ipairs(txids) do
    local json = not staged[txid] and split_status(STORED[txid] or nil) or ''
    -- The times follow the JSON's last '@' (they hold none), after its '}':
    -- looked for in the text's last 96 bytes (four times take at most ~70).
    local state = find(json, '"state":"committed"', 1, true)
    local at = state and find(json, '}@[%-%d,]*$', math.max(state, #json - 96))
    local created, committed
    if state and not find(json, '"history"', 1, true)
        and not find(json, '"last_error"', 1, true)
        and not find(json, '"generated"', 1, true) then
      local updated
      created, updated, committed = match(json, '^(%-?%d+),(%-?%d+),?(%-?%d*)$', at + 2)
      if not updated then created = nil end
    end
    if created then
      local since = string.format('%d', now_us - tonumber(created))
      put_status(txid, sub(json, 1, state - 1) .. '"state":"replicated"'
        .. sub(json, state + 19, at + 1) .. created .. ',' .. since .. ',' .. committed
        .. ',' .. since, 'replicated', ttl, '', txid)
    end
  end
  return release_all(txids)
end

local function dead_letter(r, reason, txid)
  local p = redis.call('HGET', INF, r)
  if not p then return 0 end
  redis.call('HDEL', INF, r)
  redis.call('ZREM', LEASES, r)
  local lid = txid
  if lid == '' then lid = 'raw-' .. r end
  redis.call('HSET', LETTERS, lid, p)
  redis.call('HSET', META, lid, cjson.encode({reason = reason, at = now(), tx = txid}))
  redis.call('ZADD', ORDER, next_seq(), lid)
  return 1
end
