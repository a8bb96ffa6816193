-- Fragment: return claimed entries to the head of the buffer (APPLY, RECOVER).

-- Entries go back to the right end (the head) so that the lowest receipt,
-- the oldest entry, is claimed first again.
-- Each is taken out of the in-flight set before it is pushed: freeing first
-- lets a full Redis accept the push (see APPLY).
local function return_to_head(receipts)
  table.sort(receipts, function(a, b) return tonumber(a) > tonumber(b) end)
  local n = 0
  for _, r in ipairs(receipts) do
    local p = redis.call('HGET', INF, r)
    if p then
      redis.call('HDEL', INF, r)
      redis.call('ZREM', LEASES, r)
      redis.call('RPUSH', BUF, p)
      n = n + 1
    end
  end
  return n
end
