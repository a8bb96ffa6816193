-- CACHE_LIST: every buffered record of a model, dropping stale index entries.
--
-- KEYS[1]: the site's buffer key (it routes the call to the site's slot).
-- ARGV[1]: the site's key prefix, 'site:{<site>}:'.
-- ARGV[2]: the model.
-- Returns: {now ms, {{id, PTTL ms, record text}...}} in the order first written.

-- include: prelude
-- include: model_index

-- An entry whose record is gone, or was written again under another number
-- (it expired unreleased), goes; so does a bucket left empty.
local model = ARGV[2]
local out = {}
for _, e in ipairs(index_entries(model)) do
  local id, seq = e[1], e[2]
  local k = BUFFERED .. model .. ':' .. id
  local value = redis.call('GET', k)
  if value and record_seq(value) == seq then
    out[#out + 1] = {id, redis.call('PTTL', k), value}
  else
    unindex(model, id, seq)
  end
end
for _, b in ipairs(redis.call('ZRANGE', INDEX .. model, 0, -1)) do
  if redis.call('EXISTS', bucket_key(model, b)) == 0 then redis.call('ZREM', INDEX .. model, b) end
end
return {NOW, out}
