-- Fragment: what every script starts with, after the generated key names
-- (include: keys): the server's time, sequence numbers, expiries, slices.

-- include: keys

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOW = now_ms()
-- The same time, for code that a Redis Function library runs too: there NOW
-- is read only by the first call to now() (see scripts.library), as most
-- calls of APPLY never need it.
local function now()
  if not NOW then NOW = now_ms() end
  return NOW
end

-- Sequence numbers (receipts, orders) are taken from the counter SEQ_BUDGET at
-- a time, with one INCRBY; numbers left unused are skipped, never reused.
local SEQ_NEXT, SEQ_LEFT, SEQ_BUDGET = 0, 0, 1
local function next_seq()
  if SEQ_LEFT == 0 then
    SEQ_NEXT = redis.call('INCRBY', SEQ, SEQ_BUDGET) - SEQ_BUDGET
    SEQ_LEFT = SEQ_BUDGET
  end
  SEQ_NEXT = SEQ_NEXT + 1
  SEQ_LEFT = SEQ_LEFT - 1
  return SEQ_NEXT
end

-- Push a key's expiry out to ttl ms from now; never shorten it. Returns 1 if
-- it moved, 0 if it already lasted as long, -1 if there is no such key.
-- extend_unmoved: the rest of extend(), after a PEXPIRE GT that answered 0.
local function extend_unmoved(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -2 then return -1 end
  if left == -1 then
    redis.call('PEXPIRE', key, ttl)
    return 1
  end
  return 0
end
local function extend(key, ttl)
  if redis.call('PEXPIRE', key, ttl, 'GT') == 1 then return 1 end
  return extend_unmoved(key, ttl)
end

-- Calls with many arguments go in slices: unpack() returns a bounded number of
-- values. `head` holds the leading arguments (command, key, option); slices of
-- `args` follow them, 1,000 at a time (an even number: pairs stay whole).
local function in_slices(head, args)
  local n, k = #args, #head
  if n == 0 then return end
  -- One slice, the common case: no copy of the call.
  if n <= 1000 and k <= 3 then
    if k == 1 then
      redis.call(head[1], unpack(args))
    elseif k == 2 then
      redis.call(head[1], head[2], unpack(args))
    else
      redis.call(head[1], head[2], head[3], unpack(args))
    end
    return
  end
  for i = 1, n, 1000 do
    local call = {unpack(head)}
    for j = i, math.min(i + 999, n) do call[k + j - i + 1] = args[j] end
    redis.call(unpack(call))
  end
end

-- Drop the entries of the terminal indexes whose statuses have expired. A
-- write that only frees: run first, it lets a full Redis accept the rest of
-- the call (see APPLY).
local function prune_terminal()
  for state, _ in pairs(TERMINAL) do
    redis.pcall('ZREMRANGEBYSCORE', STATE .. state, '-inf', now())
  end
end
