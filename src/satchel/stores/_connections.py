"""The connections one process lends to its threads, one call at a time.

A store takes a connection for a statement or command and gives it back, so
threads (and greenlets) share them and a process holds only as many as calls
ever ran at once in it, even under a server that starts a thread per request.
Idle connections above ``max_idle`` are closed when given back, so a burst of
threads does not pin its connections (and their file descriptors) for good.
After such a burst, the first moment every connection is idle again they are
all closed and made anew on demand: SQLite keeps a closed connection's file
descriptor open while any other connection of the process holds a lock on the
file (in WAL mode every open connection does), and lets go of them only when
the last one closes.
A connection never crosses a fork: a worker forked from a parent that already
used the store makes its own, and keeps its copies of the parent's unused and
unclosed (closing one can act on the parent's socket or database files).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ConnectionList"]

Conn = TypeVar("Conn")

# How many forks led to this process. Comparing it costs no system call,
# where os.getpid() on every call would cost one per request.
_generation = 0


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


class ConnectionList(Generic[Conn]):
    """Idle connections, most recent last, and every connection made in this process."""

    def __init__(
        self,
        connect: Callable[[], Conn],
        *,
        close: Callable[[Conn], None] | None = None,
        max_idle: int = 8,
    ) -> None:
        self._connect = connect
        self._close = close
        #: How many idle connections are kept; more are closed when given back.
        self.max_idle = max_idle
        self._shrunk = False
        # deque appends and pops are atomic: taking and giving need no lock.
        self.idle: collections.deque[Conn] = collections.deque()
        #: Every connection made in this process, idle or lent out.
        self.made: list[Conn] = []
        self._inherited: list[Conn] = []
        #: Connections lent out when :meth:`drain` ran: closed when given back.
        self._doomed: list[Conn] = []
        self._generation = _generation
        self._lock = threading.Lock()

    def take(self) -> Conn:
        """An idle connection, or a new one from ``connect``."""
        if self._generation != _generation:
            with self._lock:
                self._inherited += self.made
                self.made = []
            self.idle = collections.deque()
            self._generation = _generation
        try:
            return self.idle.pop()
        except IndexError:
            pass
        conn = self._connect()
        with self._lock:
            self.made.append(conn)
        return conn

    def give(self, conn: Conn) -> None:
        """Return a connection taken with :meth:`take`; close it if enough are idle."""
        if self._doomed and self._close is not None and self._drained(conn):
            self._close(conn)
            return
        if self._close is None or len(self.idle) < self.max_idle:
            self.idle.append(conn)
            if self._shrunk:
                self._settle()
            return
        with self._lock:
            try:
                self.made.remove(conn)
            except ValueError:  # made before a fork: not ours to close
                return
            self._shrunk = True
        self._close(conn)
        self._settle()

    def _settle(self) -> None:
        """After a burst, once every connection is idle, close them all (see above)."""
        assert self._close is not None
        with self._lock:
            if len(self.idle) < len(self.made):
                return  # some are still lent out: try again when they come back
            closing = self._all_idle()
            for conn in closing:
                self.made.remove(conn)
            self._shrunk = bool(self.made)
        for conn in closing:
            self._close(conn)

    def discard(self, conn: Conn, *, idle_too: bool = False) -> list[Conn]:
        """Forget a broken connection taken with :meth:`take` (and every idle one).

        Returns them for closing; ``idle_too`` is for a server that restarted,
        which broke the idle connections as well.
        """
        doomed = [conn]
        with self._lock:
            if idle_too:
                doomed += self._all_idle()
            for each in doomed:
                with contextlib.suppress(ValueError):  # made before a fork
                    self.made.remove(each)
        return doomed

    def _all_idle(self) -> list[Conn]:
        """Take every idle connection out of the list, one atomic pop at a time (never
        one that a concurrent :meth:`take` got)."""
        taken = []
        while True:
            try:
                taken.append(self.idle.popleft())
            except IndexError:
                return taken

    def _drained(self, conn: Conn) -> bool:
        """Whether ``conn`` was lent out when :meth:`drain` ran (and forget it)."""
        with self._lock:
            for n, each in enumerate(self._doomed):
                if each is conn:
                    del self._doomed[n]
                    return True
        return False

    def drain(self) -> list[Conn]:
        """Forget every connection this process made; return the idle ones, for closing.

        With a ``close`` function, one lent out now is closed when it is given
        back, not here: closing an SQLite connection under a statement another
        thread is running crashes the process. Without one, all are returned.
        """
        with self._lock:
            made, self.made = self.made, []
            idle = self._all_idle()
            if self._close is None:
                return made
            self._doomed += [conn for conn in made if not any(conn is i for i in idle)]
        return idle
