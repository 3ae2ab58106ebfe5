-- One messages_per_user decision. KEYS: 1 the user's message TAT. ARGV: 1 interval (us),
-- 2 tolerance (us). Returns 0 when the message passes (and charges it), else the microseconds
-- until one would.
local now = now_us()
local ok, value = gcra(KEYS[1], now, tonumber(ARGV[1]), tonumber(ARGV[2]))
if not ok then
  return math.max(1, value)
end
charge(KEYS[1], now, value)
return 0
