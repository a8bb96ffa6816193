-- CACHE_EXTEND: push out the TTL of the records the transactions wrote.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the TTL (ms); ARGV[3...]: transaction ids.
-- Returns: how many buffered records were found (their TTL reaches ARGV[2]).

-- include: prelude
-- include: status_values
-- include: field_index

local ttl = tonumber(ARGV[2])
local n = 0
local models = {}
for i = 3, #ARGV do
  local txid = ARGV[i]
  local skey = STATUS .. txid
  local _, members = split_status(read(skey))
  local seen = {}
  for member in string.gmatch(members, '%S+') do
    if not seen[member] then
      seen[member] = true
      local k = BUFFERED .. member
      if extend(k, ttl) >= 0 then
        n = n + 1
        local sep = string.find(member, ':', 1, true)
        local model = string.sub(member, 1, sep - 1)
        models[model] = true
        extend_bucket(model, record_seq(read(k) or ''), ttl)
      end
      local idk = IDS .. member
      local entry = read(idk)
      if entry and creator(entry, read(k)) == txid then extend(idk, ttl) end
    end
  end
  -- Only a key that has a TTL (records without a status, or a finished
  -- status): an unfinished status keeps none.
  redis.call('PEXPIRE', skey, ttl, 'GT')
end
extend_buckets()
for model, _ in pairs(models) do
  extend_indexes(model, ttl)
end
return n
