-- gcpool: one admission, atomically, on Redis time. The same rule as src/budget/window.rs.
--
-- KEYS[1]   {prefix}:cool    hash  client:<name> | route:<index> | pool  -> "not before" (µs)
-- KEYS[2]   {prefix}:limits  hash  budget name -> learned lower limit
-- KEYS[3]   {prefix}:seq     counter, makes reservation members unique
-- KEYS[3+i] {prefix}:b:<budget name>  sorted set of reserved instants (score = µs), i = 1..K
--
-- ARGV[1] max_wait µs   ARGV[2] route cool-down field or ""   ARGV[3] K
-- then K triples: budget name, configured limit, window µs (guard included)
-- then M, and per candidate: client cool-down field or "", B, then B budget positions (1..K)
--
-- Returns {status, candidate (0-based), wait µs, binding kind, binding position (0-based),
-- member, instant µs}: status 1 admitted, 0 refused (waits too long), -1 never (no candidate
-- can be admitted). Binding kind: 0 none, 1 budget (position in the candidate's list),
-- 2 client cool-down, 3 route cool-down, 4 pool cool-down.

local MARGIN_MS = 10000

local function fmt(x)
  return string.format('%.0f', x)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local max_wait = tonumber(ARGV[1])
local route_field = ARGV[2]
local k = tonumber(ARGV[3])

local names, limits, lens = {}, {}, {}
local p = 4
for i = 1, k do
  names[i] = ARGV[p]
  limits[i] = tonumber(ARGV[p + 1])
  lens[i] = math.max(tonumber(ARGV[p + 2]), 1)
  p = p + 3
end

-- Effective limit = min(configured, learned).
if k > 0 then
  local learned = redis.call('HMGET', KEYS[2], unpack(names))
  for i = 1, k do
    local l = learned[i] and tonumber(learned[i])
    if l and l < limits[i] then
      limits[i] = l
    end
  end
end

local m = tonumber(ARGV[p])
p = p + 1
local cands = {}
local fields = { 'pool' }
if route_field ~= '' then
  fields[#fields + 1] = route_field
end
for c = 1, m do
  local field = ARGV[p]
  local nb = tonumber(ARGV[p + 1])
  p = p + 2
  local list = {}
  for j = 1, nb do
    list[j] = tonumber(ARGV[p])
    p = p + 1
  end
  cands[c] = { field = field, budgets = list }
  if field ~= '' then
    fields[#fields + 1] = field
  end
end

local cool_values = redis.call('HMGET', KEYS[1], unpack(fields))
local cool = {}
for i = 1, #fields do
  cool[fields[i]] = (cool_values[i] and tonumber(cool_values[i])) or 0
end
local pool_cool = cool['pool']
local route_cool = 0
if route_field ~= '' then
  route_cool = cool[route_field]
end

-- Each budget is pruned and read at most once per call (the org budget is shared by every
-- candidate); its instants are loaded only when the window is full.
local state = {}
local function budget(i)
  local s = state[i]
  if s then
    return s
  end
  local key = KEYS[3 + i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - lens[i]))
  s = { card = redis.call('ZCARD', key), memo = {} }
  state[i] = s
  return s
end

local function instants(i, s)
  if not s.times then
    local raw = redis.call('ZRANGE', KEYS[3 + i], 0, -1, 'WITHSCORES')
    local ts = {}
    for j = 2, #raw, 2 do
      ts[#ts + 1] = tonumber(raw[j])
    end
    s.times = ts
  end
  return s.times
end

-- window.rs `Window::earliest`: nil when the limit is 0.
local function earliest(i, from)
  local n = limits[i]
  if not n or n <= 0 then
    return nil
  end
  local s = budget(i)
  if s.card < n then
    return from
  end
  local known = s.memo[from]
  if known then
    return known
  end
  local ts = instants(i, s)
  local w = lens[i]
  local len = #ts
  -- First group whose forbidden interval can reach past `from`: ts[lo] + w > from.
  local lo, hi = 1, len + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if ts[mid] + w <= from then
      lo = mid + 1
    else
      hi = mid
    end
  end
  local t = from
  for g = lo, len - n + 1 do
    local a = ts[g]
    local b = ts[g + n - 1]
    if b >= t + w then
      break
    end
    if a + w > t and b - a < w then
      t = a + w
    end
  end
  s.memo[from] = t
  return t
end

-- window.rs `joint_earliest`: iterate until no budget moves the instant.
local function joint(list, from)
  local t = from
  local moved_by = nil
  while true do
    local moved = false
    for j = 1, #list do
      local e = earliest(list[j], t)
      if e == nil then
        return nil, nil
      end
      if e > t then
        t = e
        moved_by = j
        moved = true
      end
    end
    if not moved then
      return t, moved_by
    end
  end
end

local best_at, best_c, best_kind, best_pos = nil, nil, 0, 0
for c = 1, m do
  local cand = cands[c]
  local from, kind = now, 0
  local client_cool = 0
  if cand.field ~= '' then
    client_cool = cool[cand.field]
  end
  if client_cool > from then
    from, kind = client_cool, 2
  end
  if route_cool > from then
    from, kind = route_cool, 3
  end
  if pool_cool > from then
    from, kind = pool_cool, 4
  end
  local at, moved_by = joint(cand.budgets, from)
  if at then
    local pos = 0
    if moved_by then
      kind, pos = 1, moved_by - 1
    end
    if best_at == nil or at < best_at then
      best_at, best_c, best_kind, best_pos = at, c, kind, pos
    end
  end
end

if best_at == nil then
  return { -1, 0, 0, 0, 0, '', 0 }
end
local wait = best_at - now
if wait > max_wait then
  return { 0, best_c - 1, wait, best_kind, best_pos, '', fmt(best_at) }
end

-- Reserve in every budget of the chosen candidate, and keep each key alive while any of
-- its instants can still share a window with the future.
local seq = redis.call('INCR', KEYS[3])
local member = fmt(best_at) .. '-' .. seq
local longest = 0
for _, i in ipairs(cands[best_c].budgets) do
  local key = KEYS[3 + i]
  redis.call('ZADD', key, fmt(best_at), member)
  local ttl = math.ceil((wait + lens[i]) / 1000) + MARGIN_MS
  if ttl > longest then
    longest = ttl
  end
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
if redis.call('PTTL', KEYS[3]) < longest then
  redis.call('PEXPIRE', KEYS[3], longest)
end
return { 1, best_c - 1, wait, best_kind, best_pos, member, fmt(best_at) }
