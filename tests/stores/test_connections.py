"""The connections a store lends its threads (``satchel.stores._connections``)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from satchel.stores._connections import ConnectionList


class Conn:
    """A connection that knows whether it was closed."""

    def __init__(self) -> None:
        self.closed = False


def test_drain_closes_idle_connections_and_lent_ones_when_given_back() -> None:
    """A store's close() must not close a connection another thread is using (an SQLite
    statement running on a closed connection crashes the process): one lent out is
    closed when it comes back, and is never lent again."""
    closed: list[Conn] = []
    connections: ConnectionList[Conn] = ConnectionList(Conn, close=closed.append)
    lent, idle = connections.take(), connections.take()
    connections.give(idle)
    assert connections.drain() == [idle]  # the caller closes these now
    assert closed == []
    connections.give(lent)
    assert closed == [lent]  # closed on its way back, not kept idle
    assert list(connections.idle) == []
    fresh = connections.take()
    assert fresh is not lent and fresh is not idle
    connections.give(fresh)
    assert closed == [lent]  # a connection made after the drain is kept as usual


def test_drain_without_a_close_function_returns_every_connection() -> None:
    """A list that closes nothing itself hands all of them to the caller."""
    connections: ConnectionList[Conn] = ConnectionList(Conn)
    lent, idle = connections.take(), connections.take()
    connections.give(idle)
    drained = connections.drain()
    assert len(drained) == 2 and any(c is lent for c in drained)


def test_closing_a_sqlite_store_under_a_running_statement_waits_for_it(tmp_path: Path) -> None:
    """In a child process (a crash must not take the suite with it): a thread runs a
    long statement while the main thread closes the store; the statement finishes
    with its answer and the process exits cleanly."""
    script = textwrap.dedent(
        f"""
        import threading, time
        from satchel.stores import SQLiteStore

        store = SQLiteStore({str(tmp_path / "s.sqlite3")!r})
        store.load("warm")  # the schema, and one idle connection
        started = threading.Event()
        answer = []

        def long_statement():
            conn = store._connections.take()
            started.set()
            rows = conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                " WHERE i < 3000000) SELECT count(*) FROM n"
            ).fetchall()
            answer.append(rows[0][0])
            store._connections.give(conn)

        thread = threading.Thread(target=long_statement)
        thread.start()
        started.wait()
        time.sleep(0.05)
        store.close()
        thread.join()
        print(answer)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[3000000]"
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
