-- CLAIM: take entries from the head of the buffer under a lease, each with its status.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: how many entries at most; ARGV[3]: the lease (ms).
-- Returns: {} while a hold is set or the buffer is empty, else
--   {deadline ms, receipt, entry, status, receipt, entry, status...}, oldest first.
--   status: the value of the status key of the transaction the entry starts
--   with (see status_values.lua); false if it has none; 0 if the entry does
--   not start with a transaction id that can be read here (a compressed entry):
--   the caller reads that one itself. The drain writes the claimed statuses
--   next: reading them here spares it a round trip and a read per entry.

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
  local id = string.match(string.sub(p, 1, 200), '^{"format_version":%d+,"transaction_id":"([^"]+)"')
  if id then
    -- MGET: a key of another type answers nil where GET would fail the claim.
    out[#out + 1] = redis.call('MGET', STATUS .. id)[1]
  else
    out[#out + 1] = 0
  end
end
in_slices({'HSET', INF}, held)
in_slices({'ZADD', LEASES}, leases)
return out
