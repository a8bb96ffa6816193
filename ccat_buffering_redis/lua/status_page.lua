-- STATUS_PAGE: one page of the transaction ids in a state, after a cursor.
--
-- A page costs what a page costs: the state's index is entered at the
-- cursor (a bucket by its number, a zset member by its rank), never read
-- from its start.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the state; ARGV[3]: the cursor ('' for the first page);
-- ARGV[4]: at most this many ids.
-- Returns: {next cursor ('' when the state holds no more), id, id, ...}.
-- A cursor is the sequence number of the page's last id (bucketed states),
-- or '<score> <member>' (the others; if that member left the index, the page
-- goes on from where it stood).

-- include: prelude
-- include: state_index

-- Byte order, as a zset orders members of one score (Lua's '<' follows the
-- server's locale).
local function bytes_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- Where a member that left the index would stand: after the lower scores,
-- and among the members of its own score (many: the commits of one WAL
-- segment, the expiries of one millisecond) after those that sort before it.
local function rank_after(index, score, member)
  local lo = redis.call('ZCOUNT', index, '-inf', '(' .. score)
  local hi = redis.call('ZCOUNT', index, '-inf', score)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if bytes_less(redis.call('ZRANGE', index, mid, mid)[1], member) then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo
end

prune_terminal()
local state, after, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local out, cursors = {}, {}

if SEQ_STATES[state] then
  local b0, off0 = nil, nil
  if after ~= '' then
    local c = tonumber(after)
    b0 = math.floor(c / BUCKET)
    off0 = c - b0 * BUCKET
  end
  local from = b0 and tostring(b0) or '-inf'
  local skip = 0
  while #out <= limit do
    local buckets = redis.call('ZRANGE', STATE .. state, from, '+inf', 'BYSCORE', 'LIMIT', skip, 16)
    if #buckets == 0 then break end
    skip = skip + #buckets
    for _, b in ipairs(buckets) do
      local low = '-inf'
      if b0 and tonumber(b) == b0 then low = '(' .. off0 end
      local got = redis.call('ZRANGE', state_bucket(state, b), low, '+inf', 'BYSCORE',
        'LIMIT', 0, limit + 1 - #out, 'WITHSCORES')
      for i = 1, #got, 2 do
        out[#out + 1] = got[i]
        cursors[#cursors + 1] = tostring(tonumber(b) * BUCKET + tonumber(got[i + 1]))
      end
      if #out > limit then break end
    end
  end
else
  local index = STATE .. state
  local start = 0
  if after ~= '' then
    local score, member = string.match(after, '^(%S+) (.*)$')
    local rank = member and redis.call('ZRANK', index, member)
    if rank then
      start = rank + 1
    elseif score then
      start = rank_after(index, score, member)
    end
  end
  local got = redis.call('ZRANGE', index, start, start + limit, 'WITHSCORES')
  for i = 1, #got, 2 do
    local id = got[i]
    if state == 'committed' then id = string.sub(id, 9) end
    out[#out + 1] = id
    cursors[#cursors + 1] = got[i + 1] .. ' ' .. got[i]
  end
end

local reply = {''}
if #out > limit then reply[1] = cursors[limit] end
for i = 1, math.min(#out, limit) do reply[#reply + 1] = out[i] end
return reply
