-- The send rule, for a batch of messages: each goes to the inboxes of the live nodes that hold
-- a session of its receiver, and is stored when none does or when one acknowledges messages.
-- ARGV: prefix, cap, n, then per message: receiver, message, skip (comma-separated session ids,
-- or node ids, not to route to: the sessions that had it already, the connection that ended, a
-- dead node).
-- Returns per message: sessions handed to, stored (0/1), dropped by the cap.
local cap = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local now = now_ms()
local out = {}
local batches = {}
local order = {}
for i = 0, n - 1 do
  local uid = ARGV[4 + i * 3]
  local blob = ARGV[5 + i * 3]
  local skip_list = ARGV[6 + i * 3]
  local skip = {}
  for x in string.gmatch(skip_list, '[^,]+') do
    skip[x] = true
  end
  local fields = redis.call('HGETALL', P .. 's:' .. uid)
  local targets, tlist, sids, delivered, ack = {}, {}, {}, 0, false
  for j = 1, #fields, 2 do
    local sid = fields[j]
    if sid ~= '_v' then
      local nid = owner_of(sid)
      if nid and not skip[nid] and not skip[sid] and is_live(nid, now) then
        delivered = delivered + 1
        sids[#sids + 1] = sid
        if string.sub(fields[j + 1], 1, 1) == '1' then
          ack = true
        end
        if not targets[nid] then
          targets[nid] = true
          tlist[#tlist + 1] = nid
        end
      end
    end
  end
  local stored, dropped = 0, 0
  if #tlist == 0 or ack then
    local _
    _, dropped = store(uid, blob, cap, now)
    stored = 1
  end
  if #tlist > 0 then
    -- Each copy names every session that has had the message, so that a re-route skips them
    -- (and reaches a session bound since, on any node).
    local had = table.concat(sids, ',')
    if skip_list ~= '' then
      had = skip_list .. ',' .. had
    end
    local header = stored .. '|' .. had
    for _, nid in ipairs(tlist) do
      local b = batches[nid]
      if not b then
        b = {}
        batches[nid] = b
        order[#order + 1] = nid
      end
      b[#b + 1] = header
      b[#b + 1] = blob
    end
  end
  out[#out + 1] = delivered
  out[#out + 1] = stored
  out[#out + 1] = dropped
end
for _, nid in ipairs(order) do
  redis.call('XADD', inbox(nid), '*', 'k', 'm', unpack(batches[nid]))
end
return out
