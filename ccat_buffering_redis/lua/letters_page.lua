-- LETTERS_PAGE: one page of the dead letters in arrival order, after a cursor.
--
-- A page costs what a page costs: the order index is entered at the
-- cursor's score, never read from its start.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the cursor ('' for the first page): the arrival number of the
-- page's last letter (still a place when that letter has left since).
-- ARGV[3]: at most this many letters.
-- Returns: {next cursor ('' when no letter follows), {letter id, entry, meta JSON}...}.

-- include: prelude

local low, limit = '-inf', tonumber(ARGV[3])
if ARGV[2] ~= '' then low = '(' .. ARGV[2] end
local got = redis.call('ZRANGE', ORDER, low, '+inf', 'BYSCORE', 'LIMIT', 0, limit + 1, 'WITHSCORES')
local reply = {''}
for i = 1, math.min(#got, 2 * limit), 2 do
  local p = redis.call('HGET', LETTERS, got[i])
  local m = redis.call('HGET', META, got[i])
  if p and m then reply[#reply + 1] = {got[i], p, m} end
end
if #got > 2 * limit then reply[1] = got[2 * limit] end
return reply
