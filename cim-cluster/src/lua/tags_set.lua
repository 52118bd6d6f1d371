-- Sets node ARGV[2]'s tag counts again (after Redis lost them): ARGV[3..] are tag, count pairs.
local nid = ARGV[2]
local mine = P .. 'n:' .. nid .. ':t'
for i = 3, #ARGV, 2 do
  redis.call('HSET', P .. 't:' .. ARGV[i], nid, ARGV[i + 1])
  redis.call('HSET', mine, ARGV[i], ARGV[i + 1])
end
return 1
