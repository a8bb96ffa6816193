-- CLAIM: take entries from the head of the buffer under a lease.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: how many entries at most; ARGV[3]: the lease (ms).
-- Returns: {} while a hold is set or the buffer is empty, else
--   {deadline ms, receipt, entry, receipt, entry...}, oldest first.

-- include: prelude

if redis.call('EXISTS', HOLD) == 1 then return {} end
local deadline = NOW + tonumber(ARGV[3])
local popped = redis.call('RPOP', BUF, tonumber(ARGV[2]))
if not popped then return {} end
SEQ_BUDGET = #popped
local out, held, leases = {deadline}, {}, {}
for _, p in ipairs(popped) do
  local r = tostring(next_seq())
  held[#held + 1] = r
  held[#held + 1] = p
  leases[#leases + 1] = deadline
  leases[#leases + 1] = r
  out[#out + 1] = r
  out[#out + 1] = p
end
in_slices({'HSET', INF}, held)
in_slices({'ZADD', LEASES}, leases)
return out
