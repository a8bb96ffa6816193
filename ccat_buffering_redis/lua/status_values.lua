-- Fragment: status values, their record lists, and ID-cache entries.

-- include: records

-- A string key's value, or nil. MGET answers nil for a key of another type
-- where GET fails, so that no read can break a group halfway.
local function read(k)
  return redis.call('MGET', k)[1] or nil
end

-- A status key holds the status JSON (without the id and default values),
-- then, after a newline, the records the transaction wrote while they are
-- buffered: '<Model>:<id>', space-separated (JSON text holds no raw newline,
-- no name a space). Either part may be empty.
local function split_status(value)
  if not value then return '', '' end
  local nl = string.find(value, '\n', 1, true)
  if not nl then return value, '' end
  return string.sub(value, 1, nl - 1), string.sub(value, nl + 1)
end

local function join_status(json, members)
  if members == '' then return json end
  return json .. '\n' .. members
end

local function merge_members(list, more)
  local seen, out = {}, {}
  if list ~= '' then
    for m in string.gmatch(list, '%S+') do
      if not seen[m] then seen[m] = true; out[#out + 1] = m end
    end
  end
  for _, m in ipairs(more) do
    if not seen[m] then seen[m] = true; out[#out + 1] = m end
  end
  return table.concat(out, ' ')
end

local FLAGS = {create = {'1', '0'}, update = {'0', '0'}, delete = {'0', '1'}}

-- An ID-cache entry holds its creating transaction, or '1' when that is the
-- first of the buffered record's transactions: the record has it already, and
-- Redis stores a small integer in no memory of its own.
local function id_entry(txid, txs)
  if string.match(txs, '^[^,]*') == txid then return '1' end
  return txid
end

-- The creating transaction an entry names, given the record's value (or nil).
local function creator(entry, record)
  if entry ~= '1' then return entry end
  if not record then return nil end
  return record_creator(record)
end
