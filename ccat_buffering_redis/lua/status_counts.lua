-- STATUS_COUNTS: how many statuses each state holds; reconciles a slice.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2...]: state names.
-- Returns: one count per state, in order.

-- include: prelude
-- include: state_index

prune_terminal()
-- Each look also checks a slice of each index against the statuses, from a
-- cursor that goes round: an entry whose status is gone or elsewhere (a key
-- deleted by hand) is dropped, so that no ghost is counted for long.
local SLICE = 500
local out = {}
for i = 2, #ARGV do
  local state = ARGV[i]
  local index = STATE .. state
  local size = 0
  if SEQ_STATES[state] then
    size = reconcile_buckets(state, SLICE)
  else
    size = redis.call('ZCARD', index)
  end
  if size > 0 and not SEQ_STATES[state] then
    local from = tonumber(redis.call('HGET', RECONCILE, state) or '0') or 0
    if from >= size then from = 0 end
    local members = redis.call('ZRANGE', index, from, from + SLICE - 1)
    local keys = {}
    for j, m in ipairs(members) do
      if state == 'committed' then m = string.sub(m, 9) end
      keys[j] = STATUS .. m
    end
    local got = redis.call('MGET', unpack(keys))
    local ghosts = {}
    for j = 1, #members do
      local value = got[j]
      local json = value and string.match(value, '^[^\n]*') or ''
      if string.match(json, '"state":"(%a+)"') ~= state then ghosts[#ghosts + 1] = members[j] end
    end
    if #ghosts > 0 then
      in_slices({'ZREM', index}, ghosts)
      size = size - #ghosts
    end
    redis.call('HSET', RECONCILE, state, from + #members - #ghosts)
  end
  out[#out + 1] = size
end
return out
