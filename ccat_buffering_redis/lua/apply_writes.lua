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
  for _, e in ipairs(G.index) do add_index(e[1], e[2], e[3], e[4]) end
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
        -- The implicit creator leaves: the record has none any more.
        if created == '2' and string.match(txs, '^[^,]*') == txid then created = '1' end
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
      local entry = read(idk)
      if entry and creator(entry, value) == txid then redis.call('DEL', idk) end
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
  redis.call('HSET', META, lid, cjson.encode({reason = reason, at = now(), tx = txid}))
  redis.call('ZADD', ORDER, next_seq(), lid)
  return 1
end
