"""One-statement saves for the SQLite store: the common update and create.

A save in a transaction makes four calls into SQLite (``BEGIN IMMEDIATE``, read
the row, write it, ``COMMIT``) and parses, merges and re-encodes the record in
Python between them. The usual save (no lock fence, no move, names a JSON path
can spell) can instead be one ``UPDATE`` whose ``WHERE`` checks every condition
the transaction would (the record live, each expected field as expected, the
size limit) and whose ``SET`` applies the change with SQLite's own
``json_set``/``json_remove``, leaving every other field's stored text as it is.
When the statement changes no row, the store makes the save again in a
transaction, which finds out why (gone, a conflict, too large): the statement
wrote nothing, so that is the transaction's answer at a later moment.
"""

from __future__ import annotations

import re

from .. import _json
from ._fieldtext import to_text
from .base import Change

__all__ = ["update"]

#: The most fields one statement sets or deletes: an SQL function takes at most
#: 127 arguments in SQLite's default build (each set field takes two).
MOST_FIELDS = 60

#: Names a quoted JSON path label spells as stored: SQLite compares a label with
#: the member's text as written, so a name JSON escapes (a quote, a backslash, a
#: control character) would not match; a lone surrogate is not UTF-8 at all.
_PLAIN = re.compile(r'[^"\\\x00-\x1f\ud800-\udfff]*\Z')


def _path(name: str) -> str:
    return '$."' + name + '"'


def update(name: str, change: Change, now: float) -> tuple[str, tuple[object, ...]] | None:
    """The statement (and its arguments) that applies ``change`` to the live record
    ``name`` when every condition holds, or ``None`` when the change needs the
    transaction: a fence, a name a path cannot spell, a record it could empty, many fields."""
    if change.fence is not None or change.replaces is not None:
        return None
    if len(change.set) > MOST_FIELDS or len(change.delete) > MOST_FIELDS:
        return None
    only = change.delete_if_only
    # A record keeps a field outside `only` when the change sets one; else it might
    # be left with nothing else, which the transaction deletes.
    if only is not None and all(field in only for field in change.set):
        return None
    expect = change.expect or {}
    for field in (*change.set, *change.delete, *expect):
        if not _PLAIN.match(field):
            return None
    data = "data"
    args: list[object] = []
    if change.delete:
        data = "json_remove(data" + ", ?" * len(change.delete) + ")"
        args += [_path(field) for field in change.delete]
    growth = 0
    if change.set:
        data = "json_set(" + data + ", ?, ?" * len(change.set) + ")"
        for field, value in change.set.items():
            text = to_text(value)
            args += (_path(field), text)
            # What this member can add to the stored JSON: its quoted name and
            # text, a colon and a comma. A record's stored bytes are never fewer
            # than its size as the limit counts it (names and values).
            growth += len(_json.dumps(field)) + len(_json.dumps(text)) + 2
    args += (change.touched_at, change.expires_at, name, now)
    where = ["key = ?", "expires_at > ?", "json_type(data) = 'object'"]
    for field, expected in expect.items():
        if expected is None:
            where.append("json_type(data, ?) IS NULL")
            args.append(_path(field))
        else:
            where.append("json_extract(data, ?) IS ?")
            args += (_path(field), to_text(expected))
    if change.max_size is not None:
        room = change.max_size - growth
        if room < 0:
            return None
        where.append("length(CAST(data AS BLOB)) <= ?")
        args.append(room)
    sql = (
        f"UPDATE satchel_sessions SET data = {data}, touched_at = ?, expires_at = ?"
        f" WHERE {' AND '.join(where)}"
    )
    return sql, tuple(args)
