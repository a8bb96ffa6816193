-- Fragment: the field index (fields:<Model>), see ccat_buffering_redis._field_index.

-- include: model_index

-- The field index of a model (fields:<Model>): a zset of '<field>=<JSON value>\0<id>'
-- at score 0, so that ZRANGEBYLEX finds the records holding a value (CACHE_FIND).
-- A value longer than 64 bytes is indexed by its first 56 bytes, '#' and its length
-- (no JSON text ends so); CacheStore.find drops the records that only share those.
-- Only the registered fields (members '\0<field>') are indexed, and those follow
-- the records exactly: every write moves a record's entries from the values it
-- had to those it has, a release takes them out.
-- The read of the registrations doubles as the check of the key's type: a
-- key of another type (written by hand) is named in FIELDS_PROBLEM (made by
-- the first problem: nil until then).
local REGISTERED = {}
local FIELDS_PROBLEM
local function registered(model)
  local r = REGISTERED[model]
  if not r then
    r = {}
    local got = redis.pcall('ZRANGEBYLEX', FIELDS .. model, '[\0', '(\1')
    if type(got) == 'table' and not got['err'] then
      for _, m in ipairs(got) do r[string.sub(m, 2)] = true end
    elseif type(got) == 'table' then
      if not FIELDS_PROBLEM then FIELDS_PROBLEM = {} end
      FIELDS_PROBLEM[model] = 'key ' .. FIELDS .. model .. ' is not a zset (' .. got['err'] .. ')'
    end
    REGISTERED[model] = r
  end
  return r
end

-- Models whose field index does not exist, found with one EXISTS for them
-- all: most models have none, and each read of the registrations is a call.
-- They share one empty table of registrations, never written to.
local NONE_REGISTERED = {} -- kept across calls
local function known_unindexed(models)
  local keys = {}
  for model, _ in pairs(models) do
    if not REGISTERED[model] then keys[#keys + 1] = FIELDS .. model end
  end
  if #keys == 0 or #keys > 1000 then return end
  if redis.call('EXISTS', unpack(keys)) == 0 then
    for model, _ in pairs(models) do REGISTERED[model] = REGISTERED[model] or NONE_REGISTERED end
  end
end

-- Why the field index of a model cannot be written, or nil.
local function fields_problem(model)
  registered(model)
  return FIELDS_PROBLEM and FIELDS_PROBLEM[model]
end

-- A record whose id is its 'id' field's text stores that field as 'id=' (see
-- record_text): its entry holds the value it stands for.
local function field_members(wanted, fields, id, out)
  if next(wanted) == nil then return out end
  for name, value in string.gmatch(fields, '([^\n=]+)=([^\n]*)') do
    if wanted[name] then
      if value == '' then value = '"' .. id .. '"' end
      if #value > 64 then value = string.sub(value, 1, 56) .. '#' .. #value end
      out[#out + 1] = name .. '=' .. value .. '\0' .. id
    end
  end
  return out
end

-- Entries to add, gathered per model (score, member pairs) and sent with one
-- ZADD per model; sent before any removal, so that a removal always follows
-- the addition it undoes. Made by the first entry (nil until then): most
-- writes touch no field index.
local FIELD_ADD
local function flush_fields()
  if not FIELD_ADD then return end
  for model, list in pairs(FIELD_ADD) do in_slices({'ZADD', FIELDS .. model}, list) end
  FIELD_ADD = nil
end

local function reindex_fields(model, id, before, after)
  local wanted = registered(model)
  if next(wanted) == nil then return end
  if not FIELD_ADD then FIELD_ADD = {} end
  local add = FIELD_ADD[model]
  if not add then add = {}; FIELD_ADD[model] = add end
  if before == '' then
    for _, m in ipairs(field_members(wanted, after, id, {})) do
      add[#add + 1] = 0
      add[#add + 1] = m
    end
    return
  end
  local old, new = field_members(wanted, before, id, {}), field_members(wanted, after, id, {})
  local keep, had, gone = {}, {}, {}
  for _, m in ipairs(new) do keep[m] = true end
  for _, m in ipairs(old) do
    had[m] = true
    if not keep[m] then gone[#gone + 1] = m end
  end
  if #gone > 0 then
    flush_fields()
    in_slices({'ZREM', FIELDS .. model}, gone)
    add = {}
    FIELD_ADD = {[model] = add}
  end
  for _, m in ipairs(new) do
    if not had[m] then
      add[#add + 1] = 0
      add[#add + 1] = m
    end
  end
end

-- The fields text of each live record of a model: {id, value} pairs.
local function model_records(model)
  local out = {}
  for _, id in ipairs(model_ids(model)) do
    local value = redis.call('MGET', BUFFERED .. model .. ':' .. id)[1]
    if value then out[#out + 1] = {id, value} end
  end
  return out
end

-- Index `field` of every buffered record of `model` and register it. Entries
-- left from a registration that expired go first: freeing before the
-- additions grow. A model with no records registers nothing: there is no
-- index for the registration to live as long as.
local function learn(model, field)
  local key = FIELDS .. model
  redis.call('ZREMRANGEBYLEX', key, '[' .. field .. '=', '(' .. field .. '>')
  local ttl = index_ttl(model)
  if ttl <= 0 then return end
  local wanted, adds = {[field] = true}, {}
  for _, rec in ipairs(model_records(model)) do
    for _, m in ipairs(field_members(wanted, fields_of(rec[2]), rec[1], {})) do
      adds[#adds + 1] = 0
      adds[#adds + 1] = m
    end
  end
  in_slices({'ZADD', key}, adds)
  redis.call('ZADD', key, 0, '\0' .. field)
  extend(key, ttl)
  REGISTERED[model] = nil
end

-- Push out the TTL of a model's index and field index (never shorten them).
-- A model without registered fields has no field index to extend.
local function extend_indexes(model, ttl)
  extend(INDEX .. model, ttl)
  if next(registered(model)) ~= nil then extend(FIELDS .. model, ttl) end
end
