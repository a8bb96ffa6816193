-- Fragment: the model index (index:<Model>), see ccat_buffering_redis._model_index.

-- include: records
-- include: buckets

local function bucket_key(model, b)
  return INDEX .. model .. ':' .. b
end

-- Ids of a model's buffered records in the order first written, as
-- {id, seq} pairs; ids whose record is gone (or was written again, elsewhere)
-- are included: the caller checks them against the records.
local function index_entries(model)
  local out = {}
  for _, b in ipairs(redis.call('ZRANGE', INDEX .. model, 0, -1)) do
    local base = tonumber(b) * BUCKET
    local got = redis.call('ZRANGE', bucket_key(model, b), 0, -1, 'WITHSCORES')
    for i = 1, #got, 2 do out[#out + 1] = {got[i], base + tonumber(got[i + 1]), b} end
  end
  return out
end

local function model_ids(model)
  local ids = {}
  for i, e in ipairs(index_entries(model)) do ids[i] = e[1] end
  return ids
end

-- How long the model index lasts (ms); 0 or less when it has no TTL or is gone.
local function index_ttl(model)
  return redis.call('PTTL', INDEX .. model)
end

local function record_order(model, id, value)
  return record_seq(value) or 0
end

-- Take an id out of its bucket; an emptied bucket goes, and leaves the list.
local function unindex(model, id, seq)
  if not seq then return end
  local b = math.floor(seq / BUCKET)
  local key = bucket_key(model, b)
  redis.pcall('ZREM', key, id)
  if redis.pcall('ZCARD', key) == 0 then redis.call('ZREM', INDEX .. model, b) end
end

-- Entries to add ({seq, id} per model) and the TTL each bucket must reach;
-- a bucket of another type (written by hand) is skipped, as its list is
-- checked before the call writes (index_problem).
-- A bucket whose expiry the PEXPIRE moved exists, so it is listed already:
-- pushing its expiry out first spares the listing's ZADD (and the later
-- PEXPIRE) in the common case, a bucket that takes more entries.
-- Both are made by the first entry or TTL (nil until then): most calls of
-- APPLY (its lean path, apply_submit.lua) need neither.
local INDEX_ADD, BUCKET_TTL
local function flush_indexes()
  if not INDEX_ADD then return end
  for model, list in pairs(INDEX_ADD) do
    local buckets = by_bucket(list)
    local listed = {}
    for b, entries in pairs(buckets) do
      local key = bucket_key(model, b)
      local ttl = BUCKET_TTL and BUCKET_TTL[key]
      local moved = ttl and redis.call('PEXPIRE', key, ttl, 'GT') == 1
      redis.pcall('ZADD', key, 'NX', unpack(entries))
      if moved then
        BUCKET_TTL[key] = nil
      else
        listed[#listed + 1] = b
        listed[#listed + 1] = b
      end
    end
    in_slices({'ZADD', INDEX .. model, 'NX'}, listed)
  end
  INDEX_ADD = nil
end

local function extend_bucket(model, seq, ttl)
  if not seq then return end
  local key = bucket_key(model, math.floor(seq / BUCKET))
  if not BUCKET_TTL then BUCKET_TTL = {} end
  if (BUCKET_TTL[key] or 0) < ttl then BUCKET_TTL[key] = ttl end
end

local function extend_buckets()
  if not BUCKET_TTL then return end
  for key, ttl in pairs(BUCKET_TTL) do extend(key, ttl) end
  BUCKET_TTL = nil
end
