-- One stream admission, atomic. KEYS: 1 the user's leases (ZSET member -> deadline),
-- 2 the user's connect TAT, 3 the user's evicted members (SET, read by their owners' renewals).
-- ARGV: 1 replica id, 2 stream sequence number, 3 lease (us), 4 per-user cap (-1: none),
-- 5 '1' to evict the oldest at the cap, 6 connect interval (us, 0: no rate), 7 tolerance (us),
-- 8 eviction channel prefix (the owner's id is appended), 9... members of this replica's
-- ended streams of this user, removed first.
-- Returns {'ok', member, evicted member of this replica...}, {'rate', retry_us} or {'full'}.
local now = now_us()
local lease = tonumber(ARGV[3])
if #ARGV > 8 then
  redis.call('ZREM', KEYS[1], unpack(ARGV, 9))
end
-- Leases of replicas that died (or lost Redis for longer than a lease) count no more.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local interval = tonumber(ARGV[6])
local tat = false
if interval > 0 then
  local ok, value = gcra(KEYS[2], now, interval, tonumber(ARGV[7]))
  if not ok then
    return {'rate', value}
  end
  tat = value
end
local cap = tonumber(ARGV[4])
local held = redis.call('ZCARD', KEYS[1])
local mine = {}
if cap >= 0 and held >= cap then
  if ARGV[5] ~= '1' or cap == 0 then
    -- A refusal by the cap still counts as a connect attempt.
    if tat then charge(KEYS[2], now, tat) end
    return {'full'}
  end
  -- Members start with the admission time, zero-padded: sorted, the oldest come first.
  local members = redis.call('ZRANGE', KEYS[1], 0, -1)
  table.sort(members)
  for i = 1, held + 1 - cap do
    local member = members[i]
    redis.call('ZREM', KEYS[1], member)
    redis.call('SADD', KEYS[3], member)
    local owner = string.match(member, '^%d+:([^:]+):')
    if owner == ARGV[1] then
      mine[#mine + 1] = member
    else
      redis.call('PUBLISH', ARGV[8] .. owner, KEYS[1] .. '\n' .. member)
    end
  end
  redis.call('PEXPIRE', KEYS[3], math.ceil(lease / 1000) * 2)
end
if tat then charge(KEYS[2], now, tat) end
local member = string.format('%016d:%s:%s', now, ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, member)
redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
return {'ok', member, unpack(mine)}
