-- Fragment: the state indexes (state:<state>), see ccat_buffering_redis._state_index.

-- include: buckets

local function state_bucket(state, b)
  return STATE .. state .. ':' .. b
end

-- The sequence number a status's first line starts with, or nil.
local function status_seq(json)
  return tonumber(string.match(json, '^(%d+)'))
end

-- The ids in a bucketed state, in order; at most `limit` (0 or less: all).
local function state_ids(state, limit)
  local out = {}
  for _, b in ipairs(redis.call('ZRANGE', STATE .. state, 0, -1)) do
    for _, m in ipairs(redis.call('ZRANGE', state_bucket(state, b), 0, -1)) do
      if limit > 0 and #out >= limit then return out end
      out[#out + 1] = m
    end
  end
  return out
end

local function state_size(state)
  local n = 0
  for _, b in ipairs(redis.call('ZRANGE', STATE .. state, 0, -1)) do
    n = n + redis.call('ZCARD', state_bucket(state, b))
  end
  return n
end

-- Add (sequence number, id) pairs to a bucketed state. A bucket of another
-- type (written by hand) is skipped: the list is checked before a call writes.
local function state_add(state, pairs_)
  local buckets, listed = by_bucket(pairs_)
  for b, entries in pairs(buckets) do
    redis.pcall('ZADD', state_bucket(state, b), unpack(entries))
  end
  in_slices({'ZADD', STATE .. state, 'NX'}, listed)
end

-- Take an id out of the bucket of `seq` (negative: none known); an emptied
-- bucket leaves the list (Redis deletes an empty zset itself).
local function bucket_drop(state, b, id)
  redis.pcall('ZREM', state_bucket(state, b), id)
  if redis.call('EXISTS', state_bucket(state, b)) == 0 then
    redis.call('ZREM', STATE .. state, b)
  end
end

-- Take the (sequence number, id) pairs out of a state's buckets (a negative
-- sequence number: none known), as bucket_drop of each would, with one ZREM
-- per bucket and one EXISTS per bucket touched (a drain moves a batch's
-- statuses out of a few buckets at once); emptied buckets leave the list
-- with one ZREM.
local function state_remove_all(state, pairs_)
  local buckets, order = {}, {}
  for j = 1, #pairs_, 2 do
    local seq = pairs_[j]
    if seq >= 0 then
      local b = math.floor(seq / BUCKET)
      local ids = buckets[b]
      if not ids then ids = {}; buckets[b] = ids; order[#order + 1] = b end
      ids[#ids + 1] = pairs_[j + 1]
    end
  end
  local emptied = {}
  for _, b in ipairs(order) do
    local key, ids = state_bucket(state, b), buckets[b]
    for j = 1, #ids, 1000 do
      redis.pcall('ZREM', key, unpack(ids, j, math.min(j + 999, #ids)))
    end
    if redis.call('EXISTS', key) == 0 then emptied[#emptied + 1] = b end
  end
  in_slices({'ZREM', STATE .. state}, emptied)
end

-- Check the buckets of a state from a cursor (a bucket's place in the list)
-- until `slice` ids were looked at, against their statuses: an id whose
-- status is gone or elsewhere is dropped. Returns the state's size.
local function reconcile_buckets(state, slice)
  local index = STATE .. state
  local listed = redis.call('ZRANGE', index, 0, -1)
  if #listed == 0 then return 0 end
  local from = tonumber(redis.call('HGET', RECONCILE, state) or '0') or 0
  if from >= #listed then from = 0 end
  local size, looked, at = 0, 0, from
  for i, b in ipairs(listed) do
    local ids = redis.call('ZRANGE', state_bucket(state, b), 0, -1)
    size = size + #ids
    if i > from and looked < slice and #ids > 0 then
      at, looked = i, looked + #ids
      local keys = {}
      for j, id in ipairs(ids) do keys[j] = STATUS .. id end
      local got = redis.call('MGET', unpack(keys))
      for j, id in ipairs(ids) do
        local json = got[j] and string.match(got[j], '^[^\n]*') or ''
        if string.match(json, '"state":"(%a+)"') ~= state then
          bucket_drop(state, b, id)
          size = size - 1
        end
      end
    end
  end
  redis.call('HSET', RECONCILE, state, at)
  return size
end
