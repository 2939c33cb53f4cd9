-- gcpool: write a replica's admissions back, check which state Redis holds, and probe that
-- Redis takes writes (what an admission needs), in one call.
--
-- KEYS[1]   {prefix}:sync  hash  epoch -> id of this state, settle -> "not before" (µs),
--                                seen -> last write (µs)
-- KEYS[1+i] {prefix}:b:<budget name>, i = 1..K
--
-- ARGV[1] mode: 'probe' (write only if the state is the known one) or 'sync' (adopt the
--         state, or create it when Redis has none)
-- ARGV[2] the epoch the replica knows ('' when none)   ARGV[3] a new epoch, if needed
-- ARGV[4] settle µs   ARGV[5] '1': no admission before now + settle (never shortened)
-- ARGV[6] K, then K windows µs (guard included)
-- then V and V budget positions (1..K) whose usage to return
-- then the admissions: member, instant µs, B, then B budget positions (1..K)
--
-- Returns {status, epoch, now µs, written, settle until µs, then per usage asked: count
-- from now - window on, latest instant}. Status 1: in sync (probe) or written back (sync);
-- 2: written back into a state this call created (Redis had none: flushed, restarted
-- empty, or never used); 0 (probe only): the state is not the known one, nothing written.
-- Every call but a refused probe writes `seen`: a Redis that refuses writes (out of
-- memory) fails this call as it fails admissions.

local MARGIN_MS = 10000

local function fmt(x)
  return string.format('%.0f', x)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local current = redis.call('HGET', KEYS[1], 'epoch')
if ARGV[1] == 'probe' and current ~= ARGV[2] then
  return { 0, current or '', fmt(now), 0, '0' }
end
redis.call('HSET', KEYS[1], 'seen', fmt(now))

local status = 1
if not current then
  current = ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', current)
  status = 2
end
local settle = tonumber(redis.call('HGET', KEYS[1], 'settle') or '0') or 0
local pause = tonumber(ARGV[4])
if ARGV[5] == '1' and now + pause > settle then
  settle = now + pause
  redis.call('HSET', KEYS[1], 'settle', fmt(settle))
end

local k = tonumber(ARGV[6])
local lens = {}
local p = 7
for i = 1, k do
  lens[i] = math.max(tonumber(ARGV[p]), 1)
  p = p + 1
end
local v = tonumber(ARGV[p])
p = p + 1
local views = {}
for j = 1, v do
  views[j] = tonumber(ARGV[p])
  p = p + 1
end

-- Each instant still inside a window goes back under its own member: written twice, it is
-- there once (NX never moves an existing member).
local written = 0
while p <= #ARGV do
  local member, at, nb = ARGV[p], tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  p = p + 3
  for j = 1, nb do
    local i = tonumber(ARGV[p])
    p = p + 1
    if at + lens[i] > now then
      local key = KEYS[1 + i]
      written = written + redis.call('ZADD', key, 'NX', fmt(at), member)
      local ttl = math.ceil((at - now + lens[i]) / 1000) + MARGIN_MS
      if redis.call('PTTL', key) < ttl then
        redis.call('PEXPIRE', key, ttl + MARGIN_MS)
      end
    end
  end
end

local out = { status, current, fmt(now), written, fmt(settle) }
for j = 1, v do
  local i = views[j]
  local key = KEYS[1 + i]
  out[#out + 1] = redis.call('ZCOUNT', key, '(' .. fmt(now - lens[i]), '+inf')
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  out[#out + 1] = last[2] or '0'
end
return out
