-- STATUS_IDS: the transaction ids in a state, in the state's order.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the state; ARGV[3]: at most this many (0 or less: all).
-- Returns: the ids.

-- include: prelude
-- include: state_index

prune_terminal()
local limit = tonumber(ARGV[3])
if SEQ_STATES[ARGV[2]] then return state_ids(ARGV[2], limit) end
local stop = -1
if limit > 0 then stop = limit - 1 end
local ids = redis.call('ZRANGE', STATE .. ARGV[2], 0, stop)
if ARGV[2] == 'committed' then
  for i, member in ipairs(ids) do ids[i] = string.sub(member, 9) end
end
return ids
