"""A store on Redis or Valkey through redis-py: one hash per session.

A session is one hash, ``<prefix>s:{<hashed ID>}``: ``d:<name>`` fields hold
the values; ``m:c``, ``m:t`` and ``m:e`` the created, last-seen and expiry
times; ``m:o`` and ``m:x`` the owner and client details; ``m:s`` the size the
limit counts. The key expires with the session. Every save is one Lua script
call, so it is atomic and costs one round trip: it checks that the record is
(or is not) there, that a strict-mode lock is still held and that the size
limit holds, all against the hash as stored, then applies the change. Each
owner has a sorted set ``<prefix>i:<owner>`` of their sessions' keys, scored by
when each was added, that expires when its longest-lived member can.

On one server, a create adds its key to the owner's set in the same script,
and ``regenerate()`` moves a record to its new key in one script too. On a
Cluster those keys live in different slots, so the set is written first, and a
move takes the old record (checking and deleting it in one script on its
slot) before it creates the new one; a listing prunes a member without a
record only once it is older than a minute, so it never removes the entry of
a create still on its way. Strict-mode locks are ``<prefix>l:{<hashed ID>}``,
in the same slot as their session.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import hiredis

from .._steps import Steps, drive, drive_async
from ..errors import ConfigError, SessionTooLarge, StoreUnavailable
from ._connections import ConnectionList
from ._resp import RespConnection, RespError, address
from ._tracking import CacheStats, ClusterTracking, TrackingConnection, parse_size
from .base import MOVE_NOTE_SECONDS, Change, Conflict, Record, SaveResult, apply_change

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["AsyncRedisStore", "RedisStore"]

_log = logging.getLogger("satchel")

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
for j = i + 1, i + 3 * n, 3 do
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
    size = before
    for name in pairs(seen) do
      if string.sub(name, 1, 2) == 'd:' and redis.call('HEXISTS', source, name) == 1 then
        size = size - (#name - 2) - redis.call('HSTRLEN', source, name)
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
each('HSET', ARGV, first_set, #ARGV)
if limit then redis.call('HSET', target, 'm:s', size) else redis.call('HDEL', target, 'm:s') end
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
        meta = json.loads(raw[b"m:x"]) if b"m:x" in raw else {}
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
SAVE, TAKE, RESTORE, KILL, TOUCH, INDEX, BUMP, STAMP, REVOKE, ACQUIRE, RELEASE = (
    _Script(source.replace("@NOTE_MS@", _NOTE_MS))
    for source in (
        _SAVE, _TAKE, _RESTORE, _KILL, _TOUCH, _INDEX, _BUMP, _STAMP, _REVOKE, _ACQUIRE, _RELEASE
    )
)  # fmt: skip
#: The scripts that change a session record: a fenced store pings after each.
_WRITES = frozenset({SAVE, TAKE, RESTORE, KILL, TOUCH, REVOKE})
#: The member of an owner's set that holds their revocation epoch (never a store key).
EPOCH = "@epoch"

#: How the cache works out a record after this process's write: (reply, cached before) → record.
Derive = Callable[[Any, Record | None], Record | None]

#: A store step's call: ("call", *command), ("script", _Script, keys, args),
#: ("pipe", [command, ...]) for replies in order, or ("scan", pattern) for key names.
Op = tuple[Any, ...]


def _pairs(reply: Any) -> list[tuple[bytes, float]]:
    """ZRANGE ... WITHSCORES as (member, score) pairs, from a flat list or from pairs."""
    if reply and isinstance(reply[0], list | tuple):
        return [(member, float(score)) for member, score in reply]
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]


def _check_client(client: Any) -> bool:
    """Refuse a client that decodes replies; whether it is a Cluster client."""
    if client.get_connection_kwargs().get("decode_responses"):
        raise ConfigError("a Redis store needs a client made with decode_responses=False")
    return type(client).__name__ == "RedisCluster"


def _split_cluster(url: str) -> tuple[str, bool]:
    """The URL redis-py takes, and whether it names a Cluster (``redis+cluster://``)."""
    scheme, rest = url.split("://", 1)
    cluster = scheme.endswith("+cluster")
    return scheme.removesuffix("+cluster") + "://" + rest, cluster


class _RedisRules:
    """What the sync and async Redis stores share: key names and the steps of each call.

    Each operation with more than one command, or with rules, is a generator
    of :data:`Op` (see :mod:`satchel._steps`), run by :class:`RedisStore`
    with redis-py and by :class:`AsyncRedisStore` with ``redis.asyncio``.
    """

    prefix: str
    client: Any
    _cluster: bool
    _prune_after_ms: int
    #: The server expires records itself (each key carries its expiry), so
    #: :meth:`purge_expired` has nothing to remove.
    expires_by_itself = True

    # Three namespaces under the prefix: s: session hashes, l: strict-mode
    # locks, i: each owner's sorted set of session keys.
    # The braces are a cluster hash tag: a session's hash and its lock share a slot.
    def _key(self, key: str) -> str:
        return f"{self.prefix}s:{{{key}}}"

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}l:{{{key}}}"

    def _owner_key(self, owner: str) -> str:
        return f"{self.prefix}i:{owner}"

    def _note_key(self, key: str) -> str:
        """Where a moved (or revoked) record's note lives, in its record's slot."""
        return f"{self.prefix}f:{{{key}}}"

    def _store_key(self, name: bytes | str) -> str:
        """The store key in a record's name (``<prefix>s:{<key>}``)."""
        text = name.decode() if isinstance(name, bytes) else name
        return text[len(self.prefix) + 3 : -1]

    def __repr__(self) -> str:
        client: Any = self.client
        if self._cluster:
            nodes = client.get_nodes()
            where = f"cluster at {nodes[0].name}" if nodes else "cluster"
        else:
            kwargs = client.get_connection_kwargs()
            where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        tail = f", prefix={self.prefix!r})" if self.prefix != "satchel:" else ")"
        return f"{type(self).__name__}({where!r}{tail}"

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(repr(self), f"{type(exc).__name__}: {exc}")

    def _save_steps(self, key: str, change: Change, create: bool) -> Steps[SaveResult]:
        """Apply ``change`` with one script call (a Cluster's move and owned create: two)."""
        index: list[str] = []
        member: list[Any] = ["", 0]
        pairs: list[Any] = []
        if create:
            pairs += ("m:c", repr(change.created_at))
            if change.meta:
                pairs += ("m:x", json.dumps(dict(change.meta), ensure_ascii=False))
            if change.owner is not None:
                pairs += ("m:o", change.owner)
                until = _ms(max(change.ends_by, change.expires_at))
                member = [key, until]
                if self._cluster and change.replaces is None:
                    # Another slot: indexed first, never pruned too early.
                    epoch = yield ("script", INDEX, [self._owner_key(change.owner)], [*member, ""])
                    pairs += ("m:g", epoch)
                elif not self._cluster:
                    index = [self._owner_key(change.owner)]
        if create and change.replaces is not None and self._cluster:
            return (yield from self._move_across_slots_steps(key, change, pairs, member))
        pairs += ("m:t", repr(change.touched_at), "m:e", repr(change.expires_at))
        for name, value in change.set.items():
            pairs += ("d:" + name, value)
        source = change.replaces if create and change.replaces is not None else key
        mode = "u" if not create else "c" if change.replaces is None else "m"
        keys = [
            self._key(key), self._key(source), self._lock_key(source), self._note_key(source),
            *index,
        ]  # fmt: skip
        args: list[Any] = [
            mode,
            change.fence or "",
            _ms(change.expires_at),
            "" if change.max_size is None else change.max_size,
            *member,
        ]
        if change.delete_if_only is None:
            args.append(-1)
        else:
            args += (len(change.delete_if_only), *("d:" + n for n in change.delete_if_only))
        args.append(len(change.delete))
        args += ["d:" + name for name in change.delete]
        expect = change.expect or {}
        args.append(len(expect))
        for name, expected in expect.items():
            args += ("d:" + name, "0", "") if expected is None else ("d:" + name, "1", expected)
        reply = yield ("script", SAVE, keys, args + pairs)
        if reply[0] == 9:
            raise SessionTooLarge(int(reply[1]), change.max_size or 0)
        return SaveResult(reply[0])

    def _move_across_slots_steps(
        self, key: str, change: Change, pairs: list[Any], member: list[Any]
    ) -> Steps[SaveResult]:
        """A Cluster's move: take the old record (one script on its slot), then create anew.

        The take checks the fence and deletes the old record atomically, leaving
        a note of where it goes, so a session ended meanwhile is never recreated
        and a revoke that finds the old key follows it; what a request saved
        between the take and the create is refused, as after any regenerate().
        An owned record's move then asks its owner's set whether a revoke of the
        owner began since the record was stamped (and is refused if so), and the
        new key joins the new owner's set before it is created.
        """
        assert change.replaces is not None
        old = self._key(change.replaces)
        lock = self._lock_key(change.replaces)
        note = self._note_key(change.replaces)
        target = self._key(key)
        reply = yield ("script", TAKE, [old, lock, note], [change.fence or "", target])
        if reply[0] != 1:
            return SaveResult(reply[0])
        base = _record(reply[1])
        if base is None:
            return SaveResult.REFUSED
        try:
            result = apply_change(base, change)
        except Conflict:
            if not (yield from self._restore_steps(change.replaces, target, reply[1], base)):
                return SaveResult.REFUSED  # revoked meanwhile
            return SaveResult.CONFLICT
        except SessionTooLarge:
            yield from self._restore_steps(change.replaces, target, reply[1], base)
            raise
        if result is None:
            return SaveResult.DELETED
        stamped = dict(zip(reply[1][::2], reply[1][1::2], strict=True)).get(b"m:g", b"0")
        epoch = None
        if base.owner is not None:
            mine = [*member, stamped] if base.owner == change.owner else ["", 0, stamped]
            epoch = yield ("script", INDEX, [self._owner_key(base.owner)], mine)
            if epoch == -1:
                return SaveResult.REFUSED  # its owner's sessions are being revoked
        if change.owner is not None and change.owner != base.owner:
            epoch = yield ("script", INDEX, [self._owner_key(change.owner)], [*member, ""])
        if change.owner is not None:
            pairs += ("m:g", epoch)
        pairs += ("m:t", repr(result.touched_at), "m:e", repr(result.expires_at))
        for name, value in result.fields.items():
            pairs += ("d:" + name, value)
        keys = [target, target, self._lock_key(key), self._note_key(key)]
        args: list[Any] = ["c", "", _ms(result.expires_at), "", "", 0, -1, 0, 0]
        return SaveResult((yield ("script", SAVE, keys, args + pairs))[0])

    def _restore_steps(self, key: str, target: str, raw: list[bytes], base: Record) -> Steps[bool]:
        """Put back a record taken by a move that could not complete; False if revoked."""
        keys = self._record_and_note(key)
        return bool((yield ("script", RESTORE, keys, [target, _ms(base.expires_at), *raw])))

    def _revoke_steps(
        self, keys: Collection[str], owner: str | None, keep: str | None
    ) -> Steps[int]:
        """End records and follow their move notes to where they went.

        On one server this is one script (:data:`_REVOKE`), so no move runs
        meanwhile. On a Cluster a revoke of an owner first raises the owner's
        epoch (:data:`_BUMP`), so every move of theirs that has not reached its
        owner's set yet is refused and every one that has is listed; the kept
        session is stamped with the new epoch; then every listed record (a
        member without a record yet may be a create on its way: its note stops
        it) is ended with :data:`_KILL`, and each note followed, round by round.
        """
        if not self._cluster:
            index = [] if owner is None else [self._owner_key(owner)]
            reply = yield ("revoke", index, [self.prefix, keep or "", *keys])
            return int(reply[0])
        todo = list(keys)
        members: list[str] = []
        if owner is not None:
            epoch, found = yield ("script", BUMP, [self._owner_key(owner)], [])
            members = [m.decode() for m in found if m != EPOCH.encode()]
            todo += members
            if keep is not None:
                yield ("script", STAMP, [self._key(keep)], [epoch])
        # A session counts once, where its chain ends: live there, or (reached
        # through a note) caught between the two halves of its move.
        ended: set[str] = set()
        followed: set[str] = set()
        while batch := [key for key in dict.fromkeys(todo) if key != keep]:
            todo = []
            for key, reply in zip(batch, (yield ("kill", batch)), strict=True):
                if reply[0] == 1 or (reply[0] == 3 and key in followed):
                    ended.add(key)
                elif reply[0] == 2:
                    target = self._store_key(reply[1])
                    followed.add(target)
                    todo.append(target)
        gone = [member for member in members if member != keep]
        if gone:
            yield ("call", "ZREM", self._owner_key(owner or ""), *gone)
        return len(ended)

    def _record_and_note(self, key: str) -> list[str]:
        """A record's name and its note's (one slot): the keys of KILL and RESTORE."""
        return [self._key(key), self._note_key(key)]

    def _touch_op(self, key: str, touched_at: float, expires_at: float) -> Op:
        args = [repr(touched_at), repr(expires_at), _ms(expires_at)]
        return ("script", TOUCH, [self._key(key)], args)

    def _owner_records_steps(self, owner: str) -> Steps[list[tuple[str, Record]]]:
        """An owner's live records, from their set; members with no record are pruned."""
        owner_key = self._owner_key(owner)
        members = _pairs((yield ("call", "ZRANGE", owner_key, 0, -1, "WITHSCORES")))
        added = {member.decode(): score for member, score in members if member != EPOCH.encode()}
        old = time.time() * 1000 - self._prune_after_ms
        gone, found = [], []
        for key, record in (yield from self._fetch_steps(sorted(added))):
            if record is None:
                if added[key] <= old:
                    gone.append(key)
            elif record.owner == owner:
                found.append((key, record))
        if gone:
            yield ("call", "ZREM", owner_key, *gone)
        return found

    def _references_steps(self, start: str) -> Steps[list[str]]:
        """The keys of live records that begin with ``start``, by SCAN (no record is read)."""
        begin = len(self._key("")) - 1  # the name without its closing brace
        pattern = _glob(self.prefix + "s:{" + start) + "*"
        names = yield ("scan", pattern)
        texts = [name.decode() for name in names]
        return [name[begin:-1] for name in texts if name.endswith("}")]

    def _fetch_steps(self, keys: list[str]) -> Steps[list[tuple[str, Record | None]]]:
        """Each key with its live record (or None), 500 HGETALLs to a pipeline."""
        found: list[tuple[str, Record | None]] = []
        for first in range(0, len(keys), 500):
            batch = keys[first : first + 500]
            hashes = yield ("pipe", [("HGETALL", self._key(key)) for key in batch])
            found += [(key, _record(raw)) for key, raw in zip(batch, hashes, strict=True)]
        return found

    def _all_records_steps(self) -> Steps[list[tuple[str, Record]]]:
        keys = yield from self._references_steps("")
        fetched = yield from self._fetch_steps(keys)
        return [(key, record) for key, record in fetched if record is not None]

    def _count_steps(self) -> Steps[tuple[int, int]]:
        """How many live records there are, and how many distinct owners they have.

        Reads two fields per record, 500 records a round trip, never whole records.
        """
        keys = yield from self._references_steps("")
        live, owners = 0, set()
        now = time.time()
        for first in range(0, len(keys), 500):
            batch = keys[first : first + 500]
            rows = yield ("pipe", [("HMGET", self._key(key), "m:e", "m:o") for key in batch])
            for expires, owner in rows:
                if expires is not None and float(expires) > now:
                    live += 1
                    if owner is not None:
                        owners.add(owner)
        return live, len(owners)

    @staticmethod
    def _policy_problem(reply: Any, where: str) -> str | None:
        found = dict(reply)
        policy = found.get(b"maxmemory-policy", found.get("maxmemory-policy"))
        if isinstance(policy, bytes):
            policy = policy.decode()
        if policy is None or policy == "noeviction":
            return None
        return (
            f"maxmemory-policy is {policy}{where}: when the server fills up it deletes "
            "session keys, losing sessions whose writes were acknowledged; "
            "set it to noeviction"
        )


