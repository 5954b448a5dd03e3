"""The Redis store's Lua scripts and the helpers that read their replies.

Each script is one atomic step on the server (see :mod:`satchel.stores.redis`
for the key layout); :class:`_Script` runs it by its SHA-1.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from .. import _json
from .base import MOVE_NOTE_SECONDS, Record

# KEYS: the record written; the record read (the same, but for a move: the old
# one); the lock the fence names (the read record's); the read record's move note
# (see _KILL); an owner's set, if any.
# ARGV: mode (u update, c create, m move), fence token or '', expiry (unix ms),
# size limit or '', the set's member and deadline (unix ms), then counted lists:
# the delete-if-only names (-1: none), the names to delete, the expectations
# (name, '1' and the bytes it must hold, or '0' and '' for absent), then the
# name/value pairs to set. Replies {code} or {9, size}: codes as SaveResult,
# 9 too large.
_SAVE = """
local target, source, lock, note, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local mode, fence = ARGV[1], ARGV[2]
if fence ~= '' and redis.call('GET', lock) ~= fence then return {3} end
if redis.call('EXISTS', target) == (mode == 'u' and 0 or 1) then return {0} end
-- A create whose key a revoke ended first (a Cluster's move, half done) stays ended.
if mode == 'c' and redis.call('EXISTS', note) == 1 then return {0} end
if mode == 'm' and redis.call('EXISTS', source) == 0 then return {0} end
local i = 7
local only
local n = tonumber(ARGV[i])
i = i + 1
if n >= 0 then
  only = {}
  for j = i, i + n - 1 do only[ARGV[j]] = true end
  i = i + n
end
n = tonumber(ARGV[i])
local first_delete, last_delete = i + 1, i + n
i = i + n + 1
n = tonumber(ARGV[i])
local first_expect, last_expect = i + 1, i + 3 * n
for j = first_expect, last_expect, 3 do
  local stored = redis.call('HGET', source, ARGV[j])
  if ARGV[j + 1] == '1' then
    if stored ~= ARGV[j + 2] then return {4} end
  elseif stored then
    return {4}
  end
end
local first_set = i + 3 * n + 1
local limit = tonumber(ARGV[4])
local size = 0
if limit then
  local before = 0
  if mode ~= 'c' then
    local stored = redis.call('HGET', source, 'm:s')
    if stored then
      before = tonumber(stored)
    else
      local all = redis.call('HGETALL', source)
      for j = 1, #all, 2 do
        if string.sub(all[j], 1, 2) == 'd:' then before = before + #all[j] - 2 + #all[j + 1] end
      end
    end
    local seen = {}
    for j = first_delete, last_delete do seen[ARGV[j]] = true end
    for j = first_set, #ARGV, 2 do seen[ARGV[j]] = true end
    -- What a changed field holds now: an expectation that held says already
    -- (its length, or false: absent); else one call (two for an absent field).
    local known = {}
    for j = first_expect, last_expect, 3 do
      known[ARGV[j]] = ARGV[j + 1] == '1' and #ARGV[j + 2] or false
    end
    size = before
    for name in pairs(seen) do
      if string.sub(name, 1, 2) == 'd:' then
        local held = known[name]
        if held == nil then
          held = redis.call('HSTRLEN', source, name)
          if held == 0 and redis.call('HEXISTS', source, name) == 0 then held = false end
        end
        if held then size = size - (#name - 2) - held end
      end
    end
  end
  for j = first_set, #ARGV, 2 do
    if string.sub(ARGV[j], 1, 2) == 'd:' then size = size + #ARGV[j] - 2 + #ARGV[j + 1] end
  end
  if size > limit and size > before then return {9, size} end
end
-- unpack() takes a few thousand values at most: go in even-sized chunks.
local function each(command, values, first, last)
  for j = first, last, 1000 do
    redis.call(command, target, unpack(values, j, math.min(j + 999, last)))
  end
end
if mode == 'm' then
  local all = redis.call('HGETALL', source)
  each('HSET', all, 1, #all)
  redis.call('DEL', source)
  redis.call('HDEL', target, 'm:o', 'm:x')  -- a move takes these from its change
end
each('HDEL', ARGV, first_delete, last_delete)
if limit and #ARGV - first_set < 998 then  -- the size in the same call as the fields
  redis.call('HSET', target, 'm:s', size, unpack(ARGV, first_set, #ARGV))
else
  each('HSET', ARGV, first_set, #ARGV)
  if limit then redis.call('HSET', target, 'm:s', size) else redis.call('HDEL', target, 'm:s') end
end
if only then
  local empty = true
  for _, name in ipairs(redis.call('HKEYS', target)) do
    if string.sub(name, 1, 2) == 'd:' and not only[name] then
      empty = false
      break
    end
  end
  if empty then
    redis.call('DEL', target)
    return {2}
  end
end
if mode == 'm' then redis.call('SET', note, target, 'PX', '@NOTE_MS@') end
redis.call('PEXPIREAT', target, ARGV[3])
if index then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('ZADD', index, now_ms, ARGV[5])
  local deadline = tonumber(ARGV[6])
  local ttl = redis.call('PTTL', index)
  if ttl < 0 or now_ms + ttl < deadline then redis.call('PEXPIREAT', index, deadline) end
end
redis.call('EXISTS', target)  -- read last: a tracking caller keeps tracking it (see _tracking)
return {1}
"""

# A plain create (no owner, fence, expectation or deletion; its size already checked
# by the caller): the _SAVE script's create with none of its bookkeeping (server time
# for a 2 KB session, INFO commandstats: 25 µs against 34; the HSET of the fields
# from Lua is most of what is left, 10 µs over the same HSET sent as a command).
# KEYS: the record, its move note (see _SAVE); ARGV: the expiry (unix ms), then the
# name/value pairs. Replies as _SAVE: {0} the key is taken or ended, {1} saved.
_CREATE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return {0} end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
redis.call('EXISTS', KEYS[1])  -- read last: a tracking caller keeps tracking it
return {1}
"""

# A Cluster's half of a move, on the old record's slot: check the fence, then
# return the whole hash, delete it and leave a note of where it goes (ARGV[2]).
# KEYS: the record, its lock, its note. Replies {0} gone, {3} fenced, {1, hash}.
_TAKE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return {3} end
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return {0} end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[3], ARGV[2], 'PX', '@NOTE_MS@')
return {1, all}
"""

# Puts back a record a Cluster's move took but could not finish, unless a revoke
# ended it meanwhile (its note no longer names the move's target, ARGV[1]).
# KEYS: the record, its note; ARGV: the target, the expiry (unix ms), the hash's pairs.
_RESTORE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"""

# A Cluster's revoke ends records with this: KEYS are pairs of a record and its
# note. Each record is deleted and its note set so that a move of it that is half
# done cannot finish: '!' once it ended, '?' where nothing had arrived yet (the
# create of a move under way, which the note now refuses). Replies per pair: {1}
# it was live, {2, the target's name} it had moved there (the caller ends that
# one too), {3} nothing had arrived, {0} it had ended already.
_KILL = """
local out = {}
for i = 1, #KEYS, 2 do
  local note = redis.call('GET', KEYS[i + 1])
  if redis.call('DEL', KEYS[i]) == 1 then
    redis.call('SET', KEYS[i + 1], '!', 'PX', '@NOTE_MS@')
    out[#out + 1] = {1}
  elseif note == '!' then
    out[#out + 1] = {0}
  elseif note and note ~= '?' then
    redis.call('SET', KEYS[i + 1], '!', 'PX', '@NOTE_MS@')
    out[#out + 1] = {2, note}
  else
    redis.call('SET', KEYS[i + 1], '?', 'PX', '@NOTE_MS@')
    out[#out + 1] = {3}
  end
end
return out
"""

_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'm:t', ARGV[1], 'm:e', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('EXISTS', KEYS[1])  -- read last, as in _SAVE
return 1
"""

# Adds a session key to its owner's set (a Cluster's create, before the record)
# and returns the owner's revocation epoch (see _BUMP); for a move (ARGV[3], the
# moved record's epoch), refuses with -1 when a revoke of the owner began since
# the record was stamped. ARGV: the member ('' for none), its deadline (unix ms),
# the moved record's epoch ('' for a create).
_INDEX = """
local epoch = tonumber(redis.call('ZSCORE', KEYS[1], '@epoch') or '0')
if ARGV[3] ~= '' and epoch > tonumber(ARGV[3]) then return -1 end
if ARGV[1] == '' then return epoch end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
local deadline = tonumber(ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or now_ms + ttl < deadline then redis.call('PEXPIREAT', KEYS[1], deadline) end
return epoch
"""

# A Cluster's revoke of an owner begins here, on their set's slot: the owner's
# epoch (the set's member '@epoch') goes up, so no move of a record stamped
# before it can finish (see _INDEX), and the members are returned, atomically:
# every session that moved before is listed, every later move is refused.
_BUMP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, {}} end
local epoch = redis.call('ZINCRBY', KEYS[1], 1, '@epoch')
return {epoch, redis.call('ZRANGE', KEYS[1], 0, -1)}
"""

# Stamps a record with its owner's epoch (the session a revoke keeps, on a Cluster).
_STAMP = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'm:g', ARGV[1]) end
return 1
"""

# One server's revoke, all in one script, so nothing moves meanwhile: the keys
# in ARGV (from the 3rd) and, with KEYS[1], every member of that owner's set,
# each followed through its move notes to where it lives, all but ARGV[2]'s.
# ARGV[1] is the prefix. Replies {how many live records ended, their names}.
_REVOKE = """
local prefix, keep = ARGV[1], ARGV[2]
local todo = {}
for i = 3, #ARGV do todo[#todo + 1] = ARGV[i] end
local members = {}
if KEYS[1] then
  members = redis.call('ZRANGE', KEYS[1], 0, -1)
  for _, member in ipairs(members) do todo[#todo + 1] = member end
end
local ended, gone = 0, {}
for _, key in ipairs(todo) do
  while key ~= keep and key ~= '@epoch' do
    local name = prefix .. 's:{' .. key .. '}'
    if redis.call('DEL', name) == 1 then
      ended = ended + 1
      gone[#gone + 1] = name
      break
    end
    local moved = redis.call('GET', prefix .. 'f:{' .. key .. '}')
    if not moved or moved == '!' then break end
    key = string.sub(moved, #prefix + 4, -2)
  end
end
for _, member in ipairs(members) do
  if member ~= keep and member ~= '@epoch' then redis.call('ZREM', KEYS[1], member) end
end
return {ended, gone}
"""

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: On a Cluster, an owner's set member with no record is pruned only this long
#: (ms) after it was added: its create may still be on its way.
CLUSTER_PRUNE_AFTER_MS = 60_000


def _glob(text: str) -> str:
    """``text`` with the characters SCAN's MATCH pattern treats specially escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _ms(seconds: float) -> int:
    """Whole milliseconds, at least 1: for unix times and for durations alike."""
    return max(int(seconds * 1000), 1)


def _record(raw: dict[bytes, bytes] | list[bytes]) -> Record | None:
    """The Record a session hash holds; None if missing, expired, half-written or foreign.

    ``raw`` is the hash as redis-py's ``hgetall`` gives it, or as the flat
    name, value, name, value list the server sends.
    """
    if not raw:
        return None
    if isinstance(raw, list):
        pairs = iter(raw)
        raw = dict(zip(pairs, pairs, strict=False))
    try:
        expires = float(raw[b"m:e"])
        if expires <= time.time():
            return None
        fields = {
            name[2:].decode("utf-8"): value for name, value in raw.items() if name[:2] == b"d:"
        }
        owner = raw[b"m:o"].decode("utf-8") if b"m:o" in raw else None
        meta = _json.loads(raw[b"m:x"]) if b"m:x" in raw else {}
        return Record(fields, float(raw[b"m:c"]), float(raw[b"m:t"]), expires, owner, meta)
    except (KeyError, ValueError):
        return None


class _Script:
    """A Lua script and its SHA-1, by which it is run (EVALSHA) once the server knows it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


_NOTE_MS = str(int(MOVE_NOTE_SECONDS * 1000))
SAVE, CREATE, TAKE, RESTORE, KILL, TOUCH, INDEX, BUMP, STAMP, REVOKE, ACQUIRE, RELEASE = (
    _Script(source.replace("@NOTE_MS@", _NOTE_MS))
    for source in (
        _SAVE, _CREATE, _TAKE, _RESTORE, _KILL, _TOUCH, _INDEX, _BUMP, _STAMP, _REVOKE,
        _ACQUIRE, _RELEASE,
    )
)  # fmt: skip
#: The scripts that change a session record: a fenced store pings after each.
_WRITES = frozenset({SAVE, CREATE, TAKE, RESTORE, KILL, TOUCH, REVOKE})
#: The member of an owner's set that holds their revocation epoch (never a store key).
EPOCH = "@epoch"


def _pairs(reply: Any) -> list[tuple[bytes, float]]:
    """ZRANGE ... WITHSCORES as (member, score) pairs, from a flat list or from pairs."""
    if reply and isinstance(reply[0], list | tuple):
        return [(member, float(score)) for member, score in reply]
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]
