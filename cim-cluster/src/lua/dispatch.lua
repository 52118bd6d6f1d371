-- The node a new client should connect to: of the live nodes that are not draining, the least
-- loaded; when the next least loaded is within one connection of it, one of the two picked by
-- ARGV[2] (0 or 1). A node that has missed two heartbeats (killed, most likely, but not yet
-- past its deadline), and the node named ARGV[3] (one the client just lost or could not reach;
-- empty: none), are passed over while any other qualifies. A slot is reserved on the node
-- named (its load goes up by one until its next heartbeat). Returns {nid, name, tcp, websocket,
-- http, tls, wss, xml}, or nothing when no node qualifies.
local now = now_ms()
local c, silent = {}, {}
for _, nid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'nodes', '(' .. now, '+inf')) do
  local h = redis.call('HMGET', P .. 'node:' .. nid, 'draining', 'beat', 'every', 'name')
  if h[1] ~= '1' then
    local entry = { nid, tonumber(redis.call('ZSCORE', P .. 'load', nid) or '0') }
    local beat, every = tonumber(h[2]), tonumber(h[3])
    if (beat and every and now - beat > 2 * every) or (ARGV[3] ~= '' and h[4] == ARGV[3]) then
      silent[#silent + 1] = entry
    else
      c[#c + 1] = entry
    end
  end
end
if #c == 0 then
  c = silent
end
if #c == 0 then
  return {}
end
table.sort(c, function(a, b)
  if a[2] == b[2] then
    return a[1] < b[1]
  end
  return a[2] < b[2]
end)
local pick = c[1]
if #c > 1 and c[2][2] - c[1][2] <= 1 and ARGV[2] == '1' then
  pick = c[2]
end
redis.call('ZINCRBY', P .. 'load', 1, pick[1])
local h = redis.call('HMGET', P .. 'node:' .. pick[1], 'name', 'tcp', 'websocket', 'http', 'tls',
  'wss', 'xml')
return { pick[1], h[1] or '', h[2] or '', h[3] or '', h[4] or '', h[5] or '', h[6] or '',
  h[7] or '' }
