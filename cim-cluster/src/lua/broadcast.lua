-- A message for every connection: one inbox entry per live node. ARGV: prefix, message.
-- Returns the sessions it went to.
local now = now_ms()
local nodes = redis.call('ZRANGEBYSCORE', P .. 'nodes', '(' .. now, '+inf')
local delivered = 0
for _, nid in ipairs(nodes) do
  redis.call('XADD', inbox(nid), '*', 'k', 'b', 'p', ARGV[2])
  delivered = delivered + tonumber(redis.call('ZSCORE', P .. 'conns', nid) or '0')
end
return delivered