class RedisStore(_RedisRules):
    """Sessions in Redis or Valkey, through a ``redis.Redis`` client you pass.

    Every key starts with ``prefix`` (see the module's docstring). The client must not
    decode responses (values are bytes); set socket timeouts on it so a
    stalled server gives ``StoreUnavailable`` quickly rather than a hung
    worker (:meth:`from_url` does).
    """

    def __init__(
        self,
        client: redis.Redis | redis.cluster.RedisCluster,
        *,
        prefix: str = "satchel:",
        cache: int | str = 0,
        fence: bool = False,
    ) -> None:
        self._cluster = _check_client(client)
        self.client = client
        self.prefix = prefix
        self._prune_after_ms = CLUSTER_PRUNE_AFTER_MS if self._cluster else 0
        #: With ``cache``: the connection single commands go through, whose
        #: notices keep this process's records correct (see satchel.stores._tracking).
        self._tracked = self._tracking(client, cache)
        #: Whether every write is followed by a PING (see :meth:`_fence_after`): always
        #: with the cache on, and with ``fence`` for an app that shares a store with one.
        self.fence = fence or self._tracked is not None
        #: Set by :meth:`from_url`: calls then borrow from ``_connections``.
        self._pool: redis.ConnectionPool | None = None
        # Set by from_url: the URL and timeouts, for to_async().
        self._source: tuple[str, float, float] | None = None
        self._connections: ConnectionList[Any] = ConnectionList(
            self._connect, close=lambda conn: conn.disconnect()
        )
        import redis
        from redis.exceptions import NoScriptError

        # Bound once: an import statement in every call costs a few microseconds.
        self._connection_error = redis.ConnectionError
        self._response_error = redis.ResponseError
        # A Cluster client's own failures (a slot no node covers, say) are not RedisErrors.
        self._redis_error: tuple[type[Exception], ...] = (
            redis.RedisError,
            redis.exceptions.RedisClusterException,
        )
        self._no_script_error = NoScriptError
        #: What a call through the record cache can fail with: the socket, the parser,
        #: an error reply, or the Cluster client a redirected call falls back to.
        self._tracked_errors: tuple[type[Exception], ...] = (
            OSError,
            hiredis.ProtocolError,
            RespError,
            *self._redis_error,
        )

    def _tracking(
        self, client: Any, cache: int | str
    ) -> TrackingConnection | ClusterTracking | None:
        try:
            max_bytes = parse_size(cache)
        except ValueError as exc:
            raise ConfigError(f"cache: {exc}") from None
        if not max_bytes:
            return None
        kwargs = client.get_connection_kwargs()
        if self._cluster:
            tls = bool(kwargs.get("ssl")) or "SSL" in str(kwargs.get("connection_class", ""))
        else:
            tls = "ssl" in client.connection_pool.connection_class.__name__.lower()
        if tls:
            raise ConfigError("the record cache (cache=) needs redis:// or unix://, not TLS")
        settings: dict[str, Any] = {
            "parse": _record,
            "timeout": kwargs.get("socket_timeout"),
            "connect_timeout": kwargs.get("socket_connect_timeout") or 0.5,
        }
        if self._cluster:  # each node's address comes from the cluster's layout
            return ClusterTracking(
                client,
                max_bytes=max_bytes,
                username=kwargs.get("username"),
                password=kwargs.get("password"),
                **settings,
            )
        mark = f"{self.prefix}c:"  # each connection's mark: see TrackingConnection
        return TrackingConnection(max_bytes=max_bytes, **address(kwargs), mark=mark, **settings)

    def cache_stats(self) -> CacheStats | None:
        """This process's record cache: hits, misses, notices, size; ``None`` when off."""
        return None if self._tracked is None else self._tracked.stats()

    def with_prefix(self, prefix: str) -> RedisStore:
        """A store on the same client and connections under another prefix (uncached, and
        fenced when this one caches or fences: its writes may be read by cached workers)."""
        other = RedisStore(self.client, prefix=prefix, fence=self.fence)
        other._pool, other._connections = self._pool, self._connections
        other._source = self._source
        return other

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "satchel:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        cache: int | str = 0,
        fence: bool = False,
    ) -> RedisStore:
        """Build a store on a new client for ``url`` with short timeouts.

        ``cache`` (bytes, or ``"64MB"``; in a URL ``?cache=64MB``) turns on each
        process's cache of the records it read, kept correct by the server's
        invalidation notices: see :mod:`satchel.stores._tracking` and
        docs/performance.md for what it saves and the one gap it leaves. Off (0)
        by default; on a Cluster, one tracking connection per primary; not over TLS.
        ``fence`` (in a URL ``?fence=1``) is for an app that does not cache but shares
        the store with apps that do: each of its writes is followed by a PING, so
        that the others' caches have the server's notice before the write's request
        ends (a cached store always does this).

        Accepts ``redis://``, ``rediss://`` and ``unix://`` URLs, and
        ``redis+cluster://host:port`` (or ``rediss+cluster://``) for a Redis or
        Valkey Cluster, given any one of its nodes. A broken connection is
        retried once, so a restarted server is picked up again without an
        error; a timeout is not retried, so a frozen server fails the call
        after ``socket_timeout`` seconds. A cluster client follows ``MOVED``
        and fail-overs as redis-py's ``RedisCluster`` does.
        """
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.retry import Retry
        except ImportError as exc:
            raise ConfigError(
                "the Redis store needs redis-py: pip install 'satchel[redis]'"
            ) from exc
        given = url
        url, cluster = _split_cluster(url)
        if cluster:
            from redis.cluster import RedisCluster

            store = cls(
                RedisCluster.from_url(
                    url,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=connect_timeout,
                    decode_responses=False,
                ),
                prefix=prefix,
                cache=cache,
                fence=fence,
            )
        else:
            client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                decode_responses=False,
            )
            store = cls(client, prefix=prefix, cache=cache, fence=fence)
            store._pool = client.connection_pool
        store._source = (given, socket_timeout, connect_timeout)
        return store

    def to_async(self) -> AsyncRedisStore:
        """An :class:`AsyncRedisStore` on the same server (or Cluster), prefix and timeouts.

        Only for a store :meth:`from_url` made; one built on your client cannot
        tell how to make an async twin of it. The twin does not cache records, and
        fences its writes when this store caches or fences (see :meth:`from_url`).
        """
        if self._source is None:
            raise ConfigError(f"{self!r} was built on a client: build its async twin yourself")
        url, socket_timeout, connect_timeout = self._source
        return AsyncRedisStore.from_url(
            url,
            prefix=self.prefix,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            fence=self.fence,
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._redis_error as exc:
            raise self._unavailable(exc) from exc

    def _connect(self) -> Any:
        """A new connection with the client's settings."""
        assert self._pool is not None
        return self._pool.connection_class(**self._pool.connection_kwargs)

    def _call(self, *args: Any) -> Any:
        """Send one command and return its reply: the path of every request.

        With a client :meth:`from_url` made, the store drives redis-py's
        connections itself, from a free list as long as the number of calls
        ever running at once, which skips the client's per-command pool and
        bookkeeping work (about a third of a call's time on a small machine)
        and keeps redis-py's sockets, parser and errors. A broken connection
        is retried once, as that client would; a timeout is not. Other
        clients (a cluster, or one you configured) are called as they are,
        with their own policies.
        """
        if self._tracked is not None and not self._cluster:
            return self._tracked_call(args)
        try:
            if self._pool is None:
                return self.client.execute_command(*args)
            conn = self._connections.take()
            try:
                try:
                    conn.send_command(*args)
                    return conn.read_response()
                except self._connection_error:
                    conn.disconnect()  # the server restarted, say: one more try
                    conn.send_command(*args)
                    return conn.read_response()
            except self._response_error:
                raise  # an error reply (NOSCRIPT, say): the connection is fine
            except BaseException:
                conn.disconnect()  # a reply may be half read: reconnect on next use
                raise
            finally:
                self._connections.give(conn)
        except self._redis_error as exc:
            raise self._unavailable(exc) from exc

    def _tracked_call(
        self,
        args: tuple[Any, ...],
        refresh: str | None = None,
        forget: tuple[str, ...] = (),
        derive: Derive | None = None,
        fence: bool = True,
        route: str | None = None,
    ) -> Any:
        """A command on the tracking connection (see :meth:`TrackingConnection.call`);
        on a Cluster, on the connection to the node of ``route``."""
        assert self._tracked is not None
        try:
            reply = self._tracked.call(
                args, refresh=refresh, derive=derive, forget=forget, fence=fence, route=route
            )
        except self._tracked_errors as exc:
            raise self._unavailable(exc) from exc
        if isinstance(reply, RespError):
            raise self._unavailable(reply) from reply
        return reply

    def _run(
        self,
        script: _Script,
        keys: list[str],
        args: list[Any],
        refresh: str | None = None,
        forget: tuple[str, ...] = (),
        derive: Derive | None = None,
        fence: bool = True,
    ) -> Any:
        """Run a Lua script by its SHA-1, loading it first if the server lost it.

        ``refresh``, ``derive``, ``forget`` and ``fence`` (cache on only): see
        :meth:`TrackingConnection.call`.
        """
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        tracked = self._tracked is not None and bool(keys)
        route = keys[0] if keys else None
        try:
            if not tracked:
                return self._call(*command)
            return self._tracked_call(command, refresh, forget, derive, fence, route)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            lost = isinstance(cause, self._no_script_error) or (
                isinstance(cause, RespError) and str(cause).startswith("NOSCRIPT")
            )
            if not lost:
                raise
        self._call("SCRIPT", "LOAD", script.source)  # a restarted or flushed server
        if not tracked:
            return self._call(*command)
        return self._tracked_call(command, refresh, forget, derive, fence, route)

    def _fence_after(self, name: str) -> None:
        """Without the cache (whose connection fences itself), when ``fence`` is on: a
        PING to the node of ``name`` after a write's reply, read in a later turn of the
        server's loop than the write, so the server has sent every other worker's cache
        its notice of the write (see :mod:`satchel.stores._tracking`)."""
        if not self.fence or self._tracked is not None:
            return
        if not self._cluster:
            self._call("PING")
            return
        with self._errors():
            client: Any = self.client
            client.execute_command("PING", target_nodes=client.get_node_from_key(name))

    def _perform(self, op: Op) -> Any:
        kind = op[0]
        if kind == "script":
            reply = self._run(op[1], op[2], op[3])
            if op[1] in _WRITES:
                self._fence_after(op[2][0])
            return reply
        if kind == "call":
            return self._call(*op[1:])
        if kind == "revoke":  # one server's REVOKE script: forget what it ended, then fence
            if self._tracked is None:
                reply = self._run(REVOKE, op[1], op[2])
                self._fence_after("")
                return reply
            reply = self._run(REVOKE, op[1], op[2], forget=(self._key(""),))
            tracked = self._tracked
            assert isinstance(tracked, TrackingConnection)  # one server's
            with tracked.lock:
                for name in reply[1]:
                    tracked.cache.drop(name.decode())
            return reply
        if kind == "kill" and self._cluster and self._tracked is None:
            return self._kill_pipelined(op[1])
        if kind == "kill":
            replies = []
            for key in op[1]:  # a Cluster's, with the cache on: each by its node's connection
                names = self._record_and_note(key)
                replies += self._run(KILL, names, [], forget=(names[0],))
                self._fence_after(names[0])
            return replies
        with self._errors():
            if kind == "pipe":
                pipe = self.client.pipeline(transaction=False)
                for command in op[1]:
                    pipe.execute_command(*command)
                return pipe.execute()
            return list(self.client.scan_iter(op[1], count=1000))

    def _kill_pipelined(self, keys: list[str]) -> list[Any]:
        """A Cluster's KILL calls for ``keys`` in one pipeline (each node's in one batch)."""
        client: Any = self.client
        with self._errors():
            client.script_load(KILL.source)  # every primary knows it before the batch
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("EVALSHA", KILL.sha, 2, self._key(key), self._note_key(key))
            replies = [reply[0] for reply in pipe.execute()]
            if self.fence:  # one PING per node written to
                nodes = {client.get_node_from_key(self._key(key)).name: key for key in keys}
                for key in nodes.values():
                    self._fence_after(self._key(key))
        return replies

    def load(self, key: str) -> Record | None:
        """Fetch the whole hash in one round trip (with the cache on: none, when it holds it)."""
        if self._tracked is None:
            return _record(self._call("HGETALL", self._key(key)))
        try:
            return self._tracked.load(self._key(key))
        except self._tracked_errors as exc:
            raise self._unavailable(exc) from exc

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """Yield live records: an owner's from their set (pruning dead members), or all by SCAN."""
        if owner is not None:
            yield from drive(self._owner_records_steps(owner), self._perform)
            return
        keys = self.references()
        while batch := [key for _, key in zip(range(500), keys, strict=False)]:
            for key, record in drive(self._fetch_steps(batch), self._perform):
                if record is not None:
                    yield key, record

    def references(self, start: str = "") -> Iterator[str]:
        """The keys of live records that begin with ``start``, by SCAN (no record is read)."""
        return iter(drive(self._references_steps(start), self._perform))

    def count(self) -> tuple[int, int]:
        """How many live records there are, and how many distinct owners they have."""
        return drive(self._count_steps(), self._perform)

    def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """Apply ``change`` with one script call (a Cluster's move and owned create: two)."""
        steps = self._save_steps(key, change, create)
        if self._tracked is None:
            return drive(steps, self._perform)
        # With the cache on, this process gets no notice of its own writes: the cached
        # record is the one it had with the change applied, when the server applied it
        # to that record (a notice of any write before it would have come first and
        # dropped it); a move's new record is read back, and its old one forgotten.
        name = self._key(key)
        gone = () if change.replaces is None else (self._key(change.replaces),)

        def derive(reply: Any, cached: Record | None) -> Record | None:
            if isinstance(reply, RespError) or reply[0] != SaveResult.SAVED:
                return None
            if not create and cached is None:
                return None
            try:
                return apply_change(None if create else cached, change)
            except (Conflict, SessionTooLarge):
                return None

        def perform(op: Op) -> Any:
            if op[0] == "script" and op[1] is TAKE:  # a Cluster's move ends the old record
                return self._run(op[1], op[2], op[3], forget=gone)
            if op[0] == "script" and op[1] is SAVE:
                how = derive if change.replaces is None else None
                fence = not create or change.replaces is not None  # a new key: nobody tracks it
                return self._run(
                    op[1], op[2], op[3], refresh=name, forget=gone, derive=how, fence=fence
                )
            return self._perform(op)

        return drive(steps, perform)

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times with one script call."""
        _, script, keys, args = self._touch_op(key, touched_at, expires_at)
        if self._tracked is None:
            touched = bool(self._run(script, keys, args))
            self._fence_after(keys[0])
            return touched

        def derive(reply: Any, cached: Record | None) -> Record | None:
            if reply != 1 or cached is None:
                return None
            return replace(cached, touched_at=touched_at, expires_at=expires_at)

        return bool(self._run(script, keys, args, refresh=self._key(key), derive=derive))

    def delete(self, key: str) -> None:
        """Delete the hash (on a Cluster, and note that it ended: see :data:`_KILL`)."""
        if self._cluster:
            names = self._record_and_note(key)
            self._run(KILL, names, [], forget=(names[0],))
            self._fence_after(names[0])
        elif self._tracked is None:
            self._call("DEL", self._key(key))
            self._fence_after("")
        else:
            self._tracked_call(("DEL", self._key(key)), forget=(self._key(key),))

    def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """End records, following moves: one script call per 500 (on a Cluster, per record)."""
        return drive(self._revoke_steps(keys, owner, keep), self._perform)

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Set the lock key with a lease unless another token holds it: one script call."""
        return bool(self._run(ACQUIRE, [self._lock_key(key)], [token, _ms(lease)]))

    def release(self, key: str, token: str) -> None:
        """Delete the lock only if ``token`` still holds it (a script, so atomic)."""
        self._run(RELEASE, [self._lock_key(key)], [token])

    def purge_expired(self) -> int:
        """Nothing to do: Redis expires keys itself. Returns 0."""
        return 0

    def config_problems(self) -> list[str]:
        """What in the server's configuration can lose sessions (read at start-up).

        Any ``maxmemory-policy`` but ``noeviction`` lets a full server delete
        session keys (they all carry an expiry, so the ``volatile-*`` policies
        take them too), silently, after their writes were acknowledged. A server
        that hides ``CONFIG`` (some managed services) or cannot be reached yet
        reports nothing here.
        """
        client: Any = self.client
        nodes: list[Any] = client.get_primaries() if self._cluster else [None]
        problems = []
        for node in nodes:
            try:
                if node is None:
                    reply = client.config_get("maxmemory-policy")
                else:
                    reply = client.config_get("maxmemory-policy", target_nodes=node)
            except self._redis_error as exc:
                _log.info("could not read maxmemory-policy from %r: %s", self, exc)
                continue
            problem = self._policy_problem(reply, f" on {node.name}" if node is not None else "")
            if problem is not None:
                problems.append(problem)
        return problems

    def close(self) -> None:
        """Close the client's connections and those of every thread."""
        for conn in self._connections.drain():
            conn.disconnect()
        if self._tracked is not None:
            self._tracked.close()
        self.client.close()


class AsyncRedisStore(_RedisRules):
    """Sessions in Redis or Valkey for ASGI apps, through ``redis.asyncio``.

    The same keys, scripts and rules as :class:`RedisStore` (they are one
    code), so a Flask app on a :class:`RedisStore` and an ASGI app on this
    store, with the same prefix, share their sessions. Pass a
    ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster`` made
    with ``decode_responses=False``, or use :meth:`from_url`.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster,
        *,
        prefix: str = "satchel:",
        fence: bool = False,
    ) -> None:
        self._cluster = _check_client(client)
        self.client = client
        self.prefix = prefix
        #: Whether every write is followed by a PING: see :meth:`RedisStore.from_url`.
        self.fence = fence
        self._prune_after_ms = CLUSTER_PRUNE_AFTER_MS if self._cluster else 0
        # Stores made by with_prefix() share the client, and leave closing it to this one.
        self._owns_client = True
        #: Set by from_url for a plain server: the pipelined connection single
        #: commands go through (see satchel.stores._resp); None: the client.
        self._fast: RespConnection | None = None
        # A Cluster client learns the cluster's layout once, before any command: left
        # to the first commands, several at once, one failing closes the others'
        # connections under them.
        self._ready = not self._cluster
        self._readying: asyncio.Lock | None = None
        import redis
        from redis.exceptions import NoScriptError

        self._redis_error = redis.RedisError
        self._no_script_error = NoScriptError

    def with_prefix(self, prefix: str) -> AsyncRedisStore:
        """A store on the same client under another prefix (closing it leaves the client open)."""
        other = AsyncRedisStore(self.client, prefix=prefix, fence=self.fence)
        other._owns_client = False
        other._fast = self._fast
        return other

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "satchel:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        fence: bool = False,
    ) -> AsyncRedisStore:
        """A store on a new ``redis.asyncio`` client: see :meth:`RedisStore.from_url`."""
        try:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
        except ImportError as exc:
            raise ConfigError(
                "the Redis store needs redis-py: pip install 'satchel[redis]'"
            ) from exc
        url, cluster = _split_cluster(url)
        client: Any
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            client = RedisCluster.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                decode_responses=False,
            )
        else:
            client = redis.asyncio.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                decode_responses=False,
            )
        store = cls(client, prefix=prefix, fence=fence)
        if not cluster and url.split("://", 1)[0] in ("redis", "unix"):  # not TLS
            from redis.connection import parse_url

            found: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
            store._fast = RespConnection(
                **address(found),
                timeout=socket_timeout,
                connect_timeout=connect_timeout,
            )
        return store

    async def _layout(self) -> None:
        if self._readying is None:
            self._readying = asyncio.Lock()
        async with self._readying:
            if not self._ready:
                await self.client.initialize()
                self._ready = True

    async def _call(self, *args: Any) -> Any:
        try:
            if self._fast is not None:
                return await self._fast.call(*args)
            if not self._ready:
                await self._layout()
            return await self.client.execute_command(*args)
        except (self._no_script_error, RespError) as exc:
            raise self._unavailable(exc) from exc
        except Exception as exc:
            # Any failure of the client is the store's: redis-py's async Cluster client,
            # when a node fails, closes every connection, and a command in flight on one
            # of them can fail with an AttributeError rather than a RedisError.
            raise self._unavailable(exc) from exc

    async def _run(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script by its SHA-1, loading it first if the server lost it."""
        try:
            return await self._call("EVALSHA", script.sha, len(keys), *keys, *args)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            lost = isinstance(cause, self._no_script_error) or (
                isinstance(cause, RespError) and str(cause).startswith("NOSCRIPT")
            )
            if not lost:
                raise
        if self._fast is not None:  # a restarted or flushed server
            await self._call("SCRIPT", "LOAD", script.source)
        else:
            try:  # on a Cluster, every primary loads it
                await self.client.script_load(script.source)
            except self._redis_error as exc:
                raise self._unavailable(exc) from exc
        return await self._call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _fence_after(self, name: str) -> None:
        """With ``fence`` on, a PING to the node of ``name`` after a write's reply: see
        :meth:`RedisStore._fence_after`."""
        if not self.fence:
            return
        if not self._cluster:
            await self._call("PING")
            return
        try:
            client: Any = self.client
            await client.execute_command("PING", target_nodes=client.get_node_from_key(name))
        except Exception as exc:
            raise self._unavailable(exc) from exc

    async def _perform(self, op: Op) -> Any:
        kind = op[0]
        if kind == "script":
            reply = await self._run(op[1], op[2], op[3])
            if op[1] in _WRITES:
                await self._fence_after(op[2][0])
            return reply
        if kind == "call":
            return await self._call(*op[1:])
        if kind == "revoke":
            reply = await self._run(REVOKE, op[1], op[2])
            await self._fence_after("")
            return reply
        if kind == "kill":
            calls = [self._run(KILL, self._record_and_note(key), []) for key in op[1]]
            replies = [reply for each in await asyncio.gather(*calls) for reply in each]
            await asyncio.gather(*(self._fence_after(self._key(key)) for key in op[1]))
            return replies
        try:
            if not self._ready:
                await self._layout()
            if kind == "pipe":
                pipe: Any = self.client.pipeline(transaction=False)
                for command in op[1]:
                    pipe.execute_command(*command)
                return await pipe.execute()
            return [name async for name in self.client.scan_iter(op[1], count=1000)]
        except self._redis_error as exc:
            raise self._unavailable(exc) from exc

    async def load(self, key: str) -> Record | None:
        """Fetch the whole hash in one round trip."""
        return _record(await self._call("HGETALL", self._key(key)))

    async def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """Apply ``change`` with one script call (a Cluster's move and owned create: two)."""
        return await drive_async(self._save_steps(key, change, create), self._perform)

    async def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times with one script call."""
        return bool(await self._perform(self._touch_op(key, touched_at, expires_at)))

    async def delete(self, key: str) -> None:
        """Delete the hash (on a Cluster, and note that it ended: see :data:`_KILL`)."""
        if self._cluster:
            await self._run(KILL, self._record_and_note(key), [])
        else:
            await self._call("DEL", self._key(key))
        await self._fence_after(self._key(key))

    async def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """End records, following moves: one script call per 500 (on a Cluster, per record)."""
        return await drive_async(self._revoke_steps(keys, owner, keep), self._perform)

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        """Set the lock key with a lease unless another token holds it: one script call."""
        return bool(await self._run(ACQUIRE, [self._lock_key(key)], [token, _ms(lease)]))

    async def release(self, key: str, token: str) -> None:
        """Delete the lock only if ``token`` still holds it (a script, so atomic)."""
        await self._run(RELEASE, [self._lock_key(key)], [token])

    async def records(self, owner: str | None = None) -> list[tuple[str, Record]]:
        """Live records: an owner's from their set (pruning dead members), or all by SCAN."""
        if owner is not None:
            return await drive_async(self._owner_records_steps(owner), self._perform)
        return await drive_async(self._all_records_steps(), self._perform)

    async def references(self, start: str = "") -> list[str]:
        """The keys of live records that begin with ``start``, by SCAN (no record is read)."""
        return await drive_async(self._references_steps(start), self._perform)

    async def count(self) -> tuple[int, int]:
        """How many live records there are, and how many distinct owners they have."""
        return await drive_async(self._count_steps(), self._perform)

    async def purge_expired(self) -> int:
        """Nothing to do: Redis expires keys itself. Returns 0."""
        return 0

    async def close(self) -> None:
        """Close the client and its connections."""
        if self._owns_client and self._fast is not None:
            self._fast.close()
        if self._owns_client:
            client: Any = self.client
            close = getattr(client, "aclose", None) or client.close  # aclose: redis-py 5.0.1
            await close()
