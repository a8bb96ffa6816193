-- LETTERS_PURGE: delete dead letters.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: '*' for all, or a JSON list of letter ids.
-- Returns: how many were deleted.

-- include: prelude

local ids
if ARGV[2] == '*' then
  ids = redis.call('ZRANGE', ORDER, 0, -1)
else
  ids = cjson.decode(ARGV[2])
end
local n = 0
for _, lid in ipairs(ids) do
  if redis.call('HDEL', LETTERS, lid) == 1 then n = n + 1 end
  redis.call('HDEL', META, lid)
  redis.call('ZREM', ORDER, lid)
end
return n
