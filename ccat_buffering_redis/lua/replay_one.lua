-- Fragment: move one dead letter back to the buffer (APPLY, LETTERS_REPLAY).

local function replay_one(lid)
  local p = redis.call('HGET', LETTERS, lid)
  if not p then return 0 end
  redis.call('HDEL', LETTERS, lid)
  redis.call('HDEL', META, lid)
  redis.call('ZREM', ORDER, lid)
  redis.call('LPUSH', BUF, p)
  return 1
end
