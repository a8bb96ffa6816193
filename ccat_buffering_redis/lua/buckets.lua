-- Fragment: how the model and state indexes place (sequence number, member)
-- pairs in buckets of BUCKET consecutive numbers (see _model_index).

-- The pairs by bucket: buckets[b] is {place, member, place, member...}, each
-- place the number's offset in bucket b; listed is {b, b, ...}, the
-- score-member pairs that list the buckets.
local function by_bucket(pairs_)
  local buckets, listed = {}, {}
  for i = 1, #pairs_, 2 do
    local seq = tonumber(pairs_[i])
    local b = math.floor(seq / BUCKET)
    local entries = buckets[b]
    if not entries then
      entries = {}
      buckets[b] = entries
      listed[#listed + 1] = b
      listed[#listed + 1] = b
    end
    entries[#entries + 1] = seq - b * BUCKET
    entries[#entries + 1] = pairs_[i + 1]
  end
  return buckets, listed
end
