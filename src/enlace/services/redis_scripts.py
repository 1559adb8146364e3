"""The chat hub's data in Redis, and the Lua scripts that change it atomically.

Every key starts with :data:`PREFIX`. ``ID`` is a server's random id, ``ROOM`` a
room name, ``KEY`` a :func:`~enlace.protocol.nicknames.nick_key`:

====================================  =========================================================
``enlace:room:ROOM:seq``              counter: the number of the room's latest event
``enlace:room:ROOM:history``          list: the room's last ``max_history`` kept events (JSON)
``enlace:room:ROOM:seqs``             list: the number of each event of the history, in step
``enlace:rooms``                      set: the rooms with history
``enlace:servers``                    set: the server ids that registered (pruned when dead)
``enlace:server:ID``                  ``1`` while server ID lives (expires without heartbeat)
``enlace:server:ID:members``          hash: session -> ``ROOM<TAB>NICK`` (expires likewise)
``enlace:server:ID:nicks``            set: the nick keys server ID holds (expires likewise)
``enlace:nick:KEY``                   ``ID<TAB>SESSION<TAB>NICK``: who holds the nick
``enlace:guests``                     counter: the last guest number handed out
====================================  =========================================================

Channels: ``enlace:events`` carries every room event as ``SEQ<TAB>ROOM<TAB>KEEP``,
a newline, then the event's JSON; ``enlace:server:ID:inbox`` carries private
messages for server ID's sessions as ``SESSION<TAB>NICK``, a newline, the JSON.
Room names and nicks never contain a tab or a newline, so the headers parse
unambiguously. Scripts name some keys they compute, which Redis Cluster
forbids: the hub needs a standalone Redis (6.2 or newer).

The history and its numbers are pushed and trimmed together, so their tails
always match; a history older than the numbers (kept by an earlier enlace) has
entries without a number at its head, which ``recover`` never reads. Every
server of one hub must run the same enlace: one that pushes history without
numbers would put the two out of step.
"""

from __future__ import annotations

__all__ = ["PREFIX", "SCRIPTS"]

#: The start of every key and channel.
PREFIX = "enlace:"

# KEYS: seq, history, rooms, seqs. ARGV: room, event, keep (0/1), max_history, channel.
_POST = """
local seq = redis.call('INCR', KEYS[1])
local max = tonumber(ARGV[4])
if ARGV[3] == '1' and max > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], -max, -1)
  redis.call('RPUSH', KEYS[4], seq)
  redis.call('LTRIM', KEYS[4], -max, -1)
  redis.call('SADD', KEYS[3], ARGV[1])
end
redis.call('PUBLISH', ARGV[5], seq .. '\t' .. ARGV[1] .. '\t' .. ARGV[3] .. '\\n' .. ARGV[2])
return seq
"""

# KEYS: seq, history, members. ARGV: room, count, session, presence, joined, channel,
# ttl (ms).
_ENTER = """
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
local kept = {}
local count = tonumber(ARGV[2])
if count > 0 then kept = redis.call('LRANGE', KEYS[2], -count, -1) end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[7])
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[6], seq .. '\t' .. ARGV[1] .. '\t0\\n' .. ARGV[5])
return {before, kept}
"""

# KEYS: seq, history, seqs. ARGV: a number. Returns the room's current number, then the
# number and event of each event of the history numbered above ARGV[1], oldest first: all
# the numbers are read (they are small), and only the events returned.
_RECOVER = """
local out = {tonumber(redis.call('GET', KEYS[1]) or '0')}
local after = tonumber(ARGV[1])
local seqs = redis.call('LRANGE', KEYS[3], 0, -1)
local n = #seqs
local oldest = n - math.min(n, redis.call('LLEN', KEYS[2])) + 1
local first = n + 1
while first > oldest and tonumber(seqs[first - 1]) > after do first = first - 1 end
if first <= n then
  local events = redis.call('LRANGE', KEYS[2], first - n - 1, -1)
  for i, event in ipairs(events) do
    out[#out + 1] = seqs[first + i - 1]
    out[#out + 1] = event
  end
end
return out
"""

# KEYS: nick, members, nicks of this server, old nick. ARGV: server id, record,
# server key prefix, session, presence ('' for none), ttl (ms), owner prefix (id TAB
# session TAB).
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local owner = string.match(current, '^[^\t]*')
  if owner ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. owner) == 1 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[3], KEYS[1])
