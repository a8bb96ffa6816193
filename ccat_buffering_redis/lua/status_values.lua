-- Fragment: status values, their record lists, and ID-cache entries.

-- include: records

-- A string key's value, or nil. MGET answers nil for a key of another type
-- where GET fails, so that no read can break a group halfway.
local function read(k)
  return redis.call('MGET', k)[1] or nil
end

-- A status key holds the status JSON (without the id and default values;
-- its times after it, '@<created>,<updated>,...', read only by Python: see
-- ccat_buffering_redis._values), then, after a newline, the records the transaction wrote while they are
-- buffered: '<Model>:<id>', space-separated (JSON text holds no raw newline,
-- no name a space). Either part may be empty.
local function split_status(value)
  if not value then return '', '' end
  local nl = string.find(value, '\n', 1, true)
  if not nl then return value, '' end
  return string.sub(value, 1, nl - 1), string.sub(value, nl + 1)
end

-- The first line of a routine status (see routine_body in ccat_buffering_redis._values)
-- in a form that Python reads and writes back byte for byte:
-- '<seq>{"endpoint":"<e>","state":"<state>","attempts":<n>}@<created>,<updated>', the
-- endpoint absent if empty, else printable ASCII without quote or backslash (JSON
-- text that reads as itself), attempts absent if 0, no other member, and no other
-- time. Returns the sequence number (text, maybe empty), the JSON up to the
-- state's name and after it, the state, and the created time (text); nil for
-- any other line.
local function routine_status(line)
  local seq, before, state, after, created, updated = string.match(line,
    '^(%d*)({[^@]-"state":")(%l+)("[^@]*})@(%d+),(%-?%d+)$')
  if not seq then return nil end
  if before ~= '{"state":"' then
    local endpoint = string.match(before, '^{"endpoint":"([^"\\%c\128-\255]+)","state":"$')
    if not endpoint then return nil end
  end
  if after ~= '"}' and not string.match(after, '^","attempts":[1-9]%d*}$') then return nil end
  -- Canonical numbers (Python writes back int() of each), the created time
  -- below 2**32 s as Python reads it without rounding.
  if #created > 16 or (#created > 1 and string.sub(created, 1, 1) == '0')
      or tonumber(created) >= 4294967296000000 then
    return nil
  end
  return seq, before, after, state, created, updated
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

-- The created flag of a record: '2' when the first transaction it names
-- created it (no ID-cache key then: the record tells), '1' when created by a
-- transaction named in its ID-cache key (or by one no longer buffered).
local FLAGS = {create = {'2', '0'}, update = {'0', '0'}, delete = {'0', '1'}}

-- The creating transaction of a record, from its ID-cache entry (nil if none;
-- '1', written before the flag '2' existed, for the record's first) and its value.
local function creator(entry, record)
  if entry and entry ~= '1' then return entry end
  if not record then return nil end
  if entry or string.sub(record, 2, 2) == '2' then return record_creator(record) end
  return nil
end
