-- CLAIM: take entries from the head of the buffer under a lease, each with its
-- status; optionally move the routine statuses to processing.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: how many entries at most; ARGV[3]: the lease (ms).
-- ARGV[4] (optional): the time the claimed transactions become processing,
--   microseconds since 1970. The routine statuses (see routine_status in
--   status_values.lua) of state buffered or processing of the entries from
--   the head on (see 'The moves' below) are then written processing at that
--   time here, as APPLY's statuses operation writes what
--   ccat_buffering_redis._values makes of them (new sequence number, state
--   index, no TTL): the drain writes the others itself.
-- Returns: {} while a hold is set or the buffer is empty, else
--   {deadline ms, moved, receipt, entry, status, receipt, entry, status...}, oldest first.
--   status: the value of the status key of the transaction the entry starts
--   with (see status_values.lua), before any move; false if it has none; 0 if
--   the entry does not start with a transaction id that can be read here (a
--   compressed entry): the caller reads that one itself. moved: a character
--   per entry, '1' where its status was moved to processing, else '0'.
--   Reading the statuses here spares the drain a round trip and a read per
--   entry, and moving them another round trip and the statuses' text.

-- include: prelude
-- include: status_values
-- include: state_index

if redis.call('EXISTS', HOLD) == 1 then return {} end
local deadline = NOW + tonumber(ARGV[3])
-- The deadline as text once, as Redis would write it for each ZADD score.
local deadline_text = string.format('%.17g', deadline)
local popped = redis.call('RPOP', BUF, tonumber(ARGV[2]))
if not popped then return {} end
local at_us = tonumber(ARGV[4] or '')
local ids, keys, at, seen = {}, {}, {}, {}
for i, p in ipairs(popped) do
  local id = string.match(string.sub(p, 1, 200), '^{"format_version":%d+,"transaction_id":"([^"]+)"')
  if id then
    ids[i] = id
    keys[#keys + 1] = STATUS .. id
    at[#at + 1] = i
    seen[id] = (seen[id] or 0) + 1
  end
end
-- The statuses, one MGET per 1,000 keys: MGET answers nil for a key of
-- another type where GET would fail the claim.
local stored = {}
for i = 1, #keys, 1000 do
  local got = redis.call('MGET', unpack(keys, i, math.min(i + 999, #keys)))
  for j = 1, #got do stored[at[i + j - 1]] = got[j] end
end

-- The moves: the statuses of the entries from the head on, up to the first
-- that is not a routine one (a status whose text reads back as written), of
-- a transaction the claim names once, with an id a status may have
-- (check_transaction_id); the drain writes the rest as before, after these,
-- so that every status takes the sequence number it took before.
local moves, moving = {}, 0
if at_us then
  for i = 1, #popped do
    local id, value = ids[i], stored[i]
    if not (id and value and seen[id] == 1 and #id <= 128
        and string.match(id, '^[A-Za-z0-9_][A-Za-z0-9_%.%-]*$')) then
      break
    end
    local line, members = split_status(value)
    local seq, before, after, state, created = routine_status(line)
    if state ~= 'buffered' and state ~= 'processing' then break end
    moves[i] = {tonumber(seq) or -1, before, after, state, created, members}
    moving = moving + 1
  end
  -- APPLY would refuse a move between indexes of another type: none here either.
  if moving > 0 then
    for _, state in ipairs({'buffered', 'processing'}) do
      local kind = redis.call('TYPE', STATE .. state)['ok']
      if kind ~= 'zset' and kind ~= 'none' then moves, moving = {}, 0 end
    end
  end
end

-- The receipts first, then the statuses' numbers, as the claim and then
-- APPLY would take them.
SEQ_BUDGET = #popped + moving
local out, held, leases, marks = {deadline, ''}, {}, {}, {}
for i, p in ipairs(popped) do
  local r = tostring(next_seq())
  held[#held + 1] = r
  held[#held + 1] = p
  leases[#leases + 1] = deadline_text
  leases[#leases + 1] = r
  out[#out + 1] = r
  out[#out + 1] = p
  if ids[i] then out[#out + 1] = stored[i] else out[#out + 1] = 0 end
  marks[i] = moves[i] and '1' or '0'
end
out[2] = table.concat(marks)
in_slices({'HSET', INF}, held)
in_slices({'ZADD', LEASES}, leases)
if moving > 0 then
  -- As APPLY's flush_statuses: out of the old index, the values, into the new one.
  local values, leaving, joining = {}, {buffered = {}, processing = {}}, {}
  for i = 1, #popped do
    local m = moves[i]
    if m then
      local id, seq = ids[i], next_seq()
      local json = seq .. m[2] .. 'processing' .. m[3] .. '@' .. m[5] .. ','
        .. string.format('%.0f', at_us - tonumber(m[5]))
      values[#values + 1] = STATUS .. id
      values[#values + 1] = join_status(json, m[6])
      local out_of = leaving[m[4]]
      out_of[#out_of + 1] = m[1]
      out_of[#out_of + 1] = id
      joining[#joining + 1] = seq
      joining[#joining + 1] = id
    end
  end
  for state, list in pairs(leaving) do
    if #list > 0 then state_remove_all(state, list) end
  end
  in_slices({'MSET'}, values)
  state_add('processing', joining)
end
return out
