-- Deletes ARGV[2]'s stored messages stored before ARGV[3] (ms). Returns how many.
local uid, cut = ARGV[2], tonumber(ARGV[3])
local q = P .. 'q:' .. uid
local total, last = 0, nil
local start = '-'
while true do
  local page = redis.call('XRANGE', q, start, '+', 'COUNT', 100)
  local stop = #page < 100
  for _, e in ipairs(page) do
    local f = e[2]
    local t = 0
    for i = 1, #f, 2 do
      if f[i] == 't' then
        t = tonumber(f[i + 1])
      end
    end
    if t < cut then
      total = total + 1
      last = e[1]
    else
      stop = true
      break
    end
  end
  if stop or #page == 0 then
    break
  end
  start = '(' .. page[#page][1]
end
if last then
  local seq = tonumber(string.match(last, '^(%d+)'))
  redis.call('XTRIM', q, 'MINID', (seq + 1) .. '-0')
end
if redis.call('XLEN', q) == 0 then
  redis.call('DEL', q)
  redis.call('SREM', P .. 'qidx', uid)
end
return total