if KEYS[4] ~= KEYS[1] then
  local old = redis.call('GET', KEYS[4])
  if old and string.sub(old, 1, #ARGV[7]) == ARGV[7] then
    redis.call('DEL', KEYS[4])
    redis.call('SREM', KEYS[3], KEYS[4])
  end
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], ARGV[4], ARGV[5]) end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return 1
"""

# KEYS: nick, nicks of this server. ARGV: owner prefix.
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], KEYS[1])
end
return 1
"""

# KEYS: alive, servers, members, nicks of this server. ARGV: server id, ttl (ms), server key
# prefix, then (session, nick key, record, presence) for each session. Returns the
# sessions whose nick a living server holds.
_REGISTER = """
local id, ttl = ARGV[1], ARGV[2]
redis.call('SET', KEYS[1], '1', 'PX', ttl)
redis.call('SADD', KEYS[2], id)
redis.call('DEL', KEYS[3])
local held, lost = {}, {}
for i = 4, #ARGV, 4 do
  if ARGV[i + 3] ~= '' then redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 3]) end
  local current = redis.call('GET', ARGV[i + 1])
  local owner = current and string.match(current, '^[^\t]*')
  if owner and owner ~= id and redis.call('EXISTS', ARGV[3] .. owner) == 1 then
    lost[#lost + 1] = ARGV[i]
  else
    redis.call('SET', ARGV[i + 1], ARGV[i + 2])
    held[ARGV[i + 1]] = true
  end
end
local mine = id .. '\t'
for _, key in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if not held[key] then
    local current = redis.call('GET', key)
    if current and string.sub(current, 1, #mine) == mine then redis.call('DEL', key) end
    redis.call('SREM', KEYS[4], key)
  end
end
for key in pairs(held) do redis.call('SADD', KEYS[4], key) end
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('PEXPIRE', KEYS[4], ttl)
return lost
"""

# KEYS: alive, servers, members, nicks of this server. ARGV: server id.
_UNREGISTER = """
local mine = ARGV[1] .. '\t'
for _, key in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local current = redis.call('GET', key)
  if current and string.sub(current, 1, #mine) == mine then redis.call('DEL', key) end
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: servers, rooms. ARGV: server key prefix, room ('' for every room's count).
# Returns the room's nicks, or room, count, room, count...
_PRESENCE = """
local counts, nicks = {}, {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    redis.call('SREM', KEYS[1], id)
  else
    for _, entry in ipairs(redis.call('HVALS', ARGV[1] .. id .. ':members')) do
      local tab = string.find(entry, '\t', 1, true)
      local room = string.sub(entry, 1, tab - 1)
      if ARGV[2] == '' then
        counts[room] = (counts[room] or 0) + 1
      elseif room == ARGV[2] then
        nicks[#nicks + 1] = string.sub(entry, tab + 1)
      end
    end
  end
end
if ARGV[2] ~= '' then return nicks end
for _, room in ipairs(redis.call('SMEMBERS', KEYS[2])) do counts[room] = counts[room] or 0 end
local flat = {}
for room, count in pairs(counts) do
  flat[#flat + 1] = room
  flat[#flat + 1] = count
end
return flat
"""

# KEYS: nick. ARGV: server key prefix, event. Returns the holder's nick, or nil.
_PRIVATE = """
local current = redis.call('GET', KEYS[1])
if not current then return false end
local id, session, nick = string.match(current, '^([^\t]*)\t([^\t]*)\t(.*)$')
if not id or redis.call('EXISTS', ARGV[1] .. id) == 0 then return false end
redis.call('PUBLISH', ARGV[1] .. id .. ':inbox', session .. '\t' .. nick .. '\\n' .. ARGV[2])
return nick
"""

# KEYS: guests. ARGV: the highest number this server handed out, block size. After
# Redis lost its data the counter restarts above what is still in use here.
_GUESTS = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('INCRBY', KEYS[1], ARGV[2])
"""

SCRIPTS = {
    "post": _POST, "enter": _ENTER, "recover": _RECOVER, "claim": _CLAIM, "release": _RELEASE,
    "register": _REGISTER, "unregister": _UNREGISTER, "presence": _PRESENCE, "private": _PRIVATE,
    "guests": _GUESTS,
}  # fmt: skip
