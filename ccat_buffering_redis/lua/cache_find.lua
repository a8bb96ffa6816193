-- CACHE_FIND: the buffered records of a model with given field values.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the model; ARGV[3...]: pairs of a field and its '<field>=<JSON>\0'
--   prefix (ccat_buffering_redis._values.field_prefix).
-- Returns: {now ms, {{id, PTTL ms, record}...}} in the order first written;
--   candidates only: the caller compares the values.

-- include: prelude
-- include: field_index

-- ARGV[2]: the model; ARGV[3...]: pairs of a field and its '<field>=<value>\0'
-- prefix, as field_members() writes them.
local model = ARGV[2]
local key = FIELDS .. model
local found, ids, scan = {}, {}, {}
local function take(id, m)
  if not found[id] then found[id] = {}; ids[#ids + 1] = id end
  if m then found[id][#found[id] + 1] = m end
end
for i = 3, #ARGV, 2 do
  local field, p = ARGV[i], ARGV[i + 1]
  -- A field not registered yet is learned here; a full Redis that refuses
  -- that still gets its answer, from a scan.
  if not registered(model)[field] and not pcall(learn, model, field) then
    scan[field] = p
  else
    local members = redis.call('ZRANGEBYLEX', key, '[' .. p, '(' .. string.sub(p, 1, -2) .. '\1')
    for _, m in ipairs(members) do take(string.sub(m, #p + 1), m) end
  end
end
if next(scan) ~= nil then
  local wanted = {}
  for field, _ in pairs(scan) do wanted[field] = true end
  for _, rec in ipairs(model_records(model)) do
    for _, m in ipairs(field_members(wanted, fields_of(rec[2]), rec[1], {})) do
      local field = string.match(m, '^([^=]+)=')
      if scan[field] == string.sub(m, 1, #scan[field]) then take(rec[1]) end
    end
  end
end
local out = {}
for _, id in ipairs(ids) do
  local k = BUFFERED .. model .. ':' .. id
  local value = redis.call('MGET', k)[1]
  if value then
    out[#out + 1] = {record_order(model, id, value), id, redis.call('PTTL', k), value}
  elseif #found[id] > 0 then
    -- Expired without a release: its entries go now.
    redis.pcall('ZREM', key, unpack(found[id]))
  end
end
table.sort(out, function(a, b) return a[1] < b[1] end)
local rows = {}
for i, row in ipairs(out) do rows[i] = {row[2], row[3], row[4]} end
return {NOW, rows}
