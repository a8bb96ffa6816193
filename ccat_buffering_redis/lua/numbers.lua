-- Fragment: the decimal text of whole numbers, without Lua's own conversion,
-- and the numbers that tokens of the frame read as.
--
-- Lua turns a number into text with printf('%.14g'): some 2,000 instructions,
-- as much as a Redis command that the lean path issues. Numbers below 1,000
-- (bucket places and budgets, and bucket numbers up to 128,000 sequence
-- numbers) are formatted once and looked up after; a larger one is the text of
-- its thousands, kept likewise, then its last three digits. A library keeps
-- these tables from call to call (they hold nothing a call brings); a script
-- makes them anew at each call, which costs what the conversions did.
-- Only whole numbers of at most 15 digits (sequence numbers, buckets, places).
local DECIMAL = {small = {}, padded = {}, high = {}, highs = 0} -- kept across calls

local function decimal(n)
  local small = DECIMAL.small
  local text = small[n]
  if text then return text end
  if n < 1000 then
    text = string.format('%d', n)
    small[n] = text
    return text
  end
  local low = n % 1000
  local high = (n - low) / 1000
  local head = DECIMAL.high[high]
  if not head then
    -- The thousands of the numbers a site is at: a few at a time; the
    -- table starts again rather than grow as the numbers do.
    if DECIMAL.highs >= 64 then DECIMAL.high, DECIMAL.highs = {}, 0 end
    head = decimal(high)
    DECIMAL.high[high] = head
    DECIMAL.highs = DECIMAL.highs + 1
  end
  local tail = DECIMAL.padded[low]
  if not tail then
    tail = string.format('%03d', low)
    DECIMAL.padded[low] = tail
  end
  return head .. tail
end

-- The number a token of the frame reads as (tonumber), or nil. The tokens
-- that are numbers are a few counts and TTLs, again and again: each text is
-- read once and looked up after (tonumber is a C call and a parse), up to
-- 256 texts of at most 16 bytes (others are read each time).
local NUMBERS = {read = {}, count = 0} -- kept across calls

local function number(text)
  local read = NUMBERS.read
  local n = read[text]
  if n then return n end
  n = tonumber(text)
  if n and NUMBERS.count < 256 and #text <= 16 then
    read[text] = n
    NUMBERS.count = NUMBERS.count + 1
  end
  return n
end
