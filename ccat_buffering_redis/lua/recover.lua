-- RECOVER: return claimed entries to the head of the buffer.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: '1' for every claimed entry, '0' for those whose lease expired.
-- Returns: how many entries went back.

-- include: prelude
-- include: return_to_head

local receipts
if ARGV[2] == '1' then
  receipts = redis.call('HKEYS', INF)
else
  receipts = redis.call('ZRANGEBYSCORE', LEASES, '-inf', NOW)
end
return return_to_head(receipts)
