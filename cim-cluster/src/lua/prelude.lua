-- Shared by every script of cim-cluster. ARGV[1] is the key prefix; keys are built here (one
-- standalone Redis: every key lives on the one server).
local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The node part of a session id `<nid>/<connection id>`.
local function owner_of(sid)
  return string.match(sid, '^(.+)/[^/]+$')
end

local live_cache = {}
-- Whether node `nid` is registered and its deadline has not passed.
local function is_live(nid, now)
  local v = live_cache[nid]
  if v == nil then
    local s = redis.call('ZSCORE', P .. 'nodes', nid)
    v = (s and tonumber(s) > now) and true or false
    live_cache[nid] = v
  end
  return v
end

local function inbox(nid)
  return P .. 'n:' .. nid .. ':in'
end

-- Counts a session of `uid` on `nid` in or out (only while the node is registered: the counts
-- of a reaped node are gone with it).
local function counted(nid, uid, delta)
  if not redis.call('ZSCORE', P .. 'nodes', nid) then
    return
  end
  redis.call('ZINCRBY', P .. 'conns', delta, nid)
  redis.call('ZINCRBY', P .. 'load', delta, nid)
  local u = P .. 'n:' .. nid .. ':u'
  if redis.call('HINCRBY', u, uid, delta) <= 0 then
    redis.call('HDEL', u, uid)
  end
end

-- After a change to an account's sessions: a fresh version (never reused), or the key deleted
-- when no session is left.
local function touch(key)
  if redis.call('HLEN', key) <= 1 then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, '_v', redis.call('INCR', P .. 'ver'))
  end
end

-- Appends a message to `uid`'s stored queue (stream ids `<seq>-0`); drops the oldest beyond
-- `cap`. Returns the sequence and how many were dropped.
local function store(uid, blob, cap, now)
  local q = P .. 'q:' .. uid
  local seq = redis.call('INCR', P .. 'qn:' .. uid)
  redis.call('XADD', q, seq .. '-0', 'm', blob, 't', now)
  local dropped = 0
  if redis.call('XLEN', q) > cap then
    dropped = redis.call('XTRIM', q, 'MAXLEN', cap)
  end
  redis.call('SADD', P .. 'qidx', uid)
  return seq, dropped
end
