-- Pushes out the deadlines of one replica's leases, for several users in one call. KEYS, per
-- user: the leases ZSET, then the evicted SET. ARGV: 1 lease (us), then per user the number
-- of members and the members. A member that is missing was either evicted (it is in the
-- evicted SET: returned, so its stream closes) or lost (lapsed, or Redis restarted empty): it
-- is added back, since its stream is still open and must count.
local now = now_us()
local lease = tonumber(ARGV[1])
local deadline = now + lease
local expire = math.ceil(lease / 1000) + 1000
local evicted = {}
local arg = 2
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[arg])
  local first = arg + 1
  arg = first + n
  local update = {}
  for i = first, arg - 1 do
    update[#update + 1] = deadline
    update[#update + 1] = ARGV[i]
  end
  -- The common case, every member still there, is one command.
  local changed = redis.call('ZADD', KEYS[k], 'XX', 'CH', unpack(update))
  if changed < n then
    for i = first, arg - 1 do
      local member = ARGV[i]
      if not redis.call('ZSCORE', KEYS[k], member) then
        if redis.call('SISMEMBER', KEYS[k + 1], member) == 1 then
          evicted[#evicted + 1] = member
        else
          redis.call('ZADD', KEYS[k], deadline, member)
        end
      end
    end
  end
  redis.call('PEXPIRE', KEYS[k], expire)
end
return evicted
