-- Shared by the scripts that rate-limit (prepended to each). Times are microseconds from
-- Redis's own clock (TIME), so replicas with skewed clocks still agree. The maths is
-- src/policy/limits/gcra.rs, in whole microseconds: the theoretical arrival time (TAT) is at
-- least now; more than `tolerance` ahead refuses with the difference; otherwise the TAT moves
-- one interval on. Lua numbers are doubles: microseconds since 1970 (about 1.8e15) stay exact
-- below 2^53, and string.format('%d') writes them without an exponent.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function gcra(key, now, interval, tolerance)
  local tat = math.max(tonumber(redis.call('GET', key)) or now, now)
  local ahead = tat - now
  if ahead > tolerance then
    return false, ahead - tolerance
  end
  return true, tat + interval
end

-- Stores the TAT until it is in the past, when it means no more than no key at all.
local function charge(key, now, tat)
  redis.call('SET', key, string.format('%d', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
end
