-- Sessions on live nodes. ARGV: prefix.
local now = now_ms()
local nodes = redis.call('ZRANGEBYSCORE', P .. 'nodes', '(' .. now, '+inf')
local total = 0
for _, nid in ipairs(nodes) do
  total = total + tonumber(redis.call('ZSCORE', P .. 'conns', nid) or '0')
end
return total
