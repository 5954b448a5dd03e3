"""What the sync and async Redis stores share: key names, typed operations and the
steps of every call that takes more than one command (see :mod:`satchel._steps`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import _json
from ..errors import ConfigError, SessionTooLarge, StoreUnavailable
from ._redis_scripts import (
    BUMP,
    CREATE,
    EPOCH,
    INDEX,
    RESTORE,
    SAVE,
    STAMP,
    TAKE,
    TOUCH,
    _glob,
    _ms,
    _pairs,
    _record,
    _Script,
)
from .base import Change, Conflict, Record, SaveResult, apply_change, size_of

T = TypeVar("T")

#: How the cache works out a record after this process's write: (reply, cached before) → record.
Derive = Callable[[Any, Record | None], Record | None]


@dataclass(frozen=True, slots=True)
class Script:
    """Run ``script`` on ``keys`` with ``args`` (a write's node is fenced after it)."""

    script: _Script
    keys: list[str]
    args: list[Any]


@dataclass(frozen=True, slots=True)
class Call:
    """One command, as its words."""

    command: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Pipe:
    """Several commands in one round trip; their replies in order."""

    commands: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Scan:
    """The names of the keys that match ``pattern``."""

    pattern: str


@dataclass(frozen=True, slots=True)
class Kill:
    """End the records ``keys`` names (a Cluster's revoke), leaving each its move note."""

    keys: list[str]


@dataclass(frozen=True, slots=True)
class RevokeAll:
    """One server's REVOKE script: end the records an owner's set (or ``args``) names."""

    keys: list[str]
    args: list[Any]


#: A Redis store step's call: each store performs it with its own client.
RedisOp = Script | Call | Pipe | Scan | Kill | RevokeAll
#: Steps that yield Redis operations and return a T.
RedisSteps = Generator[RedisOp, Any, T]


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
    of :data:`RedisOp` (see :mod:`satchel._steps`), run by :class:`RedisStore`
    with redis-py and by :class:`AsyncRedisStore` with ``redis.asyncio``.
    """

    prefix: str
    client: Any
    _cluster: bool
    _prune_after_ms: int

    @property
    def moves_in_two_steps(self) -> bool:
        """On a Cluster, a move (``regenerate()``) is two steps, the old slot's then the new
        one's: for a moment the session is at neither key (a renewal's join looks again)."""
        return self._cluster

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

    def _save_steps(self, key: str, change: Change, create: bool) -> RedisSteps[SaveResult]:
        """Apply ``change`` with one script call (a Cluster's move and owned create: two)."""
        index: list[str] = []
        member: list[Any] = ["", 0]
        pairs: list[Any] = []
        if create:
            pairs += ("m:c", repr(change.created_at))
            if change.meta:
                pairs += ("m:x", _json.dumps(dict(change.meta)))  # orjson: 0.2 us, json 3 us
            if change.owner is not None:
                pairs += ("m:o", change.owner)
                until = _ms(max(change.ends_by, change.expires_at))
                member = [key, until]
                if self._cluster and change.replaces is None:
                    # Another slot: indexed first, never pruned too early.
                    epoch = yield Script(INDEX, [self._owner_key(change.owner)], [*member, ""])
                    pairs += ("m:g", epoch)
                elif not self._cluster:
                    index = [self._owner_key(change.owner)]
        if create and change.replaces is not None and self._cluster:
            return (yield from self._move_across_slots_steps(key, change, pairs, member))
        pairs += ("m:t", repr(change.touched_at), "m:e", repr(change.expires_at))
        for name, value in change.set.items():
            pairs += ("d:" + name, value)
        size = size_of(change.set) if create and change.max_size is not None else 0
        if create and not index and _plain_create(change, len(pairs), size):
            if change.max_size is not None:
                pairs += ("m:s", size)
            keys = [self._key(key), self._note_key(key)]
            reply = yield Script(CREATE, keys, [_ms(change.expires_at), *pairs])
            return SaveResult(reply[0])
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
        reply = yield Script(SAVE, keys, args + pairs)
        if reply[0] == 9:
            raise SessionTooLarge(int(reply[1]), change.max_size or 0)
        return SaveResult(reply[0])

    def _move_across_slots_steps(
        self, key: str, change: Change, pairs: list[Any], member: list[Any]
    ) -> RedisSteps[SaveResult]:
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
        reply = yield Script(TAKE, [old, lock, note], [change.fence or "", target])
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
            epoch = yield Script(INDEX, [self._owner_key(base.owner)], mine)
            if epoch == -1:
                return SaveResult.REFUSED  # its owner's sessions are being revoked
        if change.owner is not None and change.owner != base.owner:
            epoch = yield Script(INDEX, [self._owner_key(change.owner)], [*member, ""])
        if change.owner is not None:
            pairs += ("m:g", epoch)
        pairs += ("m:t", repr(result.touched_at), "m:e", repr(result.expires_at))
        for name, value in result.fields.items():
            pairs += ("d:" + name, value)
        keys = [target, target, self._lock_key(key), self._note_key(key)]
        args: list[Any] = ["c", "", _ms(result.expires_at), "", "", 0, -1, 0, 0]
        return SaveResult((yield Script(SAVE, keys, args + pairs))[0])

    def _restore_steps(
        self, key: str, target: str, raw: list[bytes], base: Record
    ) -> RedisSteps[bool]:
        """Put back a record taken by a move that could not complete; False if revoked."""
        keys = self._record_and_note(key)
        return bool((yield Script(RESTORE, keys, [target, _ms(base.expires_at), *raw])))

    def _revoke_steps(
        self, keys: Collection[str], owner: str | None, keep: str | None
    ) -> RedisSteps[int]:
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
            reply = yield RevokeAll(index, [self.prefix, keep or "", *keys])
            return int(reply[0])
        todo = list(keys)
        members: list[str] = []
        if owner is not None:
            epoch, found = yield Script(BUMP, [self._owner_key(owner)], [])
            members = [m.decode() for m in found if m != EPOCH.encode()]
            todo += members
            if keep is not None:
                yield Script(STAMP, [self._key(keep)], [epoch])
        # A session counts once, where its chain ends: live there, or (reached
        # through a note) caught between the two halves of its move.
        ended: set[str] = set()
        followed: set[str] = set()
        while batch := [key for key in dict.fromkeys(todo) if key != keep]:
            todo = []
            for key, reply in zip(batch, (yield Kill(batch)), strict=True):
                if reply[0] == 1 or (reply[0] == 3 and key in followed):
                    ended.add(key)
                elif reply[0] == 2:
                    target = self._store_key(reply[1])
                    followed.add(target)
                    todo.append(target)
        gone = [member for member in members if member != keep]
        if gone:
            yield Call(("ZREM", self._owner_key(owner or ""), *gone))
        return len(ended)

    def _record_and_note(self, key: str) -> list[str]:
        """A record's name and its note's (one slot): the keys of KILL and RESTORE."""
        return [self._key(key), self._note_key(key)]

    def _touch_op(self, key: str, touched_at: float, expires_at: float) -> Script:
        args = [repr(touched_at), repr(expires_at), _ms(expires_at)]
        return Script(TOUCH, [self._key(key)], args)

    def _owner_records_steps(self, owner: str) -> RedisSteps[list[tuple[str, Record]]]:
        """An owner's live records, from their set; members with no record are pruned."""
        owner_key = self._owner_key(owner)
        members = _pairs((yield Call(("ZRANGE", owner_key, 0, -1, "WITHSCORES"))))
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
            yield Call(("ZREM", owner_key, *gone))
        return found

    def _references_steps(self, start: str) -> RedisSteps[list[str]]:
        """The keys of live records that begin with ``start``, by SCAN (no record is read)."""
        begin = len(self._key("")) - 1  # the name without its closing brace
        pattern = _glob(self.prefix + "s:{" + start) + "*"
        names = yield Scan(pattern)
        texts = [name.decode() for name in names]
        return [name[begin:-1] for name in texts if name.endswith("}")]

    def _fetch_steps(self, keys: list[str]) -> RedisSteps[list[tuple[str, Record | None]]]:
        """Each key with its live record (or None), 500 HGETALLs to a pipeline."""
        found: list[tuple[str, Record | None]] = []
        for first in range(0, len(keys), 500):
            batch = keys[first : first + 500]
            hashes = yield Pipe([("HGETALL", self._key(key)) for key in batch])
            found += [(key, _record(raw)) for key, raw in zip(batch, hashes, strict=True)]
        return found

    def _all_records_steps(self) -> RedisSteps[list[tuple[str, Record]]]:
        keys = yield from self._references_steps("")
        fetched = yield from self._fetch_steps(keys)
        return [(key, record) for key, record in fetched if record is not None]

    def _count_steps(self) -> RedisSteps[tuple[int, int]]:
        """How many live records there are, and how many distinct owners they have.

        Reads two fields per record, 500 records a round trip, never whole records.
        """
        keys = yield from self._references_steps("")
        live, owners = 0, set()
        now = time.time()
        for first in range(0, len(keys), 500):
            batch = keys[first : first + 500]
            rows = yield Pipe([("HMGET", self._key(key), "m:e", "m:o") for key in batch])
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


def _plain_create(change: Change, pairs: int, size: int) -> bool:
    """Whether a create can take the short CREATE script: a new key (no move), no owner,
    fence, expectation or deletion, a record left non-empty, within its size limit
    (``size``: its fields' :func:`~satchel.stores.base.size_of`), and few enough fields
    for one HSET; anything else takes SAVE, which decides it all."""
    if change.replaces is not None or change.owner is not None or change.fence is not None:
        return False
    if change.expect or change.delete or pairs > 1990:
        return False
    only = change.delete_if_only
    if only is not None and all(name in only for name in change.set):
        return False  # the save script finds it empty (DELETED)
    return change.max_size is None or size <= change.max_size
