-- Fragment: move one dead letter back to the head of the buffer (APPLY, LETTERS_REPLAY).
-- The right end is the head: of several, the one replayed last is claimed first.

local function replay_one(lid)
  local p = redis.call('HGET', LETTERS, lid)
  if not p then return 0 end
  redis.call('HDEL', LETTERS, lid)
  redis.call('HDEL', META, lid)
  redis.call('ZREM', ORDER, lid)
  redis.call('RPUSH', BUF, p)
  return 1
end
