-- LETTERS_REPLAY: move dead letters back to the head of the buffer, in arrival order.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: '*' for all, or a JSON list of letter ids.
-- Returns: the ids replayed, in the order they were.

-- include: prelude
-- include: replay_one

local ids
if ARGV[2] == '*' then
  ids = redis.call('ZRANGE', ORDER, 0, -1)
else
  local wanted = cjson.decode(ARGV[2])
  local scored = {}
  for _, lid in ipairs(wanted) do
    local s = redis.call('ZSCORE', ORDER, lid)
    if s then scored[#scored + 1] = {tonumber(s), lid} end
  end
  table.sort(scored, function(a, b) return a[1] < b[1] end)
  ids = {}
  for _, pair in ipairs(scored) do ids[#ids + 1] = pair[2] end
end
-- The last first: each goes to the head, so the first arrived is claimed first.
local back = {}
for i = #ids, 1, -1 do
  if replay_one(ids[i]) == 1 then back[#back + 1] = ids[i] end
end
local done = {}
for i = #back, 1, -1 do done[#done + 1] = back[i] end
return done
