-- gcpool: one admission, atomically, on Redis time. The same rule as src/budget/window.rs.
--
-- KEYS[1]   {prefix}:cool    hash  client:<name> | route:<index> | pool  -> "not before" (µs)
-- KEYS[2]   {prefix}:limits  hash  budget name -> learned lower limit
-- KEYS[3]   {prefix}:seq     counter, makes reservation members unique
-- KEYS[4]   {prefix}:sync    hash  epoch -> id of this state, settle -> "not before" (µs)
-- KEYS[4+i] {prefix}:b:<budget name>  sorted set of reserved instants (score = µs), i = 1..K
--
-- ARGV[1] the epoch the replica wrote back into ('*': no check)   ARGV[2] max_wait µs
-- ARGV[3] the request's lane's share, in thousandths (1000: whole budgets)
-- ARGV[4] route cool-down field or ""   ARGV[5] K
-- ARGV[5+i] budget i: "<configured limit> <window µs (guard included)> <1 if the lane's
--           share applies, else 0> <budget name>"
-- ARGV[6+K] the budgets every candidate's list starts with: positions (1..K) joined by ','
-- ARGV[7+K] M, then per candidate: "<its other budgets' positions, joined by ','> <client
--           cool-down field or ''>" (a candidate's list: the shared ones, then its own)
-- One argument per budget and per candidate: Redis parses every argument of every call,
-- and the script reads only the budgets and candidates it reaches.
--
-- Returns {status, candidate (0-based), wait µs, binding kind, binding position (0-based),
-- member, instant µs, now µs, ...}: status 1 admitted, 0 refused (waits too long), -1 never
-- (no candidate can be admitted); for 1 and 0, then per budget of the chosen candidate (in
-- its order): admissions from now - window on (reservations included) and the latest
-- instant, so that a replica can size its local share should Redis go away.
-- Status -2: the state is not the one the replica knows (emptied by a flush or a restart, or
-- already written back into under a new epoch); nothing is admitted until the replica has
-- written its admissions back (sync.lua); then the current epoch ('' when none). Status -3:
-- replicas are writing back after an outage; wait µs until then, and ask again.
-- Binding kind: 0 none, 1 budget (position in the candidate's list), 2 client cool-down,
-- 3 route cool-down, 4 pool cool-down.

local MARGIN_MS = 10000
local SEQ_TTL_MS = 86400000

local function fmt(x)
  return string.format('%.0f', x)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

-- One HMGET: the epoch, and the end of a write-back pause. '*' (a store used on its own,
-- with no fallback and nothing to write back) skips both.
if ARGV[1] ~= '*' then
  local sync = redis.call('HMGET', KEYS[4], 'epoch', 'settle')
  if sync[1] ~= ARGV[1] then
    return { -2, 0, 0, 0, 0, '', '0', fmt(now), sync[1] or '' }
  end
  local settle = tonumber(sync[2] or '0') or 0
  if settle > now then
    return { -3, 0, settle - now, 0, 0, '', '0', fmt(now) }
  end
end

local max_wait = tonumber(ARGV[2])
local share = tonumber(ARGV[3])
local route_field = ARGV[4]
local k = tonumber(ARGV[5])

-- Budget i is read (its argument, then its learned limit) only when a candidate that has
-- it is reached: names[i] set means read. limits[i] is what this request may fill: the
-- effective limit (configured or learned, the lower), times the lane's share where it
-- applies, rounded down (window.rs `Window::earliest_within`, budget.rs `Share::of`).
local names, limits, lens, laned = {}, {}, {}, {}

-- Appends the positions of a ','-joined list to `into`.
local function positions(text, into)
  for i in string.gmatch(text, '%d+') do
    into[#into + 1] = tonumber(i)
  end
  return into
end

-- The budgets every candidate starts with (the org cap, an org-scope route budget).
local shared = positions(ARGV[6 + k], {})
local m = tonumber(ARGV[7 + k])

-- Candidates, their learned limits and cool-downs are read as the walk over candidates
-- reaches them: the first one alone, then, only if a later one may beat it, all the others
-- at once (two HMGETs per read).
local cands = {}
local cool = {}
local parsed = 0
local function read(upto)
  local fields, want = {}, {}
  local function need(list)
    for _, i in ipairs(list) do
      if not names[i] then
        local limit, len, lane, name = string.match(ARGV[5 + i], '^(%d+) (%d+) ([01]) (.*)$')
        names[i], limits[i], lens[i] = name, tonumber(limit), math.max(tonumber(len), 1)
        laned[i] = lane == '1'
        want[#want + 1] = i
      end
    end
  end
  if parsed == 0 then
    fields[1] = 'pool'
    if route_field ~= '' then
      fields[2] = route_field
    end
    need(shared)
  end
  for c = parsed + 1, upto do
    local own, field = string.match(ARGV[7 + k + c], '^([%d,]*) (.*)$')
    local list = positions(own, { unpack(shared) })
    need(list)
    cands[c] = { field = field, budgets = list }
    if field ~= '' then
      fields[#fields + 1] = field
    end
  end
  parsed = upto
  -- Effective limit = min(configured, learned), then the lane's share of it.
  if #want > 0 then
    local wanted = {}
    for j = 1, #want do
      wanted[j] = names[want[j]]
    end
    local learned = redis.call('HMGET', KEYS[2], unpack(wanted))
    for j = 1, #want do
      local i = want[j]
      local l = learned[j] and tonumber(learned[j])
      if l and l < limits[i] then
        limits[i] = l
      end
      if laned[i] and share < 1000 then
        limits[i] = math.floor(limits[i] * share / 1000)
      end
    end
  end
  if #fields > 0 then
    local values = redis.call('HMGET', KEYS[1], unpack(fields))
    for j = 1, #fields do
      cool[fields[j]] = (values[j] and tonumber(values[j])) or 0
    end
  end
end

-- Each budget is counted at most once per call (the org budget is shared by every
-- candidate). A budget below its limit admits at once, so it is pruned and its instants are
-- read only when its window is full; they are then fetched by rank, CHUNK at a time, as
-- the walk over forbidden intervals reaches them, not as a whole.
local CHUNK = 64
local state = {}
local function budget(i, n)
  local s = state[i]
  if s then
    return s
  end
  local key = KEYS[4 + i]
  local card = redis.call('ZCARD', key)
  if card >= n then
    card = card - redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - lens[i]))
  end
  s = { card = card, ts = {}, memo = {} }
  state[i] = s
  return s
end

-- The instant of rank `r` (1-based) of budget i.
local function instant(i, s, r)
  local v = s.ts[r]
  if v == nil then
    local raw = redis.call('ZRANGE', KEYS[4 + i], r - 1, r - 2 + CHUNK, 'WITHSCORES')
    for j = 2, #raw, 2 do
      s.ts[r + j / 2 - 1] = tonumber(raw[j])
    end
    v = s.ts[r]
  end
  return v
end

-- window.rs `Window::earliest`: nil when the limit is 0.
local function earliest(i, from)
  local n = limits[i]
  if not n or n <= 0 then
    return nil
  end
  local s = budget(i, n)
  if s.card < n then
    return from
  end
  local known = s.memo[from]
  if known then
    return known
  end
  local w = lens[i]
  -- First group whose forbidden interval can reach past `from`: instant + w > from; and of
  -- the groups wholly at or before `from`, only the last can move the instant (window.rs
  -- `Window::walk`): the walk starts there, not at every past group of a lane's share.
  local first = redis.call('ZCOUNT', KEYS[4 + i], '-inf', fmt(from - w)) + 1
  local last_past = redis.call('ZCOUNT', KEYS[4 + i], '-inf', fmt(from)) - n + 1
  if last_past > first then
    first = last_past
  end
  local t = from
  for g = first, s.card - n + 1 do
    local a = instant(i, s, g)
    local b = instant(i, s, g + n - 1)
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

-- No candidate is admitted before its shared budgets admit it (from `base`, the latest of
-- now and the route and pool cool-downs): `bound`. A candidate admitted at `bound` is the
-- soonest, and ties go to the first, so the rest need not be read. With no shared budget
-- that binds, `bound` is now, as for a free candidate.
read(math.min(m, 1))
local pool_cool = cool['pool']
local route_cool = 0
if route_field ~= '' then
  route_cool = cool[route_field]
end
local base = now
if route_cool > base then
  base = route_cool
end
if pool_cool > base then
  base = pool_cool
end
local bound = joint(shared, base)

local best_at, best_c, best_kind, best_pos = nil, nil, 0, 0
if bound then
  for c = 1, m do
    if c > parsed then
      read(m)
    end
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
      if at == bound then
        break
      end
    end
  end
end

-- Admissions of each budget of the chosen candidate from now - window on, and the latest.
local function usage(out)
  for _, i in ipairs(cands[best_c].budgets) do
    local key = KEYS[4 + i]
    out[#out + 1] = redis.call('ZCOUNT', key, '(' .. fmt(now - lens[i]), '+inf')
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    out[#out + 1] = last[2] or '0'
  end
  return out
end

if best_at == nil then
  return { -1, 0, 0, 0, 0, '', '0', fmt(now) }
end
local wait = best_at - now
if wait > max_wait then
  return usage({ 0, best_c - 1, wait, best_kind, best_pos, '', fmt(best_at), fmt(now) })
end

-- Reserve in every budget of the chosen candidate, and keep each key alive while any of
-- its instants can still share a window with the future.
-- The counter outlives every member by far (a day after the last admission), so members
-- never repeat; refreshing it to the same TTL never shortens it.
local seq = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], SEQ_TTL_MS)
local member = fmt(best_at) .. '-' .. seq
for _, i in ipairs(cands[best_c].budgets) do
  local key = KEYS[4 + i]
  redis.call('ZADD', key, fmt(best_at), member)
  -- Extend (never shorten) to cover the new instant's window, with MARGIN_MS to spare so
  -- that most admissions need no PEXPIRE.
  local ttl = math.ceil((wait + lens[i]) / 1000) + MARGIN_MS
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl + MARGIN_MS)
  end
end
return usage({ 1, best_c - 1, wait, best_kind, best_pos, member, fmt(best_at), fmt(now) })
