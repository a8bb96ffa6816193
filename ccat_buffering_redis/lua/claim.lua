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
-- The deadline as text once, as Redis would write it for each ZADD score.
local deadline_text = string.format('%.17g', deadline)
local popped = redis.call('RPOP', BUF, tonumber(ARGV[2]))
if not popped then return {} end
SEQ_BUDGET = #popped
local out, held, leases, keys, at = {deadline}, {}, {}, {}, {}
for _, p in ipairs(popped) do
  local r = tostring(next_seq())
  held[#held + 1] = r
  held[#held + 1] = p
  leases[#leases + 1] = deadline_text
  leases[#leases + 1] = r
  out[#out + 1] = r
  out[#out + 1] = p
  local id = string.match(string.sub(p, 1, 200), '^{"format_version":%d+,"transaction_id":"([^"]+)"')
  out[#out + 1] = 0
  if id then
    keys[#keys + 1] = STATUS .. id
    at[#at + 1] = #out
  end
end
-- The statuses, one MGET per 1,000 keys: MGET answers nil for a key of
-- another type where GET would fail the claim.
for i = 1, #keys, 1000 do
  local got = redis.call('MGET', unpack(keys, i, math.min(i + 999, #keys)))
  for j = 1, #got do out[at[i + j - 1]] = got[j] end
end
in_slices({'HSET', INF}, held)
in_slices({'ZADD', LEASES}, leases)
return out
